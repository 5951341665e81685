"""WADO-RS instance retrieval (PS3.18 10.4.1.1.1): a study, a series or one instance as Part 10.

The transfer syntax each instance goes out in is `accept.instance_syntax`'s (rules in
app.dicomweb.accept). Here the bodies are produced: the stored blob streamed unchanged when
its syntax is kept, else Explicit VR LE, with Implicit VR LE rewritten in its header only (the
pixel bytes copied by range) and compressed pixel data decoded frame by frame. Every body is
streamed in chunks read on worker threads, one multipart part per instance; a study or series
is read a step ahead, about a MiB of instances per step (`wado_context.threaded_parts`), and a
stored blob is read straight into the buffers sent (decrypted into them when sealed).
"""

from __future__ import annotations

import functools
import io
import struct
from collections.abc import Iterator

from fastapi import Request
from fastapi.responses import Response, StreamingResponse
from pydicom import dcmread, dcmwrite
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRBigEndian, ImplicitVRLittleEndian

from app import telemetry
from app.dicom.frames import DecodeError, PixelLayout, decode_frame, native_bytes
from app.dicom.multipart import message_length, new_boundary
from app.dicom.part10 import encode_dataset, encode_file_meta
from app.dicomweb.accept import (
    DICOM,
    EXPLICIT_LE,
    instance_syntax,
    negotiate_instances,
    with_syntax,
)
from app.dicomweb.urls import instance_url
from app.dicomweb.wado_context import (
    INSTANCE,
    SERIES,
    STUDY,
    Route,
    WadoContext,
    accept_of,
    blob_chunks,
    check_uids,
    find_instance,
    find_instances,
    frame_sources,
    multipart,
    native_pixel_chunks,
    read_ahead,
    read_header,
    threaded_parts,
)
from app.store.blobs import BlobStore
from app.store.models import Instance

# --- bodies -------------------------------------------------------------------------------------


def _explicit_header(
    ds: Dataset, instance: Instance, layout: PixelLayout, length: int, decoded: str | None
) -> bytes:
    """Preamble, file meta and data set in Explicit VR LE, then the pixel element header.

    `decoded` is the photometric interpretation of decoded frames (None when the pixel bytes
    are copied): colour becomes interleaved RGB, the offset tables of encapsulated data go.
    """
    meta = ds.file_meta
    if decoded is not None:
        ds.PhotometricInterpretation = decoded
        if int(ds.get("SamplesPerPixel", 1) or 1) > 1:
            ds.PlanarConfiguration = 0
        for tag in (0x7FE00001, 0x7FE00002):
            if tag in ds:
                del ds[tag]
    file_meta = encode_file_meta(
        instance.sop_class_uid,
        instance.sop_uid,
        EXPLICIT_LE,
        str(meta.get("ImplementationClassUID") or "1.2.826.0.1.3680043.8.498.1"),
        str(meta.get("ImplementationVersionName") or ""),
    )
    body = encode_dataset(ds, implicit=False, little=True)
    vr = layout.vr if layout.vr in ("OB", "OW", "OF", "OD") else "OW"
    if layout.tag == 0x7FE00010 and decoded is not None:
        vr = "OB" if layout.bits_allocated <= 8 else "OW"
    pixel = struct.pack("<HH2s2xL", layout.tag >> 16, layout.tag & 0xFFFF, vr.encode(), length)
    return bytes(128) + b"DICM" + file_meta + body + pixel


def _reencoded_whole(blobs: BlobStore, instance: Instance) -> bytes:
    """An instance without pixel data (SR, KOS, RT…) in Explicit VR LE: small, read whole.

    pydicom converts the encoding; binary values other than pixel data (rare here) keep
    their byte order (a pydicom limitation for Big Endian sources).
    """
    with blobs.open(instance.blob_key) as stream:
        ds = dcmread(io.BytesIO(stream.read()), force=True)
    ds.file_meta.TransferSyntaxUID = EXPLICIT_LE
    out = io.BytesIO()
    try:
        dcmwrite(out, ds, enforce_file_format=True)
    except (ValueError, TypeError, struct.error) as exc:
        raise DecodeError("the instance cannot be re-encoded") from exc
    return out.getvalue()


def _converted_chunks(blobs: BlobStore, instance: Instance) -> Iterator[bytes]:
    """An instance in Explicit VR LE: header rewritten, pixel bytes copied or decoded."""
    header = read_header(blobs, instance)
    layout = header.layout
    if layout is None:
        yield _reencoded_whole(blobs, instance)
        return
    stored = instance.transfer_syntax_uid
    native = stored in (str(ImplicitVRLittleEndian), str(ExplicitVRBigEndian))
    if native and layout.value_length is not None:
        # Native pixels need no decoding: copied (Implicit VR LE), or swapped per word (BE).
        yield _explicit_header(header.dataset, instance, layout, layout.value_length, None)
        yield from native_pixel_chunks(blobs, instance, layout)
        return
    frame_length = layout.rows * layout.columns * layout.samples * layout.bits_allocated // 8
    total = frame_length * layout.frames
    frames = frame_sources(blobs, instance, layout, header.dataset, range(1, layout.frames + 1))
    first = None
    for number, source in frames:
        array, photometric = decode_frame(header.dataset, layout, source())
        if first is None:
            first = photometric
            yield _explicit_header(header.dataset, instance, layout, total + total % 2, photometric)
        data = native_bytes(array, layout.bits_allocated)
        if len(data) != frame_length:
            raise DecodeError(f"frame {number} decodes to an unexpected size")
        yield data
    if total % 2:
        yield b"\0"


