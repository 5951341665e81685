"""DICOM Body Part Examined → SNOMED CT Coding (PS3.16 Annex L), for `series.bodySite` and the
catalogue's body sites.

The table is data (`mappings/fhir/body-part-snomed.json`, its source and edition recorded in
the file), not code, so a new edition of Annex L is a data change. Only listed Defined Terms
get a coding: BodyPartExamined is a free CS value in practice, and an unlisted one (a local
abbreviation, or worse, something typed by an operator) is never echoed as a code.
"""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path

MAPPING_FILE = Path(__file__).resolve().parents[2] / "mappings" / "fhir" / "body-part-snomed.json"
SNOMED = "http://snomed.info/sct"
_DROPPED = re.compile(r"[\s_-]+")


@cache
def _terms() -> dict[str, dict[str, str]]:
    return json.loads(MAPPING_FILE.read_text(encoding="utf-8"))["terms"]


def normalize(body_part_examined: str) -> str:
    """The lookup key: trimmed, upper-cased, without spaces, '-' or '_' ("Whole Body" →
    "WHOLEBODY"), as devices spell the Defined Terms loosely."""
    return _DROPPED.sub("", body_part_examined.strip().upper())


def body_site(body_part_examined: str | None) -> dict | None:
    """The FHIR Coding (`system`, `code`, `display`) of a BodyPartExamined value, or None when
    the value is empty or not a Defined Term of Annex L. A fresh dict each call."""
    if not body_part_examined:
        return None
    term = _terms().get(normalize(body_part_examined))
    if term is None:
        return None
    return {"system": SNOMED, "code": term["code"], "display": term["display"]}


def known_terms() -> list[str]:
    """The Defined Terms the table maps, sorted."""
    return sorted(_terms())
