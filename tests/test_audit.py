"""The audit trail: one AuditEvent per access, hash-chained, searchable by the DPO, never a
leak. HTTP tests use the `research` fixture, so they run on SQLite + files and PostgreSQL + S3.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import threading
from pathlib import Path
from urllib.parse import urlsplit

import jwt
import pytest
from fastapi.testclient import TestClient
from pydicom import dcmread
from sqlalchemy import create_engine, select, text
from sqlalchemy import event as sa_event
from typer.testing import CliRunner

from app.audit import events as ev
from app.audit.log import AuditError, Query, append, export, verify
from app.auth.credentials import issue_token
from app.auth.grants import revoke_grant
from app.auth.roles import Role
from app.auth.tokens import revoke_token
from app.cli import app as cli_app
from app.dicom.multipart import new_boundary
from app.fhir.conformance import problems
from app.main import create_app
from app.projects import create_project
from app.store.index import _sqlite_pragmas, index_engine
from app.store.models import Study
from tests.identities import Identity, leaked_tokens, original_uids, write_injected
from tests.samples import sample

pytest_plugins = ["tests.blobstores", "tests.research_server"]

WHO = Identity()
DCM_IMPORT, DCM_QUERY, DCM_EXPORT, DCM_ACCESSED = "110107", "110112", "110106", "110103"
runner = CliRunner()


# --- helpers ----------------------------------------------------------------------------------


def _stow(client, secret: str, url: str, paths: list[Path]):
    boundary = new_boundary()
    body = b""
    for path in paths:
        body += f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        body += path.read_bytes() + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    ctype = f'multipart/related; type="application/dicom"; boundary="{boundary}"'
    headers = {"Content-Type": ctype, "Authorization": f"Bearer {secret}"}
    return client.post(url, content=body, headers=headers)


def _injected(tmp_path: Path) -> list[Path]:
    folder = tmp_path / "in"
    folder.mkdir(exist_ok=True)
    return [
        write_injected(sample("CT_small.dcm"), folder / "QUIMPERLE_Hortensia_ct.dcm", WHO),
        write_injected(sample("MR_small.dcm"), folder / "mr.dcm", WHO),
    ]


def _table_dump(index_url: str) -> bytes:
    """Every column of every audit row, as bytes: what a leak check must search."""
    with index_engine(index_url).connect() as conn:
        rows = conn.execute(text("SELECT * FROM audit_event ORDER BY seq")).all()
    return "\n".join(repr(tuple(r)) for r in rows).encode("utf-8")


def _rows(index_url: str, project: str | None = None) -> list[dict]:
    query = Query(project_id=project)
    return list(export(index_engine(index_url), query))


def _code(event: dict) -> str:
    return event["type"]["code"]


def _auditor(research) -> str:
    if "auditor" not in research.tokens:
        research.tokens["auditor"] = issue_token(research.settings, "alpha", Role.auditor)[1]
    return "auditor"


def _search(research, query: str = "", who: str | None = None):
    who = who or _auditor(research)
    return research.get(f"/projects/alpha/fhir/AuditEvent{query}", who=who)


def _search_all(research, query: str) -> list[dict]:
    """Follow `next` links to the end."""
    found, url = [], f"/projects/alpha/fhir/AuditEvent{query}"
    while url:
        page = research.get(url, who=_auditor(research))
        assert page.status_code == 200, page.text
        bundle = page.json()
        assert problems(bundle) == []  # every AuditEvent parses as FHIR (R4B models)
        found += [e["resource"] for e in bundle.get("entry", [])]
        nxt = [link["url"] for link in bundle["link"] if link["relation"] == "next"]
        url = None
        if nxt:
            parts = urlsplit(nxt[0])
            url = f"{parts.path}?{parts.query}"
    return found


# --- recording HTTP requests ------------------------------------------------------------------


def test_each_request_yields_one_event_with_its_outcome_and_nothing_identifying(research, tmp_path):
    paths = _injected(tmp_path)
    original_study = dcmread(paths[0]).StudyInstanceUID
    stored = _stow(
        research.client, research.tokens["manager"],
        f"/projects/alpha/ingest/studies/{original_study}", paths[:1],
    )  # fmt: skip
    assert stored.status_code in (200, 202), stored.text
    assert _stow(
        research.client, research.tokens["manager"], "/projects/alpha/ingest/studies", paths[1:]
    ).status_code in (200, 202)
    base = "/projects/alpha/dicom-web"
    studies = research.get(f"{base}/studies?PatientName={WHO.family}*&limit=10")
    assert studies.status_code in (200, 204)
    listing = research.get(f"{base}/studies?includefield=all")
    assert listing.status_code == 200
    study = listing.json()[0]["0020000D"]["Value"][0]
    series = research.get(f"{base}/studies/{study}/series").json()[0]["0020000E"]["Value"][0]
    metadata = research.get(f"{base}/studies/{study}/series/{series}/metadata")
    assert metadata.status_code == 200
    assert research.client.get(f"{base}/studies").status_code == 401
    assert research.get(f"{base}/studies/{study}", who="other").status_code == 404
    deleted = research.client.delete(
        f"{base}/studies/{study}/series/{series}", headers=research.headers("manager")
    )
    assert deleted.status_code == 204
    assert research.get(f"{base}/studies/{study}/series/{series}/metadata").status_code == 404

    events = _rows(research.settings.index_url, "alpha")
    summary = [(_code(e), e["action"], e["outcome"]) for e in events]
    assert summary == [
        (DCM_IMPORT, "C", "0"),  # ingest STOW with the original study in the path
        (DCM_IMPORT, "C", "0"),  # ingest STOW
        (DCM_QUERY, "E", "0"),  # QIDO with a name in the query
        (DCM_QUERY, "E", "0"),  # QIDO
        (DCM_QUERY, "E", "0"),  # QIDO series
        (DCM_EXPORT, "R", "0"),  # WADO metadata
        (DCM_QUERY, "E", "4"),  # no token: 401
        (DCM_EXPORT, "R", "4"),  # another project's token: 404
        (DCM_ACCESSED, "D", "0"),  # delete
        (DCM_EXPORT, "R", "4"),  # the deleted series: 404
    ]
    assert [e["outcomeDesc"] for e in events[6:8]] == ["HTTP 401", "HTTP 404"]
    ingest_event = events[0]
    details = {d["type"]: d["valueString"] for d in ingest_event["entity"][0]["detail"]}
    assert details["route"] == "/projects/{project_id}/ingest/studies/{study_uid}"
    who = ingest_event["agent"][0]
    assert who["who"]["identifier"]["system"] == ev.TOKEN_SYSTEM
    assert who["role"][0]["coding"][0]["code"] == "data_manager"
    assert who["network"]["address"] == "127.0.0.1"
    assert "identifier" not in events[6]["agent"][0]["who"]  # 401: nobody proven
    assert events[7]["agent"][0]["who"]["display"] == "token of project beta"
    wado = events[5]
    uids = {e["what"]["identifier"]["value"] for e in wado["entity"][1:]}
    assert uids == {f"urn:oid:{study}", f"urn:oid:{series}"}
    query = events[2]["entity"][-1]["detail"]
    assert {"type": "PatientName", "valueString": "<redacted: 10 characters>"} in query
    assert {"type": "limit", "valueString": "10"} in query

    dump = _table_dump(research.settings.index_url)
    assert leaked_tokens(dump, WHO) == []
    for uid in original_uids(paths):
        assert uid.encode() not in dump
    for secret in research.tokens.values():
        assert secret.encode() not in dump
        assert secret.rsplit(".", 1)[1].encode() not in dump  # not even its signature
    assert verify(index_engine(research.settings.index_url)).intact


def test_an_audit_failure_refuses_the_request_with_503(settings, monkeypatch):
    create_project(settings, "alpha", "Alpha")
    secret = issue_token(settings, "alpha", Role.researcher)[1]
    client = TestClient(create_app(settings))
    url = "/projects/alpha/dicom-web/studies"
    assert client.get(url, headers={"Authorization": f"Bearer {secret}"}).status_code == 200

    def broken(*_args, **_kwargs):
        raise AuditError("the audit log could not record the event")

    monkeypatch.setattr("app.audit.http.append", broken)
    refused = client.get(url, headers={"Authorization": f"Bearer {secret}"})
    assert refused.status_code == 503 and "audit" in refused.json()["detail"]
    assert client.get("/healthz").status_code == 200  # outside /projects: not audited


# --- the auditor's search ---------------------------------------------------------------------


def test_auditor_searches_by_agent_entity_action_and_date_with_paging(research, tmp_path):
    research.ingest(_injected(tmp_path))
    base = "/projects/alpha/dicom-web"
    listing = research.get(f"{base}/studies")
    study = listing.json()[0]["0020000D"]["Value"][0]
    for _ in range(3):
        research.get(f"{base}/studies/{study}/metadata")
    research.get(f"{base}/studies", who="manager")

    assert _search(research, who="researcher").status_code == 403
    assert _search(research, who="manager").status_code == 403
    beta_auditor = issue_token(research.settings, "beta", Role.auditor)[1]
    research.tokens["beta-auditor"] = beta_auditor
    assert _search(research, who="beta-auditor").status_code == 404
    assert research.get(f"{base}/studies", who="beta-auditor").status_code == 404
    auditor_images = research.get(f"{base}/studies", who=_auditor(research))
    assert auditor_images.status_code == 403  # the DPO sees the trail, not the images

    answer = _search(research, "?action=R")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("application/fhir+json")
    bundle = answer.json()
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "searchset"
    assert bundle["total"] == 3
    assert {e["resource"]["action"] for e in bundle["entry"]} == {"R"}

    by_entity = _search_all(research, f"?entity={study}&_count=1")
    assert len(by_entity) == 3  # the three metadata reads; paging one per page
    assert len({e["id"] for e in by_entity}) == 3
    researcher_id = jwt.decode(research.tokens["researcher"], options={"verify_signature": False})[
        "jti"
    ]
    by_agent = _search_all(research, f"?agent={researcher_id}&_count=2")
    assert len(by_agent) == 5  # the listing, three reads, the refused audit search
    assert all(e["agent"][0]["who"]["identifier"]["value"] == researcher_id for e in by_agent)
    today = by_agent[0]["recorded"][:10]
    assert len(_search_all(research, f"?agent={researcher_id}&date={today}")) == 5
    assert len(_search_all(research, f"?agent={researcher_id}&date=ge{today}&date=le{today}")) == 5
    assert _search_all(research, f"?agent={researcher_id}&date=gt{today}") == []
    assert _search_all(research, f"?agent={researcher_id}&date=lt{today}") == []

    for bad in ("?foo=1", "?date=yesterday", "?action=X", "?_count=0", "?_count=abc",
                "?entity=<script>", "?date=ge2026-13-45"):  # fmt: skip
        refused = _search(research, bad)
        assert refused.status_code == 400, bad
        assert refused.json()["resourceType"] == "OperationOutcome"
    searches = _rows(research.settings.index_url, "alpha")
    assert any(
        e["subtype"][0]["code"] == "search-type" and _code(e) == DCM_QUERY for e in searches[-3:]
    )  # fmt: skip  (the auditor's own searches are recorded)


# --- the hash chain ---------------------------------------------------------------------------


def _chain(url: str, count: int = 6) -> None:
    engine = index_engine(url)
    for i in range(count):
        agent = ev.Agent("token", f"{i:012x}", "researcher", "127.0.0.1")
        event = ev.http_event(
            method="GET", route_template="/projects/{project_id}/dicom-web/studies",
            route_name="qido_studies", project_id="alpha", path_params={}, query=[],
            status=200, agent=agent,
        )  # fmt: skip
        append(engine, event, "alpha" if i % 2 else None)


def _sql(url: str, *statements: str) -> None:
    with index_engine(url).begin() as conn:
        for statement in statements:
            conn.execute(text(statement))


TAMPERING = {
    "altered": (
        ["UPDATE audit_event SET event = replace(event, '\"outcome\":\"0\"', "
         "'\"outcome\":\"4\"') WHERE seq = 3"], 3, "altered",
    ),
    "deleted": (["DELETE FROM audit_event WHERE seq = 3"], 3, "missing"),
    "reordered": (
        ["UPDATE audit_event SET seq = -1 WHERE seq = 3",
         "UPDATE audit_event SET seq = 3 WHERE seq = 4",
         "UPDATE audit_event SET seq = 4 WHERE seq = -1"], 3, "does not point at record 2",
    ),
    "hash altered": (
        # the first hex digit changed whatever it was (a fixed 'f' is a no-op 1 time in 16)
        ["UPDATE audit_event SET hash = CASE WHEN substr(hash, 1, 1) = '0' THEN '1' ELSE '0' END"
         " || substr(hash, 2) WHERE seq = 3"], 3, "altered",
    ),
    "tail cut": (["DELETE FROM audit_event WHERE seq = 6"], 6, "head"),
    "search column": (["UPDATE audit_event SET agent = 'someone' WHERE seq = 2"], 2, "disagree"),
}  # fmt: skip


@pytest.mark.parametrize("kind", TAMPERING)
def test_verify_names_the_first_broken_link(settings, kind):
    url = settings.index_url
    _chain(url)
    intact = runner.invoke(cli_app, ["audit", "verify", "--project", "alpha"])
    assert intact.exit_code == 0, intact.output
    assert "6 records (3 of project alpha), chain intact" in intact.output
    statements, broken_at, reason = TAMPERING[kind]
    _sql(url, *statements)
    result = verify(index_engine(url))
    assert result.broken_at == broken_at, result
    assert reason in result.reason
    cli = runner.invoke(cli_app, ["audit", "verify"])
    assert cli.exit_code == 1
    assert f"broken at record {broken_at}" in cli.output


def test_a_rewritten_record_breaks_the_next_link(settings):
    """Someone alters record 3 and recomputes its hash: record 4 no longer points at it."""
    from app.audit.log import record_hash

    url = settings.index_url
    _chain(url)
    with index_engine(url).begin() as conn:
        row = conn.execute(text("SELECT * FROM audit_event WHERE seq = 3")).one()
        event = json.loads(row.event)
        event["outcome"] = "4"
        conn.execute(
            text("UPDATE audit_event SET event = :e, hash = :h WHERE seq = 3"),
            {"e": json.dumps(event), "h": record_hash(3, row.project_id, event, row.prev_hash)},
        )
    result = verify(index_engine(url))
    assert result.broken_at == 4 and "does not point at record 3" in result.reason


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_concurrent_appends_from_two_engines_keep_one_linear_chain(settings, backend, request):
    url = settings.index_url if backend == "sqlite" else request.getfixturevalue("postgres_url")
    index_engine(url)  # migrated
    # Two engines with their own pools, as two server processes would have.
    engines = [create_engine(url), create_engine(url)]
    if backend == "sqlite":
        for engine in engines:
            sa_event.listen(engine, "connect", _sqlite_pragmas)
    errors: list[BaseException] = []
    threads_count, each = 8, 15

    def writer(n: int) -> None:
        try:
            for i in range(each):
                agent = ev.Agent("token", f"{n:06x}{i:06x}", "researcher")
                event = ev.http_event(
                    method="GET", route_template=None, route_name="", project_id="alpha",
                    path_params={}, query=[], status=200, agent=agent,
                )  # fmt: skip
                append(engines[n % 2], event, "alpha")
        except BaseException as exc:  # noqa: BLE001  (reported by the main thread)
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(threads_count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for engine in engines:
        engine.dispose()
    assert errors == []
    result = verify(index_engine(url))
    assert result.intact, result
    assert result.records == result.head_seq == threads_count * each
    with index_engine(url).connect() as conn:
        seqs = conn.execute(text("SELECT seq FROM audit_event ORDER BY seq")).scalars().all()
    assert seqs == list(range(1, threads_count * each + 1))
    index_engine(url).dispose()


# --- events from the CLI ----------------------------------------------------------------------


def test_cli_records_tokens_ingest_and_reidentification_and_exports_ndjson(settings, tmp_path):
    def run(*args: str):
        return runner.invoke(cli_app, list(args), catch_exceptions=False)

    assert run("project", "create", "alpha", "--title", "Alpha").exit_code == 0
    created = run("token", "create", "--project", "alpha", "--role", "auditor")
    assert created.exit_code == 0, created.output
    token_id = re.search(r"Token (\w{12}) for project alpha, role auditor", created.output)[1]
    assert run("token", "revoke", token_id, "--project", "alpha").exit_code == 0
    paths = _injected(tmp_path)
    ingested = run("ingest", str(paths[0].parent), "--project", "alpha")
    assert ingested.exit_code == 0, ingested.output
    with index_engine(settings.index_url).connect() as conn:
        pseudonym = conn.execute(select(Study.patient_id)).scalars().first()
        studies = set(conn.execute(select(Study.study_uid)).scalars())
    assert run("vault", "reidentify", pseudonym, "--project", "alpha",
               "--reason", f"finding for {WHO.family}").exit_code == 0  # fmt: skip
    assert run("vault", "reidentify", WHO.patient_id, "--project", "alpha").exit_code != 0

    events = _rows(settings.index_url, "alpha")
    assert [(_code(e), e["action"], e["outcome"]) for e in events] == [
        ("110113", "C", "0"),  # token issued
        ("110113", "D", "0"),  # token revoked
        (DCM_IMPORT, "C", "0"),  # ingest run
        ("110110", "R", "0"),  # re-identification
        ("110110", "R", "4"),  # re-identification of an unknown value
    ]
    issued = events[0]["entity"][1]
    assert issued["what"]["identifier"]["value"] == token_id
    assert issued["detail"] == [{"type": "role", "valueString": "auditor"}]
    run_details = {d["type"]: d["valueString"] for d in events[2]["entity"][0]["detail"]}
    assert run_details["stored"] == "2" and run_details["failed"] == "0"
    assert {e["what"]["identifier"]["value"] for e in events[2]["entity"][1:]} == {
        f"urn:oid:{uid}" for uid in studies
    }
    assert events[3]["entity"][1]["what"]["identifier"]["value"] == pseudonym
    assert events[4]["entity"][1]["what"] == {"display": "<redacted: 11 characters>"}
    dump = _table_dump(settings.index_url)
    assert leaked_tokens(dump, WHO) == []  # no name from the reason or the file names
    for uid in original_uids(paths):
        assert uid.encode() not in dump

    exported = run("audit", "export", "--since", "2000-01-01", "--project", "alpha")
    lines = exported.output.splitlines()
    assert len(lines) == 5 and [json.loads(line)["id"] for line in lines] == [
        "1",
        "2",
        "3",
        "4",
        "5",
    ]
    assert all(json.loads(line)["resourceType"] == "AuditEvent" for line in lines)
    out = tmp_path / "audit.ndjson"
    assert run("audit", "export", "--since", "2999-01-01", "--out", str(out)).exit_code == 0
    assert out.read_text() == ""
    assert run("audit", "export", "--since", "last week").exit_code == 2
    verified = run("audit", "verify")
    assert verified.exit_code == 0 and "5 records, chain intact" in verified.output


def test_behind_a_trusted_proxy_the_forwarded_client_is_recorded(settings):
    create_project(settings, "alpha", "Alpha")
    client = TestClient(create_app(settings), client=("127.0.0.1", 50000))
    client.get("/projects/alpha/dicom-web/studies", headers={"X-Forwarded-For": "203.0.113.7"})
    spoofed = TestClient(create_app(settings), client=("198.51.100.9", 50000))
    spoofed.get("/projects/alpha/dicom-web/studies", headers={"X-Forwarded-For": "10.0.0.1"})
    addresses = [e["agent"][0]["network"]["address"] for e in _rows(settings.index_url)]
    assert addresses == ["203.0.113.7", "198.51.100.9"]  # an untrusted peer's header is ignored


def test_a_refused_token_is_recorded_by_the_public_id_it_claims_and_junk_by_none(settings):
    """docs/security.md: a revoked token shows as its public id with "unverified token"; a
    credential that is not one of ours records no identifier at all."""
    create_project(settings, "alpha", "Alpha")
    app = create_app(settings)
    credentials = app.state.credentials
    token, secret = credentials.issue_token("alpha", Role.researcher)
    grant, grant_token = credentials.issue_grant(
        "alpha", scopes=["dicomweb-read"], lifetime=dt.timedelta(hours=1)
    )
    revoke_token(credentials.engine, "alpha", token.id)
    revoke_grant(credentials.engine, "alpha", grant.id)
    client = TestClient(app, client=("127.0.0.1", 50000))
    url = "/projects/alpha/dicom-web/studies"
    for presented in (secret, grant_token, "junk.eyJqdGkiOiJ4In0.x", "a" * 300):
        assert client.get(url, headers={"Authorization": f"Bearer {presented}"}).status_code == 401
    agents = [e["agent"][0]["who"] for e in _rows(settings.index_url, "alpha")][-4:]
    assert (
        agents[0]["identifier"]["value"] == token.id and agents[0]["display"] == "unverified token"
    )
    assert agents[1]["identifier"]["value"] == grant.id
    assert agents[1]["identifier"]["system"] == ev.GRANT_SYSTEM
    assert agents[2] == agents[3] == {"display": "unverified token"}
