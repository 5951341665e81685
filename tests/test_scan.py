"""app.dicom.scan: the fast header reader gives what pydicom's reader gives, minus refused
private elements, and takes its fast path where it should."""

from __future__ import annotations

import io
import struct
import warnings
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataelem import DataElement, RawDataElement, convert_raw_data_element
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import BytesLengthException, InvalidDicomError
from pydicom.filewriter import dcmwrite
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import (
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)

from app.dicom.part10 import PIXEL_TAGS
from app.dicom.scan import Header, _read_with_pydicom, creator_name, read_header
from tests.samples import readable_instances, sample

TRUNCATED = ("MR_truncated.dcm", "rtplan_truncated.dcm")
ALL_FILES = [*readable_instances(), *(sample(name) for name in TRUNCATED)]
READ_ERRORS = (
    struct.error, OSError, EOFError, ValueError, KeyError, IndexError, TypeError,
    NotImplementedError, InvalidDicomError, BytesLengthException,
)  # fmt: skip


def _pydicom_read(fp) -> tuple[Dataset, int]:
    fp.seek(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = dcmread(fp, stop_before_pixels=True, force=True)
    return ds, fp.tell()


def _read(fp, keep_private=None) -> tuple[Header, int]:
    fp.seek(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        header = read_header(fp, keep_private)
    return header, fp.tell()


def _pixel_tag_at(fp, position: int, little: bool) -> bool:
    fp.seek(position)
    raw = fp.read(4)
    if len(raw) < 4:
        return False
    group, elem = struct.unpack("<HH" if little else ">HH", raw)
    return (group << 16 | elem) in PIXEL_TAGS


def assert_same(ds: Dataset, ref: Dataset) -> None:
    """Same keys, same raw elements (or equal converted ones), same state, same values."""
    tags = list(ref.keys())
    assert list(ds.keys()) == tags
    for tag in tags:
        mine, theirs = ds.get_item(tag), ref.get_item(tag)
        if isinstance(theirs, RawDataElement):
            assert isinstance(mine, RawDataElement), tag
            assert tuple(mine) == tuple(theirs), tag
        else:  # pydicom hands back undefined-length sequences (and the charset) converted
            assert isinstance(mine, DataElement), tag
            assert mine == theirs, tag
            assert mine.is_undefined_length == theirs.is_undefined_length, tag
    assert ds.original_encoding == ref.original_encoding
    assert ds.original_character_set == ref.original_character_set
    assert ds.preamble == ref.preamble
    assert type(ds) is type(ref)
    meta, ref_meta = getattr(ds, "file_meta", None), getattr(ref, "file_meta", None)
    assert (meta is None) == (ref_meta is None)
    if ref_meta is not None:
        assert list(meta.keys()) == list(ref_meta.keys())
        assert meta == ref_meta
        assert meta.original_encoding == ref_meta.original_encoding
    assert _converted(ds) == _converted(ref)


def _converted(ds: Dataset) -> list[DataElement] | type[Exception]:
    """Every element decoded, at every depth; or the error that decoding raises (a cut value)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return list(ds.iterall())
    except READ_ERRORS as exc:
        return type(exc)


@pytest.mark.parametrize("path", ALL_FILES, ids=lambda p: p.name)
def test_reads_what_pydicom_reads(path: Path) -> None:
    with open(path, "rb") as fp:
        ref, ref_end = _pydicom_read(fp)
        header, end = _read(fp)
        assert_same(header.dataset, ref)
        assert end == ref_end  # the file is left where pydicom leaves it
        has_pixels = _pixel_tag_at(fp, ref_end, ref.original_encoding[1] is not False)
    assert header.pixel_start == (ref_end if has_pixels else None)
    assert header.skipped_blocks == set()


@pytest.mark.parametrize("name", ["CT_small.dcm", "693_UNCR.dcm", "OBXXXX1A.dcm"])
def test_fast_path_is_taken_for_ordinary_files(name: str) -> None:
    with open(sample(name), "rb") as fp:
        assert _read(fp)[0].fast
        assert _read(fp, lambda *a: False)[0].fast


@pytest.mark.parametrize(
    "name",
    ["ExplVR_LitEndNoMeta.dcm", "image_dfl.dcm", "SC_rgb_jpeg.dcm", "rtstruct.dcm"],
    ids=["no meta", "deflated", "explicit meta over implicit body", "implicit, no meta"],
)
def test_unusual_files_go_to_pydicom(name: str) -> None:
    with open(sample(name), "rb") as fp:
        header, _ = _read(fp)
        ref, _ = _pydicom_read(fp)
    assert not header.fast
    assert_same(header.dataset, ref)


def _block_creators(ds: Dataset) -> dict[tuple[int, int], str]:
    return {
        (t.group, t.element): creator_name(ds.get_item(t), ds.original_character_set)
        for t in list(ds.keys())
        if t.group & 1 and 0x10 <= t.element <= 0xFF
    }


def test_keeps_only_the_private_blocks_asked_for() -> None:
    asked: list[tuple[int, str, int]] = []

    def only_acquisition(group: int, creator: str, element: int) -> bool:
        asked.append((group, creator, element))
        return creator == "GEMS_ACQU_01"

    with open(sample("CT_small.dcm"), "rb") as fp:
        ref, _ = _pydicom_read(fp)
        header, _ = _read(fp, only_acquisition)
    ds = header.dataset
    assert header.fast
    creators = _block_creators(ref)
    data_elements = {t: creators.get((t.group, t.element >> 8), "") for t in list(ref.keys())
                     if t.group & 1 and t.element >= 0x1000}  # fmt: skip
    kept = {t for t, creator in data_elements.items() if creator == "GEMS_ACQU_01"}
    assert kept and len(kept) < len(data_elements)
    assert set(ds.keys()) == set(ref.keys()) - (data_elements.keys() - kept)
    for tag in list(ds.keys()):
        assert tuple(ds.get_item(tag)) == tuple(ref.get_item(tag)) or ds[tag] == ref[tag]
    assert header.skipped_blocks == {
        (t.group, c) for t, c in data_elements.items() if c != "GEMS_ACQU_01"
    }
    assert (0x0019, "GEMS_ACQU_01") not in header.skipped_blocks
    assert sorted(asked) == sorted((t.group, c, t.element & 0xFF) for t, c in data_elements.items())


@pytest.mark.parametrize("path", ALL_FILES, ids=lambda p: p.name)
def test_filtering_matches_pydicom_then_delete(path: Path) -> None:
    """Skipping unbuilt (fast path) and deleting after pydicom's read (fallback) agree."""

    def half(group: int, creator: str, element: int) -> bool:
        return element % 2 == 0 and not creator.endswith("1")

    with open(path, "rb") as fp:
        header, end = _read(fp, half)
        fp.seek(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = _read_with_pydicom(fp, half)
        assert end == fp.tell()
        assert header.fast == _read(fp)[0].fast  # skipping never sends a file to pydicom
    assert list(header.dataset.keys()) == list(ref.dataset.keys())
    assert header.skipped_blocks == ref.skipped_blocks
    assert header.pixel_start == ref.pixel_start


def test_creator_names_are_what_the_engine_reads() -> None:
    """The engine compares `str(converted value or "").strip()`; so must the filter."""
    seen = 0
    for path in ALL_FILES:
        ds, _ = _pydicom_read(io.BytesIO(path.read_bytes()))
        for tag in list(ds.keys()):
            if tag.group & 1 and 0x10 <= tag.element <= 0xFF:
                raw = ds.get_item(tag)
                engine_view = convert_raw_data_element(raw, encoding=ds.original_character_set)
                expected = str(engine_view.value or "").strip()
                assert creator_name(raw, ds.original_character_set) == expected
                seen += 1
    assert seen > 50


# -- undefined-length sequences, built and skipped ------------------------------------------------

ITEM_TAG, ITEM_END = (0xFFFE, 0xE000), (0xFFFE, 0xE00D)


def _implicit_item(e: str) -> bytes:
    """An undefined-length item in Implicit VR, as found inside UN (PS3.5 6.2.2)."""
    body = struct.pack(e + "HHL", 0x0008, 0x0100, 2) + b"X1"
    body += struct.pack(e + "HHL", 0x0008, 0x0104, 4) + b"ITEM"
    return (
        struct.pack(e + "HHL", *ITEM_TAG, 0xFFFFFFFF) + body + struct.pack(e + "HHL", *ITEM_END, 0)
    )


def _sequence_file(tmp_path: Path, syntax: str) -> Path:
    """Private undefined-length sequences (nested, mixed items) between standard elements."""
    implicit = syntax == ImplicitVRLittleEndian
    e = ">" if syntax == ExplicitVRBigEndian else "<"
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = generate_uid()
    block = ds.private_block(0x0009, "ACME 1.0", create=True)
    first = Dataset()
    first.CodeValue = "A"
    second = Dataset()
    second.is_undefined_length_sequence_item = True
    nested = Dataset()
    nested.is_undefined_length_sequence_item = True
    nested.ReferencedSOPInstanceUID = generate_uid()
    second.ReferencedImageSequence = Sequence([nested])
    second["ReferencedImageSequence"].is_undefined_length = True
    block.add_new(0x10, "SQ", Sequence([first, second]))
    block[0x10].is_undefined_length = True
    block.add_new(0x11, "LO", "kept or not")
    raw_un = _implicit_item(e) + _implicit_item(e)
    ds[0x00091012] = RawDataElement(
        Tag(0x00091012),
        None if implicit else "UN",
        0xFFFFFFFF,
        raw_un,
        0,
        implicit,
        e == "<",
    )
    other = ds.private_block(0x0011, "OTHER", create=True)
    other.add_new(0x01, "SQ", Sequence([Dataset()]))
    other[0x01].is_undefined_length = True
    ds.PatientName = "Doe^Jane"
    ds.StudyInstanceUID = generate_uid()
    ds.add_new(0x7FE00010, "OB", b"\0" * 16)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = syntax
    ds.preamble = b"\0" * 128
    path = tmp_path / "sequences.dcm"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcmwrite(path, ds, enforce_file_format=True)
    return path


SYNTAXES = [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian]


@pytest.mark.parametrize("syntax", SYNTAXES, ids=["explicit LE", "implicit LE", "explicit BE"])
def test_undefined_length_sequences_are_built_like_pydicom(tmp_path, syntax) -> None:
    path = _sequence_file(tmp_path, syntax)
    with open(path, "rb") as fp:
        ref, ref_end = _pydicom_read(fp)
        header, end = _read(fp)
    assert header.fast
    assert_same(header.dataset, ref)
    assert isinstance(ref.get_item(0x00091010), DataElement)  # the case being tested
    assert len(ref[0x00091012].value) == 2  # UN of undefined length, read as a sequence
    assert header.pixel_start == end == ref_end


@pytest.mark.parametrize("syntax", SYNTAXES, ids=["explicit LE", "implicit LE", "explicit BE"])
def test_refused_undefined_length_sequences_are_skipped_unbuilt(tmp_path, syntax) -> None:
    path = _sequence_file(tmp_path, syntax)

    def only_lo(group: int, creator: str, element: int) -> bool:
        return (creator, element) == ("ACME 1.0", 0x11)

    with open(path, "rb") as fp:
        ref, ref_end = _pydicom_read(fp)
        header, end = _read(fp, only_lo)
    assert header.fast
    refused = {0x00091010, 0x00091012, 0x00111001}
    assert set(header.dataset.keys()) == set(ref.keys()) - refused
    assert header.skipped_blocks == {(0x0009, "ACME 1.0"), (0x0011, "OTHER")}
    assert header.dataset.PatientName == "Doe^Jane"  # read on after the skipped sequences
    assert header.dataset.StudyInstanceUID == ref.StudyInstanceUID
    assert header.pixel_start == end == ref_end


# -- truncated files --------------------------------------------------------------------------


def _outcome(read, data: bytes):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return read(io.BytesIO(data))
    except READ_ERRORS as exc:  # pydicom's reader raises for some cuts: so must we
        return type(exc)


@pytest.mark.parametrize("name", ["CT_small.dcm", "693_UNCR.dcm", "sequences"])
def test_cut_anywhere_like_pydicom(tmp_path, name) -> None:
    path = _sequence_file(tmp_path, ExplicitVRLittleEndian) if name == "sequences" else sample(name)
    data = path.read_bytes()
    with open(path, "rb") as fp:
        end = _pydicom_read(fp)[1]
    for cut in range(0, end + 12, 7 if end < 2000 else 37):
        ref = _outcome(lambda fp: dcmread(fp, stop_before_pixels=True, force=True), data[:cut])
        mine = _outcome(lambda fp: read_header(fp).dataset, data[:cut])
        if isinstance(ref, type):
            assert mine is ref, cut
        else:
            assert_same(mine, ref)


def test_a_refused_element_cut_short_is_still_built() -> None:
    """The caller finds truncation by a short last value: skipping it would hide that."""
    path = sample("CT_small.dcm")
    with open(path, "rb") as fp:
        ref, _ = _pydicom_read(fp)
    last = max(
        (
            t
            for t in list(ref.keys())
            if t.group & 1 and t.element >= 0x1000 and ref.get_item(t).length > 2
        ),
        key=int,
    )
    raw = ref.get_item(last)
    data = path.read_bytes()[: raw.value_tell + 2]
    header, _ = _read(io.BytesIO(data), lambda *a: False)
    assert header.fast
    assert header.pixel_start is None
    cut = header.dataset.get_item(last)
    assert cut.length == raw.length and cut.value == raw.value[:2]
