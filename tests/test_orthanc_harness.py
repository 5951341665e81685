"""The Orthanc harness: a real PACS with DICOMweb that later tests point at imaging-depot.

What is pinned here is what those tests will lean on: Orthanc answers only with the generated
credentials; it serves QIDO-RS and WADO-RS on what was uploaded; and, with a remote DICOMweb
server registered at runtime, its own client pushes (STOW-RS), queries (QIDO-RS) and fetches
(WADO-RS) against it. The remote here is a small stand-in server; later it is imaging-depot.
"""

from __future__ import annotations

import email.parser
import email.policy
import json
import os
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import BytesIO
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import pytest
from pydicom import dcmread

# The plugin module is imported here before `pytest_plugins` loads it: rewrite its asserts too.
pytest.register_assert_rewrite("tests.orthanc")

from tests import orthanc as harness  # noqa: E402
from tests.orthanc import OrthancServer, dicomweb_server_entry, launch_orthanc  # noqa: E402
from tests.samples import sample  # noqa: E402

pytest_plugins = ["tests.orthanc"]

CT = sample("CT_small.dcm")
MR = sample("MR_small.dcm")
DICOM_PARTS = 'multipart/related; type="application/dicom"'
PEER_ROOT = "/dicom-web/"


# --------------------------------------------------------------------------------------------
# A stand-in remote DICOMweb server, the place imaging-depot will take
# --------------------------------------------------------------------------------------------


