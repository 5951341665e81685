"""Retention and purge: expired projects go (blobs, rows, tokens, vault key), held or unexpired
ones stay, the signed purge record and the audit trail remain. Storage tests use the
`research` fixture, so they run on SQLite + files and PostgreSQL + S3."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from sqlalchemy import update
from typer.testing import CliRunner

from app import retention
from app.audit.log import Query, export, verify
from app.auth.credentials import issue_token, verify_token
from app.auth.roles import Role
from app.cli import app as cli_app
from app.ingest import ingest_files
from app.projects import create_project, get_project
from app.retention import (
    RetentionError,
    close_project,
    count_rows,
    expired_projects,
    purge_project,
    purge_record,
    run_retention,
    set_legal_hold,
    set_retention,
    verify_purge_record,
)
from app.store import index_repo
from app.store.index import index_engine
from app.store.layout import project_prefix
from app.store.models import PurgeRecord
from app.vault import LinkageNotFound, ProjectKeyMissing, Vault
from tests.identities import Identity, leaked_tokens, write_injected
from tests.samples import sample

pytest_plugins = ["tests.blobstores", "tests.research_server"]

TODAY = dt.date(2026, 11, 28)
NOTHING_LEFT = {  # every index table that holds a project's rows, after its purge
    "studies": 0, "series": 0, "instances": 0, "tokens": 0, "grants": 0, "members": 0,
    "provenance": 0, "dataset": 0,
}  # fmt: skip
LONG_AGO = dt.date(2010, 6, 30)  # declared end: retention ended 2020-06-30
WHO = Identity()
runner = CliRunner()


def _inputs(tmp_path: Path, name: str) -> list[Path]:
    folder = tmp_path / name
    folder.mkdir()
    return [
        write_injected(sample("CT_small.dcm"), folder / "ct.dcm", WHO),
        write_injected(sample("MR_small.dcm"), folder / "mr.dcm", WHO),
    ]


def _filled(research, tmp_path: Path) -> str:
    """Alpha and beta both hold two studies; returns alpha's patient pseudonym."""
    assert research.ingest(_inputs(tmp_path, "a")).failures == []
    beta = get_project(research.settings, "beta")
    assert ingest_files(research.stores, beta, _inputs(tmp_path, "b")).failures == []
    [pseudonym] = {s.patient_id for s in index_repo.list_studies(research.stores.index, "alpha")}
    return pseudonym


def _blobs(research, project: str) -> list[str]:
    return [key for key, _size, _at in research.stores.blobs.list(project_prefix(project))]


def _purge_events(settings, project: str) -> list[dict]:
    events = export(index_engine(settings.index_url), Query(project_id=project))
    return [e for e in events if e["type"]["code"] == "110105"]


# --- the purge, on both deployments -------------------------------------------------------------


def test_an_expired_project_is_purged_and_nothing_else(research, tmp_path):
    settings, index = research.settings, research.stores.index
    pseudonym = _filled(research, tmp_path)
    assert research.get("/projects/alpha/dicom-web/studies").status_code == 200
    beta_blobs, beta_rows = _blobs(research, "beta"), count_rows(index, "beta")
    set_retention(settings, "alpha", LONG_AGO)

    [item] = run_retention(settings, TODAY)

    assert item.project_id == "alpha" and item.error == "" and not item.result.resumed
    assert _blobs(research, "alpha") == []
    assert count_rows(index, "alpha") == NOTHING_LEFT
    assert get_project(settings, "alpha").state == "purged"
    vault = research.stores.vault
    assert not vault.has_project("alpha")
    with pytest.raises(ProjectKeyMissing):
        vault.project_key("alpha")
    with pytest.raises(LinkageNotFound, match="purged: its pseudonyms can no longer be linked"):
        vault.reidentify("alpha", pseudonym, actor="dpo")
    assert verify_token(research.settings, research.tokens["manager"]) is None
    assert research.get("/projects/alpha/dicom-web/studies").status_code == 401
    # Beta is untouched: blobs, rows, key, token.
    assert _blobs(research, "beta") == beta_blobs and beta_rows["instances"] == 2
    assert count_rows(index, "beta") == beta_rows
    assert vault.has_project("beta") and verify_token(research.settings, research.tokens["other"])
    assert research.get("/projects/beta/dicom-web/studies", who="other").status_code == 200

    record = purge_record(settings, "alpha")
    assert (record.studies, record.instances, record.linkages) == (2, 2, 1)
    assert record.tokens == 2 and record.blobs >= 2  # instances and series metadata
    assert verify_purge_record(settings, record)
    # The audit trail stays, verifies, and tells of the purge; the record points at it.
    check = verify(index_engine(settings.index_url), "alpha")
    assert check.intact, check.reason
    [event] = _purge_events(settings, "alpha")
    assert event["action"] == "D" and event["id"] == str(record.audit_seq)
    details = {d["type"]: d["valueString"] for d in event["entity"][0]["detail"]}
    assert details["instances"] == "2" and details["linkages"] == "1"
    dump = json.dumps(record.model_dump(mode="json")).encode()
    assert leaked_tokens(dump, WHO) == []


