"""Part 10 files in and out: parse the header, stream the pixel bytes, write atomically.

Pixel data is never parsed (DESIGN decision 4): the header is read up to the pixel element,
pseudonymized, written, and the rest of the source file is copied byte for byte. So MD5 of the
pixel data is unchanged, lossy re-encoding cannot happen, and a large multi-frame object costs
no more memory than its header.
"""

from __future__ import annotations

import os
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.filebase import DicomFileLike
from pydicom.filewriter import dcmwrite, write_dataset, write_file_meta_info
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from app import __version__
from app.pseudo.engine import DeidentificationError, Deidentifier, InstanceResult

PIXEL_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})
_LONG_VRS = {
    b"OB",
    b"OD",
    b"OF",
    b"OL",
    b"OV",
    b"OW",
    b"SQ",
    b"UC",
    b"UN",
    b"UR",
    b"UT",
    b"SV",
    b"UV",
}
_ALL_VRS = _LONG_VRS | {
    b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT",
    b"PN", b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US",
}  # fmt: skip
_ITEM, _SEQ_DELIM, _TRAILING_PADDING = 0xFFFEE000, 0xFFFEE0DD, 0xFFFCFFFC
# Our implementation's identity in every file meta we write (PS3.7 D.3.3.2).
IMPLEMENTATION_CLASS_UID = "2.25.197004375934389146542297316516418356237"
IMPLEMENTATION_VERSION = f"DEPOT_{__version__}"[:16]


class UnreadableInput(ValueError):
    """The input is not a DICOM instance we can process; the message names the reason only."""


@dataclass
class _Source:
    dataset: Dataset
    transfer_syntax: str
    tail: tuple[int, int] | None = None  # byte range of the pixel data, when streamed


def _read_tag(fp: BinaryIO, little: bool) -> int | None:
    raw = fp.read(4)
    if len(raw) < 4:
        return None
    group, element = struct.unpack("<HH" if little else ">HH", raw)
    return (group << 16) | element


def _skip_element(fp: BinaryIO, size: int, little: bool, implicit: bool) -> bool:
    """Skip one element whose tag was just read; False if it is not encoded as expected.

    Some files say Explicit VR in their meta but hold Implicit VR (pydicom reads them anyway):
    their pixel element must not be copied under a header written in the declared syntax.
    """
    end = "<" if little else ">"
    head = fp.read(2)
    if (head in _ALL_VRS) == implicit:
        return False
    if implicit:
        (length,) = struct.unpack(end + "L", head + fp.read(2))
    elif head in _LONG_VRS:
        fp.read(2)
        (length,) = struct.unpack(end + "L", fp.read(4))
    else:
        (length,) = struct.unpack(end + "H", fp.read(2))
    if length != 0xFFFFFFFF:
        if fp.tell() + length > size:
            raise UnreadableInput("truncated pixel data")
        fp.seek(length, os.SEEK_CUR)
        return True
    while True:  # encapsulated: items until the sequence delimiter
        tag = _read_tag(fp, little)
        if tag is None:
            raise UnreadableInput("truncated pixel data")
        (length,) = struct.unpack(end + "L", fp.read(4))
        if tag == _SEQ_DELIM:
            return True
        if tag != _ITEM or fp.tell() + length > size:
            raise UnreadableInput("malformed or truncated encapsulated pixel data")
        fp.seek(length, os.SEEK_CUR)


def _pixel_tail_end(
    fp: BinaryIO, start: int, size: int, little: bool, implicit: bool
) -> int | None:
    """Where the pixel data elements that start at `start` end, if they can be streamed.

    None when anything but pixel data follows, or when the encoding is not the declared one.
    A Data Set Trailing Padding element at the very end is allowed: it is left behind, since
    its bytes have no meaning and may hold leftovers.
    """
    fp.seek(start)
    end = start
    while end < size:
        tag = _read_tag(fp, little)
        if tag == _TRAILING_PADDING:
            return end
        if tag not in PIXEL_TAGS:
            return None
        try:
            if not _skip_element(fp, size, little, implicit):
                return None
        except struct.error as exc:
            raise UnreadableInput("truncated pixel data") from exc
        end = fp.tell()
    return end


def _transfer_syntax(ds: Dataset) -> str:
    meta_ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if meta_ts:
        return str(meta_ts)
    implicit, little = ds.original_encoding
    if implicit:
        return ImplicitVRLittleEndian
    return ExplicitVRLittleEndian if little else ExplicitVRBigEndian


