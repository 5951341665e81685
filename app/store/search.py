"""QIDO-RS matching on the index (PS3.18 10.6, PS3.4 C.2.2.2): parse, then query one project.

The router (app.dicomweb.qido) turns HTTP parameters into a `Query` with `parse_match` and
`Query(...)`; `search` runs it. Every statement filters by the project (decision 1) on every
table it reads, and every value reaches the database as a bound parameter: nothing here
formats a value into SQL text.

Matching rules (PS3.4 C.2.2.2), and where this layer makes a choice:

- Universal: an empty value (or a lone `*`) adds no condition.
- UID list: comma (PS3.18) or backslash separated; each UID digits and dots, at most 64
  characters. UIDs take no wildcard.
- Single value / wildcard: `*` and `?` become LIKE `%` and `_`, with `%`, `_` and the escape
  character `\\` escaped. PN attributes match case-insensitively (PostgreSQL ILIKE; on SQLite
  ASCII only, as its `lower` and LIKE fold ASCII only); other strings match exactly, case
  included (SQLite's LIKE ignores case, so SQLite uses GLOB there). A PN value matches the
  whole stored name or its alphabetic group alone (`Doe^John` matches `Doe^John=...`).
- Fuzzy (`fuzzymatching=true`, PN only): every word of the query (split on `^`, spaces and
  `,`) must begin a component of the stored name, in any order, case-insensitively.
- DA: `YYYYMMDD`, `a-b`, `-b`, `a-` (inclusive). TM: `HH[MM[SS[.F{1,6}]]]` with the same range
  forms; a time bound covers its precision (`-1800` includes 18:00:59.9). Stored values are
  compared as strings, which orders well-formed DA/TM values correctly (bounds are built so
  that a stored value of any precision compares right; legacy `HH:MM:SS` values do not).
- DA + TM of one pair (StudyDate/StudyTime, PPS start date/time) both given as ranges of the
  same form match as one date-time range (PS3.4 C.2.2.2.5, "combined datetime matching"):
  `StudyDate=20240101-20240102&StudyTime=2200-0600` is 1 January 22:00 to 2 January 06:00.
  Otherwise each matches on its own. No indexed attribute is a DT, so none is matched here.
- ModalitiesInStudy: one or more values (comma or backslash), each maybe a wildcard, matched
  through the series rows (`EXISTS`), a study matching when any series does.
- Integers (SeriesNumber, InstanceNumber, Rows, ...): single value only.
- RequestAttributesSequence > ScheduledProcedureStepID / RequestedProcedureID (required series
  keys): PS3.15 removes both in every profile (X, no option keeps them), so nothing on the
  research side holds them; a non-universal value matches nothing, as C-FIND does for an
  absent attribute. They are not indexed.
- A stored value with several values (`A\\B`) is matched as one string, except
  ModalitiesInStudy; multiplevaluematching is therefore not supported.
"""

from __future__ import annotations

import datetime as dt
import enum
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy import ColumnElement, Engine, and_, exists, false, func, or_, select, true
from sqlmodel import Session

from app.store.models import Instance, Series, Study

MAX_UID_LENGTH = 64
MAX_UIDS = 500  # per UID list: far below the databases' bound-parameter limits
MAX_VALUE_LENGTH = 256  # a query value longer than any attribute we match on: refused
_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")
_DATE = re.compile(r"[0-9]{8}")
_TIME = re.compile(r"([0-9]{2})(([0-9]{2})(([0-9]{2})(\.[0-9]{1,6})?)?)?")
_INTEGER = re.compile(r"[+-]?[0-9]{1,10}")
_TIME_LENGTH = 13  # HHMMSS.FFFFFF
_LIKE_ESCAPE = "\\"
_FUZZY_SPLIT = re.compile(r"[\^ ,]+")


class QueryError(ValueError):
    """A malformed query; the message names the attribute, never the value."""


class Level(enum.IntEnum):
    STUDY = 1
    SERIES = 2
    INSTANCE = 3


class Kind(enum.Enum):
    UID = "UI"
    TEXT = "text"
    PN = "PN"
    DATE = "DA"
    TIME = "TM"
    INTEGER = "integer"
    MODALITIES = "modalities"
    ABSENT = "absent"


@dataclass(frozen=True)
class Key:
    """A matching key: its level, how its values are matched, and the column holding it."""

    keyword: str
    level: Level
    kind: Kind
    column: str | None  # attribute of the level's table; None for ABSENT and MODALITIES


