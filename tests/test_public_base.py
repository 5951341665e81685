"""Where RetrieveURL and BulkDataURI point: DEPOT_PUBLIC_URL, proxy headers, or the request."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from starlette.requests import Request

from app.dicomweb.public_base import parse_trusted_proxies, public_base

PROXY = "10.1.2.3"


def _request(headers: dict[str, str], peer: str = PROXY) -> Request:
    raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    app = SimpleNamespace(
        state=SimpleNamespace(trusted_proxies=parse_trusted_proxies("10.1.0.0/16"))
    )
    scope = {
        "type": "http",
        "scheme": "http",
        "server": ("10.0.0.5", 8080),
        "client": (peer, 40000),
        "path": "/x",
        "headers": raw,
        "query_string": b"",
        "app": app,
    }
    return Request(scope)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"host": "depot:8080"}, "http://depot:8080"),
        ({"host": "depot"}, "http://depot:8080"),  # dicomweb-client drops the port
        ({"host": "depot", "x-forwarded-proto": "https"}, "https://depot"),
        (
            {"host": "depot:8080", "forwarded": 'for=1.2.3.4;proto=https;host="img.chu.fr"'},
            "https://img.chu.fr",
        ),
        (
            {"host": "d", "forwarded": "proto=https;host=a.fr, proto=http;host=inner"},
            "https://a.fr",
        ),
        (
            {
                "host": "depot:8080",
                "x-forwarded-proto": "https",
                "x-forwarded-host": "img.chu.fr",
                "x-forwarded-port": "8443",
                "x-forwarded-prefix": "/depot/",
            },
            "https://img.chu.fr:8443/depot",
        ),
        ({"host": "depot", "x-forwarded-host": "a.fr, b.fr"}, "http://a.fr"),
        # hostile values are ignored, never echoed
        ({"host": 'evil"><x'}, "http://10.0.0.5:8080"),
        ({"host": "d", "x-forwarded-proto": "javascript"}, "http://d"),
        ({"host": "d", "x-forwarded-prefix": '/a"b'}, "http://d"),
        ({"host": "d", "forwarded": 'host="a b"'}, "http://10.0.0.5:8080"),
    ],
)
def test_public_base_follows_proxy_headers_and_ignores_hostile_ones(headers, expected):
    assert public_base(_request(headers)) == expected


def test_configured_public_url_wins_over_every_header():
    request = _request({"host": "d", "forwarded": "proto=https;host=a.fr"})
    assert public_base(request, "https://pacs.example/research/") == "https://pacs.example/research"


def test_proxy_headers_from_an_untrusted_peer_are_ignored():
    headers = {"host": "depot:8080", "x-forwarded-host": "evil.example", "forwarded": "host=x.y"}
    assert public_base(_request(headers, peer="192.0.2.7")) == "http://depot:8080"
    assert public_base(_request(headers, peer="testclient")) == "http://depot:8080"


def test_a_trusted_proxies_entry_that_is_not_an_address_is_named():
    with pytest.raises(ValueError, match="nope"):
        parse_trusted_proxies("127.0.0.1, nope")
