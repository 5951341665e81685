"""multipart/related (RFC 2387 over RFC 2046 5.1) for WADO-RS responses and STOW-RS requests.

Both directions stream: a part's body goes through in the chunks it comes in, so a 1 GB
instance costs a bounded amount of memory (about `max(64 KiB, largest chunk)` when reading).

Writing: the boundary is random per message (`new_boundary`), never derived from the
content: a fixed boundary ends up inside binary DICOM sooner or later (DICOM-RST PR #59).

Reading follows the RFC 2046 grammar rather than the shortcuts that broke peers
(FIELD-NOTES 1.4): the Content-Type boundary may be quoted or bare, parameters come in any
order; a preamble before the first boundary and an epilogue after the closing one are
ignored; a delimiter is CRLF "--" boundary, then optional transport padding (spaces, tabs)
and CRLF; the close delimiter has "--" after the boundary and may end the input without
its CRLF. "CRLF--boundary" followed by anything else is body data, not a delimiter (a
stricter reading than "the boundary must not occur in a body", which binary bodies cannot
promise). Line ends are CRLF only: a bare LF is data. The search
for the delimiter resumes where the previous one stopped, so it is linear in the stream
length whatever the chunk sizes (1-byte chunks included).
"""

from __future__ import annotations

import re
import secrets
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from dataclasses import dataclass

CRLF = b"\r\n"
MAX_BOUNDARY = 70  # RFC 2046 5.1.1, what we write
# What we read: Orthanc 1.10's STOW-RS client sends two UUIDs joined, 73 characters. Being
# strict here would refuse a PACS's push for no safety gain; the characters stay checked.
MAX_READ_BOUNDARY = 200
DEFAULT_MAX_HEADER_SIZE = 16 * 1024
_MIN_EMIT = 64 * 1024  # coalesce tiny input chunks into body chunks of at least this size
_MAX_PADDING = 1024  # transport padding (whitespace) allowed after a boundary
_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"  # RFC 7230 tchar
_MEDIA_TYPE = re.compile(rf"\s*({_TOKEN})/({_TOKEN})\s*")
_BARE_VALUE = r"[!#$%&'*+\-.^_`|~0-9A-Za-z/]+"  # a token, plus "/": `type=application/dicom`
_PARAMETER = re.compile(rf'\s*;\s*(?:({_TOKEN})\s*=\s*(?:({_BARE_VALUE})|"((?:[^"\\]|\\.)*)"))?\s*')
_QUOTED_PAIR = re.compile(r"\\(.)")
_BCHARS = re.compile(r"[0-9A-Za-z'()+_,\-./:=? ]*[0-9A-Za-z'()+_,\-./:=?]")
_HEADER_NAME = re.compile(_TOKEN)


class MultipartError(ValueError):
    """The multipart message or its Content-Type is malformed; the message says why."""


@dataclass(frozen=True)
class Part:
    """One part to write: its headers (Content-Type, Content-Location...) and its body.

    `body` is bytes, or an async iterable of byte chunks (bytes, or memoryviews of buffers
    read into) that is consumed only while the part is written, so a body can be read from a
    file or a blob store as it goes out.
    """

    headers: dict[str, str]
    body: AsyncIterable[bytes | memoryview] | bytes


# --- Content-Type -------------------------------------------------------------------------


def new_boundary() -> str:
    """A fresh random boundary (192 bits, hex): never found in content except by chance."""
    return secrets.token_hex(24)


def _quoted(value: str) -> str:
    """A parameter value as a token when it is one, else as a quoted-string."""
    if re.fullmatch(_TOKEN, value):
        return value
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def content_type(boundary: str, part_type: str, transfer_syntax: str | None = None) -> str:
    """The multipart/related Content-Type of a message (PS3.18 8.7.3.5.1 dcm-multipart).

    `type` is always quoted (its "/" is a tspecial), the boundary is quoted only when it
    needs to be, so peers that mishandle quoted boundaries (Orthanc #190) read ours.
    """
    _check_boundary(boundary)
    value = f'multipart/related; type="{part_type}"; boundary={_quoted(boundary)}'
    if transfer_syntax is not None:
        value += f"; transfer-syntax={_quoted(transfer_syntax)}"
    return value


