"""WADO-RS rendered and thumbnail resources (PS3.18 10.4.1.1.5, 9.5) of an instance or frame.

The routes: request parameters (`window`, `viewport`, `quality`; 400 when malformed) and the
Accept header (image/jpeg by default, or image/png) become a `rendered.Rendering`, and one
frame is read by range, decoded and rendered by app.dicomweb.rendered (the pipeline lives
there, without FastAPI). `render` is shared with WADO-URI. An instance without pixel data, or
whose pixels are not an image, is 406; a thumbnail is at most 128 pixels unless a viewport is
given.
"""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import Response

from app.dicom.frames import decode_frame
from app.dicomweb.accept import NotAcceptable, negotiate_rendered
from app.dicomweb.rendered import (
    THUMBNAIL_SIZE,
    Rendering,
    Viewport,
    Window,
    encode,
    parse_quality,
    parse_viewport,
    parse_window,
    to_8bit,
)
from app.dicomweb.wado_context import (
    INSTANCE,
    Route,
    WadoContext,
    accept_of,
    bad_request,
    check_uids,
    find_instance,
    frame_numbers,
    frame_sources,
    invalid_as_400,
    read_header,
)
from app.store.blobs import BlobStore
from app.store.models import Instance


def build_rendering(
    window: Window | None,
    viewport: Viewport | None,
    quality: int | None,
    media_type: str,
    max_size: int | None = None,
) -> Rendering:
    """A Rendering of parsed parameters, the default quality when none was given."""
    return Rendering(
        window=window,
        viewport=viewport,
        quality=quality or Rendering.quality,
        media_type=media_type,
        max_size=max_size,
    )


def render(blobs: BlobStore, instance: Instance, number: int, rendering: Rendering) -> Response:
    """Frame `number` (1-based) of the instance as the image `rendering` asks."""
    header = read_header(blobs, instance)
    layout = header.layout
    if layout is None:
        raise NotAcceptable("this instance has no pixel data that can be rendered")
    [(_, source)] = list(frame_sources(blobs, instance, layout, header.dataset, [number]))
    array, photometric = decode_frame(header.dataset, layout, source())
    if array.ndim == 3 and array.shape[-1] not in (1, 3):
        raise NotAcceptable("this pixel data cannot be rendered as an image")
    display = to_8bit(array, header.dataset, photometric, number - 1, rendering.window)
    with invalid_as_400():
        image = encode(display, rendering)
    return Response(image, media_type=rendering.media_type)


def rendered_routes(ctx: WadoContext) -> list[Route]:
    """Rendered and thumbnail, of the instance's first frame or of one frame."""

    def rendering_of(request: Request, *, thumbnail: bool) -> Rendering:
        media_type = negotiate_rendered(accept_of(request))
        query = request.query_params
        with invalid_as_400():
            window = None if thumbnail or "window" not in query else parse_window(query["window"])
            viewport = parse_viewport(query["viewport"]) if "viewport" in query else None
            quality = parse_quality(query["quality"]) if "quality" in query else None
        max_size = THUMBNAIL_SIZE if thumbnail and viewport is None else None
        return build_rendering(window, viewport, quality, media_type, max_size)

    def rendered_frame(
        request: Request,
        project_id: str,
        uids: tuple[str, str, str],
        frame_list: str,
        thumbnail: bool,
    ) -> Response:
        check_uids(*uids)
        numbers = frame_numbers(frame_list)
        if len(numbers) != 1:
            raise bad_request("a rendered frame is one frame number")
        wanted = rendering_of(request, thumbnail=thumbnail)
        instance = find_instance(ctx.index, project_id, *uids)
        return render(ctx.blobs, instance, numbers[0], wanted)

    def rendered(
        request: Request, project_id: str, study_uid: str, series_uid: str, sop_uid: str
    ) -> Response:
        """The instance rendered as image/jpeg (default) or image/png (window, viewport,
        quality); a multi-frame instance gives its first frame."""
        uids = (study_uid, series_uid, sop_uid)
        return rendered_frame(request, project_id, uids, "1", thumbnail=False)

    def thumbnail(
        request: Request, project_id: str, study_uid: str, series_uid: str, sop_uid: str
    ) -> Response:
        """A small rendering (at most 128 pixels, or the viewport) of the first frame."""
        uids = (study_uid, series_uid, sop_uid)
        return rendered_frame(request, project_id, uids, "1", thumbnail=True)

    def frame_rendered(
        request: Request,
        project_id: str,
        study_uid: str,
        series_uid: str,
        sop_uid: str,
        frame_list: str,
    ) -> Response:
        """One frame rendered as image/jpeg (default) or image/png."""
        uids = (study_uid, series_uid, sop_uid)
        return rendered_frame(request, project_id, uids, frame_list, thumbnail=False)

    def frame_thumbnail(
        request: Request,
        project_id: str,
        study_uid: str,
        series_uid: str,
        sop_uid: str,
        frame_list: str,
    ) -> Response:
        """A small rendering of one frame."""
        uids = (study_uid, series_uid, sop_uid)
        return rendered_frame(request, project_id, uids, frame_list, thumbnail=True)

    return [
        (f"{INSTANCE}/rendered", rendered, "wado_rendered"),
        (f"{INSTANCE}/thumbnail", thumbnail, "wado_thumbnail"),
        (f"{INSTANCE}/frames/{{frame_list}}/rendered", frame_rendered, "wado_frame_rendered"),
        (f"{INSTANCE}/frames/{{frame_list}}/thumbnail", frame_thumbnail, "wado_frame_thumbnail"),
    ]
