"""Research STOW-RS: derived objects attach to the project's studies, keep their UIDs and dates,
lose what a person typed that identifies someone; anything else is sent to the ingest boundary.

Runs on both deployments (tests/research_server.py).
"""

from __future__ import annotations

import copy
import datetime as dt
import io
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from app.auth.credentials import Credentials
from app.dicom.multipart import new_boundary
from app.fhir.conformance import problems
from app.store import index_repo
from tests.identities import Identity, write_injected
from tests.samples import sample

pytest_plugins = ["tests.blobstores", "tests.research_server"]

URL = "/projects/alpha/dicom-web/studies"
REFERENCED, FAILED, RETRIEVE_URL = "00081199", "00081198", "00081190"
SOP_INSTANCE, WARNING, FAILURE = "00081155", "00081196", "00081197"
NOT_ATTACHED, STUDY_MISMATCH = 0xA910, 0xA900
WHO = Identity()


@pytest.fixture
def stored(research, tmp_path: Path) -> Dataset:
    """One pseudonymized CT instance of project alpha, as stored."""
    source = write_injected(sample("CT_small.dcm"), tmp_path / "ct.dcm", WHO)
    report = research.ingest([source])
    instance = index_repo.get_instance(research.stores.index, "alpha", report.stored[0].sop_uid)
    with research.stores.blobs.open(instance.blob_key) as stream:
        return dcmread(io.BytesIO(stream.read()))


def derived_from(source: Dataset) -> Dataset:
    """A derived image a research tool would write: new series and instance, same study."""
    ds = copy.deepcopy(source)
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.SeriesNumber = 900
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.SeriesDescription = "lesion mask"
    ds.ImageComments = f"reviewed; questions to {WHO.email} or {WHO.phone}"
    block = ds.private_block(0x0099, "RESEARCH TOOL", create=True)
    block.add_new(0x01, "LO", "tool internal note")
    item = Dataset()
    item.SeriesInstanceUID = source.SeriesInstanceUID
    ds.ReferencedSeriesSequence = [item]
    return ds


def post(research, datasets: list[Dataset], url: str = URL, who: str = "researcher"):
    boundary = new_boundary()
    body = b""
    for ds in datasets:
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        body += f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        body += buffer.getvalue() + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    headers = research.headers(
        who, **{"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'}
    )
    return research.client.post(url, content=body, headers=headers)


def stored_copy(research, sop_uid: str) -> Dataset:
    instance = index_repo.get_instance(research.stores.index, "alpha", sop_uid)
    assert instance is not None
    with research.stores.blobs.open(instance.blob_key) as stream:
        return dcmread(io.BytesIO(stream.read()))


def test_a_derived_object_keeps_its_uids_and_dates_and_loses_typed_identifiers(research, stored):
    derived = derived_from(stored)
    response = post(research, [derived])
    assert response.status_code == 200, response.text
    item = response.json()[REFERENCED]["Value"][0]
    assert item[SOP_INSTANCE]["Value"] == [derived.SOPInstanceUID]  # not remapped
    assert item[WARNING]["Value"] == [0xB000]  # the header was changed
    assert item[RETRIEVE_URL]["Value"][0].endswith(
        f"/studies/{stored.StudyInstanceUID}/series/{derived.SeriesInstanceUID}"
        f"/instances/{derived.SOPInstanceUID}"
    )
    copy = stored_copy(research, derived.SOPInstanceUID)
    assert copy.StudyInstanceUID == stored.StudyInstanceUID
    assert copy.ReferencedSeriesSequence[0].SeriesInstanceUID == stored.SeriesInstanceUID
    assert copy.StudyDate == stored.StudyDate and copy.ContentDate == stored.ContentDate
    assert copy.PatientID == stored.PatientID
    assert WHO.email not in copy.ImageComments and WHO.phone not in copy.ImageComments
    assert copy.ImageComments.startswith("reviewed; questions to ")
    assert copy.SeriesDescription == "lesion mask"
    assert not [e for e in copy if e.tag.is_private]
    assert copy.PatientIdentityRemoved == "YES"
    assert any("derived object" in m for m in copy.DeidentificationMethod)
    assert copy.PixelData == derived.PixelData


def test_the_derived_series_joins_its_study_with_counts_and_metadata(research, stored):
    derived = derived_from(stored)
    assert post(research, [derived]).status_code == 200
    study = index_repo.get_study(research.stores.index, "alpha", stored.StudyInstanceUID)
    assert (study.number_of_series, study.number_of_instances) == (2, 2)
    series = index_repo.get_series(research.stores.index, "alpha", derived.SeriesInstanceUID)
    assert series.metadata_revision == series.revision and series.metadata_key


def test_storing_the_same_derived_object_twice_succeeds_and_stores_it_once(research, stored):
    derived = derived_from(stored)
    assert post(research, [derived]).status_code == 200
    assert post(research, [derived]).status_code == 200
    instances = index_repo.list_instances(research.stores.index, "alpha")
    assert [i.sop_uid for i in instances].count(derived.SOPInstanceUID) == 1


def _refusal(response) -> int:
    assert FAILED in response.json()
    assert REFERENCED not in response.json()
    return response.json()[FAILED]["Value"][0][FAILURE]["Value"][0]


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda ds: setattr(ds, "StudyInstanceUID", generate_uid()), id="other-study"),
        pytest.param(lambda ds: setattr(ds, "PatientID", "IPP-OTHER-1"), id="other-patient-id"),
        pytest.param(lambda ds: setattr(ds, "PatientName", "DOE^JOHN"), id="original-name"),
        pytest.param(lambda ds: setattr(ds, "PatientBirthDate", "19700101"), id="birth-date"),
        pytest.param(lambda ds: delattr(ds, "PatientID"), id="no-patient-id"),
    ],
)
def test_an_object_outside_the_projects_studies_is_sent_to_the_ingest_boundary(
    research, stored, change
):
    derived = derived_from(stored)
    change(derived)
    response = post(research, [derived])
    assert response.status_code == 409
    assert _refusal(response) == NOT_ATTACHED
    assert "ingest boundary" in response.headers["warning"]
    assert "DOE" not in response.text + response.headers["warning"]
    assert index_repo.get_instance(research.stores.index, "alpha", derived.SOPInstanceUID) is None


