"""A real Orthanc with its DICOMweb plugin on loopback, playing the hospital PACS in tests.

Use from a test module with `pytest_plugins = ["tests.orthanc"]`. The session fixture `orthanc`
starts one `Orthanc` process per test session (or xdist worker); `launch_orthanc()` starts a
private one, for a test that needs a different configuration (e.g. remote DICOMweb servers in
the configuration file rather than registered at runtime).

Orthanc comes from the Debian packages `orthanc` and `orthanc-dicomweb` (`make system-deps`).
If they are missing the tests fail, naming the packages: a skipped PACS test would let the
extraction path rot unnoticed, as a skipped S3 test would (see tests/blobstores.py).

Facts this module relies on (Debian 12: Orthanc 1.10.1, DICOMweb plugin 1.7):
- the binary is `/usr/sbin/Orthanc` (not on a normal user's PATH), the plugin is
  `/usr/share/orthanc/plugins/libOrthancDicomWeb.so`;
- Orthanc binds its HTTP and DICOM ports on 0.0.0.0 (no bind-address option):
  `RemoteAccessAllowed: false` refuses remote HTTP clients, and DIMSE is closed to unknown
  peers here (no echo or store from an unregistered AE, host checked), see `add_modality`;
- `PUT /dicom-web/servers/{name}` registers a remote DICOMweb server at runtime (plugin >= 1.5
  keeps it in memory unless `ServersInDatabase`), so no restart is needed for that.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, NoReturn

import httpx
import pytest

from tests.services import die_with_parent, free_ports, log_tail, stop

DEBIAN_PACKAGES = ("orthanc", "orthanc-dicomweb")
BINARY_CANDIDATES = (Path("/usr/sbin/Orthanc"), Path("/usr/bin/Orthanc"))
PLUGIN_CANDIDATES = (
    Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so"),
    Path("/usr/lib/orthanc/libOrthancDicomWeb.so"),
)
DICOMWEB_ROOT = "/dicom-web/"
AET = "PACS"
CONFIG_NAME = "orthanc.json"
LOG_NAME = "orthanc.log"
STARTUP_TIMEOUT = 30.0  # seconds; it takes about 0.1 on the project's machines
STOP_TIMEOUT = 10.0  # seconds; a graceful stop takes about 3 (HTTP and DICOM loops poll)
OUTBOUND_TIMEOUT = 30  # seconds Orthanc waits for a remote (a DICOMweb server under test)
START_ATTEMPTS = 3  # another process may take a chosen port before Orthanc binds it

INSTALL_HINT = (
    "install the Debian packages {packages} (`make system-deps` as root, or "
    "`sudo apt-get install {packages}`)"
)


def _missing(what: str) -> NoReturn:
    """Fail, not skip: the message names what is missing and the packages that bring it."""
    hint = INSTALL_HINT.format(packages=" ".join(DEBIAN_PACKAGES))
    pytest.fail(f"{what} not found: {hint}", pytrace=False)


def find_orthanc() -> Path:
    """The Orthanc server binary; /usr/sbin is searched even when it is not on PATH."""
    found = shutil.which("Orthanc")
    if found:
        return Path(found)
    for candidate in BINARY_CANDIDATES:
        if candidate.is_file():
            return candidate
    _missing("Orthanc server (`Orthanc`, Debian package orthanc)")


def find_dicomweb_plugin() -> Path:
    """The DICOMweb plugin's shared library, as `dpkg -L orthanc-dicomweb` lists it."""
    for candidate in PLUGIN_CANDIDATES:
        if candidate.exists():
            return candidate
    _missing("Orthanc DICOMweb plugin (libOrthancDicomWeb.so, Debian package orthanc-dicomweb)")


def dicomweb_server_entry(url: str, headers: Mapping[str, str] | None = None) -> dict[str, Any]:
    """One `DicomWeb.Servers` value, the same shape in the file and in `PUT .../servers/{name}`.

    `HttpHeaders` is how Orthanc will present a bearer token to imaging-depot.
    """
    entry: dict[str, Any] = {"Url": url}
    if headers:
        entry["HttpHeaders"] = dict(headers)
    return entry


def orthanc_config(
    workdir: Path,
    *,
    http_port: int,
    dicom_port: int,
    user: str,
    password: str,
    plugin: Path,
    servers: Mapping[str, Mapping[str, Any]],
) -> dict[str, Any]:
    """The whole configuration: loopback only, authenticated, storage in `workdir`.

    Nothing is read from /etc/orthanc, so the machine's own Orthanc setup cannot leak in.
    """
    return {
        "Name": "imaging-depot test PACS",
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": AET,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": True,
        "RegisteredUsers": {user: password},
        "StorageDirectory": str(workdir / "storage"),
        "IndexDirectory": str(workdir / "index"),
        "Plugins": [str(plugin)],
        "HttpTimeout": OUTBOUND_TIMEOUT,
        "SaveJobs": False,
        # Orthanc listens on 0.0.0.0: accept DIMSE only from peers a test registered.
        "DicomAlwaysAllowEcho": False,
        "DicomAlwaysAllowStore": False,
        "DicomCheckModalityHost": True,
        "DicomWeb": {
            "Enable": True,
            "Root": DICOMWEB_ROOT,
            "EnableWado": True,
            "Servers": {name: dict(entry) for name, entry in servers.items()},
        },
    }


