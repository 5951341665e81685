"""`/projects/{p}/fhir/`: the project's FHIR R4 façade (read and search, JSON).

ImagingStudy, Patient, Endpoint and Provenance, computed from the index on each request
(app.fhir.search, app.fhir.resources); `metadata` states what is supported, from the same
parameter tables the searches parse with. Same tokens and roles as DICOMweb: researchers,
data managers, compute grants with the `fhir-read` scope (limited to their studies);
auditors read Provenance (the pseudonymization reports) and the AuditEvent trail. Errors are
OperationOutcomes (app.fhir.common.install_error_handlers).
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Callable, Sequence

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session, func, select

from app import __version__
from app.auth.http import check_study, not_found, require
from app.auth.roles import Principal, Role, Scope
from app.config import Settings
from app.dicomweb.public_base import public_base
from app.fhir import resources as build
from app.fhir import search as fs
from app.fhir.common import (
    FHIR_JSON,
    FHIR_VERSION,
    SearchError,
    entry,
    fhir_response,
    instant,
    json_only,
    offset_links,
    operation_outcome,
    read_response,
    searchset,
)
from app.provenance import DERIVATION, existing_studies, get_record, records_of_project
from app.store import index_repo
from app.store.index import index_engine
from app.store.models import ProvenanceRecord, Study

READER = require(Role.researcher, Role.data_manager, Role.compute, scope=Scope.fhir_read)
PROVENANCE_READER = require(
    Role.researcher, Role.data_manager, Role.auditor, Role.compute, scope=Scope.fhir_read
)
ANY_MEMBER = require(
    Role.researcher, Role.data_manager, Role.auditor, Role.compute, scope=Scope.fhir_read
)
_UID_CHUNK = 10_000  # study UIDs bound in one statement (PostgreSQL takes 65535 parameters)
SUBSETTED = {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
             "code": "SUBSETTED"}  # fmt: skip
_RESPONSES: dict[int | str, dict] = {
    200: {"content": {FHIR_JSON: {}}, "description": "A resource or a searchset Bundle"},
    304: {"description": "Not modified (If-None-Match / If-Modified-Since)"},
    400: {"content": {FHIR_JSON: {}}, "description": "OperationOutcome: a bad parameter"},
    404: {"content": {FHIR_JSON: {}}, "description": "OperationOutcome: no such resource"},
    406: {"content": {FHIR_JSON: {}}, "description": "OperationOutcome: JSON only"},
}


class Context:
    """What a FHIR request needs: the index, the caller, the base URLs."""

    def __init__(self, settings: Settings, request: Request, project_id: str) -> None:
        self.engine: Engine = index_engine(settings.index_url)
        self.project_id = project_id
        self.principal: Principal = request.state.principal
        root = f"{public_base(request, settings.public_url)}/projects/{project_id}"
        self.base = f"{root}/fhir"
        self.dicomweb = f"{root}/dicom-web"
        self.custodian = settings.site_name or "imaging-depot"

    def allowed(self, study_uid: str) -> bool:
        studies = self.principal.studies
        return studies is None or study_uid in studies


def _guarded(handler: Callable[..., Response]) -> Callable[..., Response]:
    """JSON only (406 otherwise); a bad parameter is a 400 and an index failure a 503, both
    OperationOutcomes, never a 500."""

    @json_only
    @functools.wraps(handler)  # FastAPI reads the wrapped signature
    def run(request: Request, *args: object, **kwargs: object) -> Response:
        try:
            return handler(request, *args, **kwargs)
        except SearchError as error:
            return operation_outcome(400, str(error))
        except SQLAlchemyError:
            return operation_outcome(503, "the index is unavailable", "transient")

    return run


def fhir_router(settings: Settings) -> APIRouter:
    router = APIRouter(tags=["fhir"], responses=_RESPONSES)
    root = "/projects/{project_id}/fhir"

    def context(request: Request, project_id: str) -> Context:
        return Context(settings, request, project_id)

    # --- ImagingStudy -----------------------------------------------------------------------

    def imaging_study_search(request: Request, project_id: str) -> Response:
        """Search ImagingStudy (see /metadata): a searchset Bundle with paging links."""
        ctx = context(request, project_id)
        items = list(request.query_params.multi_items())
        search = fs.parse_study_search(ctx.engine, project_id, items)
        page = fs.run_study_search(
            ctx.engine, project_id, search, ctx.principal.studies,
            with_instances=search.summary != "true" and _wants(search, "series"),
        )  # fmt: skip
        entries = []
        for study in page.studies:
            resource = build.imaging_study(
                study, page.series.get(study.study_uid, []), page.instances.get(study.study_uid, [])
            )
            resource = _subset(resource, search)
            entries.append(entry(f"{ctx.base}/ImagingStudy/{study.study_uid}", resource))
        entries += _included(ctx, search, page.studies)
        links = offset_links(items, search.offset, search.count, page.total)
        next_items, previous_items = (None, None) if search.summary == "count" else links
        bundle = searchset(
            url=f"{ctx.base}/ImagingStudy", items=items, entries=entries, total=page.total,
            next_items=next_items, previous_items=previous_items,
        )  # fmt: skip
        return fhir_response(bundle)

    def imaging_study_read(request: Request, project_id: str, study_uid: str) -> Response:
        """Read one ImagingStudy by its (pseudonymized) StudyInstanceUID."""
        ctx = context(request, project_id)
        resource = _study_resource(ctx, study_uid)
        if resource is None:
            raise not_found()
        return read_response(request, resource)

    # --- Patient, Endpoint ------------------------------------------------------------------

    def patient_search(request: Request, project_id: str) -> Response:
        """Search the project's pseudonymous patients by _id or identifier."""
        ctx = context(request, project_id)
        items = list(request.query_params.multi_items())
        groups, count, offset = fs.parse_simple(items, fs.PATIENT_PARAMS)
        patients = _patients(ctx)
        system = build.patient_system(project_id)
        chosen = []
        for pseudonym, updated in patients:
            ident = build.patient_id(pseudonym)
            if "_id" in groups and not fs.matches_all("_id", groups["_id"], ident.__eq__, str):
                continue
            if "identifier" in groups and not fs.matches_all(
                "identifier", groups["identifier"], pseudonym.__eq__,
                lambda v: v.removeprefix(f"{system}|") if "|" in v and v.startswith(system)
                else (v if "|" not in v else "\0"),
            ):  # fmt: skip
                continue
            chosen.append(build.patient(project_id, pseudonym, updated))
        return _simple_bundle(ctx, "Patient", items, chosen, count, offset)

    def patient_read(request: Request, project_id: str, patient_id: str) -> Response:
        """Read a pseudonymous Patient."""
        ctx = context(request, project_id)
        digest = patient_id.startswith("p-")  # an odd pseudonym's id: look through them all
        for pseudonym, updated in _patients(ctx, None if digest else [patient_id]):
            if build.patient_id(pseudonym) == patient_id:
                return read_response(request, build.patient(project_id, pseudonym, updated))
        raise not_found()

    def endpoint_search(request: Request, project_id: str) -> Response:
        """The project's DICOMweb Endpoint (one)."""
        ctx = context(request, project_id)
        items = list(request.query_params.multi_items())
        groups, count, offset = fs.parse_simple(items, fs.ENDPOINT_PARAMS)
        chosen = [build.endpoint(project_id, ctx.dicomweb)]
        if "_id" in groups and not fs.matches_all(
            "_id", groups["_id"], build.ENDPOINT_ID.__eq__, str
        ):
            chosen = []
        return _simple_bundle(ctx, "Endpoint", items, chosen, count, offset)

    def endpoint_read(request: Request, project_id: str, endpoint_id: str) -> Response:
        """Read the project's DICOMweb Endpoint: its address is the DICOMweb base URL."""
        ctx = context(request, project_id)
        if endpoint_id != build.ENDPOINT_ID:
            raise not_found()
        return read_response(request, build.endpoint(project_id, ctx.dicomweb))

    # --- Provenance -------------------------------------------------------------------------

    def provenance_search(request: Request, project_id: str) -> Response:
        """Search the Provenance of ingest batches by _id or target."""
        ctx = context(request, project_id)
        items = list(request.query_params.multi_items())
        groups, count, offset = fs.parse_simple(items, fs.PROVENANCE_PARAMS)
        chosen = []
        for resource in _provenances(ctx, records_of_project(ctx.engine, project_id)):
            ident = resource["id"]
            if "_id" in groups and not fs.matches_all("_id", groups["_id"], ident.__eq__, str):
                continue
            targets = {t["reference"].split("/", 1)[1] for t in resource["target"]}
            if "target" in groups and not fs.matches_all(
                "target", groups["target"], targets.__contains__,
                lambda v: fs.reference_id("target", v, "ImagingStudy"),
            ):  # fmt: skip
                continue
            chosen.append(resource)
        return _simple_bundle(ctx, "Provenance", items, chosen, count, offset)

    def provenance_read(request: Request, project_id: str, provenance_id: str) -> Response:
        """Read the Provenance of one ingest batch."""
        ctx = context(request, project_id)
        record = get_record(ctx.engine, project_id, provenance_id)
        found = _provenances(ctx, [record]) if record is not None else []
        if not found:
            raise not_found()
        return read_response(request, found[0])

    # --- metadata ---------------------------------------------------------------------------

    def capability_statement(request: Request, project_id: str) -> Response:
        """The CapabilityStatement: exactly the resources, interactions and parameters served."""
        ctx = context(request, project_id)
        return fhir_response(capability(ctx.base))

    routes = [
        ("/metadata", capability_statement, "fhir_metadata", ANY_MEMBER),
        ("/ImagingStudy", imaging_study_search, "fhir_search_imaging_study", READER),
        ("/ImagingStudy/{study_uid}", imaging_study_read, "fhir_read_imaging_study", READER),
        ("/Patient", patient_search, "fhir_search_patient", READER),
        ("/Patient/{patient_id}", patient_read, "fhir_read_patient", READER),
        ("/Endpoint", endpoint_search, "fhir_search_endpoint", READER),
        ("/Endpoint/{endpoint_id}", endpoint_read, "fhir_read_endpoint", READER),
        ("/Provenance", provenance_search, "fhir_search_provenance", PROVENANCE_READER),
        ("/Provenance/{provenance_id}", provenance_read, "fhir_read_provenance",
         PROVENANCE_READER),
    ]  # fmt: skip
    for path, handler, name, guard in routes:
        router.add_api_route(
            root + path, _guarded(handler), methods=["GET"], name=name,
            dependencies=[Depends(guard)], response_class=Response,
        )  # fmt: skip
    return router


