"""Orthanc as the clinical PACS, talking DICOMweb to a real imaging-depot server process.

Orthanc (Debian `orthanc` + `orthanc-dicomweb`, tests/orthanc.py) is given our server twice,
as a DICOMweb peer is configured in the field: the project's ingest boundary (Orthanc pushes
identifiable studies with its STOW-RS client) and the project's research surface (Orthanc
queries it with QIDO-RS and pulls studies back with WADO-RS). What comes back is the
pseudonymized copy, pixels untouched.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pydicom import dcmread

from app.store import index_repo
from app.store.index import index_engine
from tests.identities import Identity, leaked_tokens, write_injected
from tests.samples import sample

pytest.register_assert_rewrite("tests.orthanc")

pytest_plugins = ["tests.orthanc", "tests.depot_server"]

WHO = Identity()


def _pixels_md5(data: bytes | Path) -> str:
    ds = dcmread(data if isinstance(data, Path) else io.BytesIO(data))
    return hashlib.md5(ds.PixelData).hexdigest()


@pytest.fixture
def peers(orthanc, depot_server) -> Iterator[tuple]:
    """Orthanc, cleared, with our ingest boundary and research surface as DICOMweb remotes."""
    orthanc.clear()
    ingest = f"{depot_server.url}/projects/alpha/ingest/"
    research = f"{depot_server.url}/projects/alpha/dicom-web/"
    orthanc.add_dicomweb_server("depot-ingest", ingest, depot_server.headers("manager"))
    orthanc.add_dicomweb_server("depot", research, depot_server.headers("researcher"))
    try:
        yield orthanc, depot_server
    finally:
        orthanc.remove_dicomweb_server("depot-ingest")
        orthanc.remove_dicomweb_server("depot")
        orthanc.clear()


def _orthanc_instance_files(orthanc) -> list[bytes]:
    with orthanc.client() as client:
        ids = client.get("/instances").json()
        return [client.get(f"/instances/{i}/file").content for i in ids]


def test_orthanc_pushes_to_ingest_then_finds_and_pulls_back_the_pseudonymized_study(
    peers, tmp_path
):
    orthanc, server = peers
    originals = [
        write_injected(sample(name), tmp_path / f"{i}.dcm", WHO)
        for i, name in enumerate(("CT_small.dcm", "MR_small.dcm"))
    ]
    study_ids = sorted({orthanc.upload(path)["ParentStudy"] for path in originals})
    orthanc.push("depot-ingest", study_ids)  # raises unless every instance was acknowledged

    index = index_engine(server.settings.index_url)
    stored = index_repo.list_instances(index, "alpha")
    index.dispose()
    assert len(stored) == 2
    original_uids = {str(dcmread(p).StudyInstanceUID) for p in originals}
    assert not original_uids & {i.study_uid for i in stored}

    answer = orthanc.remote_query("depot", "/studies", {})
    found = {item["0020000D"]["Value"] for item in answer}
    assert found == {i.study_uid for i in stored}

    orthanc.clear()
    for study_uid in sorted(found):
        orthanc.remote_retrieve("depot", study_uid)
    assert set(orthanc.studies()) == found
    pulled = _orthanc_instance_files(orthanc)
    assert sorted(_pixels_md5(f) for f in pulled) == sorted(_pixels_md5(p) for p in originals)
    for data in pulled:
        assert leaked_tokens(data, WHO) == []


def test_orthanc_queries_the_research_surface_by_modality_with_a_researcher_token(peers, tmp_path):
    orthanc, server = peers
    ct = write_injected(sample("CT_small.dcm"), tmp_path / "ct.dcm", WHO)
    orthanc.push("depot-ingest", [orthanc.upload(ct)["ParentStudy"]])
    assert len(orthanc.remote_query("depot", "/studies", {"ModalitiesInStudy": "CT"})) == 1
    assert orthanc.remote_query("depot", "/studies", {"ModalitiesInStudy": "MR"}) == []
    # The research token cannot write through the ingest boundary: roles hold for peers too.
    refused = httpx.post(
        f"{server.url}/projects/alpha/ingest/studies",
        headers={**server.headers("researcher"), "Content-Type": "multipart/related"},
        content=b"",
    )
    assert refused.status_code == 403
