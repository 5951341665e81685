"""Blob stores: where each pseudonymized instance and each precomputed metadata file lives.

Two stores behind one protocol (decision 7): a filesystem directory for the embedded deployment
and any S3 service (MinIO, SeaweedFS, Ceph, AWS) for the distributed one. Both write a blob
whole or not at all, because the index commits a row only after its blob exists (decision 5):
a crash may leave an orphan blob for the sweep, never a row pointing at half a file.
"""

from __future__ import annotations

import errno
import io
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Protocol, runtime_checkable
from urllib.parse import SplitResult, unquote, urlsplit

import certifi
import urllib3
from minio import Minio
from minio.deleteobjects import DeleteObject
from minio.error import InvalidResponseError, MinioException, S3Error, ServerError

from app.config import Settings

MiB = 1024 * 1024
_COPY_CHUNK = MiB

# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


class BlobNotFound(KeyError):
    """No blob under this key. The message names the key only: keys carry no identity."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key

    def __str__(self) -> str:
        return f"no blob under key {self.key!r}"


class BlobStoreError(OSError):
    """The store itself failed (not the caller's key): callers may retry or report a 503."""


class BlobStoreUnreachable(BlobStoreError):
    """The S3 endpoint did not answer (refused, timed out, dropped the connection)."""


class BlobStoreAccessDenied(BlobStoreError):
    """The S3 endpoint refused our credentials; the message never repeats them."""


# --------------------------------------------------------------------------------------------
# Keys
# --------------------------------------------------------------------------------------------

_SEGMENT = r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,254}"
_KEY = re.compile(rf"{_SEGMENT}(?:/{_SEGMENT})*")  # one match for the whole key: it is hot
_MAX_KEY_LENGTH = 1024  # S3's limit; the filesystem store keeps to it so keys stay portable


def validate_key(key: str) -> str:
    """Return `key` if it is a safe relative path of [A-Za-z0-9._-] segments, else ValueError.

    Segments may not start with "." (that rules out "." and "..", and keeps the namespace of
    dot-files free for the store's own temporary files). The same rule on both stores means a
    key that works on a laptop works on the hospital's S3 store too.
    """
    if not isinstance(key, str) or not key:
        raise ValueError("a blob key must be a non-empty string")
    if len(key) > _MAX_KEY_LENGTH:
        raise ValueError(f"a blob key is at most {_MAX_KEY_LENGTH} characters long")
    if not _KEY.fullmatch(key):
        raise ValueError(
            f"invalid blob key {key!r}: keys are '/'-separated segments of "
            "[A-Za-z0-9._-], none empty, none starting with '.'"
        )
    return key


def _validate_prefix(prefix: str, *, allow_empty: bool) -> str:
    """A prefix names a directory of keys: "projects/p" (a trailing "/" is accepted)."""
    stripped = prefix[:-1] if prefix.endswith("/") else prefix
    if not stripped:
        if allow_empty:
            return ""
        raise ValueError("refusing an empty prefix: it would name every blob in the store")
    return validate_key(stripped)


# --------------------------------------------------------------------------------------------
# The protocol
# --------------------------------------------------------------------------------------------


@runtime_checkable
class BlobStore(Protocol):
    """What the DICOMweb server, ingest and the orphan sweep need from a blob store."""

    def put(
        self, key: str, chunks: Iterable[bytes], *, content_type: str = "application/octet-stream"
    ) -> int:
        """Stream `chunks` into `key`, whole or not at all; returns the byte count."""
        ...

    def put_file(
        self,
        key: str,
        path: Path,
        *,
        content_type: str = "application/octet-stream",
        move: bool = False,
    ) -> int:
        """Store a local file; `move=True` hands the file over (it is gone afterwards)."""
        ...

    def open(self, key: str) -> BinaryIO:
        """A readable, forward-only stream; close it to release its connection."""
        ...

    def read_range(self, key: str, start: int, end: int) -> bytes:
        """Bytes [start, end) of the blob, shorter if the blob ends first."""
        ...

    def size(self, key: str) -> int: ...

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> None:
        """Remove the blob; a missing blob is not an error (retries stay safe)."""
        ...

    def delete_prefix(self, prefix: str) -> int:
        """Remove every blob under `prefix/`; returns how many."""
        ...

    def list(self, prefix: str = "") -> Iterator[tuple[str, int, datetime]]:
        """(key, size, last modified in UTC) of every blob under `prefix/`, for the sweep."""
        ...


