"""The project's FHIR façade: ImagingStudy, Patient, Endpoint and Provenance built from the
index, searched and read as FHIR R4 says, on both deployments.

Every resource the tests receive is checked against its profile (app.fhir.conformance, driven
by the compiled StructureDefinitions) and against what the index holds.
"""

from __future__ import annotations

import datetime as dt
from email.utils import format_datetime

import pytest
from pydicom import dcmread
from sqlmodel import Session, select

from app.auth.credentials import Credentials
from app.auth.roles import Role
from app.fhir.body_site import body_site
from app.fhir.conformance import problems
from app.store.models import Instance, Series, Study
from tests.identities import original_uids
from tests.samples import readable_instances, sample

pytest_plugins = ["tests.blobstores", "tests.research_server"]

FHIR = "/projects/alpha/fhir"
SAMPLES = ["CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm", "rtdose.dcm", "emri_small.dcm"]


@pytest.fixture
def fhir(research):
    paths = [sample(name) for name in SAMPLES]
    assert research.ingest(paths).stored
    research.paths = paths
    return research


def _get(research, url: str, who: str = "researcher", **headers):
    return research.get(url, who=who, headers=headers)


def _bundle(research, query: str = "", kind: str = "ImagingStudy", who: str = "researcher"):
    answer = _get(research, f"{FHIR}/{kind}{query}", who)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("application/fhir+json")
    bundle = answer.json()
    if "_elements" not in query and "_summary=true" not in query:  # subsets need not conform
        assert problems(bundle) == []
    return bundle


def _resources(bundle: dict, mode: str = "match") -> list[dict]:
    return [e["resource"] for e in bundle.get("entry", []) if e["search"]["mode"] == mode]


def _studies(research) -> list[Study]:
    with Session(research.stores.index) as session:
        return list(session.exec(select(Study).where(Study.project_id == "alpha")))


def _ids(bundle: dict) -> set[str]:
    return {r["id"] for r in _resources(bundle)}


def _outcome(answer, status: int) -> dict:
    assert answer.status_code == status, answer.text
    body = answer.json()
    assert body["resourceType"] == "OperationOutcome"
    assert body["issue"][0]["severity"] == "error" and body["issue"][0]["diagnostics"]
    return body


# --- what the resources say -------------------------------------------------------------------


def test_each_study_is_an_imaging_study_matching_the_index(fhir):
    studies = {s.study_uid: s for s in _studies(fhir)}
    bundle = _bundle(fhir, "?_count=100")
    assert bundle["total"] == len(studies) == len(_resources(bundle))
    with Session(fhir.stores.index) as session:
        series = list(session.exec(select(Series).where(Series.project_id == "alpha")))
        instances = list(session.exec(select(Instance).where(Instance.project_id == "alpha")))
    for resource in _resources(bundle):
        study = studies[resource["id"]]
        assert resource["identifier"] == [
            {"system": "urn:dicom:uid", "value": f"urn:oid:{study.study_uid}"}
        ]
        assert resource["numberOfSeries"] == study.number_of_series
        assert resource["numberOfInstances"] == study.number_of_instances
        assert resource["subject"]["reference"] == f"Patient/{study.patient_id}"
        mine = [s for s in series if s.study_uid == study.study_uid]
        assert {s["uid"] for s in resource["series"]} == {s.series_uid for s in mine}
        assert {m["code"] for m in resource["modality"]} == {s.modality for s in mine}
        for item in resource["series"]:
            row = next(s for s in mine if s.series_uid == item["uid"])
            assert (
                item["bodySite"] == body_site(row.body_part_examined)
                if (row.body_part_examined and body_site(row.body_part_examined))
                else "bodySite" not in item
            )
            uids = {i.sop_uid for i in instances if i.series_uid == row.series_uid}
            assert {i["uid"] for i in item["instance"]} == uids
            for instance in item["instance"]:
                assert instance["sopClass"]["system"] == "urn:ietf:rfc:3986"
                assert instance["sopClass"]["code"].startswith("urn:oid:1.2.840.10008.")
        assert resource["endpoint"] == [{"reference": "Endpoint/dicomweb"}]
        assert {"code": "PSEUDED"}.items() <= resource["meta"]["security"][0].items()
    assert any("bodySite" in s for r in _resources(bundle) for s in r["series"])


