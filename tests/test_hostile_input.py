"""Hostile input across every DICOMweb route: always a 4xx with a reason, never a 500, nothing
half-stored, no value echoed.

Runs on both deployments (tests/research_server.py). The routes' own test files pin the exact
answers; this one sweeps them all with the same bad inputs and checks the invariants.
"""

from __future__ import annotations

import io

import pytest
from pydicom import dcmread

from app.dicom.multipart import new_boundary
from app.dicomweb import stow
from app.store import index_repo
from tests.samples import sample

pytest_plugins = ["tests.blobstores", "tests.research_server"]

INGEST = "/projects/alpha/ingest/studies"
RESEARCH = "/projects/alpha/dicom-web"
CANARY = "CANARY-7f3a"  # put into hostile values: must never come back in an answer
DICOM = sample("CT_small.dcm").read_bytes()


def _multipart(parts: list[bytes], boundary: str, *, close: bool = True) -> bytes:
    body = b"".join(
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + p + b"\r\n"
        for p in parts
    )
    return body + (f"--{boundary}--\r\n".encode() if close else b"")


def _related(boundary: str) -> str:
    return f'multipart/related; type="application/dicom"; boundary="{boundary}"'


B = new_boundary()
STOW_CASES = {
    "truncated-no-close-delimiter": (_related(B), _multipart([DICOM], B, close=False)),
    "truncated-mid-part": (_related(B), _multipart([DICOM], B)[: len(DICOM) // 2]),
    "boundary-not-in-body": (_related(B), _multipart([DICOM], new_boundary())),
    "no-boundary-parameter": ('multipart/related; type="application/dicom"', b"--x--"),
    "boundary-with-bad-characters": (
        f'multipart/related; type="application/dicom"; boundary="{CANARY};<x>"',
        b"--x--",
    ),
    "json-content-type": ("application/json", b'{"a": 1}'),
    "form-data": (f"multipart/form-data; boundary={B}", _multipart([DICOM], B)),
    "wrong-part-type": (
        f'multipart/related; type="application/json"; boundary="{B}"',
        _multipart([DICOM], B),
    ),
    "no-content-type": ("", _multipart([DICOM], B)),
    "not-dicom-part": (_related(B), _multipart([CANARY.encode() * 100], B)),
    "dicom-cut-short": (_related(B), _multipart([DICOM[:400]], B)),
    "empty-body": (_related(B), b""),
    "no-part": (_related(B), f"--{B}--\r\n".encode()),
    "header-block-too-large": (
        _related(B),
        f"--{B}\r\nX-A: {'a' * 70_000}\r\n\r\n".encode() + DICOM + f"\r\n--{B}--".encode(),
    ),
}


def _assert_clean_refusal(response, *, allowed: tuple[int, ...] = ()) -> None:
    assert 400 <= response.status_code < 500 or response.status_code in allowed, (
        response.status_code,
        response.text[:300],
    )
    assert CANARY not in response.text
    assert CANARY not in response.headers.get("warning", "")
    assert "Traceback" not in response.text


def _nothing_stored(research) -> None:
    assert index_repo.list_instances(research.stores.index, "alpha") == []
    assert list(research.stores.blobs.list("projects/alpha")) == []


@pytest.mark.parametrize("url", [INGEST, f"{RESEARCH}/studies"])
def test_malformed_stow_requests_are_refused_and_store_nothing(research, url):
    who = "manager" if url == INGEST else "researcher"
    for case, (content_type, body) in STOW_CASES.items():
        extra = {"Content-Type": content_type} if content_type else {}
        response = research.client.post(url, content=body, headers=research.headers(who, **extra))
        try:
            _assert_clean_refusal(response)
        except AssertionError as exc:
            raise AssertionError(f"{case}: {exc}") from exc
    _nothing_stored(research)


def test_too_many_parts_or_a_part_too_large_is_refused_before_storing(research, monkeypatch):
    monkeypatch.setattr(stow, "MAX_PARTS", 2)
    boundary = new_boundary()
    headers = research.headers("manager", **{"Content-Type": _related(boundary)})
    body = _multipart([DICOM, DICOM, DICOM], boundary)
    response = research.client.post(INGEST, content=body, headers=headers)
    _assert_clean_refusal(response)
    monkeypatch.setattr(stow, "MAX_PARTS", 100)
    monkeypatch.setattr(stow, "MAX_PART_SIZE", len(DICOM) - 1)
    response = research.client.post(INGEST, content=_multipart([DICOM], boundary), headers=headers)
    _assert_clean_refusal(response)
    _nothing_stored(research)


HOSTILE_VALUES = [
    f"' OR 1=1 -- {CANARY}",
    f"1.2.3'; DROP TABLE study; -- {CANARY}",
    f"../../../etc/passwd{CANARY}",
    "..%2F..%2Fetc",
    "1." * 40 + "1",  # a UID of 81 characters
    f"1.2.{CANARY}",
    "%00",
    "1.2.3\x00",
    "*" * 500,
]


QUERY_KEYS = ("StudyInstanceUID", "SeriesInstanceUID", "PatientID", "StudyDate", "Modality")
PATHS = (
    "{r}/studies/{v}",
    "{r}/studies/{v}/metadata",
    "{r}/studies/{v}/series",
    "{r}/studies/1.2.3/series/{v}",
    "{r}/studies/1.2.3/series/4.5.6/instances/{v}",
    "{r}/studies/1.2.3/series/4.5.6/instances/7.8.9/frames/{v}",
    "{r}/studies/1.2.3/series/4.5.6/instances/7.8.9/bulk/{v}",
)


def test_hostile_query_values_are_refused_or_match_nothing(research):
    research.ingest([sample("CT_small.dcm")])
    for key in QUERY_KEYS:
        level = "series" if key in ("SeriesInstanceUID", "Modality") else "studies"
        for value in HOSTILE_VALUES:
            response = research.get(f"{RESEARCH}/{level}", params={key: value})
            _assert_clean_refusal(response, allowed=(200,))
            if response.status_code == 200:
                assert response.json() == [], (key, value)
    for value in HOSTILE_VALUES:
        instances = research.get(f"{RESEARCH}/instances", params={"SOPInstanceUID": value})
        _assert_clean_refusal(instances)


def test_hostile_path_values_never_reach_a_500(research):
    for template in PATHS:
        for value in [*HOSTILE_VALUES, "1.2.3%00"]:
            if "\x00" in value:
                continue  # not a URL a client can send: httpx refuses it; "%00" stands in
            response = research.get(template.format(r=RESEARCH, v=value))
            _assert_clean_refusal(response, allowed=(200,))
            if response.status_code == 200:
                assert response.json() == []  # a search under a path that matches nothing


@pytest.mark.parametrize(
    "accept",
    [
        f"{CANARY}/{CANARY}",
        "multipart/related; type=" + "a" * 5000,
        'multipart/related; type="application/dicom"; transfer-syntax=1.2.3.' + CANARY,
        "multipart/related; q=abc",
        ";;;,,,",
    ],
)
def test_hostile_accept_headers_get_a_clean_answer(research, accept):
    report = research.ingest([sample("CT_small.dcm")])
    instance = report.stored[0]
    url = f"{RESEARCH}/studies/{instance.study_uid}/series/{instance.series_uid}"
    response = research.get(url, headers={"Accept": accept})
    _assert_clean_refusal(response)


@pytest.mark.parametrize(
    "authorization",
    [
        "Bearer depot_000000000000_" + "A" * 43,
        "Bearer " + CANARY,
        "Bearer ' OR 1=1 --",
        "Basic " + CANARY,
        "Bearer " + "x" * 10_000,
    ],
)
def test_hostile_tokens_are_401_without_echo(research, authorization):
    response = research.client.get(f"{RESEARCH}/studies", headers={"Authorization": authorization})
    assert response.status_code == 401
    assert CANARY not in response.text
    assert "WWW-Authenticate" in response.headers


def test_a_stored_instance_survives_every_hostile_request_unchanged(research):
    report = research.ingest([sample("CT_small.dcm")])
    before = index_repo.list_instances(research.stores.index, "alpha")
    for case in STOW_CASES.values():
        content_type, body = case
        headers = research.headers("manager", **{"Content-Type": content_type or "x/y"})
        research.client.post(INGEST, content=body, headers=headers)
    after = index_repo.list_instances(research.stores.index, "alpha")
    assert [i.sha256 for i in after] == [i.sha256 for i in before]
    with research.stores.blobs.open(after[0].blob_key) as stream:
        assert dcmread(io.BytesIO(stream.read())).SOPInstanceUID == report.stored[0].sop_uid
