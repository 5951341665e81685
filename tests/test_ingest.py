"""Ingest into the store: pseudonymized blobs first, index rows second, series metadata after.

Tests taking `depot` run twice: on SQLite + filesystem (the embedded deployment) and on
PostgreSQL + S3 (SeaweedFS), the distributed one (DESIGN decision 7). The crash test runs
`depot ingest` in a subprocess and kills it, so it uses the embedded deployment only.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import orjson
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from typer.testing import CliRunner

from app import ingest
from app.cli import app as cli_app
from app.config import Settings
from app.dicom.json_model import to_dicom_json
from app.dicom.scan import read_header
from app.ingest import (
    IngestAborted,
    Stores,
    bulk_uris,
    ingest_files,
    scratch_run,
    sweep_orphans,
)
from app.projects import create_project, engine_for
from app.pseudo.files import pseudonymize_file
from app.pseudo.profile import kept_uid_attributes
from app.store import index_repo, layout, series_metadata
from app.store.blobs import BlobStore, BlobStoreUnreachable
from app.store.facts import InstanceFacts
from app.store.index import index_engine
from app.store.models import Project
from app.store.series_metadata import read_series_metadata, refresh_series_metadata
from tests.identities import Identity, leaked_tokens, write_injected
from tests.research_server import DEPLOYMENTS, DEPOT_VARIABLES, configure_deployment
from tests.samples import ct_series, readable_instances, sample

pytest_plugins = ["tests.blobstores"]

ROOT = Path(__file__).resolve().parents[1]
DICOM_ROOT = "1.2.840.10008."


# --- fixtures and helpers -------------------------------------------------------------------


@dataclass
class Depot:
    settings: Settings
    stores: Stores
    project: Project

    @property
    def index(self):
        return self.stores.index

    @property
    def blobs(self) -> BlobStore:
        return self.stores.blobs

    def ingest(self, paths: list[Path], project: Project | None = None):
        return ingest_files(self.stores, project or self.project, paths)


@pytest.fixture(params=DEPLOYMENTS)
def depot(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch) -> Iterator[Depot]:
    """A data dir, project "alpha", and the stores, configured through DEPOT_* only (so the
    CLI, run in-process, sees the same deployment)."""
    settings = configure_deployment(request, tmp_path / "data", monkeypatch)
    project = create_project(settings, "alpha", "Alpha")
    stores = Stores.from_settings(settings)
    yield Depot(settings, stores, project)
    stores.vault.close()
    index_engine(settings.index_url).dispose()  # before the PostgreSQL database is dropped


def blob_bytes(blobs: BlobStore, key: str) -> bytes:
    with blobs.open(key) as stream:
        return stream.read()


def all_blobs(depot: Depot) -> dict[str, str]:
    """Every blob of the store: key -> SHA-256 of its bytes."""
    return {
        key: hashlib.sha256(blob_bytes(depot.blobs, key)).hexdigest()
        for key, _size, _modified in depot.blobs.list("")
    }


def index_rows(index, project_id: str = "alpha") -> dict[str, list[dict]]:
    """The project's rows, without the timestamps (they differ between two runs)."""

    def dump(rows) -> list[dict]:
        return [
            {k: v for k, v in row.model_dump().items() if not k.endswith("_at")} for row in rows
        ]

    return {
        "studies": dump(index_repo.list_studies(index, project_id)),
        "series": dump(index_repo.list_series(index, project_id)),
        "instances": dump(index_repo.list_instances(index, project_id)),
    }


def ui_values(ds: Dataset) -> set[str]:
    """Every UID of a dataset, at any depth, but those that name definitions (SOP classes,
    coding schemes…: kept by design, app.pseudo.profile.kept_uid_attributes)."""
    found = set()
    kept = kept_uid_attributes()
    for elem in ds.iterall():
        if elem.VR == "UI" and elem.value and int(elem.tag) not in kept:
            values = elem.value if isinstance(elem.value, list) else [elem.value]
            found.update(str(v) for v in values if not str(v).startswith(DICOM_ROOT))
    meta = getattr(ds, "file_meta", None)
    if meta is not None and "MediaStorageSOPInstanceUID" in meta:
        found.add(str(meta.MediaStorageSOPInstanceUID))
    return {uid for uid in found if len(uid) >= 8}


def distinct_instances() -> list[Path]:
    """Packaged instances, one per SOP Instance UID (the packages reuse UIDs across
    transfer syntax variants of one image: those are conflicts, tested on their own)."""
    seen: set[str] = set()
    chosen = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in readable_instances():
            uid = str(dcmread(path, stop_before_pixels=True, force=True).SOPInstanceUID)
            if uid not in seen and "truncated" not in path.name:
                seen.add(uid)
                chosen.append(path)
    return chosen


