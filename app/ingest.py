"""The ingest boundary as a service: identifiable files in, pseudonymized instances stored.

For each file: pseudonymize its header with the project's engine, in memory (the original is
only ever read, never copied or written anywhere), record the patient's linkage in the vault on
first meeting, stream the result into the blob store (new header, then the input's pixel
bytes), and only then index it (decision 5: blob first, index second). Once every file is
done, the series touched get their metadata precomputed (decision 6). Used the same way by the
CLI, a worker and the tests; it imports neither FastAPI nor Typer.

Re-running is always safe: pseudonymization is deterministic, so a file already stored gives
the same bytes (same SHA-256) and counts as "already present"; a crash leaves at worst an
orphan blob (`sweep_orphans` removes it) and stale series metadata (the next run rebuilds it).
"""

from __future__ import annotations

import datetime as dt
import enum
import fcntl
import functools
import hashlib
import io
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from app import telemetry
from app.config import Settings
from app.dicom.frames import PIXEL_ELEMENT_HEADER, Header, read_instance_header
from app.dicom.json_model import BulkDataUri
from app.dicom.scan import read_header
from app.dicomweb.urls import bulkdata_uri
from app.projects import engine_for
from app.provenance import record_derivation, record_ingest
from app.pseudo.batch import BatchReport, Failure, iter_inputs
from app.pseudo.derived import DerivedCleaner, NotAttached
from app.pseudo.engine import DeidentificationError, Deidentifier, InstanceResult
from app.pseudo.files import HeaderPolicy, Prepared, UnreadableInput, prepare_file
from app.store import index_repo, layout
from app.store.blobs import BlobStore, BlobStoreError
from app.store.encryption import project_blob_store
from app.store.facts import InstanceFacts, UnstorableInstance, instance_facts
from app.store.index import index_engine
from app.store.models import Instance, Project
from app.store.series_metadata import UriFor, refresh_series_metadata, remember_header
from app.store.sweep import sweep_project_blobs
from app.vault import Vault, VaultError

DICOM_CONTENT_TYPE = "application/dicom"
_LOCK_NAME = ".lock"
# BulkDataURIs in stored metadata are root-relative ("/projects/…"): a change of
# DEPOT_PUBLIC_URL then invalidates nothing stored; the routers add the base when serving.
METADATA_BASE_URL = ""


@dataclass
class Stores:
    """Everything ingest writes to: the index, the blobs, the vault, and the scratch folder
    that STOW-RS request bodies are written to before they are ingested."""

    index: Engine
    blobs: BlobStore
    vault: Vault
    scratch: Path  # STOW-RS parts (identifiable) in transit, under the data dir

    @classmethod
    def from_settings(cls, settings: Settings, vault: Vault | None = None) -> Stores:
        """The stores of `settings`; `vault` shares an open one (the server's)."""
        vault = vault or Vault.from_settings(settings)
        return cls(
            index=index_engine(settings.index_url),
            blobs=project_blob_store(settings, vault),  # sealed at rest (app.store.encryption)
            vault=vault,
            scratch=settings.resolved_data_dir / "ingest-tmp",
        )


def lazy_stores(settings: Settings, vault: Vault) -> Callable[[], Stores]:
    """The stores, opened on the first call and then shared: what a router needs, since
    opening the index connects to it (an app must build without a reachable database)."""
    return functools.cache(lambda: Stores.from_settings(settings, vault))


class Outcome(enum.Enum):
    STORED = "stored"
    ALREADY_PRESENT = "already present"
    FAILED = "failed"


class Cause(enum.Enum):
    """Why a file FAILED, for callers that map it to a status (STOW-RS FailureReason)."""

    UNREADABLE = "unreadable"  # not DICOM, truncated, not a storable instance
    CONFLICT = "conflict"  # the index holds something incompatible
    REFUSED = "refused"  # the caller's `accept` check said no (STOW-RS study mismatch)
    NOT_ATTACHED = "not attached"  # a derived object outside the project's studies/patients
    IO = "io"  # the input (a file, a STOW-RS part in scratch) could not be read


