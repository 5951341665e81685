"""WADO-RS and WADO-URI on the research surface (PS3.18 10.4, 9), on both deployments.

Files are ingested through the pseudonymizer, then read back over HTTP and compared with
what pydicom reads from the stored (pseudonymized) blob and from the original file.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import orjson
import pytest
import requests
from dicomweb_client import DICOMwebClient
from PIL import Image
from pydicom import dcmread
from pydicom.encaps import generate_frames

from app.dicom.multipart import parse_content_type, read_parts
from app.dicomweb.wado_context import blob_chunks
from app.store import index_repo
from app.store.encryption import BlobIntegrityError
from tests.identities import Identity, leaked_tokens, write_injected
from tests.samples import ct_series, sample

pytest_plugins = ["tests.blobstores", "tests.research_server"]

ROOT = "/projects/alpha/dicom-web"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
DICOM_PARTS = 'multipart/related; type="application/dicom"'


# --- helpers -------------------------------------------------------------------------------------


def multipart(response) -> list[tuple[dict[str, str], bytes]]:
    """The parts of a multipart/related response, read with our RFC 2046 reader."""
    return multipart_of(response.content, response.headers["content-type"])


def multipart_of(content: bytes, header: str) -> list[tuple[dict[str, str], bytes]]:
    media_type, params = parse_content_type(header)
    assert media_type == "multipart/related"

    async def collect() -> list[tuple[dict[str, str], bytes]]:
        async def body():
            yield content

        found = []
        async for headers, chunks in read_parts(
            body(), params["boundary"], max_part_size=1 << 30, max_parts=10_000
        ):
            found.append((headers, b"".join([c async for c in chunks])))
        return found

    return asyncio.run(collect())


def ingest(research, paths: list[Path]) -> list:
    report = research.ingest(paths)
    assert not report.failures, report.failures
    return report.stored


def storable(name: str, folder: Path) -> Path:
    """A packaged sample with the UIDs a storable instance needs (some test files lack them)."""
    ds = dcmread(sample(name))
    for keyword, uid in (("StudyInstanceUID", "1.2.826.0.1.3680043.8.498.91"),
                         ("SeriesInstanceUID", "1.2.826.0.1.3680043.8.498.92")):  # fmt: skip
        if not ds.get(keyword):
            setattr(ds, keyword, uid)
    folder.mkdir(parents=True, exist_ok=True)
    ds.save_as(folder / name, enforce_file_format=False)
    return folder / name


def stored(research, sop_uid: str):
    """(index row, stored blob bytes) of an instance."""
    instance = index_repo.get_instance(research.stores.index, "alpha", sop_uid)
    assert instance is not None
    with research.stores.blobs.open(instance.blob_key) as stream:
        return instance, stream.read()


def url_of(result) -> str:
    return (
        f"{ROOT}/studies/{result.study_uid}/series/{result.series_uid}/instances/{result.sop_uid}"
    )


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


class _TestClientAdapter(requests.adapters.BaseAdapter):
    """Lets `requests` (hence dicomweb-client) talk to the in-process TestClient."""

    def __init__(self, client) -> None:
        super().__init__()
        self.client = client

    def send(self, request, **kwargs):
        parts = urlsplit(request.url)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        answer = self.client.request(
            request.method, target, headers=dict(request.headers), content=request.body
        )
        response = requests.Response()
        response.status_code = answer.status_code
        response.headers = requests.structures.CaseInsensitiveDict(answer.headers)
        response.headers.pop("content-encoding", None)  # httpx already decoded the body
        response._content = answer.content
        response.url = request.url
        response.request = request
        response.raw = io.BytesIO(answer.content)
        return response

    def close(self) -> None:
        pass


def dicomweb_client(research) -> DICOMwebClient:
    session = requests.Session()
    session.mount("http://depot.test", _TestClientAdapter(research.client))
    session.headers["Authorization"] = f"Bearer {research.tokens['researcher']}"
    return DICOMwebClient(f"http://depot.test{ROOT}", session=session)


# --- instances -----------------------------------------------------------------------------------


def test_study_series_and_instance_retrieval_return_the_stored_pseudonymized_instances(
    research, tmp_path: Path
):
    originals = ct_series(tmp_path / "in", 3, series=2)
    results = ingest(research, originals)
    study_uid = results[0].study_uid
    original_md5 = md5(dcmread(originals[0]).PixelData)

    response = research.get(f"{ROOT}/studies/{study_uid}", headers={"Accept": DICOM_PARTS})
    assert response.status_code == 200
    # Sent as stored, the message's length is known from the index: announced, and exact.
    assert int(response.headers["content-length"]) == len(response.content)
    media_type, params = parse_content_type(response.headers["content-type"])
    assert (media_type, params["type"]) == ("multipart/related", "application/dicom")
    parts = multipart(response)
    assert len(parts) == 3
    for headers, body in parts:
        assert headers["content-type"] == f"application/dicom; transfer-syntax={EXPLICIT_LE}"
        ds = dcmread(io.BytesIO(body))
        instance, blob = stored(research, ds.SOPInstanceUID)
        assert body == blob  # the stored bytes, untouched
        assert headers["content-location"].endswith(url_of(instance))
        assert md5(ds.PixelData) == original_md5  # decision 4: pixels never re-encoded
    again = research.get(f"{ROOT}/studies/{study_uid}")
    assert parse_content_type(again.headers["content-type"])[1]["boundary"] != params["boundary"]

    one = results[0]
    series = research.get(f"{ROOT}/studies/{study_uid}/series/{one.series_uid}")
    uids = {dcmread(io.BytesIO(body)).SOPInstanceUID for _, body in multipart(series)}
    assert uids == {r.sop_uid for r in results if r.series_uid == one.series_uid}
    [(_, body)] = multipart(research.get(url_of(one)))
    assert body == stored(research, one.sop_uid)[1]
    single = research.get(url_of(one), headers={"Accept": "application/dicom"})
    assert single.status_code == 200 and single.content == body
    assert int(single.headers["content-length"]) == len(body)
    assert single.headers["content-type"].startswith("application/dicom")
    # Single-part application/dicom is for one instance only: a study answers 406.
    refused = research.get(f"{ROOT}/studies/{study_uid}", headers={"Accept": "application/dicom"})
    assert refused.status_code == 406

    client = dicomweb_client(research)
    instances = client.retrieve_study(study_uid, media_types=(("application/dicom", "*"),))
    assert sorted(i.SOPInstanceUID for i in instances) == sorted(r.sop_uid for r in results)
    assert all(md5(i.PixelData) == original_md5 for i in instances)


def test_transfer_syntaxes_are_negotiated_from_the_accept_header(research):
    j2k, implicit = sample("JPEG2000.dcm"), sample("MR_small_implicit.dcm")
    results = {r.sop_uid: r for r in ingest(research, [j2k, implicit])}
    by_syntax = {stored(research, uid)[0].transfer_syntax_uid: r for uid, r in results.items()}
    compressed, native = by_syntax["1.2.840.10008.1.2.4.91"], by_syntax["1.2.840.10008.1.2"]
    blob = stored(research, compressed.sop_uid)[1]

    for accept in (None, f"{DICOM_PARTS}; transfer-syntax=*"):
        headers = {"Accept": accept} if accept else {}
        [(part, body)] = multipart(research.get(url_of(compressed), headers=headers))
        assert body == blob and part["content-type"].endswith("1.2.840.10008.1.2.4.91")

    # An explicit Explicit VR Little Endian request decodes (pylibjpeg / openjpeg).
    accept = f'multipart/related; transfer-syntax={EXPLICIT_LE}; type="application/dicom"'
    [(part, body)] = multipart(research.get(url_of(compressed), headers={"Accept": accept}))
    decoded = dcmread(io.BytesIO(body))
    assert decoded.file_meta.TransferSyntaxUID == EXPLICIT_LE
    assert np.array_equal(decoded.pixel_array, dcmread(io.BytesIO(blob)).pixel_array)
    assert decoded.SOPInstanceUID == compressed.sop_uid

    # Implicit VR is never sent (8.7.3): header re-encoded, pixel bytes copied unchanged.
    # Its size is known only once made: no Content-Length (chunked), for one or many.
    answer = research.get(url_of(native))
    assert "content-length" not in answer.headers
    study = research.get(f"{ROOT}/studies/{native.study_uid}")
    assert len(multipart(study)) == 1 and "content-length" not in study.headers
    [(part, body)] = multipart(answer)
    converted = dcmread(io.BytesIO(body))
    assert converted.file_meta.TransferSyntaxUID == EXPLICIT_LE and not converted.is_implicit_VR
    assert md5(converted.PixelData) == md5(dcmread(implicit).PixelData)
    assert converted.PatientID == dcmread(io.BytesIO(stored(research, native.sop_uid)[1])).PatientID

    # No encoder here: JPEG Baseline cannot be produced from JPEG 2000, q picks the next.
    baseline = f"{DICOM_PARTS}; transfer-syntax=1.2.840.10008.1.2.4.50"
    assert research.get(url_of(compressed), headers={"Accept": baseline}).status_code == 406
    ranked = (
        f'{baseline}; q=0.9, multipart/related; type=application/dicom; transfer-syntax="*"; q=0.5'
    )
    answer = research.get(url_of(compressed), headers={"Accept": ranked})
    assert answer.status_code == 200 and multipart(answer)[0][1] == blob
    for refused in ("text/html", 'multipart/related; type="application/dicom+xml"'):
        answer = research.get(url_of(compressed), headers={"Accept": refused})
        assert answer.status_code == 406 and "detail" in answer.json()


def test_a_blob_not_of_its_indexed_size_is_never_served(research, tmp_path: Path):
    """Responses announce the indexed sizes: a blob that differs cuts them, both ways."""
    [result] = ingest(research, ct_series(tmp_path / "ct", 1))
    instance, blob = stored(research, result.sop_uid)
    blobs = research.stores.blobs
    for altered in (blob[:-1], blob + b"\0"):
        blobs.put(instance.blob_key, [altered])  # sealed again: it authenticates, wrong size
        with pytest.raises(BlobIntegrityError, match="than the index records"):
            list(blob_chunks(blobs, instance.blob_key, instance.size))
        for accept in (DICOM_PARTS, "application/dicom"):
            with pytest.raises(BlobIntegrityError):
                research.get(url_of(result), headers={"Accept": accept})
    blobs.put(instance.blob_key, [blob])
    assert multipart(research.get(url_of(result)))[0][1] == blob


# --- metadata ------------------------------------------------------------------------------------


def test_metadata_is_served_with_absolute_bulk_uris_strong_etags_304_and_gzip(
    research, tmp_path: Path
):
    results = ingest(research, ct_series(tmp_path / "in", 4, series=2))
    study_uid = results[0].study_uid
    one = results[0]
    series_url = f"{ROOT}/studies/{study_uid}/series/{one.series_uid}/metadata"

    plain = research.get(series_url, headers={"Accept-Encoding": "identity"})
    assert plain.status_code == 200
    assert plain.headers["content-type"].startswith("application/dicom+json")
    assert "content-encoding" not in plain.headers
    documents = plain.json()
    assert len(documents) == 2
    uri = documents[0]["7FE00010"]["BulkDataURI"]
    assert uri.startswith("http://testserver/projects/alpha/dicom-web/studies/")

    zipped = research.client.get(
        series_url, headers={**research.headers(), "Accept-Encoding": "gzip"}
    )
    assert zipped.headers["content-encoding"] == "gzip" and zipped.json() == documents
    etag = plain.headers["etag"]
    assert etag.startswith('"') and zipped.headers["etag"] != etag  # one tag per coding
    not_modified = research.get(series_url, headers={"If-None-Match": etag})
    assert not_modified.status_code == 304 and not_modified.content == b""

    proxied = research.get(series_url, headers={"X-Forwarded-Host": "viewer.example.org"})
    assert proxied.json()[0]["7FE00010"]["BulkDataURI"].startswith(
        "http://viewer.example.org/projects/alpha/dicom-web/"
    )
    assert proxied.headers["etag"] != zipped.headers["etag"]  # another base, another ETag
    again = research.get(series_url, headers={"If-None-Match": etag, "X-Forwarded-Host": "x.org"})
    assert again.status_code == 200
    research.settings.public_url = "https://depot.example.org/pacs"
    public = research.get(series_url)
    assert public.json()[0]["7FE00010"]["BulkDataURI"].startswith(
        "https://depot.example.org/pacs/projects/alpha/dicom-web/studies/"
    )
    research.settings.public_url = ""

    study = research.get(f"{ROOT}/studies/{study_uid}/metadata").json()
    assert sorted(d["00080018"]["Value"][0] for d in study) == sorted(r.sop_uid for r in results)
    [instance] = research.get(f"{url_of(one)}/metadata").json()
    assert instance["00080018"]["Value"] == [one.sop_uid]
    assert instance == next(d for d in documents if d["00080018"]["Value"] == [one.sop_uid])

    # The bulk URI answers the stored pixel bytes.
    bulk = research.get(urlsplit(uri).path)
    [(part, body)] = multipart(bulk)
    source = dcmread(io.BytesIO(stored(research, documents[0]["00080018"]["Value"][0])[1]))
    assert body == source.PixelData and part["content-location"] == uri

    # A lost metadata blob is rebuilt on the next request, not a 500.
    series = index_repo.get_series(research.stores.index, "alpha", one.series_uid)
    research.stores.blobs.delete(series.metadata_key)
    rebuilt = research.get(series_url, headers={"Accept-Encoding": "identity"})
    assert rebuilt.status_code == 200 and rebuilt.json() == documents
    assert research.get(series_url, headers={"Accept": "application/dicom+xml"}).status_code == 406


# --- frames and bulk data ------------------------------------------------------------------------


def test_native_frames_are_byte_ranges_of_the_stored_pixel_data(research):
    results = ingest(
        research, [sample("CT_small.dcm"), sample("emri_small.dcm"), sample("liver.dcm")]
    )
    pixels = {r.sop_uid: dcmread(io.BytesIO(stored(research, r.sop_uid)[1])) for r in results}
    for result in results:
        ds = pixels[result.sop_uid]
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        size = len(ds.PixelData) // frames
        asked = [frames, 1] if frames > 1 else [1]
        response = research.get(f"{url_of(result)}/frames/{','.join(map(str, asked))}")
        assert response.status_code == 200
        parts = multipart(response)
        assert [h["content-type"] for h, _ in parts] == [
            f"application/octet-stream; transfer-syntax={EXPLICIT_LE}"
        ] * len(asked)
        for number, (headers, body) in zip(asked, parts, strict=True):
            assert body == ds.PixelData[(number - 1) * size : number * size]
            assert headers["content-location"].endswith(f"/frames/{number}")
        beyond = research.get(f"{url_of(result)}/frames/{frames + 1}")
        assert beyond.status_code == 404
    emri = next(r for r in results if int(pixels[r.sop_uid].get("NumberOfFrames", 1) or 1) == 10)
    client = dicomweb_client(research)
    frames = client.retrieve_instance_frames(emri.study_uid, emri.series_uid, emri.sop_uid, [3])
    assert frames == [pixels[emri.sop_uid].PixelData[2 * 8192 : 3 * 8192]]
    for bad in ("0", "1,1", "a", "-1", "1;2", ""):
        assert research.get(f"{url_of(emri)}/frames/{bad}").status_code in (400, 404)
    assert research.get(f"{url_of(emri)}/frames/0").status_code == 400
    assert research.get(f"{url_of(emri)}/frames/2,2").status_code == 400


def test_encapsulated_frames_are_sent_as_stored_or_decoded(research, tmp_path: Path):
    names = ["JPEG2000.dcm", "SC_rgb_rle_2frame.dcm", "JPEGLSNearLossless_16.dcm"]
    results = ingest(research, [storable(n, tmp_path) for n in names])
    for result in results:
        ds = dcmread(io.BytesIO(stored(research, result.sop_uid)[1]))
        count = int(ds.get("NumberOfFrames", 1) or 1)
        expected = list(generate_frames(ds.PixelData, number_of_frames=count))
        numbers = ",".join(str(n) for n in range(1, count + 1))
        accept = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
        response = research.get(f"{url_of(result)}/frames/{numbers}", headers={"Accept": accept})
        parts = multipart(response)
        assert [body for _, body in parts] == expected
        syntax = ds.file_meta.TransferSyntaxUID
        assert all(h["content-type"].endswith(f"transfer-syntax={syntax}") for h, _ in parts)

        decoded = multipart(research.get(f"{url_of(result)}/frames/1"))[0][1]
        first = ds.pixel_array[0] if count > 1 else ds.pixel_array
        assert decoded == first.astype(first.dtype.newbyteorder("<")).tobytes()

    rle = next(
        r
        for r in results
        if dcmread(io.BytesIO(stored(research, r.sop_uid)[1])).file_meta.TransferSyntaxUID
        == "1.2.840.10008.1.2.5"
    )
    ds = dcmread(io.BytesIO(stored(research, rle.sop_uid)[1]))
    accept = 'multipart/related; type="image/dicom-rle"'
    parts = multipart(research.get(f"{url_of(rle)}/frames/2", headers={"Accept": accept}))
    assert parts[0][0]["content-type"] == "image/dicom-rle; transfer-syntax=1.2.840.10008.1.2.5"
    assert parts[0][1] == list(generate_frames(ds.PixelData, number_of_frames=2))[1]
    assert (
        research.get(
            f"{url_of(rle)}/frames/1", headers={"Accept": 'multipart/related; type="image/jpeg"'}
        ).status_code
        == 406
    )


# --- rendered ------------------------------------------------------------------------------------


def test_rendered_and_thumbnails_are_jpeg_or_png_of_the_right_size_and_window(research):
    results = ingest(
        research, [sample("CT_small.dcm"), sample("JPEG2000.dcm"), sample("emri_small.dcm")]
    )
    by_rows = {dcmread(io.BytesIO(stored(research, r.sop_uid)[1])).Rows: r for r in results}
    ct, j2k, emri = by_rows[128], by_rows[1024], by_rows[64]

    jpeg = research.get(f"{url_of(ct)}/rendered")
    assert jpeg.status_code == 200 and jpeg.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(jpeg.content)).size == (128, 128)
    png = research.get(f"{url_of(ct)}/rendered", headers={"Accept": "image/png"})
    assert png.headers["content-type"] == "image/png"
    default = np.asarray(Image.open(io.BytesIO(png.content)))
    narrow = research.get(
        f"{url_of(ct)}/rendered", params={"window": "40,80,linear"}, headers={"Accept": "image/png"}
    )
    windowed = np.asarray(Image.open(io.BytesIO(narrow.content)))
    assert windowed.shape == default.shape and not np.array_equal(windowed, default)
    assert set(np.unique(windowed)) > {0, 255}  # a narrow window saturates both ends

    thumbnail = research.get(f"{url_of(j2k)}/thumbnail")
    assert Image.open(io.BytesIO(thumbnail.content)).size == (32, 128)  # 256 x 1024, ≤ 128
    viewport = research.get(f"{url_of(ct)}/rendered", params={"viewport": "64,64"})
    assert Image.open(io.BytesIO(viewport.content)).size == (64, 64)
    third = research.get(f"{url_of(emri)}/frames/3/rendered", headers={"Accept": "image/png"})
    first = research.get(f"{url_of(emri)}/rendered", headers={"Accept": "image/png"})
    assert third.status_code == first.status_code == 200 and third.content != first.content
    assert research.get(f"{url_of(emri)}/frames/11/rendered").status_code == 404
    for params in (
        {"quality": "0"},
        {"window": "40"},
        {"window": "a,b,linear"},
        {"viewport": "0,1"},
    ):
        assert research.get(f"{url_of(ct)}/rendered", params=params).status_code == 400
    assert (
        research.get(f"{url_of(ct)}/rendered", headers={"Accept": "text/html"}).status_code == 406
    )


# --- WADO-URI ------------------------------------------------------------------------------------


def test_wado_uri_returns_the_stored_file_or_a_rendered_frame(research):
    results = ingest(research, [sample("CT_small.dcm"), sample("emri_small.dcm")])
    ct = next(r for r in results if stored(research, r.sop_uid)[0].number_of_frames is None)
    emri = next(r for r in results if r is not ct)
    url = "/projects/alpha/wado"

    def query(result, **extra) -> dict:
        return {"requestType": "WADO", "studyUID": result.study_uid,
                "seriesUID": result.series_uid, "objectUID": result.sop_uid, **extra}  # fmt: skip

    dicom = research.get(url, params=query(ct, contentType="application/dicom"))
    assert dicom.status_code == 200 and dicom.content == stored(research, ct.sop_uid)[1]
    jpeg = research.get(url, params=query(ct))
    assert jpeg.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(jpeg.content)).size == (128, 128)
    sized = research.get(url, params=query(ct, rows="32", columns="32"))
    assert Image.open(io.BytesIO(sized.content)).size == (32, 32)
    frame = research.get(url, params=query(emri, frameNumber="10", contentType="image/png"))
    assert frame.status_code == 200 and frame.headers["content-type"] == "image/png"
    assert research.get(url, params=query(emri, frameNumber="11")).status_code == 400
    assert research.get(url, params=query(ct, requestType="OTHER")).status_code == 400
    assert research.get(url, params=query(ct, windowCenter="40")).status_code == 400
    wrong_series = {**query(ct), "seriesUID": emri.series_uid}
    assert research.get(url, params=wrong_series).status_code == 404
    assert research.get(url, params=query(ct, contentType="text/html")).status_code == 406
    assert research.get(url, params=query(ct), who="other").status_code == 404


# --- access and errors ---------------------------------------------------------------------------


def test_unknown_foreign_and_malformed_requests_get_4xx_without_echoing_uids(research):
    [result] = ingest(research, [sample("CT_small.dcm")])
    url = url_of(result)
    for path in (
        url,
        f"{url}/metadata",
        f"{url}/frames/1",
        f"{url}/rendered",
        f"{url}/bulk/7FE00010",
    ):
        assert research.client.get(path).status_code == 401
        foreign = research.get(path, who="other")
        assert foreign.status_code == 404 and result.sop_uid not in foreign.text
        assert research.get(path, who="manager").status_code == 200
    unknown = f"{ROOT}/studies/{result.study_uid}/series/{result.series_uid}/instances/2.25.1"
    for path in (unknown, f"{unknown}/metadata", f"{unknown}/frames/1", f"{ROOT}/studies/2.25.7"):
        answer = research.get(path)
        assert answer.status_code == 404 and answer.json() == {"detail": "not found"}
    wrong_study = f"{ROOT}/studies/2.25.9/series/{result.series_uid}/instances/{result.sop_uid}"
    assert research.get(wrong_study).status_code == 404
    for bad in ("1.2.abc", "9" * 65, "1.2%3Cscript%3E"):
        answer = research.get(f"{ROOT}/studies/{bad}/metadata")
        assert (
            answer.status_code == 400 and "abc" not in answer.text and "script" not in answer.text
        )
    for bulk in ("zz", "7FE00010.x", "00280010"):
        assert research.get(f"{url}/bulk/{bulk}").status_code in (400, 404)


def test_nothing_identifying_leaves_through_any_retrieve(research, tmp_path: Path):
    who = Identity()
    source = write_injected(sample("CT_small.dcm"), tmp_path / "injected.dcm", who)
    [result] = ingest(research, [source])
    url = url_of(result)
    study = f"{ROOT}/studies/{result.study_uid}"
    responses = [
        research.get(path, headers={"Accept-Encoding": "identity"})
        for path in (study, f"{study}/metadata", url, f"{url}/metadata", f"{url}/rendered",
                     f"{url}/frames/1", f"{url}/bulk/7FE00010")
    ]  # fmt: skip
    bodies = [response.content for response in responses]
    assert (
        all(r.status_code == 200 for r in responses)
        and all(bodies)
        and [leaked_tokens(body, who) for body in bodies] == [[]] * len(bodies)
    )
    metadata = orjson.loads(bodies[1])
    assert metadata[0]["00100010"] != {"vr": "PN", "Value": [{"Alphabetic": "QUIMPERLE^Hortensia"}]}
    [(_, instance)] = multipart(responses[2])
    assert md5(dcmread(io.BytesIO(instance)).PixelData) == md5(dcmread(source).PixelData)


# --- pure helpers (no server) --------------------------------------------------------------------


def test_bulk_uris_are_made_absolute_whatever_the_chunking():
    from app.dicomweb.wado_metadata import _absolute, _joined_arrays

    document = orjson.dumps(
        [
            {"7FE00010": {"vr": "OW", "BulkDataURI": f"/projects/p/dicom-web/x/{i}"}}
            for i in range(9)
        ]
        + [{"00081030": {"vr": "LO", "Value": ['"BulkDataURI":"/projects/ in a value']}}]
    )
    expected = document.replace(
        b'"BulkDataURI":"/projects/', b'"BulkDataURI":"https://h.org/base/projects/'
    )
    for size in (1, 2, 7, 25, 26, 64, len(document)):
        chunks = [document[i : i + size] for i in range(0, len(document), size)]
        out = b"".join(_absolute(chunks, "https://h.org/base"))
        assert out == expected
        assert orjson.loads(out)[-1] == orjson.loads(document)[-1]  # values never rewritten
    joined = b"".join(_joined_arrays([[b"[1,", b"2]"], [b"[]"], [b"[", b"3", b"]"]]))
    assert orjson.loads(joined) == [1, 2, 3]


def test_accept_entries_are_ranked_by_q_with_quoted_parameters_kept_whole():
    from app.dicomweb.accept import parse_accept

    ranges = parse_accept(
        'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.50;'
        ' q=0.5, multipart/related;type="image/jpeg, x";q=0.9, text/html;q=0, bad/, */*;q=0.1'
    )
    assert [(r.type, r.part_type, r.q) for r in ranges] == [
        ("multipart/related", "image/jpeg, x", 0.9),
        ("multipart/related", "application/dicom", 0.5),
        ("*/*", None, 0.1),
    ]
    assert ranges[1].transfer_syntax == "1.2.840.10008.1.2.4.50"
    assert [r.type for r in parse_accept(None)] == ["*/*"]


def test_big_endian_values_swap_per_vr_word_not_per_pixel():
    from app.dicom.frames import big_endian_word, to_little_endian

    assert big_endian_word("OW", 8) == 2  # 8-bit pixels in OW words (OBXXXX1A_expb.dcm)
    assert big_endian_word("OB", 8) == 1 and big_endian_word("OF") == 4
    assert big_endian_word("OW", 32) == 4
    assert to_little_endian(b"\x01\x02\x03\x04\x05", 2) == b"\x02\x01\x04\x03\x05"
    assert to_little_endian(b"\x01\x02\x03\x04", 4) == b"\x04\x03\x02\x01"
    assert to_little_endian(b"\x01\x02", 1) == b"\x01\x02"