class OrthancServer:
    """A running Orthanc: where it answers, its credentials, and the calls tests need.

    Every HTTP call goes through `client()`, a fresh connection each time: Orthanc closes idle
    keep-alive connections after one second, and a reused one could fail at random.
    """

    def __init__(self, url: str, auth: tuple[str, str], dicom_port: int, workdir: Path) -> None:
        self.url = url
        self.auth = auth
        self.dicom_port = dicom_port
        self.dicomweb_url = url + DICOMWEB_ROOT
        self.workdir = workdir
        self.aet = AET
        self.pid = 0  # of the Orthanc process, for checking it is gone after the stop
        self.startup_seconds = 0.0

    @property
    def config_path(self) -> Path:
        return self.workdir / CONFIG_NAME

    @property
    def log_path(self) -> Path:
        return self.workdir / LOG_NAME

    def client(self, timeout: float = OUTBOUND_TIMEOUT + 10) -> httpx.Client:
        """An authenticated client on Orthanc's REST API (relative URLs are under `url`)."""
        return httpx.Client(
            base_url=self.url,
            auth=self.auth,
            timeout=timeout,
            limits=httpx.Limits(max_keepalive_connections=0),
        )

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        """One REST call that must succeed; its JSON answer (None if the body is empty)."""
        with self.client() as client:
            response = client.request(method, path, **kwargs)
        if response.is_error:
            raise AssertionError(
                f"Orthanc {method} {path} answered {response.status_code}: {response.text}"
            )
        return response.json() if response.content else None

    def system(self) -> dict[str, Any]:
        """`GET /system`: the Orthanc version, AET and ports actually in use."""
        return self._call("GET", "/system")

    def plugin_version(self, plugin_id: str = "dicom-web") -> str:
        """The version a loaded plugin reports, e.g. "1.7" for Debian 12's DICOMweb plugin."""
        return self._call("GET", f"/plugins/{plugin_id}")["Version"]

    def upload(self, path: Path) -> dict[str, Any]:
        """Store one DICOM file (`POST /instances`) the way a modality's send would land.

        Returns Orthanc's answer: `ID` (the instance), `ParentStudy`, `Status`
        ("Success" or "AlreadyStored"), … The Orthanc IDs are what `push` takes.
        """
        return self._call(
            "POST",
            "/instances",
            content=Path(path).read_bytes(),
            headers={"Content-Type": "application/dicom"},
        )

    def studies(self) -> dict[str, str]:
        """Stored studies as {StudyInstanceUID: Orthanc study ID}."""
        studies = self._call("GET", "/studies", params={"expand": ""})
        return {study["MainDicomTags"]["StudyInstanceUID"]: study["ID"] for study in studies}

    def clear(self) -> None:
        """Delete every stored patient, so a test sees only what it stored itself."""
        for patient in self._call("GET", "/patients"):
            self._call("DELETE", f"/patients/{patient}")

    def add_dicomweb_server(
        self, name: str, url: str, headers: Mapping[str, str] | None = None
    ) -> None:
        """Register a remote DICOMweb server at runtime (`PUT /dicom-web/servers/{name}`).

        `headers` are sent with every request to it (a bearer token for imaging-depot).
        Replaces an earlier server of the same name; `remove_dicomweb_server` forgets it.
        """
        self._call(
            "PUT", f"{DICOMWEB_ROOT}servers/{name}", json=dicomweb_server_entry(url, headers)
        )

    def remove_dicomweb_server(self, name: str) -> None:
        """Forget a remote, so one test's server does not outlive it on a shared Orthanc."""
        self._call("DELETE", f"{DICOMWEB_ROOT}servers/{name}")

    def dicomweb_servers(self) -> dict[str, Any]:
        """The remote DICOMweb servers Orthanc knows, from its config file and from runtime."""
        return self._call("GET", f"{DICOMWEB_ROOT}servers", params={"expand": ""})

    def push(self, server: str, resources: list[str]) -> Any:
        """Orthanc's STOW-RS client: send stored resources (Orthanc IDs) to a remote server."""
        return self._call(
            "POST", f"{DICOMWEB_ROOT}servers/{server}/stow", json={"Resources": resources}
        )

    def remote_query(
        self, server: str, uri: str = "/studies", arguments: Mapping[str, str] | None = None
    ) -> Any:
        """Orthanc's QIDO-RS client: query a remote server. The answer is Orthanc's rewrite of
        the remote's DICOM JSON: one object per match, each tag as {"Value": v, "vr", "Name",
        "Group", "Element"} with a bare value instead of the standard's list."""
        body = {"Uri": uri, "Arguments": dict(arguments or {})}
        return self._call("POST", f"{DICOMWEB_ROOT}servers/{server}/qido", json=body)

    def remote_retrieve(self, server: str, study_uid: str) -> Any:
        """Orthanc's WADO-RS client: fetch a study from a remote server and store it here."""
        body = {"Resources": [{"Study": study_uid}]}
        return self._call("POST", f"{DICOMWEB_ROOT}servers/{server}/retrieve", json=body)

    def add_modality(self, name: str, aet: str, port: int, host: str = "127.0.0.1") -> None:
        """Let a DIMSE peer (pynetdicom, DCMTK) talk to this PACS: echo, store, find, move, get.

        Orthanc refuses unregistered peers here, since its DICOM port listens on 0.0.0.0.
        """
        entry = {
            "AET": aet,
            "Host": host,
            "Port": port,
            **{f"Allow{op}": True for op in ("Echo", "Store", "Find", "Move", "Get")},
        }
        self._call("PUT", f"/modalities/{name}", json=entry)

    def remove_modality(self, name: str) -> None:
        self._call("DELETE", f"/modalities/{name}")


