"""Blob stores: the same behaviour on the filesystem and on a real S3 server (SeaweedFS).

Tests taking `blob_store` run twice, as [filesystem] and [s3]; the others pin what only one
store has (permissions and crash leftovers on disk, credentials and connections on S3).
"""

from __future__ import annotations

import hashlib
import os
import secrets
import socket
import stat
import subprocess
import sys
import threading
import time
import traceback
import tracemalloc
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from app.store.blobs import (
    PARTIAL_PREFIX,
    BlobNotFound,
    BlobStore,
    BlobStoreAccessDenied,
    BlobStoreUnreachable,
    FilesystemBlobStore,
    open_blob_store,
)

if TYPE_CHECKING:
    from tests.blobstores import S3Server

pytest_plugins = ["tests.blobstores"]

MiB = 1024 * 1024
KEY = "projects/alpha/studies/2.25.1/series/2.25.2/instances/2.25.3.dcm"
ROOT = Path(__file__).resolve().parents[1]


class Boom(Exception):
    """Raised by a chunk source that fails midway (a dropped upload, a pseudonymizer error)."""


def read_all(store: BlobStore, key: str) -> bytes:
    with store.open(key) as stream:
        return stream.read()


def numbered_chunks(count: int, size: int = MiB) -> Iterator[bytes]:
    """Distinct chunks (chunk i is byte i repeated), so a reordering or a loss would show."""
    for index in range(count):
        yield bytes([index % 256]) * size


def failing_chunks(fail_after: int) -> Iterator[bytes]:
    sent = 0
    while sent < fail_after:
        yield b"x" * MiB
        sent += MiB
    raise Boom("the source failed midway")


def is_filesystem(store: BlobStore) -> bool:
    return isinstance(store, FilesystemBlobStore)


def s3_store(server: S3Server, url: str) -> BlobStore:
    return open_blob_store(
        url,
        s3_endpoint=server.endpoint,
        s3_access_key=server.access_key,
        s3_secret_key=server.secret_key,
    )


# --------------------------------------------------------------------------------------------
# Both stores
# --------------------------------------------------------------------------------------------


def test_both_stores_satisfy_the_protocol(blob_store):
    assert isinstance(blob_store, BlobStore)


def test_put_streams_200_mib_without_holding_the_blob_in_memory(blob_store):
    total = 200 * MiB
    tracemalloc.start()
    try:
        written = blob_store.put(KEY, numbered_chunks(200))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert written == total
    # The filesystem writes each chunk through; S3 holds about one 10 MiB part (twice, while
    # minio slices it). Joining the chunks would need the whole 200 MiB.
    limit = 4 * MiB if is_filesystem(blob_store) else 40 * MiB
    assert peak < limit, f"peak {peak / MiB:.1f} MiB for a {total // MiB} MiB blob"

    assert blob_store.size(KEY) == total
    expected, actual = hashlib.sha256(), hashlib.sha256()
    for chunk in numbered_chunks(200):
        expected.update(chunk)
    with blob_store.open(KEY) as stream:
        while piece := stream.read(4 * MiB):
            actual.update(piece)
    assert actual.hexdigest() == expected.hexdigest()


def test_put_then_open_size_exists_and_read_range_give_back_the_bytes(blob_store):
    data = bytes(range(256)) * 40
    assert blob_store.put(KEY, [data[:1000], b"", bytearray(data[1000:])]) == len(data)

    assert blob_store.exists(KEY)
    assert blob_store.size(KEY) == len(data)
    with blob_store.open(KEY) as stream:
        assert stream.read(10) == data[:10]
        assert stream.read(5000) == data[10:5010]
        assert stream.read() == data[5010:]
        assert stream.read(1) == b""
    assert stream.closed
    assert read_all(blob_store, KEY) == data


