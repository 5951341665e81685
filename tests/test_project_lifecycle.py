"""One project's life, end to end: ingest, read, re-identify, purge; then the audit trail tells
that story in order, its chain is intact, and nothing of the project remains (issue 4).

Runs on both deployments (tests/research_server.py): the CLI sees the same DEPOT_* variables.
"""

from __future__ import annotations

import datetime as dt

from typer.testing import CliRunner

from app.audit.log import Query, export, verify
from app.auth.credentials import verify_token
from app.cli import app as cli_app
from app.dicom.multipart import new_boundary
from app.retention import count_rows, purge_project, set_retention
from app.store import index_repo
from tests.identities import Identity, leaked_tokens, write_injected
from tests.samples import sample
from tests.test_catalog import description

pytest_plugins = ["tests.blobstores", "tests.research_server"]

WHO = Identity()
IMPORT, QUERY, EXPORT, PATIENT_RECORD, DELETED = "110107", "110112", "110106", "110110", "110105"


def _types(event: dict) -> str:
    return event["type"]["code"]


def test_ingest_read_reidentify_purge_is_the_story_the_audit_trail_tells(research, tmp_path):
    source = write_injected(sample("CT_small.dcm"), tmp_path / "ct.dcm", WHO)
    boundary = new_boundary()
    body = (
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        + source.read_bytes()
        + f"\r\n--{boundary}--\r\n".encode()
    )
    content_type = f'multipart/related; type="application/dicom"; boundary={boundary}'
    stored = research.client.post(
        "/projects/alpha/ingest/studies",
        content=body,
        headers=research.headers("manager", **{"Content-Type": content_type}),
    )
    assert stored.status_code == 200, stored.text
    (instance,) = index_repo.list_instances(research.stores.index, "alpha")
    study = index_repo.get_study(research.stores.index, "alpha", instance.study_uid)

    base = "/projects/alpha/dicom-web"
    assert research.get(f"{base}/studies", params={"PatientID": study.patient_id}).json()
    metadata = research.get(f"{base}/studies/{instance.study_uid}/metadata")
    assert metadata.status_code == 200

    reidentified = CliRunner().invoke(
        cli_app, ["vault", "reidentify", study.patient_id, "--project", "alpha"]
    )
    assert reidentified.exit_code == 0, reidentified.output
    assert WHO.patient_id in reidentified.output  # the one way back, and it is recorded

    manager = research.headers("manager")
    described = research.client.put("/projects/alpha/dataset", headers=manager,
                                    json=description("Alpha cohort"))  # fmt: skip
    assert described.status_code == 200, described.text
    assert (
        research.client.post("/projects/alpha/dataset/publish", headers=manager).status_code == 200
    )
    assert research.get("/projects/alpha/fhir/Provenance").json()["total"] == 1

    set_retention(research.settings, "alpha", dt.date(2020, 1, 1), dt.date(2021, 1, 1))
    research.stores.vault.close()  # the purge opens its own; this one must not keep the key
    purge_project(research.settings, "alpha", dt.date(2026, 11, 28))

    events = list(export(research.stores.index, Query(project_id="alpha")))
    story = [
        _types(e) for e in events if _types(e) in (IMPORT, QUERY, EXPORT, PATIENT_RECORD, DELETED)
    ]
    assert story == [IMPORT, QUERY, EXPORT, PATIENT_RECORD, QUERY, DELETED]  # QUERY: Provenance
    assert verify(research.stores.index).intact
    serialized = repr(events).encode()
    assert leaked_tokens(serialized, WHO) == []
    assert WHO.patient_id not in repr(events)

    assert index_repo.list_instances(research.stores.index, "alpha") == []
    assert index_repo.list_studies(research.stores.index, "alpha") == []
    assert list(research.stores.blobs.list("projects/alpha")) == []
    assert set(count_rows(research.stores.index, "alpha").values()) == {0}  # every table
    assert verify_token(research.settings, research.tokens["researcher"]) is None
    after = CliRunner().invoke(
        cli_app, ["vault", "reidentify", study.patient_id, "--project", "alpha"]
    )
    assert after.exit_code != 0 and WHO.patient_id not in after.output
    assert research.get(f"{base}/studies").status_code == 401
