"""Bearer JWTs: the embedded issuer's keys (app.auth.issuer) and the one verifier for it and
the hospital's identity provider (app.auth.jwt_verify).

Real keys (cryptography), a real index migrated by Alembic (SQLite, and PostgreSQL for the
issuer's storage), a real JWKS endpoint (stdlib http.server on 127.0.0.1) whose keys rotate.
Every hostile token is refused with a reason that never contains the token.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from sqlalchemy import Engine, text
from sqlmodel import Session, select

from app.auth import issuer
from app.auth.jwt_verify import (
    MAX_TOKEN_LENGTH,
    InvalidToken,
    JwtVerifier,
    KeysUnavailable,
    TrustedIssuer,
    discover_jwks_url,
)
from app.store.index import index_engine
from app.store.models import SigningKey
from app.vault import VaultError, load_master_key

LOCAL = "urn:imaging-depot:test"
AUDIENCE = "imaging-depot"
KEEP = dt.timedelta(hours=1)


# --- helpers --------------------------------------------------------------------------------


class Clock:
    """The verifier's monotonic clock, moved by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _segment(value: dict) -> str:
    return _b64(json.dumps(value, separators=(",", ":")).encode())


def _claims(iss: str = LOCAL, at: float | None = None, **changes: Any) -> dict[str, Any]:
    now = int(time.time() if at is None else at)
    claims: dict[str, Any] = {
        "iss": iss,
        "aud": AUDIENCE,
        "sub": "token:abc123",
        "jti": "abc123",
        "iat": now,
        "exp": now + 3600,
    }
    claims.update(changes)
    return {name: value for name, value in claims.items() if value is not None}


def _refused(verifier: JwtVerifier, token: str, reason: str, **kwargs: Any) -> InvalidToken:
    with pytest.raises(InvalidToken) as caught:
        verifier.verify(token, **kwargs)
    message = str(caught.value)
    assert reason.lower() in message.lower()
    if len(token) > 16:  # never the token, nor its header or payload segment
        assert all(part not in message for part in [token, *token.split(".")[:2]])
    return caught.value


def _rsa_jwk(private: rsa.RSAPrivateKey, kid: str, **extra: Any) -> dict[str, Any]:
    return RSAAlgorithm.to_jwk(private.public_key(), as_dict=True) | {"kid": kid, **extra}


def _ec_jwk(private: ec.EllipticCurvePrivateKey, kid: str, **extra: Any) -> dict[str, Any]:
    return ECAlgorithm.to_jwk(private.public_key(), as_dict=True) | {"kid": kid, **extra}


@pytest.fixture(scope="module")
def rsa_keys() -> list[rsa.RSAPrivateKey]:
    return [rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(2)]


# --- the embedded issuer, its index and its verifier -----------------------------------------


@pytest.fixture
def master_key(settings) -> bytes:
    return load_master_key(settings)


@pytest.fixture
def sqlite_index(settings) -> Engine:
    return index_engine(settings.index_url)


@pytest.fixture(params=["sqlite", "postgresql"])
def any_index(request, settings) -> Iterator[Engine]:
    """The index on both databases (the issuer's storage: unique index, retries, timestamps)."""
    if request.param == "sqlite":
        yield index_engine(settings.index_url)
        return
    engine = index_engine(request.getfixturevalue("postgres_url"))
    try:
        yield engine
    finally:
        engine.dispose()


class Local:
    """The embedded issuer on an index, and a verifier reading its published keys directly."""

    def __init__(self, engine: Engine, master_key: bytes) -> None:
        self.engine = engine
        self.master_key = master_key
        self.clock = Clock()
        self.wall: dt.datetime | None = None  # what published_jwks takes as now (None: now)
        self.kid = issuer.ensure_signing_key(engine, master_key)
        self.verifier = JwtVerifier(
            [TrustedIssuer(LOCAL, AUDIENCE, jwks=self.jwks, algorithms=("ES256",))],
            clock=self.clock,
        )

    def jwks(self) -> dict:
        return issuer.published_jwks(self.engine, self.wall or dt.datetime.now(dt.UTC), KEEP)

    def sign(self, **changes: Any) -> str:
        return issuer.sign(self.engine, self.master_key, _claims(**changes))


@pytest.fixture
def local(sqlite_index, master_key) -> Local:
    return Local(sqlite_index, master_key)


