"""The DICOM JSON Model (PS3.18 Annex F): app.dicom.json_model against the standard and pydicom.

Every packaged test file is encoded both by us and by pydicom's `Dataset.to_json_dict`. Where
the two differ, `_as_annex_f` below turns pydicom's output into what Annex F asks for, one
documented rule per difference; everything else must be identical.
"""

from __future__ import annotations

import array
import base64
import copy
import io
import math
import warnings
from pathlib import Path

import orjson
import pydicom
import pytest
from pydicom import dcmread
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from app.dicom.json_model import PIXEL_TAGS, from_dicom_json, to_dicom_json
from tests.samples import PYDICOM_FILES, readable_instances, sample

CHARSET_FILES = Path(pydicom.__file__).parent / "data" / "charset_files"
STRIP_BOTH = {"AE", "CS", "DS", "IS", "LO", "SH"}
SWAP = {"OW": "H", "OF": "I", "OL": "I", "OD": "Q", "OV": "Q"}


def _read(path: Path) -> Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return dcmread(path, force=True)


def _raw(ds: Dataset, syntax: str = ExplicitVRLittleEndian) -> Dataset:
    """`ds` written and read back, so that its elements are raw as after a file read."""
    ds = copy.deepcopy(ds)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=False)
    return dcmread(io.BytesIO(buffer.getvalue()), force=True)


def _bulk(path: str) -> str:
    return f"bulk:{path}"


# --- pydicom's output, corrected where Annex F says otherwise ---------------------------------


def _as_annex_f(theirs: dict, big_endian: bool, with_uri: bool = True) -> dict:
    """pydicom's `to_json_dict` with each of its known departures from Annex F corrected."""
    out = {}
    for key, attr in theirs.items():
        tag = int(key, 16)
        # F.2.2: "Group Length (gggg,0000) attributes shall not be included"; group 0002 is
        # file meta, not metadata (PS3.18 1.1); (FFFC,FFFC) is padding, not an attribute.
        if not tag & 0xFFFF or tag >> 16 <= 2 or tag == 0xFFFCFFFC:
            continue
        attr = dict(attr)
        vr = attr["vr"]
        value = attr.get("Value")
        if vr == "SQ":
            # F.2.5: an empty attribute has no "Value" (pydicom writes [] for no items)
            if not value:
                attr.pop("Value", None)
            else:
                attr["Value"] = [_as_annex_f(item, big_endian, with_uri) for item in value]
        elif vr == "PN" and value:
            # F.2.2: only "the non-empty name components"; F.2.5: empty value -> null
            groups = [{k: v for k, v in (name or {}).items() if v} for name in value]
            attr["Value"] = [g or None for g in groups]
        elif value and all(isinstance(v, str | type(None)) for v in value):
            # F.2.5: an empty value in a list is null, not ""; PS3.5 Table 6.2-1: leading and
            # trailing spaces of AE, CS, DS, IS, LO and SH values are not significant
            strip = str.strip if vr in STRIP_BOTH else str.rstrip
            attr["Value"] = [strip(v, " \0") or None if v is not None else None for v in value]
        if attr.get("Value") in ([None], []):
            attr.pop("Value")  # a value that is only padding is an empty attribute (F.2.5)
        if with_uri and tag in PIXEL_TAGS and "InlineBinary" in attr:
            # our policy: pixel data always by BulkDataURI when a callback is given
            attr = {"vr": vr, "BulkDataURI": "bulk"}
        if big_endian and vr in SWAP and "InlineBinary" in attr:
            # InlineBinary is sent little endian (Explicit VR LE is what DICOMweb serves);
            # pydicom inlines a big endian file's bytes unswapped
            words = array.array(SWAP[vr], base64.b64decode(attr["InlineBinary"]))
            words.byteswap()
            attr["InlineBinary"] = base64.b64encode(words.tobytes()).decode()
        out[key] = attr
    return out


def _same_uris(obj: dict) -> dict:
    """Every BulkDataURI replaced by "bulk": pydicom's handler gets no path to name."""
    for attr in obj.values():
        if "BulkDataURI" in attr:
            attr["BulkDataURI"] = "bulk"
        for item in attr.get("Value", []) if attr["vr"] == "SQ" else []:
            _same_uris(item)
    return obj


def _pydicom_json(path: Path) -> dict | None:
    """pydicom's JSON with the same bulk cut as ours at bulk_threshold=768 (it compares the
    value length with threshold // 4 * 3, its threshold being in base64 characters)."""
    try:
        return _read(path).to_json_dict(1024, lambda elem: "bulk")
    except ValueError:
        return None  # badVR.dcm: pydicom's int("1A") raises, see test_malformed_is_...