def readinto_full(stream: BinaryIO, buffer: memoryview) -> int:
    """Fill `buffer` unless the stream ends first (one readinto may return fewer bytes);
    returns how many bytes were read."""
    got = 0
    while got < len(buffer):
        count = stream.readinto(buffer[got:])  # type: ignore[attr-defined]
        if not count:
            break
        got += count
    return got


# --------------------------------------------------------------------------------------------
# Filesystem store
# --------------------------------------------------------------------------------------------

PARTIAL_PREFIX = ".partial-"


def _fsync_dir(directory: Path) -> None:
    """A rename or a new entry is durable only once its directory is synced."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _Partial:
    """A temporary file beside the target that becomes the blob only on `commit()`.

    Writing beside the target keeps `os.replace` on one filesystem, hence atomic: readers see
    the old blob or the new one, never a mix. Anything not committed is unlinked on exit.
    """

    def __init__(self, target: Path, make_dirs: Callable[[Path], None]) -> None:
        self.target = target
        for attempt in range(3):
            make_dirs(target.parent)
            try:
                fd, name = tempfile.mkstemp(prefix=PARTIAL_PREFIX, dir=target.parent)
                break
            except FileNotFoundError:
                # A concurrent delete_prefix removed the directory we had just made: again.
                if attempt == 2:
                    raise
        self.path = Path(name)
        self.file = os.fdopen(fd, "wb")  # mkstemp made it 0600
        self._done = False

    def write(self, chunk: bytes) -> None:
        self.file.write(chunk)

    def commit(self) -> int:
        """Sync the data, rename into place, sync the directory; returns the size."""
        self.file.flush()
        os.fsync(self.file.fileno())
        size = os.fstat(self.file.fileno()).st_size
        self.file.close()
        os.replace(self.path, self.target)
        self._done = True
        _fsync_dir(self.target.parent)
        return size

    def __enter__(self) -> _Partial:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self._done:
            self.file.close()
            self.path.unlink(missing_ok=True)


class FilesystemBlobStore:
    """Blobs as files under `root`, one file per key: the embedded, zero-setup store.

    Content types are not kept (the index knows what each blob is). The filesystem cannot hold
    both a blob "a" and a blob "a/b"; the depot's key scheme never asks for that.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._root_slash = f"{self.root}/"

    def __repr__(self) -> str:
        return f"FilesystemBlobStore({str(self.root)!r})"

    # -- writing ---------------------------------------------------------------------------

    def put(
        self, key: str, chunks: Iterable[bytes], *, content_type: str = "application/octet-stream"
    ) -> int:
        with _Partial(self._path(key), self._make_dirs) as partial:
            for chunk in chunks:
                partial.write(chunk)
            return partial.commit()

    def put_file(
        self,
        key: str,
        path: Path,
        *,
        content_type: str = "application/octet-stream",
        move: bool = False,
    ) -> int:
        """Copy `path` in; with `move=True` rename it in (no copy) when on the same filesystem."""
        target = self._path(key)
        if move and self._rename_in(Path(path), target):
            return target.stat().st_size
        with open(path, "rb") as source, _Partial(target, self._make_dirs) as partial:
            shutil.copyfileobj(source, partial.file, _COPY_CHUNK)
            size = partial.commit()
        if move:
            Path(path).unlink()
        return size

    def _rename_in(self, source: Path, target: Path) -> bool:
        """Rename a caller's file into place: synced and made private first. False on EXDEV."""
        self._make_dirs(target.parent)
        with open(source, "rb") as handle:
            os.fsync(handle.fileno())
        os.chmod(source, 0o600)
        try:
            os.replace(source, target)
        except OSError as exc:
            if exc.errno == errno.EXDEV:  # another filesystem: copy instead
                return False
            raise
        _fsync_dir(target.parent)
        return True

    def _make_dirs(self, directory: Path) -> None:
        """Create missing directories 0700, syncing each parent so the new entry survives a
        crash (otherwise a committed index row could point at a directory that vanished)."""
        missing: list[Path] = []
        current = directory
        while not current.exists():
            missing.append(current)
            current = current.parent
        for path in reversed(missing):
            try:
                path.mkdir(mode=0o700)
            except FileExistsError:
                continue
            _fsync_dir(path.parent)

    # -- reading ---------------------------------------------------------------------------

    def open(self, key: str) -> BinaryIO:
        path = self._file(key)
        try:
            return open(path, "rb")  # the caller owns and closes the stream
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise BlobNotFound(key) from None

    def read_range(self, key: str, start: int, end: int) -> bytes:
        check_range(start, end)
        with self.open(key) as handle:
            handle.seek(start)
            return handle.read(end - start)

    def size(self, key: str) -> int:
        try:
            stat = os.stat(self._file(key))
        except (FileNotFoundError, NotADirectoryError):
            raise BlobNotFound(key) from None
        if not _is_regular(stat):
            raise BlobNotFound(key)
        return stat.st_size

    def exists(self, key: str) -> bool:
        return os.path.isfile(self._file(key))

    def list(self, prefix: str = "") -> Iterator[tuple[str, int, datetime]]:
        """Sorted by directory level; partial files are never listed."""
        prefix = _validate_prefix(prefix, allow_empty=True)
        start = self.root.joinpath(*prefix.split("/")) if prefix else self.root
        key_prefix = f"{prefix}/" if prefix else ""
        for key, stat in self._walk(start, key_prefix):
            yield key, stat.st_size, datetime.fromtimestamp(stat.st_mtime, UTC)

    def _walk(self, directory: Path, key_prefix: str) -> Iterator[tuple[str, os.stat_result]]:
        try:
            with os.scandir(directory) as scan:
                entries = sorted(scan, key=lambda entry: entry.name)
        except (FileNotFoundError, NotADirectoryError):
            return
        for entry in entries:
            if entry.name.startswith("."):
                continue
            key = key_prefix + entry.name
            if entry.is_dir(follow_symlinks=False):
                yield from self._walk(Path(entry.path), key + "/")
            elif entry.is_file(follow_symlinks=False):
                try:
                    yield key, entry.stat(follow_symlinks=False)
                except FileNotFoundError:  # deleted while we walked
                    continue

    # -- deleting --------------------------------------------------------------------------

    def delete(self, key: str) -> None:
        try:
            self._path(key).unlink(missing_ok=True)
        except (IsADirectoryError, NotADirectoryError):
            return  # a directory, or a path through a file: no blob there

    def delete_prefix(self, prefix: str) -> int:
        """Remove the blobs under `prefix/` and the directories they leave empty."""
        prefix = _validate_prefix(prefix, allow_empty=False)
        top = self.root.joinpath(*prefix.split("/"))
        if not top.is_dir():
            return 0
        count = 0
        for directory, _dirs, files in os.walk(top, topdown=False):
            for name in files:
                if not name.startswith("."):
                    Path(directory, name).unlink(missing_ok=True)
                    count += 1
            _rmdir_quietly(Path(directory))
        for parent in top.parents:
            if parent == self.root or not _rmdir_quietly(parent):
                break
        return count

    def sweep_partials(self, older_than: timedelta) -> int:
        """Delete temporary files left by crashed writers, untouched for `older_than`.

        A writer in progress updates its file's mtime with every chunk, so only a writer that
        has stalled (or died) for longer than `older_than` loses its file.
        """
        if older_than < timedelta(0):
            raise ValueError("older_than must not be negative")
        cutoff = time.time() - older_than.total_seconds()
        count = 0
        for directory, _dirs, files in os.walk(self.root):
            for name in files:
                if not name.startswith(PARTIAL_PREFIX):
                    continue
                path = Path(directory, name)
                try:
                    if path.stat().st_mtime < cutoff:
                        path.unlink()
                        count += 1
                except FileNotFoundError:  # committed or swept meanwhile
                    continue
        return count

    def _path(self, key: str) -> Path:
        return Path(self._file(key))

    def _file(self, key: str) -> str:
        """The key's file as a string: a valid key is a safe relative POSIX path already,
        and reads (a series retrieval opens hundreds of blobs) skip pathlib's parsing."""
        return self._root_slash + validate_key(key)