def test_nothing_identifying_in_any_fhir_answer(fhir):
    texts = [
        _get(fhir, f"{FHIR}/ImagingStudy?_include=ImagingStudy:subject"
                   "&_revinclude=Provenance:target&_count=100").text,
        _get(fhir, f"{FHIR}/Patient").text,
        _get(fhir, f"{FHIR}/Provenance").text,
    ]  # fmt: skip
    for uid in original_uids(fhir.paths):
        assert all(uid not in text for text in texts)
    for path in fhir.paths:
        original = dcmread(path, stop_before_pixels=True)
        for value in (str(original.get("PatientName", "")), str(original.get("PatientID", ""))):
            if len(value) > 3:
                assert all(value not in text for text in texts), "an original identity leaked"
    patients = _resources(_bundle(fhir, "", "Patient"))
    assert patients and all(
        set(p) == {"resourceType", "id", "meta", "identifier"} for p in patients
    )


def test_patient_endpoint_and_provenance_resources(fhir):
    pseudonym = _studies(fhir)[0].patient_id
    patient = _get(fhir, f"{FHIR}/Patient/{pseudonym}")
    assert patient.status_code == 200 and problems(patient.json()) == []
    assert patient.json()["identifier"][0] == {
        "system": "https://w3id.org/imaging-depot/id/alpha/patient",
        "value": pseudonym,
    }
    endpoint = _get(fhir, f"{FHIR}/Endpoint/dicomweb").json()
    assert endpoint["address"].endswith("/projects/alpha/dicom-web")
    assert endpoint["connectionType"]["code"] == "dicom-wado-rs"
    provenances = _resources(_bundle(fhir, "", "Provenance"))
    assert len(provenances) == 1  # one ingest batch
    provenance = provenances[0]
    assert {t["reference"] for t in provenance["target"]} == {
        f"ImagingStudy/{s.study_uid}" for s in _studies(fhir)
    }
    assert provenance["activity"]["coding"][0]["code"] == "PSEUD"
    assert any("research-fr" in p for p in provenance["policy"])
    assert any("2024b" in p for p in provenance["policy"])
    summary = provenance["extension"][0]["valueString"]
    assert "PatientName" in summary or "(0010,0010)" in summary
    kinds = {c["resourceType"] for c in provenance["contained"]}
    assert kinds == {"Organization", "Device"}
    assert _get(fhir, f"{FHIR}/Provenance/{provenance['id']}").json() == provenance


# --- search -----------------------------------------------------------------------------------