def test_every_packaged_file_matches_pydicom_once_annex_f_is_applied():
    files = readable_instances()
    assert len(files) > 150
    compared = 0
    for path in files:
        theirs = _pydicom_json(path)
        if theirs is None:
            continue
        ds = _read(path)
        ours = _same_uris(to_dicom_json(ds, bulkdata_uri=_bulk, bulk_threshold=768))
        expected = _as_annex_f(theirs, big_endian=ds.original_encoding[1] is False)
        assert ours == expected, path.name
        compared += 1
    assert compared == len(files) - 1


def test_the_departures_from_pydicom_are_real_on_packaged_files():
    """Each correction in `_as_annex_f` is needed by at least one real file."""
    seen = set()
    for path in readable_instances():
        theirs = _pydicom_json(path)
        if theirs is None:
            seen.add("pydicom raises")
            continue
        for key, attr in theirs.items():
            if key.endswith("0000"):
                seen.add("group length")
            if key == "FFFCFFFC":
                seen.add("trailing padding")
            if attr["vr"] == "SQ" and attr.get("Value") == []:
                seen.add("empty sequence with Value []")
            if any(v == "" for v in attr.get("Value", []) if attr["vr"] != "SQ"):
                seen.add('"" in a value list')
            if any(isinstance(v, str) and v != v.strip() for v in attr.get("Value", [])):
                seen.add("padding kept")
    assert seen == {
        "pydicom raises",
        "group length",
        "trailing padding",
        "empty sequence with Value []",
        '"" in a value list',
        "padding kept",
    }


def test_raw_and_decoded_datasets_give_the_same_json_on_every_packaged_file():
    for path in readable_instances():
        from_raw = to_dicom_json(_read(path), bulkdata_uri=_bulk)
        decoded = _read(path)
        for _ in decoded.iterall():
            pass  # decodes every element, at every depth
        assert to_dicom_json(decoded, bulkdata_uri=_bulk) == from_raw, path.name


def test_every_packaged_file_serialises_with_orjson():
    for path in readable_instances():
        orjson.dumps(to_dicom_json(_read(path), bulkdata_uri=_bulk))


def test_the_dataset_is_left_as_it_was_read():
    """Raw elements stay raw: app.dicom.part10 writes them back from their bytes, fast.

    pydicom's to_json_dict decodes and stores every element (checked here too).
    """
    ds = _read(sample("CT_small.dcm"))
    before = dict(ds._dict)
    assert sum(type(e) is RawDataElement for e in before.values()) > 250
    to_dicom_json(ds, bulkdata_uri=_bulk)
    assert all(ds._dict[tag] is elem for tag, elem in before.items())
    ds.to_json_dict()
    assert not any(type(e) is RawDataElement for e in ds._dict.values())


# --- Annex F rules ----------------------------------------------------------------------------


def _ds(**keywords) -> Dataset:
    ds = Dataset()
    for keyword, value in keywords.items():
        setattr(ds, keyword, value)
    return ds


@pytest.fixture(params=["decoded", "explicit LE", "implicit LE", "explicit BE"])
def encode(request):
    """to_dicom_json on the dataset as built, and on it written and read back raw."""
    syntax = {
        "explicit LE": ExplicitVRLittleEndian,
        "implicit LE": ImplicitVRLittleEndian,
        "explicit BE": ExplicitVRBigEndian,
    }.get(request.param)

    def run(ds: Dataset, **kwargs) -> dict:
        return to_dicom_json(ds if syntax is None else _raw(ds, syntax), **kwargs)

    return run


def test_empty_attribute_has_vr_only(encode):
    out = encode(_ds(PatientName="", AccessionNumber="", PixelSpacing=None, Rows=None))
    assert out == {
        "00080050": {"vr": "SH"},
        "00100010": {"vr": "PN"},
        "00280010": {"vr": "US"},
        "00280030": {"vr": "DS"},
    }


def test_empty_values_in_a_list_are_null(encode):
    ds = _ds(ImageType=["ORIGINAL", "", "AXIAL"], OtherPatientIDs=["", "B"])
    ds.add_new(0x00080005, "CS", ["", "ISO 2022 IR 87"])  # chrH31.dcm has this
    out = encode(ds)
    assert out["00080008"]["Value"] == ["ORIGINAL", None, "AXIAL"]
    assert out["00101000"]["Value"] == [None, "B"]
    assert out["00080005"]["Value"] == [None, "ISO 2022 IR 87"]


