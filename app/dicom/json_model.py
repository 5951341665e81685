"""The DICOM JSON Model (PS3.18 Annex F): a pydicom Dataset to JSON-ready dicts, and back.

Why not just wrap pydicom's `Dataset.to_json_dict`? It was measured and compared first
(tests/test_json_model.py holds the comparison on every packaged test file):

- it is slow for our use: on CT_small (258 elements) it costs ~1.7 ms on an already decoded
  dataset and ~5 ms on a freshly read one, because every raw element goes through pydicom's
  converters. This runs on every instance at ingest (series metadata is precomputed);
- it has a side effect: `ds[tag]` stores the decoded element back into the dataset, and an
  element that is no longer raw cannot be written back from its original bytes
  (app.dicom.part10), so calling it before writing slows the writer down too;
- it departs from Annex F in a few places (each one pinned by a test): an empty sequence
  gets `"Value": []` (F.2.5: an empty attribute has no "Value"); empty PN component groups
  are written as `""` (F.2.2: only the non-empty groups); group lengths, group 0002 and
  (FFFC,FFFC) padding are not left out (F.2.2); an empty value inside a multi-valued string
  is `""`, not `null` (F.2.5); a DS that is not a number makes it raise; FL/FD NaN gives
  invalid JSON; big endian OW/OF bytes are inlined unswapped.

So `to_dicom_json` is our own encoder, ~10x faster on a raw dataset. It reads each element
from its raw bytes while the element is still raw (the common case: the pseudonymizer leaves
untouched elements raw) and never stores anything back in the dataset. The cases that need
pydicom's knowledge (implicit VR private tags, UN with a known VR, ambiguous VRs, repeating
groups, text outside ASCII in any Specific Character Set, ISO 2022 escapes included) are
decoded by `pydicom.dataelem.convert_raw_data_element`, again without storing the result.
Elements already decoded (set by code, or read earlier) are encoded from their Python
values; both paths give the same JSON (tests check it on every packaged file).
`from_dicom_json` does wrap pydicom's `Dataset.from_json`: reading JSON is not on a hot
path and pydicom reads Annex F correctly, bar numbers sent as strings (handled here).

Decisions where Annex F leaves room (each pinned by a test):

- IS, DS, SV, UV are JSON numbers (Table F.2.3-1 "Number or String"). A DS without a fraction
  or exponent becomes a JSON integer (no float rounding); other DS values become floats when
  a double holds them exactly (at most 15 significant digits: every valid 16-character DS
  with a "." or an exponent). Anything else (more digits, not finite like "1E999", or not a
  DS at all like "NaN" or "1,5") stays a JSON *string*, stripped of padding, as the note to
  Table F.2.3-1 allows "to avoid losing precision". Same for an IS that is not an integer,
  and for any integer (IS, DS, SV, UV) beyond 2**53 - 1, which JavaScript readers round.
  Never an error: metadata must not fail because one value is malformed.
- FL and FD values that are NaN or infinite have no JSON number: they are written `null`.
- Padding: leading and trailing spaces go where PS3.5 says they are insignificant (AE, CS,
  DS, IS, LO, SH), trailing spaces and NULs elsewhere; LT, ST, UT, UR are single-valued
  (a backslash is no delimiter there). A value that is only padding is an empty value.
- Bulk data: binary VRs (OB, OD, OF, OL, OV, OW, UN) longer than `bulk_threshold` *bytes*
  (value bytes, not base64 characters), and pixel data (7FE0,0008/0009/0010) at any depth
  whatever its size, become `BulkDataURI` when a `bulkdata_uri` callback is given; otherwise
  `InlineBinary` (one base64 string, little endian: big endian OW/OF/OL/OD/OV values are
  byte-swapped, as DICOMweb serves Explicit VR Little Endian).
- The path handed to `bulkdata_uri` names the element from the top of the dataset: tags as
  8 uppercase hex digits and item indexes (from 0) in decimal, joined by dots: `"7FE00010"`,
  `"00540016.0.00181072"`, `"00089215.2.00400A73.0.00281203"`. It is stable for a dataset
  and needs no escaping in a URL path.
- Left out at every depth: group lengths (gggg,0000), groups 0000 to 0002 (command, file
  meta) and (FFFC,FFFC) trailing padding. Private elements are kept. `include` selects
  top-level attributes only (QIDO includefield; items are returned whole), and selecting a
  private element also selects its Private Creator, without which it cannot be read.
- Ambiguous VRs that pydicom cannot settle from the dataset are written as US (SS when a
  value is negative) or OW, so that "vr" is always a real VR.
"""

