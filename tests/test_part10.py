"""Part 10 writing: our spliced header and file meta are the bytes pydicom would write."""

from __future__ import annotations

import errno
import io
import os
import warnings

import pytest
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import ExplicitVRLittleEndian

from app.dicom import part10
from app.dicom.part10 import (
    DIRECT_ALIGN,
    DIRECT_CHUNK,
    TruncatedData,
    copy_range,
    encode_dataset,
    encode_file_meta,
    raw_element,
    write_spliced,
)
from app.dicom.scan import read_header
from app.pseudo.files import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION
from tests.samples import readable_instances


def _pydicom_bytes(ds, implicit: bool, little: bool) -> bytes:
    fp = DicomBytesIO()
    fp.is_implicit_VR, fp.is_little_endian = implicit, little
    write_dataset(fp, ds)
    return fp.getvalue()


def _headers(engine=None):
    for path in readable_instances():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with open(path, "rb") as fp:
                header = read_header(fp)
        ds = header.dataset
        implicit, little = ds.original_encoding
        if implicit is None or not header.fast:
            continue
        if engine is not None:
            try:
                engine.deidentify(ds)
            except ValueError:
                continue  # refused files are covered elsewhere
        yield path.name, ds, implicit, little


def test_unchanged_headers_are_spliced_to_exactly_pydicoms_bytes():
    compared = 0
    for name, ds, implicit, little in _headers():
        assert encode_dataset(ds, implicit, little) == _pydicom_bytes(ds, implicit, little), name
        compared += 1
    assert compared > 150


def test_pseudonymized_headers_are_spliced_to_exactly_pydicoms_bytes(engine):
    """Raw replacements, decoded sequences and pre-encoded markers all encode as pydicom does."""
    compared = 0
    for name, ds, implicit, little in _headers(engine):
        assert encode_dataset(ds, implicit, little) == _pydicom_bytes(ds, implicit, little), name
        compared += 1
    assert compared > 150


def test_sequences_kept_encoded_are_written_back_as_pydicom_writes_them():
    # The engine keeps a cleaned sequence encoded (raw_element) to copy it into the next
    # file: copied back, it must be the bytes pydicom writes for the decoded sequence,
    # undefined lengths and delimitation items included.
    sequences = undefined = 0
    for name, ds, implicit, little in _headers():
        charset = ds.get("SpecificCharacterSet", "iso8859")
        decoded = [ds[tag] for tag in list(ds.keys()) if ds[tag].VR == "SQ"]
        if not decoded:
            continue
        expected = _pydicom_bytes(ds, implicit, little)
        for elem in decoded:
            ds._dict[elem.tag] = raw = raw_element(elem, implicit, little, charset)
            undefined += raw.length == 0xFFFFFFFF
            sequences += 1
        assert encode_dataset(ds, implicit, little) == expected, name
    assert sequences > 100 and undefined > 20


@pytest.mark.parametrize("version", ["DEPOT_0.1.0", "ODD"])
def test_file_meta_is_what_pydicom_writes(version):
    from pydicom.dataset import FileMetaDataset

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    meta.MediaStorageSOPInstanceUID = "2.25.123456789"  # odd length: padded with a NUL
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = version
    buffer = io.BytesIO()
    fp = DicomBytesIO()
    write_file_meta_info(fp, meta, enforce_standard=True)
    buffer.write(fp.getvalue())
    ours = encode_file_meta(
        "1.2.840.10008.5.1.4.1.1.2", "2.25.123456789", ExplicitVRLittleEndian,
        IMPLEMENTATION_CLASS_UID, version,
    )  # fmt: skip
    assert ours == buffer.getvalue()
    assert IMPLEMENTATION_VERSION.startswith("DEPOT_")


