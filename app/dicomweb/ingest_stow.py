"""Ingest STOW-RS: identifiable instances in, pseudonymized instances stored.

`POST /projects/{project_id}/ingest/studies[/{study_uid}]`, for data managers only. Every
instance goes through the project's pseudonymization profile (`app.pseudo`); only the
pseudonymized copy is stored, the original bytes are deleted with the scratch folder. The
request and response rules are those of `app.dicomweb.stow`.

The path's study UID is the *original* one (this is the identifiable side): it is compared,
pseudonymized with the project's keys, with the stored instance's (A900 when they differ).
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from app.auth.http import require
from app.auth.roles import Role
from app.config import Settings
from app.dicomweb.stow import STOW_REQUEST_BODY, STOW_RESPONSES, StowService
from app.projects import engine_for
from app.pseudo.engine import InstanceResult
from app.vault import Vault

MANAGER = require(Role.data_manager)


def stow_router(settings: Settings, vault: Vault) -> APIRouter:
    """The ingest STOW-RS routes."""
    router = APIRouter(tags=["ingest"])
    service = StowService(settings, vault)

    async def store_instances(
        request: Request, project_id: str, study_uid: str | None = None
    ) -> JSONResponse:
        """STOW-RS into the project: each instance is pseudonymized, then stored."""
        project = await run_in_threadpool(service.project, project_id)
        accept = None
        if study_uid is not None:
            stores = await run_in_threadpool(service.stores)
            expected = engine_for(project, stores.vault).map_uid(study_uid)

            def accept(instance: InstanceResult) -> str | None:
                if instance.study_uid != expected:
                    return "the instance's StudyInstanceUID differs from the one in the path"
                return None

        return await service.store(request, project, accept=accept)

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
            responses=STOW_RESPONSES,
            openapi_extra={"requestBody": STOW_REQUEST_BODY},
            name="stow_ingest" if "study_uid" not in path else "stow_ingest_study",
        )
    return router
