"""WADO-RS metadata (PS3.18 10.4.1.1.2) of a study, a series or one instance, as DICOM JSON.

Metadata is the series document precomputed at ingest (decision 6), streamed, its
root-relative BulkDataURIs made absolute with the request's public base. ETags are strong
and derived from the stored ETag *and* the base, so two bases never share one. A study's
answer joins its series documents into one array without parsing them; a missing or stale
document is rebuilt first (`series_metadata.refresh_series_metadata`). An instance's metadata
is read from its header only. gzip is sent when accepted (the stored document is gzip, so it
is inflated, rewritten and deflated again as it streams: memory stays one chunk).
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import orjson
from fastapi import Request, status
from fastapi.responses import Response, StreamingResponse
from sqlalchemy import Engine
from starlette.concurrency import iterate_in_threadpool

from app.dicomweb.accept import DICOM_JSON, accepts_gzip, negotiate_metadata
from app.dicomweb.wado_context import (
    INSTANCE,
    SERIES,
    STUDY,
    Route,
    WadoContext,
    accept_of,
    blob_chunks,
    check_uids,
    find_instance,
    find_series,
)
from app.ingest import bulk_uris
from app.store import index_repo
from app.store.blobs import BlobStore
from app.store.models import Series
from app.store.series_metadata import (
    build_series_metadata,
    etag_of,
    instance_metadata,
    refresh_series_metadata,
)

_METADATA_VERSION = "wado-metadata-1"  # part of instance-level ETags: bump if encoding changes
_BULK_KEY = b'"BulkDataURI":"/projects/'

# --- streams ------------------------------------------------------------------------------------


def _absolute(chunks: Iterable[bytes], base: str) -> Iterator[bytes]:
    """The stored root-relative BulkDataURIs made absolute, chunk by chunk.

    A bytes replace is safe: the stored document is orjson output, where `"BulkDataURI":"`
    can only be an object key followed by its value (inside a JSON string every `"` is
    escaped as `\\"`, so the pattern cannot occur within a value), the pattern cannot
    overlap itself, and the base is JSON-escaped before it goes in. Bytes that could be the
    start of a pattern split across two chunks are held back until the next chunk.
    """
    new = b'"BulkDataURI":"' + orjson.dumps(base)[1:-1] + b"/projects/"
    keep = len(_BULK_KEY) - 1
    pending = b""
    for chunk in chunks:
        data = pending + chunk
        end = len(data) - keep  # a pattern starting here or later may be incomplete
        last = data.rfind(_BULK_KEY)
        if last != -1:
            end = max(end, last + len(_BULK_KEY))
        if end <= 0:
            pending = data
            continue
        pending = data[end:]
        yield data[:end].replace(_BULK_KEY, new)
    if pending:
        yield pending.replace(_BULK_KEY, new)


def _gunzip(chunks: Iterable[bytes]) -> Iterator[bytes]:
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    for chunk in chunks:
        data = inflater.decompress(chunk)
        if data:
            yield data
    tail = inflater.flush()
    if tail:
        yield tail


def _gzip(chunks: Iterable[bytes]) -> Iterator[bytes]:
    deflater = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    for chunk in chunks:
        data = deflater.compress(chunk)
        if data:
            yield data
    yield deflater.flush()


def _array_items(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """The inside of a JSON array document (its "[" and "]" dropped), streamed."""
    started = False
    held = b""
    for chunk in chunks:
        if not started:
            chunk = chunk.lstrip()
            if not chunk:
                continue
            if chunk[:1] != b"[":
                raise ValueError("a series metadata document is not a JSON array")
            chunk, started = chunk[1:], True
        data = held + chunk
        held = data[-1:]
        if data[:-1]:
            yield data[:-1]
    if held != b"]":
        raise ValueError("a series metadata document is not a JSON array")


def _joined_arrays(documents: Iterable[Iterable[bytes]]) -> Iterator[bytes]:
    """One JSON array of the items of several: `[a,b]` + `[c]` → `[a,b,c]`, streamed."""
    yield b"["
    any_item = False
    for document in documents:
        first = True
        for piece in _array_items(document):
            if first and any_item:
                yield b","
            first, any_item = False, True
            yield piece
    yield b"]"


# --- series documents ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _SeriesDocument:
    """Where one series' metadata comes from: its stored blob, or bytes built on the spot."""

    etag: str
    key: str | None = None
    document: bytes | None = None

    def chunks(self, blobs: BlobStore) -> Iterator[bytes]:
        if self.document is not None:
            yield self.document
        else:
            assert self.key is not None
            yield from _gunzip(blob_chunks(blobs, self.key))


