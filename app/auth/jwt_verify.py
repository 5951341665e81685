"""One JWT verifier for the embedded issuer and the hospital's OIDC identity provider.

Every bearer JWT goes through `JwtVerifier.verify`, in this order, so that nothing an attacker
writes in a token chooses how it is checked (RFC 8725):

1. at most `MAX_TOKEN_LENGTH` characters, before any parsing;
2. the header's `alg` must be one the configuration allows (never `none`, never HS*: an HMAC
   with a public key as secret is the classic key-confusion forgery), `crit` is refused and
   `kid` is required; `jku`, `x5u` and `jwk` headers are ignored, keys only ever come from
   the trusted issuer's own key source;
3. the issuer is picked by the token's (unverified) `iss` among the trusted ones: an unknown
   issuer is refused before any key is fetched for it;
4. the key is looked up by `kid` in that issuer's JWK Set; its `kty` (and curve) must fit the
   algorithm, and a JWK that names its `alg` must name this one;
5. the signature is checked with exactly that algorithm, then audience and issuer, and the
   claims exp, iat and sub are required; exp, nbf (when present) and iat are checked against
   `now` with the issuer's leeway (here rather than by PyJWT, which only reads the wall clock).

Key sources: a callable returning a JWK Set (the embedded issuer: its table read directly, no
HTTP to itself) or a JWKS URL fetched with PyJWT's `PyJWKClient` (given, or found through
`.well-known/openid-configuration`). Either way the set is cached, refetched when an unknown
`kid` appears (an identity provider rotating its keys is picked up without restart), and
fetched at most once per `refetch_interval`, so a flood of tokens with random kids does not
hammer the identity provider. If a fetch fails, the keys already known stay in use.

`InvalidToken` carries a short reason for the server log, never the token nor key material.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import logging
import math
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import jwt
from jwt.algorithms import get_default_algorithms

__all__ = [
    "DEFAULT_ALGORITHMS",
    "MAX_TOKEN_LENGTH",
    "InvalidToken",
    "JwtVerifier",
    "KeysUnavailable",
    "TrustedIssuer",
    "discover_jwks_url",
]

log = logging.getLogger(__name__)

MAX_TOKEN_LENGTH = 8192
DEFAULT_ALGORITHMS: tuple[str, ...] = ("RS256", "RS384", "RS512", "PS256", "ES256", "ES384")
# The asymmetric algorithms a configuration may allow, with the key type (and curve) each needs.
_KEY_TYPES: dict[str, tuple[str, str | None]] = {
    "RS256": ("RSA", None),
    "RS384": ("RSA", None),
    "RS512": ("RSA", None),
    "PS256": ("RSA", None),
    "PS384": ("RSA", None),
    "PS512": ("RSA", None),
    "ES256": ("EC", "P-256"),
    "ES384": ("EC", "P-384"),
    "ES512": ("EC", "P-521"),
}
_REQUIRED_CLAIMS = ["exp", "iat", "sub"]
_MAX_KID_LENGTH = 256
_MAX_DOCUMENT_BYTES = 1 << 20  # a discovery document is a few KiB
_DISCOVERY_PATH = "/.well-known/openid-configuration"


class InvalidToken(Exception):
    """The token is refused; the message is a short reason for the log (never the token)."""


class KeysUnavailable(InvalidToken):
    """The issuer's keys could not be obtained at all: the token was not checked.

    A subclass, so callers refusing on InvalidToken are safe; one that wants to can answer
    503 instead of 401.
    """


def _is_loopback(host: str | None) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host or "").is_loopback
    except ValueError:
        return False


def _check_url(url: str, what: str) -> None:
    """HTTPS only, except on loopback (tests, a local identity provider in development)."""
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return
    if parts.scheme == "http" and _is_loopback(parts.hostname):
        return
    raise ValueError(f"{what} must be an https:// URL (http:// only on loopback): {url!r}")


@dataclass(frozen=True)
class TrustedIssuer:
    """An issuer whose tokens are accepted, for one audience, with keys from one source.

    Give `jwks` (a callable returning a JWK Set, e.g. `Credentials.jwks`) or
    `jwks_url`; with neither, the URL is found in `<issuer>/.well-known/openid-configuration`
    at the first key lookup. `cache_seconds` and `refetch_interval` default to 300 s and 30 s
    for a URL (another server) and to 60 s and 1 s for a callable (a local table).
    """

    issuer: str
    audience: str
    jwks: Callable[[], Mapping[str, Any]] | None = None
    jwks_url: str | None = None
    algorithms: tuple[str, ...] = DEFAULT_ALGORITHMS
    leeway: float = 60
    cache_seconds: float | None = None
    refetch_interval: float | None = None
    fetch_timeout: float = 10

    def __post_init__(self) -> None:
        if not self.issuer or not self.audience:
            raise ValueError("a trusted issuer needs an issuer and an audience")
        if self.jwks is not None and self.jwks_url is not None:
            raise ValueError("give a trusted issuer jwks or jwks_url, not both")
        if self.jwks is None:
            if self.jwks_url is not None:
                _check_url(self.jwks_url, "jwks_url")
            else:
                _check_url(self.issuer, "an issuer without jwks_url (OIDC discovery)")
        if not self.algorithms:
            raise ValueError("a trusted issuer needs at least one algorithm")
        refused = [alg for alg in self.algorithms if alg not in _KEY_TYPES]
        if refused:
            raise ValueError(
                f"algorithms {refused} are not allowed; choose among {sorted(_KEY_TYPES)} "
                "(never none, never HS*: a shared secret is no public key)"
            )
        for name in ("leeway", "cache_seconds", "refetch_interval", "fetch_timeout"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number of seconds, at least 0")


def _fetch_json(url: str, timeout: float) -> Any:
    """GET a small JSON document without following redirects."""
    opener = urllib.request.build_opener(_NoRedirect())
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    with opener.open(request, timeout=timeout) as response:
        body = response.read(_MAX_DOCUMENT_BYTES + 1)
    if len(body) > _MAX_DOCUMENT_BYTES:
        raise ValueError("document too large")
    return json.loads(body)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *_args: Any, **_kwargs: Any) -> None:
        return None


def discover_jwks_url(issuer: str, timeout: float = 10) -> str:
    """The `jwks_uri` of an OpenID Provider, from its discovery document.

    The document must name the same issuer (OpenID Connect Discovery 1.0, section 4.3), and
    the URI must be HTTPS (or loopback HTTP).
    """
    _check_url(issuer, "issuer")
    document = _fetch_json(issuer.rstrip("/") + _DISCOVERY_PATH, timeout)
    if not isinstance(document, dict) or document.get("issuer") != issuer:
        raise ValueError("the discovery document names another issuer")
    jwks_uri = document.get("jwks_uri")
    if not isinstance(jwks_uri, str):
        raise ValueError("the discovery document has no jwks_uri")
    _check_url(jwks_uri, "jwks_uri")
    return jwks_uri


class _KeySet:
    """One issuer's JWKs by kid: cached, refetched on an unknown kid, rate-limited.

    One lock per issuer: while a fetch runs, lookups for that issuer wait for it (and then
    find the new key) instead of fetching again.
    """

    def __init__(self, trusted: TrustedIssuer, clock: Callable[[], float]) -> None:
        self._trusted = trusted
        self._clock = clock
        remote = trusted.jwks is None
        self._cache_seconds = trusted.cache_seconds
        if self._cache_seconds is None:
            self._cache_seconds = 300.0 if remote else 60.0
        self._interval = trusted.refetch_interval
        if self._interval is None:
            self._interval = 30.0 if remote else 1.0
        self._client: jwt.PyJWKClient | None = None
        self._lock = threading.Lock()
        self._keys: dict[str, Mapping[str, Any]] | None = None
        self._parsed: dict[tuple[str, str], Any] = {}
        self._fetched_at = -math.inf
        self._attempted_at = -math.inf
        self.fetches = 0  # attempts, successful or not (tests and metrics read it)

    def key(self, kid: str, alg: str) -> Any:
        """The verification key for kid and alg, or InvalidToken."""
        with self._lock:
            now = self._clock()
            if now - self._fetched_at >= self._cache_seconds:
                self._refresh(now)
            jwk = self._keys.get(kid) if self._keys is not None else None
            if jwk is None and self._keys is not None:
                self._refresh(now)
                jwk = self._keys.get(kid)
            if self._keys is None:
                raise KeysUnavailable("the issuer's keys are unavailable")
            if jwk is None:
                raise InvalidToken("unknown kid")
            parsed = self._parsed.get((kid, alg))
            if parsed is None:
                parsed = self._parsed[(kid, alg)] = _verification_key(jwk, alg)
            return parsed

    def _refresh(self, now: float) -> None:
        """Fetch the set, at most once per refetch interval; keep the old one on failure."""
        if now - self._attempted_at < self._interval:
            return
        self._attempted_at = now
        self.fetches += 1
        try:
            document = self._fetch()
            keys = _index_keys(document)
        except Exception as error:  # noqa: BLE001  (any failure: keep the keys we had)
            # JWK Sets and their URLs are public: the reason may be logged, truncated.
            log.warning(
                "fetching the keys of issuer %s failed: %s: %.200s",
                self._trusted.issuer,
                type(error).__name__,
                error,
            )
            return
        self._keys = keys
        self._parsed = {}
        self._fetched_at = now

    def _fetch(self) -> Any:
        trusted = self._trusted
        if trusted.jwks is not None:
            return trusted.jwks()
        if self._client is None:
            url = trusted.jwks_url or discover_jwks_url(trusted.issuer, trusted.fetch_timeout)
            # PyJWKClient's own cache is off: this class caches and rate-limits.
            self._client = jwt.PyJWKClient(url, cache_jwk_set=False, timeout=trusted.fetch_timeout)
        return self._client.fetch_data()


def _index_keys(document: Any) -> dict[str, Mapping[str, Any]]:
    """Signature keys by kid; keys without a kid, or for encryption, are left out."""
    if not isinstance(document, Mapping) or not isinstance(document.get("keys"), list):
        raise ValueError("not a JWK Set")
    keys: dict[str, Mapping[str, Any]] = {}
    for jwk in document["keys"]:
        if not isinstance(jwk, Mapping):
            continue
        kid = jwk.get("kid")
        if isinstance(kid, str) and kid and jwk.get("use", "sig") == "sig":
            keys.setdefault(kid, jwk)
    return keys


def _verification_key(jwk: Mapping[str, Any], alg: str) -> Any:
    """The public key of a JWK for alg, refusing a JWK of another type, curve or algorithm."""
    kty, crv = _KEY_TYPES[alg]
    if jwk.get("kty") != kty or (crv is not None and jwk.get("crv") != crv):
        raise InvalidToken("the key's type does not fit the algorithm")
    if jwk.get("alg") not in (None, alg):
        raise InvalidToken("the key is for another algorithm")
    if "d" in jwk:
        raise InvalidToken("the key set holds a private key")
    try:
        return get_default_algorithms()[alg].from_jwk(dict(jwk))
    except (jwt.PyJWTError, ValueError, TypeError):
        raise InvalidToken("the key is unusable") from None


def _number(claims: Mapping[str, Any], name: str) -> float:
    value = claims[name]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidToken(f"claim {name} is not a number")
    return float(value)


def _check_times(claims: Mapping[str, Any], now: float, leeway: float) -> None:
    if _number(claims, "exp") <= now - leeway:
        raise InvalidToken("expired")
    if "nbf" in claims and _number(claims, "nbf") > now + leeway:
        raise InvalidToken("not yet valid (nbf)")
    if _number(claims, "iat") > now + leeway:
        raise InvalidToken("issued in the future (iat)")


_REASONS: list[tuple[type[jwt.PyJWTError], str]] = [
    (jwt.InvalidSignatureError, "bad signature"),
    (jwt.InvalidAudienceError, "wrong audience"),
    (jwt.InvalidIssuerError, "wrong issuer"),
    (jwt.InvalidAlgorithmError, "algorithm not allowed"),
    (jwt.DecodeError, "malformed token"),
]


def _reason(error: jwt.PyJWTError) -> str:
    if isinstance(error, jwt.MissingRequiredClaimError):
        return f"missing claim {error.claim}"
    for kind, reason in _REASONS:
        if isinstance(error, kind):
            return reason
    return f"invalid token ({type(error).__name__})"  # e.g. InvalidSubjectError


class JwtVerifier:
    """Verifies bearer JWTs of a fixed list of trusted issuers (thread-safe, keeps key caches:
    build one per process). `clock` is the monotonic clock of the caches (tests pass theirs)."""

    def __init__(
        self, issuers: list[TrustedIssuer], *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._issuers: dict[str, TrustedIssuer] = {}
        self._keys: dict[str, _KeySet] = {}
        for trusted in issuers:
            if trusted.issuer in self._issuers:
                raise ValueError(f"issuer {trusted.issuer!r} is listed twice")
            self._issuers[trusted.issuer] = trusted
            self._keys[trusted.issuer] = _KeySet(trusted, clock)
        self._algorithms = frozenset(alg for t in issuers for alg in t.algorithms)

    def key_fetches(self, issuer: str) -> int:
        """How many times the issuer's key set was fetched (or tried): for tests, metrics."""
        return self._keys[issuer].fetches

    def verify(self, token: str, now: dt.datetime | None = None) -> dict[str, Any]:
        """The verified claims of `token`, or InvalidToken (see the module doc for the steps)."""
        if now is not None and now.tzinfo is None:
            raise ValueError("now must be timezone-aware")
        if not isinstance(token, str) or not token:
            raise InvalidToken("no token")
        if len(token) > MAX_TOKEN_LENGTH:
            raise InvalidToken("token too long")
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise InvalidToken("malformed token") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self._algorithms:
            raise InvalidToken("algorithm not allowed")
        if "crit" in header:
            raise InvalidToken("critical header extensions are not supported")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid or len(kid) > _MAX_KID_LENGTH:
            raise InvalidToken("no usable kid")
        iss = unverified.get("iss")
        trusted = self._issuers.get(iss) if isinstance(iss, str) else None
        if trusted is None:
            raise InvalidToken("untrusted issuer")
        if alg not in trusted.algorithms:
            raise InvalidToken("algorithm not allowed for this issuer")
        key = self._keys[trusted.issuer].key(kid, alg)
        try:
            claims = jwt.decode(
                token,
                key=key,
                algorithms=[alg],
                audience=trusted.audience,
                issuer=trusted.issuer,
                options={
                    "require": _REQUIRED_CLAIMS,
                    # times are checked below against `now`; PyJWT reads only the wall clock
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                },
            )
        except jwt.PyJWTError as error:
            raise InvalidToken(_reason(error)) from None
        if not isinstance(claims.get("sub"), str) or not claims["sub"]:
            raise InvalidToken("claim sub is not a non-empty string")
        moment = (now or dt.datetime.now(dt.UTC)).timestamp()
        _check_times(claims, moment, trusted.leeway)
        return claims
