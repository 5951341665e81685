"""Research STOW-RS: derived objects (SEG, SR, PR, derived images) stored by researchers.

`POST /projects/{project_id}/dicom-web/studies[/{study_uid}]`, for researchers and data
managers. The object must attach to a study already in the project and carry that study's
pseudonymous patient; its UIDs and dates are kept, its free text cleaned, its private
elements removed (`app.pseudo.derived`). Anything else is refused (FailureReason A910, and
a Warning sentence that points at the ingest boundary). The path's study UID, when given, is
a stored (pseudonymous) one and must equal the instance's (A900 otherwise). Request and
response rules are those of `app.dicomweb.stow`.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from app.auth.http import require
from app.auth.roles import Role
from app.config import Settings
from app.dicomweb.stow import StowService, add_stow_routes, in_study
from app.pseudo.derived import DerivedCleaner, StudyPatient
from app.store import index_repo
from app.vault import Vault

READ_WRITE = require(Role.researcher, Role.data_manager)


def research_stow_router(settings: Settings, vault: Vault) -> APIRouter:
    """The research surface's STOW-RS routes."""
    router = APIRouter(tags=["dicomweb"])
    service = StowService(settings, vault)

    async def store_derived(
        request: Request, project_id: str, study_uid: str | None = None
    ) -> JSONResponse:
        """STOW-RS of derived objects into studies already in the project."""
        project = await run_in_threadpool(service.project, project_id)
        stores = await run_in_threadpool(service.stores)

        def study_patient(uid: str) -> StudyPatient | None:
            study = index_repo.get_study(stores.index, project.id, uid)
            if study is None:
                return None
            return StudyPatient(
                study.patient_id or "", study.patient_name or "", study.patient_birth_date or ""
            )

        policy = DerivedCleaner(study_patient)
        return await service.store(request, project, accept=in_study(study_uid), policy=policy)

    add_stow_routes(
        router,
        "/projects/{project_id}/dicom-web/studies",
        store_derived,
        READ_WRITE,
        "stow_derived",
    )
    return router
