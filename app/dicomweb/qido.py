"""QIDO-RS (PS3.18 10.6) on the research surface: search studies, series and instances.

Six resources under `/projects/{project_id}/dicom-web` (Table 10.6.1-1): `/studies`,
`/studies/{study}/series`, `/series`, `/studies/{study}/series/{series}/instances`,
`/studies/{study}/instances`, `/instances`, for researchers and data managers. Matching is
app.store.search's (its docstring has the rules); this module parses parameters and writes
the DICOM JSON (Annex F). Choices the standard leaves open, or where peers differ:

- **No match: 200 with `[]`**, not 204. PS3.18 2024e 8.3.4.4.1 says 204, but CP-2473 (WG-27,
  after the 2024 Connectathon) moves to 200, as RFC 9110 and IHE PDQm want; dicomweb-client
  reads an empty body and `[]` alike, OHIF and most clients expect an array.
- **A study or series in the path** is a matching key: one that does not exist, or exists
  in another project only, gives the same 200 `[]`. A malformed UID in the path is 400.
- **Parameters** are attribute keywords (pydicom's dictionary) or 8-hex-digit tags, dotted for
  the RequestAttributesSequence keys; `includefield` (repeatable, comma lists, or `all`),
  `limit`, `offset`, `fuzzymatching`, `emptyvaluematching`, `multiplevaluematching` (true or
  false). Anything else is 400: an unknown parameter, an attribute that cannot be matched at
  the level (lower levels; attributes not indexed), a repeated non-UID key, a malformed value,
  a non-integer limit. Reasons name the parameter, never its value.
- **Paging**: `limit` defaults to 1000 and is capped at 5000 (a larger one is served as 5000);
  when results remain, `Warning: 299 imaging-depot "There are N additional results that can be
  requested"`. Order is stable: studies newest first, then by UID; series by study, number,
  UID; instances by study, series, number, UID.
- **emptyvaluematching / multiplevaluematching** are not supported: `=true` searches without
  them and adds PS3.18's Warning 299 for each. fuzzymatching is supported (PN keys).
- **Returned attributes**: the defaults of Tables 10.6.3-3/4/5 (those "if present" only when
  present), the matched keys, and `includefield` attributes the index holds at the level or
  above (StudyDescription, BodyPartExamined, ...). Series results always carry
  StudyInstanceUID, instance results StudyInstanceUID and SeriesInstanceUID; relational
  resources (`/series`, `/instances`, `/studies/{s}/instances`) add the defaults of the levels
  above not fixed by the path. `includefield=all` adds every attribute held at the returned
  levels. An `includefield` attribute the index does not hold, or of a lower level (OHIF asks
  for Modality on studies), is not returned and not an error: reading it from the precomputed
  series metadata would cost a blob read per result row, so it is left to WADO-RS metadata.
  TimezoneOffsetFromUTC is not indexed, hence not returned.
- SpecificCharacterSet is `ISO_IR 192` on a result holding non-ASCII text; InstanceAvailability
  is ONLINE (everything indexed is stored). `Accept` may be application/dicom+json,
  application/json or any (`*/*`); the XML multipart form is 406.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import orjson
from fastapi import APIRouter, Depends, HTTPException, Request, status
from fastapi.responses import Response
from pydicom.datadict import dictionary_has_tag, keyword_for_tag, tag_for_keyword

from app.auth.http import require
from app.auth.roles import Role, Scope
from app.config import Settings
from app.dicomweb.accept import DICOM_JSON, NotAcceptable, negotiate_metadata, parse_accept
from app.dicomweb.public_base import public_base
from app.dicomweb.urls import instance_url, series_url, study_url
from app.store import search as store_search
from app.store.index import index_engine
from app.store.search import KEYS, Level, Page, Query, QueryError, Row

SERVICE = "imaging-depot"
DEFAULT_LIMIT = 1000
MAX_LIMIT = 5000
_TAG = re.compile(r"[0-9A-Fa-f]{8}")
_NAME = re.compile(r"[A-Za-z0-9.]{1,64}")  # parameter names we may quote back
_CONTROL = frozenset({"limit", "offset", "includefield", "fuzzymatching"})
_UNSUPPORTED = {
    "emptyvaluematching": "The emptyvaluematching parameter is not supported. "
    "Empty Value Matching has not been performed.",
    "multiplevaluematching": "The multiplevaluematching parameter is not supported. "
    "Multiple Value Matching has not been performed.",
}
_SEQUENCE_KEYS = {"00400275": "RequestAttributesSequence"}

READER = require(Role.researcher, Role.data_manager, Role.compute, scope=Scope.dicomweb_read)


# --- returned attributes ---------------------------------------------------------------------


@dataclass(frozen=True)
class Attribute:
    """A returnable attribute: where its value comes from, and whether a default returns it
    even when empty (required) or only when present."""

    keyword: str
    tag: str
    vr: str
    level: Level
    value: Callable[[Row, str], Any]  # (row, base URL) -> value or None
    default: bool = False
    if_present: bool = False  # a default only when it has a value


def _study(name: str) -> Callable[[Row, str], Any]:
    return lambda row, _base: getattr(row.study, name)


def _series(name: str) -> Callable[[Row, str], Any]:
    return lambda row, _base: getattr(row.series, name)


def _instance(name: str) -> Callable[[Row, str], Any]:
    return lambda row, _base: getattr(row.instance, name)


def _online(_row: Row, _base: str) -> str:
    return "ONLINE"


def _study_url(row: Row, base: str) -> str:
    return study_url(base, row.study.project_id, row.study.study_uid)


def _series_url(row: Row, base: str) -> str:
    assert row.series is not None
    return series_url(base, row.study.project_id, row.study.study_uid, row.series.series_uid)


def _instance_url(row: Row, base: str) -> str:
    assert row.instance is not None
    i = row.instance
    return instance_url(base, i.project_id, i.study_uid, i.series_uid, i.sop_uid)


def _attribute(
    spec: str, level: Level, value: Callable[[Row, str], Any], how: str = ""
) -> Attribute:
    """`spec` is "Keyword TAG VR"; `how` holds "d" (a default) and "p" (only if present)."""
    keyword, tag, vr = spec.split()
    return Attribute(keyword, tag, vr, level, value, "d" in how, "p" in how)


ST, SE, IN = Level.STUDY, Level.SERIES, Level.INSTANCE
ATTRIBUTES: tuple[Attribute, ...] = (
    # Study (Table 10.6.3-3), and StudyDescription on request
    _attribute("StudyDate 00080020 DA", ST, _study("study_date"), "d"),
    _attribute("StudyTime 00080030 TM", ST, _study("study_time"), "d"),
    _attribute("AccessionNumber 00080050 SH", ST, _study("accession_number"), "d"),
    _attribute("InstanceAvailability 00080056 CS", ST, _online, "d"),
    _attribute("ModalitiesInStudy 00080061 CS", ST, _study("modalities"), "d"),
    _attribute("ReferringPhysicianName 00080090 PN", ST, _study("referring_physician_name"), "d"),
    _attribute("StudyDescription 00081030 LO", ST, _study("study_description")),
    _attribute("PatientName 00100010 PN", ST, _study("patient_name"), "d"),
    _attribute("PatientID 00100020 LO", ST, _study("patient_id"), "d"),
    _attribute("PatientBirthDate 00100030 DA", ST, _study("patient_birth_date"), "d"),
    _attribute("PatientSex 00100040 CS", ST, _study("patient_sex"), "d"),
    _attribute("StudyInstanceUID 0020000D UI", ST, _study("study_uid"), "d"),
    _attribute("StudyID 00200010 SH", ST, _study("study_id"), "d"),
    _attribute("NumberOfStudyRelatedSeries 00201206 IS", ST, _study("number_of_series"), "d"),
    _attribute("NumberOfStudyRelatedInstances 00201208 IS", ST, _study("number_of_instances"), "d"),
    _attribute("RetrieveURL 00081190 UR", ST, _study_url, "d"),
    # Series (Table 10.6.3-4), and BodyPartExamined on request
    _attribute("Modality 00080060 CS", SE, _series("modality"), "d"),
    _attribute("SeriesDescription 0008103E LO", SE, _series("series_description"), "dp"),
    _attribute("BodyPartExamined 00180015 CS", SE, _series("body_part_examined")),
    _attribute("SeriesInstanceUID 0020000E UI", SE, _series("series_uid"), "d"),
    _attribute("SeriesNumber 00200011 IS", SE, _series("series_number"), "d"),
    _attribute(
        "NumberOfSeriesRelatedInstances 00201209 IS", SE, _series("number_of_instances"), "d"
    ),
    _attribute("PerformedProcedureStepStartDate 00400244 DA", SE, _series("pps_start_date"), "dp"),
    _attribute("PerformedProcedureStepStartTime 00400245 TM", SE, _series("pps_start_time"), "dp"),
    _attribute("RetrieveURL 00081190 UR", SE, _series_url, "d"),
    # Instance (Table 10.6.3-5)
    _attribute("SOPClassUID 00080016 UI", IN, _instance("sop_class_uid"), "d"),
    _attribute("SOPInstanceUID 00080018 UI", IN, _instance("sop_uid"), "d"),
    _attribute("InstanceNumber 00200013 IS", IN, _instance("instance_number"), "d"),
    _attribute("Rows 00280010 US", IN, _instance("rows"), "dp"),
    _attribute("Columns 00280011 US", IN, _instance("columns"), "dp"),
    _attribute("BitsAllocated 00280100 US", IN, _instance("bits_allocated"), "dp"),
    _attribute("NumberOfFrames 00280008 IS", IN, _instance("number_of_frames"), "dp"),
    _attribute("RetrieveURL 00081190 UR", IN, _instance_url, "d"),
)
_BY_KEYWORD: dict[tuple[str, Level], Attribute] = {(a.keyword, a.level): a for a in ATTRIBUTES}


@dataclass(frozen=True)
class Resource:
    """One of the six QIDO resources: what it returns, what its path fixes."""

    level: Level
    study_in_path: bool = False
    series_in_path: bool = False

    @property
    def levels(self) -> tuple[Level, ...]:
        """The levels whose default attributes are returned: the level itself, and the
        levels above that the path does not fix (relational queries)."""
        above = []
        if self.level > Level.STUDY and not self.study_in_path:
            above.append(Level.STUDY)
        if self.level > Level.SERIES and not self.series_in_path:
            above.append(Level.SERIES)
        return (*above, self.level)


@dataclass(frozen=True)
class Selection:
    """Which attributes a response carries: always (defaults, matched) and on request."""

    always: frozenset[tuple[str, Level]]
    requested: frozenset[tuple[str, Level]]


def _selection(resource: Resource, matched: set[str], include: set[str], all_: bool) -> Selection:
    levels = resource.levels
    always = {(a.keyword, a.level) for a in ATTRIBUTES if a.default and a.level in levels}
    if resource.level > Level.STUDY:
        always.add(("StudyInstanceUID", Level.STUDY))
    if resource.level > Level.SERIES:
        always.add(("SeriesInstanceUID", Level.SERIES))
    held = {(a.keyword, a.level) for a in ATTRIBUTES if a.level <= resource.level}
    requested = {k for k in held if k[0] in include or (all_ and k[1] in levels)}
    always |= {k for k in held if k[0] in matched}

    def own_url(keys: set[tuple[str, Level]]) -> frozenset[tuple[str, Level]]:
        """One RetrieveURL only: the resource's own, never its parents' (same tag)."""
        return frozenset(k for k in keys if k[0] != "RetrieveURL" or k[1] == resource.level)

    return Selection(own_url(always), own_url(requested - always))


def _json_value(vr: str, value: Any) -> list[Any]:
    if vr in ("IS", "US"):
        return [value]
    text = str(value)
    if vr == "PN":
        return [_person_name(v) for v in text.split("\\")]
    if vr in ("UR", "UI"):
        return [text]
    return [v or None for v in text.split("\\")]


def _person_name(value: str) -> dict[str, str] | None:
    groups = value.split("=")
    named = {
        name: group
        for name, group in zip(("Alphabetic", "Ideographic", "Phonetic"), groups, strict=False)
        if group
    }
    return named or None


def _dataset(row: Row, base: str, selection: Selection) -> dict[str, Any]:
    """One result in the DICOM JSON model, its attributes in tag order."""
    out: dict[str, Any] = {}
    non_ascii = False
    for key in (*selection.always, *selection.requested):
        attribute = _BY_KEYWORD[key]
        value = attribute.value(row, base)
        if value is None or value == "":
            if attribute.if_present and key not in selection.requested:
                continue
            out[attribute.tag] = {"vr": attribute.vr}
            continue
        if isinstance(value, str) and not value.isascii():
            non_ascii = True
        out[attribute.tag] = {"vr": attribute.vr, "Value": _json_value(attribute.vr, value)}
    if non_ascii:
        out["00080005"] = {"vr": "CS", "Value": ["ISO_IR 192"]}
    return dict(sorted(out.items()))


# --- parameters ------------------------------------------------------------------------------


def _bad(reason: str) -> HTTPException:
    return HTTPException(status.HTTP_400_BAD_REQUEST, detail=reason)


def _name(raw: str) -> str:
    """A parameter name fit to quote in an error, or a neutral word."""
    return raw if _NAME.fullmatch(raw) else "a parameter"


def _keyword(raw: str) -> str | None:
    """The attribute keyword a parameter name stands for (keyword or tag, dotted for the
    RequestAttributesSequence items), None if it names no attribute of the dictionary."""
    parts = raw.split(".")
    if len(parts) > 2:
        return None
    words = []
    for index, part in enumerate(parts):
        if _TAG.fullmatch(part):
            tag = int(part, 16)
            keyword = keyword_for_tag(tag) if dictionary_has_tag(tag) else ""
        else:
            keyword = part if tag_for_keyword(part) is not None else ""
        if not keyword or (index == 0 and len(parts) == 2 and keyword not in _SEQUENCES):
            return None
        words.append(keyword)
    return ".".join(words)


_SEQUENCES = frozenset(_SEQUENCE_KEYS.values())
_LISTS = frozenset({store_search.Kind.UID, store_search.Kind.MODALITIES})  # may repeat


def _boolean(name: str, values: list[str]) -> bool:
    if len(values) != 1 or values[0].lower() not in ("true", "false"):
        raise _bad(f"{name} must be true or false, once")
    return values[0].lower() == "true"


def _integer(name: str, values: list[str], default: int) -> int:
    if not values:
        return default
    if len(values) != 1 or not re.fullmatch(r"[0-9]{1,9}", values[0]):
        raise _bad(f"{name} must be a single non-negative integer")
    return int(values[0])


@dataclass
class Parsed:
    query: Query
    include: set[str]
    include_all: bool
    warnings: list[str]


def _parse(
    request: Request, resource: Resource, study_uid: str | None, series_uid: str | None
) -> Parsed:
    """The query of a request, or 400 with the reason."""
    grouped: dict[str, list[str]] = {}
    for name, value in request.query_params.multi_items():
        grouped.setdefault(name, []).append(value)
    matches: dict[str, store_search.Matcher] = {}
    include: set[str] = set()
    include_all = False
    warnings: list[str] = []
    for name, values in grouped.items():
        if name == "includefield":
            include_all, include = _includefield(values, include)
            continue
        if name in _CONTROL:
            continue
        if name in _UNSUPPORTED:
            if _boolean(name, values):
                warnings.append(_UNSUPPORTED[name])
            continue
        keyword = _keyword(name)
        if keyword is None:
            raise _bad(f"unknown parameter: {_name(name)}")
        key = KEYS.get(keyword)
        if key is None or key.level > resource.level:
            raise _bad(f"{keyword} cannot be matched at this level")
        if keyword in matches:
            raise _bad(f"{keyword} is given twice")
        if len(values) > 1 and key.kind not in _LISTS:
            raise _bad(f"{keyword} is given more than once")
        try:
            matcher = store_search.parse_match(key, ",".join(values))
        except QueryError as exc:
            raise _bad(str(exc)) from exc
        if matcher is not None:
            matches[keyword] = matcher
        else:
            include.add(keyword)  # universal matching: returned, not matched
    limit = min(_integer("limit", grouped.get("limit", []), DEFAULT_LIMIT), MAX_LIMIT)
    if limit < 1:
        raise _bad("limit must be at least 1")
    offset = _integer("offset", grouped.get("offset", []), 0)
    fuzzy = "fuzzymatching" in grouped and _boolean("fuzzymatching", grouped["fuzzymatching"])
    try:
        query = Query(resource.level, matches, study_uid, series_uid, fuzzy, limit, offset)
    except QueryError as exc:
        raise _bad(str(exc)) from exc
    return Parsed(query, include, include_all, warnings)


def _includefield(values: list[str], include: set[str]) -> tuple[bool, set[str]]:
    """`includefield` values: keywords or tags, comma lists, or `all` (never both)."""
    items = [item.strip() for value in values for item in value.split(",")]
    if "all" in items:
        if len(items) > 1:
            raise _bad("includefield=all cannot be combined with attributes")
        return True, include
    found = set(include)
    for item in items:
        keyword = _keyword(item) if item else None
        if keyword is None:
            raise _bad(f"includefield names an unknown attribute: {_name(item)}")
        found.add(keyword)
    return False, found


def _path_uid(keyword: str, uid: str | None) -> str | None:
    if uid is None:
        return None
    try:
        return store_search.check_uid(keyword, uid)
    except QueryError as exc:
        raise _bad(f"the {keyword} in the path is not a UID") from exc


def _check_accept(request: Request) -> None:
    """The Accept rule of WADO-RS metadata (`accept.negotiate_metadata`), 406 otherwise."""
    try:
        negotiate_metadata(parse_accept(request.headers.get("accept")))
    except NotAcceptable as exc:
        raise HTTPException(
            status.HTTP_406_NOT_ACCEPTABLE,
            detail="search results are available as application/dicom+json only",
        ) from exc


# --- the routes ------------------------------------------------------------------------------


def _response(page: Page, base: str, parsed: Parsed, resource: Resource) -> Response:
    matched = set(parsed.query.matches)
    selection = _selection(resource, matched, parsed.include, parsed.include_all)
    body = [_dataset(row, base, selection) for row in page.rows]
    warnings = [f'299 {SERVICE} "{text}"' for text in parsed.warnings]
    if page.remaining:
        warnings.append(
            f'299 {SERVICE} "There are {page.remaining} additional results that can be requested"'
        )
    headers = {"Warning": ", ".join(warnings)} if warnings else {}
    return Response(orjson.dumps(body), media_type=DICOM_JSON, headers=headers)


_RESPONSES = {
    200: {"description": "the matches (an empty array when none); Warning 299 when paged"},
    400: {"description": "unknown parameter, attribute not matchable here, malformed value"},
    406: {"description": "an Accept other than application/dicom+json or application/json"},
}
_PARAMETERS = [
    {"name": "includefield", "in": "query", "required": False, "schema": {"type": "string"},
     "description": "attribute keywords or tags (comma-separated, repeatable), or `all`"},
    {"name": "limit", "in": "query", "required": False,
     "schema": {"type": "integer", "minimum": 1, "default": DEFAULT_LIMIT}},
    {"name": "offset", "in": "query", "required": False,
     "schema": {"type": "integer", "minimum": 0, "default": 0}},
    {"name": "fuzzymatching", "in": "query", "required": False, "schema": {"type": "boolean"}},
]  # fmt: skip

_RESOURCES = (  # path under /projects/{project_id}/dicom-web, route name, resource
    ("/studies", "qido_studies", Resource(Level.STUDY)),
    ("/studies/{study_uid}/series", "qido_study_series",
     Resource(Level.SERIES, study_in_path=True)),
    ("/series", "qido_series", Resource(Level.SERIES)),
    ("/studies/{study_uid}/series/{series_uid}/instances", "qido_series_instances",
     Resource(Level.INSTANCE, study_in_path=True, series_in_path=True)),
    ("/studies/{study_uid}/instances", "qido_study_instances",
     Resource(Level.INSTANCE, study_in_path=True)),
    ("/instances", "qido_instances", Resource(Level.INSTANCE)),
)  # fmt: skip


def qido_router(settings: Settings) -> APIRouter:
    """The QIDO-RS routes of the research surface."""
    router = APIRouter(tags=["dicomweb"])

    def run(
        request: Request, project_id: str, resource: Resource, study: str | None, series: str | None
    ) -> Response:
        _check_accept(request)
        parsed = _parse(
            request,
            resource,
            _path_uid("StudyInstanceUID", study),
            _path_uid("SeriesInstanceUID", series),
        )
        query = replace(parsed.query, within_studies=request.state.principal.studies)
        page = store_search.search(index_engine(settings.index_url), project_id, query)
        return _response(page, public_base(request, settings.public_url), parsed, resource)

    def endpoint(resource: Resource) -> Callable[..., Response]:
        """A handler whose signature has exactly the path's parameters (for OpenAPI)."""
        if resource.series_in_path:

            def in_series(
                request: Request, project_id: str, study_uid: str, series_uid: str
            ) -> Response:
                """QIDO-RS search (PS3.18 10.6) within one series: DICOM JSON."""
                return run(request, project_id, resource, study_uid, series_uid)

            return in_series
        if resource.study_in_path:

            def in_study(request: Request, project_id: str, study_uid: str) -> Response:
                """QIDO-RS search (PS3.18 10.6) within one study: DICOM JSON."""
                return run(request, project_id, resource, study_uid, None)

            return in_study

        def everywhere(request: Request, project_id: str) -> Response:
            """QIDO-RS search (PS3.18 10.6) across the project: DICOM JSON."""
            return run(request, project_id, resource, None, None)

        return everywhere

    for suffix, name, resource in _RESOURCES:
        router.add_api_route(
            "/projects/{project_id}/dicom-web" + suffix,
            endpoint(resource),
            methods=["GET"],
            dependencies=[Depends(READER)],
            response_class=Response,
            responses=_RESPONSES,
            openapi_extra={"parameters": _PARAMETERS},
            name=name,
        )
    return router
