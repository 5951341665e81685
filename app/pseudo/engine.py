"""The dataset walker: applies a compiled profile to one DICOM header, at every depth.

It works on the header only (pixel data never reaches it, see `app.pseudo.files`) and touches
an element only when its rule changes it: untouched elements stay raw bytes and are written
back as they were read, which is what makes the engine faster than a plain read and write.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field

from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement, convert_raw_data_element
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag

from app import __version__
from app.dicom.part10 import raw_element
from app.pseudo.dates import UnparsableDate, shift_da, shift_dt, year_of
from app.pseudo.keys import ProjectKeys
from app.pseudo.private import (
    UID_LIKE,
    block_of,
    is_creator_element,
    is_valid_private_group,
    safe_private_attributes,
)
from app.pseudo.profile import Profile, Rule, describe_tag, format_tag, kept_uid_attributes
from app.pseudo.text import PatientIdentifiers, TextCleaner

TEXT_VRS = frozenset({"LO", "SH", "ST", "LT", "UT", "UC"})
STRING_VRS = TEXT_VRS | {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "PN", "TM", "UI", "UR"}
MAX_LENGTH = {"SH": 16, "LO": 64, "ST": 1024, "PN": 64, "AE": 16, "CS": 16}
DICOM_ROOT = "1.2.840.10008."
DUMMY = {
    "AE": "ANONYMOUS", "AS": "000Y", "CS": "ANONYMIZED", "DA": "19000101",
    "DT": "19000101000000", "TM": "000000", "DS": "0", "IS": "0", "PN": "ANONYMIZED",
    "LO": "ANONYMIZED", "SH": "ANONYMIZED", "ST": "ANONYMIZED", "LT": "ANONYMIZED",
    "UT": "ANONYMIZED", "UC": "ANONYMIZED", "FL": 0.0, "FD": 0.0, "SL": 0, "SS": 0,
    "UL": 0, "US": 0, "SV": 0, "UV": 0,
}  # fmt: skip
_PATIENT_NAME_TAGS = (0x00100010, 0x00101001, 0x00101005, 0x00101060)
_PATIENT_ID_TAGS = (0x00100020, 0x00101000, 0x00080050, 0x00101090, 0x00101050)
_REQUIRED_UIDS = (
    ("SOPInstanceUID", 0x00080018),
    ("SOPClassUID", 0x00080016),
    ("StudyInstanceUID", 0x0020000D),
    ("SeriesInstanceUID", 0x0020000E),
)
_UNPLANNED = object()
MIN_ID_LENGTH = 4  # shorter IDs ("1", "42") would wipe ordinary numbers out of free text
# Keyed mappings repeat across a batch (a series shares its study, series, frame of reference
# and patient): they are remembered, up to this many entries per cache, then forgotten.
CACHE_LIMIT = 50_000


class DeidentificationError(ValueError):
    """The dataset cannot be pseudonymized; the message names no value, only the reason."""


@dataclass
class InstanceResult:
    """What one instance became: its new UIDs, its patient's pseudonym, what was changed."""

    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    patient_pseudonym: str
    linkage: dict[str, str]
    changes: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class _PrivateBlocks:
    """Private creators met in one dataset level, and what became of their blocks."""

    creators: dict[tuple[int, int], str] = field(default_factory=dict)
    kept: set[tuple[int, int]] = field(default_factory=set)
    removed: set[tuple[int, str]] = field(default_factory=set)


@dataclass
class _Patient:
    pseudonym: str
    offset_days: int
    cleaner: TextCleaner
    number: int  # unique per Deidentifier, never reused: keys the patient's remembered results


def _str_values(elem: DataElement) -> list[str]:
    value = elem.value
    if value is None or value == "":
        return []
    if isinstance(value, MultiValue | list | tuple):
        return [str(v) for v in value if v not in (None, "")]
    return [str(value)]


def _peek(ds: Dataset, tag: int) -> DataElement:
    """The element decoded, without storing the decoded form in `ds`.

    An element left raw is written back from its original bytes (app.dicom.part10): only
    elements that actually change should be stored decoded.
    """
    elem = ds.get_item(tag)
    if isinstance(elem, RawDataElement):
        return convert_raw_data_element(elem, encoding=ds.original_character_set, ds=ds)
    return elem


