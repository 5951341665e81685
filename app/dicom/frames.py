"""Frames of stored pixel data, located by byte ranges: a frame is read without the rest.

WADO-RS frame retrieval (PS3.18 10.4) and rendering need one frame of an instance that may
hold hundreds. The store keeps `header_length` (the bytes before the pixel data element) for
every instance, so the pixel data element is found without reading it, and then:

- native pixel data: frame `n` is the byte range `[start + (n-1)·L, start + n·L)` with
  `L = rows · columns · samples · bits_allocated / 8`. With 1 bit allocated the frames are
  packed bit streams; they start on a byte only when `rows · columns · samples` is a multiple
  of 8 (then the same formula holds), otherwise FrameError says so;
- encapsulated pixel data (PS3.5 A.4): the item headers are read by range, never the
  fragments' bodies. Frames come from the Extended Offset Table when the header has one, else
  from the Basic Offset Table, else one frame per fragment when the counts agree, else by
  the start-of-codestream marker each frame's first fragment begins with (JPEG SOI, JPEG 2000
  SOC or JP2 signature), as pydicom's `generate_frames` does.

pydicom's `pydicom.encaps.generate_frames` does the encapsulated part too, but it needs the
whole pixel data element in a buffer; here only the 8-byte item headers (plus a few bytes
of look-ahead) are fetched, which is what makes frame retrieval from S3 cheap.
Nothing here imports FastAPI: the routers and the renderer use it the same way.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import get_decoder
from pydicom.uid import DeflatedExplicitVRLittleEndian

from app.dicom.part10 import ITEM, SEQUENCE_DELIMITER, UNDEFINED_LENGTH
from app.dicom.scan import read_header

ReadRange = Callable[[int, int], bytes]  # [start, end) of the blob, shorter at its end

PIXEL_TAGS = {0x7FE00008: "OF", 0x7FE00009: "OD", 0x7FE00010: "OW"}  # their implicit VR
_LOOKAHEAD = 64 * 1024  # item headers close together (small fragments) cost one read
_EXPLICIT_HEADER = 12  # tag, VR, 2 reserved bytes, 4-byte length (OB/OW/OF/OD)
_IMPLICIT_HEADER = 8  # tag, 4-byte length
# What `read_instance_header` reads past the header: the pixel data element's own header.
PIXEL_ELEMENT_HEADER = _EXPLICIT_HEADER


class FrameError(ValueError):
    """The frames cannot be located as asked; the message says why, never quoting a value."""


class FrameNotFound(FrameError):
    """A frame number beyond the instance's frames (or an instance without pixel data)."""


@dataclass(frozen=True)
class PixelLayout:
    """Where an instance's top-level pixel data is and how its frames are encoded."""

    transfer_syntax: str
    rows: int
    columns: int
    samples: int
    bits_allocated: int
    frames: int
    tag: int
    vr: str
    value_start: int  # offset of the element's value in the blob
    value_length: int | None  # None: undefined length (encapsulated)
    little_endian: bool

    @property
    def encapsulated(self) -> bool:
        return self.value_length is None

    @property
    def frame_length(self) -> int:
        """Bytes per native frame; FrameError when frames are not byte aligned (1 bit)."""
        bits = self.rows * self.columns * self.samples * self.bits_allocated
        if bits % 8:
            raise FrameError(
                "frames of 1-bit pixel data that do not start on a byte boundary are not "
                "available one by one; retrieve the instance or the pixel data bulk instead"
            )
        return bits // 8

    @property
    def swap_word(self) -> int:
        """Bytes per unit to swap for little endian output (1: already little endian)."""
        return 1 if self.little_endian else big_endian_word(self.vr, self.bits_allocated)


@dataclass(frozen=True)
class Header:
    """The stored instance's data set without pixel data, and its pixel layout (if any)."""

    dataset: Dataset
    layout: PixelLayout | None


def _int(ds: Dataset, keyword: str, default: int) -> int:
    try:
        value = ds.get(keyword)
        return int(value) if value not in (None, "") else default
    except (TypeError, ValueError):
        return default


