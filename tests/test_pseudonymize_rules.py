"""What the engine guarantees beyond single files: keys, links, intervals, markers, profiles."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid

from app.pseudo.batch import pseudonymize_paths
from app.pseudo.engine import Deidentifier
from app.pseudo.files import pseudonymize_file
from app.pseudo.profile import kept_uid_attributes, resolve_combined
from tests.conftest import make_engine
from tests.identities import Identity, inject
from tests.samples import sample


def _ct_series(folder: Path, patient_id: str, study_date: str, n: int = 3) -> list[Path]:
    """n slices of a real CT, one new study, one series, one frame of reference."""
    folder.mkdir(parents=True, exist_ok=True)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    paths = []
    for i in range(n):
        ds = dcmread(sample("CT_small.dcm"))
        inject(ds, Identity(patient_id=patient_id, study_date=study_date))
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.SOPInstanceUID = generate_uid()
        ds.InstanceNumber = i + 1
        ds.PatientBirthDate = "19560314"
        ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = study_date
        paths.append(folder / f"{i}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
    return paths


def _references_to(series: list[Path], folder: Path) -> Path:
    """An RT Structure Set from pydicom, rewired to reference the given CT series."""
    cts = [dcmread(p) for p in series]
    rt = dcmread(sample("rtstruct.dcm"), force=True)
    rt.PatientID, rt.PatientName = cts[0].PatientID, cts[0].PatientName
    rt.StudyInstanceUID = cts[0].StudyInstanceUID
    rt.SOPInstanceUID, rt.SeriesInstanceUID = generate_uid(), generate_uid()
    ref_frame = rt.ReferencedFrameOfReferenceSequence[0]
    ref_frame.FrameOfReferenceUID = cts[0].FrameOfReferenceUID
    ref_study = ref_frame.RTReferencedStudySequence[0]
    ref_study.ReferencedSOPInstanceUID = cts[0].StudyInstanceUID
    ref_series = ref_study.RTReferencedSeriesSequence[0]
    ref_series.SeriesInstanceUID = cts[0].SeriesInstanceUID
    images = Sequence()
    for ct in cts:
        item = Dataset()
        item.ReferencedSOPClassUID = ct.SOPClassUID
        item.ReferencedSOPInstanceUID = ct.SOPInstanceUID
        images.append(item)
    ref_series.ContourImageSequence = images
    for roi in rt.StructureSetROISequence:
        roi.ReferencedFrameOfReferenceUID = cts[0].FrameOfReferenceUID
    for contour_roi in rt.ROIContourSequence:
        for contour in contour_roi.get("ContourSequence", []):
            for image in contour.get("ContourImageSequence", []):
                image.ReferencedSOPInstanceUID = cts[0].SOPInstanceUID
    path = folder / "rtstruct.dcm"
    rt.save_as(path, enforce_file_format=True)
    return path


def _all_uids(ds: Dataset, kept: frozenset[int], path: str = "") -> list[tuple[str, str]]:
    found = []
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value:
                found += _all_uids(item, kept, f"{path}{elem.keyword}.")
        elif elem.VR == "UI" and elem.tag not in kept and elem.value:
            values = elem.value if isinstance(elem.value, list) else [elem.value]
            found += [(path + elem.keyword, str(v)) for v in values]
    return found


def test_every_reference_in_a_batch_points_to_an_output_of_that_batch(engine, tmp_path):
    series = _ct_series(tmp_path / "in", "IPP1", "20230917")
    rt = _references_to(series, tmp_path / "in")
    originals = {u for p in [*series, rt] for _, u in _all_uids(dcmread(p), frozenset())}
    report = pseudonymize_paths([*series, rt], tmp_path / "out", engine)
    assert not report.failures
    outputs = [dcmread(p) for p in report.outputs]
    produced = {str(getattr(d, k)) for d in outputs for k in
                ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID")}  # fmt: skip
    produced |= {str(d.FrameOfReferenceUID) for d in outputs if "FrameOfReferenceUID" in d}
    kept = kept_uid_attributes()
    references = 0
    for ds in outputs:
        for where, uid in _all_uids(ds, kept):
            assert uid not in originals, f"{where} kept a source UID"
            assert uid.startswith(("2.25.", "1.2.840.10008.")), where
            last = where.rsplit(".", 1)[-1]
            if (
                last.startswith("Referenced")
                or last in ("FrameOfReferenceUID",)
                or ("RTReferenced" in where and last in ("SeriesInstanceUID",))
            ):
                assert uid in produced, f"{where} points outside the batch"
                references += 1
    assert references >= 8  # contour images, frame of reference, study and series refs
    rt_out = outputs[-1]
    assert rt_out.StudyInstanceUID == outputs[0].StudyInstanceUID


def test_same_input_same_project_gives_identical_bytes(settings, tmp_path):
    series = _ct_series(tmp_path / "in", "IPP1", "20230917")
    first = pseudonymize_paths(series, tmp_path / "a", make_engine(settings, "alpha"))
    # A new engine on the same project key: what a later re-extraction would use.
    from app.projects import get_project, project_engine

    again = project_engine(settings, get_project(settings, "alpha"))
    second = pseudonymize_paths(series, tmp_path / "b", again)
    for a, b in zip(first.outputs, second.outputs, strict=True):
        assert a.relative_to(tmp_path / "a") == b.relative_to(tmp_path / "b")
        assert a.read_bytes() == b.read_bytes()


def test_two_projects_share_no_pseudonym_and_no_uid(settings, tmp_path):
    series = _ct_series(tmp_path / "in", "IPP1", "20230917")
    a = pseudonymize_paths(series, tmp_path / "a", make_engine(settings, "alpha"))
    b = pseudonymize_paths(series, tmp_path / "b", make_engine(settings, "beta"))
    uids_a = {u for p in a.outputs for _, u in _all_uids(dcmread(p), kept_uid_attributes())}
    uids_b = {u for p in b.outputs for _, u in _all_uids(dcmread(p), kept_uid_attributes())}
    assert uids_a and uids_b and not uids_a & uids_b
    assert a.instances[0].patient_pseudonym != b.instances[0].patient_pseudonym
    assert dcmread(a.outputs[0]).AccessionNumber != dcmread(b.outputs[0]).AccessionNumber


def test_intervals_within_a_patient_survive_and_times_are_kept(engine, tmp_path):
    first = _ct_series(tmp_path / "s1", "IPP1", "20230917", n=1)
    second = _ct_series(tmp_path / "s2", "IPP1", "20240203", n=1)
    other = _ct_series(tmp_path / "s3", "IPP2", "20230917", n=1)
    report = pseudonymize_paths([*first, *second, *other], tmp_path / "out", engine)
    a, b, c = (dcmread(p) for p in report.outputs)

    def day(value: str) -> dt.date:
        return dt.datetime.strptime(value, "%Y%m%d").date()

    assert day(b.StudyDate) - day(a.StudyDate) == dt.date(2024, 2, 3) - dt.date(2023, 9, 17)
    assert day(a.StudyDate) != dt.date(2023, 9, 17)
    # Age at the exam survives: birth date moved by the same offset.
    assert day(a.StudyDate) - day(a.PatientBirthDate) == dt.date(2023, 9, 17) - dt.date(1956, 3, 14)
    assert a.StudyTime == dcmread(first[0]).StudyTime
    assert a.PatientID == b.PatientID != c.PatientID
    assert day(c.StudyDate) != day(a.StudyDate)  # another patient, another offset


def test_the_same_value_in_two_patients_is_pseudonymized_for_each(engine, tmp_path):
    # Same description and dates, byte for byte, in two patients' files: the description
    # names one of them, and each patient has its own date offset.
    paths = []
    for i, (family, patient_id) in enumerate([("KERGUELEN", "IPP1"), ("MORVAN", "IPP2")] * 2):
        ds = dcmread(sample("CT_small.dcm"))
        ds.PatientName, ds.PatientID = f"{family}^Anne", patient_id
        ds.StudyDescription = "Scanner KERGUELEN"
        ds.StudyDate = ds.SeriesDate = "20230917"
        ds.SOPInstanceUID = generate_uid()
        paths.append(tmp_path / f"{i}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
    report = pseudonymize_paths(paths, tmp_path / "out", engine)
    first, second, first_again, second_again = (dcmread(p) for p in report.outputs)
    assert "KERGUELEN" not in first.StudyDescription
    assert second.StudyDescription == "Scanner KERGUELEN"  # not this patient's name
    assert first.StudyDate != second.StudyDate  # two patients, two offsets
    for again, before in ((first_again, first), (second_again, second)):
        assert again.StudyDescription == before.StudyDescription
        assert again.StudyDate == before.StudyDate == again.SeriesDate
    assert [r.changes for r in report.instances[2:]] == [r.changes for r in report.instances[:2]]


def test_markers_name_exactly_the_applied_options(settings, tmp_path):
    src = _ct_series(tmp_path / "in", "IPP1", "20230917", n=1)[0]
    _, out = pseudonymize_file(src, tmp_path / "o1", make_engine(settings, "alpha"))
    ds = dcmread(out)
    codes = [item.CodeValue for item in ds.DeidentificationMethodCodeSequence]
    assert codes == ["113100", "113105", "113107", "113108", "113111"]
    assert all(i.CodingSchemeDesignator == "DCM" for i in ds.DeidentificationMethodCodeSequence)
    assert ds.PatientIdentityRemoved == "YES"
    assert ds.LongitudinalTemporalInformationModified == "MODIFIED"
    assert "profile research-fr v1" in ds.DeidentificationMethod
    assert any("2024b" in v for v in ds.DeidentificationMethod)

    basic = make_engine(settings, "gamma", profile="basic", options=("clean-structured-content",))
    _, out = pseudonymize_file(src, tmp_path / "o2", basic)
    ds = dcmread(out)
    assert [i.CodeValue for i in ds.DeidentificationMethodCodeSequence] == ["113100", "113104"]
    assert ds.LongitudinalTemporalInformationModified == "REMOVED"
    assert "StudyDate" in ds and ds.StudyDate == ""  # Basic: Z
    assert "PatientBirthDate" in ds and ds.PatientBirthDate == ""
    assert "StudyDescription" not in ds  # Basic: X, no Clean Descriptors


def test_birth_date_can_be_truncated_to_the_year(settings, tmp_path):
    from app.pseudo import profile as profile_module

    data = {"name": "year-only", "options": [], "birth_date": "year",
            "attributes": {"PatientBirthDate": "birth-date"}}  # fmt: skip
    engine = Deidentifier(profile_module.compile_profile(data), make_engine(settings).keys)
    src = _ct_series(tmp_path / "in", "IPP1", "20230917", n=1)[0]
    _, out = pseudonymize_file(src, tmp_path / "out", engine)
    assert dcmread(out).PatientBirthDate == "19560101"


@pytest.mark.parametrize(
    ("code", "resolved"),
    [("X/Z", "Z"), ("X/D", "D"), ("X/Z/D", "D"), ("Z/D", "D"), ("X/Z/U*", "U"), ("X", "X")],
)
def test_combined_codes_resolve_to_the_choice_that_keeps_the_attribute(code, resolved):
    assert resolve_combined(code) == resolved


def test_staff_and_site_are_replaced_by_stable_tokens(engine, tmp_path):
    series = _ct_series(tmp_path / "in", "IPP1", "20230917", n=2)
    report = pseudonymize_paths(series, tmp_path / "out", engine)
    a, b = (dcmread(p) for p in report.outputs)
    who = Identity()
    assert a.InstitutionName.startswith("SITE-") and who.institution not in a.InstitutionName
    assert str(a.ReferringPhysicianName).startswith("PHYS-")
    assert a.ReferringPhysicianName == b.ReferringPhysicianName
    # The same physician is the same token whichever role names them.
    assert str(a.OperatorsName).removeprefix("OPER-") != str(a.ReferringPhysicianName)
    assert a.Manufacturer == dcmread(series[0]).Manufacturer  # equipment kept
    assert a.KVP == dcmread(series[0]).KVP  # acquisition parameters kept


def _private_keys(ds: Dataset) -> set[tuple[int, str, int]]:
    keys = set()
    for elem in ds:
        if elem.tag.group & 1 and elem.tag.element >= 0x1000:
            creator = ds[(elem.tag.group << 16) | (elem.tag.element >> 8)].value
            keys.add((elem.tag.group, creator, elem.tag.element & 0xFF))
    return keys


def test_safe_private_elements_are_kept_with_their_creator_and_others_removed(settings, tmp_path):
    from app.pseudo.private import safe_private_attributes

    src = sample("CT_small.dcm")
    before = _private_keys(dcmread(src))
    safe = before & safe_private_attributes()
    assert safe and before - safe  # a GE CT holds both kinds
    _, out = pseudonymize_file(src, tmp_path / "a", make_engine(settings, "alpha"))
    assert _private_keys(dcmread(out)) == safe
    _, out = pseudonymize_file(src, tmp_path / "b", make_engine(settings, "beta", profile="basic"))
    assert not any(e.tag.group & 1 for e in dcmread(out)), "Basic removes every private element"


def test_a_profile_can_keep_reviewed_private_elements(settings, tmp_path):
    from app.pseudo import profile as profile_module

    ds = dcmread(sample("CT_small.dcm"))
    block = ds.private_block(0x0043, "ACME SCANNER 2", create=True)
    block.add_new(0x10, "DS", "1.5")
    block.add_new(0x11, "UI", ds.StudyInstanceUID)  # a vendor copy of a UID
    block.add_new(0x12, "LO", "not reviewed")
    src = tmp_path / "in.dcm"
    ds.save_as(src)
    data = {"name": "reviewed", "options": ["retain-safe-private"],
            "private": {"keep": [{"group": "0043", "creator": "ACME SCANNER 2",
                                  "elements": ["10", "11"]}]}}  # fmt: skip
    engine = Deidentifier(profile_module.compile_profile(data), make_engine(settings).keys)
    _, out = pseudonymize_file(src, tmp_path / "out", engine)
    result = dcmread(out)
    kept = result.private_block(0x0043, "ACME SCANNER 2")
    assert kept[0x10].value == "1.5"
    assert kept[0x11].value == result.StudyInstanceUID != ds.StudyInstanceUID
    assert (0x0043, "ACME SCANNER 2", 0x12) not in _private_keys(result)
