"""`GET /projects/{p}/fhir/AuditEvent`: the project's audit trail for its auditor (the DPO).

Auditors only (least privilege and separation of duties: data managers, who ingest and
re-identify, do not review their own trail). A FHIR searchset Bundle, oldest first, paged by
`_count` and a `next` link (`_cursor`: the last sequence number of the page). Parameters:
`date` (repeatable; `eq`, `ge`, `le`, `gt`, `lt` prefixes; a day or a full instant),
`agent` (token id), `entity` (a UID, `urn:oid:` optional, or a pseudonym), `action`
(C R U D E); each takes comma-separated alternatives. Anything else is a 400 with an
OperationOutcome. Kept small: the FHIR package (issue 5) will take it over.
"""

from __future__ import annotations

import datetime as dt
import operator
import re
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from app.audit.log import Query, search
from app.auth.http import require
from app.auth.roles import Role
from app.config import Settings
from app.dicomweb.public_base import public_base
from app.store.index import index_engine

FHIR_JSON = "application/fhir+json"
AUDITOR = require(Role.auditor)
DEFAULT_COUNT, MAX_COUNT = 50, 1000
_DATE = re.compile(r"^(eq|ge|le|gt|lt)?(\d{4}-\d{2}-\d{2})(T[0-9:.]+(Z|[+-]\d{2}:\d{2})?)?$")
_AGENT = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
_ENTITY = re.compile(r"^[A-Za-z0-9.]{1,64}$")
_ACTIONS = frozenset("CRUDE")
_COMPARE = {"ge": operator.ge, "gt": operator.gt, "le": operator.le, "lt": operator.lt}
KNOWN = frozenset({"date", "agent", "entity", "action", "_count", "_cursor"})


class SearchError(ValueError):
    pass


def _bounds(value: str) -> list:
    match = _DATE.match(value)
    if match is None:
        raise SearchError("date: expected [eq|ge|le|gt|lt]YYYY-MM-DD[Thh:mm:ss[.f][Z|±hh:mm]]")
    prefix, day, time_part = match.group(1) or "eq", match.group(2), match.group(3)
    try:
        if time_part:
            instant = dt.datetime.fromisoformat(day + time_part.replace("Z", "+00:00"))
            if instant.tzinfo is None:
                raise SearchError("date: an instant needs its zone (Z or ±hh:mm)")
            start = end = instant.astimezone(dt.UTC)
            end_exclusive = False
        else:
            start = dt.datetime.fromisoformat(day).replace(tzinfo=dt.UTC)
            end = start + dt.timedelta(days=1)
            end_exclusive = True
    except ValueError:
        raise SearchError("date: not a valid date") from None
    if prefix == "eq":
        return [(operator.ge, start), (operator.lt if end_exclusive else operator.le, end)]
    if prefix == "ge":
        return [(operator.ge, start)]
    if prefix == "lt":
        return [(operator.lt, start)]
    if prefix == "le":
        return [(operator.lt if end_exclusive else operator.le, end)]
    return [(operator.ge if end_exclusive else operator.gt, end)]  # gt


def _alternatives(name: str, value: str, pattern: re.Pattern | None) -> list[str]:
    values = [v.strip() for v in value.split(",")]
    if not values or any(not v for v in values):
        raise SearchError(f"{name}: empty value")
    if pattern is not None and not all(pattern.match(v) for v in values):
        raise SearchError(f"{name}: malformed value")
    return values


def parse_search(project_id: str, items: list[tuple[str, str]]) -> tuple[Query, int]:
    query, count = Query(project_id=project_id), DEFAULT_COUNT
    for name, value in items:
        if name not in KNOWN:
            raise SearchError(f"unknown search parameter {name[:64]!r}; supported: "
                              + ", ".join(sorted(KNOWN)))  # fmt: skip
        if name == "date":
            query.bounds.extend(_bounds(value))
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


def operation_outcome(status: int, message: str, code: str = "invalid") -> JSONResponse:
    body = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": code, "diagnostics": message}],
    }
    return JSONResponse(body, status, media_type=FHIR_JSON)


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
        links = [{"relation": "self", "url": f"{base}/AuditEvent?{urlencode(items)}"}]
        if next_after is not None:
            next_query = urlencode([*kept, ("_cursor", str(next_after))])
            links.append({"relation": "next", "url": f"{base}/AuditEvent?{next_query}"})
        bundle = {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": total,
            "link": links,
            "entry": [
                {
                    "fullUrl": f"{base}/AuditEvent/{event['id']}",
                    "resource": event,
                    "search": {"mode": "match"},
                }
                for event in events
            ],
        }
        return JSONResponse(bundle, media_type=FHIR_JSON)

    return router
