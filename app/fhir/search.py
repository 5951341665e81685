"""FHIR search on the project's index: the supported parameters (one table, which the
CapabilityStatement publishes) and the SQL they become.

Every statement is bound and filtered by the project. Parameters repeated are ANDed, comma
alternatives within one are ORed (R4 search.html 3.1.1.6). Modifiers and chains are not
supported: a parameter name carrying one is refused like an unknown one.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from sqlalchemy import Engine, and_, exists, false, or_
from sqlalchemy.sql.elements import ColumnElement
from sqlmodel import Session, func, select

from app.fhir.body_site import SNOMED, body_site
from app.fhir.common import (
    DateParam,
    SearchError,
    check_known,
    is_fhir_id,
    parse_count,
    parse_date,
    parse_offset,
)
from app.fhir.resources import DCM, ENDPOINT_ID, patient_id
from app.store.models import Instance, Series, Study

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


@dataclass(frozen=True)
class Param:
    name: str
    type: str  # FHIR search parameter type
    documentation: str
    definition: str = ""

    def __post_init__(self) -> None:
        if not self.definition:
            base = "http://hl7.org/fhir/SearchParameter"
            resource = "Resource" if self.name.startswith("_") else "ImagingStudy"
            name = self.name.lstrip("_")
            object.__setattr__(self, "definition", f"{base}/{resource}-{name}")


IMAGING_STUDY_PARAMS = (
    Param("_id", "token", "The StudyInstanceUID (pseudonymized): the resource id"),
    Param("_lastUpdated", "date", "When the study last changed in the index"),
    Param("identifier", "token", "urn:dicom:uid|urn:oid:<StudyInstanceUID>"),
    Param("patient", "reference", "Patient/<pseudonym>"),
    Param("subject", "reference", "Patient/<pseudonym>"),
    Param("started", "date", "The (shifted) study date, day precision"),
    Param("modality", "token", f"{DCM}|<code> of any series"),
    Param("series", "token", "A SeriesInstanceUID of the study"),
    Param("bodysite", "token", f"{SNOMED}|<code> of any series (from BodyPartExamined)"),
    Param("endpoint", "reference", f"Endpoint/{ENDPOINT_ID}"),
)
RESULT_PARAMS = (
    "_count", "_offset", "_include", "_revinclude", "_summary", "_elements", "_format", "_total",
)  # fmt: skip
INCLUDES = ("ImagingStudy:subject", "ImagingStudy:patient", "ImagingStudy:endpoint")
REVINCLUDES = ("Provenance:target",)
SUMMARIES = ("false", "true", "count")


@dataclass
class StudySearch:
    """A parsed ImagingStudy search."""

    conditions: list[ColumnElement[bool]] = field(default_factory=list)
    count: int = 50
    offset: int = 0
    includes: set[str] = field(default_factory=set)
    revincludes: set[str] = field(default_factory=set)
    summary: str = "false"
    elements: list[str] | None = None


def _alternatives(name: str, value: str) -> list[str]:
    values = [v.strip() for v in value.split(",")]
    if not value or any(not v for v in values):
        raise SearchError(f"{name}: empty value")
    if len(values) > 100:
        raise SearchError(f"{name}: at most 100 alternatives")
    return values


def token_code(name: str, value: str, system: str | None) -> str:
    """The code of a `[system|]code` token; a system other than `system` is refused."""
    given, bar, code = value.rpartition("|")
    if bar and given and system is not None and given != system:
        raise SearchError(f"{name}: only the system {system} is supported")
    if not code:
        raise SearchError(f"{name}: empty code")
    return code


def uid_value(name: str, value: str) -> str:
    uid = value.removeprefix("urn:oid:")
    if len(uid) > 64 or not _UID.match(uid):
        raise SearchError(f"{name}: expected a UID")
    return uid


def reference_id(name: str, value: str, kind: str) -> str:
    ident = value.removeprefix(f"{kind}/")
    if not is_fhir_id(ident):
        raise SearchError(f"{name}: expected {kind}/<id>")
    return ident


def _day(moment: dt.datetime, up: bool) -> str:
    """The first day (YYYYMMDD) at or after `moment` (up) or the day holding it (down)."""
    day = moment.date()
    if up and moment != dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC):
        day += dt.timedelta(days=1)
    return day.strftime("%Y%m%d")


def started_condition(param: DateParam) -> ColumnElement[bool]:
    """A date search on StudyDate, a day-precision target [day, day + 1)."""
    column = Study.study_date
    known = and_(column.is_not(None), func.length(column) >= 8)
    low_up, low_down = _day(param.low, True), _day(param.low, False)
    high_up, high_down = _day(param.high, True), _day(param.high, False)
    day = func.substr(column, 1, 8)
    within = and_(day >= low_up, day < high_down)
    rules: dict[str, ColumnElement[bool]] = {
        "eq": within,
        "ne": ~within,
        "ge": day >= low_down,
        "le": day < high_up,
        "gt": day >= high_down,
        "lt": day < low_up,
        "sa": day >= high_up,
        "eb": day < low_down,
    }
    return and_(known, rules[param.prefix])


def parse_study_search(
    engine: Engine, project_id: str, items: Sequence[tuple[str, str]]
) -> StudySearch:
    check_known(items, [p.name for p in IMAGING_STUDY_PARAMS] + list(RESULT_PARAMS))
    search = StudySearch()
    grouped: dict[str, list[str]] = {}
    for name, value in items:
        grouped.setdefault(name, []).append(value)
    search.count = parse_count(grouped.get("_count", []))
    search.offset = parse_offset(grouped.get("_offset", []))
    for value in grouped.get("_include", []):
        if value not in INCLUDES:
            raise SearchError("_include: supported are " + ", ".join(INCLUDES))
        search.includes.add("endpoint" if value.endswith("endpoint") else "subject")
    for value in grouped.get("_revinclude", []):
        if value not in REVINCLUDES and value != "Provenance:target:ImagingStudy":
            raise SearchError("_revinclude: supported is Provenance:target")
        search.revincludes.add("Provenance:target")
    summaries = grouped.get("_summary", [])
    if summaries:
        if len(summaries) > 1 or summaries[0] not in SUMMARIES:
            raise SearchError("_summary: supported are " + ", ".join(SUMMARIES))
        search.summary = summaries[0]
    for value in grouped.get("_elements", []):
        names = _alternatives("_elements", value)
        if not all(re.fullmatch(r"[A-Za-z]{1,64}", n) for n in names):
            raise SearchError("_elements: expected element names")
        search.elements = [*(search.elements or []), *names]
    for value in grouped.get("_format", []):
        if value not in ("json", "application/json", "application/fhir+json"):
            raise SearchError("_format: only JSON is supported")
    for value in grouped.get("_total", []):  # the total is always counted exactly
        if value not in ("none", "estimate", "accurate"):
            raise SearchError("_total: none, estimate or accurate")
    for name, values in grouped.items():
        for value in values:
            condition = _condition(engine, project_id, name, value)
            if condition is not None:
                search.conditions.append(condition)
    return search


def _condition(
    engine: Engine, project_id: str, name: str, value: str
) -> ColumnElement[bool] | None:
    if name in RESULT_PARAMS:
        return None
    if name in ("started", "_lastUpdated"):
        alternatives = [parse_date(name, v) for v in _alternatives(name, value)]
        if name == "started":
            return or_(*(started_condition(p) for p in alternatives))
        return or_(*(_point(Study.updated_at, p) for p in alternatives))
    values = _alternatives(name, value)
    if name == "_id":
        return Study.study_uid.in_([uid_value(name, v) for v in values])
    if name == "identifier":
        return Study.study_uid.in_(
            [uid_value(name, token_code(name, v, "urn:dicom:uid")) for v in values]
        )
    if name in ("patient", "subject"):
        ids = [reference_id(name, v, "Patient") for v in values]
        return Study.patient_id.in_(_pseudonyms(engine, project_id, ids))
    if name == "endpoint":
        ids = [reference_id(name, v, "Endpoint") for v in values]
        return None if ENDPOINT_ID in ids else false()
    if name == "modality":
        codes = [token_code(name, v, DCM) for v in values]
        return _any_series(project_id, Series.modality.in_(codes))
    if name == "series":
        return _any_series(project_id, Series.series_uid.in_([uid_value(name, v) for v in values]))
    if name == "bodysite":
        codes = {token_code(name, v, SNOMED) for v in values}
        parts = _body_parts(engine, project_id, codes)
        return _any_series(project_id, Series.body_part_examined.in_(parts))
    raise SearchError(f"{name}: not supported")  # pragma: no cover (check_known comes first)


def _point(column, param: DateParam) -> ColumnElement[bool]:
    return and_(*(compare(column, moment) for compare, moment in param.point_bounds()))


def _any_series(project_id: str, condition: ColumnElement[bool]) -> ColumnElement[bool]:
    return exists().where(
        Series.project_id == project_id, Series.study_uid == Study.study_uid, condition
    )


def _body_parts(engine: Engine, project_id: str, codes: set[str]) -> list[str]:
    """The BodyPartExamined values, as stored, whose SNOMED CT coding is one of `codes`
    (devices spell the Defined Terms loosely: the mapping normalizes, so must the search)."""
    with Session(engine) as session:
        query = (
            select(Series.body_part_examined)
            .where(Series.project_id == project_id, Series.body_part_examined.is_not(None))
            .distinct()
        )
        values = list(session.exec(query))
    return [v for v in values if (site := body_site(v)) is not None and site["code"] in codes]


def _pseudonyms(engine: Engine, project_id: str, ids: list[str]) -> list[str]:
    """Patient ids back to pseudonyms: ours are the pseudonym itself; a digest id (for an
    odd pseudonym) is found among the project's pseudonyms."""
    found = [i for i in ids if not i.startswith("p-")]
    digests = {i for i in ids if i.startswith("p-")}
    if digests:
        with Session(engine) as session:
            query = select(Study.patient_id).where(Study.project_id == project_id).distinct()
            found += [p for p in session.exec(query) if p and patient_id(p) in digests]
    return found


