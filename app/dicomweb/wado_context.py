"""What every WADO route module shares: stores, lookups by project, stored bytes, errors.

Every object is looked up through `index_repo`, which filters by project, so another
project's object is 404 like an unknown one; UIDs in the path are checked (`[0-9.]`, at most
64 characters: 400) and never echoed. `guarded` wraps every WADO endpoint: store failures
become 503 and frame or negotiation problems 404/406, never a 500. Blobs are read here by
range or streamed in chunks, so no route holds a whole instance in memory.
"""

from __future__ import annotations

import functools
import re
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator
from contextlib import contextmanager
from threading import Lock
from typing import TypeVar

from fastapi import HTTPException, Request, status
from fastapi.responses import Response, StreamingResponse
from pydicom.dataset import Dataset
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import iterate_in_threadpool

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
from app.store.blobs import BlobNotFound, BlobStore, BlobStoreError
from app.store.encryption import project_blob_store
from app.store.index import index_engine
from app.store.models import Instance, Series
from app.vault import Vault

ROOT = "/projects/{project_id}/dicom-web"
STUDY = f"{ROOT}/studies/{{study_uid}}"
SERIES = f"{STUDY}/series/{{series_uid}}"
INSTANCE = f"{SERIES}/instances/{{sop_uid}}"
Route = tuple[str, Callable[..., Response], str]  # path, endpoint, route name
CHUNK = 1024 * 1024  # even, so a big endian swap never splits a value
_UID = re.compile(r"[0-9.]{1,64}")
_UNAVAILABLE = status.HTTP_503_SERVICE_UNAVAILABLE
_Row = TypeVar("_Row", Instance, Series)


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


def blob_chunks(blobs: BlobStore, key: str) -> Iterator[bytes]:
    with blobs.open(key) as stream:
        while chunk := stream.read(CHUNK):
            yield chunk


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


def threaded(chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
    return iterate_in_threadpool(chunks)


def multipart(parts: AsyncIterator[Part], part_type: str, syntax: str | None = None) -> Response:
    boundary = new_boundary()
    return StreamingResponse(
        write_parts(parts, boundary), media_type=content_type(boundary, part_type, syntax)
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
