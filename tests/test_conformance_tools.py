"""Independent tools judge the engine's output: dciodvfy (IOD conformance) and dcm2niix.

Our own tests check what we thought of; these ask third-party readers. dciodvfy (dicom3tools)
must find no error in an output that it did not find in its input, and dcm2niix must turn a
pseudonymized MR series into the very same voxels and geometry as the original series.
Both tools are required: their absence fails (run `make system-deps`; dcm2niix is a test
dependency of the package), it never skips.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import dcm2niix
import nibabel as nib
import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from app.pseudo.batch import pseudonymize_paths
from app.pseudo.engine import Deidentifier
from app.pseudo.files import UnreadableInput, pseudonymize_file
from tests.samples import PYDICOM_DATA_FILES, PYDICOM_FILES, readable_instances, sample

# --------------------------------------------------------------------------------------------
# dciodvfy
# --------------------------------------------------------------------------------------------

# Packaged files the engine refuses by design (their pixel data stop short of the declared
# length, see test_pseudonymize_files): for them the test checks the refusal instead.
REFUSED = {"MR_truncated.dcm": "truncated pixel data", "rtplan_truncated.dcm": "truncated header"}

_VALUE_SHOWN = re.compile(r"(\[\d+\] = )<.*>(?= - |$)")  # "UI [1] = <1.2.3> - reason"
_VALUE_OPEN = re.compile(r"(\[\d+\] = )<(?!value>).*$")  # a multi-line value: cut it off
_CHAR_SHOWN = re.compile(r"'.'\s*\(0x[0-9a-fA-F]+\)")  # "= 'f' (0x66)"
_QUOTED = re.compile(r'"[^"]*"')  # 'Illegal root for UID - "1.2.3" in ...'
_BRACKETED = re.compile(r"(?<!Element=)(?<!Module=)(?<!attribute )<[^<>]*>")
_TAG = re.compile(r"\(0x[0-9a-fA-F]{4},0x[0-9a-fA-F]{4}\)")
_TYPE = re.compile(r"Type \w+")  # "Type 1C": a requirement, not a value
_NUMBER = re.compile(r"0x[0-9a-fA-F]+|[-+]?\d+(?:[.:]\d+)*(?:[eE][-+]?\d+)?")
_SPACES = re.compile(r"\s+")


def normalize_error(line: str) -> str:
    """The kind of error and the attribute it is about; every value replaced by a placeholder.

    Values (names, UIDs, dates, numbers) differ between input and output by design, and must
    not be printed; the tag, the attribute and module names, the Type and the reason stay.
    """
    line = _VALUE_SHOWN.sub(r"\1<value>", line)
    line = _VALUE_OPEN.sub(r"\1<value>", line)
    line = _CHAR_SHOWN.sub("'?'", line)
    line = _QUOTED.sub('"?"', line)
    line = _BRACKETED.sub("<value>", line)
    kept: list[str] = []

    def protect(match: re.Match[str]) -> str:
        kept.append(match.group(0))
        return "\0" * len(kept) + "\1"

    line = _NUMBER.sub("N", _TYPE.sub(protect, _TAG.sub(protect, line)))
    for i in range(len(kept), 0, -1):
        line = line.replace("\0" * i + "\1", kept[i - 1])
    return _SPACES.sub(" ", line).strip()


@dataclass
class Verdict:
    errors: Counter[str]  # normalized "Error" lines, with their number of occurrences
    aborted: bool  # dciodvfy died (it asserts on 32-bit pixel data) before checking modules


def dciodvfy_bin() -> str:
    found = shutil.which("dciodvfy")
    if found is None:
        pytest.fail("dciodvfy (dicom3tools) is not installed: run `make system-deps`")
    return found


def dciodvfy(path: Path) -> Verdict:
    """Run dciodvfy on one file; it writes its findings to stderr, one per line."""
    proc = subprocess.run(
        [dciodvfy_bin(), str(path)],
        capture_output=True,
        text=True,
        errors="replace",
        timeout=60,
        check=False,
    )
    errors = Counter(
        normalize_error(line) for line in proc.stderr.splitlines() if line.startswith("Error")
    )
    return Verdict(errors, aborted=proc.returncode < 0)


def header_only_copy(path: Path, target: Path) -> Path:
    """The file's bytes up to its pixel data element: same header bytes, no pixels."""
    with open(path, "rb") as fp:
        dcmread(fp, stop_before_pixels=True, force=True)
        end = fp.tell()
        fp.seek(0)
        target.write_bytes(fp.read(end))
    return target


