"""The project's FHIR resources, built from the index on read (no second store).

ImagingStudy (FIELD-NOTES 3.1 mapping), its pseudonymous Patient, the project's DICOMweb
Endpoint, and a Provenance per ingest batch. Every UID is the pseudonymized one; the Patient
carries only the pseudonym, in a system of its own project. Each resource declares its profile
(`fhir_profiles/`) and `meta.security` PSEUDED where the profile asks for it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterable, Sequence

import orjson

from app.fhir.body_site import body_site
from app.fhir.common import PSEUDED, instant, is_fhir_id
from app.provenance import DERIVATION
from app.pseudo.profile import TABLE_EDITION
from app.store.models import Instance, ProvenanceRecord, Series, Study

CANONICAL = "https://w3id.org/imaging-depot/fhir"
PROFILE = {
    "ImagingStudy": f"{CANONICAL}/StructureDefinition/depot-imaging-study",
    "Patient": f"{CANONICAL}/StructureDefinition/depot-patient",
    "Provenance": f"{CANONICAL}/StructureDefinition/depot-provenance-pseudonymization",
}
DERIVATION_PROFILE = f"{CANONICAL}/StructureDefinition/depot-provenance-derivation"
CHANGE_SUMMARY = f"{CANONICAL}/StructureDefinition/depot-change-summary"
PSEUDONYMIZATION_POLICY = "https://w3id.org/imaging-depot/pseudonymization"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
ENDPOINT_ID = "dicomweb"


def patient_system(project_id: str) -> str:
    """The identifier system of a project's pseudonyms: project-specific, so the same person
    in two projects has two unrelated identifiers in two systems."""
    return f"https://w3id.org/imaging-depot/id/{project_id}/patient"


def patient_id(pseudonym: str) -> str:
    """A FHIR id for a pseudonym: itself when it fits (ours do), else a digest of it."""
    if is_fhir_id(pseudonym):
        return pseudonym
    return "p-" + hashlib.sha256(pseudonym.encode()).hexdigest()[:40]


def _meta(kind: str, last_updated: dt.datetime | None, pseudonymized: bool = True) -> dict:
    meta: dict = {"profile": [PROFILE[kind]]} if kind in PROFILE else {}
    if last_updated is not None:
        meta["lastUpdated"] = instant(last_updated)
    if pseudonymized:
        meta["security"] = [PSEUDED]
    return meta


def version_of(resource: dict) -> str:
    """A version id that changes whenever the content does (resources are computed, not
    stored, so there is no counter): a digest of the canonical JSON without `meta`."""
    body = {k: v for k, v in resource.items() if k != "meta"}
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]


def _with_version(resource: dict) -> dict:
    resource["meta"]["versionId"] = version_of(resource)
    return resource


def _date(value: str | None) -> str | None:
    """A DICOM DA as a FHIR date. Times are not given: DICOM carries no zone, and a FHIR
    dateTime with a time needs one."""
    if value and len(value) >= 8 and value[:8].isdigit():
        return f"{value[0:4]}-{value[4:6]}-{value[6:8]}"
    return None


def _modality(code: str) -> dict:
    return {"system": DCM, "code": code}


def imaging_study(study: Study, series: Sequence[Series], instances: Iterable[Instance]) -> dict:
    """The ImagingStudy of a stored study (its references are relative: no base URL)."""
    by_series: dict[str, list[Instance]] = {}
    for instance in instances:
        by_series.setdefault(instance.series_uid, []).append(instance)
    resource: dict = {
        "resourceType": "ImagingStudy",
        "id": study.study_uid,
        "meta": _meta("ImagingStudy", study.updated_at),
        "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{study.study_uid}"}],
        "status": "available",
    }
    modalities = sorted({s.modality for s in series if s.modality})
    if modalities:
        resource["modality"] = [_modality(m) for m in modalities]
    resource["subject"] = {"reference": f"Patient/{patient_id(study.patient_id or '')}"}
    started = _date(study.study_date)
    if started:
        resource["started"] = started
    resource["endpoint"] = [{"reference": f"Endpoint/{ENDPOINT_ID}"}]
    resource["numberOfSeries"] = study.number_of_series
    resource["numberOfInstances"] = study.number_of_instances
    if study.study_description:
        resource["description"] = study.study_description
    resource["series"] = [_series(s, by_series.get(s.series_uid, [])) for s in series]
    if not resource["series"]:
        del resource["series"]
    return _with_version(resource)


def _series(series: Series, instances: Sequence[Instance]) -> dict:
    item: dict = {"uid": series.series_uid}
    if series.series_number is not None:
        item["number"] = series.series_number
    item["modality"] = _modality(series.modality or "OT")
    if series.series_description:
        item["description"] = series.series_description
    item["numberOfInstances"] = series.number_of_instances
    site = body_site(series.body_part_examined)
    if site is not None:
        item["bodySite"] = site
    started = _date(series.pps_start_date)
    if started:
        item["started"] = started
    if instances:
        item["instance"] = [_instance(i) for i in instances]
    return item


def _instance(instance: Instance) -> dict:
    item: dict = {
        "uid": instance.sop_uid,
        "sopClass": {"system": "urn:ietf:rfc:3986", "code": f"urn:oid:{instance.sop_class_uid}"},
    }
    if instance.instance_number is not None:
        item["number"] = instance.instance_number
    return item


def patient(project_id: str, pseudonym: str, last_updated: dt.datetime | None) -> dict:
    """The pseudonymous Patient: the pseudonym in the project's system, nothing else."""
    resource = {
        "resourceType": "Patient",
        "id": patient_id(pseudonym),
        "meta": _meta("Patient", last_updated),
        "identifier": [{"system": patient_system(project_id), "value": pseudonym}],
    }
    return _with_version(resource)


