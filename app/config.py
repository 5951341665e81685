"""One Settings object for the whole server, read from `DEPOT_*` environment variables.

Defaults are the embedded deployment: everything under the data directory, no other setup.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Where the server keeps things; each `*_url` left empty falls back to the data dir."""

    model_config = SettingsConfigDict(env_prefix="DEPOT_", extra="ignore")

    data_dir: Path = Path("./data")
    database_url: str = ""
    vault_url: str = ""
    vault_key: str = ""
    blob_url: str = ""
    s3_endpoint: str = ""  # e.g. http://minio:9000 (a bare host:port means HTTPS)
    s3_access_key: str = ""
    s3_secret_key: SecretStr = SecretStr("")  # kept out of reprs and logs
    s3_region: str = ""
    public_url: str = ""
    trusted_proxies: str = "127.0.0.1,::1"  # whose Forwarded / X-Forwarded-* headers count
    # The site's catalogue (docs/catalog.md): true lets harvesters read it without a token.
    catalog_public: bool = False
    site_name: str = ""  # the catalogue's publisher, e.g. "CHU Example" (default: imaging-depot)
    site_url: str = ""  # the publisher's web page
    site_email: str = ""  # the publisher's contact address (one of site_url / site_email)
    encryption_at_rest: bool = True  # new blobs AES-256-GCM per project (docs/encryption.md)
    # Seconds a series' metadata waits after a STOW-RS request before it is rebuilt: requests
    # arriving meanwhile share that one rebuild (docs/operations.md).
    metadata_refresh_delay: float = Field(default=2.0, ge=0, le=60)
    # Tokens (docs/security.md): the embedded issuer signs `depot token create` and grants.
    token_issuer: str = ""  # the `iss` of our tokens; default: DEPOT_PUBLIC_URL or a URN
    token_audience: str = "imaging-depot"
    token_max_days: int = 365  # the longest `depot token create --expires-in`
    grant_max_hours: int = 168  # a compute grant never outlives this (nor its project's end)
    # OIDC: the hospital's identity provider, trusted beside the embedded issuer when set.
    oidc_issuer: str = ""
    oidc_audience: str = ""
    oidc_jwks_url: str = ""
    oidc_roles_claim: str = "depot_roles"  # ["site_admin", "<project>:<role>", …]
    oidc_leeway_seconds: int = 60  # clock skew tolerated on exp / nbf / iat

    @cached_property
    def resolved_data_dir(self) -> Path:
        """Created private to the server's user: it holds the vault in embedded mode."""
        path = self.data_dir.expanduser().resolve()
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        return path

    @property
    def index_url(self) -> str:
        """The index database (projects, studies, …): SQLite under the data dir by default."""
        return self.database_url or f"sqlite:///{self.resolved_data_dir / 'index.sqlite'}"

    @property
    def vault_database_url(self) -> str:
        """The vault is a separate database so it can live in a separate environment."""
        return self.vault_url or f"sqlite:///{self.resolved_data_dir / 'vault.sqlite'}"

    @property
    def blob_store_url(self) -> str:
        """Blobs under the data dir by default; `s3://bucket[/prefix]` with DEPOT_S3_*."""
        return self.blob_url or (self.resolved_data_dir / "blobs").as_uri()

    @property
    def local_issuer(self) -> str:
        return self.token_issuer or self.public_url.rstrip("/") or "urn:imaging-depot:local"

    @property
    def vault_key_file(self) -> Path:
        return self.resolved_data_dir / "vault.key"


def get_settings() -> Settings:
    return Settings()
