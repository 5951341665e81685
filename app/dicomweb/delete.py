"""DELETE of a study or a series on the research surface, by data managers.

`DELETE /projects/{project_id}/dicom-web/studies/{study}` and
`…/studies/{study}/series/{series}` (the Delete transaction dcm4chee and Orthanc offer; PS3.18
has none). The index rows go first, in one transaction, then the blobs (instances and the
series metadata): a crash in between leaves orphan blobs that `depot sweep` removes, never a
row pointing at a missing blob (decision 5). 204 when removed, 404 when the project has no
such study or series (or the series is in another study): the same answer as another
project's, and no UID is echoed.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException, Response, status
from starlette.concurrency import run_in_threadpool

from app.auth.http import require
from app.auth.roles import Role
from app.config import Settings
from app.ingest import Stores, lazy_stores
from app.store import index_repo
from app.store.blobs import BlobNotFound, BlobStoreError
from app.vault import Vault

MANAGER = require(Role.data_manager)
_RESPONSES = {
    204: {"description": "removed: index rows, instance blobs and series metadata"},
    404: {"description": "no such study or series in this project"},
}


def _delete_blobs(stores: Stores, keys: list[str]) -> None:
    """Best effort once the rows are gone: a blob left behind is an orphan for the sweep."""
    for key in keys:
        try:
            stores.blobs.delete(key)
        except (BlobNotFound, BlobStoreError):
            continue


def delete_router(settings: Settings, vault: Vault) -> APIRouter:
    router = APIRouter(tags=["dicomweb"])
    stores_ = lazy_stores(settings, vault)

    def remove_study(project_id: str, study_uid: str) -> bool:
        stores = stores_()
        if index_repo.get_study(stores.index, project_id, study_uid) is None:
            return False
        _delete_blobs(stores, index_repo.delete_study(stores.index, project_id, study_uid))
        return True

    def remove_series(project_id: str, study_uid: str, series_uid: str) -> bool:
        stores = stores_()
        series = index_repo.get_series(stores.index, project_id, series_uid)
        if series is None or series.study_uid != study_uid:
            return False
        _delete_blobs(stores, index_repo.delete_series(stores.index, project_id, series_uid))
        return True

    @router.delete(
        "/projects/{project_id}/dicom-web/studies/{study_uid}",
        dependencies=[Depends(MANAGER)],
        status_code=status.HTTP_204_NO_CONTENT,
        responses=_RESPONSES,
        name="delete_study",
    )
    async def delete_study(project_id: str, study_uid: str) -> Response:
        """Remove a study: its series, instances, blobs and metadata."""
        if not await run_in_threadpool(remove_study, project_id, study_uid):
            raise HTTPException(status.HTTP_404_NOT_FOUND, detail="not found")
        return Response(status_code=status.HTTP_204_NO_CONTENT)

    @router.delete(
        "/projects/{project_id}/dicom-web/studies/{study_uid}/series/{series_uid}",
        dependencies=[Depends(MANAGER)],
        status_code=status.HTTP_204_NO_CONTENT,
        responses=_RESPONSES,
        name="delete_series",
    )
    async def delete_series(project_id: str, study_uid: str, series_uid: str) -> Response:
        """Remove a series; its study goes too when it was the last one."""
        if not await run_in_threadpool(remove_series, project_id, study_uid, series_uid):
            raise HTTPException(status.HTTP_404_NOT_FOUND, detail="not found")
        return Response(status_code=status.HTTP_204_NO_CONTENT)

    return router
