"""Rendered images (PS3.18 8.7.4 / 10.4 "rendered"): a frame as JPEG or PNG.

pydicom does the standard's image pipeline: it decodes the one frame asked
for (whatever its transfer syntax, with the decoders installed), then the
Modality LUT (rescale or Modality LUT Sequence) and the VOI LUT (the window
from the query, else the instance's VOI LUT Sequence or window with its
VOILUTFunction, else one spanning the frame's values). MONOCHROME1 is
inverted, and Pillow encodes. The route runs this in a worker thread.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from io import BytesIO
from typing import IO, BinaryIO, cast

import numpy as np
from PIL import Image
from pydicom import Dataset
from pydicom.pixels.processing import apply_color_lut, apply_modality_lut, apply_voi_lut
from pydicom.pixels.utils import pixel_array
from pydicom.uid import DeflatedExplicitVRLittleEndian

from gateway.errors import BadRequest, NotAcceptable, PayloadTooLarge

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
    source: IO[bytes],
    dataset: Dataset,
    frame: int,
    media_type: str,
    window: Window | None = None,
    max_edge: int | None = None,
    quality: int = 90,
    max_bytes: int = 512 << 20,
) -> bytes:
    """Frame ``frame`` (1-based) of the Part 10 file ``source``, whose header is
    ``dataset``, encoded as ``media_type``. Only that frame is read and decoded;
    one whose decoded size would pass ``max_bytes`` is refused (413)."""
    if "PixelData" not in dataset:
        raise BadRequest("This instance has no image to render.")
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    if not 1 <= frame <= frames:
        raise BadRequest(f"Frame {frame} does not exist; the instance has {frames}.")
    # Decoded as float64 for the LUTs: the largest copy of the frame made here.
    size = 8 * _product(dataset, ("Rows", "Columns", "SamplesPerPixel"))
    if size > max_bytes:
        raise PayloadTooLarge(
            f"A frame of this instance decodes to more than the {max_bytes} bytes the "
            "gateway renders (GATEWAY_RENDER_MAX_BYTES)."
        )
    syntax = str(dataset.file_meta.get("TransferSyntaxUID", ""))
    try:
        source.seek(0)
        # A deflated file cannot be read at offsets: its dataset was read whole.
        whole = syntax == DeflatedExplicitVRLittleEndian
        pixels = pixel_array(dataset if whole else cast(BinaryIO, source), index=frame - 1)
    except (NotImplementedError, RuntimeError, ValueError, AttributeError, KeyError) as exc:
        raise NotAcceptable(
            f"The pixel data (transfer syntax {syntax or 'unknown'}) cannot be decoded here."
        ) from exc
    photometric = str(dataset.get("PhotometricInterpretation", "MONOCHROME2"))
    if photometric == "PALETTE COLOR":
        image = Image.fromarray(_to_rgb8(dataset, apply_color_lut(pixels, dataset)), mode="RGB")
    elif pixels.ndim == 3:
        # pydicom's decoders hand YBR data over as RGB already.
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


def _product(dataset: Dataset, keywords: tuple[str, ...]) -> int:
    """The product of integer attributes (a missing one counts 1: decoding then says no)."""
    product = 1
    for keyword in keywords:
        product *= int(dataset.get(keyword, 1) or 1)
    return product


_FUNCTIONS = {"linear": "LINEAR", "linear-exact": "LINEAR_EXACT", "sigmoid": "SIGMOID"}
# What the VOI LUT step reads: the modality LUT's output range and the VOI itself.
_VOI_KEYWORDS = (
    "PixelRepresentation",
    "BitsStored",
    "RescaleSlope",
    "RescaleIntercept",
    "ModalityLUTSequence",
    "WindowCenter",
    "WindowWidth",
    "VOILUTFunction",
    "VOILUTSequence",
)


def _to_gray8(dataset: Dataset, pixels: np.ndarray, window: Window | None) -> np.ndarray:
    values = apply_modality_lut(pixels, dataset)
    voi = Dataset()
    voi.PhotometricInterpretation = "MONOCHROME2"  # MONOCHROME1 is inverted below
    for keyword in _VOI_KEYWORDS:
        if keyword in dataset:
            voi[keyword] = dataset[keyword]
    if window is not None:  # the query's window wins over the instance's VOI
        _set_window(voi, window.center, window.width, _FUNCTIONS[window.function])
        if "VOILUTSequence" in voi:
            del voi.VOILUTSequence
    low, high = _voi_output_range(voi)
    try:
        if "VOILUTSequence" not in voi and not _has_window(voi):
            raise ValueError("no VOI in the instance")
        if "VOILUTSequence" in voi and values.dtype.kind == "f":
            # A VOI LUT is indexed by stored value: whole numbers, as PS3.3 C.11.2 maps them.
            values = np.rint(values).astype(np.int64)
        shown = apply_voi_lut(values, voi, prefer_lut=True)
    except (ValueError, TypeError, IndexError, KeyError, AttributeError):
        # No usable VOI: the frame's own range, linearly (LINEAR_EXACT from min to max).
        shown, low, high = values, float(values.min()), float(values.max())
    gray = np.clip((shown.astype(np.float64) - low) / max(high - low, 1e-9), 0.0, 1.0) * 255.0
    if str(dataset.get("PhotometricInterpretation", "")) == "MONOCHROME1":
        gray = 255.0 - gray
    return np.asarray(gray.round().astype(np.uint8))


def _set_window(voi: Dataset, center: float, width: float, function: str) -> None:
    voi.WindowCenter, voi.WindowWidth, voi.VOILUTFunction = center, width, function


def _has_window(voi: Dataset) -> bool:
    if "WindowCenter" not in voi or "WindowWidth" not in voi:
        return False
    width = voi.WindowWidth
    return float(width[0] if voi["WindowWidth"].VM > 1 else width) > 0


def _voi_output_range(voi: Dataset) -> tuple[float, float]:
    """The range the VOI step maps onto, to be spread over 0-255: a VOI LUT's own
    (its descriptor's bit depth), or the window's, which pydicom takes to be the
    modality LUT's output range (``pydicom.pixels.processing.apply_windowing``)."""
    if "VOILUTSequence" in voi and voi.VOILUTSequence:
        return 0.0, float(2 ** int(voi.VOILUTSequence[0].LUTDescriptor[2]) - 1)
    bits = int(voi.get("BitsStored", 16) or 16)
    if voi.get("ModalityLUTSequence"):
        low, high = 0.0, float(2 ** int(voi.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
    elif int(voi.get("PixelRepresentation", 0) or 0) == 0:
        low, high = 0.0, float(2**bits - 1)
    else:
        low, high = float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)
    slope, intercept = voi.get("RescaleSlope"), voi.get("RescaleIntercept")
    if slope is not None and intercept is not None:
        low, high = low * float(slope) + float(intercept), high * float(slope) + float(intercept)
    return min(low, high), max(low, high)


def _to_rgb8(dataset: Dataset, pixels: np.ndarray) -> np.ndarray:
    if pixels.dtype != np.uint8:
        bits = int(dataset.get("BitsStored", 8) or 8)
        if "RedPaletteColorLookupTableDescriptor" in dataset:  # the palette's entries
            bits = int(dataset.RedPaletteColorLookupTableDescriptor[2])
        pixels = (pixels.astype(np.float64) / (2**bits - 1) * 255).clip(0, 255)
    return np.ascontiguousarray(pixels.astype(np.uint8))


FRAME_LIST = re.compile(r"[1-9][0-9]{0,8}")
