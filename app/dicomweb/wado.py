"""WADO-RS (PS3.18 10.4) and WADO-URI (PS3.18 9 / 6.2 of older editions) on the research surface.

Routes under `/projects/{project_id}/dicom-web` (and `/projects/{project_id}/wado` for URI
mode), for researchers and data managers. Every object is looked up through `index_repo`,
which filters by project, so another project's object is 404 like an unknown one; UIDs in
the path are checked (`[0-9.]`, at most 64 characters: 400) and never echoed.

Choices where PS3.18 leaves room or where we depart from it (docs/dicomweb-retrieve.md):

- Instances are `multipart/related; type="application/dicom"`; a single-part
  `application/dicom` is served for one instance only (the optional single-part form); on
  studies and series it is ignored, and if nothing acceptable is left: 406.
- Transfer syntax (8.7.3): `transfer-syntax=*` returns what is stored. *No parameter* returns
  the stored syntax too (not Explicit VR Little Endian): pixel data is never decoded or
  re-encoded on the way in (decision 4), lossy pixels may be sent as stored (8.7.3.1), and
  viewers and pipelines expect the stored bytes (MD5 of PixelData unchanged). The two
  syntaxes web services must not use (Implicit VR LE, Explicit VR Big Endian) are always
  re-encoded as Explicit VR LE: Implicit by rewriting the header only, pixel bytes copied.
  An explicit `transfer-syntax=1.2.840.10008.1.2.1` on compressed data decodes it frame by
  frame (pydicom + pylibjpeg plugins) when a decoder is installed; anything else is 406.
- Frames and pixel bulk data default to `application/octet-stream` uncompressed, as the
  standard says: compressed frames are decoded unless `transfer-syntax=*` (or the stored
  syntax, or its image media type) is asked, in which case they go out as stored.
- Frame list: malformed (not positive integers, repeated) is 400; a frame beyond the
  instance's frames is 404 (the resource does not exist). In WADO-URI, `frameNumber` out of
  range is 400, as 8.2.7 says.
- Metadata is the series document precomputed at ingest (decision 6), streamed, its
  root-relative BulkDataURIs made absolute with the request's public base. ETags are strong
  and derived from the stored ETag *and* the base, so two bases never share one.
"""

from __future__ import annotations

import functools
import hashlib
import re
import struct
import zlib
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from threading import Lock

import orjson
from fastapi import APIRouter, Depends, HTTPException, Request, status
from fastapi.responses import Response, StreamingResponse
from pydicom.dataset import Dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool
from starlette.datastructures import QueryParams

from app.auth.http import require
from app.auth.roles import Role
from app.config import Settings
from app.dicom.frames import (
    DecodeError,
    FrameError,
    FrameNotFound,
    Header,
    PixelLayout,
    can_decode,
    check_frames,
    decode_frame,
    encapsulated_frames,
    native_bytes,
    native_frame_range,
    parse_frame_list,
    read_frame,
    read_instance_header,
)
from app.dicom.multipart import MultipartError, Part, content_type, new_boundary, write_parts
from app.dicom.multipart import parse_content_type as parse_media_type
from app.dicom.part10 import encode_dataset, encode_file_meta
from app.dicomweb.public_base import public_base
from app.dicomweb.rendered import (
    RENDERED_TYPES,
    THUMBNAIL_SIZE,
    Rendering,
    encode,
    parse_quality,
    parse_viewport,
    parse_window,
    to_8bit,
)
from app.dicomweb.urls import instance_url
from app.ingest import bulk_uris
from app.store import index_repo
from app.store.blobs import BlobNotFound, BlobStore, BlobStoreError, blob_store_from_settings
from app.store.index import index_engine
from app.store.models import Instance, Series
from app.store.series_metadata import (
    build_series_metadata,
    etag_of,
    instance_metadata,
    refresh_series_metadata,
)

EXPLICIT_LE = str(ExplicitVRLittleEndian)
DICOM = "application/dicom"
OCTETS = "application/octet-stream"
DICOM_JSON = "application/dicom+json"
CHUNK = 1024 * 1024  # even, so a big endian swap never splits a value
_NOT_FOR_WEB = frozenset({str(ImplicitVRLittleEndian), str(ExplicitVRBigEndian)})  # 8.7.3
_UID = re.compile(r"[0-9.]{1,64}")
_BULK_PATH = re.compile(r"[0-9A-Fa-f]{8}(\.[0-9]{1,6}\.[0-9A-Fa-f]{8})*")
_METADATA_VERSION = "wado-metadata-1"  # part of instance-level ETags: bump if encoding changes
_BULK_KEY = b'"BulkDataURI":"/projects/'

# PS3.18 Table 8.7.3-x: the media type of each compressed transfer syntax for frames and bulk
# data, and the default syntax of each media type when Accept names none.
MEDIA_TYPES: dict[str, str] = {
    "1.2.840.10008.1.2.4.50": "image/jpeg",
    "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg",
    "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls",
    "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2",
    "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.4.92": "image/jpx",
    "1.2.840.10008.1.2.4.93": "image/jpx",
    "1.2.840.10008.1.2.4.201": "image/jphc",
    "1.2.840.10008.1.2.4.202": "image/jphc",
    "1.2.840.10008.1.2.4.203": "image/jphc",
    "1.2.840.10008.1.2.5": "image/dicom-rle",
    "1.2.840.10008.1.2.4.100": "video/mpeg",
    "1.2.840.10008.1.2.4.101": "video/mpeg",
    "1.2.840.10008.1.2.4.102": "video/mp4",
    "1.2.840.10008.1.2.4.103": "video/mp4",
    "1.2.840.10008.1.2.4.104": "video/mp4",
    "1.2.840.10008.1.2.4.105": "video/mp4",
    "1.2.840.10008.1.2.4.106": "video/mp4",
    "1.2.840.10008.1.2.4.107": "video/H265",
    "1.2.840.10008.1.2.4.108": "video/H265",
}
_OCTET_TYPES = frozenset({OCTETS, "application/*", "*/*"})