def injected_copies(folder: Path, who: Identity) -> tuple[list[Path], set[str]]:
    """The distinct instances with `who` written into them; and every original UID."""
    folder.mkdir(parents=True)
    files, uids = [], set()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for index, src in enumerate(distinct_instances()):
            path = folder / f"{who.family}_{index}.dcm"
            try:
                write_injected(src, path, who)
            except Exception:  # noqa: BLE001  (a few odd files cannot be re-saved as they are)
                path.unlink(missing_ok=True)  # save_as may have begun writing it
                continue
            files.append(path)
            uids |= ui_values(dcmread(path, force=True))
    return files, uids


# --- the ingest of a folder -------------------------------------------------------------------


def test_a_folder_is_stored_as_pseudonymized_blobs_rows_and_metadata_that_leak_nothing(
    depot: Depot, tmp_path: Path
):
    who = Identity()
    files, original_uids = injected_copies(tmp_path / "in", who)
    assert len(files) > 100 and len(original_uids) > 250
    report = depot.ingest([tmp_path / "in"])
    assert [(f.source.name, f.reason) for f in report.failures] == []
    assert len(report.stored) == len(files) and not report.already_present

    # Every instance is indexed, its blob holds exactly the pseudonymized file.
    engine = engine_for(depot.project, depot.stores.vault)
    instances = {i.sop_uid: i for i in index_repo.list_instances(depot.index, "alpha")}
    assert len(instances) == len(files)
    for src in files:  # the engine is deterministic
        result, expected = pseudonymize_file(src, tmp_path / "expected", engine)
        row = instances[result.sop_uid]
        data = blob_bytes(depot.blobs, row.blob_key)
        assert data == expected.read_bytes()
        assert (row.size, row.sha256) == (len(data), hashlib.sha256(data).hexdigest())
        pixel_start = read_header(io.BytesIO(data)).pixel_start  # WADO reads this far
        assert row.header_length == (len(data) if pixel_start is None else pixel_start)

    # Nothing of the originals anywhere: blobs (instances and metadata), rows.
    rows_text = json.dumps(index_rows(depot.index))
    assert leaked_tokens(rows_text.encode(), who) == []
    assert [uid for uid in original_uids if uid in rows_text] == []
    blob_keys = [key for key, _, _ in depot.blobs.list("")]
    assert len(blob_keys) == len(files) + len(index_repo.list_series(depot.index, "alpha"))
    for key in blob_keys:
        data = blob_bytes(depot.blobs, key)
        if key.endswith(".json.gz"):
            data = gzip.decompress(data)
        assert leaked_tokens(data, who) == [], key
        assert [uid for uid in original_uids if uid.encode() in data] == [], key
    # The index was read from the pseudonymized header: pseudonyms, shifted dates.
    studies = index_repo.list_studies(depot.index, "alpha")
    assert all(s.patient_id and s.patient_id.startswith("P") for s in studies)
    assert all(s.patient_name == s.patient_id for s in studies)
    assert all(s.study_date != who.study_date for s in studies)
    assert sum(s.number_of_instances for s in studies) == len(files)
    syntaxes = {i.transfer_syntax_uid for i in instances.values()}
    assert len(syntaxes) >= 8 and {"1.2.840.10008.1.2", "1.2.840.10008.1.2.2"} <= syntaxes

    # Every layout (multi-frame, encapsulated, big endian, implicit VR, deflated, no pixels):
    # one metadata object per instance, pixel data by URI only, with the stored VR.
    for series in index_repo.list_series(depot.index, "alpha"):
        items = read_series_metadata(depot.blobs, series.metadata_key)
        members = index_repo.list_instances(depot.index, "alpha", series_uid=series.series_uid)
        assert len(items) == len(members) == series.number_of_instances
        for item, instance in zip(items, members, strict=True):
            assert item["00080018"]["Value"] == [instance.sop_uid]
            stored = dcmread(io.BytesIO(blob_bytes(depot.blobs, instance.blob_key)), force=True)
            pixel = next((t for t in (0x7FE00010, 0x7FE00008, 0x7FE00009) if t in stored), None)
            if pixel is None:
                assert not any(k.startswith("7FE0") for k in item)
                continue
            entry = item[f"{pixel:08X}"]
            assert set(entry) == {"vr", "BulkDataURI"}, instance.transfer_syntax_uid
            if not stored.is_implicit_VR:
                assert entry["vr"] == stored[pixel].VR


