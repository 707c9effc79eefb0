"""Rendered frames and thumbnails, on the embedded store and on Orthanc alike."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread

from tests.conftest import Gateway


def instance_of(fixture_files: list[Path], modality: str):  # type: ignore[no-untyped-def]
    for path in fixture_files:
        ds = dcmread(path)
        if ds.Modality == modality and "pydicom-samples" not in str(path):
            return ds
    raise AssertionError(f"no {modality} fixture")


def url(ds, suffix: str = "rendered") -> str:  # type: ignore[no-untyped-def]
    return (
        f"/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}/{suffix}"
    )


def test_jpeg_by_default_png_on_request(gateway: Gateway, fixture_files: list[Path]) -> None:
    ct = instance_of(fixture_files, "CT")
    jpeg = gateway.get(url(ct))
    assert jpeg.status_code == 200 and jpeg.headers["content-type"] == "image/jpeg"
    assert jpeg.content[:2] == b"\xff\xd8"
    png = gateway.get(url(ct), headers={"Accept": "image/png"})
    assert png.headers["content-type"] == "image/png"
    image = Image.open(BytesIO(png.content))
    assert image.size == (ct.Columns, ct.Rows) and image.mode == "L"


def test_window_follows_the_linear_function(gateway: Gateway, fixture_files: list[Path]) -> None:
    ct = instance_of(fixture_files, "CT")
    center, width = 100.0, 700.0
    png = gateway.get(
        url(ct) + f"?window={center:g},{width:g},linear", headers={"Accept": "image/png"}
    )
    rendered = np.asarray(Image.open(BytesIO(png.content)))
    values = ct.pixel_array * float(ct.RescaleSlope) + float(ct.RescaleIntercept)
    expected = (
        np.clip(((values - (center - 0.5)) / (width - 1)) + 0.5, 0, 1) * 255
    )  # PS3.3 C.11.2.1.2.1
    assert np.abs(rendered.astype(float) - expected.round()).max() <= 1
    other = gateway.get(url(ct) + "?window=2000,10", headers={"Accept": "image/png"})
    assert other.content != png.content


def test_color_frames_thumbnails(gateway: Gateway, fixture_files: list[Path]) -> None:
    us = instance_of(fixture_files, "US")
    image = Image.open(BytesIO(gateway.get(url(us), headers={"Accept": "image/png"}).content))
    assert image.mode == "RGB"
    ct = instance_of(fixture_files, "CT")
    assert gateway.get(url(ct, "frames/1/rendered")).status_code == 200
    thumbnail = gateway.get(url(ct, "thumbnail"))
    assert thumbnail.status_code == 200
    assert max(Image.open(BytesIO(thumbnail.content)).size) <= 128


@pytest.mark.parametrize(
    ("suffix", "headers", "status"),
    [
        ("frames/2/rendered", {}, 400),
        ("frames/0/rendered", {}, 400),
        ("frames/abc/rendered", {}, 400),
        ("rendered?window=wide", {}, 400),
        ("rendered?window=40,-5", {}, 400),
        ("rendered?quality=0", {}, 400),
        ("rendered", {"Accept": "image/gif"}, 406),
    ],
)
def test_bad_rendering_requests(
    gateway: Gateway, fixture_files: list[Path], suffix: str, headers: dict[str, str], status: int
) -> None:
    ct = instance_of(fixture_files, "CT")
    response = gateway.get(url(ct, suffix), headers=headers)
    assert response.status_code == status, response.text
    assert "Traceback" not in response.text


def test_unknown_instance_is_404(gateway: Gateway, fixture_files: list[Path]) -> None:
    ct = instance_of(fixture_files, "CT")
    series = f"/dicomweb/studies/{ct.StudyInstanceUID}/series/{ct.SeriesInstanceUID}"
    missing = f"{series}/instances/1.2.3.4/rendered"
    assert gateway.get(missing).status_code == 404
