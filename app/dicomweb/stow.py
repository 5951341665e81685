"""STOW-RS (PS3.18 10.5) as both boundaries use it: body to scratch, per-file store, answer.

Two routes store instances, with different header policies: the ingest boundary
(`app.dicomweb.ingest_stow`, identifiable in, the project's pseudonymization) and the research
surface (`app.dicomweb.research_stow`, derived objects, `app.pseudo.derived`). Everything else
is the same and lives here. The body is `multipart/related; type="application/dicom"`
(boundary and type quoted or bare, any parameter order); anything else is 415. Each part is
streamed to its own file in the project's scratch folder (`app.ingest.scratch_run`), never
held in memory, then goes through `app.ingest.ingest_written`.

Choices the standard leaves to us (FIELD-NOTES 1.3):

- The whole body is read before anything is stored: a malformed message (bad or missing
  boundary, no close delimiter, a part or the part count over the limits) is 400 and stores
  nothing, not even the complete parts before the error.
- WarningReason B000 (coercion) marks every instance whose header we changed: every ingested
  one (pseudonymized), a derived one whose text was cleaned or private elements removed.
  200 means every instance is stored (or was already), 202 that some were stored and some
  failed, 400 that none was stored because of bad parts, 409 that none was stored because of
  conflicts only (content differing from what is stored under the same UID, a study
  mismatch, a derived object outside the project's studies).
- FailureReason: C000 cannot understand (not DICOM, truncated, not a storable instance),
  0110 processing failure (store conflict, scratch I/O), A900 StudyInstanceUID differing from
  the one in the path, and our own A910 (docs/dicomweb.md): a derived object that does not
  attach to a study and patient of the project. The `Warning` header adds the reasons as
  sentences (ours never quote a value): the FailedSOPSequence item has no text attribute.
- UIDs in the response are the stored ones; a failed part whose UIDs are not known
  (unreadable, refused before its UIDs were read) has none. OriginalAttributesSequence is
  never returned nor stored.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Callable
from pathlib import Path

from fastapi import APIRouter, Depends, HTTPException, Request, status
from fastapi.responses import JSONResponse
from sqlalchemy.exc import SQLAlchemyError
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from app.config import Settings
from app.dicom.multipart import MultipartError, parse_content_type, read_parts
from app.dicomweb.public_base import public_base
from app.dicomweb.urls import instance_url, study_url
from app.ingest import (
    AcceptCheck,
    Cause,
    FileResult,
    IngestAborted,
    Outcome,
    Stores,
    ingest_written,
    lazy_stores,
    refresh_series,
    scratch_run,
    touched_series,
)
from app.projects import ProjectError, get_project
from app.pseudo.engine import InstanceResult
from app.pseudo.files import HeaderPolicy
from app.store.blobs import BlobStoreError
from app.store.models import Project
from app.vault import Vault

DICOM_JSON = "application/dicom+json"
MAX_PART_SIZE = 4 * 1024**3  # 4 GiB: a large multiframe instance
MAX_PARTS = 10_000
SERVICE = "imaging-depot"

WARNING_COERCION = 0xB000
FAILURE_CANNOT_UNDERSTAND = 0xC000
FAILURE_PROCESSING = 0x0110
FAILURE_STUDY_MISMATCH = 0xA900
FAILURE_NOT_ATTACHED = 0xA910  # ours: derived object outside the project's studies/patients
_FAILURE_REASONS = {
    Cause.UNREADABLE: FAILURE_CANNOT_UNDERSTAND,
    Cause.CONFLICT: FAILURE_PROCESSING,
    Cause.REFUSED: FAILURE_STUDY_MISMATCH,
    Cause.NOT_ATTACHED: FAILURE_NOT_ATTACHED,
    Cause.IO: FAILURE_PROCESSING,
}
_CONFLICTS = frozenset({Cause.CONFLICT, Cause.REFUSED, Cause.NOT_ATTACHED})

STOW_REQUEST_BODY = {
    "required": True,
    "content": {
        'multipart/related; type="application/dicom"': {
            "schema": {"type": "string", "format": "binary"}
        }
    },
}
STOW_RESPONSES = {
    200: {"description": "all instances stored (WarningReason B000 where coerced)"},
    202: {"description": "some instances stored, some failed (FailedSOPSequence)"},
    400: {"description": "malformed multipart body, or no instance stored: bad parts"},
    409: {"description": "no instance stored: conflicts only"},
    415: {"description": 'not multipart/related; type="application/dicom"'},
}


def _bad_request(reason: str, code: int = status.HTTP_400_BAD_REQUEST) -> HTTPException:
    return HTTPException(code, detail=reason)


def _boundary(header: str | None) -> str:
    """The boundary of a STOW-RS request, or 415 (not DICOM multipart) / 400 (no boundary)."""
    unsupported = 'expected multipart/related; type="application/dicom"'
    try:
        media_type, params = parse_content_type(header or "")
    except MultipartError as exc:
        raise _bad_request(unsupported, status.HTTP_415_UNSUPPORTED_MEDIA_TYPE) from exc
    part_type = params.get("type", "").strip().lower()
    if media_type != "multipart/related" or part_type != "application/dicom":
        raise _bad_request(unsupported, status.HTTP_415_UNSUPPORTED_MEDIA_TYPE)
    boundary = params.get("boundary")
    if not boundary:
        raise _bad_request("malformed multipart: the Content-Type has no boundary")
    return boundary


async def _write_parts(request: Request, boundary: str, parts_dir: Path) -> list[Path]:
    """Every part of the body into its own file; MultipartError when the body is malformed."""
    parts_dir.mkdir(mode=0o700)
    paths: list[Path] = []
    parts = read_parts(request.stream(), boundary, max_part_size=MAX_PART_SIZE, max_parts=MAX_PARTS)
    async for _headers, body in parts:
        path = parts_dir / f"{len(paths):05d}.part"
        with open(path, "wb") as out:  # local scratch disk: short blocking writes
            async for chunk in body:
                out.write(chunk)
        paths.append(path)
    return paths


def _ui(uid: str) -> dict:
    return {"vr": "UI", "Value": [uid]}


def _referenced(base: str, project_id: str, instance: InstanceResult) -> dict:
    url = instance_url(base, project_id, instance.study_uid, instance.series_uid, instance.sop_uid)
    item = {
        "00081150": _ui(instance.sop_class_uid),
        "00081155": _ui(instance.sop_uid),
        "00081190": {"vr": "UR", "Value": [url]},
    }
    if instance.changes:
        item["00081196"] = {"vr": "US", "Value": [WARNING_COERCION]}
    return item


def _failed(result: FileResult) -> dict:
    item: dict = {}
    if result.instance is not None:  # stored-side UIDs only; unknown ones are left out
        item["00081150"] = _ui(result.instance.sop_class_uid)
        item["00081155"] = _ui(result.instance.sop_uid)
    reason = _FAILURE_REASONS.get(result.cause or Cause.UNREADABLE, FAILURE_PROCESSING)
    item["00081197"] = {"vr": "US", "Value": [reason]}
    return item


def _warning(failed: list[FileResult], total: int) -> str:
    """`299 imaging-depot "k of n instances failed: reason; reason"`, quotes removed."""
    reasons = list(dict.fromkeys(r.reason for r in failed if r.reason))
    text = f"{len(failed)} of {total} instances failed"
    if reasons:
        text += ": " + "; ".join(reasons)
    text = text.replace('"', "'").replace("\\", "/")
    return f'299 {SERVICE} "{text[:1000]}"'


def stow_response(base: str, project_id: str, results: list[FileResult]) -> JSONResponse:
    """The PS3.18 Annex I response for the results of one request, with its status."""
    stored = [r.instance for r in results if r.outcome is not Outcome.FAILED and r.instance]
    failed = [r for r in results if r.outcome is Outcome.FAILED]
    body: dict = {}
    studies = {i.study_uid for i in stored}
    if len(studies) == 1:
        body["00081190"] = {"vr": "UR", "Value": [study_url(base, project_id, studies.pop())]}
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": [_failed(r) for r in failed]}
    if stored:
        body["00081199"] = {"vr": "SQ", "Value": [_referenced(base, project_id, i) for i in stored]}
    headers = {}
    if not failed:
        code = status.HTTP_200_OK
    elif stored:
        code = status.HTTP_202_ACCEPTED
    elif all(r.cause in _CONFLICTS for r in failed):
        code = status.HTTP_409_CONFLICT
    else:
        code = status.HTTP_400_BAD_REQUEST
    if failed:
        headers["Warning"] = _warning(failed, len(results))
    return JSONResponse(body, code, headers=headers, media_type=DICOM_JSON)


def in_study(expected: str | None) -> AcceptCheck | None:
    """The check of `POST …/studies/{study}`: every instance is of that (stored) study."""
    if expected is None:
        return None

    def accept(instance: InstanceResult) -> str | None:
        if instance.study_uid != expected:
            return "the instance's StudyInstanceUID differs from the one in the path"
        return None

    return accept


def add_stow_routes(
    router: APIRouter, studies_path: str, endpoint: Callable, guard: Callable, name: str
) -> None:
    """`POST {studies_path}` and `POST {studies_path}/{study_uid}`, with the STOW-RS schema."""
    for path, route_name in (
        (studies_path, name),
        (f"{studies_path}/{{study_uid}}", f"{name}_study"),
    ):
        router.add_api_route(
            path,
            endpoint,
            methods=["POST"],
            dependencies=[Depends(guard)],
            response_class=JSONResponse,
            responses=STOW_RESPONSES,
            openapi_extra={"requestBody": STOW_REQUEST_BODY},
            name=route_name,
        )


class MetadataRefresher:
    """Series metadata brought up to date once a STOW-RS answer is sent, coalesced.

    Concurrent requests into one series (a PACS pushing with several connections) each mark
    it; a series already waiting is not queued again, and is unmarked just before its
    refresh starts, so a change landing during the refresh queues one more. The refresh
    waits `delay` seconds first, so that a series pushed request after request is rebuilt
    once per delay rather than after every request: each rebuild serializes and compresses
    the whole document, which made a long push quadratic in the series' size. A failed or
    pending refresh only leaves the document stale: WADO-RS rebuilds stale metadata when read.
    """

    def __init__(self, stores: Callable[[], Stores], delay: float = 0.0) -> None:
        self._stores = stores
        self._delay = delay
        self._waiting: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def mark(self, project_id: str, series_uids: list[str]) -> list[str]:
        """The series of `series_uids` not already waiting, now waiting."""
        with self._lock:
            new = [uid for uid in series_uids if (project_id, uid) not in self._waiting]
            self._waiting.update((project_id, uid) for uid in new)
        return new

    async def refresh_later(self, project_id: str, series_uids: list[str]) -> None:
        """`refresh` after the delay, off the event loop (a response's background task:
        uvicorn serves the connection's next request meanwhile)."""
        if self._delay:
            await asyncio.sleep(self._delay)
        await run_in_threadpool(self.refresh, project_id, series_uids)

    def refresh(self, project_id: str, series_uids: list[str]) -> None:
        for uid in series_uids:
            with self._lock:
                self._waiting.discard((project_id, uid))
            try:
                refresh_series(self._stores(), project_id, [uid])
            except (BlobStoreError, SQLAlchemyError, OSError):
                continue  # stale until read or the next change (see the class doc)


class StowService:
    """One boundary's STOW-RS handler; the stores open on the first request (opening the
    index connects to it), sharing the process's vault."""

    def __init__(self, settings: Settings, vault: Vault) -> None:
        self.settings = settings
        self.stores = lazy_stores(settings, vault)
        self.metadata = MetadataRefresher(self.stores, settings.metadata_refresh_delay)

    def project(self, project_id: str) -> Project:
        try:
            return get_project(self.settings, project_id)
        except ProjectError as exc:
            raise HTTPException(status.HTTP_404_NOT_FOUND, detail="not found") from exc

    async def store(
        self,
        request: Request,
        project: Project,
        *,
        accept: AcceptCheck | None = None,
        policy: HeaderPolicy | None = None,
    ) -> JSONResponse:
        """Write the body's parts to scratch, store them, answer per Annex I; the series
        metadata is refreshed after the answer is sent, once the delay has passed
        (MetadataRefresher)."""
        boundary = _boundary(request.headers.get("content-type"))
        stores = await run_in_threadpool(self.stores)
        with scratch_run(stores.scratch, project.id) as run_dir:
            try:
                paths = await _write_parts(request, boundary, run_dir / "parts")
            except MultipartError as exc:
                raise _bad_request(f"malformed multipart: {exc}") from exc
            if not paths:
                raise _bad_request("the multipart body holds no part")
            try:
                results, _report = await run_in_threadpool(
                    functools.partial(
                        ingest_written,
                        stores,
                        project,
                        paths,
                        accept=accept,
                        policy=policy,
                        refresh_metadata=False,
                    )
                )
            except IngestAborted as exc:
                raise HTTPException(
                    status.HTTP_503_SERVICE_UNAVAILABLE, detail=f"storing stopped: {exc}"
                ) from exc
        base = public_base(request, self.settings.public_url)
        response = stow_response(base, project.id, results)
        waiting = self.metadata.mark(project.id, touched_series(results))
        if waiting:
            response.background = BackgroundTask(self.metadata.refresh_later, project.id, waiting)
        return response