def test_a_local_token_verifies_to_its_claims(local):
    token = local.sign(depot_role="researcher")
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "ES256" and header["kid"] == local.kid
    claims = local.verifier.verify(token)
    assert claims["sub"] == "token:abc123" and claims["depot_role"] == "researcher"


def test_an_expired_token_is_refused(local):
    _refused(local.verifier, local.sign(iat=time.time() - 7200, exp=time.time() - 120), "expired")


def test_a_token_not_yet_valid_is_refused(local):
    _refused(local.verifier, local.sign(nbf=time.time() + 600), "not yet valid")
    _refused(local.verifier, local.sign(iat=time.time() + 600), "issued in the future")


def test_clock_skew_within_the_leeway_is_accepted(local):
    now = time.time()
    assert local.verifier.verify(local.sign(iat=now - 3600, exp=now - 30))
    assert local.verifier.verify(local.sign(nbf=now + 30, iat=now + 30))
    at = dt.datetime.fromtimestamp(now + 3600 + 59, dt.UTC)  # exp + 59 s: still within 60 s
    assert local.verifier.verify(local.sign(at=now), now=at)
    at = dt.datetime.fromtimestamp(now + 3600 + 61, dt.UTC)
    _refused(local.verifier, local.sign(at=now), "expired", now=at)


def test_time_claims_must_be_numbers(local):
    _refused(local.verifier, local.sign(exp="tomorrow"), "exp is not a number")
    _refused(local.verifier, local.sign(nbf=True), "nbf is not a number")


def test_a_wrong_issuer_or_audience_is_refused(local):
    _refused(local.verifier, local.sign(iss="https://idp.elsewhere.example"), "untrusted issuer")
    _refused(local.verifier, local.sign(iss=None), "untrusted issuer")
    _refused(local.verifier, local.sign(aud="another-service"), "wrong audience")
    _refused(local.verifier, local.sign(aud=None), "missing claim aud")


@pytest.mark.parametrize("claim", ["exp", "iat", "sub"])
def test_a_token_missing_a_required_claim_is_refused(local, claim):
    _refused(local.verifier, local.sign(**{claim: None}), f"missing claim {claim}")


def test_an_empty_or_non_string_subject_is_refused(local):
    _refused(local.verifier, local.sign(sub=""), "sub")
    _refused(local.verifier, local.sign(sub=42), "sub")


def test_a_signature_by_another_key_with_the_same_kid_is_refused(local):
    impostor = ec.generate_private_key(ec.SECP256R1())
    token = jwt.encode(_claims(), impostor, algorithm="ES256", headers={"kid": local.kid})
    _refused(local.verifier, token, "bad signature")
    header, _, signature = local.sign().split(".")
    forged = _segment(_claims(sub="token:admin"))
    _refused(local.verifier, f"{header}.{forged}.{signature}", "bad signature")


def test_alg_none_is_refused(local):
    for alg in ("none", "None", "NONE"):
        token = f"{_segment({'alg': alg, 'kid': local.kid})}.{_segment(_claims())}."
        _refused(local.verifier, token, "algorithm not allowed")


def test_an_unknown_kid_and_a_missing_kid_are_refused(local):
    other = ec.generate_private_key(ec.SECP256R1())
    token = jwt.encode(_claims(), other, algorithm="ES256", headers={"kid": "not-ours"})
    _refused(local.verifier, token, "unknown kid")
    # A jku header pointing at the attacker's keys changes nothing: keys come from the issuer.
    headers = {"kid": "not-ours", "jku": "https://attacker.example/jwks.json"}
    _refused(local.verifier, jwt.encode(_claims(), other, "ES256", headers), "unknown kid")
    _refused(local.verifier, jwt.encode(_claims(), other, algorithm="ES256"), "no usable kid")


def test_oversized_and_malformed_tokens_are_refused_before_parsing(local):
    _refused(local.verifier, "A" * (MAX_TOKEN_LENGTH + 1), "too long")
    padded = local.sign(padding="x" * MAX_TOKEN_LENGTH)
    _refused(local.verifier, padded, "too long")
    for garbage in ("abc", "a.b.c", "..", "eyJ.eyJ.sig", f"{_segment({'alg': 'ES256'})}.e30"):
        _refused(local.verifier, garbage, "malformed")
    _refused(local.verifier, "", "no token")