@dataclass
class FileResult:
    """What became of one input file. `source` is for the data manager's screen only."""

    source: Path
    outcome: Outcome
    instance: InstanceResult | None = None
    reason: str = ""
    cause: Cause | None = None  # set when outcome is FAILED


@dataclass
class IngestReport:
    engine: Deidentifier
    stored: list[InstanceResult] = field(default_factory=list)
    already_present: list[InstanceResult] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    series_refreshed: int = 0

    @property
    def files(self) -> int:
        return len(self.stored) + len(self.already_present) + len(self.failures)

    @property
    def studies(self) -> set[str]:
        return {r.study_uid for r in (*self.stored, *self.already_present)}

    @property
    def series(self) -> set[str]:
        return {r.series_uid for r in (*self.stored, *self.already_present)}

    def add(self, result: FileResult) -> None:
        if result.outcome is Outcome.FAILED:
            self.failures.append(Failure(result.source, result.reason))
        elif result.outcome is Outcome.STORED:
            self.stored.append(result.instance)  # type: ignore[arg-type]
        else:
            self.already_present.append(result.instance)  # type: ignore[arg-type]

    def to_json(self) -> dict:
        """The change report of `depot pseudonymize` plus the ingest counts; no file names."""
        batch = BatchReport(self.engine, [*self.stored, *self.already_present], [], self.failures)
        return {
            **batch.to_json(),
            "ingest": {
                "files": self.files,
                "stored": len(self.stored),
                "already_present": len(self.already_present),
                "failed": len(self.failures),
                "studies": len(self.studies),
                "series": len(self.series),
                "series_metadata_updated": self.series_refreshed,
            },
        }


class IngestAborted(RuntimeError):
    """A store, the index or the vault failed: the batch stopped. What was stored is kept
    and consistent; running the same ingest again finishes the job. `report` is the part
    done. The message names the failing part, never a value."""

    def __init__(self, message: str, report: IngestReport) -> None:
        super().__init__(message)
        self.report = report


FileCallback = Callable[[FileResult], None]
# Called with the pseudonymized result before anything is stored: a reason to refuse, or None.
AcceptCheck = Callable[[InstanceResult], str | None]
SeriesCallback = Callable[[int, int], None]  # (series done, series to do)


def ingest_files(
    stores: Stores,
    project: Project,
    paths: Iterable[Path],
    *,
    on_file: FileCallback | None = None,
    on_series: SeriesCallback | None = None,
) -> IngestReport:
    """Ingest files and folders into `project`; a bad file is reported and the batch goes on.

    `on_file` hears about each file as it is done, `on_series(done, total)` about the series
    metadata phase that follows. Raises FileNotFoundError for a path that does not exist
    (before anything is done) and IngestAborted when a store, the index or the vault fails.
    """
    inputs = list(iter_inputs(paths))
    engine = engine_for(project, stores.vault)
    report = IngestReport(engine)
    touched: dict[str, None] = {}  # series, in the order first met
    recorded: set[str] = set()
    with _aborting_on_store_failures(report):
        for src in inputs:
            result = _ingest_one(stores, project.id, engine, src, recorded)
            report.add(result)
            if result.instance is not None and result.outcome is not Outcome.FAILED:
                touched[result.instance.series_uid] = None
            if on_file:
                on_file(result)
        _refresh_metadata(stores, project.id, list(touched), report, on_series)
        record_ingest(stores.index, project.id, engine, report.stored, "depot ingest")
    return report


