"""The HTTP server's health checks, as an orchestrator or a load balancer calls them."""

from __future__ import annotations

from fastapi.testclient import TestClient

from app.main import create_app


def test_health_and_readiness_on_the_embedded_default(settings):
    client = TestClient(create_app(settings))
    assert client.get("/healthz").json()["status"] == "ok"
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ok", "index": "ok", "vault": "ok"}


def test_readiness_fails_when_the_index_is_unreachable(settings):
    settings.database_url = "postgresql+psycopg://nobody@127.0.0.1:1/none"
    ready = TestClient(create_app(settings)).get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["index"] == "unavailable"