def new_errors(src: Path, out: Path, scratch: Path) -> Counter[str]:
    """Errors dciodvfy finds in `out` and not in `src` (counted, so one more is one too many).

    When dciodvfy aborts on the input (an assertion on 32-bit pixel data), both files are
    compared again without their pixel data, so their headers are still checked whole.
    """
    with ThreadPoolExecutor(max_workers=2) as pool:
        before, after = pool.map(dciodvfy, (src, out))
    if before.aborted:
        before = dciodvfy(header_only_copy(src, scratch / "input-header.dcm"))
        after = dciodvfy(header_only_copy(out, scratch / "output-header.dcm"))
    new = after.errors - before.errors
    if after.aborted and not before.aborted:
        new["Abort - dciodvfy crashed on the output only"] += 1
    return new


def _instance_id(path: Path) -> str:
    for root, label in ((PYDICOM_FILES, "pydicom"), (PYDICOM_DATA_FILES, "pydicom-data")):
        if path.is_relative_to(root):
            return f"{label}/{path.relative_to(root).as_posix()}"
    return path.name


INSTANCES = readable_instances()


def test_dciodvfy_is_installed() -> None:
    """The conformance checks below are only as good as the checker being there."""
    assert Path(dciodvfy_bin()).is_file()


def test_the_normalized_errors_keep_the_attribute_and_drop_the_values() -> None:
    """Error lines are compared and printed without their values (UIDs, names, numbers)."""
    shown = (
        "Error - Value invalid for this VR - (0x0010,0x0010) PN Patient's Name  PN [1] = "
        "<TESTPATIENT^ALPHA 1.2.840.99> - Character invalid for this VR = 'f' (0x66)"
    )
    assert normalize_error(shown) == (
        "Error - Value invalid for this VR - (0x0010,0x0010) PN Patient's Name PN [N] = "
        "<value> - Character invalid for this VR = '?'"
    )
    missing = "Error - Missing attribute Type 1C Conditional Element=<PixelData> Module=<X>"
    assert normalize_error(missing) == missing
    odd = 'Error - Illegal root for UID - "1.2.3.44" in (0x0020,0x000d) Study Instance UID'
    assert "1.2.3" not in normalize_error(odd) and "(0x0020,0x000d)" in normalize_error(odd)
    assert normalize_error("Error - StudyInstanceUID has same value as X <1.2.3.4>") == (
        "Error - StudyInstanceUID has same value as X <value>"
    )
    multi_line = "Error - Value invalid for this VR - (0x0009,0x1010)  ?  UT [1] = <<?xml ver"
    assert "xml" not in normalize_error(multi_line)


@pytest.mark.parametrize("name", ["CT_small.dcm", "rtdose.dcm"])
def test_the_comparison_sees_a_type_1_attribute_emptied(name: str, tmp_path: Path) -> None:
    """A deliberately broken output must show up as a new error: the checker is not blind.

    rtdose.dcm has 32-bit pixel data, on which dciodvfy aborts: the header-only path.
    """
    broken = dcmread(sample(name))
    broken.Modality = ""  # Type 1 in General Series
    broken.save_as(tmp_path / "broken.dcm")
    new = new_errors(sample(name), tmp_path / "broken.dcm", tmp_path)
    assert any("Element=<Modality>" in line for line in new), new


@pytest.mark.parametrize("src", INSTANCES, ids=[_instance_id(p) for p in INSTANCES])
def test_dciodvfy_finds_no_new_error_in_the_output(
    src: Path, engine: Deidentifier, tmp_path: Path
) -> None:
    """Pseudonymizing must not break IOD conformance: no Type 1 emptied, no value over its VR."""
    if src.name in REFUSED:
        with pytest.raises(UnreadableInput, match=REFUSED[src.name]):
            pseudonymize_file(src, tmp_path / "out", engine)
        return
    _, out = pseudonymize_file(src, tmp_path / "out", engine)
    new = new_errors(src, out, tmp_path)
    listing = "\n".join(f"  {n} x {line}" for line, n in sorted(new.items()))
    assert not new, f"{src.name}: dciodvfy errors in the output only:\n{listing}"


def test_enough_instances_and_every_kind_are_checked() -> None:
    """The parametrized check above covers the modalities and encodings that matter."""
    names = {p.name for p in INSTANCES}
    assert len(INSTANCES) > 150
    expected = {
        "CT_small.dcm",  # CT
        "MR_small.dcm",  # MR
        "US1_UNCR.dcm",  # US
        "SC_rgb.dcm",  # SC
        "rtdose.dcm",  # RT Dose (32-bit pixel data: dciodvfy aborts, headers compared)
        "rtplan.dcm",  # RT Plan
        "rtstruct.dcm",  # RT Structure Set
        "test-SR.dcm",  # SR
        "emri_small.dcm",  # enhanced multi-frame MR
        "eCT_Supplemental.dcm",  # enhanced CT
        "MR_small_bigendian.dcm",  # big endian
        "MR_small_implicit.dcm",  # implicit VR
        "JPEG-lossy.dcm",  # JPEG
        "JPEG2000.dcm",  # J2K
        "MR_small_RLE.dcm",  # RLE
        "waveform_ecg.dcm",  # waveform
    }
    assert expected <= names, expected - names


