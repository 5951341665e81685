"""Rendered frames (PS3.18 9.5 Retrieve Rendered, 8.3.5 rendering parameters): DICOM pixels
to a consumer image (JPEG or PNG), following the grayscale pipeline of PS3.3 C.11.

Order: Modality LUT (Rescale Slope/Intercept or Modality LUT Sequence, from the top level or
the functional groups of enhanced objects), then the VOI transform (the `window` parameter,
else the instance's first Window Center/Width with its VOI LUT Function, else its VOI LUT
Sequence, else the frame's own minimum and maximum), then MONOCHROME1 inversion. Colour
(RGB, and YBR decoded to RGB by pydicom) passes through, scaled to 8 bits; PALETTE COLOR goes
through its palette first. Windowing is written here rather than taken from pydicom's
`apply_windowing`: that function maps into the *input* range (for a later presentation LUT),
while a rendered image needs 8-bit output, and the three VOI functions of C.11.2.1.2/3
(LINEAR, LINEAR_EXACT, SIGMOID) are a few lines each.

No FastAPI here: parameters come in as strings and ValueError carries a reason that is safe
to return (it never repeats a data value).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut

THUMBNAIL_SIZE = 128
DEFAULT_QUALITY = 90
MAX_VIEWPORT = 8192
RENDERED_TYPES = ("image/jpeg", "image/png")
_FUNCTIONS = {"linear": "LINEAR", "linear-exact": "LINEAR_EXACT", "linear_exact": "LINEAR_EXACT",
              "sigmoid": "SIGMOID"}  # fmt: skip


@dataclass(frozen=True)
class Window:
    center: float
    width: float
    function: str = "LINEAR"


@dataclass(frozen=True)
class Viewport:
    width: int
    height: int
    source: tuple[int, int, int, int] | None = None  # sx, sy, sw, sh (negative = flip)


@dataclass(frozen=True)
class Rendering:
    """What the request asks: all optional; `max_size` bounds thumbnails."""

    window: Window | None = None
    viewport: Viewport | None = None
    quality: int = DEFAULT_QUALITY
    media_type: str = "image/jpeg"
    max_size: int | None = None


# --- parameters -----------------------------------------------------------------------------


def _number(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{what} must be a number") from None
    if not np.isfinite(value):
        raise ValueError(f"{what} must be a finite number")
    return value


def parse_window(text: str) -> Window:
    """`window=center,width,function` (8.3.5.1.4); the function defaults to linear."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) not in (2, 3):
        raise ValueError("window is center,width,function (function: linear, linear-exact, "
                         "sigmoid)")  # fmt: skip
    center = _number(parts[0], "the window center")
    width = _number(parts[1], "the window width")
    function = _FUNCTIONS.get(parts[2].lower()) if len(parts) == 3 else "LINEAR"
    if function is None:
        raise ValueError("the window function is one of linear, linear-exact, sigmoid")
    if width <= 0 or (function == "LINEAR" and width < 1):
        raise ValueError("the window width must be positive (at least 1 for linear)")
    return Window(center, width, function)


def _dimension(text: str, what: str, *, signed: bool = False) -> int:
    text = text.strip()
    digits = text[1:] if signed and text[:1] == "-" else text
    if not digits.isascii() or not digits.isdigit() or len(digits) > 6:
        raise ValueError(f"{what} must be an integer")
    return int(text)


def parse_viewport(text: str) -> Viewport:
    """`viewport=vw,vh[,sx,sy,sw,sh]` (8.3.5.1.3)."""
    parts = text.split(",")
    if len(parts) not in (2, 6):
        raise ValueError("viewport is vw,vh or vw,vh,sx,sy,sw,sh")
    width = _dimension(parts[0], "the viewport width")
    height = _dimension(parts[1], "the viewport height")
    if not (1 <= width <= MAX_VIEWPORT and 1 <= height <= MAX_VIEWPORT):
        raise ValueError(f"the viewport is 1 to {MAX_VIEWPORT} pixels wide and high")
    source = None
    if len(parts) == 6:
        sx, sy = (_dimension(p, "the viewport source origin") for p in parts[2:4])
        sw, sh = (_dimension(p, "the viewport source size", signed=True) for p in parts[4:6])
        if sw == 0 or sh == 0:
            raise ValueError("the viewport source width and height must not be 0")
        source = (sx, sy, sw, sh)
    return Viewport(width, height, source)


def parse_quality(text: str) -> int:
    value = _dimension(text, "quality")
    if not 1 <= value <= 100:
        raise ValueError("quality is an integer from 1 to 100")
    return value


# --- the pipeline ------------------------------------------------------------------------------


def _functional(ds: Dataset, frame_index: int, sequence: str) -> Dataset | None:
    """The item of a functional group macro for one frame: per-frame first, then shared."""
    for groups, index in (("PerFrameFunctionalGroupsSequence", frame_index),
                          ("SharedFunctionalGroupsSequence", 0)):  # fmt: skip
        items = ds.get(groups)
        if items and len(items) > index and sequence in items[index]:
            found = items[index].get(sequence)
            if found:
                return found[0]
    return None


def _modality(array: np.ndarray, ds: Dataset, frame_index: int) -> np.ndarray:
    if "ModalityLUTSequence" in ds or "RescaleSlope" in ds or "RescaleIntercept" in ds:
        return np.asarray(apply_modality_lut(array, ds), dtype=np.float64)
    item = _functional(ds, frame_index, "PixelValueTransformationSequence")
    values = array.astype(np.float64)
    if item is not None:
        slope = float(item.get("RescaleSlope", 1) or 1)
        intercept = float(item.get("RescaleIntercept", 0) or 0)
        values = values * slope + intercept
    return values