READER = require(Role.researcher, Role.data_manager)


# --- errors -------------------------------------------------------------------------------------


def _error(code: int, reason: str) -> HTTPException:
    return HTTPException(code, detail=reason)


def _not_found() -> HTTPException:
    return _error(status.HTTP_404_NOT_FOUND, "not found")


def _check_uids(*uids: str | None) -> None:
    """400 for a UID that is not digits and dots or longer than 64 (the value is not echoed)."""
    for uid in uids:
        if uid is not None and not _UID.fullmatch(uid):
            raise _error(status.HTTP_400_BAD_REQUEST, "malformed UID in the request")


def _store_failure(exc: Exception) -> HTTPException:
    """The store failed under us: 503, naming the part only."""
    if isinstance(exc, BlobNotFound | BlobStoreError):
        return _error(status.HTTP_503_SERVICE_UNAVAILABLE, "the blob store is unavailable")
    return _error(status.HTTP_503_SERVICE_UNAVAILABLE, "the index is unavailable")


# --- Accept -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MediaRange:
    """One Accept entry: lowercased type/subtype, parameters (names lowercased), q."""

    type: str
    params: dict[str, str]
    q: float

    @property
    def transfer_syntax(self) -> str | None:
        value = self.params.get("transfer-syntax")
        return value.strip() if value is not None else None

    @property
    def part_type(self) -> str | None:
        value = self.params.get("type")
        return value.strip().lower() if value is not None else None


def _split_accept(header: str) -> list[str]:
    """Accept entries split on commas outside quoted strings (`type="a, b"` stays whole)."""
    entries, current, quoted, escaped = [], [], False, False
    for char in header:
        if escaped:
            escaped = False
        elif char == "\\" and quoted:
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == "," and not quoted:
            entries.append("".join(current))
            current = []
            continue
        current.append(char)
    entries.append("".join(current))
    return [e for e in (e.strip() for e in entries) if e]


def parse_accept(header: str | None) -> list[MediaRange]:
    """Accept entries by decreasing q (stable); q=0 and unparsable entries are dropped.

    No Accept at all is `*/*`. Parameters follow RFC 7231: quoted or bare values, any order.
    """
    if header is None or not header.strip():
        return [MediaRange("*/*", {}, 1.0)]
    ranked: list[tuple[float, int, MediaRange]] = []
    for index, entry in enumerate(_split_accept(header)):
        try:
            media_type, params = parse_media_type(entry)
        except MultipartError:
            continue
        try:
            q = float(params.pop("q", "1"))
        except ValueError:
            continue
        if not 0 < q <= 1:
            continue
        ranked.append((-q, index, MediaRange(media_type, params, q)))
    return [media for _, _, media in sorted(ranked, key=lambda r: (r[0], r[1]))]


def _not_acceptable(reason: str) -> HTTPException:
    return _error(status.HTTP_406_NOT_ACCEPTABLE, reason)


def _instance_syntax(requested: str | None, stored: str) -> str | None:
    """The syntax an instance goes out in for a requested `transfer-syntax`, None if none.

    No parameter and `*` give the stored syntax (see the module doc), except the two syntaxes
    web services must not use, which become Explicit VR LE.
    """
    if requested in (None, "*", stored) and stored not in _NOT_FOR_WEB:
        return stored
    if requested in (None, "*", EXPLICIT_LE) and stored in _NOT_FOR_WEB:
        return EXPLICIT_LE
    if requested == EXPLICIT_LE and stored != DeflatedExplicitVRLittleEndian:
        return EXPLICIT_LE if can_decode(stored) else None
    return None


def _negotiate_instances(
    accept: list[MediaRange], stored: list[str], *, single_allowed: bool
) -> tuple[bool, str | None]:
    """(single part?, requested transfer-syntax) of the first Accept entry every instance can
    be served in; 406 otherwise."""
    for media in accept:
        if media.type in ("*/*", "multipart/*", "multipart/related"):
            part = media.part_type or DICOM
            if media.type == "*/*":
                part = DICOM
            if part != DICOM:
                continue
            single = False
        elif media.type == DICOM and single_allowed:
            single = True
        else:
            continue
        requested = media.transfer_syntax
        if all(_instance_syntax(requested, ts) is not None for ts in stored):
            return single, requested
    raise _not_acceptable(
        'instances are sent as multipart/related; type="application/dicom" with their stored '
        "transfer syntax (transfer-syntax=*) or Explicit VR Little Endian when it can be "
        "decoded; none of the accepted media types can be served"
    )


@dataclass(frozen=True)
class PixelChoice:
    """How frames go out: the part media type, the transfer syntax, and whether to decode."""

    media_type: str
    transfer_syntax: str
    decode: bool