def test_the_study_in_the_path_must_be_the_instances(research, stored):
    derived = derived_from(stored)
    response = post(research, [derived], url=f"{URL}/{generate_uid()}")
    assert response.status_code == 409
    assert _refusal(response) == STUDY_MISMATCH
    ok = post(research, [derived], url=f"{URL}/{stored.StudyInstanceUID}")
    assert ok.status_code == 200


def test_one_good_and_one_refused_object_is_a_partial_success(research, stored):
    good, bad = derived_from(stored), derived_from(stored)
    bad.PatientID = "SOMEONE-ELSE"
    response = post(research, [good, bad])
    assert response.status_code == 202
    body = response.json()
    assert [i[SOP_INSTANCE]["Value"][0] for i in body[REFERENCED]["Value"]] == [good.SOPInstanceUID]
    assert body[FAILED]["Value"][0][FAILURE]["Value"] == [NOT_ATTACHED]


def test_other_bytes_under_a_stored_sop_instance_uid_are_a_conflict(research, stored):
    derived = derived_from(stored)
    assert post(research, [derived]).status_code == 200
    derived.SeriesDescription = "another mask"
    response = post(research, [derived])
    assert response.status_code == 409
    assert _refusal(response) == 0x0110


@pytest.mark.parametrize(("who", "expected"), [("other", 404), ("manager", 200)])
def test_who_may_store_derived_objects(research, stored, who, expected):
    assert post(research, [derived_from(stored)], who=who).status_code == expected


def test_a_non_dicom_part_is_a_bad_request_that_stores_nothing(research, stored):
    boundary = new_boundary()
    body = (
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\nnot dicom at all\r\n"
        f"--{boundary}--\r\n"
    ).encode()
    headers = research.headers(
        **{"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'}
    )
    response = research.client.post(URL, content=body, headers=headers)
    assert response.status_code == 400
    assert _refusal(response) == 0xC000
    assert len(index_repo.list_instances(research.stores.index, "alpha")) == 1


def test_a_derived_object_gets_a_provenance_pointing_to_its_source_series(research, stored):
    derived = derived_from(stored)
    by_instance = derived_from(stored)  # a second one that names its source by instance only
    del by_instance.ReferencedSeriesSequence
    source_item = Dataset()
    source_item.ReferencedSOPClassUID = stored.SOPClassUID
    source_item.ReferencedSOPInstanceUID = stored.SOPInstanceUID
    by_instance.SourceImageSequence = [source_item]
    assert post(research, [derived]).status_code == 200
    assert post(research, [by_instance]).status_code == 200
    bundle = research.get("/projects/alpha/fhir/Provenance").json()
    derivations = [
        e["resource"] for e in bundle["entry"]
        if e["resource"]["activity"]["coding"][0]["code"] == "DERIVE"
    ]  # fmt: skip
    assert len(derivations) == 2
    for provenance in derivations:
        assert problems(provenance) == []
        assert provenance["target"] == [{"reference": f"ImagingStudy/{stored.StudyInstanceUID}"}]
        sources = [e["what"]["identifier"]["value"] for e in provenance["entity"]]
        assert sources == [f"urn:oid:{stored.SeriesInstanceUID}"]
        assert all(e["role"] == "source" for e in provenance["entity"])
        assert WHO.email not in str(provenance)
    alone = derived_from(stored)  # references nothing of the project: no provenance to tell
    del alone.ReferencedSeriesSequence
    assert post(research, [alone]).status_code == 200
    again = research.get("/projects/alpha/fhir/Provenance").json()
    assert len(again["entry"]) == len(bundle["entry"])


def test_a_grant_sees_no_source_series_of_studies_outside_it(research, stored):
    other = research.ingest([sample("MR_small.dcm")]).stored[0]
    derived = derived_from(stored)
    derived.ReferencedSeriesSequence[0].SeriesInstanceUID = other.series_uid  # another study
    assert post(research, [derived]).status_code == 200

    def derivations(who: str) -> list[dict]:
        bundle = research.get("/projects/alpha/fhir/Provenance", who=who).json()
        return [
            e["resource"] for e in bundle.get("entry", [])
            if e["resource"]["activity"]["coding"][0]["code"] == "DERIVE"
        ]  # fmt: skip

    [seen] = derivations("researcher")
    assert seen["entity"][0]["what"]["reference"] == f"ImagingStudy/{other.study_uid}"
    credentials = Credentials(research.settings)
    _, research.tokens["one-study"] = credentials.issue_grant(
        "alpha", scopes=["fhir-read"], studies=[str(stored.StudyInstanceUID)],
        lifetime=dt.timedelta(hours=1),
    )  # fmt: skip
    assert derivations("one-study") == []
    assert (
        other.series_uid
        not in research.get("/projects/alpha/fhir/Provenance", who="one-study").text
    )