KEYS: dict[str, Key] = {
    k.keyword: k
    for k in (
        # Study (Table 10.6.1-5), plus what else the study row holds.
        Key("StudyDate", Level.STUDY, Kind.DATE, "study_date"),
        Key("StudyTime", Level.STUDY, Kind.TIME, "study_time"),
        Key("AccessionNumber", Level.STUDY, Kind.TEXT, "accession_number"),
        Key("ModalitiesInStudy", Level.STUDY, Kind.MODALITIES, None),
        Key("ReferringPhysicianName", Level.STUDY, Kind.PN, "referring_physician_name"),
        Key("PatientName", Level.STUDY, Kind.PN, "patient_name"),
        Key("PatientID", Level.STUDY, Kind.TEXT, "patient_id"),
        Key("StudyInstanceUID", Level.STUDY, Kind.UID, "study_uid"),
        Key("StudyID", Level.STUDY, Kind.TEXT, "study_id"),
        Key("PatientBirthDate", Level.STUDY, Kind.DATE, "patient_birth_date"),
        Key("PatientSex", Level.STUDY, Kind.TEXT, "patient_sex"),
        Key("StudyDescription", Level.STUDY, Kind.TEXT, "study_description"),
        # Series
        Key("Modality", Level.SERIES, Kind.TEXT, "modality"),
        Key("SeriesInstanceUID", Level.SERIES, Kind.UID, "series_uid"),
        Key("SeriesNumber", Level.SERIES, Kind.INTEGER, "series_number"),
        Key("PerformedProcedureStepStartDate", Level.SERIES, Kind.DATE, "pps_start_date"),
        Key("PerformedProcedureStepStartTime", Level.SERIES, Kind.TIME, "pps_start_time"),
        Key("SeriesDescription", Level.SERIES, Kind.TEXT, "series_description"),
        Key("BodyPartExamined", Level.SERIES, Kind.TEXT, "body_part_examined"),
        Key("RequestAttributesSequence.ScheduledProcedureStepID", Level.SERIES, Kind.ABSENT, None),
        Key("RequestAttributesSequence.RequestedProcedureID", Level.SERIES, Kind.ABSENT, None),
        # Instance
        Key("SOPClassUID", Level.INSTANCE, Kind.UID, "sop_class_uid"),
        Key("SOPInstanceUID", Level.INSTANCE, Kind.UID, "sop_uid"),
        Key("InstanceNumber", Level.INSTANCE, Kind.INTEGER, "instance_number"),
        Key("Rows", Level.INSTANCE, Kind.INTEGER, "rows"),
        Key("Columns", Level.INSTANCE, Kind.INTEGER, "columns"),
        Key("BitsAllocated", Level.INSTANCE, Kind.INTEGER, "bits_allocated"),
        Key("NumberOfFrames", Level.INSTANCE, Kind.INTEGER, "number_of_frames"),
    )
}
_TABLES = {Level.STUDY: Study, Level.SERIES: Series, Level.INSTANCE: Instance}
# Date/time pairs matched as one date-time range when both are ranges of the same form.
DATE_TIME_PAIRS = (
    ("StudyDate", "StudyTime"),
    ("PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime"),
)


# --- matchers: what one parameter asks -----------------------------------------------------


@dataclass(frozen=True)
class Uids:
    values: tuple[str, ...]


@dataclass(frozen=True)
class Text:
    value: str
    wildcard: bool


@dataclass(frozen=True)
class AnyOf:
    """Several single or wildcard values, any of which may match (ModalitiesInStudy)."""

    values: tuple[Text, ...]


@dataclass(frozen=True)
class Range:
    """A DA or TM value or range; `low`/`high` as given (None: open), `form` "a-b", "-b",
    "a-" or "a" (a single value)."""

    low: str | None
    high: str | None
    form: str


@dataclass(frozen=True)
class Integer:
    value: int


@dataclass(frozen=True)
class Nothing:
    """A non-universal value for an attribute the research side never holds."""


Matcher = Uids | Text | AnyOf | Range | Integer | Nothing


_CONTROL = re.compile(r"[\x00-\x1a\x1c-\x1f\x7f]")


