"""Our server as a real process on loopback (`depot serve`), for clients that need a socket:
Orthanc pushing and pulling, dicomweb-client over HTTP, memory measured from outside.

Use with `pytest_plugins = ["tests.depot_server"]` (plus "tests.blobstores" for
`depot_server_on_both`). `depot_server` is the embedded deployment (SQLite + files in a
temporary data dir); `depot_server_on_both` runs the test on each deployment. Both hold
project "alpha" and one token per role.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from app.auth.credentials import issue_token
from app.auth.roles import Role
from app.config import Settings
from app.projects import create_project
from app.store.index import index_engine
from tests.research_server import DEPLOYMENTS, DEPOT_VARIABLES, configure_deployment
from tests.services import die_with_parent, free_ports, log_tail, stop

STARTUP_TIMEOUT = 30.0  # seconds


@dataclass
class DepotServer:
    url: str  # http://127.0.0.1:<port>
    pid: int
    settings: Settings
    tokens: dict[str, str]  # "researcher", "manager"
    log: Path

    def headers(self, who: str = "researcher") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[who]}"}

    def peak_rss(self) -> int:
        """The server process's resident-memory high-water mark, in bytes (Linux VmHWM)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmHWM in /proc: not Linux?")


def _wait_ready(url: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"depot serve exited with {process.returncode}; {log_tail(log)}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"depot serve did not become ready; {log_tail(log)}")


def _serve(settings: Settings, tmp_path: Path) -> Iterator[DepotServer]:
    """`depot serve` on a free loopback port with the DEPOT_* environment of this process
    (set by the fixture for `settings`), project "alpha" and a token per role."""
    create_project(settings, "alpha", "Alpha")
    index = index_engine(settings.index_url)
    tokens = {
        "researcher": issue_token(settings, "alpha", Role.researcher)[1],
        "manager": issue_token(settings, "alpha", Role.data_manager)[1],
    }
    (port,) = free_ports(1)
    log = tmp_path / "depot-serve.log"
    depot = Path(sys.executable).with_name("depot")
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [str(depot), "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=dict(os.environ),
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent if sys.platform == "linux" else None,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, process, log)
        yield DepotServer(url, process.pid, settings, tokens, log)
    finally:
        stop(process, grace=5)
        index.dispose()  # before a PostgreSQL database is dropped


@pytest.fixture
def depot_server(tmp_path: Path, monkeypatch) -> Iterator[DepotServer]:
    """The embedded deployment (SQLite + files)."""
    for name in DEPOT_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DEPOT_DATA_DIR", str(tmp_path / "depot-data"))
    yield from _serve(Settings(), tmp_path)


@pytest.fixture(params=DEPLOYMENTS)
def depot_server_on_both(request, tmp_path: Path, monkeypatch) -> Iterator[DepotServer]:
    """Each deployment in turn: SQLite + files, PostgreSQL + S3 (needs tests.blobstores)."""
    settings = configure_deployment(request, tmp_path / "depot-data", monkeypatch)
    yield from _serve(settings, tmp_path)
