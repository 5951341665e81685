"""A fast DICOM header reader that can skip unwanted private elements without building them.

Why: pydicom's `dcmread(stop_before_pixels=True)` spends most of its time in
`data_element_generator` (a file read, a tell, a stop callback and a RawDataElement per
element), and in a GE or Siemens header most of those elements are private ones that the
pseudonymization engine deletes straight away. Only the per-element scanning loop is written by
hand here: it indexes a read-ahead buffer instead of calling the file for every element, and
asks `keep_private` about each private data element *before* building it. The same loop reads
the File Meta group (always Explicit VR Little Endian), in less than half the time of pydicom's
`_read_file_meta_info` with its recovery heuristics (not needed on this path). The rest
is pydicom's own: kept undefined-length sequences are built by its `read_sequence`, the
objects are its `FileMetaDataset` and `FileDataset`, set up as `read_partial` sets them up. So
the result is what `dcmread(fp, stop_before_pixels=True, force=True)` returns, element for
element (tests/test_scan.py checks this for every packaged test file).

Only the common case takes the fast path: a Part 10 file (preamble, 'DICM', meta) in Implicit
VR Little Endian or Explicit VR Little/Big Endian whose body is encoded as declared. Anything
else (no meta, deflate, private transfer syntaxes, a body in the other VR encoding, command
set elements, unknown VRs, out-of-order or repeated tags, undefined-length values other than
sequences, delimiters at top level, a struct error) is read by pydicom itself, and private
elements are then filtered by deleting them: the same result, without the speed-up. Errors
pydicom raises for a file it cannot read come out of that fallback unchanged.

Truncated files behave as with pydicom's reader: an element cut by the end of the file gets a
short value (its `length` stays the declared one) and the caller checks. Such an element is
built even when `keep_private` refuses it, so the short value is never hidden. A skipped
sequence cut by the end of the file goes to pydicom, which raises.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, MutableSequence
from dataclasses import dataclass, field
from functools import cache
from typing import BinaryIO

from pydicom import config
from pydicom.charset import convert_encodings, default_encoding
from pydicom.datadict import _dictionary_vr_fast
from pydicom.dataelem import (
    DataElement,
    RawDataElement,
    convert_raw_data_element,
    empty_value_for_VR,
)
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import dcmread, read_sequence
from pydicom.tag import BaseTag
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    PrivateTransferSyntaxes,
)
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32
from pydicom.valuerep import VR as VR_
from pydicom.values import convert_string

from app.dicom.part10 import ITEM, PIXEL_TAGS, SEQUENCE_DELIMITER, UNDEFINED_LENGTH

KeepPrivate = Callable[[int, str, int], bool]

ITEM_DELIMITER = 0xFFFEE00D
CHARSET_TAG = 0x00080005
FIRST_PIXEL_TAG = min(PIXEL_TAGS)
CHUNK = 1 << 16  # read-ahead: most CT/MR headers fit in one read
# Explicit VR bytes -> (VR, has a 4-byte length); the VRs pydicom's reader knows.
_STRUCTS = {  # little endian? -> (implicit VR header, explicit VR header, 4-byte length)
    little: (struct.Struct(e + "HHL"), struct.Struct(e + "HH2sH"), struct.Struct(e + "L"))
    for little, e in ((True, "<"), (False, ">"))
}
_VR_BYTES = struct.Struct("4x2B")  # the two VR bytes of an element header
_VR_INFO = {vr.encode(default_encoding): (str(vr), str(vr) in EXPLICIT_VR_LENGTH_32) for vr in VR_}
_UNSEEN = object()  # a private block whose creator was not looked up yet
_new_tuple = tuple.__new__  # RawDataElement(...) without NamedTuple's keyword handling
# Errors that mean "this file is not the simple case": pydicom reads it instead.
_PARSE_ERRORS = (
    struct.error,
    ValueError,
    KeyError,
    IndexError,
    EOFError,
    OSError,
    NotImplementedError,
    InvalidDicomError,
    RecursionError,
)


class _Unusual(Exception):
    """The file needs pydicom's own reader (its heuristics and warnings)."""


@dataclass
class Header:
    """A file's header as pydicom reads it, minus the private elements the caller refused."""

    dataset: Dataset  # a FileDataset, as dcmread returns it: raw elements, file_meta, preamble
    pixel_start: int | None  # where (7FE0,0008/0009/0010) starts; None: no pixel element
    skipped_blocks: set[tuple[int, str]] = field(default_factory=set)  # (group, creator) refused
    fast: bool = True  # False when pydicom's reader was used (see module docstring)