def _first(value: object) -> float | None:
    """The first value of a possibly multi-valued DS, None if there is no usable one."""
    if isinstance(value, list | tuple | MultiValue):
        value = value[0] if value else None
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _stored_window(ds: Dataset, frame_index: int) -> Window | None:
    for source in (ds, _functional(ds, frame_index, "FrameVOILUTSequence")):
        if source is None:
            continue
        center = _first(source.get("WindowCenter"))
        width = _first(source.get("WindowWidth"))
        if center is not None and width is not None and width > 0:
            function = str(source.get("VOILUTFunction", "LINEAR") or "LINEAR").upper()
            if function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
                function = "LINEAR"
            if function == "LINEAR" and width < 1:
                width = 1.0
            return Window(center, width, function)
    return None


def window_to_8bit(values: np.ndarray, window: Window) -> np.ndarray:
    """PS3.3 C.11.2.1.2 (LINEAR, LINEAR_EXACT) and C.11.2.1.3.1 (SIGMOID), into 0..255."""
    c, w = window.center, window.width
    if window.function == "SIGMOID":
        out = 255.0 / (1.0 + np.exp(-4.0 * (values - c) / w))
    elif window.function == "LINEAR_EXACT":
        out = np.clip(((values - c) / w + 0.5) * 255.0, 0, 255)
    else:
        low, high = c - 0.5 - (w - 1) / 2, c - 0.5 + (w - 1) / 2
        out = np.where(
            values <= low,
            0.0,
            np.where(values > high, 255.0, ((values - (c - 0.5)) / max(w - 1, 1) + 0.5) * 255.0),
        )
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _min_max(values: np.ndarray) -> np.ndarray:
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros(values.shape, np.uint8)
    return np.rint((values - low) * (255.0 / (high - low))).astype(np.uint8)


def _grayscale(
    array: np.ndarray, ds: Dataset, frame_index: int, window: Window | None, photometric: str
) -> np.ndarray:
    values = _modality(array, ds, frame_index)
    window = window or _stored_window(ds, frame_index)
    if window is not None:
        out = window_to_8bit(values, window)
    elif "VOILUTSequence" in ds:
        looked_up = apply_voi_lut(array, ds, index=0, prefer_lut=True).astype(np.float64)
        descriptor = ds.VOILUTSequence[0].get("LUTDescriptor") or [0, 0, 16]
        top = float(2 ** int(descriptor[2]) - 1) or 1.0
        out = np.clip(np.rint(looked_up * (255.0 / top)), 0, 255).astype(np.uint8)
    else:
        out = _min_max(values)
    return 255 - out if photometric == "MONOCHROME1" else out


def _colour(array: np.ndarray, ds: Dataset, photometric: str) -> np.ndarray:
    """RGB display values: the palette applied first, then scaled from its bit depth."""
    if photometric == "PALETTE COLOR":
        array = apply_color_lut(array, ds)
        bits = 8 * array.dtype.itemsize  # the palette's own entries are 8 or 16 bits
    else:
        bits = int(ds.get("BitsStored") or 8 * array.dtype.itemsize)
    if array.dtype == np.uint8 and bits <= 8:
        return array
    scale = 255.0 / (2**bits - 1)
    return np.clip(np.rint(array.astype(np.float64) * scale), 0, 255).astype(np.uint8)


def to_8bit(
    array: np.ndarray, ds: Dataset, photometric: str, frame_index: int, window: Window | None
) -> np.ndarray:
    """A decoded frame as 8-bit grayscale (H, W) or RGB (H, W, 3) display values."""
    if array.ndim == 3 or photometric == "PALETTE COLOR":
        return _colour(array, ds, photometric)
    return _grayscale(array, ds, frame_index, window, photometric)


def _crop(image: np.ndarray, source: tuple[int, int, int, int]) -> np.ndarray:
    sx, sy, sw, sh = source
    xs = slice(sx, sx + sw) if sw > 0 else slice(sx + sw, sx)
    ys = slice(sy, sy + sh) if sh > 0 else slice(sy + sh, sy)
    cropped = image[max(ys.start, 0) : max(ys.stop, 0), max(xs.start, 0) : max(xs.stop, 0)]
    if cropped.size == 0:
        raise ValueError("the viewport source region lies outside the image")
    if sw < 0:
        cropped = cropped[:, ::-1]
    if sh < 0:
        cropped = cropped[::-1]
    return cropped


def _fit(image: Image.Image, width: int, height: int) -> Image.Image:
    """Scale to fit in width x height, aspect ratio kept (never below 1 pixel)."""
    scale = min(width / image.width, height / image.height)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image if size == image.size else image.resize(size, Image.Resampling.LANCZOS)


def encode(display: np.ndarray, rendering: Rendering) -> bytes:
    """The 8-bit image, cropped and scaled as asked, as JPEG or PNG bytes."""
    viewport = rendering.viewport
    if viewport is not None and viewport.source is not None:
        display = _crop(display, viewport.source)
    image = Image.fromarray(np.ascontiguousarray(display), "RGB" if display.ndim == 3 else "L")
    if viewport is not None:
        image = _fit(image, viewport.width, viewport.height)
    if rendering.max_size is not None and max(image.size) > rendering.max_size:
        image = _fit(image, rendering.max_size, rendering.max_size)
    out = io.BytesIO()
    if rendering.media_type == "image/png":
        image.save(out, "PNG")
    else:
        image.save(out, "JPEG", quality=rendering.quality)
    return out.getvalue()
