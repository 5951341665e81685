"""The embedded issuer's signing keys: created, rotated, published, and used to sign JWTs.

In embedded mode the server is its own issuer: `depot token create` signs JWTs here and
`/.well-known/jwks.json` publishes `published_jwks`, so `app.auth.jwt_verify` checks them the
same way as the hospital identity provider's (one code path for both).

Keys are ES256 (P-256): short signatures, fast to make, and no RSA padding choices. Each lives
in the index table `signing_key`, named by its RFC 7638 thumbprint (the `kid`), its private
part a PKCS#8 PEM sealed with the vault master key (`app.vault.crypto`, bound to the kid, so a
sealed key copied to another row does not open). A partial unique index allows one active key
per algorithm: two processes creating the first key at once cannot both succeed, the loser
uses the winner's. Rotation retires the active key without deleting it; it stays published
while tokens it signed may still be valid (`keep_retired_for`, at least the longest token
lifetime). Unsealed private keys are cached in this process, by kid.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import threading
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import Engine, insert, update
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlmodel import Session, col, select

from app.store.models import SigningKey, utc_now
from app.vault.crypto import Sealer, associated_data

__all__ = [
    "ALGORITHM",
    "IssuerError",
    "ensure_signing_key",
    "published_jwks",
    "rotate_signing_key",
    "sign",
]

ALGORITHM = "ES256"
_PURPOSE = "signing-key"  # the vault associated data's purpose: these keys are site-wide
_PUBLIC_MEMBERS = ("kty", "crv", "x", "y", "n", "e", "kid", "alg", "use")
_RETRIES = 5  # a rotation loses at most once per concurrent rotation

_unsealed: dict[str, ec.EllipticCurvePrivateKey] = {}
_unsealed_lock = threading.Lock()


class IssuerError(Exception):
    """The issuer cannot sign: no active key, or its key could not be stored.

    Messages never carry key material, sealed or not.
    """


def _aad(kid: str) -> bytes:
    return associated_data(_PURPOSE, "", kid)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _thumbprint(public_jwk: dict[str, Any]) -> str:
    """RFC 7638: SHA-256 of the required members, sorted, without whitespace."""
    required = {name: public_jwk[name] for name in ("crv", "kty", "x", "y")}
    canonical = json.dumps(required, separators=(",", ":"), sort_keys=True)
    return _b64url(hashlib.sha256(canonical.encode("ascii")).digest())


def _new_key(sealer: Sealer, now: dt.datetime) -> tuple[SigningKey, ec.EllipticCurvePrivateKey]:
    private = ec.generate_private_key(ec.SECP256R1())
    numbers = private.public_key().public_numbers()
    public = {
        "kty": "EC",
        "crv": "P-256",
        "x": _b64url(numbers.x.to_bytes(32, "big")),
        "y": _b64url(numbers.y.to_bytes(32, "big")),
    }
    kid = _thumbprint(public)
    public |= {"kid": kid, "alg": ALGORITHM, "use": "sig"}
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    row = SigningKey(
        kid=kid,
        alg=ALGORITHM,
        private_key_sealed=sealer.seal(pem, _aad(kid)),
        public_jwk=json.dumps(public, sort_keys=True),
        created_at=now,
    )
    return row, private


def _active(engine: Engine) -> SigningKey | None:
    with Session(engine, expire_on_commit=False) as session:
        query = select(SigningKey).where(
            SigningKey.alg == ALGORITHM, col(SigningKey.retired_at).is_(None)
        )
        return session.exec(query).first()


def _private_key(row: SigningKey, master_key: bytes) -> ec.EllipticCurvePrivateKey:
    """The row's private key, unsealed once per process (VaultError on a wrong master key)."""
    with _unsealed_lock:
        cached = _unsealed.get(row.kid)
    if cached is not None:
        return cached
    pem = Sealer(master_key).open(row.private_key_sealed, _aad(row.kid))
    private = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(private, ec.EllipticCurvePrivateKey):
        raise IssuerError(f"signing key {row.kid} is not an EC key")
    with _unsealed_lock:
        _unsealed[row.kid] = private
    return private