def test_sequences_empty_items_and_empty_sequences(encode):
    item = _ds(CodeValue="T-A0100", CodingSchemeDesignator="SRT")
    ds = _ds(
        AnatomicRegionSequence=Sequence([item, Dataset()]),
        ReferencedImageSequence=Sequence([]),
    )
    out = encode(ds)
    assert out["00082218"] == {
        "vr": "SQ",
        "Value": [
            {
                "00080100": {"vr": "SH", "Value": ["T-A0100"]},
                "00080102": {"vr": "SH", "Value": ["SRT"]},
            },
            {},
        ],
    }
    assert out["00081140"] == {"vr": "SQ"}  # F.2.5: no items = empty attribute


def test_person_names_keep_only_their_non_empty_groups(encode):
    ds = _ds(PatientName="Yamada^Tarou==yamada", ReferringPhysicianName=["^Bob^^Dr.", "", "X"])
    out = encode(ds)
    assert out["00100010"]["Value"] == [{"Alphabetic": "Yamada^Tarou", "Phonetic": "yamada"}]
    assert out["00080090"]["Value"] == [{"Alphabetic": "^Bob^^Dr."}, None, {"Alphabetic": "X"}]


def test_ideographic_only_name_has_no_empty_alphabetic_group():
    ds = _raw(_ds(SpecificCharacterSet="ISO_IR 192", PatientName="=山田^太郎"))
    assert to_dicom_json(ds)["00100010"]["Value"] == [{"Ideographic": "山田^太郎"}]
    # pydicom writes {"Alphabetic": "", "Ideographic": ...}: F.2.2 lists non-empty groups only
    assert ds.to_json_dict()["00100010"]["Value"][0]["Alphabetic"] == ""


def test_attribute_tags_are_eight_uppercase_hex_digits(encode):
    out = encode(_ds(FrameIncrementPointer=[0x00181063, 0x0018106A]))
    assert out["00280009"] == {"vr": "AT", "Value": ["00181063", "0018106A"]}


def test_binary_numbers_and_text_values(encode):
    ds = _ds(
        Rows=512,
        PixelRepresentation=1,
        ImageType=["ORIGINAL", "PRIMARY"],
        StudyDescription="  Head  ",
        ImageComments="  leading spaces matter in LT  ",
    )
    ds.add_new(0x00280106, "SS", -2000)  # "US or SS": implicit VR needs PixelRepresentation
    ds.add_new(0x00189089, "FD", [1.5, -0.25, 0.0])
    out = encode(ds)
    assert out["00280010"] == {"vr": "US", "Value": [512]}
    assert out["00280106"] == {"vr": "SS", "Value": [-2000]}
    assert out["00189089"] == {"vr": "FD", "Value": [1.5, -0.25, 0.0]}
    assert out["00081030"]["Value"] == ["Head"]  # LO: leading/trailing spaces insignificant
    assert out["00204000"]["Value"] == ["  leading spaces matter in LT"]


def test_decimal_strings_are_exact_numbers_or_strings():
    ds = Dataset()
    raw = b"512\\-0.5\\1.5E3\\.25\\9007199254740993\\0.1234567890123456\\1E999\\NaN\\1,5\\ 7 "
    # odd-length byte strings are padded by the writer; a RawDataElement keeps them as given
    ds._dict[0x00281050] = RawDataElement(
        pydicom.tag.BaseTag(0x00281050), "DS", len(raw), raw, 0, False, True
    )
    values = to_dicom_json(ds)["00281050"]["Value"]
    assert values[:4] == [512, -0.5, 1500.0, 0.25]
    assert isinstance(values[0], int) and isinstance(values[2], float)
    # 2**53 + 1 is exact neither in a double nor in a JavaScript number; 16 digits after the
    # point neither: the note to Table F.2.3-1 allows a string "to avoid losing precision"
    assert values[4:6] == ["9007199254740993", "0.1234567890123456"]
    # not a DS at all: kept as sent rather than failing the whole metadata
    assert values[6:] == ["1E999", "NaN", "1,5", 7]


def test_decimal_strings_that_a_double_holds_exactly_are_floats():
    # every valid 16-character DS with a "." has at most 15 significant digits
    for text in ("-.123456789012345", "1.23456789012345", "123456789012345.", "1.2345678901E-10"):
        value = to_dicom_json(_ds(SliceThickness=text))["00180050"]["Value"][0]
        assert isinstance(value, float) and value == float(text), text
        assert float(repr(value)) == float(text)