def parse_match(key: Key, raw: str) -> Matcher | None:
    """The matcher for `raw` (already URL-decoded), None for universal matching."""
    value = raw.strip()
    if value in ("", "*"):
        return None
    if len(value) > MAX_VALUE_LENGTH and key.kind is not Kind.UID:
        raise QueryError(f"the value of {key.keyword} is too long")
    if _CONTROL.search(value):
        # No DICOM string holds them (ESC aside, for character sets); PostgreSQL refuses NUL
        # in a parameter outright, so this must be a 400 here rather than an error there.
        raise QueryError(f"the value of {key.keyword} holds control characters")
    if key.kind is Kind.UID:
        return Uids(parse_uid_list(key.keyword, value))
    if key.kind in (Kind.TEXT, Kind.PN):
        return _text(value)
    if key.kind is Kind.MODALITIES:
        parts = [p.strip() for p in re.split(r"[,\\]", value)]
        if any(not p for p in parts):
            raise QueryError(f"the value of {key.keyword} has an empty item")
        return AnyOf(tuple(_text(p) for p in parts))
    if key.kind is Kind.DATE:
        return _range(key.keyword, value, _valid_date, "a date (YYYYMMDD)")
    if key.kind is Kind.TIME:
        return _range(key.keyword, value, _valid_time, "a time (HH, HHMM, HHMMSS[.FFFFFF])")
    if key.kind is Kind.INTEGER:
        if not _INTEGER.fullmatch(value):
            raise QueryError(f"the value of {key.keyword} is not an integer")
        number = int(value)
        if not -(2**31) <= number < 2**31:
            raise QueryError(f"the value of {key.keyword} is out of range")
        return Integer(number)
    return Nothing()


def parse_uid_list(keyword: str, value: str) -> tuple[str, ...]:
    """UIDs separated by commas (or backslashes), each checked against the UID syntax."""
    uids = tuple(u.strip() for u in re.split(r"[,\\]", value))
    if len(uids) > MAX_UIDS:
        raise QueryError(f"{keyword} lists more than {MAX_UIDS} UIDs")
    for uid in uids:
        check_uid(keyword, uid)
    return uids


def check_uid(keyword: str, uid: str) -> str:
    if not uid or len(uid) > MAX_UID_LENGTH or not _UID.fullmatch(uid):
        raise QueryError(f"the value of {keyword} is not a UID (digits and dots, 64 at most)")
    return uid


def _text(value: str) -> Text:
    return Text(value, wildcard="*" in value or "?" in value)


def _valid_date(value: str) -> bool:
    if not _DATE.fullmatch(value):
        return False
    try:
        dt.date(int(value[:4]), int(value[4:6]), int(value[6:]))
    except ValueError:
        return False
    return True


def _valid_time(value: str) -> bool:
    found = _TIME.fullmatch(value)
    if not found:
        return False
    hours, minutes, seconds = found.group(1), found.group(3), found.group(5)
    return int(hours) < 24 and int(minutes or 0) < 60 and int(seconds or 0) <= 60


def _range(keyword: str, value: str, valid, what: str) -> Range:
    if value.count("-") > 1:
        raise QueryError(f"the value of {keyword} is not {what} or a range of them")
    low, dash, high = (part.strip() for part in value.partition("-"))
    if not dash:
        low_, high_, form = low, low, "a"
    elif low and high:
        low_, high_, form = low, high, "a-b"
    elif high:
        low_, high_, form = None, high, "-b"
    elif low:
        low_, high_, form = low, None, "a-"
    else:
        raise QueryError(f"the value of {keyword} is an empty range")
    for bound in (low_, high_):
        if bound is not None and not valid(bound):
            raise QueryError(f"the value of {keyword} is not {what} or a range of them")
    if form == "a-b" and valid is _valid_date and low_ > high_:
        raise QueryError(f"the range of {keyword} ends before it starts")
    return Range(low_, high_, form)


# --- the query -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Query:
    """A validated search: the level returned, the matchers by keyword, the path's UIDs."""

    level: Level
    matches: dict[str, Matcher] = field(default_factory=dict)
    study_uid: str | None = None
    series_uid: str | None = None
    fuzzy: bool = False
    limit: int = 100
    offset: int = 0
    within_studies: frozenset[str] | None = None  # a compute grant's studies: nothing else

    def __post_init__(self) -> None:
        for keyword in self.matches:
            key = KEYS.get(keyword)
            if key is None or key.level > self.level:
                raise QueryError(f"{keyword} cannot be matched at this level")
        combined = {k for pair in _combined_pairs(self.matches) for k in pair}
        for keyword, matcher in self.matches.items():
            if (
                isinstance(matcher, Range)
                and KEYS[keyword].kind is Kind.TIME
                and matcher.form == "a-b"
                and keyword not in combined
                and _time_low(matcher.low) > _time_high(matcher.high)  # type: ignore[arg-type]
            ):
                raise QueryError(
                    f"the range of {keyword} ends before it starts (a time range cannot "
                    "cross midnight unless a date range of the same form goes with it)"
                )
        if self.limit < 1 or self.offset < 0:
            raise QueryError("limit must be positive and offset not negative")