def _is_regular(stat: os.stat_result) -> bool:
    return (stat.st_mode & 0o170000) == 0o100000


def _rmdir_quietly(directory: Path) -> bool:
    """rmdir if empty; a directory still in use (new blob, partial) simply stays."""
    try:
        directory.rmdir()
    except OSError:
        return False
    return True


def check_range(start: int, end: int) -> None:
    if start < 0 or end < start:
        raise ValueError(f"invalid byte range [{start}, {end})")


# --------------------------------------------------------------------------------------------
# S3 store
# --------------------------------------------------------------------------------------------

_AUTH_CODES = frozenset(
    {
        "AccessDenied",
        "AllAccessDisabled",
        "ExpiredToken",
        "InvalidAccessKeyId",
        "InvalidToken",
        "SignatureDoesNotMatch",
    }
)
_MISSING_CODES = frozenset({"NoSuchKey", "NoSuchObject"})
_TRANSPORT_ERRORS = (urllib3.exceptions.HTTPError, ServerError, InvalidResponseError)


class _ChunkReader:
    """A file-like view of an iterable of chunks, so minio can stream it in parts.

    `read(n)` gathers up to n bytes (never the whole iterable), so memory stays near one part.
    An exception raised by the caller's iterable is remembered, so `put` can let it through
    unchanged instead of reporting it as a store failure.
    """

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self._pending = memoryview(b"")
        self.count = 0
        self.error: BaseException | None = None

    def read(self, size: int = -1) -> bytes:
        pieces: list[memoryview] = []
        wanted = size if size >= 0 else None
        while wanted is None or wanted > 0:
            if not self._pending:
                try:
                    self._pending = memoryview(next(self._chunks)).cast("B")
                except StopIteration:
                    break
                except BaseException as exc:
                    self.error = exc
                    raise
                continue
            piece = self._pending if wanted is None else self._pending[:wanted]
            pieces.append(piece)
            self._pending = self._pending[len(piece) :]
            if wanted is not None:
                wanted -= len(piece)
        data = b"".join(pieces)
        self.count += len(data)
        return data