class Received(NamedTuple):
    """One request Orthanc made to the stand-in, as it arrived."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes


def multipart_bodies(content_type: str, body: bytes) -> list[bytes]:
    """The payloads of a multipart/related body, split by the standard library's MIME parser
    (an independent reader, not our own app.dicom multipart code)."""
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body
    )
    return [part.get_payload(decode=True) for part in message.iter_parts()]


def multipart_related(parts: list[bytes]) -> tuple[str, bytes]:
    """A WADO-RS answer: (Content-Type, body) holding each DICOM file as one part."""
    boundary = uuid.uuid4().hex
    body = b"".join(
        b"--%s\r\nContent-Type: application/dicom\r\n\r\n%s\r\n" % (boundary.encode(), part)
        for part in parts
    )
    return f"{DICOM_PARTS}; boundary={boundary}", body + b"--%s--\r\n" % boundary.encode()


def stow_response(parts: list[bytes], base_url: str) -> dict[str, Any]:
    """A minimal PS3.18 Annex I STOW answer: every received instance in ReferencedSOPSequence.

    Orthanc checks that this sequence holds one item per instance it sent, else its push fails.
    """
    items = []
    for part in parts:
        ds = dcmread(BytesIO(part), stop_before_pixels=True)
        url = f"{base_url}studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        items.append(
            {
                "00081150": {"vr": "UI", "Value": [ds.SOPClassUID]},
                "00081155": {"vr": "UI", "Value": [ds.SOPInstanceUID]},
                "00081190": {"vr": "UR", "Value": [f"{url}/instances/{ds.SOPInstanceUID}"]},
            }
        )
    return {"00081199": {"vr": "SQ", "Value": items}}


def qido_study(path: Path) -> dict[str, Any]:
    """The study-level QIDO-RS JSON of one file: the few keys the tests check."""
    ds = dcmread(path, stop_before_pixels=True)
    return {
        "0020000D": {"vr": "UI", "Value": [ds.StudyInstanceUID]},
        "00100020": {"vr": "LO", "Value": [ds.PatientID]},
    }


@dataclass
class DicomWebPeer:
    """What the stand-in holds (one file, served by QIDO and WADO) and what it was sent."""

    url: str
    holds: Path
    acknowledges: bool = True  # False: STOW answers 200 without ReferencedSOPSequence
    received: list[Received] = field(default_factory=list)

    def requests(self, method: str) -> list[Received]:
        return [request for request in self.received if request.method == method]


def make_handler(peer: DicomWebPeer) -> type[BaseHTTPRequestHandler]:
    """A handler bound to one peer: STOW on POST .../studies, QIDO and WADO-RS on GET."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass  # keep the test output clean

        def do_POST(self) -> None:
            request = self._record()
            if request.path != f"{PEER_ROOT}studies":
                self._answer(404, "text/plain", b"not found")
                return
            parts = multipart_bodies(request.headers.get("Content-Type", ""), request.body)
            answer = json.dumps(stow_response(parts, peer.url) if peer.acknowledges else {})
            self._answer(200, "application/dicom+json", answer.encode())

        def do_GET(self) -> None:
            request = self._record()
            path = request.path.split("?", 1)[0]
            study_uid = dcmread(peer.holds, stop_before_pixels=True).StudyInstanceUID
            if path == f"{PEER_ROOT}studies":
                answer = json.dumps([qido_study(peer.holds)]).encode()
                self._answer(200, "application/dicom+json", answer)
            elif path == f"{PEER_ROOT}studies/{study_uid}":
                self._answer(200, *multipart_related([peer.holds.read_bytes()]))
            else:
                self._answer(404, "text/plain", b"not found")

        def _record(self) -> Received:
            headers = {key.title(): value for key, value in self.headers.items()}
            request = Received(self.command, self.path, headers, self._body())
            peer.received.append(request)
            return request

        def _body(self) -> bytes:
            """The request body, plain or chunked (Orthanc's STOW client sends it chunked)."""
            if self.headers.get("Transfer-Encoding", "").lower() != "chunked":
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            self.rfile.readline()  # the blank line after the last chunk
            return b"".join(chunks)

        def _answer(self, status: int, content_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


@pytest.fixture
def dicomweb_peer() -> Iterator[DicomWebPeer]:
    """A DICOMweb server on 127.0.0.1 holding MR_small, recording every request."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    peer = DicomWebPeer(f"http://127.0.0.1:{server.server_address[1]}{PEER_ROOT}", MR)
    server.RequestHandlerClass = make_handler(peer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield peer
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def remote(orthanc: OrthancServer, dicomweb_peer: DicomWebPeer) -> Iterator[str]:
    """The stand-in registered in the shared Orthanc at runtime, with a bearer token."""
    name = f"peer-{uuid.uuid4().hex[:8]}"
    orthanc.add_dicomweb_server(name, dicomweb_peer.url, {"Authorization": "Bearer test-token"})
    yield name
    orthanc.remove_dicomweb_server(name)


def qido_value(item: dict[str, Any], tag: str) -> str:
    """One value of a QIDO answer item, in DICOM JSON (`"Value": [v]`) or in the form Orthanc's
    client returns from `.../qido` (`"Value": v`, plus Name/Group/Element)."""
    value = item[tag]["Value"]
    return value[0] if isinstance(value, list) else value


def uid(path: Path, keyword: str) -> str:
    return str(dcmread(path, stop_before_pixels=True)[keyword].value)


# --------------------------------------------------------------------------------------------
# The PACS itself
# --------------------------------------------------------------------------------------------


def test_orthanc_answers_with_its_credentials_and_refuses_without(orthanc):
    with httpx.Client(timeout=10) as client:
        assert client.get(f"{orthanc.url}/system", auth=orthanc.auth).status_code == 200
        assert client.get(f"{orthanc.url}/system").status_code == 401
        wrong = (orthanc.auth[0], orthanc.auth[1] + "x")
        assert client.get(f"{orthanc.url}/system", auth=wrong).status_code == 401
        assert client.get(f"{orthanc.dicomweb_url}studies").status_code == 401


def test_orthanc_runs_on_the_ports_and_aet_the_harness_chose(orthanc):
    system = orthanc.system()
    assert orthanc.url == f"http://127.0.0.1:{system['HttpPort']}"
    assert system["DicomPort"] == orthanc.dicom_port
    assert system["DicomAet"] == orthanc.aet


def test_dicomweb_plugin_reports_a_version_with_runtime_server_registration(orthanc):
    version = orthanc.plugin_version("dicom-web")
    major, minor = (int(number) for number in version.split(".")[:2])
    # PUT /dicom-web/servers/{name} (what add_dicomweb_server uses) needs plugin 1.5 or later.
    assert (major, minor) >= (1, 5), version


def test_uploaded_instance_is_found_by_qido_studies(orthanc):
    stored = orthanc.upload(CT)
    assert stored["Status"] in ("Success", "AlreadyStored")
    study_uid = uid(CT, "StudyInstanceUID")
    assert orthanc.studies()[study_uid] == stored["ParentStudy"]

    with orthanc.client() as client:
        response = client.get(
            f"{orthanc.dicomweb_url}studies", params={"StudyInstanceUID": study_uid}
        )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/dicom+json")
    assert [qido_value(item, "0020000D") for item in response.json()] == [study_uid]


def test_wado_rs_returns_the_uploaded_instance_byte_for_byte(orthanc):
    orthanc.upload(CT)
    study, series, instance = (
        uid(CT, key) for key in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
    )
    path = f"studies/{study}/series/{series}/instances/{instance}"
    with orthanc.client() as client:
        response = client.get(f"{orthanc.dicomweb_url}{path}", headers={"Accept": DICOM_PARTS})
    assert response.status_code == 200
    parts = multipart_bodies(response.headers["content-type"], response.content)
    # CT_small is stored Explicit VR Little Endian, so nothing needs transcoding.
    assert parts == [CT.read_bytes()]


def test_clear_removes_every_stored_study(orthanc):
    orthanc.upload(CT)
    orthanc.clear()
    assert orthanc.studies() == {}


def test_dimse_peers_must_be_registered_before_orthanc_accepts_them(orthanc):
    """Orthanc's DICOM port listens on 0.0.0.0: the harness lets in only registered peers.
    Orthanc echoes itself, so its own AET is the peer being let in."""
    echo = {"AET": orthanc.aet, "Host": "127.0.0.1", "Port": orthanc.dicom_port}
    with orthanc.client() as client:
        assert client.post("/tools/dicom-echo", json=echo).status_code == 500  # rejected
        orthanc.add_modality("itself", orthanc.aet, orthanc.dicom_port)
        try:
            assert client.post("/tools/dicom-echo", json=echo).status_code == 200
        finally:
            orthanc.remove_modality("itself")


# --------------------------------------------------------------------------------------------
# Orthanc as a DICOMweb client of a remote server (imaging-depot, later)
# --------------------------------------------------------------------------------------------


def test_remote_registered_at_runtime_is_listed_with_its_headers(orthanc, remote, dicomweb_peer):
    known = orthanc.dicomweb_servers()[remote]
    assert known["Url"] == dicomweb_peer.url
    assert known["HttpHeaders"] == ["Authorization"]  # names only: Orthanc hides the values


def test_orthanc_pushes_a_study_over_stow_rs_to_the_remote(orthanc, remote, dicomweb_peer):
    stored = orthanc.upload(CT)
    orthanc.push(remote, [stored["ParentStudy"]])

    [request] = dicomweb_peer.requests("POST")
    assert request.path == f"{PEER_ROOT}studies"
    assert request.headers["Authorization"] == "Bearer test-token"
    assert request.headers["Content-Type"].startswith(DICOM_PARTS)
    parts = multipart_bodies(request.headers["Content-Type"], request.body)
    assert parts == [CT.read_bytes()]  # the stored file, untouched


def test_orthanc_push_fails_when_the_remote_does_not_acknowledge_every_instance(
    orthanc, remote, dicomweb_peer
):
    """Orthanc counts ReferencedSOPSequence items against the instances it sent: an ingest
    endpoint answering 200 without them makes the PACS report the push as failed."""
    dicomweb_peer.acknowledges = False
    stored = orthanc.upload(CT)
    with pytest.raises(AssertionError, match="answered 500"):
        orthanc.push(remote, [stored["ParentStudy"]])
    assert len(dicomweb_peer.requests("POST")) == 1  # it did arrive: the answer was refused


def test_orthanc_queries_the_remote_over_qido_rs(orthanc, remote, dicomweb_peer):
    patient_id = str(dcmread(MR, stop_before_pixels=True).PatientID)
    answer = orthanc.remote_query(remote, "/studies", {"PatientID": patient_id})

    [request] = dicomweb_peer.requests("GET")
    assert request.path.startswith(f"{PEER_ROOT}studies?")
    assert httpx.URL(request.path).params["PatientID"] == patient_id
    assert request.headers["Authorization"] == "Bearer test-token"
    assert [qido_value(item, "0020000D") for item in answer] == [uid(MR, "StudyInstanceUID")]


def test_orthanc_retrieves_a_study_over_wado_rs_from_the_remote_and_stores_it(
    orthanc, remote, dicomweb_peer
):
    orthanc.clear()
    study_uid = uid(MR, "StudyInstanceUID")
    orthanc.remote_retrieve(remote, study_uid)

    [request] = dicomweb_peer.requests("GET")
    assert request.path == f"{PEER_ROOT}studies/{study_uid}"
    assert request.headers["Accept"].startswith(DICOM_PARTS)
    assert request.headers["Authorization"] == "Bearer test-token"
    assert list(orthanc.studies()) == [study_uid]


# --------------------------------------------------------------------------------------------
# The harness's own contract: config-file remotes, clean stop, readable failure
# --------------------------------------------------------------------------------------------


CONFIG_REMOTE = dicomweb_server_entry("http://127.0.0.1:9/dicom-web/", {"X-Token": "t"})


@pytest.fixture(scope="module")
def configured_orthanc() -> Iterator[OrthancServer]:
    """A second, private Orthanc with a remote in its configuration file. Module-scoped:
    Orthanc takes about 3 s to stop gracefully, so the tests share the one they need."""
    with launch_orthanc(servers={"from-config": CONFIG_REMOTE}) as private:
        yield private


def test_remotes_in_the_configuration_file_are_known_at_start(configured_orthanc):
    known = configured_orthanc.dicomweb_servers()
    assert known["from-config"]["Url"] == CONFIG_REMOTE["Url"]
    assert known["from-config"]["HttpHeaders"] == ["X-Token"]


def test_each_orthanc_gets_its_own_generated_password(orthanc, configured_orthanc):
    assert orthanc.auth[1] != configured_orthanc.auth[1]
    assert len(orthanc.auth[1]) >= 24
    assert orthanc.config_path.stat().st_mode & 0o077 == 0  # the file holds the password


def test_stopping_leaves_no_orthanc_process_and_no_data():
    with launch_orthanc() as private:
        pid, workdir = private.pid, private.workdir
        os.kill(pid, 0)  # running
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not workdir.exists()


def test_missing_orthanc_fails_naming_the_debian_packages(monkeypatch):
    monkeypatch.setattr(harness.shutil, "which", lambda name: None)
    monkeypatch.setattr(harness, "BINARY_CANDIDATES", (Path("/nonexistent/Orthanc"),))
    with pytest.raises(pytest.fail.Exception, match="orthanc orthanc-dicomweb"):
        harness.find_orthanc()


def test_missing_dicomweb_plugin_fails_naming_the_debian_packages(monkeypatch):
    monkeypatch.setattr(harness, "PLUGIN_CANDIDATES", (Path("/nonexistent/plugin.so"),))
    with pytest.raises(pytest.fail.Exception, match="orthanc-dicomweb"):
        harness.find_dicomweb_plugin()