def _series_document(
    index: Engine, blobs: BlobStore, project: str, series: Series
) -> _SeriesDocument:
    """The series' stored metadata, rebuilt first when missing, stale or its blob lost."""
    uri_for = bulk_uris(project)
    for force in (False, True):
        fresh = series.metadata_key is not None and series.metadata_revision == series.revision
        if not fresh or force:
            refresh_series_metadata(
                index, blobs, project, series.series_uid, uri_for=uri_for, force=force
            )
            series = index_repo.get_series(index, project, series.series_uid) or series
        if series.metadata_key and series.metadata_etag and blobs.exists(series.metadata_key):
            return _SeriesDocument(series.metadata_etag, key=series.metadata_key)
    # Still nothing recorded (a writer keeps changing the series): build it for this answer.
    instances = index_repo.list_instances(index, project, series_uid=series.series_uid)
    document = build_series_metadata(blobs, instances, uri_for)
    return _SeriesDocument(etag_of(document), document=document)


# --- ETag and response --------------------------------------------------------------------------


def _etags(parts: Iterable[str], base: str) -> tuple[str, str]:
    """The strong ETags of the identity and the gzip encoding of one answer."""
    digest = hashlib.sha256("\n".join([*parts, base]).encode()).hexdigest()[:40]
    return f'"{digest}"', f'"{digest}-gz"'


def _matches(if_none_match: str | None, etags: Iterable[str]) -> bool:
    """If-None-Match (RFC 9110 13.1.2): weak comparison, `*` matches anything."""
    if not if_none_match:
        return False
    wanted = {e.strip().removeprefix("W/") for e in if_none_match.split(",")}
    return "*" in wanted or any(e in wanted for e in etags)


def _metadata_response(
    request: Request, chunks: Callable[[], Iterable[bytes]], tags: list[str], base: str
) -> Response:
    """200 (streamed, gzip when accepted) or 304, with a strong ETag of source and base.

    The caller has negotiated the media type (`_negotiate`) already.
    """
    gzipped = accepts_gzip(request.headers.get("accept-encoding"))
    variants = _etags(tags, base)
    headers = {
        "ETag": variants[gzipped],
        "Vary": "Accept, Accept-Encoding",
        "Cache-Control": "private, no-cache",
    }
    if _matches(request.headers.get("if-none-match"), variants):
        return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers=headers)
    body = _absolute(chunks(), base)
    if gzipped:
        body = _gzip(body)
        headers["Content-Encoding"] = "gzip"
    return StreamingResponse(iterate_in_threadpool(body), media_type=DICOM_JSON, headers=headers)


def _negotiate(request: Request) -> None:
    negotiate_metadata(accept_of(request))


# --- routes -------------------------------------------------------------------------------------


def metadata_routes(ctx: WadoContext) -> list[Route]:
    """Study, series and instance metadata."""

    def documents_response(
        request: Request, project_id: str, study_uid: str, series_uid: str | None
    ) -> Response:
        index, blobs = ctx.index, ctx.blobs
        rows = find_series(index, project_id, study_uid, series_uid)
        _negotiate(request)  # before any document is rebuilt for an answer that cannot be sent
        documents = [_series_document(index, blobs, project_id, s) for s in rows]

        def chunks() -> Iterable[bytes]:
            if len(documents) == 1:
                return documents[0].chunks(blobs)
            return _joined_arrays(d.chunks(blobs) for d in documents)

        tags = [d.etag for d in documents]
        return _metadata_response(request, chunks, tags, ctx.base_of(request))

    def study_metadata(request: Request, project_id: str, study_uid: str) -> Response:
        """The study's metadata: its series documents joined into one array, streamed."""
        check_uids(study_uid)
        return documents_response(request, project_id, study_uid, None)

    def series_metadata(
        request: Request, project_id: str, study_uid: str, series_uid: str
    ) -> Response:
        """The series' precomputed metadata (ETag, 304, gzip)."""
        check_uids(study_uid, series_uid)
        return documents_response(request, project_id, study_uid, series_uid)

    def instance_metadata_route(
        request: Request, project_id: str, study_uid: str, series_uid: str, sop_uid: str
    ) -> Response:
        """One instance's metadata, read from its header only."""
        check_uids(study_uid, series_uid, sop_uid)
        instance = find_instance(ctx.index, project_id, study_uid, series_uid, sop_uid)
        _negotiate(request)
        blobs, uri_for = ctx.blobs, bulk_uris(project_id)

        def chunks() -> Iterable[bytes]:
            return [orjson.dumps([instance_metadata(blobs, instance, uri_for)])]

        tags = [_METADATA_VERSION, instance.sha256]
        return _metadata_response(request, chunks, tags, ctx.base_of(request))

    return [
        (f"{STUDY}/metadata", study_metadata, "wado_study_metadata"),
        (f"{SERIES}/metadata", series_metadata, "wado_series_metadata"),
        (f"{INSTANCE}/metadata", instance_metadata_route, "wado_instance_metadata"),
    ]
