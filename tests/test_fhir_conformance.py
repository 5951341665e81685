"""The conformance checker (app/fhir/conformance.py) on hand-written resources: valid ones
pass, each kind of violation is caught, and the verdict follows the StructureDefinitions."""

from __future__ import annotations

import copy

import pytest

from app.fhir.conformance import load_profiles, problems

BASE = "https://w3id.org/imaging-depot/fhir/StructureDefinition"
PSEUDED = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
    "code": "PSEUDED",
    "display": "pseudonymized",
}
DCM = "http://dicom.nema.org/resources/ontology/DCM"
LIBRARY_TYPE = "http://terminology.hl7.org/CodeSystem/library-type"


def imaging_study() -> dict:
    instance = {
        "uid": "2.25.3",
        "sopClass": {"system": "urn:ietf:rfc:3986", "code": "urn:oid:1.2.840.10008.5.1.4.1.1.2"},
        "number": 1,
    }
    return {
        "resourceType": "ImagingStudy",
        "id": "2.25.1",
        "meta": {"profile": [f"{BASE}/depot-imaging-study"], "security": [PSEUDED]},
        "identifier": [{"system": "urn:dicom:uid", "value": "urn:oid:2.25.1"}],
        "status": "available",
        "modality": [{"system": DCM, "code": "CT"}],
        "subject": {"reference": "Patient/P1"},
        "endpoint": [{"reference": "Endpoint/dicomweb"}],
        "numberOfSeries": 2,
        "numberOfInstances": 3,
        "series": [
            {
                "uid": "2.25.2",
                "modality": {"system": DCM, "code": "CT"},
                "bodySite": {"system": "http://snomed.info/sct", "code": "51185008"},
                "instance": [instance, {**copy.deepcopy(instance), "uid": "2.25.4", "number": 2}],
            },
            {
                "uid": "2.25.5",
                "modality": {"system": DCM, "code": "SR"},
                "instance": [{**copy.deepcopy(instance), "uid": "2.25.6"}],
            },
        ],
    }


def patient() -> dict:
    return {
        "resourceType": "Patient",
        "id": "P1",
        "meta": {"profile": [f"{BASE}/depot-patient"], "security": [PSEUDED]},
        "identifier": [{"system": "https://w3id.org/imaging-depot/id/a/patient", "value": "P1"}],
        "gender": "female",
    }


def provenance_pseudonymization() -> dict:
    agent_type = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"
    return {
        "resourceType": "Provenance",
        "id": "batch-1",
        "meta": {"profile": [f"{BASE}/depot-provenance-pseudonymization"]},
        "contained": [
            {"resourceType": "Organization", "id": "custodian", "name": "Hospital"},
            {"resourceType": "Device", "id": "software", "version": [{"value": "0.1.0"}]},
        ],
        "extension": [
            {"url": f"{BASE}/depot-change-summary", "valueString": "PatientName: replaced (3)"}
        ],
        "target": [{"reference": "ImagingStudy/2.25.1"}],
        "recorded": "2024-05-06T07:08:09.000Z",
        "policy": ["https://w3id.org/imaging-depot/pseudonymization/basic/1"],
        "activity": {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "PSEUD"}
            ]
        },
        "agent": [
            {
                "type": {"coding": [{"system": agent_type, "code": "custodian"}]},
                "who": {"reference": "#custodian"},
            },
            {
                "type": {"coding": [{"system": agent_type, "code": "assembler"}]},
                "who": {"reference": "#software"},
            },
        ],
    }


def provenance_derivation() -> dict:
    return {
        "resourceType": "Provenance",
        "id": "seg-1",
        "meta": {"profile": [f"{BASE}/depot-provenance-derivation"]},
        "target": [{"reference": "ImagingStudy/2.25.9"}],
        "recorded": "2024-05-07T10:00:00Z",
        "activity": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/v3-DataOperation",
                    "code": "DERIVE",
                }
            ]
        },
        "entity": [{"role": "source", "what": {"reference": "ImagingStudy/2.25.1"}}],
        "agent": [{"who": {"display": "segmentation model"}}],
    }


