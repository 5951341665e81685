"""Project-bound bearer tokens: issued once, stored hashed, checked on every project route.

Another project's token answers 404 (decision 1), the wrong role 403, no or a bad token 401.
"""

from __future__ import annotations

import base64
import datetime as dt
import re
from typing import Annotated

import pytest
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient
from sqlmodel import Session, select
from typer.testing import CliRunner

from app.auth.http import require
from app.auth.tokens import (
    Principal,
    Role,
    TokenError,
    TokenNotFound,
    issue_token,
    list_tokens,
    revoke_token,
    verify_token,
)
from app.cli import app as cli_app
from app.store.index import index_engine
from app.store.models import Project, Token


def _add_projects(engine, *ids: str) -> None:
    with Session(engine) as session:
        for project_id in ids:
            session.add(Project(id=project_id, title=project_id, profile="research-fr"))
        session.commit()


@pytest.fixture
def sqlite_index(tmp_path):
    engine = index_engine(f"sqlite:///{tmp_path / 'index.sqlite'}")
    _add_projects(engine, "alpha", "beta")
    return engine


def _secret_bytes(secret: str) -> bytes:
    return base64.urlsafe_b64decode(secret[-43:] + "=")


def _tamper(secret: str) -> str:
    """The same id with another (well-formed) secret."""
    prefix, encoded = secret[:-43], secret[-43:]
    other = "A" if encoded[0] != "A" else "B"
    return prefix + other + encoded[1:]


# --- the domain functions -------------------------------------------------------------------


def test_an_issued_token_verifies_to_its_project_role_and_id(sqlite_index):
    token, secret = issue_token(sqlite_index, "alpha", Role.researcher, label="Dr Martin")
    assert re.fullmatch(r"depot_[0-9a-f]{12}_[A-Za-z0-9_-]{43}", secret)
    assert secret.split("_")[1] == token.id
    assert len(_secret_bytes(secret)) == 32
    assert verify_token(sqlite_index, secret) == Principal("alpha", Role.researcher, token.id)


def test_two_tokens_never_share_an_id_or_a_secret(sqlite_index):
    issued = [issue_token(sqlite_index, "alpha", "data_manager") for _ in range(20)]
    assert len({t.id for t, _ in issued}) == 20 and len({s for _, s in issued}) == 20


def test_the_index_holds_only_the_hash_of_the_secret(tmp_path, sqlite_index):
    token, secret = issue_token(sqlite_index, "alpha", Role.researcher)
    raw = _secret_bytes(secret)
    with Session(sqlite_index) as session:
        row = session.get(Token, token.id)
        assert row.token_hash not in (raw.hex(), secret) and len(row.token_hash) == 64
    sqlite_index.dispose()  # close connections: the WAL is readable as it is anyway
    stored = b"".join(p.read_bytes() for p in tmp_path.glob("index.sqlite*"))
    assert token.id.encode() in stored  # the file is the right one: the public id is in it
    for form in (raw, raw.hex().encode(), secret.encode(), secret[-43:].encode()):
        assert form not in stored


@pytest.mark.parametrize(
    "presented",
    ["", "depot", "depot__", "Bearer x", "depot_0123456789ab_short", "x" * 5000,
     "depot_0123456789AB_" + "A" * 43, "depot_0123456789ab_" + "A" * 42 + "=",
     "depot_0123456789ab_" + "A" * 43 + "\n"],
)  # fmt: skip
def test_malformed_strings_verify_to_none(sqlite_index, presented):
    issue_token(sqlite_index, "alpha", Role.researcher)
    assert verify_token(sqlite_index, presented) is None


def test_a_wrong_secret_for_a_real_id_and_an_unknown_id_verify_to_none(sqlite_index):
    token, secret = issue_token(sqlite_index, "alpha", Role.data_manager)
    assert verify_token(sqlite_index, _tamper(secret)) is None
    unknown = secret.replace(token.id, "0" * 12 if token.id != "0" * 12 else "1" * 12)
    assert verify_token(sqlite_index, unknown) is None
    assert verify_token(sqlite_index, secret) is not None


def test_an_expired_token_verifies_to_none(sqlite_index):
    _, soon = issue_token(sqlite_index, "alpha", Role.researcher, expires_in=dt.timedelta(days=1))
    past, secret = issue_token(
        sqlite_index, "alpha", Role.researcher, expires_in=dt.timedelta(seconds=1)
    )
    with Session(sqlite_index) as session:  # move its expiry into the past
        row = session.get(Token, past.id)
        row.expires_at = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)
        session.add(row)
        session.commit()
    assert verify_token(sqlite_index, secret) is None
    assert verify_token(sqlite_index, soon) is not None