def _strings(ds: Dataset, tag) -> list[str]:
    """An element's values as strings; plain ASCII raw bytes are split without decoding."""
    elem = ds.get_item(tag)
    if isinstance(elem, RawDataElement):
        raw = elem.value
        if not raw:
            return []
        if raw.isascii():
            return [v for v in raw.decode("ascii").strip(" \0").split("\\") if v]
        elem = convert_raw_data_element(elem, encoding=ds.original_character_set, ds=ds)
    return _str_values(elem)


def _first(ds: Dataset, tag: int) -> str:
    """An element's first value, stripped; "" when it is absent or empty."""
    values = _strings(ds, tag) if tag in ds else []
    return values[0].strip() if values else ""


def _put(ds: Dataset, tag, vr: str, values: list[str]) -> None:
    """Store new string values, as raw bytes in the dataset's encoding when they are ASCII.

    Our replacements (UIDs, pseudonyms, tokens, dates, dummies) are ASCII: stored raw, they
    are written back as they are, with no pass through pydicom's encoder.
    """
    implicit, little = ds.original_encoding
    text = "\\".join(values)
    if implicit is None or little is None or not text.isascii():
        ds[tag] = DataElement(tag, vr, values if len(values) > 1 else (values or [None])[0])
        return
    data = text.encode("ascii")
    if len(data) % 2:
        data += b"\0" if vr == "UI" else b" "
    ds[tag] = RawDataElement(
        BaseTag(tag), None if implicit else vr, len(data), data, 0, implicit, little, True, False
    )


# Values longer than this are not remembered (memory stays small: a key holds its value).
_REMEMBERED_SIZE = 512

# Elements whose storing has side effects in pydicom's Dataset (it caches them): always
# applied through the Dataset, never from remembered results.
_SIDE_EFFECT_TAGS = frozenset({0x00080005, 0x00280103})


def _charset_key(ds: Dataset) -> str | tuple[str, ...] | None:
    """The data set's character set as read, hashable (pydicom may give a list)."""
    charset = ds.original_character_set
    return tuple(charset) if isinstance(charset, list) else charset


def _remember(cache: dict, key, value):
    """Store and return `value`; a full cache starts again empty (memory stays bounded)."""
    if len(cache) >= CACHE_LIMIT:
        cache.clear()
    cache[key] = value
    return value


def _dictionary_vr(tag: int) -> str:
    try:
        return dictionary_VR(tag)
    except KeyError:
        return "UN"


def _vr_of(raw, tag: int) -> str:
    """The element's VR without decoding it; UN and implicit VR fall back to the dictionary."""
    if raw.VR and raw.VR != "UN":
        return raw.VR
    return _dictionary_vr(tag)


def clean_text_element(ds: Dataset, tag, vr: str, cleaner: TextCleaner) -> bool:
    """Clean one text element in place (cut to its VR's length); True when it changed."""
    raw = ds.get_item(tag)
    if isinstance(raw, RawDataElement) and raw.value is not None and raw.value.isascii():
        # Fast path: plain ASCII decodes the same in every DICOM character set; if the
        # cleaner finds nothing in the whole value, there is nothing to decode or store.
        text = raw.value.decode("ascii")
        if cleaner.clean(text) is text:
            return False
    elem = _peek(ds, tag)
    values = _str_values(elem)
    cleaned = [cleaner.clean(v) for v in values]
    if all(c is v for c, v in zip(cleaned, values, strict=True)):
        return False
    limit = MAX_LENGTH.get(vr)
    cleaned = [c[:limit] if limit else c for c in cleaned]
    elem.value = cleaned if len(cleaned) > 1 else cleaned[0]
    ds[tag] = elem
    return True


