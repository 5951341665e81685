"""The orphan sweep: blobs that no index row points at, left by crashes (decision 5).

Blob first, index second means a writer killed between the two leaves a blob nobody indexes;
so does a crash between deleting index rows and deleting their blobs, or between recording new
series metadata and deleting the old one. The sweep lists a project's blobs and deletes those
older than `older_than` that no row references. The age limit protects writers in flight: a
blob written a moment ago may be about to get its row. Run it with a limit far above the time
between a blob and its row (milliseconds); an hour is the CLI's default.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import Engine

from app.store import index_repo, layout
from app.store.blobs import BlobStore

_BATCH = 500


@dataclass
class BlobSweep:
    listed: int = 0
    orphans: int = 0
    partials: int = 0


def sweep_project_blobs(
    engine: Engine, blobs: BlobStore, project_id: str, older_than: dt.timedelta
) -> BlobSweep:
    """Delete the project's unreferenced blobs older than `older_than`, and stale partials."""
    if older_than < dt.timedelta(0):
        raise ValueError("older_than must not be negative")
    cutoff = dt.datetime.now(dt.UTC) - older_than
    report = BlobSweep()
    candidates: list[str] = []
    for key, _size, modified in blobs.list(layout.project_prefix(project_id)):
        report.listed += 1
        if modified <= cutoff:
            candidates.append(key)
        if len(candidates) >= _BATCH:
            report.orphans += _delete_unreferenced(engine, blobs, project_id, candidates)
            candidates = []
    report.orphans += _delete_unreferenced(engine, blobs, project_id, candidates)
    # The filesystem store's own leftovers (S3 has none: an upload is atomic). Store-wide, as
    # a partial file names no project; its age alone says its writer is gone.
    sweep_partials = getattr(blobs, "sweep_partials", None)
    if sweep_partials is not None:
        report.partials = sweep_partials(older_than)
    return report


def _delete_unreferenced(engine: Engine, blobs: BlobStore, project_id: str, keys: list[str]) -> int:
    """The index is asked after the listing, so a row committed before now protects its blob."""
    if not keys:
        return 0
    referenced = index_repo.referenced_keys(engine, project_id, keys)
    orphans = [key for key in keys if key not in referenced]
    for key in orphans:
        blobs.delete(key)
    return len(orphans)