def test_a_revoked_token_verifies_to_none_and_revoking_is_per_project(sqlite_index):
    token, secret = issue_token(sqlite_index, "alpha", Role.researcher)
    with pytest.raises(TokenNotFound):  # beta cannot revoke alpha's token
        revoke_token(sqlite_index, "beta", token.id)
    assert verify_token(sqlite_index, secret) is not None
    first = revoke_token(sqlite_index, "alpha", token.id).revoked_at
    assert verify_token(sqlite_index, secret) is None
    assert revoke_token(sqlite_index, "alpha", token.id).revoked_at == first  # idempotent
    with pytest.raises(TokenNotFound):
        revoke_token(sqlite_index, "alpha", "0123456789ab")


def test_listing_is_per_project(sqlite_index):
    a1, _ = issue_token(sqlite_index, "alpha", Role.researcher, label="one")
    a2, _ = issue_token(sqlite_index, "alpha", Role.data_manager, label="two")
    issue_token(sqlite_index, "beta", Role.researcher)
    assert [t.id for t in list_tokens(sqlite_index, "alpha")] == [a1.id, a2.id]
    assert len(list_tokens(sqlite_index, "beta")) == 1
    assert list_tokens(sqlite_index, "gamma") == []


def test_issuing_refuses_unknown_projects_roles_and_lifetimes(sqlite_index):
    with pytest.raises(TokenError, match="no project"):
        issue_token(sqlite_index, "gamma", Role.researcher)
    with pytest.raises(TokenError, match="unknown role"):
        issue_token(sqlite_index, "alpha", "site_god")
    with pytest.raises(TokenError, match="positive"):
        issue_token(sqlite_index, "alpha", Role.researcher, expires_in=dt.timedelta(0))
    with Session(sqlite_index) as session:
        assert session.exec(select(Token)).all() == []


def test_tokens_on_postgresql(postgres_url):
    engine = index_engine(postgres_url)
    try:
        _add_projects(engine, "alpha")
        token, secret = issue_token(
            engine, "alpha", Role.data_manager, expires_in=dt.timedelta(hours=1)
        )
        assert verify_token(engine, secret) == Principal("alpha", Role.data_manager, token.id)
        assert verify_token(engine, _tamper(secret)) is None
        with Session(engine) as session:
            row = session.get(Token, token.id)
            row.expires_at = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
            session.add(row)
            session.commit()
        assert verify_token(engine, secret) is None
        other, other_secret = issue_token(engine, "alpha", Role.researcher)
        revoke_token(engine, "alpha", other.id)
        assert verify_token(engine, other_secret) is None
        assert [t.id for t in list_tokens(engine, "alpha")] == [token.id, other.id]
    finally:
        engine.dispose()


# --- over HTTP --------------------------------------------------------------------------------


# Module-level: the routes' annotations are strings (future import), resolved in this module.
READER = require(Role.researcher, Role.data_manager)
MANAGER = require(Role.data_manager)


@pytest.fixture
def http(tmp_path, sqlite_index):
    app = FastAPI()
    app.state.index_url = str(sqlite_index.url)

    @app.get("/projects/{project_id}/probe")
    def probe(project_id: str, who: Annotated[Principal, Depends(READER)]) -> dict:
        return {"project": project_id, "role": who.role, "token": who.token_id}

    @app.post("/projects/{project_id}/manage")
    def manage(project_id: str, who: Annotated[Principal, Depends(MANAGER)]) -> dict:
        return {"project": project_id}

    return TestClient(app), sqlite_index


def _bearer(secret: str) -> dict:
    return {"Authorization": f"Bearer {secret}"}


def _assert_401(response, presented: bool, secret: str = "") -> None:
    assert response.status_code == 401
    challenge = response.headers["WWW-Authenticate"]
    assert challenge.startswith('Bearer realm="imaging-depot"')
    assert ('error="invalid_token"' in challenge) is presented
    assert set(response.json()) == {"detail"}
    if secret:
        assert secret not in response.text and secret[-43:] not in response.text


def test_no_token_answers_401_with_a_bearer_challenge(http):
    client, _ = http
    _assert_401(client.get("/projects/alpha/probe"), presented=False)
    _assert_401(client.get("/projects/alpha/probe", headers={"Authorization": "Basic eDp5"}),
                presented=False)  # fmt: skip


@pytest.mark.parametrize("header", ["Bearer", "Bearer ", "Bearer garbage", "Bearer a b"])
def test_garbage_tokens_answer_401_invalid_token(http, header):
    client, _ = http
    _assert_401(client.get("/projects/alpha/probe", headers={"Authorization": header}),
                presented=True)  # fmt: skip


