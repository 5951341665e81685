"""The base URL clients reach this server at: where RetrieveURL and BulkDataURI point.

Order of precedence (FIELD-NOTES: proxies rewrite the Host, and a URL built from the socket
is then unusable by the client):

1. `DEPOT_PUBLIC_URL`, when the operator set it: the one source an operator controls;
2. RFC 7239 `Forwarded` (first hop: `proto=`, `host=`), then `X-Forwarded-Proto`,
   `X-Forwarded-Host`, `X-Forwarded-Port` and `X-Forwarded-Prefix` as nginx and Traefik set
   them, but only from a trusted proxy: the request's peer address is in
   `DEPOT_TRUSTED_PROXIES` (IP addresses or networks, comma-separated; loopback by default,
   as uvicorn's `--forwarded-allow-ips`), which `app.main` leaves on `app.state`;
3. the request's own scheme and Host (with the port the request arrived on when the Host
   header has none: a client bug, see `_with_socket_port`).

Values taken from headers are checked against a conservative grammar (scheme http/https, a
host of letters, digits, dots, dashes, colons and brackets, a path prefix of URL-safe
characters): a hostile header cannot inject quotes or markup into a JSON document or a
multipart body; an invalid one is ignored.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable

from starlette.requests import Request

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_SCHEME = re.compile(r"^https?$")
_HOST = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:[0-9]{1,5})?$")
_PREFIX = re.compile(r"^(/[A-Za-z0-9._~!$&'()*+,;=:@%-]+)*/?$")


def _forwarded_first_hop(header: str) -> dict[str, str]:
    """The parameters of the first element of an RFC 7239 Forwarded header (lower-case keys)."""
    first = header.split(",", 1)[0]
    params: dict[str, str] = {}
    for pair in first.split(";"):
        name, sep, value = pair.partition("=")
        if sep:
            params[name.strip().lower()] = value.strip().strip('"')
    return params


def _first(value: str | None) -> str | None:
    """The first of a comma-separated X-Forwarded-* list (the client-facing proxy's value)."""
    if value is None:
        return None
    return value.split(",", 1)[0].strip() or None


_FORWARDING = ("forwarded", "x-forwarded-host", "x-forwarded-proto", "x-forwarded-prefix")
_DEFAULT_PORTS = {"http": 80, "https": 443}


def _with_socket_port(request: Request, host: str) -> str:
    """A Host without a port, straight from a client: the port the request arrived on.

    dicomweb-client (web.py) sends `Host: <name>` without the port, against RFC 9110 7.2;
    without this, its BulkDataURIs would point at port 80. Behind a proxy that sends no
    forwarding header the socket port may be the wrong one: DEPOT_PUBLIC_URL is for that.
    """
    if ":" in host.rsplit("]", 1)[-1]:
        return host
    server = request.scope.get("server")
    if not server or server[1] in (None, _DEFAULT_PORTS.get(request.url.scheme)):
        return host
    return f"{host}:{server[1]}"


def _socket_host(request: Request) -> str:
    """The address the request arrived on, when no usable Host was sent."""
    server = request.scope.get("server")
    if not server:
        return "localhost"
    host, port = server
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_trusted_proxies(value: str) -> tuple[Network, ...]:
    """`DEPOT_TRUSTED_PROXIES`: "127.0.0.1,::1,10.0.0.0/8"; ValueError names a bad entry."""
    networks = []
    for entry in (e.strip() for e in value.split(",")):
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError as exc:
            raise ValueError(f"DEPOT_TRUSTED_PROXIES: {entry!r} is not an address") from exc
    return tuple(networks)


def _from_trusted_proxy(request: Request) -> bool:
    trusted: Iterable[Network] = getattr(request.app.state, "trusted_proxies", ())
    peer = request.client.host if request.client else ""
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:
        return False
    return any(address in network for network in trusted)


def public_base(request: Request, configured: str = "") -> str:
    """`scheme://host[:port][/prefix]` without a trailing slash."""
    if configured:
        return configured.rstrip("/")
    headers = request.headers
    scheme = request.url.scheme
    host = headers.get("host") or request.url.netloc
    prefix = ""
    proxied = _from_trusted_proxy(request)
    forwarded = headers.get("forwarded") if proxied else None
    if forwarded:
        params = _forwarded_first_hop(forwarded)
        scheme = params.get("proto", scheme)
        host = params.get("host", host)
    elif proxied:
        scheme = _first(headers.get("x-forwarded-proto")) or scheme
        forwarded_host = _first(headers.get("x-forwarded-host"))
        if forwarded_host:
            host = forwarded_host
            port = _first(headers.get("x-forwarded-port"))
            if port and port.isdigit() and ":" not in host.rsplit("]", 1)[-1]:
                host = f"{host}:{port}"
    if proxied:
        prefix = _first(headers.get("x-forwarded-prefix")) or ""
    if not (proxied and any(h in headers for h in _FORWARDING)):
        host = _with_socket_port(request, host)
    scheme = scheme.lower()
    if not _SCHEME.match(scheme):
        scheme = request.url.scheme
    if not _HOST.match(host):
        host = _socket_host(request)
    if prefix and not _PREFIX.match(prefix):
        prefix = ""
    return f"{scheme}://{host}{prefix.rstrip('/')}"