def test_critical_header_extensions_are_refused(local):
    private = issuer._private_key(issuer._active(local.engine), local.master_key)
    headers = {"kid": local.kid, "crit": ["exp"], "exp": 1}
    refused = _refused(local.verifier, jwt.encode(_claims(), private, "ES256", headers), "")
    assert str(refused) in {"malformed token", "critical header extensions are not supported"}


def test_a_naive_now_is_a_programming_error(local):
    with pytest.raises(ValueError, match="timezone-aware"):
        local.verifier.verify(local.sign(), now=dt.datetime.now())


# --- key rotation of the embedded issuer ------------------------------------------------------


def test_rotation_keeps_old_tokens_valid_while_the_retired_key_is_published(any_index, master_key):
    local = Local(any_index, master_key)
    now = time.time()
    lifetime = {"at": now, "exp": int(now) + 3 * 3600}
    before = local.sign(**lifetime)
    assert local.verifier.verify(before)  # the verifier has read the key set

    new_kid = issuer.rotate_signing_key(any_index, master_key)
    assert new_kid != local.kid
    after = local.sign(**lifetime)
    assert jwt.get_unverified_header(after)["kid"] == new_kid
    # A kid the cache does not know: the table is read again, at most once a second.
    _refused(local.verifier, after, "unknown kid")
    local.clock.advance(1)
    assert local.verifier.verify(after)
    assert local.verifier.verify(before)  # still published: signed before the rotation

    published = local.jwks()["keys"]
    assert [key["kid"] for key in published] == [new_kid, local.kid]
    for key in published:
        assert set(key) == {"kty", "crv", "x", "y", "kid", "alg", "use"}
        assert (key["kty"], key["crv"], key["alg"], key["use"]) == ("EC", "P-256", "ES256", "sig")

    # keep_retired_for later, the retired key is no longer published, nor accepted.
    local.wall = dt.datetime.now(dt.UTC) + KEEP + dt.timedelta(seconds=1)
    local.clock.advance(3600)  # past the verifier's cache
    assert [key["kid"] for key in local.jwks()["keys"]] == [new_kid]
    _refused(local.verifier, before, "unknown kid", now=local.wall)
    assert local.verifier.verify(after, now=local.wall)


def test_the_kid_is_the_rfc7638_thumbprint(sqlite_index, master_key):
    kid = issuer.ensure_signing_key(sqlite_index, master_key)
    jwk = issuer.published_jwks(sqlite_index, dt.datetime.now(dt.UTC), KEEP)["keys"][0]
    required = json.dumps({k: jwk[k] for k in ("crv", "kty", "x", "y")}, separators=(",", ":"))
    assert kid == jwk["kid"] == _b64(hashlib.sha256(required.encode()).digest())


def test_ensure_is_idempotent_and_signing_needs_a_key(any_index, master_key):
    with pytest.raises(issuer.IssuerError, match="no active signing key"):
        issuer.sign(any_index, master_key, _claims())
    kid = issuer.ensure_signing_key(any_index, master_key)
    assert issuer.ensure_signing_key(any_index, master_key) == kid
    with Session(any_index) as session:
        assert [row.kid for row in session.exec(select(SigningKey))] == [kid]


def test_a_process_losing_the_race_to_create_the_key_uses_the_winners(
    any_index, master_key, monkeypatch
):
    """Both processes saw no key; the other one inserted first."""
    winner, _ = issuer._new_key(issuer.Sealer(master_key), dt.datetime.now(dt.UTC))
    with Session(any_index, expire_on_commit=False) as session:
        session.add(winner)
        session.commit()
    real_active = issuer._active
    calls = []

    def stale_first_read(engine):
        calls.append(1)
        return None if len(calls) == 1 else real_active(engine)

    monkeypatch.setattr(issuer, "_active", stale_first_read)
    assert issuer.ensure_signing_key(any_index, master_key) == winner.kid
    with Session(any_index) as session:
        assert [row.kid for row in session.exec(select(SigningKey))] == [winner.kid]