def test_expired_revoked_and_tampered_tokens_answer_401(http):
    client, engine = http
    token, secret = issue_token(engine, "alpha", Role.researcher)
    assert client.get("/projects/alpha/probe", headers=_bearer(secret)).status_code == 200
    _assert_401(client.get("/projects/alpha/probe", headers=_bearer(_tamper(secret))),
                presented=True, secret=_tamper(secret))  # fmt: skip
    revoke_token(engine, "alpha", token.id)
    _assert_401(client.get("/projects/alpha/probe", headers=_bearer(secret)), True, secret)

    expired, old = issue_token(engine, "alpha", Role.researcher, expires_in=dt.timedelta(hours=1))
    with Session(engine) as session:
        row = session.get(Token, expired.id)
        row.expires_at = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
        session.add(row)
        session.commit()
    _assert_401(client.get("/projects/alpha/probe", headers=_bearer(old)), True, old)


def test_another_projects_token_answers_404_not_403(http):
    client, engine = http
    _, beta = issue_token(engine, "beta", Role.data_manager)
    for method, path in (("GET", "/projects/alpha/probe"), ("POST", "/projects/alpha/manage"),
                         ("GET", "/projects/nowhere/probe")):  # fmt: skip
        response = client.request(method, path, headers=_bearer(beta))
        assert response.status_code == 404, path
        assert beta not in response.text
    assert client.get("/projects/beta/probe", headers=_bearer(beta)).status_code == 200


def test_a_researcher_on_a_data_manager_route_answers_403(http):
    client, engine = http
    _, researcher = issue_token(engine, "alpha", Role.researcher)
    _, manager = issue_token(engine, "alpha", Role.data_manager)
    denied = client.post("/projects/alpha/manage", headers=_bearer(researcher))
    assert denied.status_code == 403 and researcher not in denied.text
    assert client.post("/projects/alpha/manage", headers=_bearer(manager)).status_code == 200
    assert client.get("/projects/alpha/probe", headers=_bearer(researcher)).status_code == 200


def test_the_route_receives_the_principal(http):
    client, engine = http
    token, secret = issue_token(engine, "alpha", Role.researcher)
    got = client.get("/projects/alpha/probe", headers={"authorization": f"bearer {secret}"})
    assert got.json() == {"project": "alpha", "role": "researcher", "token": token.id}


def test_require_needs_a_role():
    with pytest.raises(ValueError):
        require()


# --- the CLI ----------------------------------------------------------------------------------

runner = CliRunner()


def _run(*args: str):
    return runner.invoke(cli_app, list(args), catch_exceptions=False)


def test_token_create_list_revoke_from_the_cli(settings):
    assert _run("project", "create", "alpha", "--title", "Alpha").exit_code == 0
    created = _run("token", "create", "--project", "alpha", "--role", "researcher",
                   "--label", "Dr Martin", "--expires-days", "30")  # fmt: skip
    assert created.exit_code == 0, created.output
    secret = re.search(r"depot_[0-9a-f]{12}_[A-Za-z0-9_-]{43}", created.output).group(0)
    token_id = secret.split("_")[1]
    assert created.output.count(secret) == 1
    assert "not be shown again" in created.output
    assert "http://127.0.0.1:8080/projects/alpha/" in created.output
    assert "Authorization: Bearer" in created.output
    engine = index_engine(settings.index_url)
    assert verify_token(engine, secret) == Principal("alpha", Role.researcher, token_id)

    listed = _run("token", "list", "--project", "alpha")
    assert listed.exit_code == 0
    assert token_id in listed.output and "researcher" in listed.output
    assert "Dr Martin" in listed.output
    assert secret[-43:] not in listed.output and secret not in listed.output
    with Session(engine) as session:
        assert session.get(Token, token_id).token_hash not in listed.output

    revoked = _run("token", "revoke", "--project", "alpha", token_id)
    assert revoked.exit_code == 0 and "revoked" in revoked.output
    assert verify_token(engine, secret) is None
    assert _run("token", "revoke", "--project", "alpha", "0123456789ab").exit_code == 2


def test_token_create_refuses_an_unknown_project_or_role(settings):
    assert _run("project", "create", "alpha", "--title", "Alpha").exit_code == 0
    missing = _run("token", "create", "--project", "gamma", "--role", "researcher")
    assert missing.exit_code == 2 and "no project gamma" in missing.output
    assert _run("token", "create", "--project", "alpha", "--role", "admin").exit_code == 2
    assert _run("token", "list", "--project", "gamma").exit_code == 2