def _pixel_choice(media: MediaRange, part: str, layout: PixelLayout) -> PixelChoice | None:
    """Whether frames of `layout` can be sent as `part` with the entry's transfer syntax."""
    stored = layout.transfer_syntax
    requested = media.transfer_syntax
    if not layout.encapsulated:
        if part in _OCTET_TYPES and requested in (None, "*", EXPLICIT_LE, stored):
            return PixelChoice(OCTETS, EXPLICIT_LE, decode=False)
        return None
    own_type = MEDIA_TYPES.get(stored)
    if part in _OCTET_TYPES:
        if requested in (None, EXPLICIT_LE):
            return PixelChoice(OCTETS, EXPLICIT_LE, True) if can_decode(stored) else None
        if requested in ("*", stored):
            return PixelChoice(OCTETS, stored, decode=False)
        return None
    if own_type is not None and part in (own_type, "image/*") and requested in (None, "*", stored):
        return PixelChoice(own_type, stored, decode=False)
    return None


def _negotiate_pixels(
    accept: list[MediaRange], layout: PixelLayout, *, single_allowed: bool
) -> tuple[bool, PixelChoice]:
    """(single part?, choice) for frames or pixel bulk data; 406 when nothing fits."""
    for media in accept:
        if media.type in ("*/*", "multipart/*", "multipart/related"):
            part = OCTETS if media.type == "*/*" else (media.part_type or OCTETS)
            single = False
        elif single_allowed and (media.type == OCTETS or media.type in MEDIA_TYPES.values()):
            part, single = media.type, True
        else:
            continue
        choice = _pixel_choice(media, part, layout)
        if choice is not None:
            return single, choice
    reason = (
        "frames are sent uncompressed as application/octet-stream, or as stored with "
        "transfer-syntax=* or the stored syntax's media type"
    )
    if layout.encapsulated and not can_decode(layout.transfer_syntax):
        reason += "; no decoder is installed for this transfer syntax"
    raise _not_acceptable(reason)


def _negotiate_octets(accept: list[MediaRange], *, single_allowed: bool) -> bool:
    """Single part? for bulk data that is not pixel data (always uncompressed octets)."""
    for media in accept:
        if media.type in ("*/*", "multipart/*", "multipart/related"):
            if media.type == "*/*" or (media.part_type or OCTETS) in _OCTET_TYPES:
                return False
        elif single_allowed and media.type == OCTETS:
            return True
    raise _not_acceptable('bulk data is sent as multipart/related; type="application/octet-stream"')


def _negotiate_metadata(accept: list[MediaRange]) -> None:
    for media in accept:
        if media.type in (DICOM_JSON, "application/json", "application/*", "*/*"):
            return
    raise _not_acceptable("metadata is served as application/dicom+json only")


def _negotiate_rendered(accept: list[MediaRange]) -> str:
    for media in accept:
        if media.type in RENDERED_TYPES:
            return media.type
        if media.type in ("image/*", "*/*"):
            return "image/jpeg"
    raise _not_acceptable("rendered images are served as image/jpeg or image/png")


def _accepts_gzip(header: str | None) -> bool:
    for entry in (header or "").split(","):
        coding, _, params = entry.strip().partition(";")
        if coding.strip().lower() in ("gzip", "*"):
            q = params.strip().removeprefix("q=").strip() if params.strip().startswith("q=") else ""
            try:
                return not q or float(q) > 0
            except ValueError:
                return False
    return False


# --- stores and lookups ------------------------------------------------------------------------


