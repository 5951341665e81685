"""Tokens issued by `depot token create`: their rows, revocation, listing. Secrets are never
stored.

A token is a JWT signed by the embedded issuer (app.auth.credentials signs it); its row, named
by the JWT's `jti`, holds the project and role, the expiry and the revocation, so the row is
the authority and a revocation takes effect at the next request. A site admin's token has no
project.

Legacy static tokens (issue 3) read `depot_<id>_<secret>`: `<id>` is the row's primary key,
`<secret>` 32 random bytes whose SHA-256 the row keeps, compared with `hmac.compare_digest`.
They are no longer issued and keep working until they expire or are revoked. Unknown,
malformed, expired and revoked tokens all verify to None, with no reason given to the caller.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import hmac
import re
import secrets

from sqlalchemy import Engine
from sqlmodel import Session, select

from app.auth.roles import Principal, Role
from app.store.models import Project, Token, utc_now

__all__ = [
    "TokenError",
    "TokenNotFound",
    "list_tokens",
    "record_token",
    "revoke_token",
    "token_principal",
    "verify_static_token",
]

SECRET_BYTES = 32
_ID_LENGTH = 12  # hex characters: 48 bits, only needs to be unique, not secret
_FORMAT = re.compile(r"^depot_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
_DUMMY_HASH = hashlib.sha256(b"\0" * SECRET_BYTES).hexdigest()


class TokenError(ValueError):
    """A readable sentence about what is wrong with a token request (never the secret)."""


class TokenNotFound(TokenError):
    """No token with this id in this project."""


def _hash(secret: bytes) -> str:
    return hashlib.sha256(secret).hexdigest()


def _session(engine: Engine) -> Session:
    return Session(engine, expire_on_commit=False)


def _role(role: Role | str) -> Role:
    try:
        return Role(role)
    except ValueError:
        raise TokenError(
            f"unknown role {role!r}; roles are " + ", ".join(r.value for r in Role)
        ) from None


def record_token(
    engine: Engine,
    project_id: str | None,
    role: Role | str,
    label: str = "",
    expires_in: dt.timedelta | None = None,
) -> Token:
    """The row of a new token (the caller signs the JWT naming it)."""
    role = _role(role)
    if (project_id is None) != (role is Role.site_admin):
        raise TokenError(
            "a site_admin token is site-wide (no --project); every other role needs a project"
        )
    if role is Role.compute:
        raise TokenError("compute access is given by a grant (`depot grant create`), not a token")
    if expires_in is not None and expires_in <= dt.timedelta(0):
        raise TokenError("a token's lifetime must be positive")
    if len(label) > 200:
        raise TokenError("a token label is at most 200 characters")
    created = utc_now()
    with _session(engine) as session:
        if project_id is not None and session.get(Project, project_id) is None:
            raise TokenError(f"no project {project_id}; `depot project list` shows them")
        while True:  # 48-bit ids: a collision is rare, but never overwrite another token
            token_id = secrets.token_hex(_ID_LENGTH // 2)
            if session.get(Token, token_id) is None:
                break
        token = Token(
            id=token_id,
            project_id=project_id,
            role=role.value,
            label=label,
            created_at=created,
            expires_at=created + expires_in if expires_in is not None else None,
        )
        session.add(token)
        session.commit()
    return token


def _usable(token: Token | None) -> Principal | None:
    """The principal of a token row that is neither revoked nor expired, else None."""
    if token is None or token.revoked_at is not None:
        return None
    if token.expires_at is not None and token.expires_at <= utc_now():
        return None
    try:
        role = Role(token.role)
    except ValueError:  # a role this version does not know: grant nothing
        return None
    if (token.project_id is None) != (role is Role.site_admin):
        return None
    return Principal.bound(token.project_id or "", role, token.id)


def token_principal(engine: Engine, token_id: str) -> Principal | None:
    """The principal of a JWT's token row (its signature already checked), or None."""
    if not isinstance(token_id, str) or len(token_id) != _ID_LENGTH:
        return None
    with _session(engine) as session:
        token = session.get(Token, token_id)
    if token is not None and token.token_hash:
        return None  # a static token's id in a JWT: not how either was issued
    return _usable(token)


def _parse(presented: str) -> tuple[str, bytes] | None:
    match = _FORMAT.match(presented) if isinstance(presented, str) else None
    if match is None:
        return None
    try:
        secret = base64.urlsafe_b64decode(match.group(2) + "=")
    except (binascii.Error, ValueError):
        return None
    if len(secret) != SECRET_BYTES:
        return None
    return match.group(1), secret


def verify_static_token(engine: Engine, presented: str) -> Principal | None:
    """The principal behind a legacy static token, or None."""
    parsed = _parse(presented)
    if parsed is None:
        return None
    token_id, secret = parsed
    with _session(engine) as session:
        token = session.get(Token, token_id)
    # Compare even for an unknown id, so timing does not tell which ids exist.
    stored = token.token_hash if token is not None and token.token_hash else _DUMMY_HASH
    if not hmac.compare_digest(_hash(secret), stored) or token is None or not token.token_hash:
        return None
    return _usable(token)


def revoke_token(engine: Engine, project_id: str, token_id: str) -> Token:
    """Revoke a token of this project (idempotent: the first revocation time is kept)."""
    with _session(engine) as session:
        token = session.get(Token, token_id)
        if token is None or token.project_id != project_id:  # another project's: not found
            raise TokenNotFound(f"no token {token_id} in project {project_id}")
        if token.revoked_at is None:
            token.revoked_at = utc_now()
            session.add(token)
            session.commit()
    return token


def list_tokens(engine: Engine, project_id: str) -> list[Token]:
    """The project's tokens, oldest first, revoked and expired ones included."""
    with _session(engine) as session:
        query = select(Token).where(Token.project_id == project_id)
        tokens = list(session.exec(query.order_by(Token.created_at, Token.id)))
    return tokens