def parse_content_type(header: str) -> tuple[str, dict[str, str]]:
    """The media type (lowercased) and its parameters (names lowercased, values as sent).

    Values may be tokens or quoted-strings with backslash escapes (RFC 7231 3.1.1.1); both
    give the same value. Whitespace around ";" and "=" is tolerated, and so is a bare value
    with a "/" (`type=application/dicom`, as Orthanc sends and old PS3.18 examples show).
    Raises MultipartError on anything else: missing subtype, a parameter without "=", an
    unterminated quote, a repeated parameter, trailing garbage.
    """
    match = _MEDIA_TYPE.match(header)
    if match is None:
        raise MultipartError("not a media type (type/subtype expected)")
    media_type = f"{match[1]}/{match[2]}".lower()
    params: dict[str, str] = {}
    pos = match.end()
    while pos < len(header):
        param = _PARAMETER.match(header, pos)
        if param is None or param.end() == pos:
            raise MultipartError(f"malformed media type parameter at position {pos}")
        pos = param.end()
        if param[1] is None:
            continue  # an empty parameter (";;" or a trailing ";")
        name = param[1].lower()
        if name in params:
            raise MultipartError(f"parameter {name!r} given twice")
        params[name] = param[2] if param[2] is not None else _QUOTED_PAIR.sub(r"\1", param[3])
    return media_type, params


def _check_boundary(boundary: str, limit: int = MAX_BOUNDARY) -> None:
    """RFC 2046 5.1.1: 1 to 70 characters from bchars, not ending with a space (`limit`
    is raised for reading, see MAX_READ_BOUNDARY)."""
    if len(boundary) > limit or not _BCHARS.fullmatch(boundary):
        raise MultipartError(
            f"invalid boundary: 1 to {limit} characters of letters, digits and '()+_,-./:=? "
            "not ending with a space"
        )


# --- writing ------------------------------------------------------------------------------


def _part_head(boundary: bytes, headers: dict[str, str], first: bool) -> bytes:
    """The delimiter line and header block that open a part."""
    lines = [boundary if first else CRLF + boundary]
    for name, value in headers.items():
        if not _HEADER_NAME.fullmatch(name) or "\r" in value or "\n" in value:
            raise MultipartError(f"invalid part header {name!r}")  # no header injection
        try:
            lines.append(f"{name}: {value}".encode("latin-1"))
        except UnicodeEncodeError as exc:
            raise MultipartError(f"part header {name!r} is not Latin-1") from exc
    return CRLF.join(lines) + CRLF + CRLF


def message_length(boundary: str, parts: Iterable[tuple[dict[str, str], int]]) -> int:
    """The exact length of `write_parts`' message for parts of these (headers, body length).

    Lets a response whose part sizes are known go out with a Content-Length instead of
    chunked transfer coding (uvicorn copies every chunk once more to frame it).
    """
    _check_boundary(boundary)
    dash_boundary = b"--" + boundary.encode("ascii")
    length = 0
    first = True
    for headers, body_length in parts:
        length += len(_part_head(dash_boundary, headers, first)) + body_length
        first = False
    return length + len((b"" if first else CRLF) + dash_boundary + b"--" + CRLF)