@pytest.mark.parametrize("kernel_copy", [True, False])
def test_copy_range_appends_the_range_and_says_when_the_source_ends_first(
    tmp_path, monkeypatch, kernel_copy
):
    if not kernel_copy:  # another file system: the buffered fallback

        def refuse(*_args):
            raise OSError(errno.EXDEV, "cross-device")

        monkeypatch.setattr(os, "copy_file_range", refuse)
    data = bytes(range(256)) * 8192  # 2 MiB: the fallback reads 1 MiB at a time
    (tmp_path / "source").write_bytes(data)
    with open(tmp_path / "source", "rb") as src, open(tmp_path / "target", "wb") as dst:
        dst.write(b"head")
        dst.flush()
        copy_range(src.fileno(), dst.fileno(), 100, 2_000_100)
        with pytest.raises(TruncatedData):
            copy_range(src.fileno(), dst.fileno(), len(data) - 10, len(data) + 10)
    # What was there is appended before the error (the caller then deletes the partial file).
    assert (tmp_path / "target").read_bytes() == b"head" + data[100:2_000_100] + data[-10:]


def _flags(fd: int) -> int:
    """The open file's status flags as the kernel reports them (octal in fdinfo)."""
    with open(f"/proc/self/fdinfo/{fd}") as info:
        return next(int(line.split()[1], 8) for line in info if line.startswith("flags:"))


SPLICE_CASES = {  # head size, range start, range end (in a 3.5 MiB source)
    "one chunk, partial block at the end": (300, 128, 500_000),
    "several chunks": (1_234, 10, 3 * DIRECT_CHUNK + 777),
    "ends on a block boundary": (DIRECT_ALIGN - 100, 0, 2 * DIRECT_ALIGN + 100),
    "head longer than a chunk": (DIRECT_CHUNK + 5, 3, 4_099),
    "no pixel bytes": (200, 1_000, 1_000),
}


@pytest.mark.parametrize("case", SPLICE_CASES, ids=list(SPLICE_CASES))
@pytest.mark.parametrize("mode", ["direct", "no O_DIRECT", "write refused", "cached"])
def test_write_spliced_writes_the_head_then_the_range(tmp_path, monkeypatch, case, mode):
    head_size, start, end = SPLICE_CASES[case]
    data = os.urandom(DIRECT_CHUNK * 3 + DIRECT_CHUNK // 2)
    head = os.urandom(head_size)
    (tmp_path / "source").write_bytes(data)
    direct_writes = []
    real_pwrite = os.pwrite

    def pwrite(fd, view, offset):
        if _flags(fd) & os.O_DIRECT:
            if mode == "write refused":  # takes the flag, then refuses direct writes
                raise OSError(errno.EINVAL, "invalid argument")
            assert len(view) % DIRECT_ALIGN == 0 and offset % DIRECT_ALIGN == 0
            direct_writes.append(len(view))
        return real_pwrite(fd, view, offset)

    monkeypatch.setattr(os, "pwrite", pwrite)
    if mode == "no O_DIRECT":
        monkeypatch.setattr(part10, "_set_direct", lambda _fd, _on: False)
    with open(tmp_path / "source", "rb") as src, open(tmp_path / "target", "wb") as dst:
        write_spliced(dst.fileno(), head, src.fileno(), start, end, direct=mode != "cached")
        assert not _flags(dst.fileno()) & os.O_DIRECT  # the caller gets its file back as it was
    assert (tmp_path / "target").read_bytes() == head + data[start:end]
    expected = (head_size + end - start) // DIRECT_ALIGN * DIRECT_ALIGN
    assert sum(direct_writes) == (expected if mode == "direct" else 0)


def test_write_spliced_says_when_the_source_ends_first(tmp_path):
    (tmp_path / "source").write_bytes(b"x" * 10_000)
    with (
        open(tmp_path / "source", "rb") as src,
        open(tmp_path / "target", "wb") as dst,
        pytest.raises(TruncatedData),
    ):
        write_spliced(dst.fileno(), b"head", src.fileno(), 100, 20_000, direct=True)