def test_a_purge_interrupted_after_the_blobs_is_finished_by_the_next_run(research, tmp_path):
    settings, index = research.settings, research.stores.index
    _filled(research, tmp_path)
    set_retention(settings, "alpha", LONG_AGO)
    retention._mark(settings, "alpha")  # the crash: blobs gone, rows and key left
    retention._delete_blobs(settings, "alpha")
    assert _blobs(research, "alpha") == [] and count_rows(index, "alpha")["instances"] == 2
    assert [p.id for p in expired_projects(settings, TODAY)] == ["alpha"]
    with pytest.raises(RetentionError, match="purging"):
        set_legal_hold(settings, "alpha", True)  # too late to hold a started purge

    [item] = run_retention(settings, TODAY)

    assert item.state == "purging" and item.result.resumed and item.error == ""
    assert count_rows(index, "alpha") == NOTHING_LEFT
    assert not research.stores.vault.has_project("alpha")
    record = purge_record(settings, "alpha")
    assert record.instances == 2 and record.blobs >= 2 and record.tokens == 2  # both runs
    assert verify_purge_record(settings, record)
    assert count_rows(index, "beta")["instances"] == 2 and _blobs(research, "beta")
    # Once purged, running again changes nothing.
    assert run_retention(settings, TODAY) == []
    again = purge_project(settings, "alpha", TODAY)
    assert again.record.signature == record.signature
    assert len(_purge_events(settings, "alpha")) == 1


def test_held_or_unexpired_projects_keep_everything(research, tmp_path):
    settings, index = research.settings, research.stores.index
    _filled(research, tmp_path)
    set_retention(settings, "alpha", LONG_AGO)
    set_legal_hold(settings, "alpha", True)
    set_retention(settings, "beta", dt.date(2020, 1, 1))  # kept until 2030-01-01

    assert run_retention(settings, TODAY) == []
    with pytest.raises(RetentionError, match="legal hold"):
        purge_project(settings, "alpha", TODAY)
    with pytest.raises(RetentionError, match="kept until 2030-01-01"):
        purge_project(settings, "beta", TODAY)
    for project in ("alpha", "beta"):
        assert count_rows(index, project)["instances"] == 2 and _blobs(research, project)
        assert research.stores.vault.has_project(project)
        assert get_project(settings, project).state == "active"
        assert purge_record(settings, project) is None

    set_legal_hold(settings, "alpha", False)
    assert [p.id for p in expired_projects(settings, TODAY)] == ["alpha"]
    assert [p.id for p in expired_projects(settings, dt.date(2030, 1, 2))] == ["alpha", "beta"]


# --- rules and the record, on the embedded deployment --------------------------------------------


def test_retention_defaults_to_ten_years_after_the_declared_end(settings):
    create_project(settings, "alpha", "Alpha")
    assert set_retention(settings, "alpha", dt.date(2024, 2, 29)).retention_until == dt.date(
        2034, 2, 28
    )
    project = set_retention(settings, "alpha", dt.date(2025, 1, 1), dt.date(2027, 1, 1))
    assert (project.declared_end, project.retention_until) == (
        dt.date(2025, 1, 1),
        dt.date(2027, 1, 1),
    )
    with pytest.raises(RetentionError, match="cannot come before"):
        set_retention(settings, "alpha", dt.date(2025, 1, 1), dt.date(2024, 1, 1))
    with pytest.raises(RetentionError, match="no project nope"):
        set_legal_hold(settings, "nope", True)