@dataclass(frozen=True)
class Row:
    """One result: the study always, the series and instance at their levels."""

    study: Study
    series: Series | None = None
    instance: Instance | None = None


@dataclass(frozen=True)
class Page:
    rows: list[Row]
    remaining: int  # matches after this page (0 when the page is the last)


def search(engine: Engine, project_id: str, query: Query) -> Page:
    """The page of matches of `query` in the project, in a stable order."""
    statement = _statement(engine.dialect.name, project_id, query)
    with Session(engine, expire_on_commit=False) as session:
        found = session.exec(statement.offset(query.offset).limit(query.limit)).all()
        remaining = 0
        if len(found) == query.limit:  # maybe more: count them (only then)
            total = session.execute(
                select(func.count()).select_from(statement.order_by(None).subquery())
            ).scalar_one()
            remaining = max(0, total - query.offset - len(found))
    return Page([_row(query.level, item) for item in found], remaining)


def _row(level: Level, item) -> Row:
    if level is Level.STUDY:
        return Row(item if isinstance(item, Study) else item[0])
    if level is Level.SERIES:
        series, study = item
        return Row(study, series)
    instance, series, study = item
    return Row(study, series, instance)


def _statement(dialect: str, project_id: str, query: Query):
    """SELECT … with every table filtered by the project, and a unique, stable order."""
    same_study = (Study.project_id == project_id) & (Study.study_uid == Series.study_uid)
    if query.level is Level.STUDY:
        statement = select(Study).where(Study.project_id == project_id)
        order = (Study.study_date.desc().nulls_last(), Study.study_time.desc().nulls_last())
        order += (Study.study_uid,)
    elif query.level is Level.SERIES:
        statement = (
            select(Series, Study).join(Study, same_study).where(Series.project_id == project_id)
        )
        order = (Series.study_uid, Series.series_number.asc().nulls_last(), Series.series_uid)
    else:
        statement = (
            select(Instance, Series, Study)
            .join(
                Series,
                (Series.project_id == project_id) & (Series.series_uid == Instance.series_uid),
            )
            .join(Study, same_study)
            .where(Instance.project_id == project_id)
        )
        order = (Instance.study_uid, Instance.series_uid)
        order += (Instance.instance_number.asc().nulls_last(), Instance.sop_uid)
    conditions = list(_path_conditions(query))
    conditions += _conditions(dialect, project_id, query)
    return statement.where(*conditions).order_by(*order)


def _path_conditions(query: Query) -> Sequence[ColumnElement[bool]]:
    conditions = []
    if query.study_uid is not None:
        conditions.append(Study.study_uid == query.study_uid)
    if query.series_uid is not None:
        conditions.append(Series.series_uid == query.series_uid)
    if query.within_studies is not None:
        conditions.append(Study.study_uid.in_(sorted(query.within_studies)))
    return conditions


def _conditions(dialect: str, project_id: str, query: Query) -> list[ColumnElement[bool]]:
    matches = dict(query.matches)
    conditions: list[ColumnElement[bool]] = []
    for date_key, time_key in _combined_pairs(matches):
        date, time = matches.pop(date_key), matches.pop(time_key)
        assert isinstance(date, Range) and isinstance(time, Range)
        conditions.append(_date_time(_column(KEYS[date_key]), _column(KEYS[time_key]), date, time))
    for keyword, matcher in matches.items():
        conditions.append(_condition(dialect, project_id, query.fuzzy, KEYS[keyword], matcher))
    return conditions


def _combined_pairs(matches: dict[str, Matcher]) -> list[tuple[str, str]]:
    """The (date, time) keyword pairs both given as ranges of one form: one date-time range."""
    pairs = []
    for date_key, time_key in DATE_TIME_PAIRS:
        date, time = matches.get(date_key), matches.get(time_key)
        if isinstance(date, Range) and isinstance(time, Range) and date.form == time.form != "a":
            pairs.append((date_key, time_key))
    return pairs


def _column(key: Key):
    return getattr(_TABLES[key.level], key.column)  # type: ignore[arg-type]


