"""Part 10 files in and out: parse the header, stream the pixel bytes, write atomically.

Pixel data is never parsed (DESIGN decision 4): the header is read up to the pixel element,
pseudonymized, written, and the pixel bytes are copied from the source file by range. So
MD5 of the pixel data is unchanged, lossy re-encoding cannot happen, and a large multi-frame
object costs no more memory than its header.
"""

from __future__ import annotations

import io
import os
import struct
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Protocol

from pydicom import dcmread
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.filewriter import dcmwrite
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from app import __version__
from app.dicom.part10 import (
    READ_CHUNK,
    UNDEFINED_LENGTH,
    TruncatedData,
    encode_dataset,
    encode_file_meta,
    pixel_data_end,
    pread_chunks,
    write_all,
    write_spliced,
)
from app.dicom.scan import read_header
from app.pseudo.engine import DeidentificationError, InstanceResult

# Our implementation's identity in every file meta we write (PS3.7 D.3.3.2).
IMPLEMENTATION_CLASS_UID = "2.25.197004375934389146542297316516418356237"
IMPLEMENTATION_VERSION = f"DEPOT_{__version__}"[:16]
_READ_ERRORS = (InvalidDicomError, EOFError, struct.error, ValueError, KeyError, OSError)


class HeaderPolicy(Protocol):
    """What rewrites a header: the ingest `Deidentifier`, or the research side's
    `app.pseudo.derived.DerivedCleaner`."""

    def keeps_private(self, group: int, creator: str, element: int) -> bool: ...

    def deidentify(
        self, ds: Dataset, skipped_private: Iterable[tuple[int, str]] = ()
    ) -> InstanceResult: ...


class UnreadableInput(ValueError):
    """The input is not a DICOM instance we can process; the message names the reason only."""


@dataclass
class Source:
    """A parsed header, its transfer syntax, and the byte range of pixel data to stream."""

    dataset: Dataset
    transfer_syntax: str
    pixels: tuple[int, int] | None = None
    skipped_private: set[tuple[int, str]] = field(default_factory=set)


def _transfer_syntax(ds: Dataset) -> str:
    meta_ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if meta_ts:
        return str(meta_ts)
    implicit, little = ds.original_encoding
    if implicit:
        return ImplicitVRLittleEndian
    return ExplicitVRLittleEndian if little else ExplicitVRBigEndian


def read_source(
    path: Path, fp: BinaryIO, keep_private: Callable[[int, str, int], bool] | None = None
) -> Source:
    """Read the header (up to the pixel data) and find the pixel bytes to stream.

    Private data elements that `keep_private` refuses are not even built (app.dicom.scan).
    """
    size = os.fstat(fp.fileno()).st_size
    try:
        header = read_header(fp, keep_private)
    except _READ_ERRORS as exc:
        raise UnreadableInput(f"not a readable DICOM file ({type(exc).__name__})") from exc
    ds = header.dataset
    implicit, little = ds.original_encoding
    if not len(ds) or implicit is None:
        raise UnreadableInput("not a DICOM file")
    if _has_short_value(ds):
        raise UnreadableInput("truncated header")
    ts = _transfer_syntax(ds)
    if ts == DeflatedExplicitVRLittleEndian:
        return _read_whole(path, ts)  # a deflated data set cannot be streamed
    start = header.pixel_start
    if start is None:
        return Source(ds, ts, skipped_private=header.skipped_blocks)  # nothing to stream
    try:
        end = pixel_data_end(fp, start, size, little, implicit)
    except TruncatedData as exc:
        raise UnreadableInput(str(exc)) from exc
    if end is None:
        return _read_whole(path, ts)
    return Source(ds, ts, (start, end), header.skipped_blocks)


def _has_short_value(ds: Dataset) -> bool:
    """pydicom reads a file that ends inside a value without complaint: the value is short.

    Reading is sequential, so only the last element read can have been cut.
    """
    if not len(ds):
        return False
    elem = ds.get_item(max(map(int, ds.keys())))
    return (
        isinstance(elem, RawDataElement)
        and elem.value is not None
        and elem.length != UNDEFINED_LENGTH
        and len(elem.value) < elem.length
    )


def _read_whole(path: Path, ts: str) -> Source:
    """Something other than pixel data follows it: read everything (rare, small files)."""
    try:
        ds = dcmread(path, force=True)
        # Decode every element now: truncation surfaces here rather than at write time, and
        # files whose meta says Explicit VR over an Implicit VR body get their VRs looked up.
        for _ in ds.iterall():
            pass
    except _READ_ERRORS as exc:
        raise UnreadableInput(f"not a readable DICOM file ({type(exc).__name__})") from exc
    return Source(ds, ts)


