"""The catalogue over HTTP (docs/catalog.md).

Project level, for the data manager (audited like every `/projects/…` request):
`PUT|GET /projects/{p}/dataset`, `POST /projects/{p}/dataset/publish|withdraw`.

Site level, for harvesters (the health data access body, national and EU catalogues):
`GET /catalog.ttl` and `/catalog.jsonld` (HealthDCAT-AP, paged with Hydra, `modified_since`),
`GET /fhir/Library` (search), `/fhir/Library/{id}` (read) and `/fhir/metadata`. With
`DEPOT_CATALOG_PUBLIC=true` they answer without a token; otherwise any valid token, of any
project and role, opens them (the catalogue describes datasets, it gives no access to them).
These routes read only the published snapshots (app.catalog.service): an unauthenticated
harvester never triggers a query over the images' index.
"""

from __future__ import annotations

import datetime as dt
import unicodedata
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from rdflib import Graph

from app import __version__
from app.audit.events import project_entity
from app.auth.http import authenticate, require
from app.auth.roles import Principal, Role
from app.catalog import rdf
from app.catalog import service as catalog
from app.catalog.fhir_library import (
    CATALOG_PROFILE,
    DESCRIPTION_PROFILE,
    catalog_library,
    description_library,
)
from app.catalog.model import DescriptionError, validate_description
from app.config import Settings
from app.dicomweb.public_base import public_base
from app.fhir.common import (
    FHIR_JSON,
    FHIR_VERSION,
    SearchError,
    check_known,
    entry,
    fhir_response,
    instant,
    is_fhir_id,
    json_only,
    offset_links,
    operation_outcome,
    parse_count,
    parse_date,
    parse_offset,
    read_response,
    searchset,
)
from app.store.index import index_engine
from app.store.models import Dataset

MANAGER = require(Role.data_manager)
MEMBER = require(Role.data_manager, Role.researcher, Role.auditor)
DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE = 100, 1000  # ckanext-dcat pages by 100
CATALOG_PARAMS = frozenset({"page", "page_size", "modified_since"})
LIBRARY_PARAMS = frozenset(
    {"_id", "_lastUpdated", "url", "title", "title:contains", "title:exact", "topic",
     "status", "_count", "_offset"}
)  # fmt: skip
LIBRARY_STATUSES = frozenset({"draft", "active", "retired", "unknown"})
EXAMPLE = {
    "title": "Brain MRI of the memory clinic, 2018-2024",
    "description": "Pseudonymised brain MRI studies of patients seen at the memory clinic.",
    "purpose": "Develop and validate automated atrophy measurements.",
    "legal_basis": "MR-004 (CNIL reference methodology)",
    "keywords": ["MRI", "dementia", "brain"],
    "themes": ["HEAL", "TECH"],
    "contact_point": {"email": "imaging-research@chu.example.org"},
}


class DatasetView(BaseModel):
    """A project's dataset as its members see it: the working description, what is published,
    and the statistics the index gives now (small counts suppressed, as they would be
    published)."""

    project: str
    status: str
    version: int
    created: dt.datetime
    modified: dt.datetime
    published: dt.datetime | None
    pending_changes: bool
    description: dict[str, Any]
    statistics: dict[str, Any]
    published_statistics: dict[str, Any] | None
    library_url: str | None


def _view(request: Request, settings: Settings, row: Dataset) -> DatasetView:
    engine = index_engine(settings.index_url)
    stats = catalog.statistics(engine, row.project_id)
    current = {**stats.published(), "unmapped_body_parts": stats.unmapped_body_parts}
    listed = row.status == catalog.PUBLISHED
    base = public_base(request, settings.public_url)
    return DatasetView(
        project=row.project_id, status=row.status, version=row.version,
        created=row.created_at, modified=row.modified_at, published=row.published_at,
        pending_changes=catalog.pending_changes(row), description=row.description,
        statistics=current,
        published_statistics=(row.published or {}).get("statistics") if listed else None,
        library_url=rdf.library_url(base, row.project_id) if listed else None,
    )  # fmt: skip


