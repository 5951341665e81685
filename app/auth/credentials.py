"""From a presented bearer credential to a Principal, and the tokens the server signs.

One code path validates every JWT (`app.auth.jwt_verify`): the embedded issuer's (tokens from
`depot token create`, compute grants; keys in `app.auth.issuer`, published at
`/.well-known/jwks.json`) and, when `DEPOT_OIDC_ISSUER` is set, the hospital's identity
provider's. What the signature proves is then checked against the index:

- our tokens: the `token` row named by `jti` (revoked? its project and role are the row's);
- grants: the `access_grant` row named by `jti` (revoked, expired, or a project claim that
  is not the row's all refuse);
- OIDC: the subject's memberships, from the project member lists and from the roles claim.

Legacy static tokens (`depot_<id>_<secret>`, issue 3) keep working until they expire or are
revoked (`app.auth.tokens.verify_static_token`).
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Iterable
from functools import cached_property

import jwt
from sqlalchemy import Engine

from app.auth import grants as grant_store
from app.auth import issuer
from app.auth.jwt_verify import InvalidToken, JwtVerifier, KeysUnavailable, TrustedIssuer
from app.auth.members import memberships_of
from app.auth.roles import PROJECT_ROLES, Kind, Principal, Role, Scope
from app.auth.tokens import record_token, token_principal, verify_static_token
from app.config import Settings
from app.store.index import index_engine
from app.store.models import AccessGrant, Token, utc_now
from app.vault.masterkey import load_master_key

log = logging.getLogger(__name__)

DEFAULT_TOKEN_DAYS = 90
_LEGACY_PREFIX = "depot_"
_TOKEN_SUBJECT = "token:"
_GRANT_SUBJECT = "grant:"


_OUR_IDS = re.compile(r"^(?:[0-9a-f]{12}|g[0-9a-f]{16})$")  # a token's or a grant's id


def claimed_id(presented: str) -> tuple[str, str]:
    """(kind, public id) that a refused credential claims, NOT verified: for the audit
    trail's "unverified token" note. A legacy token's id, or the `jti` of a JWT when it has
    the shape of our token or grant ids; ("", "") for anything else (an IdP's token, junk),
    so nothing a stranger wrote is recorded."""
    if presented.startswith(_LEGACY_PREFIX):
        parts = presented.split("_")
        return ("token", parts[1]) if len(parts) >= 3 and _OUR_IDS.match(parts[1]) else ("", "")
    try:  # the claims as written: PyJWT parses them, no signature or claim is checked
        claims = jwt.decode(presented, options={"verify_signature": False})
    except jwt.PyJWTError:
        return "", ""
    jti = claims.get("jti")
    if not isinstance(jti, str) or not _OUR_IDS.match(jti):
        return "", ""
    return ("grant" if jti.startswith("g") else "token"), jti


class AuthenticationUnavailable(RuntimeError):
    """A token could not be checked because its issuer's keys cannot be had (the IdP is
    down and no key of it was ever fetched): 503, not 401."""


class Credentials:
    """The server's credentials service, one per process (it caches the verifier)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.issuer = settings.local_issuer
        self._key_ensured = False

    @cached_property
    def engine(self) -> Engine:
        """Opened at the first request, not at start-up: /readyz reports an index that is down."""
        return index_engine(self.settings.index_url)

    @cached_property
    def _master_key(self) -> bytes:
        return load_master_key(self.settings)

    def jwks(self) -> dict:
        """The embedded issuer's public keys: active, and retired ones while tokens they
        signed may still be valid."""
        keep = dt.timedelta(days=self.settings.token_max_days)
        return issuer.published_jwks(self.engine, utc_now(), keep)

    @cached_property
    def verifier(self) -> JwtVerifier:
        leeway = self.settings.oidc_leeway_seconds
        trusted = [
            TrustedIssuer(
                issuer=self.issuer,
                audience=self.settings.token_audience,
                jwks=self.jwks,
                algorithms=(issuer.ALGORITHM,),
                leeway=leeway,
            )
        ]
        if self.settings.oidc_issuer:
            trusted.append(
                TrustedIssuer(
                    issuer=self.settings.oidc_issuer,
                    audience=self.settings.oidc_audience or self.settings.token_audience,
                    jwks_url=self.settings.oidc_jwks_url or None,
                    leeway=leeway,
                )
            )
        return JwtVerifier(trusted)

    # --- issuing --------------------------------------------------------------------------

    def _sign(self, subject: str, jti: str, expires_at: dt.datetime, extra: dict) -> str:
        if not self._key_ensured:  # once per process: a rotation retires a key for another
            issuer.ensure_signing_key(self.engine, self._master_key)
            self._key_ensured = True
        now = utc_now()
        claims = {
            "iss": self.issuer,
            "aud": self.settings.token_audience,
            "sub": subject,
            "jti": jti,
            "iat": int(now.timestamp()),
            "nbf": int(now.timestamp()),
            "exp": int(expires_at.timestamp()),
            **extra,
        }
        return issuer.sign(self.engine, self._master_key, claims)

    def issue_token(
        self,
        project_id: str | None,
        role: Role | str,
        label: str = "",
        expires_in: dt.timedelta | None = None,
    ) -> tuple[Token, str]:
        """A token for one project and role (or a site admin's): its row and the JWT, shown
        once. Every token expires: 90 days unless asked, at most DEPOT_TOKEN_MAX_DAYS."""
        longest = dt.timedelta(days=self.settings.token_max_days)
        lifetime = expires_in if expires_in is not None else dt.timedelta(days=DEFAULT_TOKEN_DAYS)
        token = record_token(self.engine, project_id, role, label, min(lifetime, longest))
        extra = {"depot_role": token.role}
        if token.project_id is not None:
            extra["depot_project"] = token.project_id
        jwt = self._sign(_TOKEN_SUBJECT + token.id, token.id, token.expires_at, extra)
        return token, jwt

    def issue_grant(
        self,
        project_id: str,
        *,
        scopes: Iterable[str],
        lifetime: dt.timedelta,
        studies: Iterable[str] | None = None,
        label: str = "",
        created_by: str = "",
    ) -> tuple[AccessGrant, str]:
        """A compute grant and its token (a JWT whose `jti` is the grant), shown once."""
        grant = grant_store.issue_grant(
            self.engine,
            project_id,
            scopes=scopes,
            lifetime=lifetime,
            max_lifetime=dt.timedelta(hours=self.settings.grant_max_hours),
            studies=studies,
            label=label,
            created_by=created_by,
        )
        extra = {"depot_project": project_id, "depot_role": Role.compute.value}
        jwt = self._sign(_GRANT_SUBJECT + grant.id, grant.id, grant.expires_at, extra)
        return grant, jwt

    # --- verifying ------------------------------------------------------------------------

    def authenticate(self, presented: str) -> Principal | None:
        """The principal behind a bearer credential, or None (never a reason: the caller
        gets 401 whatever went wrong, the server log gets the reason without the token).
        AuthenticationUnavailable when the issuer's keys cannot be had."""
        if presented.startswith(_LEGACY_PREFIX):
            return verify_static_token(self.engine, presented)
        try:
            claims = self.verifier.verify(presented)
        except KeysUnavailable as down:  # not the caller's fault: they may retry
            log.warning("bearer token not checked: %s", down)
            raise AuthenticationUnavailable(str(down)) from None
        except InvalidToken as refused:
            log.info("bearer token refused: %s", refused)
            return None
        if claims.get("iss") == self.issuer:
            return self._local(claims)
        return self._oidc(claims)

    def _local(self, claims: dict) -> Principal | None:
        subject, jti = str(claims.get("sub", "")), str(claims.get("jti", ""))
        if subject == _TOKEN_SUBJECT + jti:
            return token_principal(self.engine, jti)
        if subject == _GRANT_SUBJECT + jti:
            grant = grant_store.active_grant(self.engine, jti)
            if grant is None or claims.get("depot_project") != grant.project_id:
                return None  # revoked, expired, or a grant presented as another project's
            return Principal(
                Kind.grant,
                grant.id,
                frozenset({(grant.project_id, Role.compute)}),
                scopes=frozenset(Scope(s) for s in grant.scopes),
                studies=frozenset(grant.studies) if grant.studies is not None else None,
            )
        return None

    def _oidc(self, claims: dict) -> Principal | None:
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject:
            return None
        memberships = memberships_of(self.engine, subject)
        site_admin = False
        listed = claims.get(self.settings.oidc_roles_claim) or []
        if isinstance(listed, str):
            listed = listed.split()
        for entry in listed if isinstance(listed, list) else []:
            if entry == Role.site_admin.value:
                site_admin = True
                continue
            project, _, role = str(entry).rpartition(":")
            if project and role in PROJECT_ROLES and project not in memberships:
                memberships[project] = Role(role)  # the member list wins where both speak
        return Principal(
            Kind.oidc, subject[:255], frozenset(memberships.items()), site_admin=site_admin
        )


def issue_token(
    settings: Settings,
    project_id: str | None,
    role: Role | str,
    label: str = "",
    expires_in: dt.timedelta | None = None,
) -> tuple[Token, str]:
    """One token, for callers that hold no Credentials (tests, scripts)."""
    return Credentials(settings).issue_token(project_id, role, label, expires_in)


def verify_token(settings: Settings, presented: str) -> Principal | None:
    """The principal behind a credential, for callers that hold no Credentials."""
    return Credentials(settings).authenticate(presented)