# --- pieces ---------------------------------------------------------------------------------


def _wants(search: fs.StudySearch, element: str) -> bool:
    return search.elements is None or element in search.elements


def _subset(resource: dict, search: fs.StudySearch) -> dict:
    """`_elements` and `_summary=true`: fewer elements, tagged SUBSETTED (R4 search 3.1.1.5.8)."""
    if search.elements is not None:
        keep = {"resourceType", "id", "meta", *search.elements}
        resource = {k: v for k, v in resource.items() if k in keep}
    elif search.summary == "true":
        resource = {k: v for k, v in resource.items() if k != "description"}
        if "series" in resource:
            resource["series"] = [
                {k: v for k, v in s.items() if k != "instance"} for s in resource["series"]
            ]
    else:
        return resource
    resource["meta"] = {**resource["meta"], "tag": [SUBSETTED]}
    return resource


def _study_resource(ctx: Context, study_uid: str) -> dict | None:
    check_study(ctx.principal, study_uid)
    study = index_repo.get_study(ctx.engine, ctx.project_id, study_uid)
    if study is None:
        return None
    series, instances = fs.load_children(ctx.engine, ctx.project_id, [study_uid])
    return build.imaging_study(study, series.get(study_uid, []), instances.get(study_uid, []))


def _patients(ctx: Context, only: Sequence[str] | None = None) -> list[tuple[str, dt.datetime]]:
    """The project's pseudonyms (within a grant's studies; `only` these, if given) and when
    each last changed."""
    conditions = [Study.project_id == ctx.project_id, Study.patient_id.is_not(None)]
    if only is not None:
        conditions.append(Study.patient_id.in_(list(only)))
    if ctx.principal.studies is not None:
        conditions.append(Study.study_uid.in_(sorted(ctx.principal.studies)))
    with Session(ctx.engine) as session:
        query = (
            select(Study.patient_id, func.max(Study.updated_at))
            .where(*conditions)
            .group_by(Study.patient_id)
            .order_by(Study.patient_id)
        )
        return [(p, u) for p, u in session.exec(query) if p]