def _condition(
    dialect: str, project_id: str, fuzzy: bool, key: Key, matcher: Matcher
) -> ColumnElement[bool]:
    if isinstance(matcher, Nothing):
        return false()
    if key.kind is Kind.MODALITIES:
        assert isinstance(matcher, AnyOf)
        modality = Series.__table__.alias("modality_series")  # type: ignore[attr-defined]
        return exists().where(
            modality.c.project_id == project_id,
            modality.c.study_uid == Study.study_uid,
            or_(*(_string(dialect, modality.c.modality, v, pn=False) for v in matcher.values)),
        )
    column = _column(key)
    if isinstance(matcher, Uids):
        return (
            column.in_(matcher.values) if len(matcher.values) > 1 else column == matcher.values[0]
        )
    if isinstance(matcher, Integer):
        return column == matcher.value
    if isinstance(matcher, Range):
        return _range_condition(key.kind, column, matcher)
    assert isinstance(matcher, Text)
    if key.kind is Kind.PN and fuzzy:
        return _fuzzy_name(column, matcher.value)
    return _string(dialect, column, matcher, pn=key.kind is Kind.PN)


# --- strings ---------------------------------------------------------------------------------


def like_pattern(value: str) -> str:
    """`*`/`?` wildcards as a LIKE pattern (escape `\\`), LIKE's own `%`/`_` escaped."""
    escaped = []
    for char in value:
        if char in ("\\", "%", "_"):
            escaped.append(_LIKE_ESCAPE + char)
        elif char == "*":
            escaped.append("%")
        elif char == "?":
            escaped.append("_")
        else:
            escaped.append(char)
    return "".join(escaped)


def glob_pattern(value: str) -> str:
    """`*`/`?` wildcards as an SQLite GLOB pattern (case-sensitive); `[` taken literally."""
    return "".join("[[]" if char == "[" else char for char in value)


def _string(dialect: str, column, matcher: Text, *, pn: bool) -> ColumnElement[bool]:
    if pn:
        # Case-insensitive; the alphabetic group alone matches too (`Doe^John=…`).
        pattern = like_pattern(matcher.value)
        return or_(
            column.ilike(pattern, escape=_LIKE_ESCAPE),
            column.ilike(pattern + "=%", escape=_LIKE_ESCAPE),
        )
    if not matcher.wildcard:
        return column == matcher.value
    if dialect == "sqlite":
        return column.op("GLOB")(glob_pattern(matcher.value))
    return column.like(like_pattern(matcher.value), escape=_LIKE_ESCAPE)


def _fuzzy_name(column, value: str) -> ColumnElement[bool]:
    """Each word of `value` begins some component of the name, whatever the case."""
    words = [w for w in _FUZZY_SPLIT.split(value.replace("*", "").replace("?", "")) if w]
    if not words:
        return true()
    conditions = []
    for word in words:
        start = like_pattern(word) + "%"
        conditions.append(
            or_(
                *(
                    column.ilike(prefix + start, escape=_LIKE_ESCAPE)
                    for prefix in ("", "%^", "% ", "%=", "%\\\\")
                )
            )
        )
    return and_(*conditions)


# --- dates and times -------------------------------------------------------------------------


def _time_low(value: str) -> str:
    """A lower time bound as a string every stored time at or after it compares >= to:
    trailing zeros dropped, so `103000` becomes `103` and stored `1030` still matches."""
    return value.rstrip("0").rstrip(".")


def _time_high(value: str) -> str:
    """An upper bound covering the value's precision: `1800` → `1800999999999`."""
    return value + "9" * (_TIME_LENGTH - len(value))


def _range_condition(kind: Kind, column, matcher: Range) -> ColumnElement[bool]:
    if kind is Kind.DATE:
        if matcher.form == "a":
            return column == matcher.low
        low, high = matcher.low, matcher.high
    else:
        low = _time_low(matcher.low) if matcher.low is not None else None
        high = _time_high(matcher.high) if matcher.high is not None else None
    conditions = []
    if low is not None:
        conditions.append(column >= low)
    if high is not None:
        conditions.append(column <= high)
    return and_(*conditions)


def _date_time(date_column, time_column, date: Range, time: Range) -> ColumnElement[bool]:
    """A DA range and a TM range of the same form as one date-time range."""
    conditions = []
    if date.low is not None and time.low is not None:
        conditions.append(
            or_(
                date_column > date.low,
                and_(date_column == date.low, time_column >= _time_low(time.low)),
            )
        )
    if date.high is not None and time.high is not None:
        conditions.append(
            or_(
                date_column < date.high,
                and_(date_column == date.high, time_column <= _time_high(time.high)),
            )
        )
    return and_(*conditions)