@dataclass
class Prepared:
    """One instance pseudonymized in memory, ready to be written: the new header's bytes
    and, when pixel data is streamed, the still-open source file and the range to copy."""

    result: InstanceResult
    header: bytes
    transfer_syntax: str
    source: BinaryIO | None = None
    pixels: tuple[int, int] | None = None

    @property
    def size(self) -> int:
        """The output's size: the new header, then the pixel data element as it is."""
        if self.pixels is None:
            return len(self.header)
        start, end = self.pixels
        return len(self.header) + end - start

    def head(self, count: int) -> bytes:
        """The output's first bytes: the header, then up to `count` bytes of pixel data."""
        if self.source is None or self.pixels is None:
            return self.header
        start, end = self.pixels
        return self.header + os.pread(self.source.fileno(), min(count, end - start), start)

    def chunks(self, size: int = READ_CHUNK) -> Iterator[bytes]:
        """The output's bytes: the header, then the pixel data read `size` at a time.

        UnreadableInput if the source ends early. For a store that takes chunks (`BlobStore.
        put`): the output need not be written anywhere first.
        """
        yield self.header
        if self.source is None or self.pixels is None:
            return
        try:
            yield from pread_chunks(self.source.fileno(), *self.pixels, size)
        except TruncatedData as exc:
            raise UnreadableInput(str(exc)) from exc

    def close(self) -> None:
        if self.source is not None:
            self.source.close()
            self.source = None


def _encode(source: Source, result: InstanceResult) -> bytes:
    """The output's bytes up to the pixel data: preamble, a fresh meta group, the header."""
    ds = source.dataset
    if source.pixels is None:  # nothing streamed: pydicom writes the whole (small) dataset
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = result.sop_class_uid
        meta.MediaStorageSOPInstanceUID = result.sop_uid
        meta.TransferSyntaxUID = source.transfer_syntax
        meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
        meta.ImplementationVersionName = IMPLEMENTATION_VERSION
        ds.file_meta = meta
        ds.preamble = b"\0" * 128
        buffer = io.BytesIO()
        dcmwrite(buffer, ds, enforce_file_format=True)
        return buffer.getvalue()
    # A fresh File Meta Information group and preamble: nothing of the source's survives
    # (PS3.15 E.1.1 item 5).
    implicit, little = ds.original_encoding
    meta = encode_file_meta(result.sop_class_uid, result.sop_uid, source.transfer_syntax,
                            IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION)  # fmt: skip
    return b"\0" * 128 + b"DICM" + meta + encode_dataset(ds, implicit, little)


def output_path(out_dir: Path, result: InstanceResult) -> Path:
    """Files are named by pseudonymized UIDs only: never by an original name or path."""
    return out_dir / result.study_uid / result.series_uid / f"{result.sop_uid}.dcm"


def prepare_file(src: Path, engine: HeaderPolicy) -> Prepared:
    """Read and pseudonymize one file's header and encode the new one; nothing is written.

    On success the source stays open for `write_prepared` to copy its pixel data from.
    `engine` is the project's `Deidentifier` (the ingest boundary) or a `DerivedCleaner`
    (derived objects stored from the research side).
    """
    src_fp = open(src, "rb")  # noqa: SIM115 (handed over to Prepared, closed by its writer)
    try:
        source = read_source(src, src_fp, engine.keeps_private)
        try:
            result = engine.deidentify(source.dataset, source.skipped_private)
        except DeidentificationError:
            raise
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
            raise UnreadableInput(f"malformed header ({type(exc).__name__})") from exc
        try:
            header = _encode(source, result)
        except (ValueError, TypeError, KeyError, AttributeError, struct.error) as exc:
            raise UnreadableInput(f"cannot encode header ({type(exc).__name__})") from exc
    except BaseException:
        src_fp.close()
        raise
    ts = source.transfer_syntax
    if source.pixels is None:
        src_fp.close()
        return Prepared(result, header, ts)
    return Prepared(result, header, ts, src_fp, source.pixels)


def write_prepared(
    prepared: Prepared,
    out_dir: Path,
    *,
    fsync: bool = False,
    folders: set[Path] | None = None,
    direct: bool = False,
) -> Path:
    """Write a prepared instance into `out_dir` (`output_path`); the output appears whole
    or not at all.

    Nearly all of it is system calls on file descriptors, each releasing the GIL, so a batch
    can run it in a thread while the next header is pseudonymized (`app.pseudo.batch`).
    `folders` remembers the output folders already made, to skip asking the disk again.
    `direct` writes past the page cache (`write_spliced`): for outputs not read back soon.
    """
    target = output_path(out_dir, prepared.result)
    try:
        if folders is None or target.parent not in folders:
            target.parent.mkdir(parents=True, exist_ok=True)
            if folders is not None:
                folders.add(target.parent)
        fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=".partial-", suffix=".dcm")
        try:
            try:
                if prepared.source is not None and prepared.pixels is not None:
                    write_spliced(
                        fd,
                        prepared.header,
                        prepared.source.fileno(),
                        *prepared.pixels,
                        direct=direct,
                    )
                else:
                    write_all(fd, prepared.header)
                if fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp_name, target)
        except TruncatedData as exc:
            Path(tmp_name).unlink(missing_ok=True)
            raise UnreadableInput(str(exc)) from exc
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
    finally:
        prepared.close()
    return target


def pseudonymize_file(
    src: Path, out_dir: Path, engine: HeaderPolicy, *, fsync: bool = False
) -> tuple[InstanceResult, Path]:
    """Pseudonymize one file into `out_dir`; the output appears whole or not at all."""
    prepared = prepare_file(src, engine)
    return prepared.result, write_prepared(prepared, out_dir, fsync=fsync)