def read_header(fp: BinaryIO, keep_private: KeepPrivate | None = None) -> Header:
    """Read the header of the Part 10 file `fp` up to its pixel data.

    `keep_private(group, creator, element_low_byte)` decides for each top-level private data
    element (odd group, element >= 0x1000) whether it is built; None keeps all. Creator
    elements are always kept; with a `keep_private`, data elements whose creator is absent
    are skipped and reported as (group, ""). On return `fp` is where pydicom would leave it:
    at `pixel_start` when there is pixel data.
    """
    try:
        return _read_fast(fp, keep_private)
    except (_Unusual, *_PARSE_ERRORS):
        return _read_with_pydicom(fp, keep_private)


# -- the fast path ----------------------------------------------------------------------------


def _read_fast(fp: BinaryIO, keep_private: KeepPrivate | None) -> Header:
    size = fp.seek(0, 2)
    window = _Window(fp)
    head = window.read(0, 132)
    if head[128:] != b"DICM":
        raise _Unusual("no preamble and 'DICM' prefix")
    file_meta, start = _read_meta(window, size)
    implicit, little = _body_encoding(file_meta)
    scanner = _Scanner(window, size, implicit, little, keep_private)
    scanner.check_start(start)
    pixel_start = scanner.top_level(start)
    # Built the way pydicom's read_partial builds it: the same objects in the same state.
    dataset = Dataset(scanner.elements)
    ds = FileDataset(fp, dataset, head[:128], file_meta, implicit, little)
    ds.set_original_encoding(implicit, little, dataset._character_set)
    fp.seek(pixel_start if pixel_start is not None else size)  # pydicom reads to the end
    return Header(ds, pixel_start, scanner.skipped, fast=True)


def _read_meta(window: _Window, size: int) -> tuple[FileMetaDataset, int]:
    """The File Meta group after the prefix, and where the data set starts.

    What pydicom's `_read_file_meta_info` returns, minus its recovery paths (a meta group in
    Implicit VR, odd VRs): those files go to pydicom.
    """
    scanner = _Scanner(window, size, implicit=False, little=True, keep_private=None)
    elements: dict[BaseTag, RawDataElement] = {}
    offset = 132
    while offset + 8 <= size:
        tag, vr, length, header = scanner.element_head(offset, implicit=False)
        if tag >> 16 != 2:
            break
        if vr is None or length == UNDEFINED_LENGTH:
            raise _Unusual("odd File Meta element")
        start = offset + header
        offset = start + length
        value = window.read(start, length) if length else _empty_value(vr)
        key = BaseTag(tag)
        elements[key] = RawDataElement(key, vr, length, value, start, False, True)
    file_meta = FileMetaDataset(elements)
    file_meta.set_original_encoding(False, True, default_encoding)
    return file_meta, offset


def _body_encoding(file_meta: FileMetaDataset) -> tuple[bool, bool]:
    """(implicit VR, little endian) of the data set, as pydicom's read_partial decides it."""
    raw = file_meta.get_item(0x00020010)
    if not isinstance(raw, RawDataElement) or raw.VR != "UI":
        raise _Unusual("no transfer syntax")
    syntax = (raw.value or b"").decode(default_encoding).rstrip("\0 ")  # as convert_UI
    if "\\" in syntax or syntax == DeflatedExplicitVRLittleEndian:
        raise _Unusual("odd transfer syntax, or a deflated data set")
    if syntax in PrivateTransferSyntaxes:
        raise _Unusual("private transfer syntax")
    if syntax == ImplicitVRLittleEndian:
        return True, True
    if syntax == ExplicitVRBigEndian:
        return False, False
    if syntax == ExplicitVRLittleEndian:
        return False, True
    return False, True  # encapsulated syntaxes are all Explicit VR Little Endian (PS3.5 A.4)


@cache
def _empty_values(none_for_text: bool) -> dict[str | None, bytes | None]:
    """pydicom's raw value for a zero-length element, per VR (it depends on one setting)."""
    return {vr: empty_value_for_VR(vr, raw=True) for vr in [None, *map(str, VR_)]}


def _empty_value(vr: str | None) -> bytes | None:
    return _empty_values(config.use_none_as_empty_text_VR_value)[vr]