def _remember(kid: str, private: ec.EllipticCurvePrivateKey) -> None:
    with _unsealed_lock:
        _unsealed[kid] = private


def _storage_failed(error: DBAPIError) -> IssuerError:
    # The driver's message would repeat the statement's parameters: the sealed key.
    return IssuerError(f"storing a signing key failed ({type(error.orig).__name__})")


def ensure_signing_key(engine: Engine, master_key: bytes) -> str:
    """The active key's kid, creating the first key if there is none.

    Safe when several processes start at once: the unique index admits one active key, a
    process whose insert loses uses the winner's. The key is unsealed here, so a wrong master
    key fails at start rather than at the first signature.
    """
    row = _active(engine)
    if row is None:
        new, private = _new_key(Sealer(master_key), utc_now())
        try:
            with engine.begin() as conn:
                conn.execute(insert(SigningKey).values(**new.model_dump()))
        except IntegrityError:
            row = _active(engine)  # another process created it first
            if row is None:
                raise IssuerError("the signing key could not be created") from None
        except DBAPIError as error:
            raise _storage_failed(error) from None
        else:
            _remember(new.kid, private)
            return new.kid
    _private_key(row, master_key)
    return row.kid


def rotate_signing_key(engine: Engine, master_key: bytes) -> str:
    """Make a new active key and retire the previous one (still published, see module doc).

    Two concurrent rotations both take effect, one after the other: on PostgreSQL the later
    one's insert collides with the earlier one's new key and is retried.
    """
    sealer = Sealer(master_key)
    for _ in range(_RETRIES):
        now = utc_now()
        new, private = _new_key(sealer, now)
        try:
            with engine.begin() as conn:
                conn.execute(
                    update(SigningKey)
                    .where(col(SigningKey.alg) == ALGORITHM, col(SigningKey.retired_at).is_(None))
                    .values(retired_at=now)
                )
                conn.execute(insert(SigningKey).values(**new.model_dump()))
        except IntegrityError:
            continue  # a concurrent rotation or creation committed first: retire that one
        except DBAPIError as error:
            raise _storage_failed(error) from None
        _remember(new.kid, private)
        return new.kid
    raise IssuerError("the signing key could not be rotated: too many concurrent rotations")


def published_jwks(engine: Engine, now: dt.datetime, keep_retired_for: dt.timedelta) -> dict:
    """The JWK Set to publish: the active key, then keys retired less than
    `keep_retired_for` before `now` (newest first). Public members only."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    cutoff = now - keep_retired_for
    with Session(engine) as session:
        rows = list(session.exec(select(SigningKey)))
    active = sorted((row for row in rows if row.retired_at is None), key=lambda row: row.created_at)
    retired = [(retired_at, row) for row in rows if (retired_at := row.retired_at) is not None]
    recent = [
        row
        for retired_at, row in sorted(retired, key=lambda item: item[0], reverse=True)
        if retired_at > cutoff
    ]
    keys = []
    for row in [*reversed(active), *recent]:
        stored = json.loads(row.public_jwk)
        keys.append({name: stored[name] for name in _PUBLIC_MEMBERS if name in stored})
    return {"keys": keys}


def sign(engine: Engine, master_key: bytes, claims: dict[str, Any]) -> str:
    """A compact JWS of `claims` by the active key, its kid in the header.

    The claims are signed as given: the caller sets iss, aud, sub, iat, exp (the verifier
    requires exp, iat and sub).
    """
    row = _active(engine)
    if row is None:
        raise IssuerError("no active signing key; ensure_signing_key creates one")
    private = _private_key(row, master_key)
    return jwt.encode(claims, private, algorithm=row.alg, headers={"kid": row.kid, "typ": "JWT"})
