"""Ingest STOW-RS over HTTP: parts streamed to scratch, pseudonymized, stored, answered."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydicom import dcmread

from app.auth.credentials import issue_token
from app.auth.roles import Role
from app.dicom.multipart import new_boundary
from app.dicomweb import stow
from app.main import create_app
from app.projects import create_project
from app.store import index_repo
from app.store.index import index_engine
from tests.identities import Identity, leaked_tokens, original_uids, write_injected
from tests.samples import sample

URL = "/projects/alpha/ingest/studies"
WHO = Identity()
REFERENCED, FAILED, RETRIEVE_URL = "00081199", "00081198", "00081190"
SOP_CLASS, SOP_INSTANCE, WARNING, FAILURE = "00081150", "00081155", "00081196", "00081197"


@pytest.fixture
def server(settings):
    create_project(settings, "alpha", "Alpha")
    create_project(settings, "beta", "Beta")
    index = index_engine(settings.index_url)
    _, manager = issue_token(settings, "alpha", Role.data_manager)
    _, researcher = issue_token(settings, "alpha", Role.researcher)
    _, other = issue_token(settings, "beta", Role.data_manager)
    client = TestClient(create_app(settings))
    return client, index, {"manager": manager, "researcher": researcher, "other": other}


@pytest.fixture
def instances(tmp_path) -> list[Path]:
    return [
        write_injected(sample(name), tmp_path / f"{i}.dcm", WHO)
        for i, name in enumerate(("CT_small.dcm", "MR_small.dcm"))
    ]


def _body(parts: list[bytes], boundary: str, close: bool = True) -> bytes:
    out = b""
    for part in parts:
        out += f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + part + b"\r\n"
    return out + (f"--{boundary}--\r\n".encode() if close else b"")


def _post(client, secret, parts, *, url=URL, close=True, quoted=True):
    boundary = new_boundary()
    if quoted:
        ctype = f'multipart/related; type="application/dicom"; boundary="{boundary}"'
    else:
        ctype = f"multipart/related; boundary={boundary}; type=application/dicom"
    headers = {"Content-Type": ctype}
    if secret:
        headers["Authorization"] = f"Bearer {secret}"
    return client.post(url, content=_body(parts, boundary, close), headers=headers)


def _stored(index) -> list:
    return index_repo.list_instances(index, "alpha")


def _assert_clean(response, originals: set[str]) -> None:
    for uid in originals:
        assert uid not in response.text
    assert leaked_tokens(response.content, WHO) == []
    assert "00400561" not in response.text  # OriginalAttributesSequence, never


def test_two_instances_are_stored_pseudonymized_and_a_repost_is_already_present(server, instances):
    client, index, tokens = server
    parts = [p.read_bytes() for p in instances]
    response = _post(client, tokens["manager"], parts)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/dicom+json")
    items = response.json()[REFERENCED]["Value"]
    assert len(items) == 2 and FAILED not in response.json()
    originals = original_uids(instances)
    sops = [item[SOP_INSTANCE]["Value"][0] for item in items]
    assert all(uid.startswith("2.25.") and uid not in originals for uid in sops)
    assert all(item[WARNING]["Value"] == [0xB000] for item in items)
    for item, sop in zip(items, sops, strict=True):
        url = item[RETRIEVE_URL]["Value"][0]
        assert url.startswith("http://testserver/projects/alpha/dicom-web/studies/2.25.")
        assert url.endswith(f"/instances/{sop}")
    assert {i.sop_uid for i in _stored(index)} == set(sops)
    _assert_clean(response, originals)

    again = _post(client, tokens["manager"], parts, quoted=False)
    assert again.status_code == 200, again.text
    assert [i[SOP_INSTANCE]["Value"][0] for i in again.json()[REFERENCED]["Value"]] == sops
    assert len(_stored(index)) == 2


def test_one_good_and_one_garbage_part_answer_202(server, instances):
    client, index, tokens = server
    response = _post(client, tokens["manager"], [instances[0].read_bytes(), b"not dicom" * 50])
    assert response.status_code == 202, response.text
    body = response.json()
    assert len(body[REFERENCED]["Value"]) == 1
    (failed,) = body[FAILED]["Value"]
    assert failed == {FAILURE: {"vr": "US", "Value": [0xC000]}}  # UIDs unknown: omitted
    assert len(_stored(index)) == 1
    _assert_clean(response, original_uids(instances))


def test_all_garbage_answers_400(server):
    client, index, tokens = server
    response = _post(client, tokens["manager"], [b"garbage", b"\x00" * 300])
    assert response.status_code == 400
    assert len(response.json()[FAILED]["Value"]) == 2
    assert _stored(index) == []


def test_a_study_mismatch_fails_with_a900_and_the_right_study_is_stored(server, instances):
    client, index, tokens = server
    right = dcmread(instances[0]).StudyInstanceUID
    parts = [p.read_bytes() for p in instances]
    response = _post(client, tokens["manager"], parts, url=f"{URL}/{right}")
    assert response.status_code == 202, response.text
    (failed,) = response.json()[FAILED]["Value"]
    assert failed[FAILURE]["Value"] == [0xA900]
    assert failed[SOP_INSTANCE]["Value"][0].startswith("2.25.")
    assert len(_stored(index)) == 1
    _assert_clean(response, original_uids(instances))
    only_wrong = _post(client, tokens["manager"], parts[1:], url=f"{URL}/{right}")
    assert only_wrong.status_code == 409


@pytest.mark.parametrize(
    "content_type",
    ["application/dicom", "multipart/related; boundary=x", "text/plain",
     'multipart/mixed; type="application/dicom"; boundary=x'],
)  # fmt: skip
def test_other_content_types_answer_415(server, content_type):
    client, _, tokens = server
    headers = {"Authorization": f"Bearer {tokens['manager']}", "Content-Type": content_type}
    response = client.post(URL, content=b"x", headers=headers)
    assert response.status_code == 415
    assert "detail" in response.json()


def test_a_truncated_or_malformed_body_answers_400_and_stores_nothing(server, instances):
    client, index, tokens = server
    parts = [p.read_bytes() for p in instances]
    truncated = _post(client, tokens["manager"], parts, close=False)
    assert truncated.status_code == 400
    assert "truncated" in truncated.json()["detail"]
    headers = {
        "Authorization": f"Bearer {tokens['manager']}",
        "Content-Type": 'multipart/related; type="application/dicom"; boundary="bad boundary "',
    }
    assert client.post(URL, content=b"--x--\r\n", headers=headers).status_code == 400
    assert _stored(index) == []
    _assert_clean(truncated, original_uids(instances))


def test_tokens_and_roles(server, instances):
    client, index, tokens = server
    parts = [instances[0].read_bytes()]
    assert _post(client, None, parts).status_code == 401
    assert _post(client, tokens["researcher"], parts).status_code == 403
    assert _post(client, tokens["other"], parts).status_code == 404
    assert _stored(index) == []


def test_series_metadata_refreshes_are_coalesced_across_concurrent_requests(monkeypatch):
    refreshed: list[str] = []
    monkeypatch.setattr(stow, "refresh_series", lambda _s, _p, uids: refreshed.extend(uids))
    refresher = stow.MetadataRefresher(lambda: None)
    assert refresher.mark("alpha", ["s1", "s2"]) == ["s1", "s2"]
    assert refresher.mark("alpha", ["s2", "s3"]) == ["s3"]  # s2 is already waiting
    assert refresher.mark("beta", ["s2"]) == ["s2"]  # another project's series
    refresher.refresh("alpha", ["s1", "s2"])
    assert refreshed == ["s1", "s2"]
    assert refresher.mark("alpha", ["s1", "s3"]) == ["s1"]  # s1 may wait again, s3 still waits


def test_a_series_metadata_refresh_waits_and_requests_meanwhile_share_it(monkeypatch):
    refreshed: list[tuple[str, float]] = []
    monkeypatch.setattr(
        stow, "refresh_series",
        lambda _s, _p, uids: refreshed.extend((u, time.monotonic()) for u in uids),
    )  # fmt: skip
    delay = 0.3
    refresher = stow.MetadataRefresher(lambda: None, delay)

    async def two_requests_into_one_series() -> float:
        start = time.monotonic()
        waiting = refresher.mark("alpha", ["s1"])
        first = asyncio.create_task(refresher.refresh_later("alpha", waiting))
        assert refresher.mark("alpha", ["s1"]) == []  # the second request rides on the first
        await first
        return start

    start = asyncio.run(two_requests_into_one_series())
    assert [uid for uid, _ in refreshed] == ["s1"]
    assert refreshed[0][1] >= start + delay
    assert refresher.mark("alpha", ["s1"]) == ["s1"]  # refreshed: the next change waits again