class _Window:
    """Read-ahead over the file: the scan indexes bytes instead of calling read() per element."""

    __slots__ = ("base", "data", "fp")

    def __init__(self, fp: BinaryIO) -> None:
        self.fp = fp
        self.base = 0
        self.data = b""

    def ensure(self, offset: int, count: int) -> tuple[bytes, int, int]:
        """Hold file bytes [offset, offset + count) as far as the file has them."""
        if offset < self.base or offset + count > self.base + len(self.data):
            self.fp.seek(offset)
            self.data = self.fp.read(max(count, CHUNK))
            self.base = offset
        return self.data, self.base, len(self.data)

    def read(self, offset: int, count: int) -> bytes:
        """File bytes [offset, offset + count), short at the end of the file."""
        data, base, _ = self.ensure(offset, count)
        return data[offset - base : offset - base + count]

    def unpack(self, fmt: struct.Struct, offset: int) -> tuple:
        """Values at `offset`; _Unusual if the file ends first (pydicom would raise)."""
        data, base, size = self.ensure(offset, fmt.size)
        if offset - base + fmt.size > size:
            raise _Unusual("end of file inside a structure")
        return fmt.unpack_from(data, offset - base)


class _Scanner:
    """The hand-written element loop, for one data set's encoding."""

    def __init__(
        self,
        window: _Window,
        size: int,
        implicit: bool,
        little: bool,
        keep_private: KeepPrivate | None,
    ) -> None:
        self.window, self.fp, self.size = window, window.fp, size
        self.implicit, self.little = implicit, little
        self.keep_private = keep_private
        self.implicit_head, self.explicit_head, self.ulong = _STRUCTS[little]
        self.elements: dict[BaseTag, RawDataElement | DataElement] = {}
        self.creators: dict[int, str | None] = {}  # (group << 8 | block) -> creator or None
        self.skipped: set[tuple[int, str]] = set()

    def check_start(self, start: int) -> None:
        """The first element must be encoded as declared and not a command (group 0000).

        pydicom's `_is_implicit_vr` looks at the first element's VR bytes and, when they
        disagree with the transfer syntax, warns and reads the other way: pydicom does that.
        """
        if start + 8 > self.size:
            raise _Unusual("empty data set")
        group, _, _ = self.window.unpack(self.implicit_head, start)
        b0, b1 = self.window.unpack(_VR_BYTES, start)
        found_implicit = not (0x40 < b0 < 0x5B and 0x40 < b1 < 0x5B)
        if found_implicit != self.implicit or group == 0:
            raise _Unusual("body not encoded as declared, or a command set")

    def top_level(self, offset: int) -> int | None:
        """Scan into `self.elements` up to the first pixel element; its offset, or None.

        One function on purpose: this loop is the hot path (locals, and no call per element
        beyond unpacking and building it). Even groups cost one test for privacy; the pixel,
        order and delimiter tests share one comparison, as tags must ascend.
        """
        elements = self.elements
        implicit, little, size, window = self.implicit, self.little, self.size, self.window
        head = (self.implicit_head if implicit else self.explicit_head).unpack_from
        ulong, vr_info = self.ulong.unpack_from, _VR_INFO
        empty = _empty_values(config.use_none_as_empty_text_VR_value)
        keep, creators, skipped = self.keep_private, self.creators, self.skipped
        filtering = keep is not None
        data, base, held = window.ensure(offset, 12)
        previous = -1
        while offset + 8 <= size:
            p = offset - base
            if p + 12 > held:
                data, base, held = window.ensure(offset, 12)
                p = 0
            if implicit:
                group, elem, length = head(data, p)
                vr, header = None, 8
            else:
                group, elem, vr_bytes, length = head(data, p)
                vr, long = vr_info[vr_bytes]  # KeyError: unknown VR -> pydicom
                header = 8
                if long:
                    length = ulong(data, p + 8)[0]
                    header = 12
            tag = group << 16 | elem
            if tag <= previous or tag >= FIRST_PIXEL_TAG:
                if tag in PIXEL_TAGS:
                    return offset
                if tag <= previous or group == 0xFFFE:
                    raise _Unusual("tags out of order, repeated, or a delimiter at top level")
            previous = tag
            start = offset + header
            if length == UNDEFINED_LENGTH:
                offset = self._undefined_length(tag, vr, start)
                data, base, held = window.ensure(offset, 12)
                continue
            offset = start + length
            if group & 1 and filtering and elem >= 0x1000 and offset <= size:
                creator = creators.get(group << 8 | elem >> 8, _UNSEEN)
                if creator is _UNSEEN:
                    creator = self._creator(group, elem >> 8)
                if creator is None or not keep(group, creator, elem & 0xFF):  # as _wanted
                    skipped.add((group, creator or ""))
                    continue  # refused: not even built (a cut one is, see module docstring)
            p = start - base
            if offset - base > held:
                data, base, held = window.ensure(start, length)
                p = 0
            key = BaseTag(tag)
            elements[key] = _new_tuple(
                RawDataElement,
                (key, vr, length, data[p : p + length] if length else empty[vr],
                 start, implicit, little, True, False),
            )  # fmt: skip
        return None

    # -- private elements ---------------------------------------------------------------------
    def _wanted(self, group: int, elem: int) -> bool:
        """Ask keep_private about one data element; remember the blocks refused.

        `top_level` holds an inline copy of this, for speed.
        """
        creator = self._creator(group, elem >> 8)
        if creator is not None and self.keep_private(group, creator, elem & 0xFF):  # type: ignore[misc]
            return True
        self.skipped.add((group, creator or ""))
        return False

    def _creator(self, group: int, block: int) -> str | None:
        """The block's creator, read when first needed (tags ascend: it was scanned before)."""
        key = group << 8 | block
        if key not in self.creators:
            elem = self.elements.get(BaseTag(group << 16 | block))
            name = _plain_creator(elem) if isinstance(elem, RawDataElement) else None
            if name is None and elem is not None:
                name = creator_name(elem, self.encoding())
            self.creators[key] = name
        return self.creators[key]

    def encoding(self) -> str | MutableSequence[str]:
        """The character set as pydicom's element generator holds it at this point."""
        raw = self.elements.get(BaseTag(CHARSET_TAG))
        if not isinstance(raw, RawDataElement):
            return default_encoding
        return convert_encodings(convert_string(raw.value or b"", self.little))

    # -- undefined length -----------------------------------------------------------------------
    def _undefined_length(self, tag: int, vr: str | None, start: int) -> int:
        """A sequence of undefined length: pydicom builds it, or we skip it unbuilt."""
        if self._undefined_vr(tag, vr, start) != VR_.SQ:
            raise _Unusual("undefined-length value that is not a sequence")
        group, elem = tag >> 16, tag & 0xFFFF
        private_data = group & 1 and elem >= 0x1000 and self.keep_private is not None
        if private_data and not self._wanted(group, elem):
            return self._skip_sequence(start, self.implicit)
        self.fp.seek(start)
        seq = read_sequence(self.fp, self.implicit, self.little, UNDEFINED_LENGTH, self.encoding())
        key = BaseTag(tag)
        self.elements[key] = DataElement(key, VR_.SQ, seq, start, is_undefined_length=True)
        return self.fp.tell()

    def _undefined_vr(self, tag: int, vr: str | None, start: int) -> str | None:
        """The VR pydicom's generator settles on for an undefined-length element."""
        if vr == VR_.UN and config.settings.infer_sq_for_un_vr:
            return VR_.SQ
        if vr is None or (vr == VR_.UN and config.replace_un_with_known_vr):
            try:
                return _dictionary_vr_fast(tag)
            except KeyError:
                group, elem, _ = self.window.unpack(self.implicit_head, start)
                return VR_.SQ if (group << 16 | elem) == ITEM else vr
        return vr

    def _skip_sequence(self, offset: int, implicit: bool) -> int:
        """Where an undefined-length sequence ends, found without building it.

        Mirrors pydicom's read_sequence: items until the sequence delimiter; a defined-length
        item is skipped whole, an undefined-length one element by element (it may nest more
        undefined-length sequences). Anything pydicom would only warn about is _Unusual.
        """
        while True:
            group, elem, length = self.window.unpack(self.implicit_head, offset)
            offset += 8
            tag = group << 16 | elem
            if tag == SEQUENCE_DELIMITER:
                return offset
            if tag != ITEM:
                raise _Unusual("not an item inside a sequence")
            if length == UNDEFINED_LENGTH:
                offset = self._skip_item(offset, implicit)
            elif offset + length > self.size:
                raise _Unusual("end of file inside a sequence")
            else:
                offset += length

    def _skip_item(self, offset: int, implicit: bool) -> int:
        """Past the item delimiter of an undefined-length item that starts at `offset`."""
        if not implicit:  # items may switch to implicit VR (PS3.5 6.2.2), as pydicom allows
            b0, b1 = self.window.unpack(_VR_BYTES, offset)
            implicit = not (0x40 < b0 < 0x5B and 0x40 < b1 < 0x5B)
        while True:
            tag, vr, length, header = self.element_head(offset, implicit)
            if tag == ITEM_DELIMITER:
                return offset + 8
            start = offset + header
            if length != UNDEFINED_LENGTH:
                offset = start + length
                continue
            if self._undefined_vr(tag, vr, start) != VR_.SQ:
                raise _Unusual("undefined-length value that is not a sequence")
            offset = self._skip_sequence(start, implicit)

    def element_head(self, offset: int, implicit: bool) -> tuple[int, str | None, int, int]:
        """(tag, VR, length, header size) of the element at `offset`, as pydicom reads it."""
        if implicit:
            group, elem, length = self.window.unpack(self.implicit_head, offset)
            return group << 16 | elem, None, length, 8
        group, elem, vr_bytes, length = self.window.unpack(self.explicit_head, offset)
        tag = group << 16 | elem
        info = _VR_INFO.get(vr_bytes)
        if info is None:
            if b"AA" <= vr_bytes <= b"ZZ" or not config.assume_implicit_vr_switch:
                raise _Unusual("unknown VR")
            group, elem, length = self.window.unpack(self.implicit_head, offset)
            return tag, None, length, 8
        if info[1]:
            return tag, info[0], self.window.unpack(self.ulong, offset + 8)[0], 12
        return tag, info[0], length, 8


