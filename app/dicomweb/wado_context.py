"""What every WADO route module shares: stores, lookups by project, stored bytes, errors.

Every object is looked up through `index_repo`, which filters by project, so another
project's object is 404 like an unknown one; UIDs in the path are checked (`[0-9.]`, at most
64 characters: 400) and never echoed. `guarded` wraps every WADO endpoint: store failures
become 503 and frame or negotiation problems 404/406, never a 500. Blobs are read here by
range or streamed in chunks, so no route holds a whole instance in memory.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import re
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from threading import Lock
from typing import TypeVar

import numpy
from fastapi import HTTPException, Request, status
from fastapi.responses import Response, StreamingResponse
from pydicom.dataset import Dataset
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from app.config import Settings
from app.dicom.frames import (
    FrameError,
    FrameNotFound,
    Header,
    PixelLayout,
    check_frames,
    encapsulated_frames,
    native_frame_range,
    parse_frame_list,
    read_frame,
    read_instance_header,
    to_little_endian,
)
from app.dicom.multipart import Part, content_type, new_boundary, write_parts
from app.dicomweb.accept import MediaRange, NotAcceptable, parse_accept
from app.dicomweb.public_base import public_base
from app.store import index_repo
from app.store.blobs import BlobNotFound, BlobStore, BlobStoreError, readinto_full
from app.store.encryption import BlobIntegrityError, project_blob_store
from app.store.index import index_engine
from app.store.models import Instance, Series
from app.vault import Vault

ROOT = "/projects/{project_id}/dicom-web"
STUDY = f"{ROOT}/studies/{{study_uid}}"
SERIES = f"{STUDY}/series/{{series_uid}}"
INSTANCE = f"{SERIES}/instances/{{sop_uid}}"
Route = tuple[str, Callable[..., Response], str]  # path, endpoint, route name
CHUNK = 1024 * 1024  # even, so a big endian swap never splits a value
STEP = 4 * CHUNK  # a multipart body is read this much at a time, one step ahead of sending
_UID = re.compile(r"[0-9.]{1,64}")
_UNAVAILABLE = status.HTTP_503_SERVICE_UNAVAILABLE
_Row = TypeVar("_Row", Instance, Series)
_Item = TypeVar("_Item")
_Chunk = bytes | memoryview  # a body chunk: starlette and uvicorn send either
_END = object()  # what a worker-thread step returns once its iterator is exhausted


# --- errors -------------------------------------------------------------------------------------


def error(code: int, reason: str) -> HTTPException:
    return HTTPException(code, detail=reason)


def bad_request(reason: str) -> HTTPException:
    return error(status.HTTP_400_BAD_REQUEST, reason)


def not_found(reason: str = "not found") -> HTTPException:
    return error(status.HTTP_404_NOT_FOUND, reason)


@contextmanager
def invalid_as_400() -> Iterator[None]:
    """A ValueError of a parameter parser (its message safe to return) becomes 400."""
    try:
        yield
    except ValueError as exc:
        raise bad_request(str(exc)) from exc


def check_uids(*uids: str | None) -> None:
    """400 for a UID that is not digits and dots or longer than 64 (the value is not echoed)."""
    for uid in uids:
        if uid is not None and not _UID.fullmatch(uid):
            raise bad_request("malformed UID in the request")


def accept_of(request: Request) -> list[MediaRange]:
    """The request's Accept entries, ranked (`accept.parse_accept`)."""
    return parse_accept(request.headers.get("accept"))


def frame_numbers(frame_list: str) -> list[int]:
    """The `{frame_list}` path segment's numbers; 400 when malformed."""
    with invalid_as_400():
        return parse_frame_list(frame_list)


def guarded(function: Callable[..., Response]) -> Callable[..., Response]:
    """Store failures become 503 and frame problems 404/406, never a 500."""

    @functools.wraps(function)  # FastAPI reads the wrapped signature
    def run(*args: object, **kwargs: object) -> Response:
        try:
            return function(*args, **kwargs)
        except FrameNotFound as exc:
            raise not_found(str(exc)) from exc
        except (FrameError, NotAcceptable) as exc:
            raise error(status.HTTP_406_NOT_ACCEPTABLE, str(exc)) from exc
        except (BlobNotFound, BlobStoreError) as exc:  # 503 naming the failed part only
            raise error(_UNAVAILABLE, "the blob store is unavailable") from exc
        except SQLAlchemyError as exc:
            raise error(_UNAVAILABLE, "the index is unavailable") from exc

    return run


# --- stores and lookups -------------------------------------------------------------------------