# --------------------------------------------------------------------------------------------
# dcm2niix
# --------------------------------------------------------------------------------------------

# An invented person, written into the series before pseudonymization.
IDENTITY = {
    "PatientName": "TESTPATIENT^ALPHONSINE",
    "PatientID": "TP4471ALPHA",
    "PatientBirthDate": "19610417",
    "AccessionNumber": "ACC8821377",
    "StudyID": "STU55102",
    "InstitutionName": "Hopital Testville Alphonse",
    "StationName": "STNTEST07",
    "DeviceSerialNumber": "DSN90210X",
    "ReferringPhysicianName": "DRTESTREF^ZACHARIE",
    "OperatorsName": "OPTESTER^BERENICE",
    "ImageComments": "Follow-up of TESTPATIENT ALPHONSINE, id TP4471ALPHA",
}
# What must not be found, as a substring, anywhere in the pseudonymized conversion.
IDENTITY_STRINGS = (
    "TESTPATIENT",
    "ALPHONSINE",
    "TP4471ALPHA",
    "19610417",
    "1961-04-17",  # dcm2niix writes dates in ISO form
    "ACC8821377",
    "STU55102",
    "Testville",
    "STNTEST07",
    "DSN90210X",
    "DRTESTREF",
    "ZACHARIE",
    "OPTESTER",
    "BERENICE",
)
# Acquisition parameters an analysis relies on: the same before and after, when present.
ACQUISITION_KEYS = (
    "Modality",
    "Manufacturer",
    "ManufacturersModelName",
    "MagneticFieldStrength",
    "ImagingFrequency",
    "MRAcquisitionType",
    "ScanningSequence",
    "SequenceVariant",
    "SequenceName",
    "EchoTime",
    "RepetitionTime",
    "FlipAngle",
    "SliceThickness",
    "SpacingBetweenSlices",
    "ImageOrientationPatientDICOM",
    "PatientPosition",
    "ImageType",
    "SeriesNumber",
)
SLICES = 8


@dataclass
class Conversion:
    image: nib.Nifti1Image
    sidecar: dict
    folder: Path


def dcm2niix_bin() -> str:
    binary = Path(dcm2niix.bin)
    if not binary.is_file():
        pytest.fail(f"the dcm2niix wheel has no binary at {binary}: reinstall '.[test]'")
    return str(binary)