from __future__ import annotations

import array
import base64
import copy
import math
import sys
from collections.abc import Callable, Iterable
from typing import Any

from pydicom.datadict import DicomDictionary
from pydicom.dataelem import DataElement, RawDataElement, convert_raw_data_element
from pydicom.dataset import Dataset
from pydicom.filewriter import correct_ambiguous_vr_element
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.valuerep import AMBIGUOUS_VR

from app.dicom.part10 import PIXEL_TAGS, TRAILING_PADDING, UNDEFINED_LENGTH

BulkDataUri = Callable[[str], str]
JsonDataset = dict[str, dict[str, Any]]
_Elements = list[tuple[int, "DataElement | RawDataElement"]]

BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
_SPECIFIC_CHARACTER_SET = 0x00080005
_FIRST_DATA_GROUP = 0x00030000
_STRIP_BOTH = frozenset({"AE", "CS", "DS", "IS", "LO", "SH"})
_SINGLE_VALUED = frozenset({"LT", "ST", "UT", "UR"})
_TEXT_VRS = frozenset({"AE", "AS", "CS", "DA", "DT", "TM", "UI", "LO", "SH", "UC"}) | _SINGLE_VALUED
# array/memoryview codes with their sizes fixed on every supported platform (not "l"/"L")
_INT_CODES = {"US": "H", "SS": "h", "UL": "I", "SL": "i", "UV": "Q", "SV": "q"}
_FLOAT_CODES = {"FL": "f", "FD": "d"}
_SWAP_CODES = {"OW": "H", "OF": "I", "OL": "I", "OD": "Q", "OV": "Q"}
_PN_GROUPS = ("Alphabetic", "Ideographic", "Phonetic")
_NATIVE_LITTLE = sys.byteorder == "little"
_MAX_EXACT_DIGITS = 15  # any decimal with up to 15 significant digits survives a double
_MAX_SAFE_INTEGER = 2**53 - 1  # beyond it JavaScript clients round (Number.MAX_SAFE_INTEGER)


class _NeedsPydicom(Exception):
    """This raw value needs pydicom's decoder (non-ASCII text, odd length, ...)."""


# --- single values ------------------------------------------------------------------------


def _ds_value(text: str) -> int | float | str | None:
    """One DS value: a JSON number when exact, else the stripped string (see module doc).

    `float()` does the parsing (it is C); what it accepts beyond the DS grammar (nan, inf,
    underscores, non-ASCII digits) is caught by the checks after it.
    """
    text = text.strip(" \0")
    if not text:
        return None
    try:
        number = float(text)
    except ValueError:
        return text
    if not math.isfinite(number) or "_" in text or not text.isascii():
        return text
    if "." in text or "e" in text or "E" in text:
        if len(text) > _MAX_EXACT_DIGITS and _significant_digits(text) > _MAX_EXACT_DIGITS:
            return text
        return number
    return _safe_integer(int(text), text)


def _safe_integer(value: int, text: str | None = None) -> int | str:
    """An integer as a JSON number while every JSON reader keeps it exact, else a string."""
    if -_MAX_SAFE_INTEGER <= value <= _MAX_SAFE_INTEGER:
        return value
    return text if text is not None else str(value)


def _significant_digits(text: str) -> int:
    mantissa = text.lower().split("e")[0]
    return len(mantissa.lstrip("+-").replace(".", "").lstrip("0"))


def _is_value(text: str) -> int | str | None:
    """One IS (or SV/UV given as text) value: a JSON integer, else the stripped string."""
    text = text.strip(" \0")
    if not text:
        return None
    try:
        return _safe_integer(int(text), text)
    except ValueError:
        return text


def _pn_value(text: str) -> dict[str, str] | None:
    """One PN value: its non-empty component groups (F.2.2); null when all are empty."""
    groups = text.rstrip(" \0").split("=")
    named = {name: group for name, group in zip(_PN_GROUPS, groups, strict=False) if group}
    return named or None


