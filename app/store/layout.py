"""Where things go in the blob store: the one owner of the key scheme.

Every key starts with `projects/<project>/` (decision 1), so a project's blobs can be listed,
swept and purged by prefix. Instance blobs are content-addressed under their SOP Instance UID:
`…/instances/<sop>.<sha256 prefix>.dcm`. Two writers racing with different bytes for the same
SOP Instance UID therefore never overwrite each other's blob: the index keeps one row, the
other blob is an orphan for the sweep, and the row always describes the bytes under its key.
Series metadata is content-addressed the same way (by its ETag), for the same reason.
Callers read keys from the index; nothing parses a key back into UIDs.
"""

from __future__ import annotations

from app.store.blobs import validate_key

DIGEST_CHARS = 16  # 64 bits of the SHA-256 in the name: a collision needs the same SOP UID too


def project_prefix(project_id: str) -> str:
    return validate_key(f"projects/{project_id}")


def series_prefix(project_id: str, study_uid: str, series_uid: str) -> str:
    return validate_key(f"projects/{project_id}/studies/{study_uid}/series/{series_uid}")


def instance_key(
    project_id: str, study_uid: str, series_uid: str, sop_uid: str, sha256: str
) -> str:
    """The key of a stored instance; raises ValueError if a UID is not key-safe."""
    prefix = series_prefix(project_id, study_uid, series_uid)
    return validate_key(f"{prefix}/instances/{sop_uid}.{sha256[:DIGEST_CHARS]}.dcm")


def series_metadata_key(project_id: str, study_uid: str, series_uid: str, etag: str) -> str:
    prefix = series_prefix(project_id, study_uid, series_uid)
    return validate_key(f"{prefix}/metadata.{etag[:DIGEST_CHARS]}.json.gz")
