"""Series-level WADO-RS metadata, precomputed at ingest (decision 6): gzip JSON plus an ETag.

Viewers ask for a series' metadata constantly and peers are slow at it (OHIF #1536,
microsoft/dicom-server#1871), so the document is built when the series changes, and only for
what changed: instances already in the previous document keep their part of it, new ones are
read. Each part is the DICOM JSON (PS3.18 Annex F) of one instance, from its blob's *header only*
(`Instance.header_length` bytes, plus the 12 bytes of the pixel data element's header), never
its pixel data (deflated files, rare and small, are read whole: they have no pixel offset).
An instance this process has just stored is not read back: the ingest hands over the header
it parsed from the very bytes it stored (`remember_header`). Every bulk value, pixel data
always, becomes a BulkDataURI.

The ETag is the SHA-256 of the uncompressed JSON, and the blob key carries it, so a document is
never overwritten by another: a computation that raced with a new instance cannot replace a
newer document, and `index_repo.set_series_metadata` refuses to record it (the series moved
to another revision). The previous document is deleted once the new one is recorded; a crash
in between leaves an orphan for the sweep. The metadata is derived data: if its blob is ever
missing, `refresh_series_metadata(..., force=True)` rebuilds it from the instances.
"""

from __future__ import annotations

import gzip
import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import orjson
from sqlalchemy import Engine

from app import telemetry
from app.dicom.frames import Header, read_instance_header
from app.dicom.json_model import BulkDataUri, JsonDataset, to_dicom_json
from app.store import index_repo, layout
from app.store.blobs import BlobNotFound, BlobStore, BlobStoreError
from app.store.models import Instance

CONTENT_TYPE = "application/gzip"
_READERS = 8  # parallel header reads: S3 round trips dominate, not the CPU

# The BulkDataURI callback of one instance. URLs are the routers' business (app.dicomweb.urls):
# the service that calls this module passes them in, so the store does not know the routes.
UriFor = Callable[[Instance], BulkDataUri]


def instance_metadata(blobs: BlobStore, instance: Instance, uri_for: UriFor) -> JsonDataset:
    """One stored instance's DICOM JSON, from the bytes before its pixel data."""
    header = read_instance_header(
        lambda start, end: blobs.read_range(instance.blob_key, start, end),
        instance.header_length,
        instance.size,
        instance.transfer_syntax_uid,
    )
    return header_metadata(header, uri_for(instance))


def header_metadata(header: Header, uri: BulkDataUri) -> JsonDataset:
    """The DICOM JSON of a parsed header; pixel data, never read, as a BulkDataURI."""
    document = to_dicom_json(header.dataset, bulkdata_uri=uri)
    pixel = header.layout
    if pixel is not None and pixel.vr in ("OB", "OW", "OF", "OD"):
        tag = f"{pixel.tag:08X}"
        document[tag] = {"vr": pixel.vr, "BulkDataURI": uri(tag)}
    return document


class _FreshHeaders:
    """Headers the ingest parsed from the bytes it just stored, by blob key, until the
    series' metadata takes them: reading them back from the store (and decrypting them)
    cost more than building the document. Keys name the bytes (their SHA-256), so an entry
    can only describe its own blob; what does not fit, or another worker process stored,
    is read from the store as before."""

    SIZE = 1024

    def __init__(self) -> None:
        self._headers: OrderedDict[str, Header] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, blob_key: str, header: Header) -> None:
        with self._lock:
            self._headers[blob_key] = header
            while len(self._headers) > self.SIZE:
                self._headers.popitem(last=False)

    def take(self, blob_key: str) -> Header | None:
        with self._lock:
            return self._headers.pop(blob_key, None)


_fresh = _FreshHeaders()


def remember_header(blob_key: str, header: Header) -> None:
    """Hand the header of a just-stored blob to the next metadata refresh of its series."""
    _fresh.put(blob_key, header)


_pool: ThreadPoolExecutor | None = None


def _readers() -> ThreadPoolExecutor:
    """One pool per process, made on first use (after a server worker forks): starting
    threads for every refresh cost more than the reads on a busy ingest."""
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(_READERS, thread_name_prefix="series-metadata")
    return _pool


def build_series_metadata(blobs: BlobStore, instances: list[Instance], uri_for: UriFor) -> bytes:
    """The series' metadata document (a JSON array, one object per instance, in order)."""
    return orjson.dumps(_documents(blobs, instances, uri_for, {}))


