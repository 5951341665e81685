"""Ingest STOW-RS (PS3.18 10.5): identifiable instances in, pseudonymized instances stored.

`POST /projects/{project_id}/ingest/studies[/{study_uid}]`, for data managers only. The body
is `multipart/related; type="application/dicom"` (boundary and type quoted or bare, any
parameter order); anything else is 415. Each part is streamed to its own file in the
project's ingest scratch folder (`app.ingest.scratch_run`), never held in memory, then goes
through the same per-file ingest as `depot ingest` (`app.ingest.ingest_written`): only the
pseudonymized copy is stored, the original bytes are deleted with the scratch folder.

Choices the standard leaves to us (FIELD-NOTES 1.3):

- The whole body is read before anything is ingested: a malformed message (bad or missing
  boundary, no close delimiter, a part or the part count over the limits) is 400 and stores
  nothing, not even the complete parts before the error.
- Every instance is coerced (pseudonymized), so every ReferencedSOPSequence item carries
  WarningReason B000. That alone does not make the answer 202: 200 means every instance is
  stored (or was already), 202 that some were stored and some failed, 400 that none was
  stored because of bad parts, 409 that none was stored because of conflicts only (content
  differing from what is stored under the same UID, or a study mismatch).
- FailureReason: C000 cannot understand (not DICOM, truncated, not a storable instance),
  0110 processing failure (store conflict, scratch I/O), A900 StudyInstanceUID differing from
  the one in the path. The path carries the *original* study UID (this is the identifiable
  side); it is compared, pseudonymized with the project's keys, with the stored instance's.
- UIDs in the response are the stored, pseudonymized ones; a failed part whose UIDs are not
  known (unreadable) has none. OriginalAttributesSequence is never returned nor stored.
  Error texts never quote a value from the data.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Depends, HTTPException, Request, status
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from app.auth.http import require
from app.auth.roles import Role
from app.config import Settings
from app.dicom.multipart import MultipartError, parse_content_type, read_parts
from app.dicomweb.public_base import public_base
from app.dicomweb.urls import instance_url, study_url
from app.ingest import (
    Cause,
    FileResult,
    IngestAborted,
    Outcome,
    Stores,
    ingest_written,
    scratch_run,
)
from app.projects import ProjectError, engine_for, get_project
from app.pseudo.engine import InstanceResult
from app.vault import Vault

DICOM_JSON = "application/dicom+json"
MAX_PART_SIZE = 4 * 1024**3  # 4 GiB: a large multiframe instance
MAX_PARTS = 10_000
SERVICE = "imaging-depot"

WARNING_COERCION = 0xB000
FAILURE_CANNOT_UNDERSTAND = 0xC000
FAILURE_PROCESSING = 0x0110
FAILURE_STUDY_MISMATCH = 0xA900
_FAILURE_REASONS = {
    Cause.UNREADABLE: FAILURE_CANNOT_UNDERSTAND,
    Cause.CONFLICT: FAILURE_PROCESSING,
    Cause.REFUSED: FAILURE_STUDY_MISMATCH,
    Cause.IO: FAILURE_PROCESSING,
}
_CONFLICTS = frozenset({Cause.CONFLICT, Cause.REFUSED})

MANAGER = require(Role.data_manager)
_STOW_REQUEST_BODY = {
    "required": True,
    "content": {
        'multipart/related; type="application/dicom"': {
            "schema": {"type": "string", "format": "binary"}
        }
    },
}
_RESPONSES = {
    200: {"description": "all instances stored (each with WarningReason B000: coerced)"},
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
    return {
        "00081150": _ui(instance.sop_class_uid),
        "00081155": _ui(instance.sop_uid),
        "00081190": {"vr": "UR", "Value": [url]},
        "00081196": {"vr": "US", "Value": [WARNING_COERCION]},
    }


def _failed(result: FileResult) -> dict:
    item: dict = {}
    if result.instance is not None:  # pseudonymized UIDs only; unknown ones are left out
        item["00081150"] = _ui(result.instance.sop_class_uid)
        item["00081155"] = _ui(result.instance.sop_uid)
    reason = _FAILURE_REASONS.get(result.cause or Cause.UNREADABLE, FAILURE_PROCESSING)
    item["00081197"] = {"vr": "US", "Value": [reason]}
    return item


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
        headers["Warning"] = f'299 {SERVICE} "{len(failed)} of {len(results)} instances failed"'
    return JSONResponse(body, code, headers=headers, media_type=DICOM_JSON)


def stow_router(settings: Settings, vault: Vault) -> APIRouter:
    """The ingest STOW-RS routes. The stores are opened on the first request (opening the
    index connects to it), sharing the process's vault."""
    router = APIRouter(tags=["ingest"])
    opened: list[Stores] = []

    def stores_() -> Stores:
        if not opened:
            opened.append(Stores.from_settings(settings, vault))
        return opened[0]

    async def store_instances(
        request: Request, project_id: str, study_uid: str | None = None
    ) -> JSONResponse:
        """STOW-RS into the project: each instance is pseudonymized, then stored."""
        stores = await run_in_threadpool(stores_)
        boundary = _boundary(request.headers.get("content-type"))
        try:
            project = get_project(settings, project_id)
        except ProjectError as exc:
            raise HTTPException(status.HTTP_404_NOT_FOUND, detail="not found") from exc
        accept = None
        if study_uid is not None:
            expected = engine_for(project, stores.vault).map_uid(study_uid)

            def accept(instance: InstanceResult) -> str | None:
                if instance.study_uid != expected:
                    return "the instance's StudyInstanceUID differs from the one in the path"
                return None

        with scratch_run(stores.scratch, project.id) as run_dir:
            try:
                paths = await _write_parts(request, boundary, run_dir / "parts")
            except MultipartError as exc:
                raise _bad_request(f"malformed multipart: {exc}") from exc
            if not paths:
                raise _bad_request("the multipart body holds no part")
            try:
                results, _report = await run_in_threadpool(
                    ingest_written, stores, project, paths, run_dir, accept=accept
                )
            except IngestAborted as exc:
                raise HTTPException(
                    status.HTTP_503_SERVICE_UNAVAILABLE, detail=f"ingest stopped: {exc}"
                ) from exc
        base = public_base(request, settings.public_url)
        return stow_response(base, project.id, results)

    for path in (
        "/projects/{project_id}/ingest/studies",
        "/projects/{project_id}/ingest/studies/{study_uid}",
    ):
        router.add_api_route(
            path,
            store_instances,
            methods=["POST"],
            dependencies=[Depends(MANAGER)],
            response_class=JSONResponse,
            responses=_RESPONSES,
            openapi_extra={"requestBody": _STOW_REQUEST_BODY},
            name="stow_ingest" if "study_uid" not in path else "stow_ingest_study",
        )
    return router
