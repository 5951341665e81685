"""A real FHIR client (fhirpy) against a real `depot serve`: search ImagingStudy by modality
and date range, follow paging to the end, use _include and _revinclude, find the DICOMweb
Endpoint, and retrieve the study from it with dicomweb-client.
"""

from __future__ import annotations

from dicomweb_client.api import DICOMwebClient
from fhirpy import SyncFHIRClient

from app.fhir.conformance import problems
from app.ingest import Stores, ingest_files
from app.projects import get_project
from tests.samples import sample

pytest_plugins = ["tests.depot_server"]

SAMPLES = ["CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm", "rtdose.dcm", "emri_small.dcm"]


def test_fhirpy_finds_studies_and_their_endpoint_then_dicomweb_client_retrieves(depot_server):
    server = depot_server
    stores = Stores.from_settings(server.settings)
    try:
        report = ingest_files(
            stores, get_project(server.settings, "alpha"), [sample(n) for n in SAMPLES]
        )
    finally:
        stores.vault.close()
    ct_studies = {
        r.study_uid
        for r in report.stored
        if r.sop_class_uid.startswith("1.2.840.10008.5.1.4.1.1.2")
    }
    assert ct_studies

    client = SyncFHIRClient(
        f"{server.url}/projects/alpha/fhir",
        authorization=f"Bearer {server.tokens['researcher']}",
    )
    # Modality and a date range wide enough for the shifted dates; one study per page.
    search = (
        client.resources("ImagingStudy")
        .search(modality="CT", started__ge="1900-01-01", started__lt="2100-01-01")
        .limit(1)
    )
    found = search.fetch_all()  # follows the `next` links to the end
    assert {s["id"] for s in found} == ct_studies
    assert len(found) == len(ct_studies)  # each once
    assert all(problems(s.serialize()) == [] for s in found)
    assert client.resources("ImagingStudy").search(started__lt="1900-01-01").fetch_all() == []

    counted = client.resources("ImagingStudy").search(_summary="count").fetch_raw()
    assert counted["total"] == len({r.study_uid for r in report.stored})
    study = found[0]
    bundle = (
        client.resources("ImagingStudy")
        .search(_id=study["id"])
        .include("ImagingStudy", "subject")
        .revinclude("Provenance", "target")
        .fetch_raw()
    )
    kinds = [e["resource"]["resourceType"] for e in bundle["entry"]]
    assert sorted(kinds) == ["ImagingStudy", "Patient", "Provenance"]
    assert problems(bundle) == []
    patient = next(
        e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient"
    )
    assert "name" not in patient and "birthDate" not in patient

    endpoint = client.reference(reference=study["endpoint"][0]["reference"]).to_resource()
    assert endpoint["connectionType"]["code"] == "dicom-wado-rs"
    dicomweb = DICOMwebClient(
        endpoint["address"], headers={"Authorization": f"Bearer {server.tokens['researcher']}"}
    )
    instances = dicomweb.retrieve_study(study["id"])
    expected = {i["uid"] for s in study["series"] for i in s["instance"]}
    assert {str(ds.SOPInstanceUID) for ds in instances} == expected