def dataset_description() -> dict:
    return {
        "resourceType": "Library",
        "id": "dataset-a",
        "meta": {"profile": [f"{BASE}/depot-dataset-description"]},
        "url": "https://depot.example.org/fhir/Library/dataset-a",
        "identifier": [{"system": "https://w3id.org/imaging-depot/id/dataset", "value": "a"}],
        "title": "Project A",
        "status": "active",
        "type": {"coding": [{"system": LIBRARY_TYPE, "code": "asset-collection"}]},
        "publisher": "Hospital",
        "contact": [{"telecom": [{"system": "email", "value": "dpo@example.org"}]}],
        "description": "Pseudonymized CT.",
        "purpose": "Research.",
        "relatedArtifact": [{"type": "documentation", "url": "https://example.org/a"}],
        "content": [{"contentType": "text/turtle", "data": "QHByZWZpeCBkY3Q6IDw+IC4="}],
    }


def dataset_catalog() -> dict:
    return {
        "resourceType": "Library",
        "id": "catalog",
        "meta": {"profile": [f"{BASE}/depot-dataset-catalog"]},
        "url": "https://depot.example.org/fhir/Library/catalog",
        "title": "Catalogue",
        "status": "active",
        "type": {"coding": [{"system": LIBRARY_TYPE, "code": "asset-collection"}]},
        "publisher": "Hospital",
        "relatedArtifact": [
            {"type": "composed-of", "resource": "https://depot.example.org/fhir/Library/dataset-a"}
        ],
    }


VALID = [
    imaging_study,
    patient,
    provenance_pseudonymization,
    provenance_derivation,
    dataset_description,
    dataset_catalog,
]


@pytest.mark.parametrize("make", VALID, ids=lambda f: f.__name__)
def test_valid_resources_pass(make):
    assert problems(make()) == []


def test_valid_variants_pass():
    study = imaging_study()
    # other security labels and identifiers beside ours; an absolute reference
    study["meta"]["security"].insert(0, {"system": "http://x/labels", "code": "R"})
    study["identifier"].append({"system": "http://hospital/acsn", "value": "A1"})
    study["subject"] = {"reference": "https://depot.example.org/projects/a/fhir/Patient/P1"}
    library = dataset_description()
    # the pattern's coding is among others
    library["type"]["coding"].insert(0, {"system": "http://x/types", "code": "dataset"})
    bundle = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [{"fullUrl": "https://x/ImagingStudy/2.25.1", "resource": study}],
    }
    endpoint = {
        "resourceType": "Endpoint",
        "status": "active",
        "connectionType": {"code": "dicom-wado-rs"},
        "payloadType": [{"text": "DICOM"}],
        "address": "https://x/dicom-web",
    }
    for resource in (study, library, bundle, endpoint):
        assert problems(resource) == []


def one(resource: dict, *fragments: str) -> str:
    """The single problem found, checked to mention each fragment."""
    found = problems(resource)
    assert len(found) == 1, found
    for fragment in fragments:
        assert fragment in found[0], found[0]
    return found[0]


# --- each kind of violation -----------------------------------------------------------------


def test_parse_errors():
    study = imaging_study()
    del study["status"]  # 1..1 in FHIR core, left to the R4B models
    one(study, "does not parse", "status")
    study = imaging_study()
    del study["series"][1]["instance"][0]["sopClass"]
    one(study, "does not parse", "sopClass")
    study = imaging_study()
    study["numberOfSeries"] = "two"
    one(study, "does not parse", "numberOfSeries")
    study = imaging_study()
    study["modalities"] = []
    one(study, "does not parse", "modalities")
    one({"resourceType": "Nothing"}, "unknown resourceType")


