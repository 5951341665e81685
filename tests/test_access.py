"""Access beyond project tokens: compute grants, site admins and members, the hospital's
identity provider (OIDC), and hostile tokens refused over HTTP.

The IdP is a real HTTP server on loopback publishing a JWK Set; tokens are signed with real
RSA keys. Nothing is mocked.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi.testclient import TestClient
from sqlmodel import Session, select
from typer.testing import CliRunner

from app.auth.credentials import Credentials, issue_token
from app.auth.grants import GrantError
from app.auth.roles import Role
from app.cli import app as cli_app
from app.main import create_app
from app.projects import create_project
from app.retention import set_retention
from app.store.index import index_engine
from app.store.models import AccessGrant, AuditEvent
from tests.samples import sample
from tests.test_auth import assert_401

pytest_plugins = ["tests.blobstores", "tests.research_server"]

QIDO = "/projects/{}/dicom-web/studies"
GRANTS = "/projects/alpha/access-grants"
READ = {"scopes": ["dicomweb-read"], "expires_in_hours": 1}


def _bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def _study_uids(response) -> set[str]:
    assert response.status_code == 200, response.text
    return {item["0020000D"]["Value"][0] for item in response.json()}


# --- compute grants ---------------------------------------------------------------------------


def test_a_grant_reads_its_studies_only_and_is_logged(research):
    stored = research.ingest([sample("CT_small.dcm"), sample("MR_small.dcm")]).stored
    studies = sorted({s.study_uid for s in stored})
    assert len(studies) == 2
    opened, hidden = studies
    issued = research.client.post(
        GRANTS, headers=research.headers("manager"),
        json={"scopes": ["dicomweb-read"], "studies": [opened], "expires_in_hours": 1,
              "label": "gpu-cluster"},
    )  # fmt: skip
    assert issued.status_code == 201, issued.text
    grant = issued.json()
    token = grant["token"]
    assert grant["studies"] == [opened] and grant["scopes"] == ["dicomweb-read"]
    client = research.client
    assert _study_uids(client.get(QIDO.format("alpha"), headers=_bearer(token))) == {opened}
    assert _study_uids(client.get("/projects/alpha/dicom-web/series", headers=_bearer(token)))
    series = client.get(f"{QIDO.format('alpha')}/{opened}/series", headers=_bearer(token))
    assert series.status_code == 200
    for url in (f"{QIDO.format('alpha')}/{hidden}", f"{QIDO.format('alpha')}/{hidden}/metadata",
                f"{QIDO.format('alpha')}/{hidden}/series"):  # fmt: skip
        assert client.get(url, headers=_bearer(token)).status_code == 404, url
    meta = client.get(f"{QIDO.format('alpha')}/{opened}/metadata", headers=_bearer(token))
    assert meta.status_code == 200
    one = next(s for s in stored if s.study_uid == hidden)
    uri = (f"/projects/alpha/wado?requestType=WADO&studyUID={hidden}&seriesUID={one.series_uid}"
           f"&objectUID={one.sop_uid}&contentType=application/dicom")  # fmt: skip
    assert client.get(uri, headers=_bearer(token)).status_code == 404
    # Read only: no STOW, no delete, no grants; another project is 404.
    assert client.post(QIDO.format("alpha"), headers=_bearer(token)).status_code == 403
    assert (
        client.delete(f"{QIDO.format('alpha')}/{opened}", headers=_bearer(token)).status_code == 403
    )
    assert client.get(GRANTS, headers=_bearer(token)).status_code == 403
    assert client.get(QIDO.format("beta"), headers=_bearer(token)).status_code == 404

    with Session(research.stores.index) as session:
        events = session.exec(select(AuditEvent).order_by(AuditEvent.seq)).all()
    used = [e for e in events if e.agent == grant["id"]]
    assert len(used) >= 8  # every use, refusals included
    issued_events = [e.event for e in events if "110113" in e.event and grant["id"] in e.event]
    assert len(issued_events) == 1 and token not in issued_events[0]
    assert all(token not in e.event for e in events)


def test_a_revoked_grant_fails_at_its_next_request_and_an_expired_one_on_time(research):
    client, manager = research.client, research.headers("manager")
    body = {"scopes": ["dicomweb-read"], "expires_in_hours": 1}
    grant = client.post(GRANTS, headers=manager, json=body).json()
    assert client.get(QIDO.format("alpha"), headers=_bearer(grant["token"])).status_code == 200
    assert client.delete(f"{GRANTS}/{grant['id']}", headers=manager).status_code == 204
    assert_401(client.get(QIDO.format("alpha"), headers=_bearer(grant["token"])), True)
    listed = client.get(GRANTS, headers=manager).json()
    assert listed[0]["id"] == grant["id"] and listed[0]["revoked_at"] is not None
    assert all("token" not in g for g in listed)
    assert client.delete(f"{GRANTS}/g0000000000000000", headers=manager).status_code == 404

    short = client.post(GRANTS, headers=manager, json=body).json()
    assert client.get(QIDO.format("alpha"), headers=_bearer(short["token"])).status_code == 200
    with Session(research.stores.index) as session:  # its hour has passed
        row = session.get(AccessGrant, short["id"])
        row.expires_at = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
        session.add(row)
        session.commit()
    assert_401(client.get(QIDO.format("alpha"), headers=_bearer(short["token"])), True)


def test_a_grant_expires_by_its_jwt_too(settings):
    """Seconds-long grant, no database edit: the token itself stops at its `exp` (plus the
    tolerated skew, set to 0 here)."""
    create_project(settings, "alpha", "Alpha")
    settings.oidc_leeway_seconds = 0
    app = create_app(settings)
    credentials: Credentials = app.state.credentials
    _, token = credentials.issue_grant(
        "alpha", scopes=["dicomweb-read"], lifetime=dt.timedelta(seconds=2)
    )
    client = TestClient(app, client=("127.0.0.1", 50000))
    assert client.get(QIDO.format("alpha"), headers=_bearer(token)).status_code == 200
    exp = pyjwt.decode(token, options={"verify_signature": False})["exp"]
    while dt.datetime.now(dt.UTC).timestamp() < exp + 1:
        threading.Event().wait(0.2)
    assert_401(client.get(QIDO.format("alpha"), headers=_bearer(token)), True)


def test_a_grant_scope_opens_only_its_surface(settings):
    create_project(settings, "alpha", "Alpha")
    app = create_app(settings)
    _, fhir_only = app.state.credentials.issue_grant(
        "alpha", scopes=["fhir-read"], lifetime=dt.timedelta(hours=1)
    )
    client = TestClient(app, client=("127.0.0.1", 50000))
    assert client.get(QIDO.format("alpha"), headers=_bearer(fhir_only)).status_code == 403


def test_grant_expiry_is_capped_by_config_and_by_the_projects_end(settings):
    create_project(settings, "alpha", "Alpha")
    settings.grant_max_hours = 24
    credentials = Credentials(settings)
    grant, token = credentials.issue_grant(
        "alpha", scopes=["dicomweb-read"], lifetime=dt.timedelta(days=30)
    )
    assert grant.expires_at - grant.created_at == dt.timedelta(hours=24)
    assert pyjwt.decode(token, options={"verify_signature": False})["exp"] == int(
        grant.expires_at.timestamp()
    )
    tomorrow = dt.datetime.now(dt.UTC).date() + dt.timedelta(days=1)
    set_retention(settings, "alpha", tomorrow)
    settings.grant_max_hours = 24 * 30
    capped, _ = credentials.issue_grant(
        "alpha", scopes=["dicomweb-read"], lifetime=dt.timedelta(days=30)
    )
    end = dt.datetime.combine(tomorrow + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC)
    assert capped.expires_at == end
    set_retention(settings, "alpha", dt.date(2020, 1, 1))
    with pytest.raises(GrantError, match="ended"):
        credentials.issue_grant("alpha", scopes=["dicomweb-read"], lifetime=dt.timedelta(hours=1))


@pytest.mark.parametrize(
    ("body", "reason"),
    [({**READ, "scopes": ["dicomweb-write"]}, None),
     ({**READ, "scopes": []}, None),
     ({**READ, "expires_in_hours": 0}, None),
     ({**READ, "studies": ["1.2.3"]}, "not in the project"),
     ({**READ, "studies": ["x'); --"]}, "StudyInstanceUIDs"),
     ({**READ, "studies": []}, "empty"),
     ({**READ, "admin": True}, None)],
)  # fmt: skip
def test_bad_grant_requests_answer_422_with_a_reason(settings, body, reason):
    create_project(settings, "alpha", "Alpha")
    app = create_app(settings)
    _, manager = app.state.credentials.issue_token("alpha", Role.data_manager)
    client = TestClient(app, client=("127.0.0.1", 50000))
    answer = client.post(GRANTS, headers=_bearer(manager), json=body)
    assert answer.status_code == 422
    if reason:
        assert reason in answer.json()["detail"]
    with Session(index_engine(settings.index_url)) as session:
        assert session.exec(select(AccessGrant)).all() == []


def test_grants_from_the_cli(settings):
    runner = CliRunner()
    assert runner.invoke(cli_app, ["project", "create", "alpha", "--title", "A"]).exit_code == 0
    created = runner.invoke(
        cli_app, ["grant", "create", "--project", "alpha", "--hours", "2", "--label", "hpc"]
    )
    assert created.exit_code == 0, created.output
    grant_id = created.output.split("Grant ")[1].split()[0]
    assert "dicomweb-read, fhir-read" in created.output and "eyJ" in created.output
    listed = runner.invoke(cli_app, ["grant", "list", "--project", "alpha"])
    assert grant_id in listed.output and "hpc" in listed.output and "eyJ" not in listed.output
    revoked = runner.invoke(cli_app, ["grant", "revoke", grant_id, "--project", "alpha"])
    assert revoked.exit_code == 0 and "revoked" in revoked.output


# --- site admins and members ------------------------------------------------------------------


@pytest.fixture
def site(settings):
    create_project(settings, "alpha", "Alpha")
    app = create_app(settings)
    credentials: Credentials = app.state.credentials
    tokens = {
        "admin": credentials.issue_token(None, Role.site_admin)[1],
        "manager": credentials.issue_token("alpha", Role.data_manager)[1],
    }
    return TestClient(app, client=("127.0.0.1", 50000)), tokens


def test_a_site_admin_manages_projects_and_members_but_sees_no_image(site):
    client, tokens = site
    admin = _bearer(tokens["admin"])
    created = client.post("/projects", headers=admin, json={"id": "gamma", "title": "Gamma"})
    assert created.status_code == 201 and created.json()["state"] == "active"
    again = client.post("/projects", headers=admin, json={"id": "gamma", "title": "Gamma"})
    assert again.status_code == 409
    bad = client.post("/projects", headers=admin, json={"id": "Not OK!", "title": "x"})
    assert bad.status_code == 422
    assert [p["id"] for p in client.get("/projects", headers=admin).json()] == ["alpha", "gamma"]
    assert client.get("/projects/alpha", headers=admin).status_code == 200
    assert client.get("/projects/nowhere", headers=admin).status_code == 404
    # No image, no audit trail, no grants: 403 (a site admin knows the project exists).
    for url in (QIDO.format("alpha"), "/projects/alpha/fhir/AuditEvent", GRANTS):
        assert client.get(url, headers=admin).status_code == 403, url

    put = client.put("/projects/alpha/members/idp-sub-42", headers=admin, json={"role": "auditor"})
    assert put.status_code == 200 and put.json()["role"] == "auditor"
    wrong = client.put("/projects/alpha/members/idp-sub-42", headers=admin,
                       json={"role": "site_admin"})  # fmt: skip
    assert wrong.status_code == 422
    members = client.get("/projects/alpha/members", headers=admin).json()
    assert [(m["subject"], m["role"]) for m in members] == [("idp-sub-42", "auditor")]
    assert client.delete("/projects/alpha/members/idp-sub-42", headers=admin).status_code == 204
    assert client.delete("/projects/alpha/members/idp-sub-42", headers=admin).status_code == 404

    manager = _bearer(tokens["manager"])
    assert client.get("/projects", headers=manager).status_code == 403
    assert client.get("/projects/alpha", headers=manager).json()["id"] == "alpha"
    assert client.get("/projects/alpha/members", headers=manager).status_code == 403


# --- the hospital's identity provider ---------------------------------------------------------


class IdentityProvider:
    """A JWK Set on a real loopback HTTP server, and tokens signed with its RSA key."""

    issuer = "https://idp.hospital.example/realms/research"

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = "idp-key-1"
        jwk = json.loads(pyjwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
        body = json.dumps({"keys": [{**jwk, "kid": self.kid, "alg": "RS256", "use": "sig"}]})

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # the stdlib's name
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body.encode())

            def log_message(self, *_args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.jwks_url = f"http://127.0.0.1:{self.server.server_port}/certs"

    def token(self, sub: str, roles: list[str] | None = None, **overrides) -> str:
        now = int(dt.datetime.now(dt.UTC).timestamp())
        claims = {"iss": self.issuer, "aud": "imaging-depot", "sub": sub, "iat": now,
                  "exp": now + 300}  # fmt: skip
        if roles is not None:
            claims["depot_roles"] = roles
        claims.update(overrides)
        return pyjwt.encode(claims, self.key, algorithm="RS256", headers={"kid": self.kid})

    def public_pem(self) -> bytes:
        return self.key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


@pytest.fixture
def idp(settings):
    provider = IdentityProvider()
    settings.oidc_issuer = provider.issuer
    settings.oidc_jwks_url = provider.jwks_url
    create_project(settings, "alpha", "Alpha")
    create_project(settings, "beta", "Beta")
    client = TestClient(create_app(settings), client=("127.0.0.1", 50000))
    yield provider, client
    provider.server.shutdown()


def test_idp_tokens_open_projects_from_the_roles_claim_and_the_member_list(idp, settings):
    provider, client = idp
    researcher = provider.token("u-1", ["alpha:researcher"])
    assert client.get(QIDO.format("alpha"), headers=_bearer(researcher)).status_code == 200
    assert client.get(QIDO.format("beta"), headers=_bearer(researcher)).status_code == 404
    assert (
        client.post("/projects/alpha/ingest/studies", headers=_bearer(researcher)).status_code
        == 403
    )
    # Membership from the site's list: the person is auditor of beta.
    admin = issue_token(settings, None, Role.site_admin)[1]
    client.put("/projects/beta/members/u-1", headers=_bearer(admin), json={"role": "auditor"})
    assert (
        client.get("/projects/beta/fhir/AuditEvent", headers=_bearer(researcher)).status_code == 200
    )
    assert client.get(QIDO.format("beta"), headers=_bearer(researcher)).status_code == 403
    # The member list wins where both speak; bogus claim entries grant nothing.
    both = provider.token("u-1", ["beta:data_manager", "alpha:compute", "gamma", "site_god"])
    assert client.get(QIDO.format("beta"), headers=_bearer(both)).status_code == 403
    assert client.get(QIDO.format("alpha"), headers=_bearer(both)).status_code == 404
    site_admin = provider.token("u-2", ["site_admin"])
    assert client.get("/projects", headers=_bearer(site_admin)).status_code == 200


def test_hostile_idp_tokens_are_refused_with_401(idp):
    provider, client = idp
    now = int(dt.datetime.now(dt.UTC).timestamp())
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    good_claims = {"iss": provider.issuer, "aud": "imaging-depot", "sub": "u-1", "iat": now,
                   "exp": now + 300, "depot_roles": ["alpha:researcher"]}  # fmt: skip
    hostile = {
        "expired": provider.token("u-1", ["alpha:researcher"], exp=now - 120, iat=now - 600),
        "not yet valid": provider.token("u-1", ["alpha:researcher"], nbf=now + 600),
        "wrong issuer": provider.token("u-1", ["alpha:researcher"], iss="https://evil.example"),
        "wrong audience": provider.token("u-1", ["alpha:researcher"], aud="another-app"),
        "bad signature": pyjwt.encode(
            good_claims, other_key, algorithm="RS256", headers={"kid": provider.kid}
        ),
        "unknown kid": pyjwt.encode(
            good_claims, other_key, algorithm="RS256", headers={"kid": "nope"}
        ),
        "alg none": _unsigned(good_claims, provider.kid),
        "HS256 with the public key": _hmac_with(good_claims, provider.public_pem(), provider.kid),
    }
    assert (
        client.get(
            QIDO.format("alpha"), headers=_bearer(provider.token("u-1", ["alpha:researcher"]))
        ).status_code
        == 200
    )
    for name, token in hostile.items():
        answer = client.get(QIDO.format("alpha"), headers=_bearer(token))
        assert answer.status_code == 401, name
        assert 'error="invalid_token"' in answer.headers["WWW-Authenticate"], name


def test_hostile_local_tokens_are_refused_with_401(settings):
    """Tokens in the embedded issuer's name: forged, confused, or claiming another project."""
    create_project(settings, "alpha", "Alpha")
    create_project(settings, "beta", "Beta")
    app = create_app(settings)
    credentials: Credentials = app.state.credentials
    client = TestClient(app, client=("127.0.0.1", 50000))
    grant, token = credentials.issue_grant(
        "alpha", scopes=["dicomweb-read"], lifetime=dt.timedelta(hours=1)
    )
    claims = pyjwt.decode(token, options={"verify_signature": False})
    kid = pyjwt.get_unverified_header(token)["kid"]
    jwks = credentials.jwks()
    public = pyjwt.algorithms.ECAlgorithm.from_jwk(json.dumps(jwks["keys"][0]))
    public_pem = public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    future = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    hostile = {
        "grant for another project": credentials._sign(
            f"grant:{grant.id}", grant.id, future, {"depot_project": "beta"}
        ),
        "unknown grant": credentials._sign(
            "grant:g0000000000000000", "g0000000000000000", future, {"depot_project": "alpha"}
        ),
        "subject not matching jti": credentials._sign("token:abc", "def", future, {}),
        "alg none": _unsigned(claims, kid),
        "HS256 with our public key": _hmac_with(claims, public_pem, kid),
    }
    for name, forged in hostile.items():
        for project in ("alpha", "beta"):
            answer = client.get(QIDO.format(project), headers=_bearer(forged))
            assert answer.status_code == 401, (name, project)
    assert client.get(QIDO.format("alpha"), headers=_bearer(token)).status_code == 200
    assert client.get(QIDO.format("beta"), headers=_bearer(token)).status_code == 404