def _provenances(ctx: Context, records: Sequence[ProvenanceRecord]) -> list[dict]:
    """The records' Provenance resources, targeting those of their studies still in the index
    (and visible to a grant); a record left with no target (or, for a derivation, no source
    the grant may see) is left out. The index is asked once for all the records (per
    _UID_CHUNK studies), not once per record."""
    wanted = sorted({uid for record in records for uid in record.studies if ctx.allowed(uid)})
    present: set[str] = set()
    for start in range(0, len(wanted), _UID_CHUNK):
        chunk = wanted[start : start + _UID_CHUNK]
        present |= existing_studies(ctx.engine, ctx.project_id, chunk)
    found = []
    for record in records:
        targets = sorted(present.intersection(record.studies))
        # A derivation's sources too: a grant limited to some studies sees no other's UIDs.
        sources = [source for source in record.sources if ctx.allowed(source["study"])]
        if targets and (sources or record.kind != DERIVATION):
            found.append(build.provenance(record, targets, ctx.custodian, sources))
    return found


def _included(ctx: Context, search: fs.StudySearch, studies: list[Study]) -> list[dict]:
    found = []
    if "subject" in search.includes:
        pseudonyms = sorted({s.patient_id for s in studies if s.patient_id})
        updated = dict(_patients(ctx, pseudonyms))
        for pseudonym in pseudonyms:
            resource = build.patient(ctx.project_id, pseudonym, updated.get(pseudonym))
            found.append(entry(f"{ctx.base}/Patient/{resource['id']}", resource, "include"))
    if "endpoint" in search.includes and studies:
        resource = build.endpoint(ctx.project_id, ctx.dicomweb)
        found.append(entry(f"{ctx.base}/Endpoint/{resource['id']}", resource, "include"))
    if "Provenance:target" in search.revincludes and studies:
        uids = {s.study_uid for s in studies}
        records = records_of_project(ctx.engine, ctx.project_id)
        for resource in _provenances(ctx, [r for r in records if uids.intersection(r.studies)]):
            url = f"{ctx.base}/Provenance/{resource['id']}"
            found.append(entry(url, resource, "include"))
    return found