class _S3Stream(io.RawIOBase):
    """An S3 GET response as a raw stream; closing it returns the connection to the pool."""

    def __init__(self, response: urllib3.BaseHTTPResponse, describe: str) -> None:
        super().__init__()
        self._response = response
        self._describe = describe
        self._position = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        try:
            count = self._response.readinto(buffer)
        except urllib3.exceptions.HTTPError as exc:
            raise BlobStoreUnreachable(f"{self._describe} dropped a download: {exc}") from exc
        self._position += count
        return count

    def tell(self) -> int:
        return self._position

    def close(self) -> None:
        if not self.closed:
            try:
                self._response.close()
                self._response.release_conn()
            finally:
                super().close()


class S3BlobStore:
    """Blobs as objects in one bucket (under an optional key prefix) of any S3 service.

    An S3 PUT is atomic by nature, and a multipart upload becomes visible only when completed,
    so a failed `put` (which aborts its upload) leaves nothing under the key.
    """

    def __init__(
        self,
        client: Minio,
        bucket: str,
        prefix: str = "",
        *,
        endpoint: str = "",
        part_size: int = 10 * MiB,
    ) -> None:
        self._client = client
        self.bucket = bucket
        self._prefix = f"{_validate_prefix(prefix, allow_empty=True)}/" if prefix else ""
        self._describe = f"the S3 store at {endpoint}" if endpoint else "the S3 store"
        self._part_size = part_size

    def __repr__(self) -> str:
        return f"S3BlobStore(bucket={self.bucket!r}, prefix={self._prefix!r})"

    def ensure_bucket(self) -> None:
        """Create the bucket if missing; a concurrent creator winning the race is fine."""
        with self._errors():
            if self._client.bucket_exists(self.bucket):
                return
            try:
                self._client.make_bucket(self.bucket)
            except S3Error:
                if not self._client.bucket_exists(self.bucket):
                    raise

    # -- writing ---------------------------------------------------------------------------

    def put(
        self, key: str, chunks: Iterable[bytes], *, content_type: str = "application/octet-stream"
    ) -> int:
        """Stream in parts of `part_size`; one part at a time (num_parallel_uploads=1)
        because minio's parallel uploader leaks its threads when the source fails midway."""
        name = self._name(key)
        reader = _ChunkReader(chunks)
        try:
            self._client.put_object(
                self.bucket,
                name,
                reader,  # type: ignore[arg-type]
                length=-1,
                part_size=self._part_size,
                content_type=content_type,
                num_parallel_uploads=1,
            )
        except BaseException as exc:
            if exc is reader.error or not isinstance(exc, (MinioException, *_TRANSPORT_ERRORS)):
                raise
            raise self._translate(exc, key) from exc
        return reader.count

    def put_file(
        self,
        key: str,
        path: Path,
        *,
        content_type: str = "application/octet-stream",
        move: bool = False,
    ) -> int:
        """Upload a local file (multipart beyond `part_size`); `move=True` removes it after."""
        name = self._name(key)
        size = os.path.getsize(path)
        with self._errors(key):
            self._client.fput_object(
                self.bucket, name, str(path), content_type=content_type, part_size=self._part_size
            )
        if move:
            Path(path).unlink()
        return size

    # -- reading ---------------------------------------------------------------------------

    def open(self, key: str) -> BinaryIO:
        with self._errors(key):
            response = self._client.get_object(self.bucket, self._name(key))
        return io.BufferedReader(_S3Stream(response, self._describe), buffer_size=256 * 1024)  # type: ignore[return-value]

    def read_range(self, key: str, start: int, end: int) -> bytes:
        check_range(start, end)
        name = self._name(key)
        if start == end:
            self.size(key)  # still BlobNotFound for a missing key
            return b""
        with self._errors(key):
            try:
                response = self._client.get_object(
                    self.bucket, name, offset=start, length=end - start
                )
            except S3Error as exc:
                if exc.code != "InvalidRange":
                    raise
                response = None
        if response is None:  # the range starts at or past the end: empty, like slicing
            self.size(key)
            return b""
        try:
            with self._errors(key):
                return response.read()
        finally:
            response.close()
            response.release_conn()

    def size(self, key: str) -> int:
        with self._errors(key):
            stat = self._client.stat_object(self.bucket, self._name(key))
        return int(stat.size or 0)

    def exists(self, key: str) -> bool:
        try:
            self.size(key)
        except BlobNotFound:
            return False
        return True

    def list(self, prefix: str = "") -> Iterator[tuple[str, int, datetime]]:
        """In S3's order (lexicographic by key)."""
        strip = len(self._prefix)
        with self._errors():
            for item in self._client.list_objects(
                self.bucket, prefix=self._list_prefix(prefix), recursive=True
            ):
                if item.is_dir or item.object_name is None:
                    continue
                modified = item.last_modified or datetime.fromtimestamp(0, UTC)
                yield item.object_name[strip:], int(item.size or 0), modified.astimezone(UTC)

    # -- deleting --------------------------------------------------------------------------

    def delete(self, key: str) -> None:
        with self._errors():
            self._client.remove_object(self.bucket, self._name(key))

    def delete_prefix(self, prefix: str) -> int:
        """List and delete in batches of 1000 as the listing goes, never holding all names."""
        listed = self._list_prefix(_validate_prefix(prefix, allow_empty=False))
        count = 0

        def names() -> Iterator[DeleteObject]:
            nonlocal count
            for item in self._client.list_objects(self.bucket, prefix=listed, recursive=True):
                if not item.is_dir and item.object_name is not None:
                    count += 1
                    yield DeleteObject(item.object_name)

        with self._errors():
            failures = list(self._client.remove_objects(self.bucket, names()))
        if failures:
            raise BlobStoreError(
                f"{self._describe} kept {len(failures)} of {count} blobs under {prefix!r} "
                f"({failures[0].code})"
            )
        return count

    # -- helpers ---------------------------------------------------------------------------

    def _name(self, key: str) -> str:
        return self._prefix + validate_key(key)

    def _list_prefix(self, prefix: str) -> str:
        prefix = _validate_prefix(prefix, allow_empty=True)
        return self._prefix + (f"{prefix}/" if prefix else "")

    @contextmanager
    def _errors(self, key: str | None = None) -> Iterator[None]:
        try:
            yield
        except (MinioException, *_TRANSPORT_ERRORS) as exc:
            raise self._translate(exc, key) from exc

    def _translate(self, exc: BaseException, key: str | None) -> Exception:
        """Map minio/urllib3 failures to ours, with messages free of credentials."""
        if isinstance(exc, S3Error):
            if exc.code in _MISSING_CODES and key is not None:
                return BlobNotFound(key)
            if exc.code in _AUTH_CODES:
                return BlobStoreAccessDenied(
                    f"{self._describe} refused our credentials ({exc.code}): check the access "
                    "key and secret key configured for it"
                )
            if exc.code == "NoSuchBucket":
                return BlobStoreError(f"{self._describe} has no bucket {self.bucket!r}")
            return BlobStoreError(f"{self._describe} answered {exc.code}: {exc.message}")
        if isinstance(exc, ServerError):
            return BlobStoreUnreachable(
                f"{self._describe} failed with HTTP {exc.status_code}; try again later"
            )
        if isinstance(exc, urllib3.exceptions.HTTPError):
            return BlobStoreUnreachable(f"{self._describe} is unreachable ({type(exc).__name__})")
        return BlobStoreError(f"{self._describe} failed: {exc}")


