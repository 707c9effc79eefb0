"""Rendered images (PS3.18 8.7.4 / 10.4 "rendered"): a frame as JPEG or PNG.

Pure functions of a pydicom dataset: modality LUT (rescale), VOI window from
the query or the data, MONOCHROME1 inverted, then Pillow encodes. The route
runs them in a worker thread: this is CPU work.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from io import BytesIO

import numpy as np
from PIL import Image
from pydicom import Dataset

from gateway.errors import BadRequest, NotAcceptable

MEDIA_TYPES = {"image/jpeg": "JPEG", "image/png": "PNG"}
THUMBNAIL_EDGE = 128


@dataclass(frozen=True)
class Window:
    center: float
    width: float
    function: str = "linear"


def parse_window(value: str | None) -> Window | None:
    """``window={center},{width}[,{function}]`` (PS3.18 8.3.5.1.3)."""
    if value is None:
        return None
    parts = [p.strip() for p in value.split(",")]
    try:
        center, width = float(parts[0]), float(parts[1])
    except (IndexError, ValueError):
        raise BadRequest("window must be center,width[,linear|linear-exact|sigmoid].") from None
    function = (parts[2] if len(parts) > 2 else "linear").lower()
    if function not in ("linear", "linear-exact", "sigmoid") or width <= 0 or len(parts) > 3:
        raise BadRequest("window must be center,width[,linear|linear-exact|sigmoid].")
    return Window(center, width, function)


def choose(accept: str, supported: tuple[str, ...]) -> str:
    """The first of ``supported`` that ``accept`` allows, in the client's order; the
    first supported type for an empty Accept or a wildcard."""
    if not accept.strip():
        return supported[0]
    for offered in (p.split(";")[0].strip().lower() for p in accept.split(",")):
        if offered in supported:
            return offered
        if offered == "*/*" or any(offered == t.split("/")[0] + "/*" for t in supported):
            major = offered.split("/")[0]
            return next(t for t in supported if major == "*" or t.startswith(major + "/"))
    raise NotAcceptable(f"This is served as {' or '.join(supported)}.")


def choose_media_type(accept: str) -> str:
    return choose(accept, tuple(MEDIA_TYPES))


def render(
    dataset: Dataset,
    frame: int,
    media_type: str,
    window: Window | None = None,
    max_edge: int | None = None,
    quality: int = 90,
) -> bytes:
    """Frame ``frame`` (1-based) of ``dataset``, encoded as ``media_type``."""
    if "PixelData" not in dataset:
        raise BadRequest("This instance has no image to render.")
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    if not 1 <= frame <= frames:
        raise BadRequest(f"Frame {frame} does not exist; the instance has {frames}.")
    try:
        pixels = dataset.pixel_array
    except (NotImplementedError, RuntimeError, ValueError) as exc:
        raise NotAcceptable(f"The pixel data cannot be decoded here ({exc}).") from None
    if frames > 1:
        pixels = pixels[frame - 1]
    photometric = str(dataset.get("PhotometricInterpretation", "MONOCHROME2"))
    if pixels.ndim == 3 or photometric.startswith(("RGB", "YBR")):
        image = Image.fromarray(_to_rgb8(dataset, pixels), mode="RGB")
    else:
        image = Image.fromarray(_to_gray8(dataset, pixels, window), mode="L")
    if max_edge:
        image.thumbnail((max_edge, max_edge))
    buffer = BytesIO()
    if MEDIA_TYPES[media_type] == "JPEG":
        image.save(buffer, "JPEG", quality=quality)
    else:
        image.save(buffer, "PNG")
    return buffer.getvalue()


def _to_gray8(dataset: Dataset, pixels: np.ndarray, window: Window | None) -> np.ndarray:
    slope = float(dataset.get("RescaleSlope", 1) or 1)
    intercept = float(dataset.get("RescaleIntercept", 0) or 0)
    values = pixels.astype(np.float64) * slope + intercept
    window = window or _window_from_data(dataset, values)
    center, width = window.center, window.width
    if window.function == "sigmoid":
        scaled = 1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
    elif window.function == "linear-exact":
        scaled = (values - (center - width / 2)) / width
    else:  # PS3.3 C.11.2.1.2.1: the linear function offsets by 0.5 and 1
        scaled = ((values - (center - 0.5)) / (width - 1)) + 0.5
    gray = np.clip(scaled, 0.0, 1.0) * 255.0
    if str(dataset.get("PhotometricInterpretation", "")) == "MONOCHROME1":
        gray = 255.0 - gray
    return gray.round().astype(np.uint8)


def _window_from_data(dataset: Dataset, values: np.ndarray) -> Window:
    center, width = dataset.get("WindowCenter"), dataset.get("WindowWidth")
    if center is not None and width is not None:
        first_center = center[0] if _is_multi(center) else center
        first_width = width[0] if _is_multi(width) else width
        if float(first_width) > 0:
            return Window(float(first_center), float(first_width))
    low, high = float(values.min()), float(values.max())
    return Window((low + high) / 2, max(high - low, 1.0), "linear-exact")


def _is_multi(value: object) -> bool:
    return isinstance(value, list | tuple) or type(value).__name__ == "MultiValue"


def _to_rgb8(dataset: Dataset, pixels: np.ndarray) -> np.ndarray:
    if str(dataset.get("PhotometricInterpretation", "")).startswith("YBR"):
        from pydicom.pixels.processing import convert_color_space

        pixels = convert_color_space(pixels, str(dataset.PhotometricInterpretation), "RGB")
    if pixels.dtype != np.uint8:
        bits = int(dataset.get("BitsStored", 8) or 8)
        pixels = (pixels.astype(np.float64) / (2**bits - 1) * 255).clip(0, 255)
    return np.ascontiguousarray(pixels.astype(np.uint8))


FRAME_LIST = re.compile(r"[1-9][0-9]{0,8}")
