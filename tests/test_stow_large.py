"""A 1 GiB instance through ingest STOW-RS: streamed end to end, stored whole, memory bounded.

The server runs as its own process (tests/depot_server.py) so its memory can be read from
outside: the resident high-water mark (VmHWM) may not grow by more than MEMORY_BOUND while
it receives, pseudonymizes and stores the instance. The body is sent from a file in chunks,
as a PACS would send it; nothing here holds the gigabyte in memory either.
"""

from __future__ import annotations

import hashlib
import io
import struct
from collections.abc import Iterator
from pathlib import Path

import httpx
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from app.dicom.multipart import new_boundary
from app.store import index_repo
from app.store.encryption import project_blob_store
from app.store.index import index_engine

pytest_plugins = ["tests.depot_server"]

ROWS = COLUMNS = 1024
FRAMES = 512  # x 1024 x 1024 x 2 bytes = 1 GiB of pixel data
PIXEL_BYTES = ROWS * COLUMNS * 2 * FRAMES
MEMORY_BOUND = 300 * 1024**2
CHUNK = 1 << 20


def write_large_instance(path: Path) -> str:
    """A 16-bit multi-frame secondary capture of 1 GiB; returns the SHA-256 of its pixels."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID, ds.PatientName, ds.Modality = "IPP-LARGE-1", "GRANDE^Anne", "OT"
    ds.Rows, ds.Columns, ds.NumberOfFrames = ROWS, COLUMNS, FRAMES
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    header = io.BytesIO()
    ds.save_as(header, enforce_file_format=True)
    digest = hashlib.sha256()
    with open(path, "wb") as out:
        out.write(header.getvalue())
        out.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, PIXEL_BYTES))
        frame = bytes(range(256)) * (ROWS * COLUMNS * 2 // 256)
        for index in range(FRAMES):
            chunk = frame[index:] + frame[:index]  # each frame its own bytes
            digest.update(chunk)
            out.write(chunk)
    return digest.hexdigest()


def body(path: Path, boundary: str) -> Iterator[bytes]:
    yield f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
    with open(path, "rb") as source:
        while chunk := source.read(CHUNK):
            yield chunk
    yield f"\r\n--{boundary}--\r\n".encode()


def test_a_one_gigabyte_stow_is_stored_whole_without_holding_it_in_memory(depot_server, tmp_path):
    source = tmp_path / "large.dcm"
    pixel_sha256 = write_large_instance(source)
    boundary = new_boundary()
    headers = {
        **depot_server.headers("manager"),
        "Content-Type": f'multipart/related; type="application/dicom"; boundary="{boundary}"',
    }
    url = f"{depot_server.url}/projects/alpha/ingest/studies"
    warm = httpx.get(f"{depot_server.url}/readyz", timeout=10)
    assert warm.status_code == 200
    before = depot_server.peak_rss()
    response = httpx.post(url, content=body(source, boundary), headers=headers, timeout=600)
    grown = depot_server.peak_rss() - before
    assert response.status_code == 200, response.text
    assert grown < MEMORY_BOUND, f"peak memory grew by {grown / 2**20:.0f} MiB"
    source.unlink()  # the disk space, before the stored copy is read back

    index = index_engine(depot_server.settings.index_url)
    (instance,) = index_repo.list_instances(index, "alpha")
    assert instance.number_of_frames == FRAMES
    blobs = project_blob_store(depot_server.settings)  # decrypts: at rest it is sealed
    head = dcmread(io.BytesIO(blobs.read_range(instance.blob_key, 0, instance.header_length)))
    assert head.PatientID != "IPP-LARGE-1"
    digest = hashlib.sha256()
    with blobs.open(instance.blob_key) as stored:
        stored.seek(instance.header_length + 12)
        while chunk := stored.read(CHUNK * 8):
            digest.update(chunk)
    assert digest.hexdigest() == pixel_sha256
    index.dispose()