def instance_chunks(
    blobs: BlobStore, instance: Instance, syntax: str
) -> Iterator[bytes | memoryview]:
    """The instance as a Part 10 file in `syntax` (its stored one or Explicit VR LE)."""
    if syntax == instance.transfer_syntax_uid:
        yield from telemetry.counted_wado(blob_chunks(blobs, instance.blob_key, instance.size))
    else:
        yield from telemetry.counted_wado(_converted_chunks(blobs, instance))


def sent_as_stored(instances: list[Instance], syntaxes: list[str]) -> bool:
    """Whether every instance goes out as stored: `instance_chunks` then gives exactly its
    indexed size, and the response's length is known before it starts."""
    return all(s == i.transfer_syntax_uid for i, s in zip(instances, syntaxes, strict=True))


def instance_response(
    blobs: BlobStore, instance: Instance, syntax: str, media_type: str
) -> StreamingResponse:
    """One instance as a single-part answer (WADO-RS application/dicom, WADO-URI)."""
    chunks = read_ahead(instance_chunks(blobs, instance, syntax))
    known = sent_as_stored([instance], [syntax])
    headers = {"Content-Length": str(instance.size)} if known else None
    return StreamingResponse(chunks, media_type=media_type, headers=headers)


# --- routes -------------------------------------------------------------------------------------


def instance_routes(ctx: WadoContext) -> list[Route]:
    """Study, series and instance retrieval."""

    def instances_response(
        request: Request, project_id: str, instances: list[Instance], *, one: bool
    ) -> Response:
        accept = accept_of(request)
        stored = [i.transfer_syntax_uid for i in instances]
        single, requested = negotiate_instances(accept, stored, single_allowed=one)
        blobs = ctx.blobs
        base = ctx.base_of(request)

        syntaxes = [
            instance_syntax(requested, i.transfer_syntax_uid) or EXPLICIT_LE for i in instances
        ]
        if single:
            media_type = with_syntax(DICOM, syntaxes[0])
            return instance_response(blobs, instances[0], syntaxes[0], media_type)

        heads = [
            {
                "Content-Type": with_syntax(DICOM, syntax),
                "Content-Location": instance_url(
                    base, project_id, instance.study_uid, instance.series_uid, instance.sop_uid
                ),
            }
            for instance, syntax in zip(instances, syntaxes, strict=True)
        ]
        bodies = (
            functools.partial(instance_chunks, blobs, instance, syntax)
            for instance, syntax in zip(instances, syntaxes, strict=True)
        )
        # Sent as stored, every size is known: with a Content-Length, uvicorn no longer
        # copies each chunk to frame it (chunked coding). A 500-slice series by curl: 274 ms
        # chunked, 230 ms with the length (bench/dicomweb.py's data).
        boundary, length = new_boundary(), None
        if sent_as_stored(instances, syntaxes):
            sizes = (i.size for i in instances)
            length = message_length(boundary, zip(heads, sizes, strict=True))
        parts = threaded_parts(heads, bodies)
        return multipart(parts, DICOM, boundary=boundary, length=length)

    def retrieve_study(request: Request, project_id: str, study_uid: str) -> Response:
        """The study's instances, multipart/related; type="application/dicom"."""
        check_uids(study_uid)
        instances = find_instances(ctx.index, project_id, study_uid)
        return instances_response(request, project_id, instances, one=False)

    def retrieve_series(
        request: Request, project_id: str, study_uid: str, series_uid: str
    ) -> Response:
        """The series' instances, multipart/related; type="application/dicom"."""
        check_uids(study_uid, series_uid)
        instances = find_instances(ctx.index, project_id, study_uid, series_uid)
        return instances_response(request, project_id, instances, one=False)

    def retrieve_instance(
        request: Request, project_id: str, study_uid: str, series_uid: str, sop_uid: str
    ) -> Response:
        """One instance: multipart (or single-part application/dicom when asked)."""
        check_uids(study_uid, series_uid, sop_uid)
        instance = find_instance(ctx.index, project_id, study_uid, series_uid, sop_uid)
        return instances_response(request, project_id, [instance], one=True)

    return [
        (STUDY, retrieve_study, "wado_study"),
        (SERIES, retrieve_series, "wado_series"),
        (INSTANCE, retrieve_instance, "wado_instance"),
    ]