def _documents(
    blobs: BlobStore, instances: list[Instance], uri_for: UriFor, known: dict[str, JsonDataset]
) -> list[JsonDataset]:
    """The instances' documents; those in `known` (by SOP Instance UID) are not built again,
    those whose header the ingest handed over (`remember_header`) are not read."""
    built: dict[str, JsonDataset] = {}
    to_read: list[Instance] = []
    for instance in instances:
        if instance.sop_uid in known:
            continue
        header = _fresh.take(instance.blob_key)
        if header is None:
            to_read.append(instance)
        else:  # no I/O: built here, not by the pool's threads contending for the GIL
            built[instance.sop_uid] = header_metadata(header, uri_for(instance))
    if len(to_read) > 1:
        read = _readers().map(lambda i: instance_metadata(blobs, i, uri_for), to_read)
        built.update(zip((i.sop_uid for i in to_read), read, strict=True))
    else:
        built.update((i.sop_uid, instance_metadata(blobs, i, uri_for)) for i in to_read)
    return [known.get(i.sop_uid) or built[i.sop_uid] for i in instances]


class _RecentSeries:
    """The parsed documents of the series this process refreshed last, by their ETag: a
    series receiving STOW-RS requests is refreshed again and again, and gunzipping and
    parsing its growing document each time cost more than the new headers."""

    SIZE = 8

    def __init__(self) -> None:
        self._entries: OrderedDict[tuple[str, str], tuple[str, dict[str, JsonDataset]]] = (
            OrderedDict()
        )
        self._lock = threading.Lock()

    def get(self, project_id: str, series_uid: str, etag: str | None) -> dict | None:
        with self._lock:
            entry = self._entries.get((project_id, series_uid))
            if entry is None or entry[0] != etag:
                return None
            self._entries.move_to_end((project_id, series_uid))
            return entry[1]

    def put(self, project_id: str, series_uid: str, etag: str, documents: list) -> None:
        by_sop = _by_sop(documents)
        with self._lock:
            self._entries[(project_id, series_uid)] = (etag, by_sop)
            self._entries.move_to_end((project_id, series_uid))
            while len(self._entries) > self.SIZE:
                self._entries.popitem(last=False)


_recent = _RecentSeries()


def _by_sop(documents: list[JsonDataset]) -> dict[str, JsonDataset]:
    """The documents by their SOP Instance UID (those without one left out)."""
    found = {}
    for document in documents:
        try:
            found[document["00080018"]["Value"][0]] = document
        except (KeyError, IndexError, TypeError):
            continue
    return found


def _previous_documents(blobs: BlobStore, key: str | None) -> dict[str, JsonDataset]:
    """The documents of the series' current metadata, by SOP Instance UID ({} if unreadable:
    everything is then rebuilt from the instances, the source of truth)."""
    if key is None:
        return {}
    try:
        return _by_sop(read_series_metadata(blobs, key))
    except (BlobNotFound, BlobStoreError, OSError, ValueError):
        return {}


def etag_of(document: bytes) -> str:
    return hashlib.sha256(document).hexdigest()


@telemetry.traced("series_metadata.refresh")
def refresh_series_metadata(
    engine: Engine,
    blobs: BlobStore,
    project_id: str,
    series_uid: str,
    *,
    uri_for: UriFor,
    force: bool = False,
) -> bool:
    """Rebuild and store the series' metadata if it is stale (or `force`); True if recorded."""
    series = index_repo.get_series(engine, project_id, series_uid)
    if series is None:
        return False
    fresh = series.metadata_key is not None and series.metadata_revision == series.revision
    if fresh and not force:
        return False
    revision = series.revision
    instances = index_repo.list_instances(engine, project_id, series_uid=series_uid)
    telemetry.set_attributes({"depot.instances": len(instances)})
    # Instances already described keep their document: a series growing by STOW-RS
    # requests is not re-read whole each time (that was quadratic). `force` re-reads all.
    known: dict[str, JsonDataset] = {}
    if not force:
        cached = _recent.get(project_id, series_uid, series.metadata_etag)
        known = cached if cached is not None else _previous_documents(blobs, series.metadata_key)
    documents = _documents(blobs, instances, uri_for, known)
    document = orjson.dumps(documents)
    etag = etag_of(document)
    key = layout.series_metadata_key(project_id, series.study_uid, series_uid, etag)
    # Level 3: a third of level 6's time on these documents, for about 1.5 times the size.
    blobs.put(key, [gzip.compress(document, compresslevel=3, mtime=0)], content_type=CONTENT_TYPE)
    recorded = index_repo.set_series_metadata(
        engine, project_id, series_uid, revision=revision, key=key, etag=etag
    )
    if recorded:
        _recent.put(project_id, series_uid, etag, documents)
        if series.metadata_key and series.metadata_key != key:
            blobs.delete(series.metadata_key)
    return recorded


def read_series_metadata(blobs: BlobStore, key: str) -> list[JsonDataset]:
    """The stored document, uncompressed and parsed (for tests and tools; routers stream it)."""
    with blobs.open(key) as stream:
        return orjson.loads(gzip.decompress(stream.read()))
