"""The CLI as a data manager uses it: create, pseudonymize, inspect, re-identify."""

from __future__ import annotations

import json
import re
import shutil

from pydicom import dcmread
from typer.testing import CliRunner

from app import cli
from app.cli import app
from app.vault import Vault
from tests.identities import Identity, leaked_tokens, write_injected
from tests.samples import sample

runner = CliRunner()


def _run(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def _prepare_inputs(folder, who: Identity):
    folder.mkdir()
    write_injected(sample("CT_small.dcm"), folder / "QUIMPERLE_Hortensia_ct.dcm", who)
    write_injected(sample("MR_small.dcm"), folder / "mr.dcm", who)
    (folder / "notes.txt").write_text("not a DICOM file")
    data = sample("CT_small.dcm").read_bytes()
    (folder / "cut.dcm").write_bytes(data[: len(data) // 2])  # truncated in the pixel data
    (folder / "meta-only.dcm").write_bytes(data[:200])  # broken inside the file meta


def test_pseudonymize_a_folder_reports_failures_and_exits_with_their_count(settings, tmp_path):
    who = Identity()
    _prepare_inputs(tmp_path / "in", who)
    assert _run("project", "create", "alpha", "--title", "Alpha").exit_code == 0
    report_file = tmp_path / "report.json"
    result = _run("pseudonymize", str(tmp_path / "in"), str(tmp_path / "out"),
                  "--project", "alpha", "--report", str(report_file))  # fmt: skip
    assert result.exit_code == 3, result.output
    outputs = sorted((tmp_path / "out").rglob("*"))
    files = [p for p in outputs if p.is_file()]
    assert len(files) == 2 and all(p.suffix == ".dcm" for p in files)
    assert not any(p.name.startswith(".partial") for p in files)
    for path in files:  # named by pseudonymized UIDs, never by the input's name
        assert re.fullmatch(r"2\.25\.\d+\.dcm", path.name)
        assert re.fullmatch(r"2\.25\.\d+", path.parent.name)
    report = json.loads(report_file.read_text())
    assert len(report["instances"]) == 2 and len(report["failures"]) == 3
    assert {f["reason"] for f in report["failures"]} >= {"truncated pixel data"}
    assert leaked_tokens(report_file.read_bytes(), who) == []
    assert "QUIMPERLE_Hortensia" not in report_file.read_text()  # no input names either
    assert {"attribute": "PatientName", "action": "pseudonym", "instances": 2} in report["summary"]
    assert report["options"][0] == {
        "code": "113100",
        "meaning": "Basic Application Confidentiality Profile",
    }


def test_rerunning_after_an_interruption_finishes_without_duplicates(settings, tmp_path):
    who = Identity()
    _prepare_inputs(tmp_path / "in", who)
    _run("project", "create", "alpha", "--title", "Alpha")
    _run("pseudonymize", str(tmp_path / "in"), str(tmp_path / "out"), "--project", "alpha")
    first = {p: p.read_bytes() for p in (tmp_path / "out").rglob("*.dcm")}
    victim = next(iter(first))
    victim.unlink()  # as if the first run had died before this file
    (victim.parent / ".partial-x.dcm").write_bytes(b"half")  # and left a partial write behind
    _run("pseudonymize", str(tmp_path / "in"), str(tmp_path / "out"), "--project", "alpha")
    second = {p: p.read_bytes() for p in (tmp_path / "out").rglob("*.dcm") if p.name[0] != "."}
    assert second == first


def test_reidentify_is_the_way_back_and_is_recorded(settings, tmp_path):
    who = Identity()
    _prepare_inputs(tmp_path / "in", who)
    _run("project", "create", "alpha", "--title", "Alpha")
    _run("pseudonymize", str(tmp_path / "in"), str(tmp_path / "out"), "--project", "alpha")
    pseudonym = dcmread(next((tmp_path / "out").rglob("*.dcm"))).PatientID
    result = _run(
        "vault", "reidentify", pseudonym, "--project", "alpha", "--reason", "incidental finding"
    )
    assert result.exit_code == 0
    assert result.output.strip() == who.patient_id
    log = Vault.from_settings(settings).reidentification_log("alpha")
    assert len(log) == 1 and log[0]["reason"] == "incidental finding"
    assert who.patient_id not in json.dumps(log, default=str)
    missing = _run("vault", "reidentify", "PNOSUCHPSEUDONYM", "--project", "alpha")
    assert missing.exit_code != 0


def test_private_report_lists_creators_and_elements_but_no_values(settings, tmp_path, monkeypatch):
    monkeypatch.setattr(cli.console, "width", 200)
    who = Identity()
    folder = tmp_path / "in"
    folder.mkdir()
    write_injected(sample("CT_small.dcm"), folder / "a.dcm", who)
    shutil.copy(sample("CT_small.dcm"), folder / "b.dcm")
    _run("project", "create", "alpha", "--title", "Alpha")
    result = _run("pseudo", "private-report", str(folder), "--project", "alpha")
    assert result.exit_code == 0, result.output
    assert "ACME HOSPITAL RIS 1.0" in result.output
    assert "GEMS_" in result.output  # CT_small is a GE scan with GE private blocks
    assert leaked_tokens(result.output.encode(), who) == []


def test_project_create_refuses_bad_ids_and_duplicates(settings):
    assert _run("project", "create", "alpha", "--title", "Alpha").exit_code == 0
    duplicate = _run("project", "create", "alpha", "--title", "Again")
    assert duplicate.exit_code == 2 and "already exists" in duplicate.output
    assert _run("project", "create", "Bad/ID", "--title", "x").exit_code == 2
    unknown = _run("project", "create", "beta", "--title", "x", "--option", "retain-uids")
    assert unknown.exit_code == 2 and "unknown option" in unknown.output
    listing = _run("project", "list")
    assert "alpha" in listing.output and "research-fr" in listing.output


def test_the_same_flow_runs_on_postgresql_by_configuration_alone(
    settings, tmp_path, monkeypatch, postgres_url
):
    """Index and vault on PostgreSQL (two databases would do; one is enough to prove it)."""
    monkeypatch.setenv("DEPOT_DATABASE_URL", postgres_url)
    monkeypatch.setenv("DEPOT_VAULT_URL", postgres_url)
    who = Identity()
    _prepare_inputs(tmp_path / "in", who)
    assert _run("project", "create", "alpha", "--title", "Alpha").exit_code == 0
    result = _run("pseudonymize", str(tmp_path / "in"), str(tmp_path / "out"), "--project", "alpha")
    assert result.exit_code == 3
    pseudonym = dcmread(next((tmp_path / "out").rglob("*.dcm"))).PatientID
    again = _run("vault", "reidentify", pseudonym, "--project", "alpha")
    assert again.output.strip() == who.patient_id
    assert not (settings.data_dir / "index.sqlite").exists()
    assert not (settings.data_dir / "vault.sqlite").exists()


def test_several_inputs_and_a_missing_output_argument(settings, tmp_path):
    _run("project", "create", "alpha", "--title", "Alpha")
    one, two = tmp_path / "one.dcm", tmp_path / "two.dcm"
    write_injected(sample("CT_small.dcm"), one, Identity())
    write_injected(sample("MR_small.dcm"), two, Identity())
    result = _run("pseudonymize", str(one), str(two), str(tmp_path / "out"), "--project", "alpha")
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "out").rglob("*.dcm"))) == 2
    lonely = _run("pseudonymize", str(one), "--project", "alpha")
    assert lonely.exit_code == 2 and "output folder" in lonely.output


def test_the_entry_point_runs_the_cli_with_the_collector_back_on(monkeypatch) -> None:
    import gc

    from app import entry

    seen: list[bool] = []
    monkeypatch.setattr(cli, "main", lambda: seen.append(gc.isenabled()))
    entry.main()
    assert seen == [True] and gc.isenabled()
