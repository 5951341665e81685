"""What every FHIR route shares: responses, OperationOutcome errors, searchset Bundles, and
the date and count parameters of FHIR search (R4 `search.html`).

Written here rather than taken from a FHIR server framework: the façade is read-only and
computed from the index on each request, so it needs these few pieces, not a resource store.
`fhir.resources` models are used by the tests to check what we emit, not here: building a
model per resource would cost more than the whole query.
"""

from __future__ import annotations

import datetime as dt
import functools
import operator
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from email.utils import format_datetime, parsedate_to_datetime
from urllib.parse import urlencode

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

FHIR_JSON = "application/fhir+json"
FHIR_VERSION = "4.0.1"
DEFAULT_COUNT, MAX_COUNT = 50, 1000
PSEUDED = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
    "code": "PSEUDED",
    "display": "pseudonymized",
}

_DATE = re.compile(
    r"^(eq|ne|gt|lt|ge|le|sa|eb)?"
    r"(\d{4})(?:-(\d{2})(?:-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(?:\.\d+)?)?"
    r"(Z|[+-]\d{2}:\d{2})?)?)?)?$"
)
_FHIR_ID = re.compile(r"[A-Za-z0-9.-]{1,64}")
_ISSUE_CODES = {400: "invalid", 401: "login", 403: "forbidden", 404: "not-found",
                405: "not-supported", 406: "not-supported", 410: "deleted",
                412: "conflict", 413: "too-costly", 422: "processing"}  # fmt: skip


class SearchError(ValueError):
    """A search the server will not run; the message names the parameter, never a value."""


