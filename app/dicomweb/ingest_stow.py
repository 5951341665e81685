"""Ingest STOW-RS: identifiable instances in, pseudonymized instances stored.

`POST /projects/{project_id}/ingest/studies[/{study_uid}]`, for data managers only. Every
instance goes through the project's pseudonymization profile (`app.pseudo`); only the
pseudonymized copy is stored, the original bytes are deleted with the scratch folder. The
request and response rules are those of `app.dicomweb.stow`.

The path's study UID is the *original* one (this is the identifiable side): it is compared,
pseudonymized with the project's keys, with the stored instance's (A900 when they differ).
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from app.auth.http import require
from app.auth.roles import Role
from app.config import Settings
from app.dicomweb.stow import StowService, add_stow_routes, in_study
from app.projects import engine_for
from app.store.models import Project
from app.vault import Vault

MANAGER = require(Role.data_manager)


def stow_router(settings: Settings, vault: Vault) -> APIRouter:
    """The ingest STOW-RS routes."""
    router = APIRouter(tags=["ingest"])
    service = StowService(settings, vault)

    def stored_study_uid(project: Project, study_uid: str) -> str:
        """The path's original study UID as stored (the vault read stays off the event loop)."""
        return engine_for(project, service.stores().vault).map_uid(study_uid)

    async def store_instances(
        request: Request, project_id: str, study_uid: str | None = None
    ) -> JSONResponse:
        """STOW-RS into the project: each instance is pseudonymized, then stored."""
        project = await run_in_threadpool(service.project, project_id)
        expected = None
        if study_uid is not None:
            expected = await run_in_threadpool(stored_study_uid, project, study_uid)
        return await service.store(request, project, accept=in_study(expected))

    add_stow_routes(
        router, "/projects/{project_id}/ingest/studies", store_instances, MANAGER, "stow_ingest"
    )
    return router