def _float_value(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _tag_text(value: int) -> str:
    return f"{value:08X}"


def _split_text(text: str, vr: str) -> list[str | None]:
    """Split a decoded string on backslashes and drop insignificant padding (PS3.5 6.2)."""
    if vr in _SINGLE_VALUED:
        return [text.rstrip(" \0") or None]
    if vr in _STRIP_BOTH:
        return [v.strip(" \0") or None for v in text.split("\\")]
    return [v.rstrip(" \0") or None for v in text.split("\\")]


def _split_numbers(text: str, vr: str) -> list[Any]:
    convert = _ds_value if vr == "DS" else _is_value
    return [convert(v) for v in text.split("\\")]


def _split_names(text: str) -> list[dict[str, str] | None]:
    return [_pn_value(v) for v in text.split("\\")]


def _values_of_text(text: str, vr: str) -> list[Any]:
    """The JSON values of one decoded string of any string VR."""
    if vr == "PN":
        return _split_names(text)
    if vr in ("DS", "IS", "SV", "UV"):
        return _split_numbers(text, vr)
    return _split_text(text, vr)


# --- raw bytes ------------------------------------------------------------------------------
#
# One decoder per VR, looked up once per element: this path runs for most elements of most
# instances, so it avoids any per-element work that is not needed (measured, see tests).

RawDecoder = Callable[[bytes, bool], list[Any]]
_CHARSET_VRS = frozenset({"SH", "LO", "UC", "LT", "ST", "UT", "PN"})


def _ascii(data: bytes, vr: str) -> str:
    """Bytes that decode the same in every DICOM character set, else pydicom decodes them.

    ASCII without ESC reads the same in the default repertoire, ISO 8859-x, UTF-8, GB18030
    and ISO 2022 before any escape sequence, so it needs no charset lookup at all.
    """
    if not data.isascii() or (vr in _CHARSET_VRS and b"\x1b" in data):
        raise _NeedsPydicom
    return data.decode("ascii")


def _text_decoder(vr: str) -> RawDecoder:
    if vr in _SINGLE_VALUED:
        return lambda data, little: [_ascii(data, vr).rstrip(" \0") or None]
    if vr in _STRIP_BOTH:
        return lambda data, little: [v.strip(" \0") or None for v in _ascii(data, vr).split("\\")]
    return lambda data, little: [v.rstrip(" \0") or None for v in _ascii(data, vr).split("\\")]


def _number_decoder(convert: Callable[[str], Any], vr: str) -> RawDecoder:
    return lambda data, little: [convert(v) for v in _ascii(data, vr).split("\\")]


def _unpacked(data: bytes, code: str, size: int, little: bool) -> list:
    """Fixed-size binary numbers; memoryview.cast is the fast path on a same-endian host."""
    if len(data) % size:
        raise _NeedsPydicom  # pydicom warns and truncates: leave that to it
    if little is _NATIVE_LITTLE:
        return memoryview(data).cast(code).tolist()
    values = array.array(code)
    values.frombytes(data)
    values.byteswap()
    return values.tolist()


def _swapped(data: bytes, vr: str) -> bytes:
    """Big endian OW/OF/OL/OD/OV bytes in little endian order (OB and UN are plain bytes)."""
    code = _SWAP_CODES.get(vr)
    if code is None or len(data) % array.array(code).itemsize:
        return data
    values = array.array(code)
    values.frombytes(data)
    values.byteswap()
    return values.tobytes()


def _int_decoder(code: str) -> RawDecoder:
    size = array.array(code).itemsize
    if size < 8:
        return lambda data, little: _unpacked(data, code, size, little)
    return lambda data, little: [_safe_integer(v) for v in _unpacked(data, code, size, little)]


def _float_decoder(code: str) -> RawDecoder:
    size = array.array(code).itemsize
    return lambda data, little: [_float_value(v) for v in _unpacked(data, code, size, little)]


def _at_values(data: bytes, little: bool) -> list[str]:
    words = _unpacked(data, "H", 2, little)
    if len(words) % 2:
        raise _NeedsPydicom
    return [f"{g:04X}{e:04X}" for g, e in zip(words[::2], words[1::2], strict=True)]


_RAW_DECODERS: dict[str, RawDecoder] = {
    **{vr: _text_decoder(vr) for vr in _TEXT_VRS},
    **{vr: _int_decoder(code) for vr, code in _INT_CODES.items()},
    **{vr: _float_decoder(code) for vr, code in _FLOAT_CODES.items()},
    "PN": lambda data, little: _split_names(_ascii(data, "PN")),
    "DS": _number_decoder(_ds_value, "DS"),
    "IS": _number_decoder(_is_value, "IS"),
    "AT": _at_values,
}


def _implicit_vr(tag: int) -> str | None:
    """A public tag's VR from the dictionary; None when pydicom must decide (private...)."""
    if (tag >> 16) & 1:
        return "LO" if 0x0010 <= (tag & 0xFFFF) <= 0x00FF else None  # Private Creator
    entry = DicomDictionary.get(tag)
    return None if entry is None or entry[0] in AMBIGUOUS_VR else entry[0]


# --- decoded values ------------------------------------------------------------------------


def _decoded_value(value: Any, vr: str) -> list[Any]:
    """The JSON values of one item of a decoded element's value."""
    if value is None or value == "":
        return [None]
    if vr in ("US", "SS", "UL", "SL") or (vr in ("IS", "SV", "UV") and isinstance(value, int)):
        return [_safe_integer(int(value))]
    if vr in _FLOAT_CODES:
        return [_float_value(float(value))]
    if vr == "AT":
        return [_tag_text(int(value))]
    return _values_of_text(str(value), vr)


def _settled_vr(vr: str, value: Any) -> str:
    """A real VR for an ambiguous one pydicom could not settle."""
    if isinstance(value, bytes | bytearray):
        return "OW"
    values = value if isinstance(value, MultiValue | list | tuple) else [value]
    return "SS" if any(isinstance(v, int) and v < 0 for v in values) else "US"


def _is_empty(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, str | bytes | bytearray | MultiValue | list | tuple | Sequence):
        return len(value) == 0
    return False


# --- the encoder -----------------------------------------------------------------------------


class _Encoder:
    """One conversion: the bulk data callback and threshold, shared by every depth."""

    __slots__ = ("threshold", "uri")

    def __init__(self, uri: BulkDataUri | None, threshold: int) -> None:
        self.uri = uri
        self.threshold = threshold

    def dataset(
        self, ds: Dataset, prefix: str, ancestors: tuple[Dataset, ...], elements: _Elements
    ) -> JsonDataset:
        """Every kept element of one dataset level, in tag order (F.2.2 requires the order)."""
        chain = (ds, *ancestors)
        out: JsonDataset = {}
        for tag, elem in elements:
            if not tag & 0xFFFF or tag < _FIRST_DATA_GROUP or tag == TRAILING_PADDING:
                continue
            key = f"{tag:08X}"
            if type(elem) is RawDataElement:
                out[key] = self.raw(elem, key, prefix, chain)
            else:
                out[key] = self.decoded(elem, key, prefix, chain)
        return out

    def raw(
        self, raw: RawDataElement, key: str, prefix: str, chain: tuple[Dataset, ...]
    ) -> dict[str, Any]:
        """A still-encoded element, decoded straight from its bytes when that is safe."""
        vr = raw.VR if raw.VR is not None else _implicit_vr(raw.tag)
        data = raw.value
        decode = _RAW_DECODERS.get(vr)  # type: ignore[arg-type]
        if decode is not None and data is not None:
            if not data:
                return {"vr": vr}
            try:
                values = decode(data, raw.is_little_endian)
            except _NeedsPydicom:
                return self.decoded(_convert(raw, chain), key, prefix, chain)
            if len(values) == 1 and values[0] is None:
                return {"vr": vr}
            return {"vr": vr, "Value": values}
        if vr in BINARY_VRS and vr != "UN":
            size = raw.length if raw.length != UNDEFINED_LENGTH else None
            if data is not None:
                size = len(data)
            return self.binary(raw.tag, vr, data, size, raw.is_little_endian, key, prefix, chain)
        return self.decoded(_convert(raw, chain), key, prefix, chain)

    def decoded(
        self, elem: DataElement, key: str, prefix: str, chain: tuple[Dataset, ...]
    ) -> dict[str, Any]:
        """An element already decoded by pydicom, from its Python value."""
        vr, value = elem.VR, elem.value
        if vr in AMBIGUOUS_VR:
            vr, value = _resolved(elem, chain)
        if vr == "SQ":
            return self.sequence(value or (), key, prefix, chain)
        if vr in BINARY_VRS:
            data = None if value is None else bytes(value)
            size = 0 if data is None else len(data)
            little = chain[0].original_encoding[1] is not False
            return self.binary(elem.tag, vr, data, size, little, key, prefix, chain)
        if _is_empty(value):
            return {"vr": vr}
        items = value if isinstance(value, MultiValue | list | tuple) else (value,)
        values = [v for item in items for v in _decoded_value(item, vr)]
        return _with_values(vr, values)

    def sequence(
        self, items: Iterable[Dataset], key: str, prefix: str, chain: tuple[Dataset, ...]
    ) -> dict[str, Any]:
        """Items recurse; an empty item is `{}` and an empty sequence has no Value (F.2.5)."""
        path = prefix + key
        value = [
            self.dataset(item, f"{path}.{index}.", chain, _sorted_elements(item))
            for index, item in enumerate(items)
        ]
        return {"vr": "SQ", "Value": value} if value else {"vr": "SQ"}

    def binary(
        self,
        tag: int,
        vr: str,
        data: bytes | None,
        size: int | None,
        little: bool,
        key: str,
        prefix: str,
        chain: tuple[Dataset, ...],
    ) -> dict[str, Any]:
        """Bulk data by URI past the threshold (pixel data always), else inline base64.

        `size` None means undefined length not read yet (encapsulated pixel data).
        """
        if size == 0:
            return {"vr": vr}
        if self.uri is not None and (tag in PIXEL_TAGS or size is None or size > self.threshold):
            return {"vr": vr, "BulkDataURI": self.uri(prefix + key)}
        if data is None:  # deferred read (dcmread(defer_size=...)): read it now
            data = bytes(chain[0][tag].value or b"")
        if not little:
            data = _swapped(data, vr)
        return {"vr": vr, "InlineBinary": base64.b64encode(data).decode("ascii")}


def _with_values(vr: str, values: list[Any]) -> dict[str, Any]:
    """A value list that is one empty value is an empty attribute (F.2.5)."""
    if len(values) == 1 and values[0] is None:
        return {"vr": vr}
    return {"vr": vr, "Value": values}


def _elements(ds: Dataset) -> dict[int, DataElement | RawDataElement]:
    """The dataset's elements as stored, raw or decoded, with no decoding on access.

    pydicom's public `get_item` does the same one tag at a time, through `Tag()` and with a
    deferred read; the mapping itself is what a full walk needs.
    """
    return ds._dict


def _sorted_elements(ds: Dataset, keep: Callable[[int], bool] | None = None) -> _Elements:
    """(tag as a plain int, element) pairs in tag order.

    Plain ints matter for speed: pydicom's BaseTag compares in Python, plain ints in C.
    """
    elements = _elements(ds)
    pairs = zip(map(int, elements), elements.values(), strict=True)
    if keep is not None:
        pairs = ((tag, elem) for tag, elem in pairs if keep(tag))
    return sorted(pairs, key=_first)


def _first(pair: tuple[int, Any]) -> int:
    return pair[0]


def _convert(raw: RawDataElement, chain: tuple[Dataset, ...]) -> DataElement:
    """pydicom's decoding of a raw element, as `ds[tag]` does it, but not stored in `ds`."""
    ds = chain[0]
    if raw.value is None and raw.length:  # deferred read: let pydicom fetch and keep it
        return ds[raw.tag]
    encoding = ds.original_character_set if raw.tag != _SPECIFIC_CHARACTER_SET else None
    elem = convert_raw_data_element(raw, encoding=encoding, ds=ds)
    if elem.VR in AMBIGUOUS_VR:
        elem = _correct(elem, chain, raw.is_little_endian)
    return elem


def _correct(elem: DataElement, chain: tuple[Dataset, ...], little: bool) -> DataElement:
    """pydicom's ambiguous VR correction (PixelRepresentation, BitsAllocated...), if it can."""
    try:
        return correct_ambiguous_vr_element(elem, chain[0], little, ancestors=list(chain))
    except (AttributeError, ValueError, KeyError, TypeError):
        return elem


def _resolved(elem: DataElement, chain: tuple[Dataset, ...]) -> tuple[str, Any]:
    """VR and value of an ambiguous decoded element, without changing the stored one."""
    little = chain[0].original_encoding[1] is not False
    fixed = _correct(copy.copy(elem), chain, little)
    if fixed.VR not in AMBIGUOUS_VR:
        return fixed.VR, fixed.value
    vr = _settled_vr(fixed.VR, fixed.value)
    if fixed.VR == "US or SS" and isinstance(fixed.value, bytes | bytearray):
        return "US", _unpacked(bytes(fixed.value), "H", 2, little)  # pydicom left it bytes
    return vr, fixed.value


def _top_level(ds: Dataset, include: Callable[[int], bool] | None) -> _Elements:
    """The top-level elements to encode; a chosen private element brings its Private
    Creator (gggg,00xx) along, without which it cannot be interpreted."""
    if include is None:
        return _sorted_elements(ds)
    chosen = {tag for tag in map(int, _elements(ds)) if include(tag)}
    chosen |= {
        (tag & 0xFFFF0000) | ((tag >> 8) & 0xFF)
        for tag in chosen
        if (tag >> 16) & 1 and (tag & 0xFFFF) >= 0x1000
    }
    return _sorted_elements(ds, chosen.__contains__)


def to_dicom_json(
    ds: Dataset,
    *,
    bulkdata_uri: BulkDataUri | None = None,
    bulk_threshold: int = 1024,
    include: Callable[[int], bool] | None = None,
) -> JsonDataset:
    """`ds` in the DICOM JSON Model: `{"0020000D": {"vr": "UI", "Value": [...]}, ...}`.

    `bulkdata_uri(path)` turns a bulk data path (see the module doc) into its BulkDataURI;
    without it every binary value is inlined. `include(tag)` selects top-level attributes.
    The dataset is not modified: raw elements stay raw.
    """
    encoder = _Encoder(bulkdata_uri, bulk_threshold)
    return encoder.dataset(ds, "", (), _top_level(ds, include))


# --- JSON to Dataset ----------------------------------------------------------------------


Location = tuple[tuple[int, int], ...]  # (sequence tag, item index) from the top


def _numeric_strings(obj: JsonDataset, where: Location, found: list) -> JsonDataset:
    """A copy of `obj` without the IS/DS/SV/UV values given as strings, which are collected.

    pydicom's reader turns every IS/DS value into int()/float() and fails on a string such
    as "1.0" for IS or loses a 16-digit DS; the strings are put back after it has run.
    """
    out: JsonDataset = {}
    for key, attr in obj.items():
        vr, value = attr.get("vr"), attr.get("Value")
        if vr in ("DS", "IS", "SV", "UV") and isinstance(value, list):
            if any(isinstance(v, str) for v in value):
                found.append((where, int(key, 16), vr, value))
                attr = {"vr": vr}
        elif vr == "SQ" and isinstance(value, list):
            items = [
                _numeric_strings(item or {}, (*where, (int(key, 16), index)), found)
                for index, item in enumerate(value)
            ]
            attr = {**attr, "Value": items}
        out[key] = attr
    return out


def _number_from_json(value: Any, vr: str) -> Any:
    """A JSON IS/DS/SV/UV value as pydicom takes it: str kept for DS (exact), int otherwise."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        return text if vr == "DS" else int(text)
    return value


def from_dicom_json(
    obj: JsonDataset, *, bulkdata: Callable[[str, str, str], Any] | None = None
) -> Dataset:
    """A Dataset from the DICOM JSON Model (STOW-RS of JSON metadata), through pydicom.

    `bulkdata(tag, vr, uri)` fetches the value behind a BulkDataURI (a STOW request carries it
    in another part); without it such elements are left empty. Raises ValueError (pydicom's
    or ours) on values that cannot be represented.
    """
    found: list[tuple[Location, int, str, list]] = []
    ds = Dataset.from_json(_numeric_strings(obj, (), found), bulk_data_uri_handler=bulkdata)
    for where, tag, vr, values in found:
        target = ds
        for seq_tag, index in where:
            target = target[seq_tag].value[index]
        numbers = [_number_from_json(v, vr) for v in values]
        target[tag].value = numbers[0] if len(numbers) == 1 else numbers
    return ds