def catalog_reader(settings: Settings) -> Callable[[Request], Principal | None]:
    """The site-level gate: nobody needs a token when the site publishes its catalogue
    (DEPOT_CATALOG_PUBLIC), else any valid token of any role will do (401 without)."""

    def dependency(request: Request) -> Principal | None:
        if settings.catalog_public:
            return None
        return authenticate(request)

    return dependency


def _site(request: Request, settings: Settings) -> rdf.Site:
    base = public_base(request, settings.public_url).rstrip("/")
    return rdf.Site(
        base=base,
        name=settings.site_name or "imaging-depot",
        url=settings.site_url or None,
        email=settings.site_email or None,
    )


def _audit(request: Request, project_id: str, action: str, row: Dataset) -> None:
    details = [("catalog", action), ("status", row.status), ("version", str(row.version))]
    request.state.audit_entities = [project_entity(project_id, details)]


def catalog_router(settings: Settings) -> APIRouter:
    router = APIRouter(tags=["catalogue"])
    reader = Depends(catalog_reader(settings))
    base_path = "/projects/{project_id}/dataset"

    def engine():
        return index_engine(settings.index_url)

    # --- project level --------------------------------------------------------------------

    @router.put(base_path, name="dataset_describe", dependencies=[Depends(MANAGER)])
    def dataset_describe(
        request: Request,
        project_id: str,
        body: Annotated[
            Any,  # checked by validate_description, whose errors never echo a value
            Body(
                description="The dataset description (docs/catalog.md); saved as the working "
                "copy, published by POST …/dataset/publish",
                openapi_examples={"minimal": {"value": EXAMPLE}},
            ),
        ],
    ) -> DatasetView:
        """Describe the project's dataset (data managers): a draft, or an update."""
        try:
            description = validate_description(body)
        except DescriptionError as error:
            raise HTTPException(422, detail=error.problems) from None
        try:
            row = catalog.describe(engine(), project_id, description)
        except catalog.CatalogError as error:
            raise HTTPException(409, detail=str(error)) from None
        _audit(request, project_id, "describe", row)
        return _view(request, settings, row)

    @router.get(base_path, name="dataset_read", dependencies=[Depends(MEMBER)])
    def dataset_read(request: Request, project_id: str) -> DatasetView:
        """The project's dataset: description, status, current statistics (suppressed)."""
        row = catalog.get_dataset(engine(), project_id)
        if row is None:
            raise HTTPException(404, detail="the project's dataset is not described yet")
        return _view(request, settings, row)

    @router.post(base_path + "/publish", name="dataset_publish", dependencies=[Depends(MANAGER)])
    def dataset_publish(request: Request, project_id: str) -> DatasetView:
        """Publish the description with the index statistics as they are now (or refresh)."""
        try:
            row = catalog.publish(engine(), project_id)
        except DescriptionError as error:
            raise HTTPException(422, detail=error.problems) from None
        except catalog.CatalogError as error:
            raise HTTPException(409, detail=str(error)) from None
        _audit(request, project_id, "publish", row)
        return _view(request, settings, row)

    @router.post(base_path + "/withdraw", name="dataset_withdraw", dependencies=[Depends(MANAGER)])
    def dataset_withdraw(request: Request, project_id: str) -> DatasetView:
        """Take the dataset out of the catalogue (its description stays, for a republication)."""
        try:
            row = catalog.withdraw(engine(), project_id)
        except catalog.CatalogError as error:
            raise HTTPException(409, detail=str(error)) from None
        _audit(request, project_id, "withdraw", row)
        return _view(request, settings, row)

    # --- HealthDCAT-AP --------------------------------------------------------------------

    def catalogue_page(request: Request, suffix: str) -> Graph | Response:
        items = list(request.query_params.multi_items())
        try:
            page_number, size, since = _catalog_params(items)
        except SearchError as error:
            return JSONResponse({"detail": str(error)}, 400)
        site = _site(request, settings)
        rows = catalog.published_datasets(engine(), since)
        chosen = rows[(page_number - 1) * size : page_number * size]
        kept = [(k, v) for k, v in items if k in ("modified_since", "page_size")]
        page = rdf.Page(f"{site.base}/catalog.{suffix}", page_number, size, len(rows), kept)
        return rdf.catalog_graph(chosen, site, page, catalog.last_change(engine()))

    @router.get(
        "/catalog.ttl", name="catalog_turtle", dependencies=[reader],
        response_class=Response,
        responses={200: {"content": {"text/turtle": {}}, "description": "A catalogue page"}},
    )  # fmt: skip
    async def catalog_turtle(request: Request) -> Response:
        """The catalogue in HealthDCAT-AP Turtle (`page`, `page_size`, `modified_since`)."""
        graph = await run_in_threadpool(catalogue_page, request, "ttl")
        if isinstance(graph, Response):
            return graph
        body = await run_in_threadpool(graph.serialize, format="turtle")
        return Response(body, media_type="text/turtle; charset=utf-8")

    @router.get(
        "/catalog.jsonld", name="catalog_jsonld", dependencies=[reader],
        response_class=Response,
        responses={200: {"content": {"application/ld+json": {}},
                         "description": "A catalogue page"}},
    )  # fmt: skip
    async def catalog_jsonld(request: Request) -> Response:
        """The catalogue in HealthDCAT-AP JSON-LD (same parameters and graph as Turtle)."""
        graph = await run_in_threadpool(catalogue_page, request, "jsonld")
        if isinstance(graph, Response):
            return graph
        context = {prefix: str(ns) for prefix, ns in rdf.PREFIXES.items()}
        body = await run_in_threadpool(graph.serialize, format="json-ld", context=context)
        return Response(body, media_type="application/ld+json")

    # --- FHIR Library -----------------------------------------------------------------------

    def libraries(site: rdf.Site) -> list[dict]:
        rows = catalog.published_datasets(engine())
        found = [description_library(row, site) for row in rows]
        listing = catalog_library(rows, site, catalog.last_change(engine()))
        return ([listing] if listing else []) + found

    def library_search(request: Request) -> Response:
        items = list(request.query_params.multi_items())
        try:
            check_known(items, LIBRARY_PARAMS)
            matches = _library_filter(items)
            count = parse_count([v for k, v in items if k == "_count"])
            offset = parse_offset([v for k, v in items if k == "_offset"])
        except SearchError as error:
            return operation_outcome(400, str(error))
        site = _site(request, settings)
        found = [lib for lib in libraries(site) if matches(lib)]
        found.sort(key=lambda lib: (lib["meta"]["lastUpdated"], lib["id"]))
        url = f"{site.base}/fhir/Library"
        next_items, previous_items = offset_links(items, offset, count, len(found))
        bundle = searchset(
            url=url, items=items, total=len(found), next_items=next_items,
            previous_items=previous_items,
            entries=[entry(f"{url}/{lib['id']}", lib) for lib in found[offset : offset + count]],
        )  # fmt: skip
        return fhir_response(bundle)

    def library_read(request: Request, library_id: str) -> Response:
        site = _site(request, settings)
        if library_id == rdf.CATALOG_ID:
            rows = catalog.published_datasets(engine())
            resource = catalog_library(rows, site, catalog.last_change(engine()))
        else:
            valid = is_fhir_id(library_id)  # anything else is no project's id
            row = catalog.catalogued_dataset(engine(), library_id) if valid else None
            if row is not None and row.status == catalog.WITHDRAWN:
                return operation_outcome(410, "this dataset was withdrawn from the catalogue")
            resource = description_library(row, site) if row is not None else None
        if resource is None:
            return operation_outcome(404, "no such Library")
        return read_response(request, resource)

    def capability_statement(request: Request) -> Response:
        return fhir_response(_capability(_site(request, settings), settings.catalog_public))

    fhir_routes: list[tuple[str, Callable[..., Response], str, str]] = [
        ("/fhir/metadata", capability_statement, "catalog_fhir_metadata",
         "The site's CapabilityStatement: the catalogue's Library resources."),
        ("/fhir/Library", library_search, "catalog_library_search",
         "Search the catalogue's Libraries: _lastUpdated, url, title, topic, status, _id."),
        ("/fhir/Library/{library_id}", library_read, "catalog_library_read",
         "Read a Library: a dataset (its project's id) or the catalogue (depot.catalog)."),
    ]  # fmt: skip
    for path, handler, name, summary in fhir_routes:
        router.add_api_route(
            path, json_only(handler), methods=["GET"], name=name, dependencies=[reader],
            response_class=Response, description=summary,
            responses={200: {"content": {FHIR_JSON: {}}, "description": "FHIR JSON"},
                       400: {"content": {FHIR_JSON: {}}, "description": "OperationOutcome"},
                       404: {"content": {FHIR_JSON: {}}, "description": "OperationOutcome"}},
        )  # fmt: skip
    return router


