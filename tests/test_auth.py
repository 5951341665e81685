"""Tokens from `depot token create`: signed JWTs whose row is the authority, checked on every
project route; legacy static tokens keep working.

Another project's token answers 404 (decision 1), the wrong role 403, no or a bad token 401.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import re

import jwt as pyjwt
import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, select
from typer.testing import CliRunner

from app.auth.credentials import Credentials, issue_token, verify_token
from app.auth.http import require
from app.auth.roles import Kind, Principal, Role
from app.auth.tokens import TokenError, TokenNotFound, list_tokens, revoke_token
from app.cli import app as cli_app
from app.main import create_app
from app.projects import create_project
from app.store.index import index_engine
from app.store.models import Token

QIDO = "/projects/{}/dicom-web/studies"
STOW_INGEST = "/projects/{}/ingest/studies"


@pytest.fixture
def two_projects(settings):
    create_project(settings, "alpha", "Alpha")
    create_project(settings, "beta", "Beta")
    return settings


def legacy_token(settings, project_id: str, role: Role) -> tuple[str, str]:
    """A token as issue 3 issued them (`depot_<id>_<secret>`, SHA-256 stored): they must keep
    working after the move to JWTs."""
    secret = bytes(range(32))
    token_id = hashlib.sha256(project_id.encode() + role.encode()).hexdigest()[:12]
    with Session(index_engine(settings.index_url)) as session:
        session.add(
            Token(id=token_id, project_id=project_id, role=role.value,
                  token_hash=hashlib.sha256(secret).hexdigest())
        )  # fmt: skip
        session.commit()
    encoded = base64.urlsafe_b64encode(secret).rstrip(b"=").decode()
    return token_id, f"depot_{token_id}_{encoded}"


def _expire(settings, token_id: str) -> None:
    with Session(index_engine(settings.index_url)) as session:
        row = session.get(Token, token_id)
        row.expires_at = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
        session.add(row)
        session.commit()


# --- the domain -------------------------------------------------------------------------------


def test_an_issued_token_is_a_signed_jwt_naming_its_row(two_projects):
    settings = two_projects
    token, secret = issue_token(settings, "alpha", Role.researcher, label="Dr Martin")
    header = pyjwt.get_unverified_header(secret)
    claims = pyjwt.decode(secret, options={"verify_signature": False})
    assert header["alg"] == "ES256" and header["kid"]
    assert claims["jti"] == token.id and claims["sub"] == f"token:{token.id}"
    assert claims["iss"] == settings.local_issuer and claims["aud"] == "imaging-depot"
    assert claims["depot_project"] == "alpha" and claims["depot_role"] == "researcher"
    assert verify_token(settings, secret) == Principal.bound("alpha", Role.researcher, token.id)
    with Session(index_engine(settings.index_url)) as session:
        row = session.get(Token, token.id)
    assert row.token_hash is None and row.label == "Dr Martin"


def test_every_token_expires_by_default_and_within_the_cap(two_projects, monkeypatch):
    settings = two_projects
    token, _ = issue_token(settings, "alpha", Role.researcher)
    assert dt.timedelta(days=89) < token.expires_at - token.created_at <= dt.timedelta(days=90)
    settings.token_max_days = 7
    capped, secret = issue_token(
        settings, "alpha", Role.researcher, expires_in=dt.timedelta(days=400)
    )
    assert capped.expires_at - capped.created_at == dt.timedelta(days=7)
    claims = pyjwt.decode(secret, options={"verify_signature": False})
    assert claims["exp"] == int(capped.expires_at.timestamp())


def test_the_row_is_the_authority_revoked_or_expired_tokens_stop(two_projects):
    settings = two_projects
    index = index_engine(settings.index_url)
    token, secret = issue_token(settings, "alpha", Role.researcher)
    with pytest.raises(TokenNotFound):  # beta cannot revoke alpha's token
        revoke_token(index, "beta", token.id)
    assert verify_token(settings, secret) is not None
    first = revoke_token(index, "alpha", token.id).revoked_at
    assert verify_token(settings, secret) is None
    assert revoke_token(index, "alpha", token.id).revoked_at == first  # idempotent
    other, other_secret = issue_token(settings, "alpha", Role.researcher)
    _expire(settings, other.id)  # the row's expiry counts even while the JWT's exp has not come
    assert verify_token(settings, other_secret) is None


def test_a_site_admin_token_is_site_wide_and_other_roles_need_a_project(two_projects):
    settings = two_projects
    admin, secret = issue_token(settings, None, Role.site_admin)
    principal = verify_token(settings, secret)
    assert principal.site_admin and principal.memberships == frozenset()
    assert [t.id for t in list_tokens(index_engine(settings.index_url), None)] == [admin.id]
    with pytest.raises(TokenError, match="site-wide"):
        issue_token(settings, "alpha", Role.site_admin)
    with pytest.raises(TokenError, match="needs a project"):
        issue_token(settings, None, Role.researcher)
    with pytest.raises(TokenError, match="grant"):
        issue_token(settings, "alpha", Role.compute)


def test_issuing_refuses_unknown_projects_roles_and_lifetimes(two_projects):
    settings = two_projects
    with pytest.raises(TokenError, match="no project"):
        issue_token(settings, "gamma", Role.researcher)
    with pytest.raises(TokenError, match="unknown role"):
        issue_token(settings, "alpha", "site_god")
    with pytest.raises(TokenError, match="positive"):
        issue_token(settings, "alpha", Role.researcher, expires_in=dt.timedelta(0))
    with Session(index_engine(settings.index_url)) as session:
        assert session.exec(select(Token)).all() == []


def test_legacy_static_tokens_keep_working_until_revoked(two_projects):
    settings = two_projects
    token_id, secret = legacy_token(settings, "alpha", Role.researcher)
    assert verify_token(settings, secret) == Principal.bound("alpha", Role.researcher, token_id)
    tampered = secret[:-1] + ("A" if secret[-1] != "A" else "B")
    assert verify_token(settings, tampered) is None
    revoke_token(index_engine(settings.index_url), "alpha", token_id)
    assert verify_token(settings, secret) is None


def test_a_jwt_cannot_name_a_legacy_tokens_row(two_projects):
    """A legacy row has a hash: a JWT naming it (however it was signed) is not how it was
    issued, so it opens nothing."""
    settings = two_projects
    token_id, _ = legacy_token(settings, "alpha", Role.data_manager)
    credentials = Credentials(settings)
    forged = credentials._sign(f"token:{token_id}", token_id,
                               dt.datetime.now(dt.UTC) + dt.timedelta(hours=1), {})  # fmt: skip
    assert credentials.authenticate(forged) is None


def test_tokens_on_postgresql(postgres_url, tmp_path, monkeypatch):
    monkeypatch.setenv("DEPOT_DATA_DIR", str(tmp_path / "data"))
    from app.config import Settings

    settings = Settings(data_dir=tmp_path / "data", database_url=postgres_url)
    create_project(settings, "alpha", "Alpha")
    token, secret = issue_token(settings, "alpha", Role.data_manager)
    assert verify_token(settings, secret) == Principal.bound("alpha", Role.data_manager, token.id)
    _expire(settings, token.id)
    assert verify_token(settings, secret) is None
    other, other_secret = issue_token(settings, "alpha", Role.researcher)
    revoke_token(index_engine(settings.index_url), "alpha", other.id)
    assert verify_token(settings, other_secret) is None
    listed = list_tokens(index_engine(settings.index_url), "alpha")
    assert [t.id for t in listed] == [token.id, other.id]
    index_engine(settings.index_url).dispose()


# --- over HTTP --------------------------------------------------------------------------------


@pytest.fixture
def client(two_projects):
    return TestClient(create_app(two_projects), client=("127.0.0.1", 50000))


def _bearer(secret: str) -> dict:
    return {"Authorization": f"Bearer {secret}"}


def assert_401(response, presented: bool, secret: str = "") -> None:
    assert response.status_code == 401
    challenge = response.headers["WWW-Authenticate"]
    assert challenge.startswith('Bearer realm="imaging-depot"')
    assert ('error="invalid_token"' in challenge) is presented
    assert set(response.json()) == {"detail"}
    if secret:
        assert secret not in response.text and secret[-43:] not in response.text


def test_no_token_answers_401_with_a_bearer_challenge(client):
    assert_401(client.get(QIDO.format("alpha")), presented=False)
    assert_401(client.get(QIDO.format("alpha"), headers={"Authorization": "Basic eDp5"}),
               presented=False)  # fmt: skip


@pytest.mark.parametrize(
    "header",
    ["Bearer", "Bearer ", "Bearer garbage", "Bearer a b", "Bearer depot_0123456789ab_short",
     "Bearer " + "x" * 9000, "Bearer a.b.c", "Bearer e30.e30.",
     "Bearer \u00e9\u00e9".encode("latin-1")],
)  # fmt: skip
def test_garbage_tokens_answer_401_invalid_token(client, header):
    assert_401(client.get(QIDO.format("alpha"), headers={"Authorization": header}), True)


def test_revoked_expired_and_tampered_tokens_answer_401(client, two_projects):
    settings = two_projects
    token, secret = issue_token(settings, "alpha", Role.researcher)
    assert client.get(QIDO.format("alpha"), headers=_bearer(secret)).status_code == 200
    head, payload, signature = secret.split(".")
    other = "A" if signature[0] != "A" else "B"
    tampered = f"{head}.{payload}.{other}{signature[1:]}"
    assert_401(client.get(QIDO.format("alpha"), headers=_bearer(tampered)), True, tampered)
    revoke_token(index_engine(settings.index_url), "alpha", token.id)
    assert_401(client.get(QIDO.format("alpha"), headers=_bearer(secret)), True, secret)
    expired, old = issue_token(settings, "alpha", Role.researcher)
    _expire(settings, expired.id)
    assert_401(client.get(QIDO.format("alpha"), headers=_bearer(old)), True, old)


def test_another_projects_token_answers_404_not_403(client, two_projects):
    _, beta = issue_token(two_projects, "beta", Role.data_manager)
    for method, path in (("GET", QIDO.format("alpha")), ("POST", STOW_INGEST.format("alpha")),
                         ("GET", QIDO.format("nowhere"))):  # fmt: skip
        response = client.request(method, path, headers=_bearer(beta))
        assert response.status_code == 404, path
        assert beta not in response.text
    assert client.get(QIDO.format("beta"), headers=_bearer(beta)).status_code == 200


def test_a_researcher_on_a_data_manager_route_answers_403(client, two_projects):
    _, researcher = issue_token(two_projects, "alpha", Role.researcher)
    denied = client.post(STOW_INGEST.format("alpha"), headers=_bearer(researcher))
    assert denied.status_code == 403 and researcher not in denied.text
    assert client.get(QIDO.format("alpha"), headers=_bearer(researcher)).status_code == 200


def test_the_bearer_scheme_is_case_insensitive(client, two_projects):
    _, secret = issue_token(two_projects, "alpha", Role.researcher)
    got = client.get(QIDO.format("alpha"), headers={"authorization": f"bearer {secret}"})
    assert got.status_code == 200


def test_require_needs_a_role():
    with pytest.raises(ValueError):
        require()


def test_principals_say_how_they_were_proven(two_projects):
    token, secret = issue_token(two_projects, "alpha", Role.auditor)
    principal = verify_token(two_projects, secret)
    assert principal.kind is Kind.token and principal.subject == token.id
    assert principal.role_in("alpha") is Role.auditor and principal.role_in("beta") is None


# --- the CLI ----------------------------------------------------------------------------------

runner = CliRunner()
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")


def _run(*args: str):
    return runner.invoke(cli_app, list(args), catch_exceptions=False)


def test_token_create_list_revoke_from_the_cli(settings):
    assert _run("project", "create", "alpha", "--title", "Alpha").exit_code == 0
    created = _run("token", "create", "--project", "alpha", "--role", "researcher",
                   "--label", "Dr Martin", "--expires-days", "30")  # fmt: skip
    assert created.exit_code == 0, created.output
    secret = _JWT.search(created.output).group(0)
    token_id = pyjwt.decode(secret, options={"verify_signature": False})["jti"]
    assert "not be shown again" in created.output
    assert "http://127.0.0.1:8080/projects/alpha/" in created.output
    assert "Authorization: Bearer" in created.output
    assert verify_token(settings, secret) == Principal.bound("alpha", Role.researcher, token_id)

    listed = _run("token", "list", "--project", "alpha")
    assert listed.exit_code == 0
    assert token_id in listed.output and "researcher" in listed.output
    assert "Dr Martin" in listed.output and secret[-20:] not in listed.output

    revoked = _run("token", "revoke", "--project", "alpha", token_id)
    assert revoked.exit_code == 0 and "revoked" in revoked.output
    assert verify_token(settings, secret) is None
    assert _run("token", "revoke", "--project", "alpha", "0123456789ab").exit_code == 2


def test_a_site_admin_token_from_the_cli(settings):
    created = _run("token", "create", "--role", "site_admin", "--label", "ops")
    assert created.exit_code == 0, created.output
    secret = _JWT.search(created.output).group(0)
    assert verify_token(settings, secret).site_admin
    assert "the whole site" in created.output


def test_token_create_refuses_an_unknown_project_or_role(settings):
    assert _run("project", "create", "alpha", "--title", "Alpha").exit_code == 0
    missing = _run("token", "create", "--project", "gamma", "--role", "researcher")
    assert missing.exit_code == 2 and "no project gamma" in missing.output
    assert _run("token", "create", "--project", "alpha", "--role", "admin").exit_code == 2
    assert _run("token", "list", "--project", "gamma").exit_code == 2