class _Stores:
    """The index and the blob store, opened on the first request (opening S3 connects)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._lock = Lock()
        self._blobs: BlobStore | None = None

    @property
    def index(self) -> Engine:
        return index_engine(self._settings.index_url)

    @property
    def blobs(self) -> BlobStore:
        with self._lock:
            if self._blobs is None:
                self._blobs = blob_store_from_settings(self._settings)
            return self._blobs


def _find_instance(index: Engine, project: str, study: str, series: str, sop: str) -> Instance:
    instance = index_repo.get_instance(index, project, sop)
    if instance is None or instance.study_uid != study or instance.series_uid != series:
        raise _not_found()
    return instance


def _find_instances(
    index: Engine, project: str, study: str, series: str | None = None
) -> list[Instance]:
    if series is None:
        if index_repo.get_study(index, project, study) is None:
            raise _not_found()
        instances = index_repo.list_instances(index, project, study_uid=study)
    else:
        found = index_repo.get_series(index, project, series)
        if found is None or found.study_uid != study:
            raise _not_found()
        instances = index_repo.list_instances(index, project, series_uid=series)
    if not instances:
        raise _not_found()
    return instances


def _reader(blobs: BlobStore, key: str) -> Callable[[int, int], bytes]:
    return lambda start, end: blobs.read_range(key, start, end)


def _header(blobs: BlobStore, instance: Instance) -> Header:
    return read_instance_header(
        _reader(blobs, instance.blob_key),
        instance.header_length,
        instance.size,
        instance.transfer_syntax_uid,
    )


# --- instance bodies -----------------------------------------------------------------------------


def _blob_chunks(blobs: BlobStore, key: str) -> Iterator[bytes]:
    with blobs.open(key) as stream:
        while chunk := stream.read(CHUNK):
            yield chunk


def _range_chunks(blobs: BlobStore, key: str, start: int, end: int) -> Iterator[bytes]:
    position = start
    while position < end:
        data = blobs.read_range(key, position, min(end, position + CHUNK))
        if not data:
            raise FrameError("the stored pixel data is truncated")
        yield data
        position += len(data)


def _swapped(data: bytes, bits_allocated: int) -> bytes:
    """Big endian words in little endian order (8.7.3: big endian is not sent)."""
    size = bits_allocated // 8
    if size not in (2, 4, 8) or len(data) % size:
        return data
    view = memoryview(data).cast("B")
    out = bytearray(len(data))
    for i in range(size):
        out[i::size] = view[size - 1 - i :: size]
    return bytes(out)


def _explicit_header(
    ds: Dataset, instance: Instance, layout: PixelLayout, length: int, decoded: str | None
) -> bytes:
    """Preamble, file meta and data set in Explicit VR LE, then the pixel element header.

    `decoded` is the photometric interpretation of decoded frames (None when the pixel bytes
    are copied): colour becomes interleaved RGB, the offset tables of encapsulated data go.
    """
    meta = ds.file_meta
    if decoded is not None:
        ds.PhotometricInterpretation = decoded
        if int(ds.get("SamplesPerPixel", 1) or 1) > 1:
            ds.PlanarConfiguration = 0
        for tag in (0x7FE00001, 0x7FE00002):
            if tag in ds:
                del ds[tag]
    file_meta = encode_file_meta(
        instance.sop_class_uid,
        instance.sop_uid,
        EXPLICIT_LE,
        str(meta.get("ImplementationClassUID") or "1.2.826.0.1.3680043.8.498.1"),
        str(meta.get("ImplementationVersionName") or ""),
    )
    body = encode_dataset(ds, implicit=False, little=True)
    vr = layout.vr if layout.vr in ("OB", "OW", "OF", "OD") else "OW"
    if layout.tag == 0x7FE00010 and decoded is not None:
        vr = "OB" if layout.bits_allocated <= 8 else "OW"
    pixel = struct.pack("<HH2s2xL", layout.tag >> 16, layout.tag & 0xFFFF, vr.encode(), length)
    return bytes(128) + b"DICM" + file_meta + body + pixel


def _converted_chunks(blobs: BlobStore, instance: Instance) -> Iterator[bytes]:
    """An instance in Explicit VR LE: header rewritten, pixel bytes copied or decoded."""
    header = _header(blobs, instance)
    layout = header.layout
    if layout is None:
        raise DecodeError("the instance cannot be re-encoded")
    stored = instance.transfer_syntax_uid
    if stored == str(ImplicitVRLittleEndian) and layout.value_length is not None:
        end = layout.value_start + layout.value_length
        yield _explicit_header(header.dataset, instance, layout, layout.value_length, None)
        yield from _range_chunks(blobs, instance.blob_key, layout.value_start, end)
        return
    frame_length = layout.rows * layout.columns * layout.samples * layout.bits_allocated // 8
    total = frame_length * layout.frames
    read = _reader(blobs, instance.blob_key)
    frames = _frame_sources(
        read, layout, header.dataset, instance.size, range(1, layout.frames + 1)
    )
    first = None
    for number, source in frames:
        array, photometric = decode_frame(header.dataset, layout, source())
        if first is None:
            first = photometric
            yield _explicit_header(header.dataset, instance, layout, total + total % 2, photometric)
        data = native_bytes(array, layout.bits_allocated)
        if len(data) != frame_length:
            raise DecodeError(f"frame {number} decodes to an unexpected size")
        yield data
    if total % 2:
        yield b"\0"


def _instance_chunks(blobs: BlobStore, instance: Instance, syntax: str) -> Iterator[bytes]:
    if syntax == instance.transfer_syntax_uid:
        yield from _blob_chunks(blobs, instance.blob_key)
    else:
        yield from _converted_chunks(blobs, instance)


# --- frames --------------------------------------------------------------------------------------


def _frame_sources(
    read: Callable[[int, int], bytes],
    layout: PixelLayout,
    ds: Dataset,
    size: int,
    numbers: Iterable[int],
) -> Iterator[tuple[int, Callable[[], bytes]]]:
    """(number, a reader of that frame's stored bytes) for each frame, in the order asked."""
    numbers = list(numbers)
    if layout.encapsulated:
        ranges = encapsulated_frames(read, layout, ds, size, numbers)
        for number in numbers:
            yield number, (lambda r=ranges[number]: read_frame(read, r))
        return
    check_frames(layout, numbers)
    for number in numbers:
        start, end = native_frame_range(layout, number)
        yield number, (lambda s=start, e=end: read(s, e))


def _frame_body(
    ds: Dataset, layout: PixelLayout, choice: PixelChoice, source: Callable[[], bytes]
) -> bytes:
    data = source()
    if choice.decode:
        array, _ = decode_frame(ds, layout, data)
        return native_bytes(array, layout.bits_allocated)
    if not layout.encapsulated and not layout.little_endian:
        return _swapped(data, layout.bits_allocated)
    return data


def _part_type(choice: PixelChoice) -> str:
    return f"{choice.media_type}; transfer-syntax={choice.transfer_syntax}"


# --- metadata ------------------------------------------------------------------------------------


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
            yield from _gunzip(_blob_chunks(blobs, self.key))


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


def _etag(parts: Iterable[str], base: str, gzipped: bool) -> str:
    digest = hashlib.sha256("\n".join([*parts, base]).encode()).hexdigest()[:40]
    return f'"{digest}{"-gz" if gzipped else ""}"'


def _matches(if_none_match: str | None, etags: Iterable[str]) -> bool:
    """If-None-Match (RFC 9110 13.1.2): weak comparison, `*` matches anything."""
    if not if_none_match:
        return False
    wanted = {e.strip().removeprefix("W/") for e in if_none_match.split(",")}
    return "*" in wanted or any(e in wanted for e in etags)


def _metadata_response(
    request: Request, chunks: Callable[[], Iterable[bytes]], tags: list[str], base: str
) -> Response:
    """200 (streamed, gzip when accepted) or 304, with a strong ETag of source and base."""
    _negotiate_metadata(parse_accept(request.headers.get("accept")))
    gzipped = _accepts_gzip(request.headers.get("accept-encoding"))
    etag = _etag(tags, base, gzipped)
    headers = {
        "ETag": etag,
        "Vary": "Accept, Accept-Encoding",
        "Cache-Control": "private, no-cache",
    }
    variants = (_etag(tags, base, False), _etag(tags, base, True))
    if _matches(request.headers.get("if-none-match"), variants):
        return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers=headers)
    body = _absolute(chunks(), base)
    if gzipped:
        body = _gzip(body)
        headers["Content-Encoding"] = "gzip"
    return StreamingResponse(iterate_in_threadpool(body), media_type=DICOM_JSON, headers=headers)