class OrthancProcess:
    """Owns one `Orthanc` process: writes its configuration, starts it, waits, stops it."""

    def __init__(self, servers: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        self.binary = find_orthanc()
        self.plugin = find_dicomweb_plugin()
        self.servers = dict(servers or {})
        self.workdir = Path(tempfile.mkdtemp(prefix="depot-orthanc-"))
        self.user = "depot-test"
        self.password = secrets.token_urlsafe(24)
        self.process: subprocess.Popen[bytes] | None = None
        self.server: OrthancServer | None = None

    def start(self) -> OrthancServer:
        """Start and wait until `GET /system` answers with our credentials; retried on new
        ports if Orthanc exits early (another process took a port between choice and bind)."""
        began = time.monotonic()
        for _attempt in range(START_ATTEMPTS):
            self.server = self._spawn()
            if self._wait_ready(self.server):
                self.server.startup_seconds = time.monotonic() - began
                return self.server
            self._kill()
        pytest.fail(f"Orthanc did not start: {self._log_tail()}", pytrace=False)

    def stop(self) -> None:
        """Terminate, kill if it lingers, and remove its storage (it held test data only)."""
        self._kill()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def _write_config(self, http_port: int, dicom_port: int) -> Path:
        config = orthanc_config(
            self.workdir,
            http_port=http_port,
            dicom_port=dicom_port,
            user=self.user,
            password=self.password,
            plugin=self.plugin,
            servers=self.servers,
        )
        path = self.workdir / CONFIG_NAME
        path.write_text(json.dumps(config, indent=2))
        path.chmod(0o600)  # it holds the password
        return path

    def _spawn(self) -> OrthancServer:
        http_port, dicom_port = free_ports(2)
        config = self._write_config(http_port, dicom_port)
        server = OrthancServer(
            f"http://127.0.0.1:{http_port}", (self.user, self.password), dicom_port, self.workdir
        )
        with open(server.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [str(self.binary), str(config)],
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent if sys.platform == "linux" else None,
            )
        server.pid = self.process.pid
        return server

    def _wait_ready(self, server: OrthancServer) -> bool:
        """True once an authenticated `GET /system` succeeds; False if Orthanc exited."""
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                return False
            try:
                with server.client(timeout=2.0) as client:
                    if client.get("/system").status_code == 200:
                        return True
            except httpx.TransportError:
                pass  # not listening yet
            time.sleep(0.02)
        self._kill()
        pytest.fail(
            f"Orthanc did not answer on {server.url} within {STARTUP_TIMEOUT:.0f} s: "
            f"{self._log_tail()}",
            pytrace=False,
        )

    def _kill(self) -> None:
        stop(self.process, STOP_TIMEOUT)

    def _log_tail(self) -> str:
        return log_tail(self.workdir / LOG_NAME)


@contextlib.contextmanager
def launch_orthanc(
    servers: Mapping[str, Mapping[str, Any]] | None = None,
) -> Iterator[OrthancServer]:
    """A private Orthanc for one test; `servers` go into `DicomWeb.Servers` of its config
    (build entries with `dicomweb_server_entry`). Stopped, with its data removed, on exit."""
    owner = OrthancProcess(servers)
    try:
        yield owner.start()
    finally:
        owner.stop()


@pytest.fixture(scope="session")
def orthanc() -> Iterator[OrthancServer]:
    """The clinical PACS, one per test session (or xdist worker), shared by the tests.

    Tests that store data should `clear()` first or look only at their own studies, and
    remove the remote servers and modalities they registered.
    """
    with launch_orthanc() as server:
        yield server