class Deidentifier:
    """Applies one project's profile with one project's keys; safe to reuse across files."""

    def __init__(self, profile: Profile, keys: ProjectKeys) -> None:
        self.profile = profile
        self.keys = keys
        self._uid_cache: dict[str, str] = {}
        self._token_cache: dict[tuple[str, str], str] = {}
        self._patient_cache: dict[tuple, tuple[_Patient, dict[str, str]]] = {}
        self._kept_uids = kept_uid_attributes()
        allowed = set(profile.private_keep)
        if profile.keeps_safe_private:
            allowed |= safe_private_attributes()
        self._private_allowed = frozenset(allowed)
        self._encoded_markers: dict[tuple[bool, bool], list] = {}
        self._plans: dict[tuple[int, str | None], tuple | None] = {}
        # Top-level results by (patient, tag, value as read): a study repeats its dates,
        # descriptions and UIDs in every file. None stands for "removed".
        self._results: dict[tuple, tuple[RawDataElement | None, tuple]] = {}
        self._patient_numbers = itertools.count()

    # -- keyed mappings ---------------------------------------------------------------------
    def map_uid(self, uid: str) -> str:
        uid = uid.strip().rstrip("\0")
        if not uid or uid.startswith(DICOM_ROOT):
            return uid
        mapped = self._uid_cache.get(uid)
        if mapped is None:
            mapped = _remember(self._uid_cache, uid, self.keys.uid(uid))
        return mapped

    def _token(self, domain: str, value: str) -> str:
        token = self._token_cache.get((domain, value))
        if token is None:
            token = _remember(self._token_cache, (domain, value), self.keys.token(domain, value))
        return token

    def _patient(self, ds: Dataset) -> tuple[_Patient, dict[str, str]]:
        patient_id, issuer = _first(ds, 0x00100020), _first(ds, 0x00100021)
        name, birth = _first(ds, 0x00100010), _first(ds, 0x00100030)
        if patient_id:
            key = f"id\x1f{issuer}\x1f{patient_id}"
        elif name:
            key = f"name\x1f{name.upper()}\x1f{birth}"
        else:  # nothing names the patient: one pseudonymous patient per study
            key = f"study\x1f{_first(ds, 0x0020000D)}"
        names = tuple(v for t in _PATIENT_NAME_TAGS if t in ds for v in _strings(ds, t))
        ids = tuple(v for t in _PATIENT_ID_TAGS if t in ds for v in _strings(ds, t))
        # The text cleaner depends on every identifier of this header, not only on the key.
        cache_key = (key, issuer, names, ids, birth)
        if (known := self._patient_cache.get(cache_key)) is not None:
            return known[0], dict(known[1])
        linkage = {"PatientID": patient_id, "IssuerOfPatientID": issuer}
        long_ids = [v for v in ids if len(v.strip()) >= MIN_ID_LENGTH]
        identifiers = PatientIdentifiers.from_header(names, long_ids, [birth] if birth else [])
        offset = self.keys.date_offset_days(key)
        shift = (lambda d: d + dt.timedelta(days=offset)) if self.profile.shifts_dates else None
        patient = _Patient(
            self.keys.patient_pseudonym(key),
            offset,
            TextCleaner(identifiers, shift),
            next(self._patient_numbers),
        )
        _remember(self._patient_cache, cache_key, (patient, dict(linkage)))
        return patient, linkage

    # -- the walk -----------------------------------------------------------------------------
    def keeps_private(self, group: int, creator: str, element: int) -> bool:
        """Whether a top-level private element is kept: readers skip the others unread."""
        return (group, creator, element) in self._private_allowed

    def deidentify(
        self, ds: Dataset, skipped_private: Iterable[tuple[int, str]] = ()
    ) -> InstanceResult:
        """Pseudonymize `ds` in place (header only) and say what it became.

        `skipped_private` names the private blocks the reader already left out.
        """
        for keyword, tag in _REQUIRED_UIDS:
            if tag not in ds or not _strings(ds, tag):
                raise DeidentificationError(f"missing {keyword}: not a storable DICOM instance")
        patient, linkage = self._patient(ds)
        changes: list[tuple[str, str]] = []
        self._walk(ds, patient, "", changes, set(skipped_private))
        for elem in self._markers(*ds.original_encoding):
            ds[elem.tag] = elem
        study, series, sop, sop_class = (
            _strings(ds, t)[0] for t in (0x0020000D, 0x0020000E, 0x00080018, 0x00080016)
        )
        return InstanceResult(
            study_uid=study,
            series_uid=series,
            sop_uid=sop,
            sop_class_uid=sop_class,
            patient_pseudonym=patient.pseudonym,
            linkage=linkage,
            changes=changes,
        )

    def _walk(
        self, ds: Dataset, patient: _Patient, path: str, changes: list, skipped=frozenset()
    ) -> None:
        private = _PrivateBlocks(removed=set(skipped))
        # BaseTag compares in Python: sort and look rules up by plain int, but address the
        # dataset with the BaseTag objects it holds (their identity makes lookups cheap).
        elements = ds._dict  # pydicom's element store: no Tag() per lookup (see part10)
        # What a top-level result is remembered with besides the element (see
        # _apply_remembered); sequence items are walked every time.
        context = None if path else (patient.number, _charset_key(ds))
        for tag in sorted(elements, key=int):
            number = int(tag)
            group, element = number >> 16, number & 0xFFFF
            if group & 1:
                self._private(ds, tag, patient, path, changes, private)
                continue
            if element == 0:  # group lengths are retired; pydicom does not write them anyway
                del ds[tag]
                continue
            key = (number, elements[tag].VR)
            plan = self._plans.get(key, _UNPLANNED)
            if plan is _UNPLANNED:
                plan = self._plans[key] = self._plan(number, key[1])
            if plan is None:
                continue
            if context is None or number in _SIDE_EFFECT_TAGS:
                self._apply(ds, tag, *plan, patient, path, changes)
            else:
                self._apply_remembered(ds, tag, plan, patient, changes, context)
        for group, block in private.creators.keys() - private.kept:
            del ds[(group << 16) | block]
        for group, creator in sorted(private.removed):
            changes.append((f"{path}({group:04X},xx) {creator or 'without creator'}", "X"))
        self._drop_orphaned_overlays(ds, path, changes)

    def _apply_remembered(self, ds, tag, plan, patient, changes, context: tuple) -> None:
        """`_apply` on a top-level element, its result remembered for the same value as read.

        Every rule's result depends only on the element (tag, VR, bytes, encoding, character
        set) and the patient, so a value seen before gets the same result without decoding
        it again. A sequence's result is kept encoded, as `encode_dataset` would write it:
        the next file's copy is neither parsed, walked nor encoded again. Long values, and
        other results that are not raw bytes (non-ASCII text), are not remembered.
        """
        elements = ds._dict
        elem = elements[tag]
        if not isinstance(elem, RawDataElement) or len(elem.value or b"") > _REMEMBERED_SIZE:
            self._apply(ds, tag, *plan, patient, "", changes)
            return
        key = (*context, int(tag), elem.VR, elem.value, elem.is_implicit_VR, elem.is_little_endian)
        known = self._results.get(key)
        if known is not None:
            result, changed = known
            if result is None:
                del elements[tag]
            else:
                elements[tag] = result
            changes.extend(changed)
            return
        before = len(changes)
        self._apply(ds, tag, *plan, patient, "", changes)
        after = elements.get(tag)
        if after is not None and not isinstance(after, RawDataElement):
            if plan[1] != "SQ" or elem.is_implicit_VR is None or elem.is_little_endian is None:
                return
            charset = ds.get("SpecificCharacterSet", "iso8859")  # as encode_dataset has it
            after = elements[tag] = raw_element(
                after, elem.is_implicit_VR, elem.is_little_endian, charset
            )
        _remember(self._results, key, (after, tuple(changes[before:])))

    def _drop_orphaned_overlays(self, ds: Dataset, path: str, changes: list) -> None:
        """An overlay whose data was removed is removed whole: a half Overlay Plane module
        (rows, columns, origin without data) is invalid (PS3.3 C.9.2)."""
        tags = list(ds.keys())  # iterating a Dataset yields elements; we want tags
        for group in {t >> 16 for t in tags if t >> 24 == 0x60}:
            if (group << 16 | 0x3000) not in ds:
                for tag in [t for t in tags if t >> 16 == group]:
                    del ds[tag]
                changes.append((f"{path}({group:04X},xxxx)", "X"))

    def _plan(self, tag: int, raw_vr: str | None) -> tuple[str, str, str, Rule | None] | None:
        """(name, VR, action, rule) for a standard attribute, or None when it is kept untouched.

        Cached per (tag, VR as read): a series repeats the same attributes in every file.
        """
        rule = self.profile.rule_for(tag)
        vr = raw_vr if raw_vr and raw_vr != "UN" else _dictionary_vr(tag)
        action = rule.action if rule else self._default_action(vr)
        if action == "K" and vr != "SQ":
            return None
        return describe_tag(tag), vr, action, rule

    def _default_action(self, vr: str) -> str:
        """Attributes the table does not list are kept, but handled by VR (PS3.15 E.1.1 n.4)."""
        if vr == "UI":
            return "U"
        if vr in ("DA", "DT"):
            return "C" if self.profile.shifts_dates else "X"
        if vr == "PN":
            return "D"
        if vr in TEXT_VRS:
            return "C"
        return "K"

    def _apply(self, ds, tag, name, vr, action, rule, patient, path, changes) -> None:
        where = path + name
        if action == "X":
            del ds[tag]
            changes.append((where, "X"))
            return
        if action == "Z":
            if vr == "SQ":
                ds[tag] = DataElement(tag, vr, Sequence())
            else:
                _put(ds, tag, vr, [])
            changes.append((where, "Z"))
            return
        if vr == "SQ":  # K, C, D, U on a sequence: keep it and clean every item with the table
            for i, item in enumerate(ds[tag].value):
                self._walk(item, patient, f"{where}[{i}].", changes)
            return
        if vr == "UI" or action == "U":
            self._map_uids(ds, tag, where, changes)
        elif action == "pseudonym":
            _put(ds, tag, vr, [patient.pseudonym])
            changes.append((where, "pseudonym"))
        elif action == "token":
            self._tokenize(ds, tag, vr, rule, where, changes)
        elif action == "birth-date":
            self._birth_date(ds, tag, where, patient, changes)
        elif action == "D":
            self._dummy(ds, tag, vr, patient, where, changes)
        elif action == "C":
            self._clean(ds, tag, vr, patient, where, changes)

    def _map_uids(self, ds: Dataset, tag, where: str, changes: list) -> None:
        if tag in self._kept_uids:
            return
        values = _strings(ds, tag)
        mapped = [self.map_uid(v) for v in values]
        if mapped != values:
            _put(ds, tag, "UI", mapped)
            changes.append((where, "U"))

    def _tokenize(self, ds, tag, vr: str, rule: Rule, where: str, changes: list) -> None:
        values = _strings(ds, tag)
        if not values:
            return
        domain = rule.prefix or where
        limit = MAX_LENGTH.get(vr, 64)
        tokens = []
        for v in values:
            normalized = " ".join(v.replace("^", " ").split()).casefold()
            tokens.append((rule.prefix + self._token(domain, normalized))[:limit])
        _put(ds, tag, vr, tokens)
        changes.append((where, "token"))

    def _birth_date(self, ds, tag, where, patient, changes) -> None:
        values = _strings(ds, tag)
        if not values:
            return
        try:
            if self.profile.birth_date == "year":
                new = [year_of(v) for v in values]
            else:
                new = [shift_da(v, patient.offset_days) for v in values]
        except UnparsableDate:
            _put(ds, tag, "DA", [])
            changes.append((where, "Z"))
            return
        _put(ds, tag, "DA", new)
        changes.append((where, f"birth-date:{self.profile.birth_date}"))

    def _dummy(self, ds, tag, vr, patient, where, changes) -> None:
        if vr in ("DA", "DT") and self.profile.shifts_dates:
            self._shift(ds, tag, vr, patient, where, changes)
            return
        dummy = DUMMY.get(vr)
        if isinstance(dummy, str):
            _put(ds, tag, vr, [dummy])
        else:  # binary numbers, or a VR without a dummy: a valid zero, or empty
            ds[tag] = DataElement(tag, vr, dummy)
        changes.append((where, "D"))

    def _shift(self, ds, tag, vr, patient, where, changes) -> None:
        values = _strings(ds, tag)
        if not values:
            return
        shift = shift_da if vr == "DA" else shift_dt
        try:
            shifted = [shift(v, patient.offset_days) for v in values]
        except UnparsableDate:
            _put(ds, tag, vr, [])
            changes.append((where, "Z"))
            return
        _put(ds, tag, vr, shifted)
        changes.append((where, "shift"))

    def _clean(self, ds, tag, vr, patient, where, changes) -> None:
        if vr in ("DA", "DT"):
            if self.profile.shifts_dates:
                self._shift(ds, tag, vr, patient, where, changes)
            else:
                del ds[tag]
                changes.append((where, "X"))
        elif vr in TEXT_VRS:
            self._clean_text(ds, tag, vr, patient, where, changes)
        elif vr == "PN":
            self._dummy(ds, tag, vr, patient, where, changes)
        elif vr not in STRING_VRS:
            # Binary values (overlay bitmaps, curves) cannot be cleaned without looking at
            # them: they are removed, which is always allowed where cleaning is.
            del ds[tag]
            changes.append((where, "X"))

    def _clean_text(self, ds, tag, vr, patient, where, changes) -> None:
        if clean_text_element(ds, tag, vr, patient.cleaner):
            changes.append((where, "C"))

    # -- private elements -----------------------------------------------------------------------
    def _private(self, ds, tag, patient, path, changes, private: _PrivateBlocks) -> None:
        """Keep a private element only if its (group, creator, element) is allowed.

        Removals are reported per creator block, not per element: a GE or Siemens header
        holds hundreds of them, and the block is what a data manager reviews.
        """
        group, element = tag.group, tag.element
        if not is_valid_private_group(group) or element < 0x10:
            del ds[tag]
            private.removed.add((group, ""))
            return
        if is_creator_element(element):
            private.creators[(group, element)] = str(_peek(ds, tag).value or "").strip()
            return
        creator = private.creators.get((group, block_of(element)))
        if creator is None or (group, creator, element & 0xFF) not in self._private_allowed:
            del ds[tag]
            private.removed.add((group, creator or ""))
            return
        private.kept.add((group, block_of(element)))
        where = f"{path}{format_tag(tag)}"
        vr = _vr_of(ds.get_item(tag), tag)
        if vr == "SQ":
            for i, item in enumerate(ds[tag].value):
                self._walk(item, patient, f"{where}[{i}].", changes)
        elif vr in ("UI", "UN", "LO", "SH"):
            self._map_private_uid(ds, tag, where, patient, changes)
        elif vr in ("DA", "DT"):
            self._shift(ds, tag, vr, patient, where, changes)
        elif vr in TEXT_VRS:
            self._clean_text(ds, tag, vr, patient, where, changes)

    def _map_private_uid(self, ds, tag, where, patient, changes) -> None:
        elem = _peek(ds, tag)
        value = elem.value
        if isinstance(value, bytes):
            if len(value) > 64:
                return
            text = value.decode("ascii", "replace").strip("\0 ")
        else:
            text = str(value or "").strip("\0 ")
        if UID_LIKE.match(text) and not text.startswith(DICOM_ROOT):
            mapped = self.map_uid(text)
            if isinstance(value, bytes):
                mapped_bytes = mapped.encode("ascii")
                elem.value = mapped_bytes + b"\0" * (len(mapped_bytes) % 2)
            else:
                elem.value = mapped
            ds[tag] = elem
            changes.append((where, "U"))
        elif elem.VR in TEXT_VRS:
            self._clean_text(ds, tag, elem.VR, patient, where, changes)

    # -- markers (PS3.15 E.1.1 item 4) ----------------------------------------------------------
    def _markers(self, implicit: bool | None, little: bool | None) -> list:
        """The markers, encoded once per encoding: the same bytes go into every file."""
        if implicit is None or little is None:
            return self._marker_elements()
        key = (implicit, little)
        if key not in self._encoded_markers:
            self._encoded_markers[key] = [
                raw_element(e, implicit, little) for e in self._marker_elements()
            ]
        return self._encoded_markers[key]

    def _marker_elements(self) -> list[DataElement]:
        codes = Sequence()
        for option in self.profile.options:
            item = Dataset()
            item.CodeValue = option.code
            item.CodingSchemeDesignator = "DCM"
            item.CodeMeaning = option.meaning
            codes.append(item)
        modified = "MODIFIED" if self.profile.shifts_dates else "REMOVED"
        return [
            DataElement(0x00120062, "CS", "YES"),
            DataElement(0x00120063, "LO", self.profile.method_description(__version__)),
            DataElement(0x00120064, "SQ", codes),
            DataElement(0x00280303, "CS", modified),
        ]