# --- parameters -----------------------------------------------------------------------------


def _catalog_params(items: list[tuple[str, str]]) -> tuple[int, int, dt.datetime | None]:
    """`page` (from 1), `page_size` (1…1000, default 100), `modified_since` (ISO 8601 date or
    date-time; without a zone, UTC). Each at most once; anything else refused."""
    check_known(items, CATALOG_PARAMS)
    values: dict[str, str] = {}
    for name, value in items:
        if name in values:
            raise SearchError(f"{name}: given more than once")
        values[name] = value
    page = _positive("page", values.get("page", "1"), 10**6)
    size = _positive("page_size", values.get("page_size", str(DEFAULT_PAGE_SIZE)), MAX_PAGE_SIZE)
    since = None
    if "modified_since" in values:
        text = values["modified_since"].strip()
        if len(text) > 10 and text[-6] == " " and text[-5:-3].isdigit():
            text = text[:-6] + "+" + text[-5:]  # an unencoded "+01:00" arrives as " 01:00"
        try:
            since = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise SearchError(
                "modified_since: expected an ISO 8601 date or date-time, e.g. 2025-01-31 or "
                "2025-01-31T12:00:00Z"
            ) from None
        if since.tzinfo is None:
            since = since.replace(tzinfo=dt.UTC)
        since = since.astimezone(dt.UTC)  # stored in UTC; SQLite compares the text
    return page, size, since