@contextmanager
def _aborting_on_store_failures(report: IngestReport) -> Iterator[None]:
    """A failing store, index or vault stops the batch: IngestAborted, naming the part only."""
    try:
        yield
    except VaultError as exc:
        raise IngestAborted(f"the vault refused a linkage record: {exc}", report) from exc
    except BlobStoreError as exc:
        raise IngestAborted(f"the blob store failed: {exc}", report) from exc
    except SQLAlchemyError as exc:  # its text may quote SQL parameters: name the type only
        raise IngestAborted(f"the index database failed ({type(exc).__name__})", report) from exc


def ingest_written(
    stores: Stores,
    project: Project,
    paths: Iterable[Path],
    *,
    accept: AcceptCheck | None = None,
    policy: HeaderPolicy | None = None,
    refresh_metadata: bool = True,
) -> tuple[list[FileResult], IngestReport]:
    """Ingest files the caller already wrote, e.g. the parts of a STOW-RS request (in its
    `scratch_run` folder): the per-file ingest of `ingest_files`, then the metadata of
    the series touched (unless `refresh_metadata` is False: the caller then calls
    `refresh_series` for `touched_series(results)`, e.g. once its answer is sent).
    `accept` may refuse an instance after pseudonymization, before it is stored. `policy`
    replaces the project's pseudonymization (derived objects stored from the research
    side). Same errors as `ingest_files` (IngestAborted when a store fails).
    """
    engine = engine_for(project, stores.vault)
    report = IngestReport(engine)
    results: list[FileResult] = []
    recorded: set[str] = set()
    with _aborting_on_store_failures(report):
        for src in paths:
            result = _ingest_one(stores, project.id, policy or engine, src, recorded, accept)
            report.add(result)
            results.append(result)
        if refresh_metadata:
            _refresh_metadata(stores, project.id, touched_series(results), report, None)
        if policy is None:  # the project's pseudonymization
            record_ingest(stores.index, project.id, engine, report.stored, "ingest STOW-RS")
        elif isinstance(policy, DerivedCleaner):  # derived objects: what they come from
            record_derivation(stores.index, project.id, report.stored, policy.references)
    return results, report


def touched_series(results: Iterable[FileResult]) -> list[str]:
    """The series that stored (or already held) an instance of `results`, in order."""
    series = (
        r.instance.series_uid for r in results if r.instance and r.outcome is not Outcome.FAILED
    )
    return list(dict.fromkeys(series))


def refresh_series(stores: Stores, project_id: str, series_uids: Iterable[str]) -> int:
    """Bring the series' metadata up to date; how many documents were rewritten."""
    return sum(
        refresh_series_metadata(
            stores.index, stores.blobs, project_id, uid, uri_for=bulk_uris(project_id)
        )
        for uid in series_uids
    )