def test_closing_declares_the_end_and_retention_ends_on_its_last_day(settings):
    create_project(settings, "alpha", "Alpha")
    with pytest.raises(RetentionError, match="no retention end"):
        purge_project(settings, "alpha", TODAY)
    closed = close_project(settings, "alpha", today=dt.date(2016, 3, 1))
    assert closed.state == "closed" and closed.closed_at is not None
    assert closed.retention_until == dt.date(2026, 3, 1)
    assert close_project(settings, "alpha").retention_until == dt.date(2026, 3, 1)  # no change
    assert expired_projects(settings, dt.date(2026, 3, 1)) == []  # kept through that day
    assert [p.id for p in expired_projects(settings, dt.date(2026, 3, 2))] == ["alpha"]


def test_the_purge_record_is_signed_with_a_key_derived_from_the_vault_master_key(settings):
    create_project(settings, "alpha", "Alpha")
    issue_token(settings, "alpha", Role.researcher)
    set_retention(settings, "alpha", LONG_AGO)
    record = purge_project(settings, "alpha", TODAY).record
    stored = purge_record(settings, "alpha")
    assert stored.signature == record.signature and verify_purge_record(settings, stored)
    assert stored.tokens == 1 and stored.audit_hash and len(stored.signature) == 64
    with pytest.raises(RetentionError, match="purged; it can no longer change"):
        set_legal_hold(settings, "alpha", True)

    for field, value in (("blobs", 99), ("audit_hash", "0" * 64), ("project_id", "beta")):
        tampered = PurgeRecord(**{**stored.model_dump(), field: value})
        assert not verify_purge_record(settings, tampered), field
    engine = index_engine(settings.index_url)
    with engine.begin() as conn:
        table = PurgeRecord.__table__
        conn.execute(update(table).values(linkages=table.c.linkages + 1))
    assert not verify_purge_record(settings, purge_record(settings, "alpha"))
    # Another master key (another custodian) cannot have signed it.
    other = settings.model_copy(update={"vault_key": "11" * 32})
    assert not verify_purge_record(other, stored)
    assert verify(engine).intact


# --- the CLI ---------------------------------------------------------------------------------


def _cli(*args: str):
    return runner.invoke(cli_app, list(args), catch_exceptions=False)


def test_cli_retention_hold_close_and_run(settings):
    for name in ("alpha", "beta", "gamma"):
        create_project(settings, name, name.title())
    result = _cli("project", "retention", "alpha", "--declared-end", "2010-06-30")
    assert result.exit_code == 0, result.output
    assert "kept until 2020-06-30" in result.output
    _cli("project", "retention", "beta", "--declared-end", "2010-01-01")
    assert "under legal hold" in _cli("project", "hold", "beta", "--on").output
    assert "closed" in _cli("project", "close", "gamma").output
    bad = _cli("project", "retention", "alpha", "--declared-end", "30/06/2010")
    assert bad.exit_code == 2 and "YYYY-MM-DD" in bad.output

    dry = _cli("retention", "run", "--today", "2026-11-28", "--dry-run")
    assert dry.exit_code == 0 and "Would purge" in dry.output and "1 project(s) due" in dry.output
    assert "alpha" in dry.output and "beta" not in dry.output  # held
    assert get_project(settings, "alpha").state == "active"

    done = _cli("retention", "run", "--today", "2026-11-28")
    assert done.exit_code == 0, done.output
    assert "alpha" in done.output and "1 project(s) processed" in done.output
    assert [get_project(settings, p).state for p in ("alpha", "beta", "gamma")] == [
        "purged",
        "active",
        "closed",
    ]
    refused = _cli("project", "hold", "alpha", "--on")
    assert refused.exit_code == 2 and "purged" in refused.output
    with Vault.from_settings(settings) as vault:
        assert not vault.has_project("alpha") and vault.has_project("beta")
    changes = [
        e["outcomeDesc"] for e in export(index_engine(settings.index_url), Query(project_id="beta"))
    ]
    assert changes == ["retention: retention until 2020-01-01", "retention: legal hold on"]


def test_the_worker_purges_what_is_due_and_nothing_else(settings):
    for name in ("alpha", "beta"):
        create_project(settings, name, name.title())
    _cli("project", "retention", "alpha", "--declared-end", "2010-06-30")
    _cli("project", "retention", "beta", "--declared-end", "2999-01-01")
    ran = _cli("worker", "--once")
    assert ran.exit_code == 0, ran.output
    assert "retention: 1 purged, 0 failed" in ran.output
    assert [get_project(settings, p).state for p in ("alpha", "beta")] == ["purged", "active"]
    again = _cli("worker", "--once")
    assert "retention: 0 purged, 0 failed" in again.output