def _positive(name: str, value: str, limit: int) -> int:
    if not value.isdigit() or len(value) > 9 or not 1 <= int(value) <= limit:
        raise SearchError(f"{name}: expected an integer from 1 to {limit}")
    return int(value)


def _fold(text: str) -> str:
    """FHIR string matching: case- and accent-insensitive."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


def _token(value: str) -> tuple[str | None, str | None]:
    """`[system]|[code]` or `code`: (system, code); None means "any"."""
    if "|" in value:
        system, _, code = value.partition("|")
        return system, code or None
    return None, value


def _library_filter(items: list[tuple[str, str]]) -> Callable[[dict], bool]:
    """One predicate for the whole query: parameters AND together, comma-separated values
    of one parameter OR together (FHIR search)."""
    tests: list[Callable[[dict], bool]] = []
    for name, raw in items:
        if name in ("_count", "_offset"):
            continue
        values = [v.strip() for v in raw.split(",")]
        if not raw or any(not v for v in values):
            raise SearchError(f"{name}: empty value")
        if name == "_lastUpdated":
            bounds = parse_date(name, raw).point_bounds()
            tests.append(lambda lib, b=bounds: all(
                op(dt.datetime.fromisoformat(lib["meta"]["lastUpdated"]), limit)
                for op, limit in b))  # fmt: skip
        elif name == "_id":
            tests.append(lambda lib, v=values: lib["id"] in v)
        elif name == "url":
            tests.append(lambda lib, v=values: lib.get("url") in v)
        elif name in ("title", "title:contains", "title:exact"):
            tests.append(_title_test(name, values))
        elif name == "status":
            if not set(values) <= LIBRARY_STATUSES:
                raise SearchError("status: one of draft, active, retired, unknown")
            tests.append(lambda lib, v=values: lib["status"] in v)
        elif name == "topic":
            tokens = [_token(v) for v in values]
            tests.append(lambda lib, t=tokens: any(_has_topic(lib, s, c) for s, c in t))
    return lambda lib: all(test(lib) for test in tests)


def _title_test(name: str, values: list[str]) -> Callable[[dict], bool]:
    if name == "title:exact":
        return lambda lib: lib.get("title") in values
    folded = [_fold(v) for v in values]
    if name == "title:contains":
        return lambda lib: any(v in _fold(lib.get("title", "")) for v in folded)
    return lambda lib: any(_fold(lib.get("title", "")).startswith(v) for v in folded)


def _has_topic(library: dict, system: str | None, code: str | None) -> bool:
    for concept in library.get("topic", []):
        for coding in concept.get("coding", []):
            if system is not None and system != "" and coding.get("system") != system:
                continue
            if system == "" and coding.get("system"):
                continue
            if code is None or coding.get("code") == code:
                return True
    return False


# --- responses ------------------------------------------------------------------------------


def _capability(site: rdf.Site, public: bool) -> dict:
    """The site-level CapabilityStatement: Library read and search, and what they accept."""
    base = "http://hl7.org/fhir/SearchParameter/"
    params = [
        ("_id", "token", base + "Resource-id", "the Library's id"),
        ("_lastUpdated", "date", base + "Resource-lastUpdated",
         "time of publication; prefixes eq, gt, ge, lt, le, sa, eb"),
        ("url", "uri", base + "Library-url", "the canonical URL (exact)"),
        ("title", "string", base + "Library-title",
         "starts with, case- and accent-insensitive; :contains and :exact"),
        ("topic", "token", base + "Library-topic",
         "[system]|[code]: data themes, health categories, modalities (DCM), body sites "
         "(SNOMED CT)"),
        ("status", "token", base + "Library-status", "active (published datasets)"),
    ]  # fmt: skip
    rest: dict = {
        "mode": "server",
        "documentation": "The site's catalogue; each project's own FHIR façade is under "
        "/projects/{project}/fhir.",
        "resource": [
            {
                "type": "Library",
                "profile": "http://hl7.org/fhir/StructureDefinition/Library",
                "supportedProfile": [DESCRIPTION_PROFILE, CATALOG_PROFILE],
                "interaction": [{"code": "read"}, {"code": "search-type"}],
                "versioning": "versioned",
                "readHistory": False,
                "conditionalRead": "full-support",
                "searchParam": [
                    {"name": n, "type": t, "definition": d, "documentation": doc}
                    for n, t, d, doc in params
                ],
            }
        ],
        "searchParam": [
            {
                "name": "_count",
                "type": "number",
                "definition": base + "Resource-count",
                "documentation": "page size (≤ 1000)",
            },
            {"name": "_offset", "type": "number", "documentation": "where the page starts"},
        ],
    }
    if not public:
        rest["security"] = {
            "cors": False,
            "description": "Any valid bearer token of this server (docs/security.md).",
        }
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": instant(dt.datetime.now(dt.UTC)),
        "publisher": site.name,
        "kind": "instance",
        "software": {"name": "imaging-depot", "version": __version__},
        "implementation": {"description": site.catalogue_title, "url": f"{site.base}/fhir"},
        "fhirVersion": FHIR_VERSION,
        "format": ["json"],
        "rest": [rest],
    }
