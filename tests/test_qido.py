"""QIDO-RS on the research surface (PS3.18 10.6), on both deployments.

Most tests write index rows directly (`put`): QIDO reads the index only, and that lets a test
choose the stored values exactly (names with `=` groups, `%` and `_` in values, fractional
times). The end-to-end tests ingest real files through the pseudonymizer.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from urllib.parse import quote

import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom import dcmread

from app.dicomweb.qido import DEFAULT_LIMIT
from app.store import index_repo
from app.store.facts import InstanceFacts
from tests.identities import Identity, leaked_tokens, write_injected
from tests.samples import sample

pytest_plugins = ["tests.blobstores", "tests.research_server"]

ROOT = "/projects/alpha/dicom-web"
CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
DICOM_JSON = "application/dicom+json"


def put(
    research,
    sop: str,
    *,
    study: str = "1.2.1",
    series: str = "1.2.1.1",
    sop_class: str = CT,
    project: str = "alpha",
    **values,
) -> None:
    """Index one instance with chosen values (study, series or instance columns by name)."""
    study_values = {k: values.pop(k) for k in list(values) if k in STUDY_COLUMNS}
    series_values = {k: values.pop(k) for k in list(values) if k in SERIES_COLUMNS}
    facts = InstanceFacts(
        study_uid=study,
        series_uid=series,
        sop_uid=sop,
        sop_class_uid=sop_class,
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        size=1,
        sha256=hashlib.sha256(sop.encode()).hexdigest(),
        header_length=1,
        study=study_values,
        series={"modality": "CT", **series_values},
        instance=values,
    )
    index_repo.upsert_instance(research.stores.index, project, facts, f"test/{project}/{sop}")


STUDY_COLUMNS = {
    "patient_id", "patient_name", "patient_birth_date", "patient_sex", "study_date",
    "study_time", "accession_number", "study_id", "referring_physician_name",
    "study_description",
}  # fmt: skip
SERIES_COLUMNS = {
    "modality", "series_description", "body_part_examined", "pps_start_date",
    "pps_start_time", "series_number",
}  # fmt: skip


def two_studies(research) -> None:
    """Study 1.2.1 (CT + MR series, 3 instances) and study 1.2.2 (one CT instance)."""
    first = {
        "study": "1.2.1", "patient_name": "Doe^John=ドウ^ジョン", "patient_id": "PAT1",
        "study_date": "20240105", "study_time": "101500.25", "accession_number": "ACC1",
        "study_id": "S1", "referring_physician_name": "Kerr^Anna", "study_description": "head",
        "pps_start_date": "20240105", "pps_start_time": "1016",
    }  # fmt: skip
    put(research, "1.2.1.1.1", series="1.2.1.1", series_number=1, instance_number=1, **first)
    put(research, "1.2.1.1.2", series="1.2.1.1", series_number=1, instance_number=2, **first)
    put(
        research, "1.2.1.2.1", series="1.2.1.2", series_number=2, instance_number=1,
        modality="MR", sop_class=MR, rows=256, **first,
    )  # fmt: skip
    put(
        research, "1.2.2.1.1", study="1.2.2", series="1.2.2.1", series_number=7,
        instance_number=5, patient_name="Smith^Jane", patient_id="PAT2",
        study_date="20240220", study_time="2330", accession_number="acc1", study_id="S2",
        referring_physician_name="Lee^Bo", pps_start_date="20240221", pps_start_time="0005",
    )  # fmt: skip


def values(response, tag: str) -> list:
    assert response.status_code == 200, response.text
    return [item[tag]["Value"][0] for item in response.json() if "Value" in item[tag]]


def uids(response, tag: str = "0020000D") -> list[str]:
    return values(response, tag)


# --- the study level -----------------------------------------------------------------------


def test_studies_return_the_default_attributes_counts_and_modalities(research):
    two_studies(research)
    response = research.get(f"{ROOT}/studies", params={"StudyInstanceUID": "1.2.1"})
    assert response.status_code == 200
    assert response.headers["content-type"] == DICOM_JSON
    [study] = response.json()
    assert study["00080061"] == {"vr": "CS", "Value": ["CT", "MR"]}  # ModalitiesInStudy
    assert study["00201206"] == {"vr": "IS", "Value": [2]}  # NumberOfStudyRelatedSeries
    assert study["00201208"] == {"vr": "IS", "Value": [3]}  # NumberOfStudyRelatedInstances
    assert study["00080056"] == {"vr": "CS", "Value": ["ONLINE"]}
    assert study["00081190"]["Value"] == [f"http://testserver{ROOT}/studies/1.2.1"]
    assert study["00100010"]["Value"] == [{"Alphabetic": "Doe^John", "Ideographic": "ドウ^ジョン"}]
    assert study["00080005"] == {"vr": "CS", "Value": ["ISO_IR 192"]}  # non-ASCII name
    assert study["00080020"]["Value"] == ["20240105"] and study["00080030"]["Value"]
    for tag in ("00080050", "00080090", "00100020", "00100030", "00100040", "00200010"):
        assert tag in study  # required return keys, empty ones as {"vr": …}
    assert "00100030" in study and "Value" not in study["00100030"]
    assert "00081030" not in study  # StudyDescription only on request
    assert "00080060" not in study and "0020000E" not in study  # no lower-level attribute
    assert list(study) == sorted(study)
    ascii_only = research.get(f"{ROOT}/studies", params={"StudyInstanceUID": "1.2.2"})
    assert "00080005" not in ascii_only.json()[0]


@pytest.mark.parametrize(
    ("key", "first", "second", "neither"),
    [
        ("StudyDate", "20240105", "20240220", "20240106"),
        ("StudyTime", "1015", "2330", "1016"),
        ("AccessionNumber", "ACC1", "acc1", "Acc1"),  # exact, case included
        ("ModalitiesInStudy", "MR", None, "US"),
        ("ReferringPhysicianName", "Kerr^Anna", "Lee^Bo", "Kerr"),
        ("PatientName", "Doe^John", "Smith^Jane", "Doe^Jo"),
        ("PatientID", "PAT1", "PAT2", "PAT"),
        ("StudyInstanceUID", "1.2.1", "1.2.2", "1.2.3"),
        ("StudyID", "S1", "S2", "s1"),
        ("00100020", "PAT1", "PAT2", "PAT3"),  # a tag instead of the keyword
    ],
)
def test_each_required_study_key_matches(research, key, first, second, neither):
    two_studies(research)
    assert uids(research.get(f"{ROOT}/studies", params={key: first})) == ["1.2.1"]
    if second is not None:
        assert uids(research.get(f"{ROOT}/studies", params={key: second})) == ["1.2.2"]
    assert uids(research.get(f"{ROOT}/studies", params={key: neither})) == []


def test_modalities_in_study_matches_any_of_several_values(research):
    two_studies(research)
    both = research.get(f"{ROOT}/studies", params={"ModalitiesInStudy": "MR,CT"})
    assert sorted(uids(both)) == ["1.2.1", "1.2.2"]
    assert uids(research.get(f"{ROOT}/studies", params={"ModalitiesInStudy": "M?"})) == ["1.2.1"]
    assert uids(research.get(f"{ROOT}/studies", params={"ModalitiesInStudy": "US"})) == []


def test_uid_lists_take_commas_backslashes_and_repeated_keys(research):
    two_studies(research)
    for query in (
        "StudyInstanceUID=1.2.1,1.2.2",
        "StudyInstanceUID=1.2.1%5C1.2.2",
        "StudyInstanceUID=1.2.1&StudyInstanceUID=1.2.2",
        "0020000D=1.2.2,1.2.1,1.2.9",
    ):
        assert sorted(uids(research.get(f"{ROOT}/studies?{query}"))) == ["1.2.1", "1.2.2"]


def test_studies_come_newest_first(research):
    two_studies(research)
    assert uids(research.get(f"{ROOT}/studies")) == ["1.2.2", "1.2.1"]


# --- strings: wildcards, case, fuzzy ---------------------------------------------------------


def test_wildcards_and_person_name_case(research):
    two_studies(research)

    def found(**params) -> list[str]:
        return sorted(uids(research.get(f"{ROOT}/studies", params=params)))

    assert found(PatientName="doe*") == ["1.2.1"]  # PN: case-insensitive
    assert found(PatientName="DOE^JOHN") == ["1.2.1"]  # the alphabetic group alone
    assert found(PatientName="?mith^*") == ["1.2.2"]
    assert found(PatientName="*") == ["1.2.1", "1.2.2"]  # universal
    assert found(PatientName="Doe") == []  # no wildcard: the whole name
    assert found(AccessionNumber="ACC*") == ["1.2.1"]  # other strings: case-sensitive
    assert found(AccessionNumber="acc?") == ["1.2.2"]
    assert found(AccessionNumber="a*") == ["1.2.2"]
    assert found(PatientID="PAT?") == ["1.2.1", "1.2.2"]


def test_like_metacharacters_in_values_are_literal(research):
    put(research, "1.3.1.1.1", study="1.3.1", series="1.3.1.1", patient_id="A%B_C")
    put(research, "1.3.2.1.1", study="1.3.2", series="1.3.2.1", patient_id="AxBxC")
    put(research, "1.3.3.1.1", study="1.3.3", series="1.3.3.1", patient_id="A\\B")

    def found(value: str) -> list[str]:
        return sorted(uids(research.get(f"{ROOT}/studies", params={"PatientID": value})))

    assert found("A%B_C") == ["1.3.1"]
    assert found("A%B*") == ["1.3.1"]  # % is no wildcard
    assert found("A_B*") == []  # nor is _
    assert found("A?B?C") == ["1.3.1", "1.3.2"]
    assert found("A\\*") == ["1.3.3"]  # the escape character itself


def test_fuzzy_matching_matches_name_components_in_any_case(research):
    two_studies(research)

    def found(**params) -> list[str]:
        return sorted(uids(research.get(f"{ROOT}/studies", params=params)))

    assert found(PatientName="john") == []
    assert found(PatientName="john", fuzzymatching="true") == ["1.2.1"]
    assert found(PatientName="jo do", fuzzymatching="true") == ["1.2.1"]
    assert found(PatientName="jane^sm", fuzzymatching="true") == ["1.2.2"]
    assert found(PatientName="ohn", fuzzymatching="true") == []  # word starts only
    assert found(ReferringPhysicianName="anna", fuzzymatching="true") == ["1.2.1"]
    response = research.get(f"{ROOT}/studies", params={"PatientName": "x", "fuzzymatching": "1"})
    assert response.status_code == 400


# --- dates and times -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"StudyDate": "20240101-20240131"}, ["1.2.1"]),
        ({"StudyDate": "20240105-20240220"}, ["1.2.1", "1.2.2"]),  # inclusive
        ({"StudyDate": "-20240105"}, ["1.2.1"]),
        ({"StudyDate": "20240106-"}, ["1.2.2"]),
        ({"StudyTime": "1015"}, ["1.2.1"]),  # a time covers its precision: 10:15:00.25
        ({"StudyTime": "101500.3-"}, ["1.2.2"]),
        ({"StudyTime": "-1015"}, ["1.2.1"]),
        ({"StudyTime": "-101459"}, []),
        ({"StudyTime": "2330-2359"}, ["1.2.2"]),  # stored 2330: minutes precision
        # One date-time range: from 5 January 10:16 to 20 February 23:30.
        ({"StudyDate": "20240105-20240220", "StudyTime": "1016-2330"}, ["1.2.2"]),
        ({"StudyDate": "20240105-20240220", "StudyTime": "1015-2329"}, ["1.2.1"]),
        ({"StudyDate": "20240104-20240221", "StudyTime": "2300-0100"}, ["1.2.1", "1.2.2"]),
        ({"StudyDate": "-20240220", "StudyTime": "-2329"}, ["1.2.1"]),
        ({"StudyDate": "20240105-", "StudyTime": "1016-"}, ["1.2.2"]),
        # Forms differ: each matches on its own.
        ({"StudyDate": "20240101-20240301", "StudyTime": "-1100"}, ["1.2.1"]),
        ({"StudyDate": "20240220", "StudyTime": "2300-2359"}, ["1.2.2"]),
        ({"PerformedProcedureStepStartDate": "20240221"}, ["1.2.2"]),
    ],
)
def test_date_and_time_ranges(research, params, expected):
    two_studies(research)
    level = "series" if "PerformedProcedureStepStartDate" in params else "studies"
    assert sorted(set(uids(research.get(f"{ROOT}/{level}", params=params)))) == expected


def test_series_date_and_time_pair_is_one_range_too(research):
    two_studies(research)
    params = {
        "PerformedProcedureStepStartDate": "20240105-20240221",
        "PerformedProcedureStepStartTime": "1017-0004",
    }
    assert uids(research.get(f"{ROOT}/series", params=params)) == []
    params["PerformedProcedureStepStartTime"] = "1016-0005"
    assert sorted(set(uids(research.get(f"{ROOT}/series", params=params)))) == ["1.2.1", "1.2.2"]


# --- series and instances ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("Modality", "MR", ["1.2.1.2"]),
        ("SeriesInstanceUID", "1.2.2.1,1.2.1.2", ["1.2.1.2", "1.2.2.1"]),
        ("SeriesNumber", "7", ["1.2.2.1"]),
        ("PerformedProcedureStepStartDate", "20240105", ["1.2.1.1", "1.2.1.2"]),
        ("PerformedProcedureStepStartTime", "0000-0010", ["1.2.2.1"]),
        ("RequestAttributesSequence.ScheduledProcedureStepID", "SPS1", []),
        ("00400275.00401001", "RP1", []),  # RequestedProcedureID, by tags
        ("RequestAttributesSequence.RequestedProcedureID", "", ["1.2.1.1", "1.2.1.2", "1.2.2.1"]),
        ("PatientID", "PAT2", ["1.2.2.1"]),  # a study key on the relational resource
    ],
)
def test_each_required_series_key_matches(research, key, value, expected):
    two_studies(research)
    found = research.get(f"{ROOT}/series", params={key: value})
    assert sorted(uids(found, "0020000E")) == expected


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("SOPClassUID", MR, ["1.2.1.2.1"]),
        ("SOPInstanceUID", "1.2.1.1.2", ["1.2.1.1.2"]),
        ("InstanceNumber", "5", ["1.2.2.1.1"]),
        ("Modality", "CT", ["1.2.1.1.1", "1.2.1.1.2", "1.2.2.1.1"]),
        ("StudyDate", "20240220", ["1.2.2.1.1"]),
    ],
)
def test_each_required_instance_key_matches(research, key, value, expected):
    two_studies(research)
    found = research.get(f"{ROOT}/instances", params={key: value})
    assert sorted(uids(found, "00080018")) == expected


def test_series_results_carry_their_defaults_and_their_study(research):
    two_studies(research)
    hierarchical = research.get(f"{ROOT}/studies/1.2.1/series").json()
    assert [s["0020000E"]["Value"][0] for s in hierarchical] == ["1.2.1.1", "1.2.1.2"]
    first = hierarchical[0]
    assert first["00201209"] == {"vr": "IS", "Value": [2]}  # NumberOfSeriesRelatedInstances
    assert first["00200011"]["Value"] == [1] and first["00080060"]["Value"] == ["CT"]
    assert first["0020000D"]["Value"] == ["1.2.1"]
    assert first["00081190"]["Value"] == [f"http://testserver{ROOT}/studies/1.2.1/series/1.2.1.1"]
    assert first["00400245"]["Value"] == ["1016"]
    assert "0008103E" not in first  # SeriesDescription: only if present
    assert "00100010" not in first  # the study is in the path: its attributes are not repeated
    relational = research.get(f"{ROOT}/series", params={"SeriesInstanceUID": "1.2.2.1"}).json()
    assert relational[0]["00100020"]["Value"] == ["PAT2"]  # study attributes on /series
    assert relational[0]["00081190"]["Value"][0].endswith("/series/1.2.2.1")


def test_instance_resources_at_every_path(research):
    two_studies(research)
    in_series = research.get(f"{ROOT}/studies/1.2.1/series/1.2.1.1/instances")
    assert uids(in_series, "00080018") == ["1.2.1.1.1", "1.2.1.1.2"]
    first = in_series.json()[0]
    assert first["00080016"]["Value"] == [CT] and first["00200013"]["Value"] == [1]
    assert first["0020000D"]["Value"] == ["1.2.1"] and first["0020000E"]["Value"] == ["1.2.1.1"]
    assert first["00081190"]["Value"] == [
        f"http://testserver{ROOT}/studies/1.2.1/series/1.2.1.1/instances/1.2.1.1.1"
    ]
    assert "00280010" not in first  # Rows: only if present
    assert "00080060" not in first and "00100020" not in first
    in_study = research.get(f"{ROOT}/studies/1.2.1/instances")
    assert uids(in_study, "00080018") == ["1.2.1.1.1", "1.2.1.1.2", "1.2.1.2.1"]
    mr = in_study.json()[2]
    assert mr["00080060"]["Value"] == ["MR"] and mr["00280010"]["Value"] == [256]
    assert "00100020" not in mr  # series attributes, not the study's
    everywhere = research.get(f"{ROOT}/instances")
    assert len(everywhere.json()) == 4 and everywhere.json()[3]["00100020"]["Value"] == ["PAT2"]
    wrong_study = research.get(f"{ROOT}/studies/1.2.2/series/1.2.1.1/instances")
    assert wrong_study.status_code == 200 and wrong_study.json() == []


def test_a_study_of_another_project_in_the_path_answers_like_a_missing_one(research):
    two_studies(research)
    put(research, "7.7.1.1", study="7.7", series="7.7.1", project="beta", patient_id="B")
    missing = research.get(f"{ROOT}/studies/9.9.9/series")
    foreign = research.get(f"{ROOT}/studies/7.7/series")
    assert (missing.status_code, missing.content) == (foreign.status_code, foreign.content)
    assert foreign.json() == []
    assert research.get(f"{ROOT}/studies/7.7/instances").json() == []
    assert research.get(f"{ROOT}/instances", params={"SOPInstanceUID": "7.7.1.1"}).json() == []
    everything = research.get(f"{ROOT}/studies").json()
    assert sorted(s["0020000D"]["Value"][0] for s in everything) == ["1.2.1", "1.2.2"]
    beta = research.get(f"{ROOT.replace('alpha', 'beta')}/studies", who="other")
    assert uids(beta) == ["7.7"]


# --- includefield, paging, headers -------------------------------------------------------------


def test_includefield_adds_held_attributes_and_ignores_lower_levels(research):
    two_studies(research)
    url = f"{ROOT}/studies?StudyInstanceUID=1.2.1"
    [plain] = research.get(url).json()
    assert "00081030" not in plain
    [asked] = research.get(f"{url}&includefield=StudyDescription,Modality").json()
    assert asked["00081030"] == {"vr": "LO", "Value": ["head"]}
    assert "00080060" not in asked  # a series attribute on studies: not returned, no error
    [by_tag] = research.get(f"{url}&includefield=00081030").json()
    assert by_tag["00081030"]["Value"] == ["head"]
    [everything] = research.get(f"{url}&includefield=all").json()
    assert set(everything) - set(plain) == {"00081030"}
    [series] = research.get(f"{ROOT}/series?SeriesNumber=2&includefield=all").json()
    assert series["00180015"] == {"vr": "CS"}  # BodyPartExamined, held but empty
    assert series["00081030"]["Value"] == ["head"]  # study level too: relational
    assert research.get(f"{url}&includefield=all,PatientID").status_code == 400
    assert research.get(f"{url}&includefield=NoSuchKeyword").status_code == 400


def test_limit_and_offset_page_with_a_warning(research):
    for n in range(5):
        put(
            research,
            f"1.5.{n}.1.1",
            study=f"1.5.{n}",
            series=f"1.5.{n}.1",
            study_date="2024010" + str(n),
        )
    first = research.get(f"{ROOT}/studies", params={"limit": "2"})
    assert len(first.json()) == 2
    assert first.headers["warning"] == (
        '299 imaging-depot "There are 3 additional results that can be requested"'
    )
    second = research.get(f"{ROOT}/studies", params={"limit": "2", "offset": "2"})
    assert "1 additional" in second.headers["warning"]
    last = research.get(f"{ROOT}/studies", params={"limit": "2", "offset": "4"})
    assert len(last.json()) == 1 and "warning" not in last.headers
    pages = uids(first) + uids(second) + uids(last)
    assert pages == [f"1.5.{n}" for n in (4, 3, 2, 1, 0)]  # disjoint, stable, newest first
    beyond = research.get(f"{ROOT}/studies", params={"offset": "9"})
    assert (beyond.status_code, beyond.json()) == (200, [])
    assert "warning" not in research.get(f"{ROOT}/studies").headers  # default limit
    assert DEFAULT_LIMIT >= 100


def test_unsupported_matching_options_are_searched_literally_with_a_warning(research):
    two_studies(research)
    response = research.get(f"{ROOT}/studies", params={"emptyvaluematching": "true"})
    assert len(response.json()) == 2
    assert "The emptyvaluematching parameter is not supported" in response.headers["warning"]
    quiet = research.get(f"{ROOT}/studies", params={"multiplevaluematching": "false"})
    assert "warning" not in quiet.headers


def test_accept_json_and_refuse_xml(research):
    two_studies(research)
    plain = research.get(f"{ROOT}/studies", headers={"Accept": "application/json"})
    assert plain.status_code == 200 and len(plain.json()) == 2
    xml = 'multipart/related; type="application/dicom+xml"'
    assert research.get(f"{ROOT}/studies", headers={"Accept": xml}).status_code == 406


# --- refusals ----------------------------------------------------------------------------------

SQLISH = "' OR 1=1 --"
LONG_UID = "1." + "2" * 198


@pytest.mark.parametrize(
    "query",
    [
        "StudyInstanceUID=" + quote(SQLISH),
        "PatientID=" + quote(SQLISH) + "&PatientID=x",
        "StudyInstanceUID=" + quote("../../etc"),
        "StudyInstanceUID=" + LONG_UID,
        "StudyInstanceUID=1.2.abc",
        "StudyInstanceUID=1.2.*",
        "StudyDate=2024-01-01",
        "StudyDate=20240231",
        "StudyDate=20240301-20240201",
        "StudyDate=--",
        "StudyTime=2500",
        "StudyTime=2200-0600",  # crosses midnight without a date range
        "SeriesNumber=one",
        "limit=ten",
        "limit=0",
        "offset=-1",
        "limit=1&limit=2",
        "NoSuchAttribute=1",
        quote(SQLISH) + "=1",
        "Modality=CT",  # a series key on studies
        "SOPInstanceUID=1.2.3",  # an instance key on studies
        "StationName=X",  # a real attribute the index does not hold
        "7FE00010=1",
        "00091001=X",  # private
        "fuzzymatching=yes",
        "PatientID=" + "x" * 300,
        "StudyInstanceUID=" + ",".join(["1.2"] * 501),
    ],
)
def test_malformed_or_unknown_parameters_are_400_without_echoing_values(research, query):
    response = research.get(f"{ROOT}/studies?{query}")
    assert response.status_code == 400
    reason = response.json()["detail"]
    assert isinstance(reason, str) and reason
    for value in (SQLISH, "../../etc", LONG_UID, "abc", "2024-01-01", "one", "xxxxx"):
        assert value not in reason


@pytest.mark.parametrize(
    "path",
    [
        "/studies/" + quote(SQLISH, safe="") + "/series",
        "/studies/1.2.abc/instances",
        "/studies/1.2.1/series/" + "9" * 70 + "/instances",
        "/studies/1.2.%2E%2E/instances",
    ],
)
def test_malformed_uids_in_the_path_are_400(research, path):
    response = research.get(ROOT + path)
    assert response.status_code == 400
    assert SQLISH not in response.text and "abc" not in response.text


def test_a_path_escaping_its_segment_matches_no_route(research):
    response = research.get(ROOT + "/studies/..%2F..%2F..%2Fetc/series")
    assert response.status_code == 404 and "etc" not in response.text


def test_access_needs_a_token_of_the_project(research):
    two_studies(research)
    for resource in ("/studies", "/series", "/instances", "/studies/1.2.1/series"):
        anonymous = research.client.get(ROOT + resource)
        assert anonymous.status_code == 401
        assert research.get(ROOT + resource, who="other").status_code == 404
        assert research.get(ROOT + resource, who="manager").status_code == 200


# --- end to end: real files through the pseudonymizer ------------------------------------------


def test_ingested_files_are_found_and_nothing_identifying_is_returned(research, tmp_path: Path):
    who = Identity()
    paths = []
    for index, (modality, series) in enumerate([("CT", 1), ("CT", 1), ("MR", 2)]):
        ds = dcmread(sample("CT_small.dcm"))
        ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.1000"
        ds.SeriesInstanceUID = f"1.2.826.0.1.3680043.8.498.2000.{series}"
        ds.SeriesNumber, ds.Modality, ds.InstanceNumber = series, modality, index + 1
        ds.SOPInstanceUID = f"1.2.826.0.1.3680043.8.498.3000.{index}"
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        clean = tmp_path / f"clean-{index}.dcm"
        ds.save_as(clean, enforce_file_format=True)
        paths.append(write_injected(clean, tmp_path / f"in-{index}.dcm", who))
    report = research.ingest(paths)
    assert not report.failures and len(report.stored) == 3
    [study_uid] = report.studies
    bodies = []
    for url in (
        "/studies?includefield=all",
        "/series?includefield=all",
        "/instances?includefield=all",
        f"/studies/{study_uid}/series?includefield=all",
    ):
        response = research.get(ROOT + url)
        assert response.status_code == 200 and response.json()
        bodies.append(response.content)
    [study] = research.get(f"{ROOT}/studies").json()
    assert study["0020000D"]["Value"] == [study_uid]
    assert study["00080061"]["Value"] == ["CT", "MR"]
    assert (study["00201206"]["Value"], study["00201208"]["Value"]) == ([2], [3])
    pseudonym = study["00100010"]["Value"][0]["Alphabetic"]
    by_name = research.get(f"{ROOT}/studies", params={"PatientName": pseudonym.lower()})
    assert uids(by_name) == [study_uid]
    shifted = study["00080020"]["Value"][0]
    assert uids(research.get(f"{ROOT}/studies", params={"StudyDate": f"-{shifted}"})) == [study_uid]
    assert uids(research.get(f"{ROOT}/studies", params={"PatientName": who.family})) == []
    assert uids(research.get(f"{ROOT}/studies", params={"PatientID": who.patient_id})) == []
    assert uids(research.get(f"{ROOT}/studies", params={"StudyDate": who.study_date})) == []
    for body in bodies:
        assert leaked_tokens(body, who) == []


class _InProcess(requests.Session):
    """A requests session that sends dicomweb-client's GETs to the in-process app."""

    def __init__(self, client) -> None:
        super().__init__()
        self._client = client

    def get(self, url, headers=None, **_kwargs):  # type: ignore[override]
        return self._client.get(url, headers={**self.headers, **(headers or {})})


def test_dicomweb_client_searches_and_pages_through_everything(research):
    for n in range(5):
        put(research, f"1.6.{n}.1.1", study=f"1.6.{n}", series=f"1.6.{n}.1", study_date="20240101")
    client = DICOMwebClient(
        f"http://testserver{ROOT}",
        session=_InProcess(research.client),
        headers={"Authorization": f"Bearer {research.tokens['researcher']}"},
    )
    studies = client.search_for_studies(
        limit=2, get_remaining=True, fields=["StudyDescription", "PatientAge"]
    )
    assert sorted(s["0020000D"]["Value"][0] for s in studies) == [f"1.6.{n}" for n in range(5)]
    assert all("00081030" in s for s in studies)  # held, requested, empty
    series = client.search_for_series(
        "1.6.3", search_filters={"Modality": "CT", "SeriesInstanceUID": ["1.6.3.1", "1.6.0.1"]}
    )
    assert [s["0020000E"]["Value"][0] for s in series] == ["1.6.3.1"]
    instances = client.search_for_instances(search_filters={"ModalitiesInStudy": ["MR", "CT"]})
    assert len(instances) == 5
    assert client.search_for_studies(search_filters={"PatientID": "nobody"}) == []