def _simple_bundle(
    ctx: Context, kind: str, items: list[tuple[str, str]], chosen: list[dict], count: int,
    offset: int,
) -> Response:  # fmt: skip
    next_items, _ = offset_links(items, offset, count, len(chosen))
    bundle = searchset(
        url=f"{ctx.base}/{kind}", items=items, total=len(chosen), next_items=next_items,
        entries=[entry(f"{ctx.base}/{kind}/{r['id']}", r) for r in chosen[offset : offset + count]],
    )  # fmt: skip
    return fhir_response(bundle)


def capability(base: str) -> dict:
    """What this façade serves, from the tables the searches parse with (app.fhir.search)."""

    def params(table: tuple[fs.Param, ...]) -> list[dict]:
        return [
            {"name": p.name, "definition": p.definition, "type": p.type,
             "documentation": p.documentation}
            for p in table
        ]  # fmt: skip

    def resource(kind: str, table: tuple[fs.Param, ...], **extra) -> dict:
        item = {
            "type": kind,
            "interaction": [{"code": "read"}, {"code": "search-type"}],
            "versioning": "versioned",
            "readHistory": False,
            "conditionalRead": "full-support",
            "searchParam": params(table),
            **extra,
        }
        if kind in build.PROFILE:
            item["supportedProfile"] = [build.PROFILE[kind]]
        return item

    from app.audit.fhir_router import AUDIT_PARAMS

    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": instant(dt.datetime.now(dt.UTC)),
        "kind": "instance",
        "software": {"name": "imaging-depot", "version": __version__},
        "implementation": {"description": "imaging-depot project FHIR façade", "url": base},
        "fhirVersion": FHIR_VERSION,
        "format": ["json"],
        "rest": [
            {
                "mode": "server",
                "security": {
                    "cors": False,
                    "service": [
                        {
                            "coding": [
                                {
                                    "system": "http://terminology.hl7.org/CodeSystem/"
                                    "restful-security-service",
                                    "code": "OAuth",
                                }
                            ],
                            "text": "Bearer JWT (docs/security.md)",
                        }
                    ],
                },
                "resource": [
                    resource(
                        "ImagingStudy",
                        fs.IMAGING_STUDY_PARAMS,
                        searchInclude=list(fs.INCLUDES),
                        searchRevInclude=list(fs.REVINCLUDES),
                    ),
                    resource("Patient", fs.PATIENT_PARAMS),
                    resource("Endpoint", fs.ENDPOINT_PARAMS),
                    resource("Provenance", fs.PROVENANCE_PARAMS),
                    {
                        "type": "AuditEvent",
                        "interaction": [{"code": "search-type"}],
                        "searchParam": params(AUDIT_PARAMS),
                    },
                ],
                "searchParam": [
                    {
                        "name": "_count",
                        "type": "number",
                        "definition": "http://hl7.org/fhir/SearchParameter/Resource-count",
                    },
                ],
            }
        ],
    }
