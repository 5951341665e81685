"""Project-bound bearer tokens: issue, verify, revoke, list. Only hashes are stored.

A token reads `depot_<id>_<secret>`: `<id>` is public (the primary key, so verifying is one
lookup), `<secret>` is 32 random bytes from `secrets` in unpadded base64url, shown once at
creation. The index keeps the SHA-256 of those 32 bytes and compares with
`hmac.compare_digest`. Unknown, malformed, expired and revoked tokens all verify to None, with
no reason given to the caller (the reason is nobody's business but the server's).
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
from app.store.models import Project, Token, as_utc, utc_now

__all__ = [
    "Principal",
    "Role",
    "TokenError",
    "TokenNotFound",
    "issue_token",
    "list_tokens",
    "revoke_token",
    "verify_token",
]

PREFIX = "depot"
SECRET_BYTES = 32
_ID_LENGTH = 12  # hex characters: 48 bits, only needs to be unique, not secret
_FORMAT = re.compile(r"^depot_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
_DUMMY_HASH = hashlib.sha256(b"\0" * SECRET_BYTES).hexdigest()


class TokenError(ValueError):
    """A readable sentence about what is wrong with a token request (never the secret)."""


class TokenNotFound(TokenError):
    """No token with this id in this project."""


def _zoned(token: Token) -> Token:
    """The token (detached from its session) with its timestamps in UTC on every database."""
    token.created_at = as_utc(token.created_at)
    token.expires_at = as_utc(token.expires_at)
    token.revoked_at = as_utc(token.revoked_at)
    return token


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


def issue_token(
    engine: Engine,
    project_id: str,
    role: Role | str,
    label: str = "",
    expires_in: dt.timedelta | None = None,
) -> tuple[Token, str]:
    """A new token for the project: its row (hash only) and the secret string, shown once."""
    role = _role(role)
    if expires_in is not None and expires_in <= dt.timedelta(0):
        raise TokenError("a token's lifetime must be positive")
    if len(label) > 200:
        raise TokenError("a token label is at most 200 characters")
    secret = secrets.token_bytes(SECRET_BYTES)
    created = utc_now()
    with _session(engine) as session:
        if session.get(Project, project_id) is None:
            raise TokenError(f"no project {project_id}; `depot project list` shows them")
        while True:  # 48-bit ids: a collision is rare, but never overwrite another token
            token_id = secrets.token_hex(_ID_LENGTH // 2)
            if session.get(Token, token_id) is None:
                break
        token = Token(
            id=token_id,
            project_id=project_id,
            role=role.value,
            token_hash=_hash(secret),
            label=label,
            created_at=created,
            expires_at=created + expires_in if expires_in is not None else None,
        )
        session.add(token)
        session.commit()
    encoded = base64.urlsafe_b64encode(secret).rstrip(b"=").decode("ascii")
    return token, f"{PREFIX}_{token_id}_{encoded}"


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


def verify_token(engine: Engine, presented: str) -> Principal | None:
    """The principal behind a presented token, or None (unknown, malformed, expired, revoked)."""
    parsed = _parse(presented)
    if parsed is None:
        return None
    token_id, secret = parsed
    with _session(engine) as session:
        token = session.get(Token, token_id)
    # Compare even for an unknown id, so timing does not tell which ids exist.
    matches = hmac.compare_digest(_hash(secret), token.token_hash if token else _DUMMY_HASH)
    if token is None or not matches:
        return None
    now = utc_now()
    if token.revoked_at is not None:
        return None
    expires_at = as_utc(token.expires_at)
    if expires_at is not None and expires_at <= now:
        return None
    try:
        role = Role(token.role)
    except ValueError:  # a role this version does not know: grant nothing
        return None
    return Principal(project_id=token.project_id, role=role, token_id=token.id)


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
    return _zoned(token)


def list_tokens(engine: Engine, project_id: str) -> list[Token]:
    """The project's tokens, oldest first, revoked and expired ones included."""
    with _session(engine) as session:
        query = select(Token).where(Token.project_id == project_id)
        tokens = list(session.exec(query.order_by(Token.created_at, Token.id)))
    return [_zoned(t) for t in tokens]