@dataclass
class StudyPage:
    studies: list[Study]
    series: dict[str, list[Series]]
    instances: dict[str, list[Instance]]
    total: int


def run_study_search(
    engine: Engine,
    project_id: str,
    search: StudySearch,
    within_studies: frozenset[str] | None,
    with_instances: bool = True,
) -> StudyPage:
    conditions = [Study.project_id == project_id, *search.conditions]
    if within_studies is not None:
        conditions.append(Study.study_uid.in_(sorted(within_studies)))
    with Session(engine) as session:
        total = session.exec(select(func.count()).select_from(Study).where(*conditions)).one()
        if search.summary == "count" or search.count == 0:
            return StudyPage([], {}, {}, total)
        query = (
            select(Study)
            .where(*conditions)
            .order_by(Study.study_date.desc().nulls_last(), Study.study_uid)
            .offset(search.offset)
            .limit(search.count)
        )
        studies = list(session.exec(query))
    series, instances = load_children(
        engine, project_id, [s.study_uid for s in studies], with_instances
    )
    return StudyPage(studies, series, instances, total)


def load_children(
    engine: Engine, project_id: str, study_uids: list[str], with_instances: bool = True
) -> tuple[dict[str, list[Series]], dict[str, list[Instance]]]:
    """The series and instances of these studies, by study, in a stable order."""
    series: dict[str, list[Series]] = {}
    instances: dict[str, list[Instance]] = {}
    if not study_uids:
        return series, instances
    with Session(engine) as session:
        rows = session.exec(
            select(Series)
            .where(Series.project_id == project_id, Series.study_uid.in_(study_uids))
            .order_by(Series.series_number.asc().nulls_last(), Series.series_uid)
        )
        for row in rows:
            series.setdefault(row.study_uid, []).append(row)
        if with_instances:
            rows = session.exec(
                select(Instance)
                .where(Instance.project_id == project_id, Instance.study_uid.in_(study_uids))
                .order_by(
                    Instance.series_uid, Instance.instance_number.asc().nulls_last(),
                    Instance.sop_uid,
                )
            )  # fmt: skip
            for row in rows:
                instances.setdefault(row.study_uid, []).append(row)
    return series, instances