def test_index_columns_are_the_qido_keys_of_the_stored_file(depot: Depot, tmp_path: Path):
    paths = ct_series(tmp_path / "in", 4, series=2)
    depot.ingest(paths)
    [study] = index_repo.list_studies(depot.index, "alpha")
    stored = dcmread(
        io.BytesIO(
            blob_bytes(depot.blobs, index_repo.list_instances(depot.index, "alpha")[0].blob_key)
        )
    )
    assert study.study_uid == stored.StudyInstanceUID
    assert study.patient_id == stored.PatientID and study.patient_sex == stored.PatientSex
    assert study.study_date == stored.StudyDate and study.study_time == stored.StudyTime
    assert study.accession_number == (stored.AccessionNumber or None)  # empty: NULL
    assert study.modalities == "CT"
    assert (study.number_of_series, study.number_of_instances) == (2, 4)
    series = index_repo.list_series(depot.index, "alpha")
    assert sorted(s.series_number for s in series) == [1, 2]
    assert all(s.number_of_instances == 2 and s.modality == "CT" for s in series)
    instance = index_repo.get_instance(depot.index, "alpha", stored.SOPInstanceUID)
    assert instance is not None
    assert (instance.rows, instance.columns, instance.bits_allocated) == (128, 128, 16)
    assert instance.sop_class_uid == "1.2.840.10008.5.1.4.1.1.2"
    assert instance.instance_number == stored.InstanceNumber
    assert instance.number_of_frames is None  # CT_small is single frame


def test_ingesting_the_same_files_again_stores_nothing_twice(depot: Depot, tmp_path: Path):
    paths = ct_series(tmp_path / "in", 5)
    first = depot.ingest(paths)
    assert (len(first.stored), len(first.already_present), first.series_refreshed) == (5, 0, 1)
    blobs, rows = all_blobs(depot), index_rows(depot.index)
    again = depot.ingest([tmp_path / "in", paths[0]])  # and one file twice in the batch
    assert (len(again.stored), len(again.already_present), len(again.failures)) == (0, 6, 0)
    assert again.series_refreshed == 0  # metadata up to date: not recomputed
    assert all_blobs(depot) == blobs
    assert index_rows(depot.index) == rows


def test_the_same_sop_uid_with_other_bytes_is_a_reported_conflict_and_the_original_stays(
    depot: Depot,
):
    # Same image, same SOP Instance UID, another transfer syntax: other bytes.
    original, variant = sample("MR_small.dcm"), sample("MR_small_bigendian.dcm")
    assert dcmread(original).SOPInstanceUID == dcmread(variant).SOPInstanceUID
    depot.ingest([original])
    [row] = index_repo.list_instances(depot.index, "alpha")
    blobs = all_blobs(depot)
    report = depot.ingest([variant])
    assert report.stored == [] and len(report.failures) == 1
    assert report.failures[0].reason == (
        "an instance with this SOP Instance UID is already stored with different content"
    )
    assert index_repo.list_instances(depot.index, "alpha") == [row]
    assert all_blobs(depot) == blobs  # neither replaced nor joined by another blob