async def write_parts(
    parts: AsyncIterable[Part], boundary: str
) -> AsyncIterator[bytes | memoryview]:
    """The message body, chunk by chunk: each part's head, then its body chunks unchanged.

    Nothing is buffered beyond one part head, so memory does not depend on body sizes. The
    message is `--B CRLF head CRLF CRLF body (CRLF --B ...)* CRLF --B-- CRLF`; with no part
    at all only the close delimiter is written (RFC 2046 wants one part: callers that may
    have none should answer with another status instead).
    """
    _check_boundary(boundary)
    dash_boundary = b"--" + boundary.encode("ascii")
    first = True
    async for part in parts:
        yield _part_head(dash_boundary, part.headers, first)
        first = False
        if isinstance(part.body, bytes | bytearray | memoryview):
            if part.body:
                yield bytes(part.body)
            continue
        async for chunk in part.body:
            if chunk:
                yield chunk
    yield (b"" if first else CRLF) + dash_boundary + b"--" + CRLF


# --- reading ------------------------------------------------------------------------------


class _Stream:
    """The input with a look-ahead buffer; the delimiter search never rescans a byte twice.

    The buffer starts with a CRLF so that a boundary at the very start of the body (the
    usual case: no preamble) is found by the same search as every later delimiter.
    """

    def __init__(self, chunks: AsyncIterable[bytes], boundary: str) -> None:
        self._chunks = chunks.__aiter__()
        self.buf = bytearray(CRLF)
        self.eof = False
        self.delimiter = CRLF + b"--" + boundary.encode("ascii")
        self.closed = False

    async def fill(self) -> bool:
        """Read one more chunk into the buffer; False at the end of the input."""
        while not self.eof:
            try:
                chunk = await self._chunks.__anext__()
            except StopAsyncIteration:
                self.eof = True
                break
            if chunk:
                self.buf += chunk
                return True
        return False

    async def need(self, count: int) -> bool:
        """At least `count` bytes buffered; False if the input ends first."""
        while len(self.buf) < count:
            if not await self.fill():
                return False
        return True

    def take(self, count: int) -> bytes:
        data = bytes(self.buf[:count])
        del self.buf[:count]  # O(1) amortized at the front of a bytearray
        return data

    async def until_delimiter(self, limit: int, what: str, missing: str) -> AsyncIterator[bytes]:
        """Yield the data before the next delimiter, consume the delimiter line, then stop.

        Sets `self.closed` when it was the close delimiter. More than `limit` bytes of data
        raise MultipartError, and so does the end of the input before a delimiter (`missing`
        says what that means).
        """
        size, scan_from = 0, 0
        keep = len(self.delimiter) - 1  # a delimiter may straddle the next chunk
        while True:
            at = self.buf.find(self.delimiter, scan_from)
            if at >= 0:
                line = await self._delimiter_line(at)
                if line is None:
                    scan_from = at + 1  # "CRLF--boundary" followed by data: not a delimiter
                    continue
                size += at
                if size > limit:
                    raise MultipartError(f"{what} larger than {limit} bytes")
                if at:
                    yield self.take(at)
                self._consume_delimiter_line(*line)
                return
            ready = len(self.buf) - keep
            if ready >= _MIN_EMIT or (self.eof and ready > 0):
                size += ready
                if size > limit:
                    raise MultipartError(f"{what} larger than {limit} bytes")
                yield self.take(ready)
            scan_from = max(0, len(self.buf) - keep)
            if not await self.fill():
                raise MultipartError(missing)

    async def _delimiter_line(self, at: int) -> tuple[bool, int] | None:
        """(is the close delimiter, length of the delimiter line) for the boundary found at
        `at`, or None when the bytes after it make it body data.

        A delimiter line is "--" boundary, optional whitespace, CRLF; the close delimiter has
        "--" after the boundary and may also end the input without its CRLF.
        """
        after = at + len(self.delimiter)
        close = await self.need(after + 2) and self.buf[after : after + 2] == b"--"
        pos = await self._after_padding(after + 2 if close else after)
        if pos is None:
            return None
        if await self.need(pos + 2):
            return (close, pos + 2 - at) if self.buf[pos : pos + 2] == CRLF else None
        if close and self.buf[pos:] in (b"", b"\r"):
            return True, len(self.buf) - at
        raise MultipartError("truncated message: it ends inside a boundary line")

    async def _after_padding(self, pos: int) -> int | None:
        """The position after the transport padding (spaces, tabs) that starts at `pos`;
        None past `_MAX_PADDING`, a bounded look-ahead (no sender pads that much)."""
        start = pos
        while await self.need(pos + 1) and self.buf[pos] in (0x20, 0x09):
            pos += 1
            if pos - start > _MAX_PADDING:
                return None
        return pos

    def _consume_delimiter_line(self, close: bool, length: int) -> None:
        """Drop the delimiter line at the start of the buffer; after the close delimiter,
        stop reading: the epilogue is ignored."""
        self.closed = close
        if close:
            self.buf.clear()
            self.eof = True
        else:
            del self.buf[:length]

    async def headers(self, limit: int) -> dict[str, str]:
        """The header block of a part, up to its empty line; names lowercased."""
        if not await self.need(2):
            raise MultipartError("truncated message: it ends before a part's headers")
        if self.buf[:2] == CRLF:
            del self.buf[:2]
            return {}
        scan_from = 0
        while (end := self.buf.find(CRLF + CRLF, scan_from)) < 0:
            if len(self.buf) > limit:
                raise MultipartError(f"part headers longer than {limit} bytes")
            scan_from = max(0, len(self.buf) - 3)
            if not await self.fill():
                raise MultipartError("truncated message: it ends inside a part's headers")
        if end > limit:
            raise MultipartError(f"part headers longer than {limit} bytes")
        block = self.take(end).decode("latin-1")
        del self.buf[:4]
        return _parse_headers(block)