def test_read_range_returns_bytes_start_to_end_like_a_slice(blob_store):
    data = bytes(range(256)) * 40
    blob_store.put(KEY, [data])
    end = len(data)

    assert blob_store.read_range(KEY, 100, 228) == data[100:228]
    assert blob_store.read_range(KEY, 0, end) == data
    assert blob_store.read_range(KEY, 7, 7) == b""
    assert blob_store.read_range(KEY, end - 3, end + 100) == data[-3:]
    assert blob_store.read_range(KEY, end + 10, end + 20) == b""
    with pytest.raises(ValueError):
        blob_store.read_range(KEY, 10, 5)
    with pytest.raises(ValueError):
        blob_store.read_range(KEY, -1, 5)


def test_put_file_copies_a_local_file_and_leaves_it_in_place(blob_store, tmp_path):
    source = tmp_path / "in.dcm"
    data = b"".join(numbered_chunks(12))  # past one S3 part: a multipart upload
    source.write_bytes(data)

    assert blob_store.put_file(KEY, source) == len(data)

    assert read_all(blob_store, KEY) == data
    assert source.read_bytes() == data


def test_put_file_with_move_hands_the_file_over(blob_store, tmp_path):
    source = tmp_path / "in.dcm"
    source.write_bytes(b"pseudonymized instance")

    assert blob_store.put_file(KEY, source, move=True) == len(b"pseudonymized instance")

    assert read_all(blob_store, KEY) == b"pseudonymized instance"
    assert not source.exists()


def test_list_yields_key_size_and_utc_time_of_each_blob_under_a_prefix(blob_store):
    before = datetime.now(UTC) - timedelta(seconds=2)  # S3 keeps whole seconds
    blobs = {
        "projects/alpha/a.dcm": b"abc",
        "projects/alpha/series/1/b.dcm": b"bbbbb",
        "projects/alpha2/c.dcm": b"ccccccc",
        "other/d": b"d",
    }
    for key, data in blobs.items():
        blob_store.put(key, [data])
    after = datetime.now(UTC) + timedelta(seconds=2)

    listed = {key: (size, modified) for key, size, modified in blob_store.list("projects/alpha")}

    assert {key: size for key, (size, _) in listed.items()} == {
        "projects/alpha/a.dcm": 3,
        "projects/alpha/series/1/b.dcm": 5,
    }
    for _, modified in listed.values():
        assert modified.utcoffset() == timedelta(0)
        assert before <= modified <= after
    assert {key for key, _, _ in blob_store.list()} == set(blobs)
    assert list(blob_store.list("projects/alpha/")) == list(blob_store.list("projects/alpha"))
    assert list(blob_store.list("projects/none")) == []


def test_delete_removes_one_blob_and_is_idempotent(blob_store):
    sibling = KEY.replace("2.25.3.dcm", "2.25.4.dcm")
    blob_store.put(KEY, [b"one"])
    blob_store.put(sibling, [b"two"])

    blob_store.delete(KEY)
    blob_store.delete(KEY)
    blob_store.delete("projects/never/was.dcm")

    assert not blob_store.exists(KEY)
    assert read_all(blob_store, sibling) == b"two"


def test_delete_prefix_removes_that_subtree_only_and_counts_it(blob_store):
    for key in (
        "projects/alpha/s/1/a.dcm",
        "projects/alpha/s/1/b.dcm",
        "projects/alpha/s/2/metadata.json.gz",
        "projects/alpha2/s/1/a.dcm",
        "projects/alpha.dcm",
    ):
        blob_store.put(key, [b"x"])

    assert blob_store.delete_prefix("projects/alpha") == 3

    assert {key for key, _, _ in blob_store.list()} == {
        "projects/alpha2/s/1/a.dcm",
        "projects/alpha.dcm",
    }
    assert blob_store.delete_prefix("projects/alpha/") == 0
    for everything in ("", "/"):
        with pytest.raises(ValueError):
            blob_store.delete_prefix(everything)


