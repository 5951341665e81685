"""Part 10 files written fast: header elements spliced as bytes, pixel data copied by range.

pydicom decodes and re-encodes well, but going through its writer costs about a millisecond
per CT header (per-element dispatch, file-meta validation). Here, elements that were not
changed are written back from their raw bytes, only changed ones go through pydicom's
`write_data_element`, and the pixel data is copied by range without being parsed
(`write_spliced`: to the disk past the page cache where it can, else `copy_file_range`).
The output is byte-for-byte what pydicom's writer produces for the same dataset
(tests/test_part10.py checks it on every packaged file, before and after pseudonymization).
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import struct
import threading
from collections.abc import Iterator
from typing import BinaryIO

from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element

LONG_LENGTH_VRS = frozenset(
    {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}
)
PIXEL_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})
ITEM, SEQUENCE_DELIMITER, TRAILING_PADDING = 0xFFFEE000, 0xFFFEE0DD, 0xFFFCFFFC
UNDEFINED_LENGTH = 0xFFFFFFFF
READ_CHUNK = 1 << 20  # bytes read at a time when pixel data goes through Python
_VR_BYTES = frozenset(
    v.encode()
    for v in LONG_LENGTH_VRS
    | {"AE", "AS", "AT", "CS", "DA", "DS", "DT", "FL", "FD", "IS", "LO", "LT"}
    | {"PN", "SH", "SL", "SS", "ST", "TM", "UI", "UL", "US"}
)


_SEQUENCE_END = {  # the Sequence Delimitation Item, by byte order (little endian or not)
    little: struct.pack("<HHL" if little else ">HHL", *divmod(SEQUENCE_DELIMITER, 0x10000), 0)
    for little in (True, False)
}


class TruncatedData(ValueError):
    """The file ends before the data it declares; carries no value."""


def _element_header(tag: int, vr: str, length: int, implicit: bool, little: bool) -> bytes:
    e = "<" if little else ">"
    if implicit:
        return struct.pack(e + "HHL", tag >> 16, tag & 0xFFFF, length)
    if vr in LONG_LENGTH_VRS:
        return struct.pack(e + "HH2s2xL", tag >> 16, tag & 0xFFFF, vr.encode(), length)
    return struct.pack(e + "HH2sH", tag >> 16, tag & 0xFFFF, vr.encode(), length)


def _ui_value(uid: str) -> bytes:
    raw = uid.encode("ascii")
    return raw + b"\0" if len(raw) % 2 else raw


def encode_file_meta(
    sop_class_uid: str,
    sop_instance_uid: str,
    transfer_syntax: str,
    implementation_class_uid: str,
    implementation_version: str,
) -> bytes:
    """The File Meta Information group (PS3.10 7.1), always Explicit VR Little Endian."""
    version = implementation_version.encode("ascii")
    version += b" " * (len(version) % 2)
    body = b"".join(
        _element_header(tag, vr, len(value), False, True) + value
        for tag, vr, value in (
            (0x00020001, "OB", b"\x00\x01"),
            (0x00020002, "UI", _ui_value(sop_class_uid)),
            (0x00020003, "UI", _ui_value(sop_instance_uid)),
            (0x00020010, "UI", _ui_value(transfer_syntax)),
            (0x00020012, "UI", _ui_value(implementation_class_uid)),
            (0x00020013, "SH", version),
        )
    )
    return _element_header(0x00020000, "UL", 4, False, True) + struct.pack("<L", len(body)) + body


def encode_dataset(ds: Dataset, implicit: bool, little: bool) -> bytes:
    """Encode `ds` in tag order; raw elements in the same encoding are copied as they are."""
    charset = ds.get("SpecificCharacterSet", "iso8859")
    parts: list[bytes] = []
    changed: DicomBytesIO | None = None
    # Dataset._dict is pydicom's element store (pinned version, checked by the tests that
    # compare our bytes with pydicom's): reading it directly skips a Tag() per element.
    elements = ds._dict
    for tag in sorted(elements, key=int):
        if tag.element == 0 and tag.group > 6:
            continue  # group lengths are retired (PS3.5 7.2); pydicom drops them too
        elem = elements[tag]
        if (
            isinstance(elem, RawDataElement)
            and elem.is_implicit_VR == implicit
            and elem.is_little_endian == little
            and (elem.length != UNDEFINED_LENGTH or _is_whole_sequence(elem.value, little))
            and (implicit or (elem.VR and elem.VR != "UN"))  # pydicom writes UN as the known VR
            and not elem.is_buffered
        ):
            value = elem.value or b""
            length = len(value) if elem.length != UNDEFINED_LENGTH else UNDEFINED_LENGTH
            parts.append(_element_header(tag, elem.VR or "", length, implicit, little))
            parts.append(value)
            continue
        if changed is None:
            changed = DicomBytesIO()
            changed.is_implicit_VR, changed.is_little_endian = implicit, little
        start = changed.tell()
        write_data_element(changed, ds[tag], charset)
        parts.append(changed.getvalue()[start:])
    return b"".join(parts)


def raw_element(
    elem: DataElement, implicit: bool, little: bool, charset: str | list[str] | None = None
) -> RawDataElement:
    """Encode once, reuse many times: the element as `encode_dataset` writes it, kept raw.

    A sequence of undefined length keeps it: its value then ends with the sequence
    delimitation item, and `encode_dataset` copies it back as it is.
    """
    buffer = DicomBytesIO()
    buffer.is_implicit_VR, buffer.is_little_endian = implicit, little
    write_data_element(buffer, elem, charset)
    data = buffer.getvalue()
    head = 8 if implicit or elem.VR not in LONG_LENGTH_VRS else 12
    undefined = data[head - 4 : head] == b"\xff\xff\xff\xff" and _is_whole_sequence(data, little)
    return RawDataElement(elem.tag, None if implicit else elem.VR,
                          UNDEFINED_LENGTH if undefined else len(data) - head,
                          data[head:], 0, implicit, little)  # fmt: skip


def _is_whole_sequence(value: bytes | None, little: bool) -> bool:
    """Whether an undefined-length value holds its items through the delimitation item."""
    return bool(value) and value.endswith(_SEQUENCE_END[little])


def _read_tag(fp: BinaryIO, little: bool) -> int | None:
    raw = fp.read(4)
    if len(raw) < 4:
        return None
    group, element = struct.unpack("<HH" if little else ">HH", raw)
    return (group << 16) | element


def _skip_element(fp: BinaryIO, size: int, little: bool, implicit: bool) -> bool:
    """Skip one element whose tag was just read; False if it is not encoded as declared.

    Some files declare Explicit VR in their meta yet hold Implicit VR (pydicom reads them
    anyway): their pixel element must not be copied under a header written as declared.
    """
    e = "<" if little else ">"
    head = fp.read(2)
    if (head in _VR_BYTES) == implicit:
        return False
    if implicit:
        (length,) = struct.unpack(e + "L", head + fp.read(2))
    elif head.decode("ascii") in LONG_LENGTH_VRS:
        fp.read(2)
        (length,) = struct.unpack(e + "L", fp.read(4))
    else:
        (length,) = struct.unpack(e + "H", fp.read(2))
    if length != UNDEFINED_LENGTH:
        if fp.tell() + length > size:
            raise TruncatedData("truncated pixel data")
        fp.seek(length, os.SEEK_CUR)
        return True
    while True:  # encapsulated: items until the sequence delimiter
        tag = _read_tag(fp, little)
        if tag is None:
            raise TruncatedData("truncated pixel data")
        (length,) = struct.unpack(e + "L", fp.read(4))
        if tag == SEQUENCE_DELIMITER:
            return True
        if tag != ITEM or fp.tell() + length > size:
            raise TruncatedData("malformed or truncated encapsulated pixel data")
        fp.seek(length, os.SEEK_CUR)


def pixel_data_end(fp: BinaryIO, start: int, size: int, little: bool, implicit: bool) -> int | None:
    """Where the pixel data elements that start at `start` end, if they can be streamed.

    None when anything but pixel data follows, or when the encoding is not the declared one.
    A Data Set Trailing Padding element at the very end is allowed and left behind: its bytes
    have no meaning and may hold leftovers.
    """
    fp.seek(start)
    end = start
    while end < size:
        tag = _read_tag(fp, little)
        if tag == TRAILING_PADDING:
            return end
        if tag not in PIXEL_TAGS:
            return None
        try:
            if not _skip_element(fp, size, little, implicit):
                return None
        except struct.error as exc:
            raise TruncatedData("truncated pixel data") from exc
        end = fp.tell()
    return end


def write_all(fd: int, data: bytes) -> None:
    """os.write until every byte is written (a write may take only part of them)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def copy_range(src_fd: int, dst_fd: int, start: int, end: int) -> None:
    """Append src[start:end] to dst (file descriptors), in the kernel where it can: no copy
    through Python, and the GIL is released for the whole copy."""
    offset = start
    try:
        while offset < end:
            sent = os.copy_file_range(src_fd, dst_fd, end - offset, offset)
            if sent == 0:
                raise TruncatedData("truncated pixel data")
            offset += sent
    except (AttributeError, OSError):  # another OS or file system: through a buffer
        for chunk in pread_chunks(src_fd, offset, end):
            write_all(dst_fd, chunk)