def fhir_response(
    resource: dict, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(orjson.dumps(resource), status, headers, media_type=FHIR_JSON)


def read_response(request: Request, resource: dict) -> Response:
    """A read: ETag W/"<versionId>" and Last-Modified from `meta`; 304 when If-None-Match
    names the version, or, without it, when If-Modified-Since is not older."""
    version = resource["meta"]["versionId"]
    etag = f'W/"{version}"'
    headers = {"ETag": etag}
    modified = None
    if "lastUpdated" in resource["meta"]:
        stamp = resource["meta"]["lastUpdated"].replace("Z", "+00:00")
        modified = dt.datetime.fromisoformat(stamp).replace(microsecond=0)
        headers["Last-Modified"] = format_datetime(modified, usegmt=True)
    if_none_match = request.headers.get("if-none-match")
    if if_none_match is not None:
        tags = {tag.strip() for tag in if_none_match.split(",")}
        if {etag, f'"{version}"', "*"} & tags:
            return Response(status_code=304, headers=headers)
    elif modified is not None and (since := request.headers.get("if-modified-since")):
        try:
            if modified <= parsedate_to_datetime(since):
                return Response(status_code=304, headers=headers)
        except (TypeError, ValueError):
            pass  # an unreadable date: answer in full
    return fhir_response(resource, headers=headers)


def operation_outcome(status: int, message: str, code: str | None = None) -> Response:
    body = {
        "resourceType": "OperationOutcome",
        "issue": [
            {
                "severity": "error",
                "code": code or _ISSUE_CODES.get(status, "processing"),
                "diagnostics": message,
            }
        ],
    }
    return fhir_response(body, status)


_JSON_TYPES = ("*/*", "application/*", "application/json", FHIR_JSON, "application/json+fhir")


def accepts_json(request: Request) -> bool:
    """Whether the Accept header admits FHIR JSON (the only format served)."""
    accept = request.headers.get("accept", "")
    if not accept:
        return True
    return any(part.split(";")[0].strip().lower() in _JSON_TYPES for part in accept.split(","))


def json_only(handler: Callable[..., Response]) -> Callable[..., Response]:
    """A route answering 406 (OperationOutcome) to a client that does not accept JSON."""

    @functools.wraps(handler)  # FastAPI reads the wrapped signature
    def run(request: Request, *args: object, **kwargs: object) -> Response:
        if not accepts_json(request):
            return operation_outcome(406, "only application/fhir+json is served")
        return handler(request, *args, **kwargs)

    return run


def is_fhir_path(path: str) -> bool:
    return "/fhir/" in path or path.endswith("/fhir")


def install_error_handlers(app: FastAPI) -> None:
    """On FHIR paths, every error (401 from the token check, 404, a malformed parameter) is an
    OperationOutcome; elsewhere FastAPI's own JSON answers stay."""
    from fastapi.exception_handlers import (
        http_exception_handler,
        request_validation_exception_handler,
    )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if not is_fhir_path(request.url.path):
            return await http_exception_handler(request, exc)
        answer = operation_outcome(exc.status_code, str(exc.detail))
        for name, value in (exc.headers or {}).items():
            answer.headers[name] = value
        return answer

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        if not is_fhir_path(request.url.path):
            return await request_validation_exception_handler(request, exc)
        where = ", ".join(str(e.get("loc", ["?"])[-1]) for e in exc.errors()[:5])
        return operation_outcome(400, f"invalid request: {where}")


# --- search parameters ----------------------------------------------------------------------


@dataclass(frozen=True)
class DateParam:
    """A date search value: its prefix and the range [low, high) its precision covers."""

    prefix: str
    low: dt.datetime
    high: dt.datetime

    def matches_range(self, start: dt.datetime, end: dt.datetime) -> bool:
        """R4 rules against a target range [start, end) (a day-precision date is a range)."""
        if self.prefix == "eq":
            return self.low <= start and end <= self.high
        if self.prefix == "ne":
            return not (self.low <= start and end <= self.high)
        if self.prefix in ("gt", "sa"):
            return end > self.high if self.prefix == "gt" else start >= self.high
        if self.prefix in ("lt", "eb"):
            return start < self.low if self.prefix == "lt" else end <= self.low
        if self.prefix == "ge":
            return end > self.low
        return start < self.high  # le

    def point_bounds(self) -> list[tuple[Callable, dt.datetime]]:
        """The comparisons an instant (a point in time, e.g. when an event was recorded)
        must pass: the range rules with start == end."""
        if self.prefix == "eq":
            return [(operator.ge, self.low), (operator.lt, self.high)]
        if self.prefix in ("gt", "sa"):
            return [(operator.ge, self.high)]
        if self.prefix in ("lt", "eb"):
            return [(operator.lt, self.low)]
        if self.prefix == "ge":
            return [(operator.ge, self.low)]
        if self.prefix == "le":
            return [(operator.lt, self.high)]
        raise SearchError("date: the ne prefix is not supported here")


def parse_date(name: str, value: str) -> DateParam:
    """`[prefix]YYYY[-MM[-DD[Thh:mm[:ss[.f]][zone]]]]`; without a zone, UTC."""
    match = _DATE.match(value)
    if match is None:
        raise SearchError(f"{name}: expected [eq|ne|gt|lt|ge|le|sa|eb]YYYY[-MM[-DD[Thh:mm:ss]]]")
    prefix = match.group(1) or "eq"
    year, month, day, hour, minute, second, zone = match.groups()[1:]
    try:
        if hour is not None:
            zone_info = dt.UTC
            if zone and zone != "Z":
                sign = 1 if zone[0] == "+" else -1
                zone_info = dt.timezone(
                    sign * dt.timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6]))
                )
            low = dt.datetime(int(year), int(month), int(day), int(hour), int(minute),
                              int(second or 0), tzinfo=zone_info).astimezone(dt.UTC)  # fmt: skip
            high = low + dt.timedelta(seconds=1 if second is not None else 60)
        elif day is not None:
            low = dt.datetime(int(year), int(month), int(day), tzinfo=dt.UTC)
            high = low + dt.timedelta(days=1)
        elif month is not None:
            low = dt.datetime(int(year), int(month), 1, tzinfo=dt.UTC)
            high = dt.datetime(int(year) + int(month) // 12, int(month) % 12 + 1, 1, tzinfo=dt.UTC)
        else:
            low = dt.datetime(int(year), 1, 1, tzinfo=dt.UTC)
            high = dt.datetime(int(year) + 1, 1, 1, tzinfo=dt.UTC)
    except (ValueError, OverflowError):
        raise SearchError(f"{name}: not a valid date") from None
    return DateParam(prefix, low, high)


def parse_count(values: Sequence[str], default: int = DEFAULT_COUNT) -> int:
    if not values:
        return default
    if len(values) > 1 or not values[-1].isdigit() or len(values[-1]) > 9:
        raise SearchError("_count: expected one non-negative integer")
    return min(int(values[-1]), MAX_COUNT)


def parse_offset(values: Sequence[str]) -> int:
    if not values:
        return 0
    if len(values) > 1 or not values[-1].isdigit() or len(values[-1]) > 12:
        raise SearchError("_offset: expected one non-negative integer")
    return int(values[-1])


def is_fhir_id(value: str) -> bool:
    """A FHIR resource id: 1 to 64 letters, digits, '-' and '.'."""
    return _FHIR_ID.fullmatch(value) is not None


def check_known(items: Iterable[tuple[str, str]], known: Iterable[str]) -> None:
    """Unknown parameters are refused (the issue asks for 400, not FHIR's lenient ignore)."""
    allowed = set(known)
    for name, _ in items:
        if name not in allowed:
            shown = name[:64] if re.fullmatch(r"[A-Za-z0-9_:.-]{1,64}", name) else "…"
            raise SearchError(
                f"unknown search parameter {shown!r}; supported: " + ", ".join(sorted(allowed))
            )


# --- bundles --------------------------------------------------------------------------------


def searchset(
    *,
    url: str,
    items: Sequence[tuple[str, str]],
    entries: Sequence[dict],
    total: int | None,
    next_items: Sequence[tuple[str, str]] | None = None,
    previous_items: Sequence[tuple[str, str]] | None = None,
) -> dict:
    """A searchset Bundle: `entries` are `{"fullUrl", "resource", "search"}` dicts; the links
    repeat the query as given (`self`) and as it continues (`next`, `previous`)."""
    links = [{"relation": "self", "url": _with_query(url, items)}]
    if next_items is not None:
        links.append({"relation": "next", "url": _with_query(url, next_items)})
    if previous_items is not None:
        links.append({"relation": "previous", "url": _with_query(url, previous_items)})
    bundle: dict = {"resourceType": "Bundle", "type": "searchset"}
    if total is not None:
        bundle["total"] = total
    bundle["link"] = links
    if entries:
        bundle["entry"] = list(entries)
    return bundle


def entry(full_url: str, resource: dict, mode: str = "match") -> dict:
    return {"fullUrl": full_url, "resource": resource, "search": {"mode": mode}}


def offset_links(
    items: Sequence[tuple[str, str]], offset: int, count: int, total: int
) -> tuple[list[tuple[str, str]] | None, list[tuple[str, str]] | None]:
    """The queries of the `next` and `previous` pages of an `_offset`-paged search (the query
    as given, `_offset` moved), for `searchset`; None where there is no such page."""
    kept = [(k, v) for k, v in items if k != "_offset"]
    following = offset + count
    next_items = [*kept, ("_offset", str(following))] if following < total else None
    previous_items = [*kept, ("_offset", str(max(0, offset - count)))] if offset else None
    return next_items, previous_items


def _with_query(url: str, items: Sequence[tuple[str, str]]) -> str:
    return f"{url}?{urlencode(list(items))}" if items else url


def instant(moment: dt.datetime) -> str:
    """A FHIR instant (UTC, milliseconds)."""
    moment = moment.astimezone(dt.UTC) if moment.tzinfo else moment.replace(tzinfo=dt.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