def test_a_failed_file_leaves_no_blob_and_no_row(depot: Depot, tmp_path: Path):
    folder = tmp_path / "in"
    folder.mkdir()
    data = sample("CT_small.dcm").read_bytes()
    (folder / "cut.dcm").write_bytes(data[: len(data) // 2])
    (folder / "notes.txt").write_text("not DICOM")
    no_uid = dcmread(sample("CT_small.dcm"))
    del no_uid.SOPInstanceUID
    no_uid.save_as(folder / "no-uid.dcm")
    report = depot.ingest([folder])
    assert len(report.failures) == 3 and not report.stored
    assert all_blobs(depot) == {}
    assert index_rows(depot.index) == {"studies": [], "series": [], "instances": []}
    assert not any(depot.stores.scratch.rglob("*.dcm"))  # and nothing left in transit


class PutsThenFails:
    """A blob store that accepts `allowed` files, then is unreachable (a network outage)."""

    def __init__(self, inner: BlobStore, allowed: int) -> None:
        self.inner, self.allowed = inner, allowed

    def put(self, key: str, chunks, **options) -> int:
        if self.allowed == 0:
            raise BlobStoreUnreachable("the S3 store at 127.0.0.1:1 is unreachable (timeout)")
        self.allowed -= 1
        return self.inner.put(key, chunks, **options)

    def __getattr__(self, name: str):
        return getattr(self.inner, name)


def test_a_store_outage_stops_the_batch_keeps_what_is_stored_and_a_rerun_finishes(
    depot: Depot, tmp_path: Path
):
    paths = ct_series(tmp_path / "in", 3)
    broken = dataclasses.replace(depot.stores, blobs=PutsThenFails(depot.blobs, allowed=1))
    with pytest.raises(IngestAborted) as aborted:
        ingest_files(broken, depot.project, paths)
    message = str(aborted.value)
    assert message.startswith("the blob store failed") and "2.25." not in message
    assert len(aborted.value.report.stored) == 1
    [row] = index_repo.list_instances(depot.index, "alpha")
    assert set(all_blobs(depot)) == {row.blob_key}  # nothing half-stored, no row without blob
    rerun = depot.ingest(paths)
    assert (len(rerun.stored), len(rerun.already_present), rerun.series_refreshed) == (2, 1, 1)


# --- series metadata -----------------------------------------------------------------------------


def test_series_metadata_is_gzip_json_of_every_header_with_pixels_by_uri(
    depot: Depot, tmp_path: Path
):
    paths = ct_series(tmp_path / "in", 2)
    depot.ingest(paths)
    [series] = index_repo.list_series(depot.index, "alpha")
    raw = blob_bytes(depot.blobs, series.metadata_key)
    assert raw[:2] == b"\x1f\x8b"  # gzip
    document = gzip.decompress(raw)
    assert series.metadata_etag == hashlib.sha256(document).hexdigest()
    assert series.metadata_revision == series.revision == 2
    items = orjson.loads(document)
    instances = index_repo.list_instances(depot.index, "alpha")
    assert [i["00080018"]["Value"][0] for i in items] == [i.sop_uid for i in instances]
    for item, instance in zip(items, instances, strict=True):
        base = (
            f"/projects/alpha/dicom-web/studies/{instance.study_uid}/series/"
            f"{instance.series_uid}/instances/{instance.sop_uid}"
        )
        assert item["7FE00010"] == {"vr": "OW", "BulkDataURI": f"{base}/bulk/7FE00010"}
        assert "InlineBinary" not in document.decode()
        # Exactly the stored file's JSON, pixel data aside (read whole, by pydicom).
        stored = dcmread(io.BytesIO(blob_bytes(depot.blobs, instance.blob_key)))
        expected = to_dicom_json(stored, bulkdata_uri=lambda p, b=base: f"{b}/bulk/{p}")
        assert item == orjson.loads(orjson.dumps(expected))
        assert not any(k.startswith("0002") for k in item)


def test_adding_an_instance_changes_the_etag_and_replaces_the_metadata_blob(
    depot: Depot, tmp_path: Path
):
    depot.ingest(ct_series(tmp_path / "in", 2))
    [before] = index_repo.list_series(depot.index, "alpha")
    depot.ingest(ct_series(tmp_path / "more", 1, start=2))
    [after] = index_repo.list_series(depot.index, "alpha")
    assert after.metadata_etag != before.metadata_etag
    assert after.metadata_revision == after.revision == 3
    assert len(read_series_metadata(depot.blobs, after.metadata_key)) == 3
    assert not depot.blobs.exists(before.metadata_key)  # the old document is gone


class CountingReads:
    """A blob store that counts header reads (read_range), for the metadata refresh."""

    def __init__(self, inner: BlobStore) -> None:
        self.inner, self.reads = inner, 0

    def read_range(self, key: str, start: int, end: int) -> bytes:
        self.reads += 1
        return self.inner.read_range(key, start, end)

    def __getattr__(self, name: str):
        return getattr(self.inner, name)


@pytest.mark.parametrize("name", ["SC_rgb_jpeg.dcm", "image_dfl.dcm"])
def test_an_instance_written_whole_is_indexed_and_described_like_any_other(
    depot: Depot, tmp_path: Path, name: str
):
    # Something follows its pixel data, or its data set is deflated: pydicom writes it whole.
    report = depot.ingest([sample(name)])
    assert len(report.stored) == 1
    [row] = index_repo.list_instances(depot.index, "alpha")
    data = blob_bytes(depot.blobs, row.blob_key)
    pixel_start = read_header(io.BytesIO(data)).pixel_start
    assert row.header_length == (len(data) if pixel_start is None else pixel_start)
    [series] = index_repo.list_series(depot.index, "alpha")
    [document] = read_series_metadata(depot.blobs, series.metadata_key)
    assert document["7FE00010"]["BulkDataURI"].endswith("/bulk/7FE00010")


def test_a_growing_series_reads_only_its_new_headers_and_matches_a_full_rebuild(
    depot: Depot, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    depot.ingest(ct_series(tmp_path / "in", 5))
    counting = CountingReads(depot.blobs)
    depot.stores.blobs = counting
    depot.ingest(ct_series(tmp_path / "more", 2, start=5))
    assert counting.reads == 0  # the ingest handed its 2 headers over; the 5 kept theirs
    with monkeypatch.context() as patch:  # instances another worker process stored
        patch.setattr(series_metadata._fresh, "take", lambda _key: None)
        depot.ingest(ct_series(tmp_path / "later", 2, start=7))
    assert counting.reads == 2  # not 9: only the new headers, read from their blobs
    [series] = index_repo.list_series(depot.index, "alpha")
    incremental = read_series_metadata(depot.blobs, series.metadata_key)
    assert refresh_series_metadata(
        depot.index, counting.inner, "alpha", series.series_uid,
        uri_for=bulk_uris("alpha"), force=True,
    )  # fmt: skip
    [rebuilt] = index_repo.list_series(depot.index, "alpha")
    assert rebuilt.metadata_etag == series.metadata_etag  # the same bytes, read whole
    assert read_series_metadata(depot.blobs, rebuilt.metadata_key) == incremental
    assert len(incremental) == 9


# --- projects are isolated ---------------------------------------------------------------------


def test_another_projects_rows_are_invisible_to_every_store_function(depot: Depot, tmp_path: Path):
    depot.ingest(ct_series(tmp_path / "in", 2))
    beta = create_project(depot.settings, "beta", "Beta")
    index = depot.index
    [study] = index_repo.list_studies(index, "alpha")
    [series] = index_repo.list_series(index, "alpha")
    instances = index_repo.list_instances(index, "alpha")
    alpha_rows, alpha_blobs = index_rows(index), all_blobs(depot)

    assert index_repo.get_study(index, "beta", study.study_uid) is None
    assert index_repo.get_series(index, "beta", series.series_uid) is None
    assert index_repo.get_instance(index, "beta", instances[0].sop_uid) is None
    assert index_repo.list_studies(index, "beta") == []
    assert index_repo.list_series(index, "beta", study.study_uid) == []
    assert index_repo.list_instances(index, "beta", series_uid=series.series_uid) == []
    assert index_repo.referenced_keys(index, "beta", alpha_blobs) == set()
    assert not index_repo.set_series_metadata(
        index, "beta", series.series_uid, revision=series.revision, key="x", etag="y"
    )
    assert index_repo.delete_series(index, "beta", series.series_uid) == []
    assert index_repo.delete_study(index, "beta", study.study_uid) == []
    index_repo.recompute_counts(index, "beta", study.study_uid)
    assert sweep_orphans("beta", depot.stores, timedelta(0)).orphan_blobs == 0
    assert index_rows(index) == alpha_rows and all_blobs(depot) == alpha_blobs

    # The same files in beta: other UIDs, other keys; alpha untouched.
    report = depot.ingest([tmp_path / "in"], project=beta)
    assert len(report.stored) == 2
    assert {i.sop_uid for i in index_repo.list_instances(index, "beta")}.isdisjoint(
        i.sop_uid for i in instances
    )
    assert index_rows(index) == alpha_rows
    assert all(key.startswith("projects/beta/") for key in set(all_blobs(depot)) - set(alpha_blobs))


def test_uids_are_unique_per_project_not_globally(depot: Depot):
    """A UID may exist in two projects (a derived object, a shared key): two rows."""
    create_project(depot.settings, "beta", "Beta")
    facts = make_facts("2.25.1", "2.25.2", "2.25.3")
    for project_id in ("alpha", "beta"):
        key = layout.instance_key(project_id, "2.25.1", "2.25.2", "2.25.3", facts.sha256)
        assert index_repo.upsert_instance(depot.index, project_id, facts, key) is (
            index_repo.Added.STORED
        )
    assert index_repo.get_instance(depot.index, "alpha", "2.25.3").blob_key.startswith(
        "projects/alpha/"
    )
    assert index_repo.get_instance(depot.index, "beta", "2.25.3").blob_key.startswith(
        "projects/beta/"
    )


# --- the store layer on its own ----------------------------------------------------------------


def make_facts(
    study: str, series: str, sop: str, *, sha: str = "a" * 64, modality: str = "CT"
) -> InstanceFacts:
    return InstanceFacts(
        study_uid=study, series_uid=series, sop_uid=sop,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2", transfer_syntax_uid="1.2.840.10008.1.2.1",
        size=100, sha256=sha, header_length=50,
        study={"patient_id": "PTEST", "study_date": "20200101"},
        series={"modality": modality, "series_number": 1}, instance={"instance_number": 1},
    )  # fmt: skip


def _key(facts: InstanceFacts) -> str:
    return layout.instance_key(
        "alpha", facts.study_uid, facts.series_uid, facts.sop_uid, facts.sha256
    )


def test_upsert_is_idempotent_and_refuses_conflicts_without_writing(depot: Depot):
    index = depot.index
    facts = make_facts("2.25.1", "2.25.2", "2.25.3")
    assert index_repo.upsert_instance(index, "alpha", facts, _key(facts)) is index_repo.Added.STORED
    rows = index_rows(index)
    again = index_repo.upsert_instance(index, "alpha", facts, _key(facts))
    assert again is index_repo.Added.ALREADY_PRESENT
    other = make_facts("2.25.1", "2.25.2", "2.25.3", sha="b" * 64)
    with pytest.raises(index_repo.InstanceConflict) as conflict:
        index_repo.upsert_instance(index, "alpha", other, _key(other))
    assert "2.25" not in str(conflict.value)  # no UID in messages
    moved = make_facts("2.25.9", "2.25.2", "2.25.4")  # the series, under another study
    with pytest.raises(index_repo.HierarchyConflict):
        index_repo.upsert_instance(index, "alpha", moved, _key(moved))
    assert index_rows(index) == rows  # neither conflict wrote anything (no study 2.25.9)


def test_counts_and_modalities_are_kept_by_writes_and_deletes(depot: Depot):
    index = depot.index
    work = [("2.25.10", "2.25.2", "CT"), ("2.25.11", "2.25.2", "CT"),
            ("2.25.12", "2.25.3", "SR"), ("2.25.13", "2.25.4", "PT")]  # fmt: skip
    for sop, series, modality in work:
        facts = make_facts("2.25.1", series, sop, modality=modality)
        index_repo.upsert_instance(index, "alpha", facts, _key(facts))
    study = index_repo.get_study(index, "alpha", "2.25.1")
    assert (study.number_of_series, study.number_of_instances) == (3, 4)
    assert study.modalities == "CT\\PT\\SR"
    keys = index_repo.delete_series(index, "alpha", "2.25.4")
    assert keys == [_key(make_facts("2.25.1", "2.25.4", "2.25.13"))]
    study = index_repo.get_study(index, "alpha", "2.25.1")
    assert (study.number_of_series, study.number_of_instances, study.modalities) == (
        2, 3, "CT\\SR",
    )  # fmt: skip
    with index.begin() as conn:  # damage the counts, as a bug or a manual edit would
        conn.exec_driver_sql("UPDATE study SET number_of_instances = 99, modalities = ''")
    index_repo.recompute_counts(index, "alpha", "2.25.1")
    study = index_repo.get_study(index, "alpha", "2.25.1")
    assert (study.number_of_instances, study.modalities) == (3, "CT\\SR")
    assert len(index_repo.delete_study(index, "alpha", "2.25.1")) == 3
    assert index_rows(index) == {"studies": [], "series": [], "instances": []}


def test_concurrent_writers_into_one_new_study_keep_counts_exact(depot: Depot):
    """Eight threads add instances (some the same) to one study at once, on both databases."""
    index = depot.index
    work = [make_facts("2.25.1", f"2.25.2{i % 3}", f"2.25.3{i % 12}", modality=f"M{i % 3}")
            for i in range(24)]  # fmt: skip
    outcomes: list[index_repo.Added] = []
    errors: list[BaseException] = []

    def writer(chunk: list[InstanceFacts]) -> None:
        try:
            for facts in chunk:
                outcomes.append(index_repo.upsert_instance(index, "alpha", facts, _key(facts)))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(work[i::8],)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert outcomes.count(index_repo.Added.STORED) == 12
    study = index_repo.get_study(index, "alpha", "2.25.1")
    assert (study.number_of_series, study.number_of_instances) == (3, 12)
    assert study.modalities == "M0\\M1\\M2"
    assert sorted(s.number_of_instances for s in index_repo.list_series(index, "alpha")) == [
        4, 4, 4,
    ]  # fmt: skip


# --- the sweep ---------------------------------------------------------------------------------


def test_the_sweep_removes_unindexed_blobs_only_once_they_are_old_enough(
    depot: Depot, tmp_path: Path
):
    depot.ingest(ct_series(tmp_path / "in", 2))
    kept = all_blobs(depot)
    orphan = layout.instance_key("alpha", "2.25.1", "2.25.2", "2.25.3", "c" * 64)
    depot.blobs.put(orphan, [b"written, then the writer died"])
    other_project = "projects/beta/studies/2.25.1/series/2.25.2/instances/x.dcm"
    create_project(depot.settings, "beta", "Beta")  # its blobs are sealed with its own key
    depot.blobs.put(other_project, [b"not alpha's"])
    young = sweep_orphans("alpha", depot.stores, timedelta(hours=1))
    assert young.orphan_blobs == 0 and depot.blobs.exists(orphan)  # may be a writer in flight
    swept = sweep_orphans("alpha", depot.stores, timedelta(0))
    assert swept.orphan_blobs == 1
    assert all_blobs(depot) == {**kept, other_project: all_blobs(depot)[other_project]}


# --- the CLI -------------------------------------------------------------------------------------


def test_depot_ingest_prints_a_summary_and_exits_with_the_number_of_failures(
    depot: Depot, tmp_path: Path, monkeypatch
):
    from app import cli

    monkeypatch.setattr(cli.console, "width", 200)
    who = Identity()
    folder = tmp_path / "in"
    folder.mkdir()
    write_injected(sample("CT_small.dcm"), folder / "QUIMPERLE_Hortensia_ct.dcm", who)
    write_injected(sample("MR_small.dcm"), folder / "mr.dcm", who)
    (folder / "notes.txt").write_text("not a DICOM file")
    data = sample("CT_small.dcm").read_bytes()
    (folder / "cut.dcm").write_bytes(data[: len(data) // 2])
    (folder / "meta-only.dcm").write_bytes(data[:200])
    runner = CliRunner()
    report_file = tmp_path / "report.json"
    first = runner.invoke(
        cli_app, ["ingest", str(folder), "--project", "alpha", "--report", str(report_file)]
    )
    assert first.exit_code == 3, first.output  # three files failed
    summary = _summary_row(first.output)
    assert summary == ["5", "2", "0", "3", "2", "2"]  # files stored present failed studies series
    assert "truncated pixel data" in first.output and "cut.dcm" in first.output
    report = json.loads(report_file.read_text())
    assert report["ingest"]["stored"] == 2 and report["ingest"]["failed"] == 3
    assert leaked_tokens(report_file.read_bytes(), who) == []
    assert "QUIMPERLE_Hortensia" not in report_file.read_text()  # no input file names
    # Two studies of one patient, whose way back the vault holds.
    [pseudonym] = {s.patient_id for s in index_repo.list_studies(depot.index, "alpha")}
    assert depot.stores.vault.reidentify("alpha", pseudonym, actor="test") == {
        "PatientID": who.patient_id, "IssuerOfPatientID": "",
    }  # fmt: skip

    for name in ("cut.dcm", "notes.txt", "meta-only.dcm"):
        (folder / name).unlink()
    second = runner.invoke(cli_app, ["ingest", str(folder), "--project", "alpha"])
    assert second.exit_code == 0, second.output
    assert _summary_row(second.output) == ["2", "0", "2", "0", "2", "2"]

    missing = runner.invoke(cli_app, ["ingest", str(folder), "--project", "nope"])
    assert missing.exit_code == 2 and "no project nope" in missing.output


def _summary_row(output: str) -> list[str]:
    """The data row of the summary table (the line after the header, with 6 numbers)."""
    for line in output.splitlines():
        cells = [c.strip() for c in line.strip("│┃ ").replace("┃", "│").split("│")]
        if len(cells) == 6 and all(c.isdigit() for c in cells):
            return cells
    raise AssertionError(f"no summary row in:\n{output}")


# --- a writer killed mid-ingest ----------------------------------------------------------------

_KILL_BETWEEN_BLOB_AND_INDEX = """
import os, signal, sys
from app.store import index_repo
real, calls = index_repo.upsert_instance, [0]
def upsert_then_die(*args, **kwargs):
    calls[0] += 1
    if calls[0] == int(os.environ["KILL_AT_UPSERT"]):
        os.kill(os.getpid(), signal.SIGKILL)  # the blob is written, its row is not
    return real(*args, **kwargs)
index_repo.upsert_instance = upsert_then_die
from app.cli import main
sys.argv = ["depot", *sys.argv[1:]]
main()
"""
_PAUSE_BEFORE_A_BLOB = """
import os, sys, time
from pathlib import Path
from app import ingest
real, calls = ingest._put, [0]
def put_or_pause(*args, **kwargs):
    calls[0] += 1
    if calls[0] == int(os.environ["PAUSE_AT_PUT"]):
        Path(os.environ["PAUSED_MARKER"]).touch()  # the test kills us from outside now
        time.sleep(600)
    return real(*args, **kwargs)
ingest._put = put_or_pause
from app.cli import main
sys.argv = ["depot", *sys.argv[1:]]
main()
"""
_PLAIN = "import sys\nfrom app.cli import main\nsys.argv = ['depot', *sys.argv[1:]]\nmain()\n"


def _depot(data: Path, args: list[str], script: str = _PLAIN, **env: str) -> subprocess.Popen:
    environment = {k: v for k, v in os.environ.items() if k not in DEPOT_VARIABLES}
    environment.update(DEPOT_DATA_DIR=str(data), PYTHONPATH=str(ROOT), COLUMNS="200", **env)
    return subprocess.Popen(
        [sys.executable, "-c", script, *args],
        cwd=ROOT, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip


def _output(process: subprocess.Popen) -> str:
    return process.communicate(timeout=30)[0].decode(errors="replace")


def _state(settings: Settings) -> tuple[dict, dict]:
    stores = Stores.from_settings(settings)
    try:
        blobs = {
            key: hashlib.sha256(blob_bytes(stores.blobs, key)).hexdigest()
            for key, _s, _m in stores.blobs.list("")
        }
        return index_rows(stores.index), blobs
    finally:
        stores.vault.close()


@pytest.mark.parametrize("moment", ["between-blob-and-index", "from-outside-mid-run"])
def test_a_writer_killed_mid_ingest_leaves_no_row_without_blob_and_a_rerun_finishes_the_job(
    moment: str, tmp_path: Path, monkeypatch
):
    for name in DEPOT_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    data, clean = tmp_path / "data", tmp_path / "clean"
    settings = Settings(data_dir=data)
    create_project(settings, "alpha", "Alpha")
    shutil.copytree(data, clean)  # same project, same key, nothing ingested: the reference
    ct_series(tmp_path / "in", 300, series=3)
    args = ["ingest", str(tmp_path / "in"), "--project", "alpha"]

    if moment == "between-blob-and-index":
        writer = _depot(data, args, _KILL_BETWEEN_BLOB_AND_INDEX, KILL_AT_UPSERT="120")
        writer.wait(timeout=120)
    else:
        # A SIGKILL from outside while the writer holds a pseudonymized header about to be
        # stored, 60 files in: deterministic (a writer racing to its end cannot win), and
        # the kill lands where no code of ours runs its own clean-up.
        marker = tmp_path / "paused"
        writer = _depot(
            data, args, _PAUSE_BEFORE_A_BLOB, PAUSE_AT_PUT="61", PAUSED_MARKER=str(marker)
        )
        deadline = time.monotonic() + 120
        while not marker.exists():
            if writer.poll() is not None or time.monotonic() > deadline:
                writer.kill()
                pytest.fail("the writer never reached its 61st file:\n" + _output(writer))
            time.sleep(0.01)
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=30)
    assert writer.returncode == -signal.SIGKILL, writer.stdout.read().decode()

    # No index row without its blob, and every blob holds the bytes its row describes.
    stores = Stores.from_settings(settings)
    rows = index_repo.list_instances(stores.index, "alpha")
    assert 0 < len(rows) < 300
    for row in rows:
        assert hashlib.sha256(blob_bytes(stores.blobs, row.blob_key)).hexdigest() == row.sha256
    unindexed = {k for k, _, _ in stores.blobs.list("projects/alpha")} - {r.blob_key for r in rows}
    if moment == "between-blob-and-index":
        assert len(unindexed) == 1  # the blob of the 120th file: the orphan the sweep is for
    else:
        assert not unindexed and len(rows) == 60  # killed before the 61st blob was written
    assert not (data / "ingest-tmp").exists()  # nothing is written outside the store

    swept = sweep_orphans("alpha", stores, timedelta(0))
    assert (swept.orphan_blobs, swept.scratch_folders) == (len(unindexed), 0)
    assert {k for k, _, _ in stores.blobs.list("projects/alpha")} == {r.blob_key for r in rows}
    stores.vault.close()

    rerun = _depot(data, args)
    output = rerun.communicate(timeout=120)[0].decode()
    assert rerun.returncode == 0, output
    assert _summary_row(output) == ["300", str(300 - len(rows)), str(len(rows)), "0", "1", "3"]
    reference = _depot(clean, args)
    assert reference.wait(timeout=120) == 0
    assert _state(settings) == _state(Settings(data_dir=clean))


def test_the_sweep_removes_dead_runs_scratch_folders_and_keeps_live_ones(depot: Depot):
    scratch = depot.stores.scratch
    dead = scratch / "alpha" / "run-killed"
    dead.mkdir(parents=True)
    (dead / ".lock").touch()  # its lock died with its process
    (dead / "00000.part").write_bytes(b"identifiable bytes of a STOW-RS part")
    with scratch_run(scratch, "alpha") as live:
        (live / "00000.part").write_bytes(b"a request being stored")
        swept = sweep_orphans("alpha", depot.stores, timedelta(0))
        assert swept.scratch_folders == 1 and not dead.exists()
        assert (live / "00000.part").exists()


def _rewrite_pixels_once_hashed(path: Path, monkeypatch: pytest.MonkeyPatch) -> slice:
    """Between hashing an instance and storing it, someone rewrites 64 bytes in the middle of
    the input (pixel data): an export still in progress. The digest lookup runs in between."""
    real = index_repo.stored_digest
    middle = path.stat().st_size // 2

    def lookup_then_rewrite(*args, **kwargs):
        with open(path, "r+b") as fp:
            fp.seek(middle)
            piece = fp.read(64)
            fp.seek(middle)
            fp.write(bytes(b ^ 0xFF for b in piece))
        return real(*args, **kwargs)

    monkeypatch.setattr(index_repo, "stored_digest", lookup_then_rewrite)
    return slice(middle, middle + 64)


def test_an_input_rewritten_while_streamed_into_the_store_is_refused_whole(
    depot: Depot, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    [src] = ct_series(tmp_path / "in", 1)  # pixel data up to the end of the file
    monkeypatch.setattr(ingest, "READ_ONCE", 0)  # read again as it is stored
    _rewrite_pixels_once_hashed(src, monkeypatch)
    report = depot.ingest([src])
    assert [f.reason for f in report.failures] == ["the input changed while it was being stored"]
    assert index_repo.list_instances(depot.index, "alpha") == []
    assert not list(depot.blobs.list("projects/alpha"))  # no blob, whole or partial


def test_an_instance_read_once_is_stored_as_hashed_even_if_its_input_changes(
    depot: Depot, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    [src] = ct_series(tmp_path / "in", 1)  # pixel data up to the end of the file
    original = src.read_bytes()
    rewritten = _rewrite_pixels_once_hashed(src, monkeypatch)
    report = depot.ingest([src])
    assert len(report.stored) == 1
    [row] = index_repo.list_instances(depot.index, "alpha")
    data = blob_bytes(depot.blobs, row.blob_key)
    assert hashlib.sha256(data).hexdigest() == row.sha256
    assert original[rewritten] in data and src.read_bytes()[rewritten] not in data