def test_integer_strings_that_are_not_integers_stay_strings():
    ds = Dataset()
    raw = b"12\\1A\\ -3\\99999999999999999"
    ds._dict[0x00200013] = RawDataElement(
        pydicom.tag.BaseTag(0x00200013), "IS", len(raw), raw, 0, False, True
    )
    assert to_dicom_json(ds)["00200013"]["Value"] == [12, "1A", -3, "99999999999999999"]


def test_malformed_is_in_a_packaged_file_is_a_string_where_pydicom_raises():
    ds = _read(PYDICOM_FILES / "badVR.dcm")
    assert to_dicom_json(ds)["00280008"] == {"vr": "IS", "Value": ["1A"]}
    with pytest.raises(ValueError, match="1A"):
        _read(PYDICOM_FILES / "badVR.dcm").to_json_dict()


def test_floats_that_are_not_finite_are_null(encode):
    ds = Dataset()
    ds.add_new(0x00189089, "FD", [math.nan, 1.0, math.inf])
    assert encode(ds)["00189089"]["Value"] == [None, 1.0, None]


def test_very_long_integers_are_strings():
    ds = Dataset()
    ds.add_new(0x00720082, "SV", [-(2**62), 5])
    ds.add_new(0x0072007F, "UV", [2**64 - 1])
    for data in (ds, _raw(ds)):
        out = to_dicom_json(data)
        assert out["00720082"]["Value"] == [str(-(2**62)), 5]
        assert out["0072007F"]["Value"] == [str(2**64 - 1)]
        orjson.dumps(out)


def test_group_lengths_file_meta_and_padding_are_left_out():
    ds = _ds(PatientID="X")
    ds.add_new(0x00100000, "UL", 8)
    ds.add_new(0x00020010, "UI", ExplicitVRLittleEndian)
    ds.add_new(0xFFFCFFFC, "OB", b"\0\0")
    assert to_dicom_json(ds) == {"00100020": {"vr": "LO", "Value": ["X"]}}


def test_private_elements_are_kept_with_their_creator(encode):
    ds = _ds(PatientID="X")
    block = ds.private_block(0x0029, "ACME 1.0", create=True)
    block.add_new(0x01, "LO", "private")
    out = encode(ds)
    assert out["00290010"] == {"vr": "LO", "Value": ["ACME 1.0"]}
    # implicit VR: pydicom's private dictionary does not know ACME, so UN bytes
    assert out["00291001"] in (
        {"vr": "LO", "Value": ["private"]},
        {"vr": "UN", "InlineBinary": base64.b64encode(b"private ").decode()},
    )


def test_include_selects_top_level_attributes_and_brings_private_creators():
    ds = _ds(PatientID="X", PatientName="Y", StudyInstanceUID="1.2.3")
    ds.private_block(0x0029, "ACME 1.0", create=True).add_new(0x01, "LO", "private")
    chosen = {0x0020000D, 0x00291001}
    out = to_dicom_json(_raw(ds), include=chosen.__contains__)
    assert list(out) == ["0020000D", "00290010", "00291001"]


def test_keys_are_in_ascending_order_even_when_added_out_of_order():
    ds = Dataset()
    ds.StudyInstanceUID = "1.2"
    ds.PatientID = "X"
    ds.Modality = "CT"
    assert list(to_dicom_json(ds)) == ["00080060", "00100020", "0020000D"]


# --- bulk data -----------------------------------------------------------------------------


def _with_binaries() -> Dataset:
    item = Dataset()
    item.add_new(0x00281201, "OW", b"\2\2" * 600)  # RedPaletteColorLookupTableData, 1200 B
    item.add_new(0x7FE00010, "OB", b"\7" * 16)  # icon pixel data, tiny
    ds = _ds(PatientID="X")
    ds.add_new(0x00880200, "SQ", Sequence([Dataset(), item]))  # IconImageSequence
    ds.add_new(0x00420011, "OB", b"x" * 1024)  # EncapsulatedDocument at the threshold
    ds.add_new(0x7FE00010, "OW", b"\3\3" * 8)  # same bytes in BE and LE
    return ds


def test_bulk_data_paths_name_the_element_from_the_top(encode):
    out = encode(_with_binaries(), bulkdata_uri=_bulk, bulk_threshold=1024)
    icon = out["00880200"]["Value"][1]
    assert icon["00281201"] == {"vr": "OW", "BulkDataURI": "bulk:00880200.1.00281201"}
    # pixel data: always by URI, however small (its VR is OB or OW, from BitsAllocated)
    assert icon["7FE00010"]["BulkDataURI"] == "bulk:00880200.1.7FE00010"
    assert out["7FE00010"]["BulkDataURI"] == "bulk:7FE00010"
    assert out["00420011"] == {"vr": "OB", "InlineBinary": base64.b64encode(b"x" * 1024).decode()}