def _b64(data: bytes) -> str:
    import base64

    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unsigned(claims: dict, kid: str) -> str:
    header = _b64(json.dumps({"alg": "none", "typ": "JWT", "kid": kid}).encode())
    return f"{header}.{_b64(json.dumps(claims).encode())}."


def _hmac_with(claims: dict, secret: bytes, kid: str) -> str:
    """HS256 keyed with a public key: the classic RS/HS confusion. PyJWT refuses to *make*
    one with a PEM key, so it is made by hand, as an attacker would."""
    import hashlib
    import hmac

    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
    payload = _b64(json.dumps(claims).encode())
    signature = hmac.new(secret, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{_b64(signature)}"


def test_an_unreachable_identity_provider_answers_503_not_401(settings):
    """The IdP's keys cannot be fetched (it is down): its tokens could not be checked, which
    is not the caller's fault. Our own tokens keep working."""
    provider = IdentityProvider()
    provider.server.shutdown()
    provider.server.server_close()  # nothing listens there any more
    settings.oidc_issuer = provider.issuer
    settings.oidc_jwks_url = provider.jwks_url
    create_project(settings, "alpha", "Alpha")
    app = create_app(settings)
    client = TestClient(app, client=("127.0.0.1", 50000))
    answer = client.get(
        QIDO.format("alpha"), headers=_bearer(provider.token("u-1", ["alpha:researcher"]))
    )
    assert answer.status_code == 503 and answer.headers["Retry-After"] == "30"
    _, ours = app.state.credentials.issue_token("alpha", Role.researcher)
    assert client.get(QIDO.format("alpha"), headers=_bearer(ours)).status_code == 200