# --------------------------------------------------------------------------------------------
# Opening a store from configuration
# --------------------------------------------------------------------------------------------


def open_blob_store(
    url: str,
    *,
    s3_endpoint: str = "",
    s3_access_key: str = "",
    s3_secret_key: str = "",
    s3_region: str = "",
) -> BlobStore:
    """The store a URL names: "file:///abs/path" or "s3://bucket[/prefix]".

    For S3, the bucket is created when missing, which also proves at startup that the endpoint
    answers and accepts the credentials (BlobStoreUnreachable / BlobStoreAccessDenied if not).
    """
    parts = urlsplit(url or "")
    if parts.username is not None or parts.password is not None:
        raise ValueError(
            "the blob store URL must not carry credentials; give the S3 access and secret "
            "keys in their own settings"
        )
    if parts.scheme == "file":
        return FilesystemBlobStore(_file_url_path(parts.netloc, parts.path, parts.query))
    if parts.scheme == "s3":
        return _open_s3(parts, s3_endpoint, s3_access_key, s3_secret_key, s3_region)
    shown = f"a {parts.scheme!r} URL" if parts.scheme else "no URL" if not url else "a bare path"
    raise ValueError(
        f"the blob store URL must be file:///absolute/path or s3://bucket[/prefix], got {shown}"
    )