def test_search_by_each_imaging_study_parameter(fhir):
    studies = _studies(fhir)
    target = next(s for s in studies if s.study_date)
    everyone = {s.study_uid for s in studies}
    uid = target.study_uid
    assert _ids(_bundle(fhir, f"?_id={uid}")) == {uid}
    assert _ids(_bundle(fhir, f"?identifier=urn:dicom:uid|urn:oid:{uid}")) == {uid}
    assert _ids(_bundle(fhir, f"?identifier=urn:oid:{uid}")) == {uid}
    same_patient = {s.study_uid for s in studies if s.patient_id == target.patient_id}
    assert _ids(_bundle(fhir, f"?patient=Patient/{target.patient_id}")) == same_patient
    assert _ids(_bundle(fhir, f"?subject={target.patient_id}")) == same_patient
    day = dt.datetime.strptime(target.study_date[:8], "%Y%m%d").date()
    assert uid in _ids(_bundle(fhir, f"?started={day.isoformat()}"))
    assert uid in _ids(_bundle(fhir, f"?started={day:%Y-%m}"))
    assert uid in _ids(_bundle(fhir, f"?started=ge{day}&started=le{day}"))
    assert uid not in _ids(_bundle(fhir, f"?started=gt{day}"))
    assert uid not in _ids(_bundle(fhir, f"?started=lt{day}"))
    assert uid in _ids(_bundle(fhir, f"?started=sa{day - dt.timedelta(days=1)}"))
    assert uid not in _ids(_bundle(fhir, f"?started=ne{day}"))
    with Session(fhir.stores.index) as session:
        series = list(session.exec(select(Series).where(Series.study_uid == uid)))
    modality = series[0].modality
    with_modality = {s.study_uid for s in studies if modality in s.modalities.split("\\")}
    dcm = "http://dicom.nema.org/resources/ontology/DCM"
    assert _ids(_bundle(fhir, f"?modality={modality}")) == with_modality
    assert _ids(_bundle(fhir, f"?modality={dcm}|{modality}")) == with_modality
    assert _ids(_bundle(fhir, f"?modality=XX,{modality}")) == with_modality
    assert _ids(_bundle(fhir, f"?series={series[0].series_uid}")) == {uid}
    assert _ids(_bundle(fhir, "?endpoint=Endpoint/dicomweb")) == everyone
    assert _ids(_bundle(fhir, "?endpoint=Endpoint/other")) == set()
    today = dt.datetime.now(dt.UTC).date()
    assert _ids(_bundle(fhir, f"?_lastUpdated=ge{today}")) == everyone
    assert _ids(_bundle(fhir, f"?_lastUpdated=lt{today}")) == set()
    with Session(fhir.stores.index) as session:
        parts = list(session.exec(select(Series).where(Series.project_id == "alpha")))
    coded = [(s, body_site(s.body_part_examined)) for s in parts if body_site(s.body_part_examined)]
    assert coded, "the samples have a coded body part"
    row, coding = coded[0]
    expected = {s.study_uid for s, c in coded if c["code"] == coding["code"]}
    assert _ids(_bundle(fhir, f"?bodysite=http://snomed.info/sct|{coding['code']}")) == expected
    assert row.study_uid in expected


def test_paging_include_revinclude_summary_and_elements(fhir):
    studies = _studies(fhir)
    seen, url = [], f"{FHIR}/ImagingStudy?_count=2"
    while url:
        bundle = _get(fhir, url.replace("http://testserver", "")).json()
        assert bundle["total"] == len(studies)
        seen += [r["id"] for r in _resources(bundle)]
        url = next((link["url"] for link in bundle["link"] if link["relation"] == "next"), None)
    assert sorted(seen) == sorted(s.study_uid for s in studies)  # each once

    bundle = _bundle(fhir, "?_include=ImagingStudy:subject&_include=ImagingStudy:endpoint"
                           "&_revinclude=Provenance:target")  # fmt: skip
    included = _resources(bundle, "include")
    kinds = {r["resourceType"] for r in included}
    assert kinds == {"Patient", "Endpoint", "Provenance"}
    patients = {r["id"] for r in included if r["resourceType"] == "Patient"}
    assert patients == {s.patient_id for s in studies}

    count = _bundle(fhir, "?_summary=count")
    assert count["total"] == len(studies) and "entry" not in count
    summary = _resources(_bundle(fhir, "?_summary=true"))
    assert all("instance" not in s for r in summary for s in r["series"])
    assert all(r["meta"]["tag"][0]["code"] == "SUBSETTED" for r in summary)
    elements = _resources(_bundle(fhir, "?_elements=identifier,numberOfSeries"))
    assert all(set(r) == {"resourceType", "id", "meta", "identifier", "numberOfSeries"}
               for r in elements)  # fmt: skip