def test_without_a_callback_every_binary_is_inline(encode):
    out = encode(_with_binaries())
    assert base64.b64decode(out["7FE00010"]["InlineBinary"]) == b"\3\3" * 8
    icon = out["00880200"]["Value"][1]
    assert base64.b64decode(icon["00281201"]["InlineBinary"]) == b"\2\2" * 600


def test_inline_binary_is_little_endian_from_a_big_endian_file():
    words = array.array("H", [1, 2, 0x0102])
    words.byteswap()  # OW values in a big endian file are big endian words
    ds = Dataset()
    ds.add_new(0x00281201, "OW", words.tobytes())
    out = to_dicom_json(_raw(ds, ExplicitVRBigEndian))
    assert array.array("H", base64.b64decode(out["00281201"]["InlineBinary"])).tolist() == [
        1,
        2,
        0x0102,
    ]


def test_deferred_pixel_data_becomes_a_uri_without_being_read():
    path = sample("CT_small.dcm")
    ds = dcmread(path, defer_size=1024)
    assert ds._dict[0x7FE00010].value is None
    out = to_dicom_json(ds, bulkdata_uri=_bulk)
    assert out["7FE00010"] == {"vr": "OW", "BulkDataURI": "bulk:7FE00010"}
    assert ds._dict[0x7FE00010].value is None
    inline = to_dicom_json(ds)["7FE00010"]["InlineBinary"]
    assert base64.b64decode(inline) == dcmread(path).PixelData


def test_encapsulated_pixel_data_is_a_uri():
    ds = _read(sample("JPEG2000.dcm"))
    assert to_dicom_json(ds, bulkdata_uri=_bulk)["7FE00010"] == {
        "vr": "OB",
        "BulkDataURI": "bulk:7FE00010",
    }


# --- character sets ----------------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(CHARSET_FILES.glob("*.dcm")), ids=lambda p: p.name)
def test_names_in_every_character_set_are_decoded_like_pydicom(path):
    ours = to_dicom_json(_read(path))
    theirs = _as_annex_f(_read(path).to_json_dict(), big_endian=False, with_uri=False)
    assert ours == theirs


def test_japanese_name_groups_from_iso_2022():
    out = to_dicom_json(_read(CHARSET_FILES / "chrH31.dcm"))
    assert out["00100010"]["Value"] == [
        {"Alphabetic": "Yamada^Tarou", "Ideographic": "山田^太郎", "Phonetic": "やまだ^たろう"}
    ]


def test_a_sequence_item_with_its_own_character_set():
    out = to_dicom_json(_read(CHARSET_FILES / "chrSQEncoding.dcm"))
    item = out["00321064"]["Value"][0]
    assert item["00100010"]["Value"][0]["Ideographic"] == "山田^太郎"


# --- JSON to Dataset ----------------------------------------------------------------------------


def test_json_round_trips_through_a_dataset_for_every_packaged_file():
    for path in readable_instances():
        if path.name == "badVR.dcm":
            continue
        first = to_dicom_json(_read(path))
        assert to_dicom_json(from_dicom_json(first)) == first, path.name


def test_numbers_sent_as_strings_are_read_exactly():
    obj = {
        "00281050": {"vr": "DS", "Value": ["0.1234567890123456", 40, None]},
        "00200013": {"vr": "IS", "Value": [" 7 "]},
        "00082218": {
            "vr": "SQ",
            "Value": [{"00180050": {"vr": "DS", "Value": ["2.50"]}}, {}],
        },
    }
    ds = from_dicom_json(obj)
    assert str(ds.WindowCenter[0]) == "0.1234567890123456"
    assert ds.WindowCenter[1] == 40 and ds.WindowCenter[2] is None
    assert ds.InstanceNumber == 7
    assert str(ds.AnatomicRegionSequence[0].SliceThickness) == "2.50"
    assert len(ds.AnatomicRegionSequence[1]) == 0


def test_an_integer_string_that_is_no_integer_is_refused():
    with pytest.raises(ValueError):
        from_dicom_json({"00200013": {"vr": "IS", "Value": ["1A"]}})


def test_bulk_data_uris_are_resolved_by_the_callback():
    obj = {"7FE00010": {"vr": "OW", "BulkDataURI": "http://x/bulk/7FE00010"}}
    ds = from_dicom_json(obj, bulkdata=lambda tag, vr, uri: b"\1\0" if uri.endswith("10") else b"")
    assert ds.PixelData == b"\1\0"