def creator_name(elem: RawDataElement | DataElement, encoding: str | MutableSequence[str]) -> str:
    """A private creator as the engine compares it: pydicom's decoded value, stripped.

    The engine reads creators as `str(value or "").strip()`; the same string comes out here.
    """
    if isinstance(elem, RawDataElement):
        name = _plain_creator(elem)
        if name is not None:
            return name
        elem = convert_raw_data_element(elem, encoding=encoding)
    return str(elem.value or "").strip()


def _plain_creator(raw: RawDataElement) -> str | None:
    """The creator without pydicom's conversion when that cannot change it, else None.

    Printable ASCII without a backslash decodes the same in every DICOM character set, and
    pydicom's `rstrip("\\0 ")` followed by `strip()` is then just `strip()`.
    """
    value = raw.value
    if raw.VR not in (None, "LO") or not isinstance(value, bytes) or not value.isascii():
        return None
    text = value.decode("ascii")
    return text.strip() if text.isprintable() and "\\" not in text else None


# -- the fallback -------------------------------------------------------------------------------


def _read_with_pydicom(fp: BinaryIO, keep_private: KeepPrivate | None) -> Header:
    """pydicom reads the file; refused private elements are then deleted."""
    fp.seek(0)
    ds = dcmread(fp, stop_before_pixels=True, force=True)
    end = fp.tell()
    little = ds.original_encoding[1] is not False
    tag_bytes = fp.read(4)
    fp.seek(end)
    pixel_start = None
    if len(tag_bytes) == 4:
        group, elem = struct.unpack("<HH" if little else ">HH", tag_bytes)
        if (group << 16 | elem) in PIXEL_TAGS:
            pixel_start = end
    skipped = _drop_private(ds, keep_private) if keep_private is not None else set()
    return Header(ds, pixel_start, skipped, fast=False)


def _drop_private(ds: Dataset, keep_private: KeepPrivate) -> set[tuple[int, str]]:
    """Delete the top-level private data elements `keep_private` refuses (fast-path rules)."""
    creators: dict[int, str] = {}
    skipped: set[tuple[int, str]] = set()
    encoding = ds.original_character_set
    for tag in sorted(ds.keys()):
        group, elem = tag.group, tag.element
        if not group & 1:
            continue
        if 0x10 <= elem <= 0xFF:
            creators[group << 8 | elem] = creator_name(ds.get_item(tag), encoding)
        elif elem >= 0x1000 and not _is_cut(ds.get_item(tag)):
            creator = creators.get(group << 8 | elem >> 8)
            if creator is None or not keep_private(group, creator, elem & 0xFF):
                skipped.add((group, creator or ""))
                del ds[tag]
    return skipped


def _is_cut(elem: RawDataElement | DataElement) -> bool:
    """An element the end of the file cut short: kept, so the caller sees the short value."""
    return (
        isinstance(elem, RawDataElement)
        and elem.value is not None
        and elem.length != UNDEFINED_LENGTH
        and len(elem.value) < elem.length
    )
