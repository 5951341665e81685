"""Every route of the app, from its OpenAPI document: none answers without a token but the
health checks, and none answers another project's token with anything but 404 (project
routes) or 403 (site routes) — except the site's catalogue (ANY_TOKEN), which describes
datasets without opening them: any valid token reads it (docs/security.md), so another
project's token gets 200 there (404 for a Library id that exists nowhere).

A route added without `require(...)` fails here, whatever its module (DESIGN decision 8).
"""

from __future__ import annotations

import datetime as dt
import re

import pytest
from fastapi.testclient import TestClient

from app.auth.credentials import Credentials, issue_token
from app.auth.roles import Role, Scope
from app.main import create_app
from app.projects import create_project

OPEN = {"/healthz", "/readyz", "/.well-known/jwks.json"}
ANY_TOKEN = {
    "/catalog.ttl", "/catalog.jsonld", "/fhir/metadata", "/fhir/Library",
    "/fhir/Library/{library_id}",
}  # fmt: skip
UID = "1.2.3"


def _routes(app) -> list[tuple[str, str]]:
    schema = app.openapi()
    return [
        (method.upper(), path)
        for path, operations in schema["paths"].items()
        for method in operations
        if method in ("get", "post", "put", "delete", "patch")
    ]


def _concrete(path: str, project: str) -> str:
    path = path.replace("{project_id}", project)
    return re.sub(r"\{[^}]+\}", lambda m: "1" if "frame" in m.group(0) else UID, path)


@pytest.fixture
def app_and_tokens(settings):
    create_project(settings, "alpha", "Alpha")
    create_project(settings, "beta", "Beta")
    tokens = {
        role: issue_token(settings, "beta", role)[1]
        for role in (Role.data_manager, Role.researcher, Role.auditor)
    }
    _, tokens[Role.compute] = Credentials(settings).issue_grant(
        "beta", scopes=list(Scope), lifetime=dt.timedelta(hours=1)
    )
    return create_app(settings), tokens


def test_every_route_but_health_needs_a_token_and_hides_other_projects(app_and_tokens):
    app, other_project_tokens = app_and_tokens
    client = TestClient(app)
    routes = _routes(app)
    assert len(routes) > 20
    for method, path in routes:
        url = _concrete(path, "alpha")
        anonymous = client.request(method, url)
        if path in OPEN:
            assert anonymous.status_code == 200, path
            continue
        assert anonymous.status_code == 401, (method, path, anonymous.status_code)
        assert "WWW-Authenticate" in anonymous.headers
        for role, token in other_project_tokens.items():
            answer = client.request(method, url, headers={"Authorization": f"Bearer {token}"})
            expected = 404 if "{project_id}" in path else 403  # site routes: nothing to hide
            if path in ANY_TOKEN:
                expected = 404 if "{" in path else 200  # the dummy id names no Library
            assert answer.status_code == expected, (method, path, role, answer.status_code)