def test_overwrite_replaces_the_blob_and_readers_never_see_a_mix(blob_store):
    old = b"old!" * 50_000
    new = b"".join(numbered_chunks(12))  # several S3 parts: the upload takes a while
    blob_store.put(KEY, [old])
    seen_midway: list[bytes] = []

    def new_chunks() -> Iterator[bytes]:
        yield new[: 11 * MiB]
        seen_midway.append(read_all(blob_store, KEY))  # first part is on its way by now
        yield new[11 * MiB :]

    assert blob_store.put(KEY, new_chunks()) == len(new)

    assert seen_midway == [old]
    assert blob_store.size(KEY) == len(new)
    assert read_all(blob_store, KEY) == new


@pytest.mark.parametrize("fail_after", [MiB, 25 * MiB], ids=["one-part", "multipart"])
def test_a_put_whose_chunks_fail_midway_leaves_nothing_under_the_key(blob_store, fail_after):
    with pytest.raises(Boom):
        blob_store.put(KEY, failing_chunks(fail_after))

    assert not blob_store.exists(KEY)
    assert list(blob_store.list()) == []
    if is_filesystem(blob_store):  # not even a hidden partial file
        assert [path for path in blob_store.root.rglob("*") if path.is_file()] == []


def test_a_failed_overwrite_keeps_the_previous_blob(blob_store):
    blob_store.put(KEY, [b"the good copy"])

    with pytest.raises(Boom):
        blob_store.put(KEY, failing_chunks(12 * MiB))

    assert read_all(blob_store, KEY) == b"the good copy"


def test_missing_blobs_raise_blob_not_found_naming_the_key(blob_store):
    missing = "projects/alpha/missing.dcm"
    calls: list[Callable[[], object]] = [
        lambda: blob_store.open(missing),
        lambda: blob_store.size(missing),
        lambda: blob_store.read_range(missing, 0, 10),
        lambda: blob_store.read_range(missing, 0, 0),
    ]
    for call in calls:
        with pytest.raises(BlobNotFound) as info:
            call()
        assert info.value.key == missing
        assert str(info.value) == f"no blob under key {missing!r}"
        assert isinstance(info.value, KeyError)
    assert not blob_store.exists(missing)


def test_a_directory_of_keys_is_not_a_blob(blob_store):
    blob_store.put(KEY, [b"x"])
    directory = KEY.rsplit("/", 1)[0]

    assert not blob_store.exists(directory)
    with pytest.raises(BlobNotFound):
        blob_store.open(directory)
    with pytest.raises(BlobNotFound):
        blob_store.size(directory)
    blob_store.delete(directory)
    assert blob_store.exists(KEY)


BAD_KEYS = [
    "",
    "/projects/alpha/a.dcm",
    "projects//a.dcm",
    "projects/../secrets",
    "..",
    ".",
    "projects/./a.dcm",
    "projects/alpha/",
    "projects\\alpha",
    "projects/al pha.dcm",
    "projects/ü.dcm",
    "projects/a.dcm?x=1",
    "projects/a\x00.dcm",
    ".hidden",
    f"projects/{PARTIAL_PREFIX}abc",
    "projects/" + "y" * 256,
    "/".join(["abcdefgh"] * 120),  # over 1024 characters
]


@pytest.mark.parametrize("key", BAD_KEYS)
def test_keys_outside_the_safe_alphabet_are_refused(blob_store, key, tmp_path):
    source = tmp_path / "in.dcm"
    source.write_bytes(b"x")
    calls: list[Callable[[], object]] = [
        lambda: blob_store.put(key, [b"x"]),
        lambda: blob_store.put_file(key, source),
        lambda: blob_store.open(key),
        lambda: blob_store.read_range(key, 0, 1),
        lambda: blob_store.size(key),
        lambda: blob_store.exists(key),
        lambda: blob_store.delete(key),
    ]
    for call in calls:
        with pytest.raises(ValueError):
            call()
    assert list(blob_store.list()) == []


# --------------------------------------------------------------------------------------------
# Filesystem store
# --------------------------------------------------------------------------------------------