def test_min_through_arrays():
    study = imaging_study()
    del study["series"][1]["instance"][0]["sopClass"]["system"]
    one(study, "ImagingStudy.series[1].instance[0].sopClass.system", "at least 1")
    study = imaging_study()
    del study["endpoint"]
    one(study, "ImagingStudy.endpoint: 0 present, at least 1", "depot-imaging-study")
    provenance = provenance_pseudonymization()
    del provenance["agent"][1]
    one(provenance, "Provenance.agent: 1 present, at least 2")
    library = dataset_catalog()
    del library["relatedArtifact"][0]["resource"]
    one(library, "relatedArtifact[0].resource: 0 present, at least 1")


def test_max_zero_means_absent():
    person = patient()
    person["birthDate"] = "1970-01-01"
    one(person, "Patient.birthDate: must be absent", "depot-patient")
    person = patient()
    person["name"] = [{"family": "Doe"}]
    one(person, "Patient.name: must be absent")


def test_max_one():
    study = imaging_study()
    study["meta"]["security"].append(dict(PSEUDED))
    one(study, "ImagingStudy.meta.security:pseudonymized: 2 present, at most 1")
    provenance = provenance_pseudonymization()
    provenance["extension"].append(dict(provenance["extension"][0]))
    one(provenance, "Provenance.extension:changeSummary: 2 present, at most 1")


def test_fixed_and_slice_membership():
    study = imaging_study()
    study["identifier"][0]["system"] = "urn:ietf:rfc:3986"  # not the slice any more
    one(study, "ImagingStudy.identifier:studyInstanceUid: 0 present, at least 1")
    study = imaging_study()
    study["meta"]["security"] = [{"system": PSEUDED["system"], "code": "ANONYED"}]
    one(study, "ImagingStudy.meta.security:pseudonymized: 0 present, at least 1")
    provenance = provenance_pseudonymization()
    provenance["extension"][0]["url"] += "-v2"  # no longer the extension, and unknown: fine
    assert problems(provenance) == []


def test_pattern():
    study = imaging_study()
    study["series"][0]["modality"]["system"] = "DCM"  # dicom-cast's mistake
    one(study, "ImagingStudy.series[0].modality.system", "pattern", '"DCM"')
    study = imaging_study()
    study["series"][0]["bodySite"]["system"] = "http://loinc.org"
    one(study, "ImagingStudy.series[0].bodySite.system", "pattern")
    provenance = provenance_pseudonymization()
    provenance["activity"]["coding"][0]["code"] = "ANONY"
    one(provenance, "Provenance.activity", "pattern", "PSEUD")
    library = dataset_description()
    library["type"]["coding"][0]["code"] = "logic-library"
    one(library, "Library.type", "asset-collection")
    library = dataset_description()
    library["content"].append({"contentType": "application/ld+json", "data": "e30="})
    one(library, "Library.content[1].contentType", "text/turtle")
    derivation = provenance_derivation()
    derivation["entity"][0]["role"] = "derivation"
    one(derivation, "Provenance.entity[0].role", "source")


def test_reference_target_types():
    study = imaging_study()
    study["subject"] = {"reference": "Group/cohort"}
    one(study, "ImagingStudy.subject", "not a reference to Patient")
    study = imaging_study()
    study["subject"] = {"identifier": {"system": "x", "value": "P1"}}
    one(study, "ImagingStudy.subject: no reference")
    provenance = provenance_pseudonymization()
    provenance["target"].append({"reference": "Patient/P1"})
    one(provenance, "Provenance.target[1]", "not a reference to ImagingStudy")


def test_extension_checked_against_its_definition():
    provenance = provenance_pseudonymization()
    provenance["extension"][0] = {"url": f"{BASE}/depot-change-summary", "valueInteger": 3}
    found = problems(provenance)
    assert any("valueInteger: type not allowed (only valueString)" in p for p in found), found
    provenance["extension"][0] = {"url": f"{BASE}/depot-change-summary"}
    found = problems(provenance)
    assert any("Provenance.extension[0].value[x]: 0 present" in p for p in found), found