def read_instance_header(read: ReadRange, header_length: int, size: int, ts: str) -> Header:
    """Parse the header (`header_length` bytes) and the pixel data element header after it.

    Deflated instances have no pixel offset (the data set is compressed as a whole): they
    come back without a layout, and callers read them whole (they are small and rare).
    """
    if ts == DeflatedExplicitVRLittleEndian:
        with io.BytesIO(read(0, size)) as whole:
            return Header(dcmread(whole, force=True), None)
    data = read(0, min(size, header_length + PIXEL_ELEMENT_HEADER))
    header = read_header(io.BytesIO(data))
    ds = header.dataset
    if header.pixel_start is None or header.pixel_start != header_length:
        return Header(ds, None)
    implicit, little = ds.original_encoding
    layout = _layout(ds, data, header_length, ts, bool(implicit), little is not False)
    return Header(ds, layout)


def _layout(
    ds: Dataset, data: bytes, start: int, ts: str, implicit: bool, little: bool
) -> PixelLayout | None:
    head = data[start:]
    order = "<" if little else ">"
    if len(head) < (_IMPLICIT_HEADER if implicit else _EXPLICIT_HEADER):
        return None
    group, element = struct.unpack_from(order + "HH", head)
    tag = group << 16 | element
    if tag not in PIXEL_TAGS:
        return None
    if implicit:
        (length,) = struct.unpack_from(order + "L", head, 4)
        vr, header_size = PIXEL_TAGS[tag], _IMPLICIT_HEADER
    else:
        vr = head[4:6].decode("ascii", "replace")
        (length,) = struct.unpack_from(order + "L", head, 8)
        header_size = _EXPLICIT_HEADER
    return PixelLayout(
        transfer_syntax=ts,
        rows=_int(ds, "Rows", 0),
        columns=_int(ds, "Columns", 0),
        samples=_int(ds, "SamplesPerPixel", 1),
        bits_allocated=_int(ds, "BitsAllocated", 8 if tag == 0x7FE00010 else 32),
        frames=max(1, _int(ds, "NumberOfFrames", 1)),
        tag=tag,
        vr=vr,
        value_start=start + header_size,
        value_length=None if length == UNDEFINED_LENGTH else length,
        little_endian=little,
    )


# --- frame numbers ----------------------------------------------------------------------------


def parse_frame_list(text: str, limit: int = 10_000) -> list[int]:
    """A `{frameList}` path segment: comma-separated positive integers, no duplicates.

    ValueError (its message safe to return) for anything else; order is kept as asked.
    """
    items = text.split(",")
    if not text or len(items) > limit:
        raise ValueError(f"a frame list holds 1 to {limit} frame numbers")
    numbers: list[int] = []
    for item in items:
        item = item.strip()
        if not item.isascii() or not item.isdigit() or len(item) > 9 or int(item) < 1:
            raise ValueError("frame numbers are positive integers separated by commas")
        numbers.append(int(item))
    if len(set(numbers)) != len(numbers):
        raise ValueError("a frame number is repeated in the frame list")
    return numbers


def check_frames(layout: PixelLayout, numbers: list[int]) -> None:
    if any(n > layout.frames for n in numbers):
        raise FrameNotFound("a frame number exceeds the instance's number of frames")


# --- native ------------------------------------------------------------------------------------


def native_frame_range(layout: PixelLayout, number: int) -> tuple[int, int]:
    """The blob byte range of native frame `number` (1-based)."""
    check_frames(layout, [number])
    length = layout.frame_length
    start = layout.value_start + (number - 1) * length
    if layout.value_length is not None and (number * length) > layout.value_length:
        raise FrameNotFound("the pixel data is shorter than its frames")
    return start, start + length


# --- encapsulated ------------------------------------------------------------------------------


class _Items:
    """Item headers of an encapsulated pixel data element, read by range with look-ahead."""

    def __init__(self, read: ReadRange, limit: int) -> None:
        self._read = read
        self._limit = limit
        self._block_start = 0
        self._block = b""

    def peek(self, offset: int, count: int) -> bytes:
        end = offset + count
        if not (self._block_start <= offset and end <= self._block_start + len(self._block)):
            self._block_start = offset
            self._block = self._read(offset, min(self._limit, offset + _LOOKAHEAD))
        return self._block[offset - self._block_start : end - self._block_start]

    def item(self, offset: int) -> tuple[int, int]:
        """(tag, length) of the item header at `offset`."""
        head = self.peek(offset, 8)
        if len(head) < 8:
            raise FrameError("the encapsulated pixel data is truncated")
        group, element, length = struct.unpack("<HHL", head)
        return group << 16 | element, length


