"""Accept negotiation for WADO-RS (PS3.18 8.7): which media type and transfer syntax to send.

Pure: no FastAPI and no store, so the rules are testable on their own. `parse_accept` ranks an
Accept header; each `negotiate_*` picks how one kind of resource goes out, or raises
NotAcceptable with a reason safe to return (the WADO routers answer it with 406).

Choices where PS3.18 leaves room or where we depart from it (docs/dicomweb-retrieve.md):

- Instances are `multipart/related; type="application/dicom"`; a single-part
  `application/dicom` is served for one instance only (the optional single-part form); on
  studies and series it is ignored, and if nothing acceptable is left: 406.
- Transfer syntax (8.7.3): `transfer-syntax=*` returns what is stored. *No parameter* returns
  the stored syntax too (not Explicit VR Little Endian): pixel data is never decoded or
  re-encoded on the way in (decision 4), lossy pixels may be sent as stored (8.7.3.1), and
  viewers and pipelines expect the stored bytes (MD5 of PixelData unchanged). The two
  syntaxes web services must not use (Implicit VR LE, Explicit VR Big Endian) are always
  re-encoded as Explicit VR LE: Implicit by rewriting the header only, pixel bytes copied.
  An explicit `transfer-syntax=1.2.840.10008.1.2.1` on compressed data decodes it frame by
  frame (pydicom + pylibjpeg plugins) when a decoder is installed; anything else is 406.
- Frames and pixel bulk data default to `application/octet-stream` uncompressed, as the
  standard says: compressed frames are decoded unless `transfer-syntax=*` (or the stored
  syntax, or its image media type) is asked, in which case they go out as stored.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from app.dicom.frames import PixelLayout, can_decode
from app.dicom.multipart import MultipartError
from app.dicom.multipart import parse_content_type as parse_media_type
from app.dicomweb.rendered import RENDERED_TYPES

EXPLICIT_LE = str(ExplicitVRLittleEndian)
DICOM = "application/dicom"
OCTETS = "application/octet-stream"
DICOM_JSON = "application/dicom+json"
_NOT_FOR_WEB = frozenset({str(ImplicitVRLittleEndian), str(ExplicitVRBigEndian)})  # 8.7.3

# PS3.18 Table 8.7.3-x: the media type of each compressed transfer syntax for frames and bulk
# data, and the default syntax of each media type when Accept names none.
MEDIA_TYPES: dict[str, str] = {
    "1.2.840.10008.1.2.4.50": "image/jpeg",
    "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg",
    "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls",
    "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2",
    "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.4.92": "image/jpx",
    "1.2.840.10008.1.2.4.93": "image/jpx",
    "1.2.840.10008.1.2.4.201": "image/jphc",
    "1.2.840.10008.1.2.4.202": "image/jphc",
    "1.2.840.10008.1.2.4.203": "image/jphc",
    "1.2.840.10008.1.2.5": "image/dicom-rle",
    "1.2.840.10008.1.2.4.100": "video/mpeg",
    "1.2.840.10008.1.2.4.101": "video/mpeg",
    "1.2.840.10008.1.2.4.102": "video/mp4",
    "1.2.840.10008.1.2.4.103": "video/mp4",
    "1.2.840.10008.1.2.4.104": "video/mp4",
    "1.2.840.10008.1.2.4.105": "video/mp4",
    "1.2.840.10008.1.2.4.106": "video/mp4",
    "1.2.840.10008.1.2.4.107": "video/H265",
    "1.2.840.10008.1.2.4.108": "video/H265",
}
_OCTET_TYPES = frozenset({OCTETS, "application/*", "*/*"})
_MULTIPART = ("*/*", "multipart/*", "multipart/related")


class NotAcceptable(Exception):
    """Nothing the request accepts can be served; the message is safe to return (406)."""


def with_syntax(media_type: str, transfer_syntax: str) -> str:
    """A part's or a single-part body's Content-Type naming its transfer syntax."""
    return f"{media_type}; transfer-syntax={transfer_syntax}"


# --- Accept -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MediaRange:
    """One Accept entry: lowercased type/subtype, parameters (names lowercased), q."""

    type: str
    params: dict[str, str]
    q: float

    @property
    def transfer_syntax(self) -> str | None:
        value = self.params.get("transfer-syntax")
        return value.strip() if value is not None else None

    @property
    def part_type(self) -> str | None:
        value = self.params.get("type")
        return value.strip().lower() if value is not None else None


def _split_accept(header: str) -> list[str]:
    """Accept entries split on commas outside quoted strings (`type="a, b"` stays whole)."""
    entries, current, quoted, escaped = [], [], False, False
    for char in header:
        if escaped:
            escaped = False
        elif char == "\\" and quoted:
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == "," and not quoted:
            entries.append("".join(current))
            current = []
            continue
        current.append(char)
    entries.append("".join(current))
    return [e for e in (e.strip() for e in entries) if e]


def parse_accept(header: str | None) -> list[MediaRange]:
    """Accept entries by decreasing q (stable); q=0 and unparsable entries are dropped.

    No Accept at all is `*/*`. Parameters follow RFC 7231: quoted or bare values, any order.
    """
    if header is None or not header.strip():
        return [MediaRange("*/*", {}, 1.0)]
    ranked: list[tuple[float, int, MediaRange]] = []
    for index, entry in enumerate(_split_accept(header)):
        try:
            media_type, params = parse_media_type(entry)
        except MultipartError:
            continue
        try:
            q = float(params.pop("q", "1"))
        except ValueError:
            continue
        if not 0 < q <= 1:
            continue
        ranked.append((-q, index, MediaRange(media_type, params, q)))
    return [media for _, _, media in sorted(ranked, key=lambda r: (r[0], r[1]))]


def accepts_gzip(header: str | None) -> bool:
    """Whether an Accept-Encoding header takes gzip (or `*`) with a q above 0."""
    for entry in (header or "").split(","):
        coding, _, params = entry.strip().partition(";")
        if coding.strip().lower() in ("gzip", "*"):
            q = params.strip().removeprefix("q=").strip() if params.strip().startswith("q=") else ""
            try:
                return not q or float(q) > 0
            except ValueError:
                return False
    return False


# --- instances ----------------------------------------------------------------------------------


def instance_syntax(requested: str | None, stored: str) -> str | None:
    """The syntax an instance goes out in for a requested `transfer-syntax`, None if none.

    No parameter and `*` give the stored syntax (see the module doc), except the two syntaxes
    web services must not use, which become Explicit VR LE.
    """
    if requested in (None, "*", stored) and stored not in _NOT_FOR_WEB:
        return stored
    if requested in (None, "*", EXPLICIT_LE) and stored in _NOT_FOR_WEB:
        return EXPLICIT_LE
    if requested == EXPLICIT_LE and stored != DeflatedExplicitVRLittleEndian:
        return EXPLICIT_LE if can_decode(stored) else None
    return None


def negotiate_instances(
    accept: list[MediaRange], stored: list[str], *, single_allowed: bool
) -> tuple[bool, str | None]:
    """(single part?, requested transfer-syntax) of the first Accept entry every instance can
    be served in; NotAcceptable otherwise."""
    for media in accept:
        if media.type in _MULTIPART:
            part = media.part_type or DICOM
            if media.type == "*/*":
                part = DICOM
            if part != DICOM:
                continue
            single = False
        elif media.type == DICOM and single_allowed:
            single = True
        else:
            continue
        requested = media.transfer_syntax
        if all(instance_syntax(requested, ts) is not None for ts in stored):
            return single, requested
    raise NotAcceptable(
        'instances are sent as multipart/related; type="application/dicom" with their stored '
        "transfer syntax (transfer-syntax=*) or Explicit VR Little Endian when it can be "
        "decoded; none of the accepted media types can be served"
    )


# --- frames and bulk data -----------------------------------------------------------------------


@dataclass(frozen=True)
class PixelChoice:
    """How frames go out: the part media type, the transfer syntax, and whether to decode."""

    media_type: str
    transfer_syntax: str
    decode: bool

    @property
    def content_type(self) -> str:
        return with_syntax(self.media_type, self.transfer_syntax)


def _pixel_choice(media: MediaRange, part: str, layout: PixelLayout) -> PixelChoice | None:
    """Whether frames of `layout` can be sent as `part` with the entry's transfer syntax."""
    stored = layout.transfer_syntax
    requested = media.transfer_syntax
    if not layout.encapsulated:
        if part in _OCTET_TYPES and requested in (None, "*", EXPLICIT_LE, stored):
            return PixelChoice(OCTETS, EXPLICIT_LE, decode=False)
        return None
    own_type = MEDIA_TYPES.get(stored)
    if part in _OCTET_TYPES:
        if requested in (None, EXPLICIT_LE):
            return PixelChoice(OCTETS, EXPLICIT_LE, True) if can_decode(stored) else None
        if requested in ("*", stored):
            return PixelChoice(OCTETS, stored, decode=False)
        return None
    if own_type is not None and part in (own_type, "image/*") and requested in (None, "*", stored):
        return PixelChoice(own_type, stored, decode=False)
    return None


