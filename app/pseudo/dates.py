"""Date shifting by VR: every DA and DT moves by the patient's whole-day offset.

Intervals within a patient survive; times are left alone (PET decay, DCE timing depend on them).
A value that cannot be parsed is not guessed at: the caller empties it.
"""

from __future__ import annotations

import datetime as dt

_ONE_DAY = dt.timedelta(days=1)


class UnparsableDate(ValueError):
    """A DA/DT value that is not a date; carries no value in its message."""


def _parse_date(text: str) -> tuple[dt.date, int]:
    """Parse YYYY, YYYYMM or YYYYMMDD (or ACR-NEMA YYYY.MM.DD); return the date and precision."""
    if len(text) == 10 and text[4] == "." and text[7] == ".":
        text = text[:4] + text[5:7] + text[8:]
    if not text.isdigit() or len(text) not in (4, 6, 8):
        raise UnparsableDate("not a DICOM date")
    year = int(text[:4])
    month = int(text[4:6]) if len(text) >= 6 else 7
    day = int(text[6:8]) if len(text) == 8 else (1 if len(text) == 6 else 2)
    try:
        return dt.date(year, month, day), len(text)
    except ValueError as exc:
        raise UnparsableDate("not a DICOM date") from exc


def _format_date(date: dt.date, precision: int) -> str:
    return f"{date.year:04d}{date.month:02d}{date.day:02d}"[:precision]


def shift_date_text(text: str, days: int) -> str:
    """Shift one DA value, keeping its precision (YYYY, YYYYMM or YYYYMMDD)."""
    date, precision = _parse_date(text.strip())
    try:
        return _format_date(date + days * _ONE_DAY, precision)
    except OverflowError as exc:
        raise UnparsableDate("date out of range") from exc


def shift_da(value: str, days: int) -> str:
    """Shift a DA value (possibly multi-valued with backslashes)."""
    return "\\".join(shift_date_text(v, days) if v.strip() else v for v in value.split("\\"))


def _shift_one_dt(value: str, days: int) -> str:
    value = value.strip()
    digits = len(value) - len(value.lstrip("0123456789"))
    cut = min(digits, 8)  # YYYY, YYYYMM or YYYYMMDD; time and UTC offset follow untouched
    return shift_date_text(value[:cut], days) + value[cut:]


def shift_dt(value: str, days: int) -> str:
    """Shift the date part of DT values; the time and UTC offset parts are kept as they are."""
    return "\\".join(_shift_one_dt(v, days) if v.strip() else v for v in value.split("\\"))


def year_of(value: str) -> str:
    """Truncate a DA value to 1 January of its year (the 'year' birth-date mode)."""
    date, _ = _parse_date(value.strip())
    return f"{date.year:04d}0101"