@pytest.fixture
def umask_022() -> Iterator[None]:
    """The usual umask, so modes come from the store and not from a strict environment."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_filesystem_blobs_are_0600_in_0700_directories(tmp_path, umask_022):
    root = tmp_path / "blobs"
    store = FilesystemBlobStore(root)
    store.put(KEY, [b"x"])
    copied = tmp_path / "copied.dcm"
    copied.write_bytes(b"y")
    store.put_file("projects/alpha/copied.dcm", copied)
    moved = tmp_path / "moved.dcm"
    moved.write_bytes(b"z")
    store.put_file("projects/alpha/moved.dcm", moved, move=True)

    directories = [path for path in root.rglob("*") if path.is_dir()]
    files = [path for path in root.rglob("*") if path.is_file()]
    assert len(files) == 3
    assert {mode(path) for path in files} == {0o600}
    assert {mode(path) for path in [root, *directories]} == {0o700}


def test_filesystem_put_file_with_move_renames_instead_of_copying(tmp_path):
    store = FilesystemBlobStore(tmp_path / "blobs")
    source = tmp_path / "in.dcm"
    source.write_bytes(b"x" * 1000)
    inode = source.stat().st_ino

    store.put_file(KEY, source, move=True)

    assert (store.root / KEY).stat().st_ino == inode


def test_filesystem_delete_prefix_leaves_no_empty_directories(tmp_path):
    store = FilesystemBlobStore(tmp_path / "blobs")
    store.put("projects/alpha/studies/1/series/2/a.dcm", [b"x"])
    store.put("projects/beta/b.dcm", [b"x"])

    assert store.delete_prefix("projects/alpha/studies/1") == 1

    assert not (store.root / "projects" / "alpha").exists()
    assert (store.root / "projects" / "beta" / "b.dcm").exists()


CRASHING_WRITER = """
import os, sys
from pathlib import Path
from app.store.blobs import FilesystemBlobStore

def chunks():
    yield b"half of an instance"
    os._exit(3)  # the process dies: no exception handler, no cleanup