def _file_url_path(netloc: str, path: str, query: str) -> Path:
    if netloc not in ("", "localhost") or not path.startswith("/") or query:
        raise ValueError(
            "a file blob URL names an absolute local directory, like file:///var/lib/depot/blobs"
        )
    return Path(unquote(path))


def _open_s3(
    parts: SplitResult, endpoint: str, access_key: str, secret_key: str, region: str
) -> S3BlobStore:
    bucket = parts.netloc
    if not bucket or parts.query or parts.fragment:
        raise ValueError("an S3 blob URL looks like s3://bucket or s3://bucket/prefix")
    if not endpoint:
        raise ValueError("an s3:// blob URL needs the S3 endpoint, e.g. http://127.0.0.1:8333")
    host, secure = _parse_endpoint(endpoint)
    try:
        client = Minio(
            host,
            access_key=access_key or None,
            secret_key=secret_key or None,
            secure=secure,
            region=region or None,
            http_client=_http_client(),
        )
        store = S3BlobStore(client, bucket, unquote(parts.path.strip("/")), endpoint=host)
    except ValueError as exc:
        raise ValueError(f"invalid S3 blob store settings: {exc}") from None
    store.ensure_bucket()
    return store


def _parse_endpoint(endpoint: str) -> tuple[str, bool]:
    """Split "http://host:port" into ("host:port", secure=False); a bare "host:port" is HTTPS."""
    if "://" not in endpoint:
        endpoint = f"https://{endpoint}"
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("the S3 endpoint must look like http://host:port or https://host")
    if parts.username is not None or parts.password is not None:
        raise ValueError("the S3 endpoint must not carry credentials")
    if parts.path not in ("", "/") or parts.query:
        raise ValueError("the S3 endpoint is a host and port only, without a path")
    return parts.netloc, parts.scheme == "https"


def _http_client() -> urllib3.PoolManager:
    """minio's defaults wait 5 minutes and retry 5 times; a server should fail sooner."""
    return urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=10, read=120),
        maxsize=16,
        cert_reqs="CERT_REQUIRED",
        ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
        retries=urllib3.Retry(total=3, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]),
    )


def blob_store_from_settings(settings: Settings) -> BlobStore:
    """The deployment's blob store: files under the data dir, or S3 by configuration alone."""
    return open_blob_store(
        settings.blob_store_url,
        s3_endpoint=settings.s3_endpoint,
        s3_access_key=settings.s3_access_key,
        s3_secret_key=settings.s3_secret_key.get_secret_value(),
        s3_region=settings.s3_region,
    )
