"""WADO-RS frames and bulk data (PS3.18 10.4.1.1.3/4): pixel bytes by range, other values too.

Frames are located with app.dicom.frames (native ranges, encapsulated item headers) and read
one by one, never the whole pixel data; how they go out (octets or as stored, decoded or not)
is `accept.negotiate_pixels`'s choice. Big endian pixel data is swapped to little endian on
the way out (8.7.3: big endian is not sent).

- Frame list: malformed (not positive integers, repeated) is 400; a frame beyond the
  instance's frames is 404 (the resource does not exist).
- Bulk data paths are the ones stored metadata names (`<tag>[.<item>.<tag>]…`, anything else
  is 400): the top-level pixel data streams by range like frames, any other binary value
  comes from the header.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable

from fastapi import Request
from fastapi.responses import Response, StreamingResponse
from pydicom.dataset import Dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian
from starlette.concurrency import run_in_threadpool

from app.dicom.frames import (
    Header,
    PixelLayout,
    big_endian_word,
    check_frames,
    decode_frame,
    native_bytes,
    to_little_endian,
)
from app.dicom.multipart import Part
from app.dicomweb.accept import (
    EXPLICIT_LE,
    OCTETS,
    NotAcceptable,
    PixelChoice,
    negotiate_octets,
    negotiate_pixels,
)
from app.dicomweb.urls import instance_url
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
    multipart,
    native_pixel_chunks,
    not_found,
    one_part,
    read_ahead,
    read_header,
)
from app.store.models import Instance

_BULK_PATH = re.compile(r"[0-9A-Fa-f]{8}(\.[0-9]{1,6}\.[0-9A-Fa-f]{8})*")

# --- bytes --------------------------------------------------------------------------------------


def _frame_body(
    ds: Dataset, layout: PixelLayout, choice: PixelChoice, source: Callable[[], bytes]
) -> bytes:
    data = source()
    if choice.decode:
        array, _ = decode_frame(ds, layout, data)
        return native_bytes(array, layout.bits_allocated)
    if not layout.encapsulated:
        return to_little_endian(data, layout.swap_word)
    return data


def _bulk_value(ds: Dataset, path: str) -> bytes | None:
    """The bytes of the binary element a BulkDataURI path names (`00540016.0.00181072`)."""
    steps = path.upper().split(".")
    current: Dataset = ds
    for depth in range(0, len(steps) - 1, 2):
        tag, item = int(steps[depth], 16), int(steps[depth + 1])
        if tag not in current:
            return None
        element = current[tag]
        if element.VR != "SQ" or item >= len(element.value):
            return None
        current = element.value[item]
    tag = int(steps[-1], 16)
    if tag not in current:
        return None
    element = current[tag]
    value = element.value
    if not isinstance(value, bytes | bytearray):
        return None
    little = getattr(ds, "original_encoding", (False, True))[1] is not False
    if not little and element.VR in ("OW", "OF", "OL", "OD", "OV"):
        return to_little_endian(bytes(value), big_endian_word(element.VR))
    return bytes(value)


# --- routes -------------------------------------------------------------------------------------


def pixel_routes(ctx: WadoContext) -> list[Route]:
    """Frames and bulk data."""

    def pixel_response(
        request: Request,
        instance: Instance,
        header: Header,
        numbers: list[int],
        location: Callable[[int], str],
    ) -> Response:
        layout = header.layout
        assert layout is not None
        accept = accept_of(request)
        single, choice = negotiate_pixels(accept, layout, single_allowed=len(numbers) == 1)
        ds = header.dataset
        sources = list(frame_sources(ctx.blobs, instance, layout, ds, numbers))
        if single:
            body = _frame_body(ds, layout, choice, sources[0][1])
            return Response(body, media_type=choice.content_type)

        async def parts() -> AsyncIterator[Part]:
            for number, source in sources:
                body = await run_in_threadpool(_frame_body, ds, layout, choice, source)
                headers = {
                    "Content-Type": choice.content_type,
                    "Content-Location": location(number),
                }
                yield Part(headers, body)

        return multipart(parts(), choice.media_type, choice.transfer_syntax)

    def instance_header(instance: Instance) -> Header:
        header = read_header(ctx.blobs, instance)
        if header.layout is None:
            if instance.transfer_syntax_uid == DeflatedExplicitVRLittleEndian:
                raise NotAcceptable("frames of deflated instances are not available")
            raise not_found("the instance has no pixel data")
        return header

    def retrieve_frames(
        request: Request,
        project_id: str,
        study_uid: str,
        series_uid: str,
        sop_uid: str,
        frame_list: str,
    ) -> Response:
        """Frames (1-based, comma-separated), one part each."""
        check_uids(study_uid, series_uid, sop_uid)
        numbers = frame_numbers(frame_list)
        instance = find_instance(ctx.index, project_id, study_uid, series_uid, sop_uid)
        header = instance_header(instance)
        assert header.layout is not None
        check_frames(header.layout, numbers)
        url = instance_url(ctx.base_of(request), project_id, study_uid, series_uid, sop_uid)
        return pixel_response(request, instance, header, numbers, lambda n: f"{url}/frames/{n}")

    def retrieve_bulk(
        request: Request,
        project_id: str,
        study_uid: str,
        series_uid: str,
        sop_uid: str,
        bulk_path: str,
    ) -> Response:
        """A BulkDataURI of the metadata: pixel data by range, other values from the header."""
        check_uids(study_uid, series_uid, sop_uid)
        if not _BULK_PATH.fullmatch(bulk_path):
            raise bad_request("malformed bulk data path")
        instance = find_instance(ctx.index, project_id, study_uid, series_uid, sop_uid)
        header = read_header(ctx.blobs, instance)
        url = instance_url(ctx.base_of(request), project_id, study_uid, series_uid, sop_uid)
        location = f"{url}/bulk/{bulk_path}"
        layout = header.layout
        if layout is not None and "." not in bulk_path and int(bulk_path, 16) == layout.tag:
            if not layout.encapsulated:
                return native_pixel_bulk(request, instance, layout, location)
            numbers = list(range(1, layout.frames + 1))
            return pixel_response(request, instance, header, numbers, lambda n: location)
        value = _bulk_value(header.dataset, bulk_path)
        if value is None:
            raise not_found()
        single = negotiate_octets(accept_of(request), single_allowed=True)
        if single:
            return Response(value, media_type=OCTETS)
        return one_part({"Content-Type": OCTETS, "Content-Location": location}, value, OCTETS)

    def native_pixel_bulk(
        request: Request, instance: Instance, layout: PixelLayout, location: str
    ) -> Response:
        """Native pixel data: the whole value streamed by range (big endian swapped)."""
        accept = accept_of(request)
        single, choice = negotiate_pixels(accept, layout, single_allowed=True)
        chunks = read_ahead(native_pixel_chunks(ctx.blobs, instance, layout))
        if single:
            return StreamingResponse(chunks, media_type=choice.content_type)
        headers = {"Content-Type": choice.content_type, "Content-Location": location}
        return one_part(headers, chunks, OCTETS, EXPLICIT_LE)

    return [
        (f"{INSTANCE}/frames/{{frame_list}}", retrieve_frames, "wado_frames"),
        (f"{INSTANCE}/bulk/{{bulk_path}}", retrieve_bulk, "wado_bulk"),
    ]
