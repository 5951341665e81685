"""The role × route rule as written in docs/security.md, checked against the app.

The table in the doc is the single statement of who may call what: this test reads it, checks
that it lists exactly the routes of the OpenAPI document, and calls every route with a token of
every role in the route's own project. ✓: the route answers (whatever the answer about the
dummy object), never 401/403; —: 403; open: answered without any token.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.auth.credentials import Credentials
from app.auth.roles import Role
from app.main import create_app
from app.projects import create_project

DOC = Path(__file__).resolve().parents[1] / "docs" / "security.md"
ROLES = ["site_admin", "data_manager", "researcher", "compute", "auditor"]
_ROW = re.compile(r"^\| (GET|POST|PUT|DELETE|PATCH) \| `([^`]+)` \|(.+)\|$")


def documented_rule() -> dict[tuple[str, str], dict[str, str]]:
    rule = {}
    for line in DOC.read_text().splitlines():
        match = _ROW.match(line.strip())
        if match:
            cells = [c.strip() for c in match.group(3).split("|")]
            assert len(cells) == len(ROLES), line
            rule[(match.group(1), match.group(2))] = dict(zip(ROLES, cells, strict=True))
    return rule


def _concrete(path: str) -> str:
    path = path.replace("{project_id}", "alpha")
    return re.sub(r"\{[^}]+\}", lambda m: "1" if "frame" in m.group(0) else "1.2.3", path)


@pytest.fixture
def client_and_tokens(settings):
    create_project(settings, "alpha", "Alpha")
    app = create_app(settings)
    credentials: Credentials = app.state.credentials
    tokens = {
        role: credentials.issue_token("alpha", role)[1]
        for role in ("data_manager", "researcher", "auditor")
    }
    tokens["site_admin"] = credentials.issue_token(None, Role.site_admin)[1]
    _, tokens["compute"] = credentials.issue_grant(
        "alpha", scopes=["dicomweb-read", "fhir-read"], lifetime=dt.timedelta(hours=1)
    )
    return TestClient(app, client=("127.0.0.1", 50000)), tokens


def test_the_documented_table_lists_exactly_the_routes_of_the_app(settings):
    app = create_app(settings)
    routes = {
        (method.upper(), path)
        for path, operations in app.openapi()["paths"].items()
        for method in operations
    }
    assert set(documented_rule()) == routes


def test_every_route_admits_exactly_the_documented_roles(client_and_tokens):
    client, tokens = client_and_tokens
    wrong = []
    for (method, path), cells in documented_rule().items():
        url = _concrete(path)
        for role, cell in cells.items():
            if cell == "open":
                status = client.request(method, url).status_code
                ok = status == 200
            else:
                headers = {"Authorization": f"Bearer {tokens[role]}"}
                status = client.request(method, url, headers=headers).status_code
                ok = status not in (401, 403) if cell == "✓" else status == 403
            if not ok:
                wrong.append((method, path, role, cell, status))
    assert wrong == []