def _fragments(items: _Items, offset: int, stop: int | None) -> list[tuple[int, int]]:
    """Fragment value ranges from the item at `offset` up to `stop` or the delimiter."""
    found: list[tuple[int, int]] = []
    while stop is None or offset < stop:
        tag, length = items.item(offset)
        if tag == SEQUENCE_DELIMITER:
            break
        if tag != ITEM or length == UNDEFINED_LENGTH:
            raise FrameError("the encapsulated pixel data is malformed")
        found.append((offset + 8, offset + 8 + length))
        offset += 8 + length
    return found


_FRAME_STARTS = (b"\xff\xd8", b"\xff\x4f\xff\x51", b"\x00\x00\x00\x0cjP  ")


def _starts_frame(items: _Items, fragment: tuple[int, int]) -> bool:
    head = items.peek(fragment[0], 12)
    return any(head.startswith(marker) for marker in _FRAME_STARTS)


def encapsulated_frames(
    read: ReadRange, layout: PixelLayout, ds: Dataset, size: int, numbers: list[int]
) -> dict[int, list[tuple[int, int]]]:
    """The fragment value ranges of each frame in `numbers`: {frame number: ranges}."""
    check_frames(layout, numbers)
    items = _Items(read, size)
    tag, bot_length = items.item(layout.value_start)
    if tag != ITEM:
        raise FrameError("the encapsulated pixel data has no offset table item")
    first = layout.value_start + 8 + bot_length
    extended = _extended_offsets(ds, layout.frames)
    if extended is not None:
        return {n: [(first + extended[n - 1][0] + 8, first + sum(extended[n - 1]) + 8)]
                for n in numbers}  # fmt: skip
    bot = _basic_offsets(items, layout.value_start + 8, bot_length)
    if len(bot) == layout.frames and bot[0] == 0 and layout.frames > 1:
        starts = [first + offset for offset in bot]
        return {
            n: _fragments(items, starts[n - 1], starts[n] if n < len(starts) else None)
            for n in numbers
        }
    fragments = _fragments(items, first, None)
    if layout.frames == 1:
        grouped = [fragments]
    elif len(fragments) == layout.frames:
        grouped = [[fragment] for fragment in fragments]
    else:
        grouped = []
        for fragment in fragments:
            if not grouped or _starts_frame(items, fragment):
                grouped.append([])
            grouped[-1].append(fragment)
        if len(grouped) != layout.frames:
            raise FrameError("the frames of this encapsulated pixel data cannot be delimited")
    if not grouped or not grouped[0]:
        raise FrameNotFound("the encapsulated pixel data holds no fragment")
    return {n: grouped[n - 1] for n in numbers}


def _basic_offsets(items: _Items, start: int, length: int) -> list[int]:
    if not length:
        return []
    if length % 4:
        raise FrameError("the basic offset table is malformed")
    data = b"".join(
        items.peek(offset, min(4096, start + length - offset))
        for offset in range(start, start + length, 4096)
    )
    return list(struct.unpack(f"<{length // 4}L", data))


def _extended_offsets(ds: Dataset, frames: int) -> list[tuple[int, int]] | None:
    """(offset, length) per frame from the Extended Offset Table, when it is usable."""
    offsets, lengths = ds.get((0x7FE0, 0x0001)), ds.get((0x7FE0, 0x0002))
    if offsets is None or lengths is None:
        return None
    raw_offsets, raw_lengths = offsets.value, lengths.value
    if not isinstance(raw_offsets, bytes) or not isinstance(raw_lengths, bytes):
        return None
    if len(raw_offsets) != 8 * frames or len(raw_lengths) != 8 * frames:
        return None
    return list(
        zip(
            struct.unpack(f"<{frames}Q", raw_offsets),
            struct.unpack(f"<{frames}Q", raw_lengths),
            strict=True,
        )
    )