PATIENT_PARAMS = (
    Param("_id", "token", "The pseudonym (our Patient ids are the pseudonyms)"),
    Param("identifier", "token", "<project's pseudonym system>|<pseudonym>",
          "http://hl7.org/fhir/SearchParameter/Patient-identifier"),
)  # fmt: skip
ENDPOINT_PARAMS = (Param("_id", "token", f"{ENDPOINT_ID}: the project's DICOMweb service"),)
PROVENANCE_PARAMS = (
    Param("_id", "token", "The ingest batch's id"),
    Param("target", "reference", "ImagingStudy/<StudyInstanceUID>",
          "http://hl7.org/fhir/SearchParameter/Provenance-target"),
)  # fmt: skip
SIMPLE_RESULT_PARAMS = ("_count", "_offset", "_format")


def parse_simple(
    items: Sequence[tuple[str, str]], params: Sequence[Param]
) -> tuple[dict[str, list[str]], int, int]:
    """The searches of the small resources: alternatives per parameter (ANDed across
    repetitions), `_count`, `_offset`."""
    check_known(items, [p.name for p in params] + list(SIMPLE_RESULT_PARAMS))
    grouped: dict[str, list[str]] = {}
    for name, value in items:
        grouped.setdefault(name, []).append(value)
    for value in grouped.get("_format", []):
        if value not in ("json", "application/json", "application/fhir+json"):
            raise SearchError("_format: only JSON is supported")
    count = parse_count(grouped.pop("_count", []))
    offset = parse_offset(grouped.pop("_offset", []))
    grouped.pop("_format", None)
    return grouped, count, offset


def matches_all(
    name: str, groups: Sequence[str], accept: Callable[[str], bool], normalize: Callable[[str], str]
) -> bool:
    """Every repetition of `name` has an alternative that `accept`s (after `normalize`)."""
    return all(
        any(accept(normalize(value)) for value in _alternatives(name, group)) for group in groups
    )