def endpoint(project_id: str, dicomweb_base: str) -> dict:
    """The project's DICOMweb service (WADO-RS, and QIDO-RS beside it): `address` is the
    base URL only, as dicomweb-client and viewers expect."""
    resource = {
        "resourceType": "Endpoint",
        "id": ENDPOINT_ID,
        "meta": {},
        "status": "active",
        "connectionType": {
            "system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type",
            "code": "dicom-wado-rs",
        },
        "name": f"DICOMweb of project {project_id}",
        "payloadType": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/endpoint-payload-type",
                        "code": "any",
                        "display": "Any",
                    }
                ]
            }
        ],
        "payloadMimeType": ["application/dicom"],
        "address": dicomweb_base,
    }
    return _with_version(resource)


def provenance(
    record: ProvenanceRecord,
    targets: Sequence[str],
    custodian: str,
    sources: Sequence[dict] | None = None,
) -> dict:
    """An ingest batch (activity PSEUD; the profile and table as policy) or a derived-object
    upload (activity DERIVE; its source series as entities) as a Provenance. Agents: the
    custodian Organization and the software Device, contained (they exist only as this
    record's agents). The change summary (attribute names and actions, no value) is an
    extension."""
    derivation = record.kind == DERIVATION
    lines = [f"{r['attribute']}: {r['action']} ({r['instances']})" for r in record.summary]
    if derivation:
        what = f"{record.source}: {record.instances} derived instances, {record.profile}. "
    else:
        options = ", ".join(record.options) or "none"
        what = (
            f"{record.source}: {record.instances} instances, profile {record.profile} "
            f"v{record.profile_version}, PS3.15 table {record.table_edition}, options {options}. "
        )
    tool, _, version = record.tool.rpartition(" ")
    meta = _meta("Provenance", record.recorded_at, pseudonymized=False)
    if derivation:
        meta["profile"] = [DERIVATION_PROFILE]
    resource: dict = {
        "resourceType": "Provenance",
        "id": record.id,
        "meta": meta,
        "contained": [
            {"resourceType": "Organization", "id": "custodian", "name": custodian},
            {
                "resourceType": "Device",
                "id": "software",
                "deviceName": [{"name": tool or record.tool, "type": "model-name"}],
                "version": [{"value": version or record.tool}],
            },
        ],
        "extension": [
            {
                "url": CHANGE_SUMMARY,
                "valueString": what
                + "Changes (attribute: action (instances)): "
                + ("; ".join(lines) or "none"),
            }
        ],
        "target": [{"reference": f"ImagingStudy/{uid}"} for uid in targets],
        "recorded": instant(record.recorded_at),
    }
    if derivation:
        resource["activity"] = {"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/v3-DataOperation",
            "code": "DERIVE", "display": "derive",
        }]}  # fmt: skip
    else:
        resource["policy"] = [
            f"{PSEUDONYMIZATION_POLICY}/{record.profile}/{record.profile_version}",
            f"http://dicom.nema.org/medical/dicom/{record.table_edition or TABLE_EDITION}"
            "/output/chtml/part15/chapter_E.html",
        ]
        resource["activity"] = {"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
            "code": "PSEUD", "display": "pseudonymization",
        }]}  # fmt: skip
    resource["agent"] = [
        {"type": _agent_type("custodian", "Custodian"), "who": {"reference": "#custodian"}},
        {"type": _agent_type("assembler", "Assembler"), "who": {"reference": "#software"}},
    ]
    if derivation:
        resource["entity"] = [
            {
                "role": "source",
                "what": {
                    "reference": f"ImagingStudy/{source['study']}",
                    "identifier": {
                        "system": "urn:dicom:uid",
                        "value": f"urn:oid:{source['series']}",
                    },
                    "display": "source series",
                },
            }
            for source in (record.sources if sources is None else sources)
        ]
    return _with_version(resource)


def _agent_type(code: str, display: str) -> dict:
    system = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"
    return {"coding": [{"system": system, "code": code, "display": display}]}
