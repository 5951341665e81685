"""The DICOMweb test server, on both deployments: `research` fixture for the research surface.

Use from a test module with `pytest_plugins = ["tests.blobstores", "tests.research_server"]`.
Each test taking `research` runs twice (DESIGN decision 7): SQLite + filesystem, and
PostgreSQL + S3 (SeaweedFS). The deployment is configured through `DEPOT_*` only, the way an
operator does it. Project "alpha" holds the data; project "beta" exists so that tests can
show its tokens see nothing of alpha.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.auth.credentials import issue_token
from app.auth.roles import Role
from app.config import Settings
from app.ingest import IngestReport, Stores, ingest_files
from app.main import create_app
from app.projects import create_project
from app.store.index import index_engine
from app.store.models import Project

DEPOT_VARIABLES = (
    "DEPOT_DATABASE_URL", "DEPOT_VAULT_URL", "DEPOT_VAULT_KEY", "DEPOT_BLOB_URL",
    "DEPOT_S3_ENDPOINT", "DEPOT_S3_ACCESS_KEY", "DEPOT_S3_SECRET_KEY", "DEPOT_PUBLIC_URL",
)  # fmt: skip
DEPLOYMENTS = ["sqlite+filesystem", "postgresql+s3"]


def configure_deployment(request: pytest.FixtureRequest, data_dir: Path, monkeypatch) -> Settings:
    """Set DEPOT_* for `request.param` (one of DEPLOYMENTS) and return the settings."""
    for name in DEPOT_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DEPOT_DATA_DIR", str(data_dir))
    if request.param == "postgresql+s3":
        server = request.getfixturevalue("s3_server")
        monkeypatch.setenv("DEPOT_DATABASE_URL", request.getfixturevalue("postgres_url"))
        monkeypatch.setenv("DEPOT_BLOB_URL", f"s3://{request.getfixturevalue('s3_bucket')}")
        monkeypatch.setenv("DEPOT_S3_ENDPOINT", server.endpoint)
        monkeypatch.setenv("DEPOT_S3_ACCESS_KEY", server.access_key)
        monkeypatch.setenv("DEPOT_S3_SECRET_KEY", server.secret_key)
    return Settings()


@dataclass
class Research:
    """A running app (in-process TestClient) with its stores and one token per kind of caller."""

    settings: Settings
    stores: Stores
    project: Project
    client: TestClient
    tokens: dict[str, str] = field(default_factory=dict)  # researcher, manager, other

    def ingest(self, paths: list[Path]) -> IngestReport:
        """Ingest identifiable files into "alpha" (the way `depot ingest` does); the report's
        `stored` lists the pseudonymized UIDs."""
        return ingest_files(self.stores, self.project, paths)

    def headers(self, who: str = "researcher", **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[who]}", **extra}

    def get(self, url: str, who: str = "researcher", **kwargs):
        headers = {**self.headers(who), **kwargs.pop("headers", {})}
        return self.client.get(url, headers=headers, **kwargs)


@pytest.fixture(params=DEPLOYMENTS)
def research(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch) -> Iterator[Research]:
    settings = configure_deployment(request, tmp_path / "data", monkeypatch)
    project = create_project(settings, "alpha", "Alpha")
    create_project(settings, "beta", "Beta")
    index = index_engine(settings.index_url)
    tokens = {
        "researcher": issue_token(settings, "alpha", Role.researcher)[1],
        "manager": issue_token(settings, "alpha", Role.data_manager)[1],
        "other": issue_token(settings, "beta", Role.researcher)[1],
    }
    stores = Stores.from_settings(settings)
    # The client is a loopback peer, as a reverse proxy on the same host would be: its
    # X-Forwarded-* headers are trusted (DEPOT_TRUSTED_PROXIES defaults to loopback).
    with TestClient(create_app(settings), client=("127.0.0.1", 50000)) as client:
        yield Research(settings, stores, project, client, tokens)
    stores.vault.close()
    index.dispose()  # before the PostgreSQL database is dropped