def pread_chunks(fd: int, start: int, end: int, size: int = READ_CHUNK) -> Iterator[bytes]:
    """The file's bytes [start, end), `size` at most at a time (`os.pread`: the file
    position is left alone). TruncatedData if the file ends first."""
    while start < end:
        chunk = os.pread(fd, min(size, end - start), start)
        if not chunk:
            raise TruncatedData("truncated pixel data")
        yield chunk
        start += len(chunk)


# Outputs written past the page cache (O_DIRECT) go through one aligned buffer per thread.
# Direct I/O wants the buffer, the file offset and the length aligned to the device's logical
# block: 4 KiB covers 512-byte and 4 KiB blocks.
DIRECT_ALIGN = 4096
DIRECT_CHUNK = 1 << 20  # a multiple of DIRECT_ALIGN
_direct_buffers = threading.local()


def _set_direct(fd: int, on: bool) -> bool:
    """Turn O_DIRECT on or off for an open file; False where the OS or file system refuses."""
    flag = getattr(os, "O_DIRECT", 0)
    if not flag:
        return False
    try:
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, flags | flag if on else flags & ~flag)
    except OSError:
        return False
    return True


class _DirectWriter:
    """Fills this thread's aligned buffer and writes it a MiB at a time with O_DIRECT; the
    last partial block goes through the page cache. Falls back to plain writes (same
    offsets) if the file system takes the flag but then refuses the first write."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.direct = True
        self.position = 0  # bytes of the file written
        self.filled = 0  # bytes waiting in the buffer
        self.buffer: memoryview = getattr(_direct_buffers, "view", None) or memoryview(
            mmap.mmap(-1, DIRECT_CHUNK)  # mmap memory is page-aligned
        )
        _direct_buffers.view = self.buffer

    def room(self, at_most: int) -> memoryview:
        return self.buffer[self.filled : self.filled + min(at_most, DIRECT_CHUNK - self.filled)]

    def advance(self, count: int) -> None:
        self.filled += count
        if self.filled == DIRECT_CHUNK:
            self._write(self.buffer)
            self.filled = 0

    def add(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            room = self.room(len(view))
            room[:] = view[: len(room)]
            view = view[len(room) :]
            self.advance(len(room))

    def finish(self) -> None:
        aligned = self.filled - self.filled % DIRECT_ALIGN
        self._write(self.buffer[:aligned])
        if self.direct:
            self.direct = False
            _set_direct(self.fd, False)
        self._write(self.buffer[aligned : self.filled])
        self.filled = 0

    def _write(self, view: memoryview) -> None:
        while view:
            try:
                count = os.pwrite(self.fd, view, self.position)
            except OSError as exc:
                if not (self.direct and exc.errno == errno.EINVAL):
                    raise
                self.direct = False
                if not _set_direct(self.fd, False):
                    raise
                continue
            self.position += count
            view = view[count:]


def write_spliced(
    dst_fd: int, head: bytes, src_fd: int, start: int, end: int, *, direct: bool = False
) -> None:
    """Write `head` then src[start:end] into `dst_fd`, a new and empty file.

    With `direct`, for files nobody reads back soon (a batch's outputs), the bytes go to
    the disk past the page cache (O_DIRECT) where the file system allows it: copying every
    output into fresh page-cache pages is most of the kernel's time in a batch (on a
    virtual machine each fresh page also faults in the host). Otherwise, and where
    O_DIRECT is refused, `write_all` then `copy_range`.
    Raises TruncatedData if the source ends before `end` (the caller deletes the file).
    """
    if not (direct and _set_direct(dst_fd, True)):
        write_all(dst_fd, head)
        copy_range(src_fd, dst_fd, start, end)
        return
    writer = _DirectWriter(dst_fd)
    writer.add(head)
    offset = start
    while offset < end:
        count = os.preadv(src_fd, [writer.room(end - offset)], offset)
        if count == 0:
            raise TruncatedData("truncated pixel data")
        offset += count
        writer.advance(count)
    writer.finish()