def negotiate_pixels(
    accept: list[MediaRange], layout: PixelLayout, *, single_allowed: bool
) -> tuple[bool, PixelChoice]:
    """(single part?, choice) for frames or pixel bulk data; NotAcceptable when nothing fits."""
    for media in accept:
        if media.type in _MULTIPART:
            part = OCTETS if media.type == "*/*" else (media.part_type or OCTETS)
            single = False
        elif single_allowed and (media.type == OCTETS or media.type in MEDIA_TYPES.values()):
            part, single = media.type, True
        else:
            continue
        choice = _pixel_choice(media, part, layout)
        if choice is not None:
            return single, choice
    reason = (
        "frames are sent uncompressed as application/octet-stream, or as stored with "
        "transfer-syntax=* or the stored syntax's media type"
    )
    if layout.encapsulated and not can_decode(layout.transfer_syntax):
        reason += "; no decoder is installed for this transfer syntax"
    raise NotAcceptable(reason)


def negotiate_octets(accept: list[MediaRange], *, single_allowed: bool) -> bool:
    """Single part? for bulk data that is not pixel data (always uncompressed octets)."""
    for media in accept:
        if media.type in _MULTIPART:
            if media.type == "*/*" or (media.part_type or OCTETS) in _OCTET_TYPES:
                return False
        elif single_allowed and media.type == OCTETS:
            return True
    raise NotAcceptable('bulk data is sent as multipart/related; type="application/octet-stream"')


# --- metadata and rendered ----------------------------------------------------------------------


def negotiate_metadata(accept: list[MediaRange]) -> None:
    for media in accept:
        if media.type in (DICOM_JSON, "application/json", "application/*", "*/*"):
            return
    raise NotAcceptable("metadata is served as application/dicom+json only")


def negotiate_rendered(accept: list[MediaRange]) -> str:
    for media in accept:
        if media.type in RENDERED_TYPES:
            return media.type
        if media.type in ("image/*", "*/*"):
            return "image/jpeg"
    raise NotAcceptable("rendered images are served as image/jpeg or image/png")