@telemetry.traced_ingest_file  # span ingest.file, counters by outcome
def _ingest_one(
    stores: Stores,
    project_id: str,
    engine: HeaderPolicy,
    src: Path,
    recorded: set[str],
    accept: AcceptCheck | None = None,
) -> FileResult:
    try:
        # The span lives here, not in app.pseudo: the engine and `depot pseudonymize` stay
        # free of telemetry (and of its import at start-up).
        with telemetry.span("pseudonymize"):
            prepared = prepare_file(src, engine)
            telemetry.pseudonymized(engine, prepared.result)  # profile name, count of changes
    except NotAttached as exc:
        return FileResult(src, Outcome.FAILED, reason=str(exc), cause=Cause.NOT_ATTACHED)
    except (UnreadableInput, DeidentificationError) as exc:
        return FileResult(src, Outcome.FAILED, reason=str(exc), cause=Cause.UNREADABLE)
    except OSError as exc:
        reason = f"cannot read or write ({exc.strerror})"
        return FileResult(src, Outcome.FAILED, reason=reason, cause=Cause.IO)
    result = prepared.result
    try:
        if accept is not None and (refusal := accept(result)) is not None:
            return FileResult(src, Outcome.FAILED, result, refusal, Cause.REFUSED)
        output = _read_output(prepared)
        facts = output.facts
        if result.linkage and result.patient_pseudonym not in recorded:
            # Before the data is visible: no stored pseudonym without its way back.
            stores.vault.record_linkage(project_id, result.patient_pseudonym, result.linkage)
            recorded.add(result.patient_pseudonym)
        known = index_repo.stored_digest(stores.index, project_id, facts.sop_uid)
        if known is not None:  # a re-run: skip the write, compare the bytes
            if known != facts.sha256:
                raise index_repo.InstanceConflict()
            return FileResult(src, Outcome.ALREADY_PRESENT, result)
        key = layout.instance_key(
            project_id, facts.study_uid, facts.series_uid, facts.sop_uid, facts.sha256
        )
        _put(stores.blobs, key, output)
        try:
            with telemetry.span("index.upsert"):
                added = index_repo.upsert_instance(stores.index, project_id, facts, key)
        except index_repo.IndexConflict:
            # Content-addressed key: no row points at it (a row with the same bytes would
            # have been "already present"), so the blob goes and the failure leaves nothing.
            stores.blobs.delete(key)
            raise
        if added is index_repo.Added.STORED:
            remember_header(key, output.header)
            return FileResult(src, Outcome.STORED, result)
        return FileResult(src, Outcome.ALREADY_PRESENT, result)
    except (UnstorableInstance, UnreadableInput) as exc:
        return FileResult(src, Outcome.FAILED, result, str(exc), Cause.UNREADABLE)
    except index_repo.IndexConflict as exc:
        return FileResult(src, Outcome.FAILED, result, str(exc), Cause.CONFLICT)
    except BlobStoreError:
        raise
    except OSError as exc:  # reading the pixel data from the input again
        reason = f"cannot read or write ({exc.strerror})"
        return FileResult(src, Outcome.FAILED, result, reason, Cause.IO)
    finally:
        prepared.close()


# Outputs up to this size are read once: hashed and stored from the same bytes. Larger ones
# are read again as they are stored, and their digest checked before the blob is committed.
# Either way the stored bytes are those hashed, even if someone still writes the input (a
# folder given to `depot ingest` may be an export in progress).
READ_ONCE = 16 * 1024 * 1024


@dataclass
class _Output:
    """What `_put` stores, as `_read_output` found it."""

    facts: InstanceFacts
    header: Header  # for the series metadata
    body: Iterable[bytes]  # the bytes to store, checked against facts.sha256 on the way in


def _read_output(prepared: Prepared) -> _Output:
    """The index facts, the parsed header and the bytes of the instance about to be stored.

    Nothing is written first: the header parsed is the one just encoded, followed by the
    pixel data element's own header (its layout), and the hash covers every byte `_put`
    will store.
    """
    size = prepared.size
    if prepared.pixels is not None:  # the encoded header ends where pixel data starts
        header_length = len(prepared.header)
    else:  # written whole by pydicom (something follows the pixel data, or deflated)
        header_length = read_header(io.BytesIO(prepared.header)).pixel_start or size
    head = prepared.head(PIXEL_ELEMENT_HEADER)
    header = read_instance_header(
        lambda start, end: head[start:end], header_length, size, prepared.transfer_syntax
    )
    sha256 = hashlib.sha256()
    if size <= READ_ONCE:
        body: Iterable[bytes] = list(prepared.chunks())
        for chunk in body:
            sha256.update(chunk)
    else:
        for chunk in prepared.chunks():
            sha256.update(chunk)
        body = _as_hashed(prepared.chunks(), sha256.hexdigest())
    facts = instance_facts(
        header.dataset, size=size, sha256=sha256.hexdigest(), header_length=header_length
    )
    return _Output(facts, header, body)


def _as_hashed(chunks: Iterable[bytes], expected: str) -> Iterator[bytes]:
    """`chunks`, then UnreadableInput instead of their end if they hash otherwise: the store
    drops the blob, which would not hold the bytes the index describes."""
    sha256 = hashlib.sha256()
    for chunk in chunks:
        sha256.update(chunk)
        yield chunk
    if sha256.hexdigest() != expected:
        raise UnreadableInput("the input changed while it was being stored")