@pytest.mark.parametrize(
    "query",
    ["?PatientName=Smith", "?started=yesterday", "?started=2020-13-45", "?_count=abc",
     "?modality=http://loinc.org|CT", "?_id=not-a-uid", "?patient=Group/1", "?_summary=data",
     "?_include=ImagingStudy:referrer", "?_revinclude=AuditEvent:entity", "?_format=xml",
     "?modality=", "?started:missing=true"],
)  # fmt: skip
def test_bad_parameters_are_400_operation_outcomes_naming_no_value(fhir, query):
    body = _outcome(_get(fhir, f"{FHIR}/ImagingStudy{query}"), 400)
    assert "Smith" not in str(body)


def test_reads_have_etags_and_answer_conditional_reads(fhir):
    uid = _studies(fhir)[0].study_uid
    read = _get(fhir, f"{FHIR}/ImagingStudy/{uid}")
    assert read.status_code == 200 and problems(read.json()) == []
    etag, modified = read.headers["ETag"], read.headers["Last-Modified"]
    assert etag == f'W/"{read.json()["meta"]["versionId"]}"'
    assert _get(fhir, f"{FHIR}/ImagingStudy/{uid}", **{"If-None-Match": etag}).status_code == 304
    assert (
        _get(fhir, f"{FHIR}/ImagingStudy/{uid}", **{"If-Modified-Since": modified}).status_code
        == 304
    )
    older = format_datetime(dt.datetime(2000, 1, 1, tzinfo=dt.UTC), usegmt=True)
    assert (
        _get(fhir, f"{FHIR}/ImagingStudy/{uid}", **{"If-Modified-Since": older}).status_code == 200
    )
    assert _get(fhir, f"{FHIR}/ImagingStudy/{uid}", **{"If-None-Match": 'W/"x"'}).status_code == 200
    _outcome(_get(fhir, f"{FHIR}/ImagingStudy/1.2.3"), 404)
    _outcome(_get(fhir, f"{FHIR}/Patient/PNOPE"), 404)
    _outcome(_get(fhir, f"{FHIR}/Endpoint/other"), 404)
    _outcome(_get(fhir, f"{FHIR}/Provenance/ffff"), 404)
    _outcome(_get(fhir, f"{FHIR}/ImagingStudy/{uid}", Accept="application/fhir+xml"), 406)


def test_access_follows_the_dicomweb_rules(fhir):
    uid = _studies(fhir)[0].study_uid
    other = _get(fhir, f"{FHIR}/ImagingStudy/{uid}", who="other")  # beta's researcher
    _outcome(other, 404)
    anonymous = fhir.client.get(f"{FHIR}/ImagingStudy")
    body = _outcome(anonymous, 401)
    assert anonymous.headers["WWW-Authenticate"].startswith("Bearer")
    assert body["issue"][0]["code"] == "login"
    credentials = Credentials(fhir.settings)
    fhir.tokens["auditor"] = credentials.issue_token("alpha", Role.auditor)[1]
    _outcome(_get(fhir, f"{FHIR}/ImagingStudy", who="auditor"), 403)
    assert _get(fhir, f"{FHIR}/Provenance", who="auditor").status_code == 200
    # A compute grant: FHIR only with its scope, its studies only.
    _, fhir.tokens["dicomweb-only"] = credentials.issue_grant(
        "alpha", scopes=["dicomweb-read"], lifetime=dt.timedelta(hours=1)
    )
    _outcome(_get(fhir, f"{FHIR}/ImagingStudy", who="dicomweb-only"), 403)
    _, fhir.tokens["one-study"] = credentials.issue_grant(
        "alpha", scopes=["fhir-read"], studies=[uid], lifetime=dt.timedelta(hours=1)
    )
    assert _ids(_bundle(fhir, "?_count=100", who="one-study")) == {uid}
    others = [s.study_uid for s in _studies(fhir) if s.study_uid != uid]
    _outcome(_get(fhir, f"{FHIR}/ImagingStudy/{others[0]}", who="one-study"), 404)
    provenance = _resources(_bundle(fhir, "", "Provenance", who="one-study"))[0]
    assert provenance["target"] == [{"reference": f"ImagingStudy/{uid}"}]
    patients = _resources(_bundle(fhir, "", "Patient", who="one-study"))
    assert {p["id"] for p in patients} == {_studies(fhir)[0].patient_id} or len(patients) == 1


