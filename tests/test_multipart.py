"""multipart/related (RFC 2387, RFC 2046 5.1): app.dicom.multipart, written and read back,
read from what a real client writes, and read by a real client."""

from __future__ import annotations

import os
import random
import re
import tracemalloc
import uuid
from collections.abc import AsyncIterator, Iterable

import pytest

from app.dicom.multipart import (
    MultipartError,
    Part,
    content_type,
    message_length,
    new_boundary,
    parse_content_type,
    read_parts,
    write_parts,
)
from tests.samples import sample

pytestmark = pytest.mark.anyio

LIMITS = {"max_part_size": 1 << 30, "max_parts": 1000}
MiB = 1 << 20


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def _aiter(items: Iterable) -> AsyncIterator:
    for item in items:
        yield item


async def _chunked(data: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def _written(parts: list[Part], boundary: str) -> bytes:
    return b"".join([chunk async for chunk in write_parts(_aiter(parts), boundary)])


async def _read(data: bytes, boundary: str, chunk: int = 4096, **limits) -> list:
    """Every part as (headers, body bytes), each body drained before the next part."""
    out = []
    stream = _chunked(data, chunk)
    async for headers, body in read_parts(stream, boundary, **(LIMITS | limits)):
        out.append((headers, b"".join([c async for c in body])))
    return out


# --- Content-Type ------------------------------------------------------------------------------


def test_boundaries_are_random_and_valid_rfc_2046_boundaries():
    boundaries = {new_boundary() for _ in range(100)}
    assert len(boundaries) == 100
    for boundary in boundaries:
        assert re.fullmatch(r"[0-9a-f]{48}", boundary)  # 1 to 70 bchars, no quoting needed


def test_content_type_quotes_the_type_and_carries_the_transfer_syntax():
    value = content_type("abc123", "application/dicom", "1.2.840.10008.1.2.1")
    assert value == (
        'multipart/related; type="application/dicom"; boundary=abc123; '
        "transfer-syntax=1.2.840.10008.1.2.1"
    )
    assert parse_content_type(value) == (
        "multipart/related",
        {
            "type": "application/dicom",
            "boundary": "abc123",
            "transfer-syntax": "1.2.840.10008.1.2.1",
        },
    )
    # a boundary that is no token is quoted
    assert content_type("a:b c", "application/octet-stream").endswith('boundary="a:b c"')


@pytest.mark.parametrize(
    ("header", "params"),
    [
        # quoted boundary (dicomweb-client, and what broke Orthanc STOW #190)
        (
            'multipart/related; type="application/dicom"; boundary="0f3c-70e0"',
            {"type": "application/dicom", "boundary": "0f3c-70e0"},
        ),
        # bare boundary, parameters in another order
        (
            'multipart/related; boundary=0f3c-70e0; type="application/dicom"',
            {"boundary": "0f3c-70e0", "type": "application/dicom"},
        ),
        # names and media type are case-insensitive; values keep their case
        (
            'Multipart/Related;Type="application/dicom+json";BOUNDARY=AbC',
            {"type": "application/dicom+json", "boundary": "AbC"},
        ),
        # bare type with a "/" as Orthanc and old PS3.18 examples send it
        (
            "multipart/related; type=application/dicom; boundary=x",
            {"type": "application/dicom", "boundary": "x"},
        ),
        # escaped quote and backslash in a quoted-string; spaces in a boundary
        (
            r'multipart/related; boundary="a \"b\" c\\d"; start="<1@x>"',
            {"boundary": 'a "b" c\\d', "start": "<1@x>"},
        ),
        # whitespace around ";" and "=", an empty trailing parameter
        ("multipart/related ; boundary = x ;", {"boundary": "x"}),
    ],
)
def test_content_type_parameters_parse_in_any_form(header, params):
    assert parse_content_type(header) == ("multipart/related", params)


@pytest.mark.parametrize(
    "header",
    [
        "",
        "multipart",
        "multipart/",
        "/related",
        "multipart/related; boundary",
        'multipart/related; boundary="abc',
        "multipart/related; boundary=a; boundary=b",
        "multipart/related boundary=abc",
        "multipart/related; =abc",
        "multipart/related; boundary=a b",
        "multipart/related; boundary=<abc>",
    ],
)
def test_malformed_content_types_are_refused_with_a_reason(header):
    with pytest.raises(MultipartError) as caught:
        parse_content_type(header)
    assert isinstance(caught.value, ValueError)
    assert len(str(caught.value)) > 10


@pytest.mark.parametrize("boundary", ["", "x" * 201, "ends with space ", "é", "a;b"])
async def test_invalid_boundaries_are_refused(boundary):
    with pytest.raises(MultipartError):
        content_type(boundary, "application/dicom")
    with pytest.raises(MultipartError):
        await _written([Part({}, b"x")], boundary)
    with pytest.raises(MultipartError):
        await _read(b"--x--", boundary)


async def test_we_write_rfc_boundaries_but_read_orthancs_longer_ones():
    orthanc_style = f"{uuid.uuid4()}-{uuid.uuid4()}"  # Orthanc 1.10's STOW-RS client: 73
    assert len(orthanc_style) == 73
    with pytest.raises(MultipartError):
        content_type(orthanc_style, "application/dicom")
    message = f"--{orthanc_style}\r\n\r\nbody\r\n--{orthanc_style}--".encode()
    parts = await _read(message, orthanc_style)
    assert [body for _headers, body in parts] == [b"body"]


# --- round trips ---------------------------------------------------------------------------------


def _tricky_body(rng: random.Random, boundary: bytes, size: int) -> bytes:
    """Random bytes mixed with CR, LF, "--" and boundaries that are not delimiters: cut
    short, followed by a byte that is not padding, not preceded by CRLF."""
    pieces = [
        b"\r",
        b"\n",
        b"\r\n",
        b"--",
        b"\r\n--",
        b"\r\n\r\n",
        b"\r\n--" + boundary + b"X",
        b"\r\n--" + boundary + b" X",  # padding, then data: still no delimiter
        b"\r\n-" + boundary,
        b"x--" + boundary + b"--",
        b"\r\n--" + boundary + b"--X",  # a close delimiter only when CRLF or the end follows
        b"y" + boundary + b"y",
    ]
    out = bytearray()
    while len(out) < size:
        if rng.random() < 0.5:
            out += rng.choice(pieces)
        elif rng.random() < 0.5:
            out += b"\r\n--" + boundary[: rng.randrange(len(boundary))] + b"\0"
        else:
            out += rng.randbytes(rng.randrange(1, 64))
    body = bytes(out)
    real_delimiter = re.escape(b"\r\n--" + boundary) + rb"(--)?[ \t]*(\r\n|$)"
    assert re.search(real_delimiter, body) is None
    return body


def _parts(rng: random.Random, boundary: str, count: int, size: int) -> list[Part]:
    parts = []
    for index in range(count):
        body = _tricky_body(rng, boundary.encode(), rng.randrange(size)) if index % 4 else b""
        headers = {"Content-Type": "application/dicom", "Content-Location": f"/i/{index}"}
        parts.append(Part(headers, body))
    return parts


@pytest.mark.parametrize(("chunk", "size"), [(1, 3000), (7, 20000), (4096, 200000), (MiB, 3 * MiB)])
async def test_written_parts_read_back_identical_at_any_chunk_size(chunk, size):
    rng = random.Random(chunk)
    boundary = new_boundary()
    parts = _parts(rng, boundary, 9, size)
    read = await _read(await _written(parts, boundary), boundary, chunk)
    assert [body for _, body in read] == [part.body for part in parts]
    assert [headers for headers, _ in read] == [
        {"content-type": "application/dicom", "content-location": f"/i/{i}"} for i in range(9)
    ]


@pytest.mark.parametrize("count", [0, 1, 2, 9])
async def test_the_announced_length_is_the_written_length(count):
    """A retrieval sent as stored announces its Content-Length from the parts' sizes."""
    rng = random.Random(count)
    boundary = new_boundary()
    parts = _parts(rng, boundary, count, 5000)
    if parts:  # a streamed body counts the same as a whole one
        parts[0] = Part(parts[0].headers, _aiter([b"abc", b"", b"defg"]))
    sizes = [7 if i == 0 else len(p.body) for i, p in enumerate(parts)]
    announced = message_length(boundary, zip([p.headers for p in parts], sizes, strict=True))
    assert announced == len(await _written(parts, boundary))
    with pytest.raises(MultipartError):
        message_length("bad boundary ", [])


async def test_streamed_bodies_are_written_chunk_by_chunk_unchanged():
    boundary = "b0und"
    body = [b"\r\n--b0un", b"d", b"X\r\n", b""]
    data = await _written([Part({"Content-Type": "a/b"}, _aiter(body))], boundary)
    assert data == b"--b0und\r\nContent-Type: a/b\r\n\r\n\r\n--b0undX\r\n\r\n--b0und--\r\n"
    assert await _read(data, boundary, 1) == [({"content-type": "a/b"}, b"\r\n--b0undX\r\n")]


async def test_writing_nothing_gives_only_the_close_delimiter():
    assert await _written([], "b") == b"--b--\r\n"
    assert await _read(b"--b--\r\n", "b") == []


async def test_preamble_and_epilogue_are_ignored():
    data = (
        b"This is the preamble.\r\n--b--not a delimiter\r\n"
        b"--b\r\nA: 1\r\n\r\none\r\n--b\r\n\r\ntwo\r\n--b--\r\nepilogue\r\n--b\r\nX: 1\r\n\r\nno"
    )
    for chunk in (1, 5, 1000):
        assert await _read(data, "b", chunk) == [({"a": "1"}, b"one"), ({}, b"two")]


async def test_transport_padding_after_boundaries_is_allowed():
    data = b"--b \t \r\nA: 1\r\n\r\none\r\n--b  \r\n\r\ntwo\r\n--b--  \r\n"
    assert await _read(data, "b", 3) == [({"a": "1"}, b"one"), ({}, b"two")]


async def test_folded_headers_are_unfolded():
    data = b"--b\r\nContent-Type: application/dicom;\r\n transfer-syntax=1.2\r\n\r\nx\r\n--b--"
    assert await _read(data, "b") == [
        ({"content-type": "application/dicom; transfer-syntax=1.2"}, b"x")
    ]


async def test_bodies_left_unread_are_skipped():
    boundary = new_boundary()
    parts = [Part({"N": str(i)}, os.urandom(100_000)) for i in range(3)]
    data = await _written(parts, boundary)
    seen = []
    async for headers, body in read_parts(_chunked(data, 4096), boundary, **LIMITS):
        seen.append(headers["n"])
        if headers["n"] == "1":
            await body.__anext__()  # half read
    assert seen == ["0", "1", "2"]


# --- errors ----------------------------------------------------------------------------------


async def test_every_truncation_is_an_error():
    data = await _written([Part({"A": "1"}, b"body\r\n--"), Part({}, b"")], "bb")
    assert data.endswith(b"--bb--\r\n")
    for cut in range(len(data) - 2):  # up to "--bb-": the close delimiter is incomplete
        for chunk in (1, 4096):
            with pytest.raises(MultipartError):
                await _read(data[:cut], "bb", chunk)
    assert len(await _read(data[:-2], "bb")) == 2  # the CRLF after "--bb--" is optional


async def test_garbage_without_the_boundary_is_an_error():
    with pytest.raises(MultipartError, match="not found"):
        await _read(os.urandom(10_000), new_boundary())
    with pytest.raises(MultipartError, match="not found"):
        await _read(b"--other\r\n\r\nx\r\n--other--\r\n", "b")


async def test_lf_only_line_ends_are_not_delimiters():
    with pytest.raises(MultipartError):
        await _read(b"--b\nA: 1\n\nx\n--b--\n", "b")


async def test_malformed_part_headers_are_an_error():
    with pytest.raises(MultipartError, match="header"):
        await _read(b"--b\r\nno colon here\r\n\r\nx\r\n--b--", "b")


@pytest.mark.parametrize("chunk", [7, 4096])
async def test_limits_are_enforced_while_streaming(chunk):
    boundary = new_boundary()
    data = await _written([Part({"A": "1"}, b"x" * 5000) for _ in range(3)], boundary)
    assert len(await _read(data, boundary, chunk, max_part_size=5000, max_parts=3)) == 3
    with pytest.raises(MultipartError, match="larger than 4999"):
        await _read(data, boundary, chunk, max_part_size=4999)
    with pytest.raises(MultipartError, match="more than 2 parts"):
        await _read(data, boundary, chunk, max_parts=2)
    long_header = await _written([Part({"A": "x" * 20_000}, b"")], boundary)
    with pytest.raises(MultipartError, match="headers longer"):
        await _read(long_header, boundary, chunk, max_header_size=16_384)
    with pytest.raises(MultipartError, match="preamble larger"):
        await _read(b"p" * 6000 + data, boundary, chunk, max_part_size=5000)


async def test_header_injection_is_refused_when_writing():
    with pytest.raises(MultipartError):
        await _written([Part({"Content-Location": "/a\r\nX-Evil: 1"}, b"")], "b")
    with pytest.raises(MultipartError):
        await _written([Part({"Bad Name": "1"}, b"")], "b")


# --- streaming and cost -----------------------------------------------------------------------


async def _repeated(block: bytes, total: int) -> AsyncIterator[bytes]:
    for _ in range(total // len(block)):
        yield block  # the same object each time: the source itself allocates nothing


async def test_a_200_mb_body_streams_through_in_bounded_memory():
    boundary = new_boundary()
    total = 200 * MiB
    block = os.urandom(MiB)
    parts = _aiter([Part({"Content-Type": "application/dicom"}, _repeated(block, total))])
    tracemalloc.start()
    try:
        received = 0
        written = write_parts(parts, boundary)
        async for _, body in read_parts(written, boundary, max_part_size=total, max_parts=1):
            async for chunk in body:
                received += len(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert received == total
    assert peak < 8 * MiB, peak  # a few 1 MiB chunks in flight, never the body


# --- a real client -------------------------------------------------------------------------------


async def test_a_stow_body_written_by_dicomweb_client_is_read():
    from dicomweb_client import web

    files = [sample("CT_small.dcm").read_bytes(), sample("MR_small.dcm").read_bytes()]
    header = 'multipart/related; type="application/dicom"; boundary="0f3cf5c0-70e0-41ef"'
    body = web.DICOMwebClient._encode_multipart_message(files, header)
    media_type, params = parse_content_type(header)
    assert (media_type, params["type"]) == ("multipart/related", "application/dicom")
    # it opens with CRLF (an empty preamble) and ends without the final CRLF
    assert body.startswith(b"\r\n--") and body.endswith(b"--")
    for chunk in (7, 4096):
        parts = await _read(body, params["boundary"], chunk)
        assert parts == [({"content-type": "application/dicom"}, data) for data in files]


class _Response:
    """Just what dicomweb-client's multipart decoder uses of a requests.Response."""

    def __init__(self, headers: dict[str, str], content: bytes) -> None:
        self.headers = headers
        self.content = content

    def iter_content(self, chunk_size: int):
        return (self.content[i : i + 4096] for i in range(0, len(self.content), 4096))

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None


async def test_dicomweb_client_reads_what_we_write():
    from dicomweb_client import api

    files = [sample("CT_small.dcm").read_bytes(), b"", sample("MR_small.dcm").read_bytes()]
    boundary = new_boundary()
    parts = [Part({"Content-Type": "application/dicom"}, data) for data in files]
    response = _Response(
        {"content-type": content_type(boundary, "application/dicom")},
        await _written(parts, boundary),
    )
    client = api.DICOMwebClient("http://127.0.0.1:9")  # never contacted
    decoded = list(client._decode_multipart_message(response, stream=True))
    assert decoded == files