def read_frame(read: ReadRange, ranges: list[tuple[int, int]]) -> bytes:
    """One frame's bytes: its fragments' values joined (one frame in memory at a time)."""
    return b"".join(read(start, end) for start, end in ranges)


# --- decoding ----------------------------------------------------------------------------------

_PIXEL_KEYWORDS = {0x7FE00010: "PixelData", 0x7FE00008: "FloatPixelData",
                   0x7FE00009: "DoubleFloatPixelData"}  # fmt: skip
_IMAGE_PIXEL = ("Rows", "Columns", "SamplesPerPixel", "BitsAllocated", "BitsStored",
                "HighBit", "PixelRepresentation", "PhotometricInterpretation",
                "PlanarConfiguration")  # fmt: skip


class DecodeError(FrameError):
    """The frame cannot be decoded here: no decoder for its syntax, or corrupt data."""


def can_decode(transfer_syntax: str) -> bool:
    """Whether an installed plugin (pydicom, pylibjpeg, Pillow) decodes this syntax."""
    try:
        return bool(get_decoder(transfer_syntax).is_available)
    except (NotImplementedError, ValueError):
        return False


def decode_frame(ds: Dataset, layout: PixelLayout, frame: bytes) -> tuple[np.ndarray, str]:
    """One frame as an array (colour as RGB), and its photometric interpretation after that.

    A one-frame data set is built around the frame's bytes, so pydicom decodes exactly this
    frame and never sees (or needs) the others.
    """
    if not can_decode(layout.transfer_syntax):
        raise DecodeError("no decoder is installed for the instance's transfer syntax")
    single = Dataset()
    for keyword in _IMAGE_PIXEL:
        if keyword in ds:
            setattr(single, keyword, ds.data_element(keyword).value)
    single.NumberOfFrames = 1
    single.file_meta = FileMetaDataset()
    single.file_meta.TransferSyntaxUID = layout.transfer_syntax
    value = encapsulate([frame]) if layout.encapsulated else frame
    setattr(single, _PIXEL_KEYWORDS[layout.tag], value)
    if layout.tag == 0x7FE00010 and not layout.encapsulated:
        single["PixelData"].VR = "OB" if layout.bits_allocated <= 8 else "OW"
    try:
        array, meta = get_decoder(layout.transfer_syntax).as_array(single, as_rgb=True)
    except Exception as exc:  # decoders raise anything on corrupt data: re-raised as ours
        raise DecodeError("the frame's pixel data could not be decoded") from exc
    photometric = str(
        meta.get("photometric_interpretation")
        or single.get("PhotometricInterpretation", "MONOCHROME2")
    )
    return array, photometric


_VR_WORD = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}


def big_endian_word(vr: str, bits_allocated: int = 16) -> int:
    """Bytes per unit to swap when a big endian value goes out in little endian.

    The VR decides, not the pixel size: OW is 16-bit words even for 8-bit pixels (pydicom's
    OBXXXX1A_expb.dcm), OB is bytes. Pixel data of 32 or 64 bits in OW swaps per pixel.
    """
    if vr == "OW" and bits_allocated > 16:
        return bits_allocated // 8
    return _VR_WORD.get(vr, 1)


def to_little_endian(data: bytes, word: int) -> bytes:
    """Big endian `word`-byte units in little endian order; an odd tail is left as it is
    (values have even lengths; callers read in chunks that are multiples of 8)."""
    if word < 2:
        return data
    whole = len(data) - len(data) % word
    view = memoryview(data).cast("B")
    out = bytearray(data)
    for i in range(word):
        out[i:whole:word] = view[word - 1 - i : whole : word]
    return bytes(out)


def native_bytes(array: np.ndarray, bits_allocated: int) -> bytes:
    """A decoded frame as native Explicit VR Little Endian pixel bytes."""
    if bits_allocated == 1:
        from pydicom.pixels import pack_bits

        return pack_bits(array, pad=False)
    size = max(1, bits_allocated // 8)
    kind = array.dtype.kind if array.dtype.kind in "iuf" else "u"
    if kind != "f" and array.dtype.itemsize != size:
        array = array.astype(f"{kind}{size}")
    return array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