def convert(dicom_dir: Path, out_dir: Path, home: Path) -> Conversion:
    """dcm2niix with explicit flags and an empty HOME, so no ~/.dcm2nii.ini can interfere.

    `-ba n` keeps the identifying fields in the sidecar (PatientName, PatientID, birth date,
    institution, station…): that is what lets the test see an identity the engine left.
    dcm2niix refuses an output folder that does not exist, and converts a whole folder even
    when given one file: each conversion gets its own input and output folders.
    """
    out_dir.mkdir(parents=True)
    home.mkdir(parents=True, exist_ok=True)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "LC_ALL": "C"}
    args = ["-z", "n", "-b", "y", "-ba", "n", "-f", "series", "-o", str(out_dir), str(dicom_dir)]
    proc = subprocess.run(
        [dcm2niix_bin(), *args],
        capture_output=True,
        text=True,
        errors="replace",
        env=env,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, f"dcm2niix exited {proc.returncode}:\n{proc.stderr[-2000:]}"
    niftis = sorted(out_dir.glob("*.nii"))
    assert [p.name for p in niftis] == ["series.nii"], f"expected one volume, got {niftis}"
    sidecar = json.loads((out_dir / "series.json").read_text())
    return Conversion(nib.load(niftis[0]), sidecar, out_dir)


def assert_same_volume(before: Conversion, after: Conversion) -> None:
    """Same voxels (raw stored values and scaling) and same geometry, to 1e-5 mm."""
    assert before.image.shape == after.image.shape
    assert before.image.get_data_dtype() == after.image.get_data_dtype()
    assert np.array_equal(np.asanyarray(before.image.dataobj), np.asanyarray(after.image.dataobj))
    assert np.allclose(before.image.affine, after.image.affine, atol=1e-5), (
        before.image.affine,
        after.image.affine,
    )
    for key in ("scl_slope", "scl_inter", "qform_code", "sform_code", "pixdim"):
        a, b = before.image.header[key], after.image.header[key]
        assert np.array_equal(a, b, equal_nan=True), key


def leaked_identity(folder: Path) -> list[str]:
    """Injected identity strings found in any byte of the conversion (NIfTI and sidecar)."""
    found = set()
    for path in folder.iterdir():
        data = path.read_bytes().upper()
        found |= {s for s in IDENTITY_STRINGS if s.upper().encode() in data}
    return sorted(found)


def write_mr_series(folder: Path) -> list[Path]:
    """A real MR image cloned into an 8-slice series stepping along the slice normal.

    Study, series and frame of reference are shared; each slice has its own SOP Instance UID
    and instance number, and its own pixels (the image shifted by 3 rows per slice) so that a
    reordering of the slices would change the volume. The patient is invented.
    """
    template = dcmread(sample("MR_small.dcm"))
    orientation = np.array([float(v) for v in template.ImageOrientationPatient])
    normal = np.cross(orientation[:3], orientation[3:])
    origin = np.array([float(v) for v in template.ImagePositionPatient])
    thickness = float(template.SliceThickness)
    pixels = template.pixel_array
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    folder.mkdir(parents=True)
    paths = []
    for i in range(SLICES):
        ds: Dataset = dcmread(sample("MR_small.dcm"))
        for keyword, value in IDENTITY.items():
            setattr(ds, keyword, value)
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.InstanceNumber = i + 1
        position = origin + i * thickness * normal
        ds.ImagePositionPatient = [f"{v:.4f}" for v in position]
        ds.SliceLocation = f"{float(position @ normal):.4f}"
        ds.PixelData = np.roll(pixels, 3 * i, axis=0).tobytes()
        path = folder / f"slice{i + 1:02d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def test_a_pseudonymized_mr_series_converts_to_the_same_volume(
    engine: Deidentifier, tmp_path: Path
) -> None:
    """dcm2niix sees the same volume before and after, and none of the identity after."""
    paths = write_mr_series(tmp_path / "dicom")
    report = pseudonymize_paths(paths, tmp_path / "pseudo", engine)
    assert report.failures == []
    assert len(report.outputs) == SLICES
    assert len({r.series_uid for r in report.instances}) == 1

    home = tmp_path / "home"
    before = convert(tmp_path / "dicom", tmp_path / "nii-before", home)
    after = convert(tmp_path / "pseudo", tmp_path / "nii-after", home)

    assert before.image.shape == (64, 64, SLICES)
    assert_same_volume(before, after)
    # The identity is there before (so the search below can find it) and gone after.
    assert before.sidecar["PatientName"] == IDENTITY["PatientName"]
    assert leaked_identity(before.folder), "the original sidecar should show the identity"
    assert leaked_identity(after.folder) == []
    assert after.sidecar.get("PatientID") == report.instances[0].patient_pseudonym
    for key in ACQUISITION_KEYS:
        if key in before.sidecar:
            assert after.sidecar.get(key) == before.sidecar[key], key


ENHANCED_MR = [
    name
    for name in (
        "emri_small.dcm",
        "emri_small_big_endian.dcm",
        "emri_small_RLE.dcm",
        "emri_small_jpeg_2k_lossless.dcm",
        "emri_small_jpeg_ls_lossless.dcm",
    )
    if any(p.name == name for p in INSTANCES)
]


def test_an_enhanced_mr_is_packaged() -> None:
    """The multi-frame conversion test below must have something to convert."""
    assert "emri_small.dcm" in ENHANCED_MR


@pytest.mark.parametrize("name", ENHANCED_MR)
def test_a_pseudonymized_enhanced_mr_converts_to_the_same_volume(
    name: str, engine: Deidentifier, tmp_path: Path
) -> None:
    """Functional groups survive pseudonymization: dcm2niix builds the same multi-frame volume."""
    src_dir = tmp_path / "dicom"
    src_dir.mkdir()
    shutil.copy2(sample(name), src_dir / "enhanced.dcm")
    report = pseudonymize_paths([src_dir / "enhanced.dcm"], tmp_path / "pseudo", engine)
    assert report.failures == [] and len(report.outputs) == 1

    home = tmp_path / "home"
    before = convert(src_dir, tmp_path / "nii-before", home)
    after = convert(tmp_path / "pseudo", tmp_path / "nii-after", home)

    frames = int(dcmread(sample(name), stop_before_pixels=True).NumberOfFrames)
    assert before.image.shape[:3] == (64, 64, frames)
    assert_same_volume(before, after)
    for key in ACQUISITION_KEYS:
        if key in before.sidecar:
            assert after.sidecar.get(key) == before.sidecar[key], key