def test_every_parameter_the_capability_statement_declares_works(fhir):
    statement = _get(fhir, f"{FHIR}/metadata").json()
    assert statement["resourceType"] == "CapabilityStatement"
    assert statement["fhirVersion"] == "4.0.1" and statement["format"] == ["json"]
    study = next(s for s in _studies(fhir) if s.study_date)
    with Session(fhir.stores.index) as session:
        series = session.exec(select(Series).where(Series.study_uid == study.study_uid)).first()
        coded = next(
            body_site(s.body_part_examined)["code"]
            for s in session.exec(select(Series))
            if body_site(s.body_part_examined)
        )
    provenance_id = _resources(_bundle(fhir, "", "Provenance"))[0]["id"]
    samples = {
        "ImagingStudy": {
            "_id": study.study_uid, "_lastUpdated": f"ge{dt.date.today()}",
            "identifier": f"urn:oid:{study.study_uid}", "patient": f"Patient/{study.patient_id}",
            "subject": f"Patient/{study.patient_id}", "started": f"{study.study_date[:4]}",
            "modality": series.modality, "series": series.series_uid,
            "bodysite": f"http://snomed.info/sct|{coded}", "endpoint": "Endpoint/dicomweb",
        },
        "Patient": {"_id": study.patient_id,
                    "identifier": f"https://w3id.org/imaging-depot/id/alpha/patient|{study.patient_id}"},
        "Endpoint": {"_id": "dicomweb"},
        "Provenance": {"_id": provenance_id, "target": f"ImagingStudy/{study.study_uid}"},
        "AuditEvent": {"date": f"ge{dt.date.today()}", "agent": "x", "entity": study.study_uid,
                       "action": "R"},
    }  # fmt: skip
    fhir.tokens["auditor"] = Credentials(fhir.settings).issue_token("alpha", Role.auditor)[1]
    checked = 0
    for resource in statement["rest"][0]["resource"]:
        kind = resource["type"]
        who = "auditor" if kind == "AuditEvent" else "researcher"
        for param in resource["searchParam"]:
            value = samples[kind][param["name"]]
            answer = _get(fhir, f"{FHIR}/{kind}?{param['name']}={value}", who)
            assert answer.status_code == 200, (kind, param["name"], answer.text)
            if kind != "AuditEvent" and param["name"] != "agent":
                assert answer.json().get("entry"), (kind, param["name"])
            checked += 1
        for include in resource.get("searchInclude", []):
            assert _get(fhir, f"{FHIR}/{kind}?_include={include}").status_code == 200
        for include in resource.get("searchRevInclude", []):
            assert _get(fhir, f"{FHIR}/{kind}?_revinclude={include}").status_code == 200
        if "read" in [i["code"] for i in resource["interaction"]]:
            assert resource["supportedProfile"] if kind != "Endpoint" else True
    assert checked >= 18


def test_a_deleted_study_leaves_the_facade(fhir):
    studies = _studies(fhir)
    gone = studies[0].study_uid
    deleted = fhir.client.delete(
        f"/projects/alpha/dicom-web/studies/{gone}", headers=fhir.headers("manager")
    )
    assert deleted.status_code in (200, 202, 204)
    _outcome(_get(fhir, f"{FHIR}/ImagingStudy/{gone}"), 404)
    targets = {
        t["reference"] for p in _resources(_bundle(fhir, "", "Provenance")) for t in p["target"]
    }
    assert f"ImagingStudy/{gone}" not in targets and targets


def test_samples_cover_several_studies():
    assert {sample(n) for n in SAMPLES} <= set(readable_instances())