def _put(blobs: BlobStore, key: str, output: _Output) -> None:
    """Stream the pseudonymized instance into the store (sealed as it goes in when
    encryption at rest is on); the blob appears whole or not at all."""
    try:
        with telemetry.span("store.blob_put", {"depot.bytes": output.facts.size}):
            blobs.put(key, output.body, content_type=DICOM_CONTENT_TYPE)
    except (BlobStoreError, UnreadableInput):
        raise
    except OSError as exc:  # the filesystem store's own failures: full disk, permissions
        raise BlobStoreError(f"cannot write a blob ({exc.strerror})") from exc


def _refresh_metadata(
    stores: Stores,
    project_id: str,
    series_uids: list[str],
    report: IngestReport,
    on_series: SeriesCallback | None,
) -> None:
    """Series metadata, once per series per batch; series already up to date are skipped."""
    if on_series:
        on_series(0, len(series_uids))
    for done, series_uid in enumerate(series_uids, 1):
        report.series_refreshed += refresh_series(stores, project_id, [series_uid])
        if on_series:
            on_series(done, len(series_uids))


def bulk_uris(project_id: str) -> UriFor:
    """The BulkDataURI callback of stored series metadata (root-relative: see
    METADATA_BASE_URL); ingest and WADO-RS rebuild metadata with the same one."""

    def uri_for(instance: Instance) -> BulkDataUri:
        return bulkdata_uri(
            METADATA_BASE_URL, project_id, instance.study_uid, instance.series_uid, instance.sop_uid
        )

    return uri_for


# --- scratch space -----------------------------------------------------------------------------


@contextmanager
def scratch_run(scratch: Path, project_id: str) -> Iterator[Path]:
    """A private folder for this run, locked while the run lives, removed after it.

    A killed run leaves its folder behind; the lock (released by the kernel when the process
    dies) is how `sweep_orphans` tells a dead run's folder from a live one.
    """
    parent = scratch / project_id
    parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=parent))
    lock = os.open(run_dir / _LOCK_NAME, os.O_CREAT | os.O_WRONLY, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield run_dir
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
        os.close(lock)


def _sweep_scratch(scratch: Path, project_id: str, older_than: dt.timedelta) -> int:
    """Remove the scratch folders of dead runs (unlocked, untouched for `older_than`)."""
    parent = scratch / project_id
    if not parent.is_dir():
        return 0
    cutoff = dt.datetime.now(dt.UTC).timestamp() - older_than.total_seconds()
    removed = 0
    for run_dir in parent.iterdir():
        if not run_dir.is_dir() or run_dir.stat().st_mtime > cutoff:
            continue
        try:
            lock = os.open(run_dir / _LOCK_NAME, os.O_RDONLY)
        except FileNotFoundError:
            lock = None  # killed between creating the folder and its lock
        try:
            if lock is not None:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError: alive
            shutil.rmtree(run_dir, ignore_errors=True)
            removed += 1
        except BlockingIOError:
            continue
        finally:
            if lock is not None:
                os.close(lock)
    return removed


# --- the sweep ---------------------------------------------------------------------------------


@dataclass
class SweepReport:
    orphan_blobs: int
    partial_blobs: int
    scratch_folders: int


def sweep_orphans(project_id: str, stores: Stores, older_than: dt.timedelta) -> SweepReport:
    """Remove what crashed writers left for `project_id`: unindexed blobs, partial blobs and
    scratch folders, all untouched for at least `older_than` (see app.store.sweep)."""
    blobs = sweep_project_blobs(stores.index, stores.blobs, project_id, older_than)
    scratch = _sweep_scratch(stores.scratch, project_id, older_than)
    return SweepReport(blobs.orphans, blobs.partials, scratch)