FilesystemBlobStore(Path(sys.argv[1])).put(sys.argv[2], chunks())
"""


def test_a_writer_that_crashes_leaves_an_invisible_partial_that_the_sweep_removes(tmp_path):
    root = tmp_path / "blobs"
    crashed = subprocess.run(
        [sys.executable, "-c", CRASHING_WRITER, str(root), KEY], cwd=ROOT, check=False
    )
    assert crashed.returncode == 3
    store = FilesystemBlobStore(root)
    (partial,) = (root / KEY).parent.iterdir()
    assert partial.name.startswith(PARTIAL_PREFIX)

    assert not store.exists(KEY)
    assert list(store.list()) == []
    assert store.sweep_partials(timedelta(hours=1)) == 0  # could be a writer still at work
    assert partial.exists()

    an_hour_ago = time.time() - 3601
    os.utime(partial, (an_hour_ago, an_hour_ago))
    assert store.sweep_partials(timedelta(hours=1)) == 1
    assert not partial.exists()


def test_filesystem_store_from_a_file_url_creates_a_private_root(tmp_path, umask_022):
    root = tmp_path / "data dir" / "blobs"  # a space: the URL is percent-encoded

    store = open_blob_store(root.as_uri())

    assert isinstance(store, FilesystemBlobStore)
    assert store.root == root
    assert mode(root) == 0o700


# --------------------------------------------------------------------------------------------
# S3 store
# --------------------------------------------------------------------------------------------


def test_s3_store_creates_its_bucket_and_keeps_keys_under_the_url_prefix(s3_server, s3_bucket):
    store = s3_store(s3_server, f"s3://{s3_bucket}/depot/main")
    store.put("projects/p/a.dcm", [b"abc"], content_type="application/dicom")

    client = s3_server.client()
    assert client.bucket_exists(s3_bucket)
    names = [item.object_name for item in client.list_objects(s3_bucket, recursive=True)]
    assert names == ["depot/main/projects/p/a.dcm"]
    assert client.stat_object(s3_bucket, names[0]).content_type == "application/dicom"
    assert [key for key, _, _ in store.list()] == ["projects/p/a.dcm"]
    assert store.delete_prefix("projects") == 1


def test_s3_with_a_wrong_secret_key_fails_clearly_without_repeating_it(s3_server, s3_bucket):
    wrong = f"wrong-{secrets.token_urlsafe(16)}"

    with pytest.raises(BlobStoreAccessDenied) as info:
        open_blob_store(
            f"s3://{s3_bucket}",
            s3_endpoint=s3_server.endpoint,
            s3_access_key=s3_server.access_key,
            s3_secret_key=wrong,
        )

    assert isinstance(info.value, OSError)
    assert "refused our credentials" in str(info.value)
    everything = "".join(traceback.format_exception(info.value))
    assert wrong not in everything
    assert s3_server.secret_key not in everything


def test_s3_that_does_not_answer_is_reported_unreachable_quickly():
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    secret = f"secret-{secrets.token_urlsafe(16)}"
    started = time.monotonic()

    with pytest.raises(BlobStoreUnreachable) as info:
        open_blob_store(
            "s3://depot",
            s3_endpoint=f"http://127.0.0.1:{port}",
            s3_access_key="depot",
            s3_secret_key=secret,
        )

    assert time.monotonic() - started < 10
    assert isinstance(info.value, OSError)
    assert f"127.0.0.1:{port} is unreachable" in str(info.value)
    assert secret not in "".join(traceback.format_exception(info.value))


def test_a_failed_s3_multipart_put_leaves_no_upload_threads_behind(s3_server, s3_bucket):
    store = s3_store(s3_server, f"s3://{s3_bucket}")
    threads_before = threading.active_count()

    with pytest.raises(Boom):
        store.put(KEY, failing_chunks(35 * MiB))

    assert threading.active_count() == threads_before


# --------------------------------------------------------------------------------------------
# Store URLs
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "",
        "/var/lib/depot/blobs",
        "blobs",
        "ftp://host/blobs",
        "file://relative/blobs",
        "s3://",
        "s3://bucket?versioning=1",
        "gs://bucket",
    ],
)
def test_open_blob_store_refuses_other_urls_with_a_sentence(url):
    with pytest.raises(ValueError) as info:
        open_blob_store(url, s3_endpoint="http://127.0.0.1:1")
    message = str(info.value)
    assert "file:///" in message or "s3://" in message


def test_open_blob_store_refuses_credentials_in_the_url_without_repeating_them():
    with pytest.raises(ValueError) as info:
        open_blob_store("s3://depot:topsecret@bucket", s3_endpoint="http://127.0.0.1:1")
    assert "topsecret" not in str(info.value)
    assert "credentials" in str(info.value)


def test_an_s3_url_needs_an_endpoint():
    with pytest.raises(ValueError, match="endpoint"):
        open_blob_store("s3://bucket")


def test_settings_choose_the_store_by_configuration_alone(
    tmp_path, monkeypatch, s3_server, s3_bucket
):
    from app.config import Settings
    from app.store.blobs import FilesystemBlobStore, S3BlobStore, blob_store_from_settings

    embedded = blob_store_from_settings(Settings(data_dir=tmp_path))
    assert isinstance(embedded, FilesystemBlobStore)
    embedded.put("a/b.bin", [b"x"])
    assert (tmp_path / "blobs" / "a" / "b.bin").read_bytes() == b"x"

    monkeypatch.setenv("DEPOT_BLOB_URL", f"s3://{s3_bucket}")
    monkeypatch.setenv("DEPOT_S3_ENDPOINT", s3_server.endpoint)
    monkeypatch.setenv("DEPOT_S3_ACCESS_KEY", s3_server.access_key)
    monkeypatch.setenv("DEPOT_S3_SECRET_KEY", s3_server.secret_key)
    scaled = blob_store_from_settings(Settings(data_dir=tmp_path))
    assert isinstance(scaled, S3BlobStore)
    scaled.put("a/b.bin", [b"y"])
    assert scaled.read_range("a/b.bin", 0, 1) == b"y"
    assert s3_server.secret_key not in repr(Settings(data_dir=tmp_path))
