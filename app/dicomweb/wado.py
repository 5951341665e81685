"""WADO-RS (PS3.18 10.4) and WADO-URI (PS3.18 9 / 6.2 of older editions) on the research surface.

Routes under `/projects/{project_id}/dicom-web` (and `/projects/{project_id}/wado` for URI
mode), for researchers and data managers. This module assembles them; each resource lives in
its own module, with its choices where PS3.18 leaves room (docs/dicomweb-retrieve.md):

- `accept`: Accept negotiation, media types and transfer syntaxes (pure, no FastAPI);
- `wado_context`: stores, lookups by project, UID checks, the 400/404/406/503 guard;
- `wado_instances`: studies, series and instances as Part 10 (`wado_study`, `wado_series`,
  `wado_instance`);
- `wado_metadata`: DICOM JSON metadata, precomputed, ETag, gzip;
- `wado_pixels`: frames and bulk data;
- `wado_rendered`: rendered and thumbnail images;
- `wado_uri`: WADO-URI.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import Response

from app.auth.http import require
from app.auth.roles import Role, Scope
from app.config import Settings
from app.dicomweb.wado_context import WadoContext, guarded
from app.dicomweb.wado_instances import instance_routes
from app.dicomweb.wado_metadata import metadata_routes
from app.dicomweb.wado_pixels import pixel_routes
from app.dicomweb.wado_rendered import rendered_routes
from app.dicomweb.wado_uri import uri_routes
from app.vault import Vault

READER = require(Role.researcher, Role.data_manager, Role.compute, scope=Scope.dicomweb_read)

_RESPONSES: dict[int | str, dict] = {
    304: {"description": "metadata not modified (If-None-Match)"},
    400: {"description": "malformed UID, frame list or parameter"},
    404: {"description": "no such object in this project, or no such frame"},
    406: {"description": "none of the accepted media types or transfer syntaxes can be served"},
    503: {"description": "the index or the blob store is unavailable"},
}


def wado_router(settings: Settings, vault: Vault | None = None) -> APIRouter:
    """WADO-RS under /projects/{p}/dicom-web, WADO-URI at /projects/{p}/wado (readers only)."""
    router = APIRouter(tags=["dicomweb"], dependencies=[Depends(READER)])
    ctx = WadoContext(settings, vault)
    routes = [
        *instance_routes(ctx),
        *metadata_routes(ctx),
        *pixel_routes(ctx),
        *rendered_routes(ctx),
        *uri_routes(ctx),
    ]
    for path, endpoint, name in routes:
        router.add_api_route(
            path, guarded(endpoint), methods=["GET"], name=name, response_class=Response,
            responses=_RESPONSES,
        )  # fmt: skip
    return router
