"""WADO-URI (PS3.18 9 / 6.2 of older editions) at `/projects/{project_id}/wado`.

One query string names an instance (`requestType=WADO`, `studyUID`, `seriesUID`, `objectUID`,
all required: 400) and what to send: `contentType` application/dicom (the Part 10 file, in
`transferSyntax` if given, with the same rules as WADO-RS), or image/jpeg (the default) or
image/png (a rendered frame, with `windowCenter`/`windowWidth`, `rows`/`columns`,
`imageQuality`, `frameNumber`). Anything else is 406. `frameNumber` out of range is 400, as
8.2.7 says (WADO-RS answers 404 for a frame that does not exist).
"""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import Response
from starlette.datastructures import QueryParams

from app.auth.http import check_study
from app.dicomweb.accept import DICOM, NotAcceptable, instance_syntax
from app.dicomweb.rendered import (
    RENDERED_TYPES,
    Rendering,
    parse_quality,
    parse_viewport,
    parse_window,
)
from app.dicomweb.wado_context import (
    Route,
    WadoContext,
    bad_request,
    check_uids,
    find_instance,
    invalid_as_400,
)
from app.dicomweb.wado_instances import instance_response
from app.dicomweb.wado_rendered import build_rendering, render


def _uri_rendering(query: QueryParams, media_type: str) -> Rendering:
    with invalid_as_400():
        window = None
        if "windowCenter" in query or "windowWidth" in query:
            if not ("windowCenter" in query and "windowWidth" in query):
                raise ValueError("windowCenter and windowWidth go together")
            window = parse_window(f"{query['windowCenter']},{query['windowWidth']}")
        viewport = None
        if "rows" in query or "columns" in query:
            rows = query.get("rows") or str(8192)
            columns = query.get("columns") or str(8192)
            viewport = parse_viewport(f"{columns},{rows}")
        quality = parse_quality(query["imageQuality"]) if "imageQuality" in query else None
    return build_rendering(window, viewport, quality, media_type)


def uri_routes(ctx: WadoContext) -> list[Route]:
    """The one WADO-URI route."""

    def wado_uri(request: Request, project_id: str) -> Response:
        """WADO-URI: requestType=WADO&studyUID=&seriesUID=&objectUID=[&contentType=...]."""
        query = request.query_params
        if query.get("requestType") != "WADO":
            raise bad_request("requestType must be WADO")
        uids = [query.get(name) for name in ("studyUID", "seriesUID", "objectUID")]
        if any(not uid for uid in uids):
            raise bad_request("studyUID, seriesUID and objectUID are required")
        check_uids(*uids)
        study_uid, series_uid, sop_uid = (str(u) for u in uids)
        check_study(request.state.principal, study_uid)  # a grant limited to some studies
        wanted = [
            t.split(";")[0].strip().lower()
            for t in query.get("contentType", "image/jpeg").split(",")
        ]
        media_type = next((t for t in wanted if t in (DICOM, *RENDERED_TYPES)), None)
        if media_type is None:
            raise NotAcceptable("contentType is application/dicom, image/jpeg or image/png")
        instance = find_instance(ctx.index, project_id, study_uid, series_uid, sop_uid)
        if media_type == DICOM:
            if "frameNumber" in query:
                raise bad_request("frameNumber is not allowed with application/dicom")
            syntax = instance_syntax(query.get("transferSyntax"), instance.transfer_syntax_uid)
            if syntax is None:
                raise NotAcceptable("the requested transfer syntax cannot be produced")
            return instance_response(ctx.blobs, instance, syntax, DICOM)
        rendering = _uri_rendering(query, media_type)
        number = 1
        if "frameNumber" in query:
            text = query["frameNumber"]
            if (
                not text.isascii()
                or not text.isdigit()
                or not 0 < int(text) <= (instance.number_of_frames or 1)
            ):
                raise bad_request("frameNumber is not a frame of this instance")
            number = int(text)
        return render(ctx.blobs, instance, number, rendering)

    return [("/projects/{project_id}/wado", wado_uri, "wado_uri")]