# --- bulk data ------------------------------------------------------------------------------------


def _bulk_value(ds: Dataset, path: str) -> bytes | None:
    """The bytes of the binary element a BulkDataURI path names (`00540016.0.00181072`)."""
    steps = path.upper().split(".")
    current: Dataset = ds
    for depth in range(0, len(steps) - 1, 2):
        tag, item = int(steps[depth], 16), int(steps[depth + 1])
        if tag not in current:
            return None
        element = current[tag]
        if element.VR != "SQ" or item >= len(element.value):
            return None
        current = element.value[item]
    tag = int(steps[-1], 16)
    if tag not in current:
        return None
    element = current[tag]
    value = element.value
    if not isinstance(value, bytes | bytearray):
        return None
    little = getattr(ds, "original_encoding", (False, True))[1] is not False
    if not little and element.VR in ("OW", "OF", "OL", "OD", "OV"):
        return _swapped(bytes(value), {"OW": 16, "OF": 32, "OL": 32}.get(element.VR, 64))
    return bytes(value)


# --- the router -----------------------------------------------------------------------------------


def _multipart(parts: AsyncIterator[Part], part_type: str, syntax: str | None = None) -> Response:
    boundary = new_boundary()
    return StreamingResponse(
        write_parts(parts, boundary), media_type=content_type(boundary, part_type, syntax)
    )