def test_profiles_declared():
    study = imaging_study()
    study["meta"]["profile"] = [f"{BASE}/depot-imaging-studies"]
    found = problems(study)
    assert f"unknown profile {BASE}/depot-imaging-studies" in found[-1], found
    study["meta"]["profile"] = ["http://example.org/StructureDefinition/other"]
    one(study, "declares none of our ImagingStudy profiles")
    del study["meta"]["profile"]
    one(study, "declares none of our ImagingStudy profiles")
    person = patient()
    person["meta"]["profile"].append(f"{BASE}/depot-imaging-study")
    one(person, "profile depot-imaging-study constrains ImagingStudy, not Patient")
    # versioned canonicals are checked too
    person = patient()
    person["meta"]["profile"] = [f"{BASE}/depot-patient|0.1.0"]
    person["telecom"] = [{"system": "phone", "value": "0"}]
    one(person, "Patient.telecom: must be absent")


def test_bundle_entries_are_checked():
    bad = patient()
    bad["address"] = [{"city": "Paris"}]
    bundle = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [
            {"fullUrl": "https://x/ImagingStudy/2.25.1", "resource": imaging_study()},
            {"fullUrl": "https://x/Patient/P1", "resource": bad, "search": {"mode": "include"}},
        ],
    }
    one(bundle, "entry[1] Patient/P1", "Patient.address: must be absent")
    bundle["entry"][0]["resource"]["numberOfSeries"] = "two"
    found = problems(bundle)
    assert "does not parse" in found[0] and "numberOfSeries" in found[0], found


# --- the verdict follows the StructureDefinitions -------------------------------------------


def _edited() -> tuple[dict, dict]:
    profiles = copy.deepcopy(load_profiles())
    return profiles, profiles[f"{BASE}/depot-imaging-study"]


def _element(definition: dict, element_id: str) -> dict:
    return next(e for e in definition["differential"]["element"] if e["id"] == element_id)


def test_verdict_follows_the_definitions():
    study = imaging_study()
    del study["numberOfSeries"]
    assert "ImagingStudy.numberOfSeries: 0 present" in problems(study)[0]
    profiles, definition = _edited()
    _element(definition, "ImagingStudy.numberOfSeries")["min"] = 0
    assert problems(study, profiles) == []

    # a constraint added in memory is enforced on a resource that passed
    study = imaging_study()
    assert problems(study) == []
    profiles, definition = _edited()
    definition["differential"]["element"].append(
        {"id": "ImagingStudy.status", "path": "ImagingStudy.status", "fixedCode": "registered"}
    )
    definition["differential"]["element"].append(
        {"id": "ImagingStudy.series.number", "path": "ImagingStudy.series.number", "min": 1}
    )
    found = problems(study, profiles)
    assert found == [
        "ImagingStudy/2.25.1: ImagingStudy.series[0].number: 0 present, at least 1 required "
        "(depot-imaging-study)",
        "ImagingStudy/2.25.1: ImagingStudy.series[1].number: 0 present, at least 1 required "
        "(depot-imaging-study)",
        'ImagingStudy/2.25.1: ImagingStudy.status: must be "registered", is "available" '
        "(depot-imaging-study)",
    ]
    # the shared, cached definitions were not touched
    assert problems(study) == []


def test_what_it_cannot_evaluate_is_a_problem():
    profiles, definition = _edited()
    slicing = _element(definition, "ImagingStudy.identifier")["slicing"]
    slicing["discriminator"] = [{"type": "profile", "path": "$this"}]
    found = problems(imaging_study(), profiles)
    assert found == [
        "ImagingStudy/2.25.1: depot-imaging-study: cannot check: discriminator type 'profile' "
        "(only value and pattern)"
    ]
