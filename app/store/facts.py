"""What the index records about one stored instance, read from the very bytes stored.

The facts come from the pseudonymized bytes about to be stored (never from the original, which
the ingest service does not even keep): the index cannot hold a value the blob does not. The
ingest boundary parses the header it has just encoded, the bytes that go into the blob, and
hashes them as they will be stored. Values go through the DICOM JSON encoder
(app.dicom.json_model), so the index and the metadata served later agree on every odd value
(a DS that is no number, padding, character sets).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset

from app.dicom.json_model import to_dicom_json

# UIDs become blob key segments and 64-character columns: digits and dots, as DICOM says, with
# a little leniency for letters some vendors put in SOP Class UIDs (still key-safe).
_UID = re.compile(r"[0-9A-Za-z][0-9A-Za-z._-]{0,63}")

STUDY_TEXT = {
    "patient_id": 0x00100020,
    "patient_name": 0x00100010,
    "patient_birth_date": 0x00100030,
    "patient_sex": 0x00100040,
    "study_date": 0x00080020,
    "study_time": 0x00080030,
    "accession_number": 0x00080050,
    "study_id": 0x00200010,
    "referring_physician_name": 0x00080090,
    "study_description": 0x00081030,
}
SERIES_TEXT = {
    "modality": 0x00080060,
    "series_description": 0x0008103E,
    "body_part_examined": 0x00180015,
    "pps_start_date": 0x00400244,
    "pps_start_time": 0x00400245,
}
SERIES_INT = {"series_number": 0x00200011}
INSTANCE_INT = {
    "instance_number": 0x00200013,
    "rows": 0x00280010,
    "columns": 0x00280011,
    "bits_allocated": 0x00280100,
    "number_of_frames": 0x00280008,
}
UIDS = {
    "study_uid": 0x0020000D,
    "series_uid": 0x0020000E,
    "sop_uid": 0x00080018,
    "sop_class_uid": 0x00080016,
}
_WANTED = frozenset(
    {*STUDY_TEXT.values(), *SERIES_TEXT.values(), *SERIES_INT.values(),
     *INSTANCE_INT.values(), *UIDS.values()}
)  # fmt: skip


class UnstorableInstance(ValueError):
    """The file cannot be indexed (a required UID missing or malformed); names no value."""


@dataclass(frozen=True)
class InstanceFacts:
    """One file's index columns (study, series and instance level) and its byte facts."""

    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    size: int
    sha256: str
    header_length: int  # bytes before the pixel data element (the whole file if none)
    study: dict[str, str | None]
    series: dict[str, str | int | None]
    instance: dict[str, int | None]


def _text(attribute: dict[str, Any] | None) -> str | None:
    """An attribute as its DICOM string: values joined by "\\", PN groups by "="."""
    if not attribute or "Value" not in attribute:
        return None
    parts = []
    for value in attribute["Value"]:
        if isinstance(value, dict):  # PN
            groups = [value.get(g, "") for g in ("Alphabetic", "Ideographic", "Phonetic")]
            while groups and not groups[-1]:
                groups.pop()
            parts.append("=".join(groups))
        else:
            parts.append("" if value is None else str(value))
    text = "\\".join(parts)
    return text or None


def _integer(attribute: dict[str, Any] | None) -> int | None:
    """The first value if it is an integer that fits a 32-bit column, else None."""
    if not attribute or not attribute.get("Value"):
        return None
    value = attribute["Value"][0]
    if isinstance(value, int) and not isinstance(value, bool) and -(2**31) <= value < 2**31:
        return value
    return None


def _uid(attribute: dict[str, Any] | None, what: str) -> str:
    value = _text(attribute)
    if value is None:
        raise UnstorableInstance(f"no {what}")
    if not _UID.fullmatch(value):
        raise UnstorableInstance(f"the {what} is not a valid UID")
    return value


def instance_facts(ds: Dataset, *, size: int, sha256: str, header_length: int) -> InstanceFacts:
    """The facts of an instance whose stored bytes (`size` of them, hashing to `sha256`)
    parse into `ds`, with its pixel data element at `header_length` (`size` when none)."""
    json = to_dicom_json(ds, include=_WANTED.__contains__)

    def get(tag: int) -> dict[str, Any] | None:
        return json.get(f"{tag:08X}")

    meta = getattr(ds, "file_meta", None)
    transfer_syntax = str(getattr(meta, "TransferSyntaxUID", "") or "").strip("\0 ")
    if not _UID.fullmatch(transfer_syntax):
        raise UnstorableInstance("no valid transfer syntax in the file meta")
    return InstanceFacts(
        study_uid=_uid(get(UIDS["study_uid"]), "Study Instance UID"),
        series_uid=_uid(get(UIDS["series_uid"]), "Series Instance UID"),
        sop_uid=_uid(get(UIDS["sop_uid"]), "SOP Instance UID"),
        sop_class_uid=_uid(get(UIDS["sop_class_uid"]), "SOP Class UID"),
        transfer_syntax_uid=transfer_syntax,
        size=size,
        sha256=sha256,
        header_length=header_length,
        study={name: _text(get(tag)) for name, tag in STUDY_TEXT.items()},
        series={
            **{name: _text(get(tag)) for name, tag in SERIES_TEXT.items()},
            **{name: _integer(get(tag)) for name, tag in SERIES_INT.items()},
        },
        instance={name: _integer(get(tag)) for name, tag in INSTANCE_INT.items()},
    )