class WadoContext:
    """The index and the blob store, opened on the first request (opening S3 connects), and
    the public base of the URLs the answers carry."""

    def __init__(self, settings: Settings, vault: Vault | None = None) -> None:
        self._settings = settings
        self._vault = vault  # the server's, for the data keys of sealed blobs
        self._lock = Lock()
        self._blobs: BlobStore | None = None

    @property
    def index(self) -> Engine:
        return index_engine(self._settings.index_url)

    @property
    def blobs(self) -> BlobStore:
        with self._lock:
            if self._blobs is None:
                self._blobs = project_blob_store(self._settings, self._vault)
            return self._blobs

    def base_of(self, request: Request) -> str:
        return public_base(request, self._settings.public_url)


def find_instance(index: Engine, project: str, study: str, series: str, sop: str) -> Instance:
    instance = index_repo.get_instance(index, project, sop)
    if instance is None or instance.study_uid != study or instance.series_uid != series:
        raise not_found()
    return instance


def _find_series(index: Engine, project: str, study: str, series: str) -> Series:
    found = index_repo.get_series(index, project, series)
    if found is None or found.study_uid != study:
        raise not_found()
    return found


def _check_study(index: Engine, project: str, study: str) -> None:
    if index_repo.get_study(index, project, study) is None:
        raise not_found()


def _some(rows: list[_Row]) -> list[_Row]:
    if not rows:
        raise not_found()
    return rows


def find_instances(
    index: Engine, project: str, study: str, series: str | None = None
) -> list[Instance]:
    """The instances of a study, or of one of its series; 404 for none."""
    if series is None:
        _check_study(index, project, study)
        return _some(index_repo.list_instances(index, project, study_uid=study))
    _find_series(index, project, study, series)
    return _some(index_repo.list_instances(index, project, series_uid=series))


def find_series(index: Engine, project: str, study: str, series: str | None = None) -> list[Series]:
    """The series rows of a study, or the one series named; 404 for none."""
    if series is None:
        _check_study(index, project, study)
        return _some(index_repo.list_series(index, project, study))
    return [_find_series(index, project, study, series)]


# --- stored bytes -------------------------------------------------------------------------------


def reader(blobs: BlobStore, key: str) -> Callable[[int, int], bytes]:
    return lambda start, end: blobs.read_range(key, start, end)


def read_header(blobs: BlobStore, instance: Instance) -> Header:
    """The instance's header (up to its pixel data) and where its pixel data is."""
    return read_instance_header(
        reader(blobs, instance.blob_key),
        instance.header_length,
        instance.size,
        instance.transfer_syntax_uid,
    )


def blob_chunks(blobs: BlobStore, key: str, size: int | None = None) -> Iterator[_Chunk]:
    """The blob's bytes, CHUNK at most at a time.

    With `size` (what the index records), exactly that many bytes, each chunk read into a
    buffer of its own that a sealed blob is decrypted straight into, so the plaintext is
    not copied again on its way out; the buffer is not zeroed first (numpy.empty: a
    bytearray's zeroing costs as much as the copy it saves). A blob of another size is a
    BlobIntegrityError: a response announced with the indexed sizes (its Content-Length)
    must never carry other bytes. Without `size`, plain reads to the end.
    """
    with blobs.open(key) as stream:
        if size is None:
            while chunk := stream.read(CHUNK):
                yield chunk
            return
        while size > 0:
            buffer = memoryview(numpy.empty(min(size, CHUNK), numpy.uint8))
            if readinto_full(stream, buffer) < len(buffer):
                raise BlobIntegrityError(key, "shorter than the index records")
            yield buffer
            size -= len(buffer)
        if stream.read(1):
            raise BlobIntegrityError(key, "longer than the index records")


def range_chunks(blobs: BlobStore, key: str, start: int, end: int) -> Iterator[bytes]:
    position = start
    while position < end:
        data = blobs.read_range(key, position, min(end, position + CHUNK))
        if not data:
            raise FrameError("the stored pixel data is truncated")
        yield data
        position += len(data)


def native_pixel_chunks(
    blobs: BlobStore, instance: Instance, layout: PixelLayout
) -> Iterator[bytes]:
    """Native pixel data streamed by range, big endian swapped to little endian."""
    end = layout.value_start + (layout.value_length or 0)
    for piece in range_chunks(blobs, instance.blob_key, layout.value_start, end):
        yield to_little_endian(piece, layout.swap_word)


def frame_sources(
    blobs: BlobStore,
    instance: Instance,
    layout: PixelLayout,
    ds: Dataset,
    numbers: Iterable[int],
) -> Iterator[tuple[int, Callable[[], bytes]]]:
    """(number, a reader of that frame's stored bytes) for each frame, in the order asked."""
    read = reader(blobs, instance.blob_key)
    numbers = list(numbers)
    if layout.encapsulated:
        ranges = encapsulated_frames(read, layout, ds, instance.size, numbers)
        for number in numbers:
            yield number, (lambda r=ranges[number]: read_frame(read, r))
        return
    check_frames(layout, numbers)
    for number in numbers:
        start, end = native_frame_range(layout, number)
        yield number, (lambda s=start, e=end: read(s, e))


# --- responses ----------------------------------------------------------------------------------


