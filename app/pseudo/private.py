"""Private attributes: kept only when a (group, creator, element) is known safe or allowed.

Private elements are always addressed by their creator string, never by raw tag: the same
(0029,1010) means different things under different creators (PS3.5 7.8.1).
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset

from app.pseudo.profile import MAPPINGS_DIR, Profile

SAFE_PRIVATE_FILE = "safe-private-attributes.tsv"

# Strings in kept private elements that look like UIDs are mapped like any other UID, so a
# vendor's copy of the original StudyInstanceUID cannot re-link the study to its source.
UID_LIKE = re.compile(r"^[0-2](\.(0|[1-9][0-9]*)){3,}$")


@cache
def safe_private_attributes() -> frozenset[tuple[int, str, int]]:
    """PS3.15 Table E.3.10-1 as (group, creator, element byte); a sample, not a guarantee."""
    path = MAPPINGS_DIR / SAFE_PRIVATE_FILE
    if not path.is_file():
        return frozenset()
    with path.open(newline="") as fh:
        rows = csv.DictReader(fh, delimiter="\t")
        return frozenset(
            (int(r["group"], 16), r["creator"].strip(), int(r["element"], 16)) for r in rows
        )


def is_creator_element(element: int) -> bool:
    return 0x0010 <= element <= 0x00FF


def block_of(element: int) -> int:
    return element >> 8


def is_valid_private_group(group: int) -> bool:
    """Odd groups 0001–0007 and FFFF may not carry private data (PS3.5 7.8.1)."""
    return bool(group & 1) and group > 0x0008 and group != 0xFFFF


@dataclass
class PrivateElementSeen:
    """One private (group, creator, element) met in a collection: no value, ever."""

    group: int
    creator: str
    element: int
    vr: str
    files: int = 0
    safe: bool = False
    kept: bool = False


def _private_keys(ds: Dataset, found: set[tuple[int, str, int, str]]) -> None:
    creators: dict[tuple[int, int], str] = {}
    for elem in ds:
        tag = elem.tag
        group, element = tag.group, tag.element
        if elem.VR == "SQ":
            for item in elem.value or ():
                _private_keys(item, found)
        if not group & 1:
            continue
        if is_creator_element(element):
            creators[(group, element)] = str(elem.value or "").strip()
        elif element >= 0x1000:
            creator = creators.get((group, block_of(element)), "")
            found.add((group, creator, element & 0xFF, elem.VR))


def scan_private(paths: Iterable[Path], profile: Profile | None) -> list[PrivateElementSeen]:
    """Which private elements a collection holds, in how many files, and what happens to them."""
    safe = safe_private_attributes()
    allowed = set(profile.private_keep) if profile else set()
    if profile and profile.keeps_safe_private:
        allowed |= safe
    seen: dict[tuple[int, str, int], PrivateElementSeen] = {}
    for path in paths:
        try:
            ds = dcmread(path, stop_before_pixels=True, force=True)
        except Exception:  # noqa: BLE001  (a report skips what it cannot read)
            continue
        found: set[tuple[int, str, int, str]] = set()
        _private_keys(ds, found)
        for group, creator, element, vr in found:
            key = (group, creator, element)
            row = seen.get(key)
            if row is None:
                row = seen[key] = PrivateElementSeen(
                    group, creator, element, vr, safe=key in safe, kept=key in allowed
                )
            row.files += 1
    return sorted(seen.values(), key=lambda r: (r.group, r.creator, r.element))