def _together(count: int, work: Callable[[], str]) -> list[str]:
    barrier = threading.Barrier(count)
    results: list[str] = []
    errors: list[Exception] = []

    def run() -> None:
        barrier.wait()
        try:
            results.append(work())
        except Exception as error:  # noqa: BLE001  (asserted below, in the test's thread)
            errors.append(error)

    threads = [threading.Thread(target=run) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    return results


def test_concurrent_starts_and_rotations_leave_one_active_key(any_index, master_key):
    kids = _together(4, lambda: issuer.ensure_signing_key(any_index, master_key))
    assert len(set(kids)) == 1
    rotated = _together(3, lambda: issuer.rotate_signing_key(any_index, master_key))
    assert len(set(rotated)) == 3 and kids[0] not in rotated
    with Session(any_index) as session:
        rows = list(session.exec(select(SigningKey)))
    assert len(rows) == 4
    active = [row.kid for row in rows if row.retired_at is None]
    assert len(active) == 1 and active[0] in rotated
    published = issuer.published_jwks(any_index, dt.datetime.now(dt.UTC), KEEP)["keys"]
    assert published[0]["kid"] == active[0] and len(published) == 4


def test_private_keys_are_sealed_with_the_master_key(any_index, master_key, monkeypatch):
    kid = issuer.ensure_signing_key(any_index, master_key)
    with any_index.connect() as conn:
        sealed, public = conn.execute(
            text("SELECT private_key_sealed, public_jwk FROM signing_key WHERE kid = :kid"),
            {"kid": kid},
        ).one()
    assert b"PRIVATE KEY" not in bytes(sealed) and '"d"' not in public
    # A fresh process with another master key cannot sign, and says nothing about the key.
    monkeypatch.setattr(issuer, "_unsealed", {})
    with pytest.raises(VaultError) as caught:
        issuer.sign(any_index, secrets.token_bytes(32), _claims())
    assert "cannot be decrypted" in str(caught.value) and kid not in str(caught.value)
    monkeypatch.setattr(issuer, "_unsealed", {})
    assert issuer.sign(any_index, master_key, _claims())


def test_a_sealed_key_moved_to_another_row_does_not_open(sqlite_index, master_key, monkeypatch):
    first = issuer.ensure_signing_key(sqlite_index, master_key)
    second = issuer.rotate_signing_key(sqlite_index, master_key)
    with Session(sqlite_index) as session:
        rows = {row.kid: row for row in session.exec(select(SigningKey))}
        rows[second].private_key_sealed = rows[first].private_key_sealed
        session.add(rows[second])
        session.commit()
    monkeypatch.setattr(issuer, "_unsealed", {})
    with pytest.raises(VaultError):
        issuer.sign(sqlite_index, master_key, _claims())


# --- configuration ---------------------------------------------------------------------------


@pytest.mark.parametrize("algorithms", [("HS256",), ("none",), ("RS256", "HS512"), ()])
def test_symmetric_and_none_algorithms_cannot_be_configured(algorithms):
    with pytest.raises(ValueError):
        TrustedIssuer(LOCAL, AUDIENCE, jwks=dict, algorithms=algorithms)


@pytest.mark.parametrize(
    "url",
    ["http://idp.example/jwks", "file:///etc/passwd", "ftp://127.0.0.1/jwks", "https://"],
)
def test_a_jwks_url_must_be_https_except_on_loopback(url):
    with pytest.raises(ValueError):
        TrustedIssuer("https://idp.example", AUDIENCE, jwks_url=url)
    TrustedIssuer("https://idp.example", AUDIENCE, jwks_url="http://127.0.0.1:8080/jwks")


def test_an_issuer_is_trusted_once_with_one_key_source():
    with pytest.raises(ValueError):
        TrustedIssuer(LOCAL, AUDIENCE, jwks=dict, jwks_url="https://idp.example/jwks")
    with pytest.raises(ValueError):  # no source and no URL to discover one from
        TrustedIssuer(LOCAL, AUDIENCE)
    issuer_ = TrustedIssuer(LOCAL, AUDIENCE, jwks=dict)
    with pytest.raises(ValueError):
        JwtVerifier([issuer_, issuer_])


# --- a remote identity provider: a real JWKS endpoint whose keys rotate -----------------------


class IdentityProvider:
    """A JWKS endpoint and a discovery document on 127.0.0.1, counting its requests."""

    def __init__(self) -> None:
        self.keys: list[dict] = []
        self.requests: dict[str, int] = {}
        self.down = False
        self.discovery_issuer: str | None = None
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                provider.requests[self.path] = provider.requests.get(self.path, 0) + 1
                if provider.down:
                    self.send_error(503)
                    return
                if self.path == "/jwks.json":
                    body = {"keys": provider.keys}
                elif self.path == "/.well-known/openid-configuration":
                    body = {
                        "issuer": provider.discovery_issuer or provider.url,
                        "jwks_uri": provider.url + "/jwks.json",
                    }
                else:
                    self.send_error(404)
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def jwks_fetches(self) -> int:
        return self.requests.get("/jwks.json", 0)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def idp(rsa_keys) -> Iterator[IdentityProvider]:
    provider = IdentityProvider()
    provider.keys = [_rsa_jwk(rsa_keys[0], "rsa-1", use="sig", alg="RS256")]
    try:
        yield provider
    finally:
        provider.close()


REMOTE = "https://idp.hospital.example/realms/research"


def _remote(idp: IdentityProvider, **options: Any) -> tuple[JwtVerifier, Clock]:
    clock = Clock()
    trusted = TrustedIssuer(REMOTE, AUDIENCE, jwks_url=idp.url + "/jwks.json", **options)
    return JwtVerifier([trusted], clock=clock), clock


def _rs(private: rsa.RSAPrivateKey, kid: str, alg: str = "RS256", **changes: Any) -> str:
    return jwt.encode(_claims(iss=REMOTE, **changes), private, algorithm=alg, headers={"kid": kid})


def test_a_remote_token_verifies_and_the_key_set_is_cached(idp, rsa_keys):
    verifier, _ = _remote(idp)
    token = _rs(rsa_keys[0], "rsa-1")
    assert verifier.verify(token)["iss"] == REMOTE
    assert verifier.verify(token)
    assert idp.jwks_fetches == 1


def test_remote_rsa_ps256_is_accepted_but_a_jwk_bound_to_rs256_refuses_it(idp, rsa_keys):
    idp.keys = [_rsa_jwk(rsa_keys[0], "rsa-any"), _rsa_jwk(rsa_keys[1], "rsa-rs", alg="RS256")]
    verifier, _ = _remote(idp)
    assert verifier.verify(_rs(rsa_keys[0], "rsa-any", "PS256"))
    _refused(verifier, _rs(rsa_keys[1], "rsa-rs", "PS256"), "another algorithm")


def _pem(public_key: Any) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def test_hs256_signed_with_the_public_key_is_refused(idp, rsa_keys, local):
    """Key confusion: the attacker HMACs with the public key the server would have used."""
    local_public = ECAlgorithm.from_jwk(local.jwks()["keys"][0])
    cases = [
        (_remote(idp)[0], "rsa-1", _pem(rsa_keys[0].public_key()), REMOTE),
        (local.verifier, local.kid, _pem(local_public), LOCAL),
    ]
    for verifier, kid, secret, iss in cases:
        for alg, digest in [("HS256", hashlib.sha256), ("HS512", hashlib.sha512)]:
            signing_input = f"{_segment({'alg': alg, 'typ': 'JWT', 'kid': kid})}."
            signing_input += _segment(_claims(iss=iss))
            mac = hmac.new(secret, signing_input.encode(), digest).digest()
            _refused(verifier, f"{signing_input}.{_b64(mac)}", "algorithm not allowed")


def test_a_key_of_the_wrong_type_for_the_algorithm_is_refused(idp, rsa_keys):
    p256 = ec.generate_private_key(ec.SECP256R1())
    idp.keys = [_rsa_jwk(rsa_keys[0], "rsa-1"), _ec_jwk(p256, "ec-1")]
    verifier, _ = _remote(idp)
    # RS256 naming the EC key, ES384 naming a P-256 key, ES256 naming the RSA key.
    rs_on_ec = jwt.encode(_claims(iss=REMOTE), rsa_keys[0], "RS256", headers={"kid": "ec-1"})
    _refused(verifier, rs_on_ec, "does not fit")
    es384 = jwt.encode(
        _claims(iss=REMOTE), ec.generate_private_key(ec.SECP384R1()), "ES384", {"kid": "ec-1"}
    )
    _refused(verifier, es384, "does not fit")
    _refused(verifier, jwt.encode(_claims(iss=REMOTE), p256, "ES256", {"kid": "rsa-1"}), "fit")
    assert verifier.verify(jwt.encode(_claims(iss=REMOTE), p256, "ES256", {"kid": "ec-1"}))


def test_a_token_of_one_trusted_issuer_cannot_use_anothers_keys(idp, rsa_keys, local):
    """Both trusted: a token claiming the local issuer but signed by the IdP's key."""
    clock = Clock()
    verifier = JwtVerifier(
        [
            TrustedIssuer(LOCAL, AUDIENCE, jwks=local.jwks, algorithms=("ES256",)),
            TrustedIssuer(REMOTE, AUDIENCE, jwks_url=idp.url + "/jwks.json"),
        ],
        clock=clock,
    )
    forged = jwt.encode(_claims(iss=LOCAL), rsa_keys[0], "RS256", headers={"kid": "rsa-1"})
    _refused(verifier, forged, "not allowed for this issuer")
    assert verifier.verify(_rs(rsa_keys[0], "rsa-1"))
    assert verifier.verify(local.sign())


def test_the_verifier_picks_up_the_identity_providers_new_key_without_restart(idp, rsa_keys):
    verifier, clock = _remote(idp, refetch_interval=30)
    assert verifier.verify(_rs(rsa_keys[0], "rsa-1"))
    # The IdP rotates: the new key is published, the old one removed.
    idp.keys = [_rsa_jwk(rsa_keys[1], "rsa-2", use="sig")]
    rotated = _rs(rsa_keys[1], "rsa-2")
    _refused(verifier, rotated, "unknown kid")  # fetched less than 30 s ago: not yet again
    assert idp.jwks_fetches == 1
    clock.advance(31)
    assert verifier.verify(rotated)["sub"] == "token:abc123"
    assert idp.jwks_fetches == 2
    _refused(verifier, _rs(rsa_keys[0], "rsa-1"), "unknown kid")  # the old key is gone
    assert idp.jwks_fetches == 2


def test_a_flood_of_unknown_kids_fetches_a_bounded_number_of_times(idp, rsa_keys):
    verifier, clock = _remote(idp)
    assert verifier.verify(_rs(rsa_keys[0], "rsa-1"))
    for round_ in range(3):
        for _ in range(200):
            _refused(verifier, _rs(rsa_keys[1], secrets.token_hex(8)), "unknown kid")
            clock.advance(0.1)  # 20 s per round, under the 30 s interval
        assert idp.jwks_fetches <= 2 + round_
    assert idp.jwks_fetches <= 4 and verifier.key_fetches(REMOTE) == idp.jwks_fetches
    assert verifier.verify(_rs(rsa_keys[0], "rsa-1"))


def test_an_unreachable_identity_provider(idp, rsa_keys):
    verifier, clock = _remote(idp)
    token = _rs(rsa_keys[0], "rsa-1")
    assert verifier.verify(token)
    idp.down = True
    clock.advance(301)  # the cache is stale: a fetch is tried, fails, the known keys serve
    assert verifier.verify(token)
    for _ in range(50):
        assert verifier.verify(token)
    assert idp.jwks_fetches == 2  # and the failure is not retried on every request

    never_fetched, _ = _remote(idp)
    for _ in range(50):
        assert isinstance(_refused(never_fetched, token, "unavailable"), KeysUnavailable)
    assert idp.jwks_fetches == 3


def test_oidc_discovery_finds_the_jwks_url(idp, rsa_keys):
    assert discover_jwks_url(idp.url) == idp.url + "/jwks.json"
    verifier = JwtVerifier([TrustedIssuer(idp.url, AUDIENCE)], clock=Clock())
    token = jwt.encode(_claims(iss=idp.url), rsa_keys[0], "RS256", headers={"kid": "rsa-1"})
    assert verifier.verify(token)["iss"] == idp.url
    assert idp.requests["/.well-known/openid-configuration"] == 2  # here, and by the verifier
    assert verifier.verify(token) and idp.requests["/.well-known/openid-configuration"] == 2


def test_oidc_discovery_refuses_a_document_naming_another_issuer(idp, rsa_keys):
    idp.discovery_issuer = "https://impostor.example"
    with pytest.raises(ValueError, match="another issuer"):
        discover_jwks_url(idp.url)
    verifier = JwtVerifier([TrustedIssuer(idp.url, AUDIENCE)], clock=Clock())
    token = jwt.encode(_claims(iss=idp.url), rsa_keys[0], "RS256", headers={"kid": "rsa-1"})
    _refused(verifier, token, "unavailable")
    assert idp.jwks_fetches == 0
