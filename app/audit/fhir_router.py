"""`GET /projects/{p}/fhir/AuditEvent`: the project's audit trail for its auditor (the DPO).

Auditors only (least privilege and separation of duties: data managers, who ingest and
re-identify, do not review their own trail). A FHIR searchset Bundle, oldest first, paged by
`_count` and a `next` link (`_cursor`: the last sequence number of the page). Parameters:
`date` (repeatable; `eq`, `ge`, `le`, `gt`, `lt` prefixes; a day or a full instant),
`agent` (token id), `entity` (a UID, `urn:oid:` optional, or a pseudonym), `action`
(C R U D E); each takes comma-separated alternatives. Anything else is a 400 with an
OperationOutcome (app.fhir.common).
"""

from __future__ import annotations

import re

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from app.audit.log import Query, search
from app.auth.http import require
from app.auth.roles import Role
from app.config import Settings
from app.dicomweb.public_base import public_base
from app.fhir.common import (
    DEFAULT_COUNT,
    FHIR_JSON,
    MAX_COUNT,
    SearchError,
    check_known,
    entry,
    fhir_response,
    operation_outcome,
    parse_date,
    searchset,
)
from app.fhir.search import Param
from app.store.index import index_engine

AUDITOR = require(Role.auditor)
_AGENT = re.compile(r"^[A-Za-z0-9_.@:-]{1,64}$")
_ENTITY = re.compile(r"^[A-Za-z0-9.]{1,64}$")
_ACTIONS = frozenset("CRUDE")
KNOWN = frozenset({"date", "agent", "entity", "action", "_count", "_cursor"})
_SP = "http://hl7.org/fhir/SearchParameter"
AUDIT_PARAMS = (  # for the CapabilityStatement (app.fhir.router)
    Param("date", "date", "When recorded; eq ge le gt lt, a day or an instant",
          f"{_SP}/AuditEvent-date"),
    Param("agent", "token", "The agent's public id (token, grant, IdP subject)",
          f"{_SP}/AuditEvent-agent"),
    Param("entity", "token", "A UID (urn:oid: optional) or a pseudonym",
          f"{_SP}/AuditEvent-entity"),
    Param("action", "token", "C, R, U, D or E", f"{_SP}/AuditEvent-action"),
)  # fmt: skip


def _alternatives(name: str, value: str, pattern: re.Pattern | None) -> list[str]:
    values = [v.strip() for v in value.split(",")]
    if not values or any(not v for v in values):
        raise SearchError(f"{name}: empty value")
    if pattern is not None and not all(pattern.match(v) for v in values):
        raise SearchError(f"{name}: malformed value")
    return values


def parse_search(project_id: str, items: list[tuple[str, str]]) -> tuple[Query, int]:
    query, count = Query(project_id=project_id), DEFAULT_COUNT
    check_known(items, KNOWN)
    for name, value in items:
        if name == "date":
            query.bounds.extend(parse_date(name, value).point_bounds())
        elif name == "agent":
            query.agents.extend(_alternatives(name, value, _AGENT))
        elif name == "entity":
            values = [v.removeprefix("urn:oid:") for v in value.split(",")]
            query.entities.extend(_alternatives(name, ",".join(values), _ENTITY))
        elif name == "action":
            actions = _alternatives(name, value, None)
            if not set(actions) <= _ACTIONS:
                raise SearchError("action: one of C, R, U, D, E")
            query.actions.extend(actions)
        elif name in ("_count", "_cursor"):
            if not value.isdigit() or len(value) > 18:
                raise SearchError(f"{name}: expected a non-negative integer")
            if name == "_count":
                count = int(value)
                if not 1 <= count <= MAX_COUNT:
                    raise SearchError(f"_count: between 1 and {MAX_COUNT}")
            else:
                query.after_seq = int(value)
    return query, count


def audit_router(settings: Settings) -> APIRouter:
    router = APIRouter(tags=["audit"])

    @router.get(
        "/projects/{project_id}/fhir/AuditEvent",
        dependencies=[Depends(AUDITOR)],
        name="audit_event_search",
        response_class=JSONResponse,
        responses={
            200: {"content": {FHIR_JSON: {}}, "description": "A searchset Bundle"},
            400: {"content": {FHIR_JSON: {}}, "description": "OperationOutcome"},
        },
    )
    async def search_audit_events(request: Request, project_id: str) -> JSONResponse:
        """Search the project's audit trail (auditors only): a FHIR searchset Bundle."""
        items = list(request.query_params.multi_items())
        try:
            query, count = parse_search(project_id, items)
        except SearchError as exc:
            return operation_outcome(400, str(exc))
        engine = index_engine(settings.index_url)
        events, total, next_after = await run_in_threadpool(search, engine, query, count)
        base = f"{public_base(request, settings.public_url)}/projects/{project_id}/fhir"
        kept = [(k, v) for k, v in items if k != "_cursor"]
        bundle = searchset(
            url=f"{base}/AuditEvent",
            items=items,
            entries=[entry(f"{base}/AuditEvent/{e['id']}", e) for e in events],
            total=total,
            next_items=None if next_after is None else [*kept, ("_cursor", str(next_after))],
        )
        return fhir_response(bundle)

    return router