def _threaded(chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
    return iterate_in_threadpool(chunks)


def wado_router(settings: Settings) -> APIRouter:
    """WADO-RS under /projects/{p}/dicom-web, WADO-URI at /projects/{p}/wado (readers only)."""
    router = APIRouter(tags=["dicomweb"], dependencies=[Depends(READER)])
    stores = _Stores(settings)
    root = "/projects/{project_id}/dicom-web"

    def base_of(request: Request) -> str:
        return public_base(request, settings.public_url)

    def guarded(function: Callable[..., Response]) -> Callable[..., Response]:
        """Store failures become 503 and frame problems 404/406, never a 500."""

        @functools.wraps(function)  # FastAPI reads the wrapped signature
        def run(*args: object, **kwargs: object) -> Response:
            try:
                return function(*args, **kwargs)
            except FrameNotFound as exc:
                raise _error(status.HTTP_404_NOT_FOUND, str(exc)) from exc
            except FrameError as exc:
                raise _not_acceptable(str(exc)) from exc
            except (BlobNotFound, BlobStoreError, SQLAlchemyError) as exc:
                raise _store_failure(exc) from exc

        return run

    # -- instances ---------------------------------------------------------------------------

    def instances_response(
        request: Request, project_id: str, instances: list[Instance], *, one: bool
    ) -> Response:
        accept = parse_accept(request.headers.get("accept"))
        stored = [i.transfer_syntax_uid for i in instances]
        single, requested = _negotiate_instances(accept, stored, single_allowed=one)
        blobs = stores.blobs
        base = base_of(request)
        if single:
            instance = instances[0]
            syntax = _instance_syntax(requested, instance.transfer_syntax_uid) or EXPLICIT_LE
            body = _threaded(_instance_chunks(blobs, instance, syntax))
            return StreamingResponse(body, media_type=f"{DICOM}; transfer-syntax={syntax}")

        async def parts() -> AsyncIterator[Part]:
            for instance in instances:
                syntax = _instance_syntax(requested, instance.transfer_syntax_uid) or EXPLICIT_LE
                url = instance_url(
                    base, project_id, instance.study_uid, instance.series_uid, instance.sop_uid
                )
                headers = {
                    "Content-Type": f"{DICOM}; transfer-syntax={syntax}",
                    "Content-Location": url,
                }
                yield Part(headers, _threaded(_instance_chunks(blobs, instance, syntax)))

        return _multipart(parts(), DICOM)

    @guarded
    def retrieve_study(request: Request, project_id: str, study_uid: str) -> Response:
        """The study's instances, multipart/related; type="application/dicom"."""
        _check_uids(study_uid)
        instances = _find_instances(stores.index, project_id, study_uid)
        return instances_response(request, project_id, instances, one=False)

    @guarded
    def retrieve_series(
        request: Request, project_id: str, study_uid: str, series_uid: str
    ) -> Response:
        """The series' instances, multipart/related; type="application/dicom"."""
        _check_uids(study_uid, series_uid)
        instances = _find_instances(stores.index, project_id, study_uid, series_uid)
        return instances_response(request, project_id, instances, one=False)

    @guarded
    def retrieve_instance(
        request: Request, project_id: str, study_uid: str, series_uid: str, sop_uid: str
    ) -> Response:
        """One instance: multipart (or single-part application/dicom when asked)."""
        _check_uids(study_uid, series_uid, sop_uid)
        instance = _find_instance(stores.index, project_id, study_uid, series_uid, sop_uid)
        return instances_response(request, project_id, [instance], one=True)

    # -- metadata ----------------------------------------------------------------------------

    def series_documents(
        project_id: str, study_uid: str, series_uid: str | None
    ) -> list[_SeriesDocument]:
        index, blobs = stores.index, stores.blobs
        if series_uid is None:
            if index_repo.get_study(index, project_id, study_uid) is None:
                raise _not_found()
            series_rows = index_repo.list_series(index, project_id, study_uid)
        else:
            found = index_repo.get_series(index, project_id, series_uid)
            if found is None or found.study_uid != study_uid:
                raise _not_found()
            series_rows = [found]
        if not series_rows:
            raise _not_found()
        return [_series_document(index, blobs, project_id, s) for s in series_rows]

    def documents_response(request: Request, documents: list[_SeriesDocument]) -> Response:
        blobs = stores.blobs

        def chunks() -> Iterable[bytes]:
            if len(documents) == 1:
                return documents[0].chunks(blobs)
            return _joined_arrays(d.chunks(blobs) for d in documents)

        return _metadata_response(request, chunks, [d.etag for d in documents], base_of(request))

    @guarded
    def study_metadata(request: Request, project_id: str, study_uid: str) -> Response:
        """The study's metadata: its series documents joined into one array, streamed."""
        _check_uids(study_uid)
        return documents_response(request, series_documents(project_id, study_uid, None))

    @guarded
    def series_metadata(
        request: Request, project_id: str, study_uid: str, series_uid: str
    ) -> Response:
        """The series' precomputed metadata (ETag, 304, gzip)."""
        _check_uids(study_uid, series_uid)
        return documents_response(request, series_documents(project_id, study_uid, series_uid))

    @guarded
    def instance_metadata_route(
        request: Request, project_id: str, study_uid: str, series_uid: str, sop_uid: str
    ) -> Response:
        """One instance's metadata, read from its header only."""
        _check_uids(study_uid, series_uid, sop_uid)
        instance = _find_instance(stores.index, project_id, study_uid, series_uid, sop_uid)
        _negotiate_metadata(parse_accept(request.headers.get("accept")))
        blobs, uri_for = stores.blobs, bulk_uris(project_id)

        def chunks() -> Iterable[bytes]:
            return [orjson.dumps([instance_metadata(blobs, instance, uri_for)])]

        tags = [_METADATA_VERSION, instance.sha256]
        return _metadata_response(request, chunks, tags, base_of(request))

    # -- frames and bulk data ------------------------------------------------------------------

    def pixel_response(
        request: Request,
        instance: Instance,
        header: Header,
        numbers: list[int],
        location: Callable[[int], str],
    ) -> Response:
        layout = header.layout
        assert layout is not None
        accept = parse_accept(request.headers.get("accept"))
        single, choice = _negotiate_pixels(accept, layout, single_allowed=len(numbers) == 1)
        read = _reader(stores.blobs, instance.blob_key)
        sources = list(_frame_sources(read, layout, header.dataset, instance.size, numbers))
        ds = header.dataset
        if single:
            body = _frame_body(ds, layout, choice, sources[0][1])
            return Response(body, media_type=_part_type(choice))

        async def parts() -> AsyncIterator[Part]:
            for number, source in sources:
                body = await run_in_threadpool(_frame_body, ds, layout, choice, source)
                headers = {"Content-Type": _part_type(choice), "Content-Location": location(number)}
                yield Part(headers, body)

        return _multipart(parts(), choice.media_type, choice.transfer_syntax)

    def instance_header(instance: Instance) -> Header:
        header = _header(stores.blobs, instance)
        if header.layout is None:
            if instance.transfer_syntax_uid == DeflatedExplicitVRLittleEndian:
                raise _not_acceptable("frames of deflated instances are not available")
            raise _error(status.HTTP_404_NOT_FOUND, "the instance has no pixel data")
        return header

    @guarded
    def retrieve_frames(
        request: Request,
        project_id: str,
        study_uid: str,
        series_uid: str,
        sop_uid: str,
        frame_list: str,
    ) -> Response:
        """Frames (1-based, comma-separated), one part each."""
        _check_uids(study_uid, series_uid, sop_uid)
        try:
            numbers = parse_frame_list(frame_list)
        except ValueError as exc:
            raise _error(status.HTTP_400_BAD_REQUEST, str(exc)) from exc
        instance = _find_instance(stores.index, project_id, study_uid, series_uid, sop_uid)
        header = instance_header(instance)
        assert header.layout is not None
        check_frames(header.layout, numbers)
        url = instance_url(base_of(request), project_id, study_uid, series_uid, sop_uid)
        return pixel_response(request, instance, header, numbers, lambda n: f"{url}/frames/{n}")

    @guarded
    def retrieve_bulk(
        request: Request,
        project_id: str,
        study_uid: str,
        series_uid: str,
        sop_uid: str,
        bulk_path: str,
    ) -> Response:
        """A BulkDataURI of the metadata: pixel data by range, other values from the header."""
        _check_uids(study_uid, series_uid, sop_uid)
        if not _BULK_PATH.fullmatch(bulk_path):
            raise _error(status.HTTP_400_BAD_REQUEST, "malformed bulk data path")
        instance = _find_instance(stores.index, project_id, study_uid, series_uid, sop_uid)
        header = _header(stores.blobs, instance)
        url = instance_url(base_of(request), project_id, study_uid, series_uid, sop_uid)
        location = f"{url}/bulk/{bulk_path}"
        layout = header.layout
        pixel = layout is not None and "." not in bulk_path and int(bulk_path, 16) == layout.tag
        if pixel and layout is not None:
            numbers = list(range(1, layout.frames + 1))
            if not layout.encapsulated:
                return native_pixel_bulk(request, instance, layout, location)
            return pixel_response(request, instance, header, numbers, lambda n: location)
        value = _bulk_value(header.dataset, bulk_path)
        if value is None:
            raise _not_found()
        single = _negotiate_octets(parse_accept(request.headers.get("accept")), single_allowed=True)
        if single:
            return Response(value, media_type=OCTETS)

        async def parts() -> AsyncIterator[Part]:
            yield Part({"Content-Type": OCTETS, "Content-Location": location}, value)

        return _multipart(parts(), OCTETS)

    def native_pixel_bulk(
        request: Request, instance: Instance, layout: PixelLayout, location: str
    ) -> Response:
        """Native pixel data: the whole value streamed by range (big endian swapped)."""
        accept = parse_accept(request.headers.get("accept"))
        single, choice = _negotiate_pixels(accept, layout, single_allowed=True)
        length = layout.value_length or 0
        blobs = stores.blobs

        def chunks() -> Iterator[bytes]:
            pieces = _range_chunks(
                blobs, instance.blob_key, layout.value_start, layout.value_start + length
            )
            for piece in pieces:
                yield piece if layout.little_endian else _swapped(piece, layout.bits_allocated)

        if single:
            return StreamingResponse(_threaded(chunks()), media_type=_part_type(choice))

        async def parts() -> AsyncIterator[Part]:
            headers = {"Content-Type": _part_type(choice), "Content-Location": location}
            yield Part(headers, _threaded(chunks()))

        return _multipart(parts(), OCTETS, EXPLICIT_LE)

    # -- rendered ------------------------------------------------------------------------------

    def render(instance: Instance, number: int, rendering: Rendering) -> Response:
        header = _header(stores.blobs, instance)
        layout = header.layout
        if layout is None:
            raise _not_acceptable("this instance has no pixel data that can be rendered")
        check_frames(layout, [number])
        read = _reader(stores.blobs, instance.blob_key)
        [(_, source)] = list(_frame_sources(read, layout, header.dataset, instance.size, [number]))
        array, photometric = decode_frame(header.dataset, layout, source())
        if array.ndim == 3 and array.shape[-1] not in (1, 3):
            raise _not_acceptable("this pixel data cannot be rendered as an image")
        display = to_8bit(array, header.dataset, photometric, number - 1, rendering.window)
        try:
            image = encode(display, rendering)
        except ValueError as exc:
            raise _error(status.HTTP_400_BAD_REQUEST, str(exc)) from exc
        return Response(image, media_type=rendering.media_type)

    def rendering_of(request: Request, *, thumbnail: bool) -> Rendering:
        media_type = _negotiate_rendered(parse_accept(request.headers.get("accept")))
        query = request.query_params
        try:
            window = None if thumbnail or "window" not in query else parse_window(query["window"])
            viewport = parse_viewport(query["viewport"]) if "viewport" in query else None
            quality = parse_quality(query["quality"]) if "quality" in query else None
        except ValueError as exc:
            raise _error(status.HTTP_400_BAD_REQUEST, str(exc)) from exc
        return Rendering(
            window=window,
            viewport=viewport,
            quality=quality or Rendering.quality,
            media_type=media_type,
            max_size=THUMBNAIL_SIZE if thumbnail and viewport is None else None,
        )

    def rendered_frame(
        request: Request,
        project_id: str,
        uids: tuple[str, str, str],
        frame_list: str,
        thumbnail: bool,
    ) -> Response:
        _check_uids(*uids)
        try:
            numbers = parse_frame_list(frame_list)
        except ValueError as exc:
            raise _error(status.HTTP_400_BAD_REQUEST, str(exc)) from exc
        if len(numbers) != 1:
            raise _error(status.HTTP_400_BAD_REQUEST, "a rendered frame is one frame number")
        rendering = rendering_of(request, thumbnail=thumbnail)
        instance = _find_instance(stores.index, project_id, *uids)
        return render(instance, numbers[0], rendering)

    @guarded
    def rendered(
        request: Request, project_id: str, study_uid: str, series_uid: str, sop_uid: str
    ) -> Response:
        """The instance rendered as image/jpeg (default) or image/png (window, viewport,
        quality); a multi-frame instance gives its first frame."""
        uids = (study_uid, series_uid, sop_uid)
        return rendered_frame(request, project_id, uids, "1", thumbnail=False)

    @guarded
    def thumbnail(
        request: Request, project_id: str, study_uid: str, series_uid: str, sop_uid: str
    ) -> Response:
        """A small rendering (at most 128 pixels, or the viewport) of the first frame."""
        uids = (study_uid, series_uid, sop_uid)
        return rendered_frame(request, project_id, uids, "1", thumbnail=True)

    @guarded
    def frame_rendered(
        request: Request,
        project_id: str,
        study_uid: str,
        series_uid: str,
        sop_uid: str,
        frame_list: str,
    ) -> Response:
        """One frame rendered as image/jpeg (default) or image/png."""
        uids = (study_uid, series_uid, sop_uid)
        return rendered_frame(request, project_id, uids, frame_list, thumbnail=False)

    @guarded
    def frame_thumbnail(
        request: Request,
        project_id: str,
        study_uid: str,
        series_uid: str,
        sop_uid: str,
        frame_list: str,
    ) -> Response:
        """A small rendering of one frame."""
        uids = (study_uid, series_uid, sop_uid)
        return rendered_frame(request, project_id, uids, frame_list, thumbnail=True)

    # -- WADO-URI ------------------------------------------------------------------------------

    @guarded
    def wado_uri(request: Request, project_id: str) -> Response:
        """WADO-URI: requestType=WADO&studyUID=&seriesUID=&objectUID=[&contentType=...]."""
        query = request.query_params
        if query.get("requestType") != "WADO":
            raise _error(status.HTTP_400_BAD_REQUEST, "requestType must be WADO")
        uids = [query.get(name) for name in ("studyUID", "seriesUID", "objectUID")]
        if any(not uid for uid in uids):
            raise _error(
                status.HTTP_400_BAD_REQUEST, "studyUID, seriesUID and objectUID are required"
            )
        _check_uids(*uids)
        study_uid, series_uid, sop_uid = (str(u) for u in uids)
        wanted = [
            t.split(";")[0].strip().lower()
            for t in query.get("contentType", "image/jpeg").split(",")
        ]
        media_type = next((t for t in wanted if t in (DICOM, *RENDERED_TYPES)), None)
        if media_type is None:
            raise _not_acceptable("contentType is application/dicom, image/jpeg or image/png")
        instance = _find_instance(stores.index, project_id, study_uid, series_uid, sop_uid)
        if media_type == DICOM:
            if "frameNumber" in query:
                raise _error(
                    status.HTTP_400_BAD_REQUEST, "frameNumber is not allowed with application/dicom"
                )
            syntax = _instance_syntax(query.get("transferSyntax"), instance.transfer_syntax_uid)
            if syntax is None:
                raise _not_acceptable("the requested transfer syntax cannot be produced")
            body = _threaded(_instance_chunks(stores.blobs, instance, syntax))
            return StreamingResponse(body, media_type=DICOM)
        rendering = uri_rendering(query, media_type)
        number = 1
        if "frameNumber" in query:
            text = query["frameNumber"]
            if (
                not text.isascii()
                or not text.isdigit()
                or not 0 < int(text) <= (instance.number_of_frames or 1)
            ):
                raise _error(
                    status.HTTP_400_BAD_REQUEST, "frameNumber is not a frame of this instance"
                )
            number = int(text)
        return render(instance, number, rendering)

    def uri_rendering(query: QueryParams, media_type: str) -> Rendering:
        try:
            window = None
            if "windowCenter" in query or "windowWidth" in query:
                if not ("windowCenter" in query and "windowWidth" in query):
                    raise ValueError("windowCenter and windowWidth go together")
                window = parse_window(f"{query['windowCenter']},{query['windowWidth']}")
            viewport = None
            if "rows" in query or "columns" in query:
                rows = query.get("rows") or str(8192)
                columns = query.get("columns") or str(8192)
                viewport = parse_viewport(f"{columns},{rows}")
            quality = parse_quality(query["imageQuality"]) if "imageQuality" in query else None
        except ValueError as exc:
            raise _error(status.HTTP_400_BAD_REQUEST, str(exc)) from exc
        return Rendering(
            window=window,
            viewport=viewport,
            quality=quality or Rendering.quality,
            media_type=media_type,
        )

    # -- routes --------------------------------------------------------------------------------

    study = f"{root}/studies/{{study_uid}}"
    series = f"{study}/series/{{series_uid}}"
    instance = f"{series}/instances/{{sop_uid}}"
    routes: list[tuple[str, Callable[..., Response], str]] = [
        (study, retrieve_study, "wado_study"),
        (series, retrieve_series, "wado_series"),
        (instance, retrieve_instance, "wado_instance"),
        (f"{study}/metadata", study_metadata, "wado_study_metadata"),
        (f"{series}/metadata", series_metadata, "wado_series_metadata"),
        (f"{instance}/metadata", instance_metadata_route, "wado_instance_metadata"),
        (f"{instance}/frames/{{frame_list}}", retrieve_frames, "wado_frames"),
        (f"{instance}/bulk/{{bulk_path}}", retrieve_bulk, "wado_bulk"),
        (f"{instance}/rendered", rendered, "wado_rendered"),
        (f"{instance}/thumbnail", thumbnail, "wado_thumbnail"),
        (f"{instance}/frames/{{frame_list}}/rendered", frame_rendered, "wado_frame_rendered"),
        (f"{instance}/frames/{{frame_list}}/thumbnail", frame_thumbnail, "wado_frame_thumbnail"),
        ("/projects/{project_id}/wado", wado_uri, "wado_uri"),
    ]  # fmt: skip
    for path, endpoint, name in routes:
        router.add_api_route(
            path, endpoint, methods=["GET"], name=name, response_class=Response,
            responses=_RESPONSES,
        )  # fmt: skip
    return router


_RESPONSES: dict[int | str, dict] = {
    304: {"description": "metadata not modified (If-None-Match)"},
    400: {"description": "malformed UID, frame list or parameter"},
    404: {"description": "no such object in this project, or no such frame"},
    406: {"description": "none of the accepted media types or transfer syntaxes can be served"},
    503: {"description": "the index or the blob store is unavailable"},
}