_READERS = 40  # as many as anyio lends to starlette: S3 reads wait on the network
_pool: ThreadPoolExecutor | None = None


def _readers() -> ThreadPoolExecutor:
    """The threads that read (and decrypt) response bodies: one pool per process, made on
    first use (after a server worker forks)."""
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(_READERS, thread_name_prefix="wado-read")
    return _pool


def _close(items: Iterator[object], _step: Future[object]) -> None:
    close = getattr(items, "close", None)
    if close is not None:
        close()


async def read_ahead(items: Iterator[_Item]) -> AsyncIterator[_Item]:
    """The items of `items`, each made on a worker thread while the previous one is used.

    Why: iterating in the thread pool one item at a time (starlette's iterate_in_threadpool)
    reads a chunk only once the previous one is sent, so each read (and decryption) adds
    to the time of the response. Here the next item is handed to a thread as soon as the
    previous one is taken: submitted at once (an anyio call would start only once this task
    yields to the loop, after the sending), for one more item in memory. Errors come out
    where the item would have. On the way out nothing is awaited, so a cancelled stream
    leaves at once; the iterator is closed on its thread after its last step.
    """
    loop = asyncio.get_running_loop()
    context = contextvars.copy_context()  # what anyio's threads would see, taken once
    running: Future[object] | None = None

    def start() -> asyncio.Future[object]:
        nonlocal running
        running = _readers().submit(context.run, next, items, _END)
        return asyncio.wrap_future(running, loop=loop)

    step = start()
    try:
        while (item := await step) is not _END:
            step = start()
            yield item  # type: ignore[misc]
    finally:
        if not step.cancel() and not step.cancelled():
            step.exception()  # done: its error, if any, is nobody's any more
        if running is not None:
            running.add_done_callback(functools.partial(_close, items))


def _numbered(bodies: Iterable[Callable[[], Iterator[_Chunk]]]) -> Iterator[tuple[int, _Chunk]]:
    """(part number, chunk) of every body in turn, empty chunks left out."""
    for number, body in enumerate(bodies):
        for chunk in body():
            if chunk:
                yield number, chunk


def _batched(items: Iterator[tuple[int, _Chunk]], size: int) -> Iterator[list[tuple[int, _Chunk]]]:
    """The items in lists of `size` bytes or more (the last one may be shorter)."""
    batch: list[tuple[int, _Chunk]] = []
    count = 0
    for item in items:
        batch.append(item)
        count += len(item[1])
        if count >= size:
            yield batch
            batch, count = [], 0
    if batch:
        yield batch


async def threaded_parts(
    heads: Iterable[dict[str, str]], bodies: Iterable[Callable[[], Iterator[_Chunk]]]
) -> AsyncIterator[Part]:
    """Parts (headers, then their body's chunks) whose bodies are read on worker threads
    STEP bytes or more at a time, across parts, one step ahead of the sending.

    Why: a series is many small instances (a CT slice is half a MiB). A thread hop per
    chunk and another per end of instance, each waited for in turn, took more time than
    reading and decrypting them; here eight such instances take one hop, made while the
    previous ones are sent. Steps of 4 MiB rather than 1 MiB cut a 500-slice series
    retrieval by a third (fewer hops and fewer stalls of the sending: bench/dicomweb.py),
    for at most two steps (8 MiB) of a response in memory. An error (a store failure, a
    blob that fails authentication) cuts the response at the step that met it, as before:
    nothing from that step on is sent.
    """
    steps = read_ahead(_batched(_numbered(bodies), STEP))
    ready: deque[tuple[int, _Chunk]] = deque()

    async def body(number: int) -> AsyncIterator[_Chunk]:
        while True:
            if not ready:
                batch = await anext(steps, None)
                if batch is None:
                    return
                ready.extend(batch)
            if ready[0][0] != number:
                return
            yield ready.popleft()[1]

    try:
        for number, head in enumerate(heads):
            yield Part(head, body(number))
    finally:
        await steps.aclose()


def multipart(
    parts: AsyncIterator[Part],
    part_type: str,
    syntax: str | None = None,
    *,
    boundary: str | None = None,
    length: int | None = None,
) -> Response:
    """A multipart/related answer; with `length` (`message_length` of the parts, counted
    with `boundary`) it goes out with a Content-Length rather than chunked."""
    boundary = boundary or new_boundary()
    headers = None if length is None else {"Content-Length": str(length)}
    return StreamingResponse(
        write_parts(parts, boundary),
        media_type=content_type(boundary, part_type, syntax),
        headers=headers,
    )


def one_part(
    headers: dict[str, str],
    body: bytes | AsyncIterable[bytes],
    part_type: str,
    syntax: str | None = None,
) -> Response:
    """A multipart/related answer of a single part."""

    async def parts() -> AsyncIterator[Part]:
        yield Part(headers, body)

    return multipart(parts(), part_type, syntax)