def read_source(path: Path, fp: BinaryIO) -> _Source:
    """Read the header (up to the pixel data) and tell whether the rest can be streamed."""
    size = os.fstat(fp.fileno()).st_size
    try:
        ds = dcmread(fp, stop_before_pixels=True, force=True)
    except (InvalidDicomError, EOFError, struct.error, ValueError, KeyError, OSError) as exc:
        raise UnreadableInput(f"not a readable DICOM file ({type(exc).__name__})") from exc
    if not len(ds):
        raise UnreadableInput("not a DICOM file")
    ts = _transfer_syntax(ds)
    implicit, little = ds.original_encoding
    if implicit is None:
        raise UnreadableInput("not a DICOM file")
    start = fp.tell()
    if ts == DeflatedExplicitVRLittleEndian:
        return _source_whole(path, ts)  # a deflated data set cannot be streamed
    if start >= size:
        return _Source(ds, ts)  # no pixel data: nothing to stream
    end = _pixel_tail_end(fp, start, size, little, implicit)
    if end is not None:
        return _Source(ds, ts, (start, end))
    return _source_whole(path, ts)


def _source_whole(path: Path, ts: str) -> _Source:
    """Something other than pixel data follows it: read everything (rare, small files)."""
    try:
        ds = dcmread(path, force=True)
        # Decode every element now: truncation surfaces here rather than at write time, and
        # files whose meta says Explicit VR over an Implicit VR body get their VRs looked up.
        for _ in ds.iterall():
            pass
    except (InvalidDicomError, EOFError, struct.error, ValueError, KeyError, OSError) as exc:
        raise UnreadableInput(f"not a readable DICOM file ({type(exc).__name__})") from exc
    return _Source(ds, ts)


def new_file_meta(result: InstanceResult, transfer_syntax: str) -> FileMetaDataset:
    """A fresh File Meta Information group: nothing of the source's survives (E.1.1 item 5)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = result.sop_class_uid
    meta.MediaStorageSOPInstanceUID = result.sop_uid
    meta.TransferSyntaxUID = transfer_syntax
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION
    return meta


def _write(out: BinaryIO, source: _Source, src_fp: BinaryIO, meta: FileMetaDataset) -> None:
    ds = source.dataset
    if source.tail is None:
        ds.file_meta = meta
        ds.preamble = b"\0" * 128
        dcmwrite(out, ds, enforce_file_format=True)
        return
    out.write(b"\0" * 128 + b"DICM")
    fp = DicomFileLike(out)
    write_file_meta_info(fp, meta, enforce_standard=True)
    implicit, little = ds.original_encoding
    fp.is_implicit_VR, fp.is_little_endian = implicit, little
    write_dataset(fp, ds)
    out.flush()
    _copy_range(src_fp, out, *source.tail)


def _copy_range(src: BinaryIO, dst: BinaryIO, start: int, end: int) -> None:
    """Copy src[start:end] to dst's current end, in the kernel where it can (no user copy)."""
    offset = start
    try:
        while offset < end:
            sent = os.copy_file_range(src.fileno(), dst.fileno(), end - offset, offset)
            if sent == 0:
                raise UnreadableInput("truncated pixel data")
            offset += sent
    except (AttributeError, OSError):  # other OS or file system: copy through a buffer
        dst.seek(0, os.SEEK_END)
        src.seek(offset)
        while offset < end:
            chunk = src.read(min(1 << 20, end - offset))
            if not chunk:
                raise UnreadableInput("truncated pixel data") from None
            dst.write(chunk)
            offset += len(chunk)


def output_path(out_dir: Path, result: InstanceResult) -> Path:
    """Files are named by pseudonymized UIDs only: never by an original name or path."""
    return out_dir / result.study_uid / result.series_uid / f"{result.sop_uid}.dcm"


def pseudonymize_file(
    src: Path, out_dir: Path, engine: Deidentifier, *, fsync: bool = False
) -> tuple[InstanceResult, Path]:
    """Pseudonymize one file into `out_dir`; the output appears whole or not at all."""
    with open(src, "rb") as src_fp:
        source = read_source(src, src_fp)
        try:
            result = engine.deidentify(source.dataset)
        except DeidentificationError:
            raise
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
            raise UnreadableInput(f"malformed header ({type(exc).__name__})") from exc
        target = output_path(out_dir, result)
        target.parent.mkdir(parents=True, exist_ok=True)
        meta = new_file_meta(result, source.transfer_syntax)
        fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=".partial-", suffix=".dcm")
        try:
            with os.fdopen(fd, "wb") as out:
                try:
                    _write(out, source, src_fp, meta)
                except (ValueError, TypeError, KeyError, AttributeError, struct.error) as exc:
                    raise UnreadableInput(f"cannot encode header ({type(exc).__name__})") from exc
                if fsync:
                    out.flush()
                    os.fsync(out.fileno())
            os.replace(tmp_name, target)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
    return result, target