def _parse_headers(block: str) -> dict[str, str]:
    """RFC 5322 style header lines; obsolete folded lines are unfolded, names lowercased."""
    headers: dict[str, str] = {}
    name = None
    for line in block.split("\r\n"):
        if line[:1] in (" ", "\t") and name is not None:
            headers[name] = f"{headers[name]} {line.strip()}".strip()
            continue
        name, colon, value = line.partition(":")
        name = name.strip().lower()
        if not colon or not _HEADER_NAME.fullmatch(name):
            raise MultipartError("malformed part header line")  # content never echoed
        headers[name] = value.strip()
    return headers


async def read_parts(
    stream: AsyncIterable[bytes],
    boundary: str,
    *,
    max_part_size: int,
    max_parts: int,
    max_header_size: int = DEFAULT_MAX_HEADER_SIZE,
) -> AsyncIterator[tuple[dict[str, str], AsyncIterator[bytes]]]:
    """Parse a multipart body as it arrives: yields (headers, body chunks) for each part.

    Header names are lowercased ("content-type", "content-location"). The body iterator reads
    from the same input, so it is valid only until the next part is requested: consume it
    first. A body left unread (or half read) is skipped, still within `max_part_size` and
    without being kept in memory. The preamble is skipped within `max_part_size` too.

    Raises MultipartError: boundary never found, a truncated message (no close delimiter),
    headers over `max_header_size`, more than `max_parts` parts, a body over `max_part_size`.
    A message with a close delimiter and no part yields nothing: answering that is the
    caller's call.
    """
    _check_boundary(boundary, MAX_READ_BOUNDARY)
    src = _Stream(stream, boundary)
    missing = f"boundary {boundary!r} not found in the message"
    async for _ in src.until_delimiter(max_part_size, "preamble", missing):
        pass  # RFC 2046: the preamble is to be ignored
    count = 0
    while not src.closed:
        count += 1
        if count > max_parts:
            raise MultipartError(f"more than {max_parts} parts")
        headers = await src.headers(max_header_size)
        missing = f"truncated message: part {count} has no closing delimiter"
        body = src.until_delimiter(max_part_size, f"part {count}", missing)
        yield headers, body
        async for _ in body:
            pass  # the caller did not drain it: skip the rest
