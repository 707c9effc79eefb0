"""BulkDataURI rewriting while metadata streams, and frames cut from a dataset."""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.encaps import generate_frames

from gateway.dicomweb import bulkdata
from gateway.errors import BadRequest, NotAcceptable, NotFound

BASE = "https://gateway.example/dicomweb"
UPSTREAM = "http://10.0.0.9:8042/dicom-web"


def _metadata(count: int, prefix: str) -> bytes:
    instances = [
        {
            "00080018": {"vr": "UI", "Value": [f"1.2.3.{n}"]},
            "7FE00010": {
                "vr": "OW",
                "BulkDataURI": f"{prefix}studies/1.2/series/1.2.3/instances/1.2.3.{n}"
                "/bulk/7fe00010",
            },
            "00104000": {"vr": "LT", "Value": ["BulkDataURI is not rewritten here " * 20]},
        }
        for n in range(count)
    ]
    return orjson.dumps(instances)


async def _rewrite(body: bytes, chunk: int) -> bytes:
    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), chunk):
            yield body[start : start + chunk]

    return b"".join([part async for part in bulkdata.rewrite_bulk_uris(chunks(), BASE)])


@pytest.mark.anyio
@pytest.mark.parametrize("chunk", [1, 7, 4096, 1 << 20])
@pytest.mark.parametrize("prefix", [f"{UPSTREAM}/", ""])
async def test_every_bulk_uri_is_rewritten_whatever_the_chunking(chunk: int, prefix: str) -> None:
    body = _metadata(300, prefix)
    rewritten = orjson.loads(await _rewrite(body, chunk))
    assert len(rewritten) == 300
    for n, instance in enumerate(rewritten):
        assert instance["7FE00010"]["BulkDataURI"] == (
            f"{BASE}/studies/1.2/series/1.2.3/instances/1.2.3.{n}/bulk/7fe00010"
        )
        assert instance["00104000"]["Value"][0].startswith("BulkDataURI is not")
    assert UPSTREAM.encode() not in await _rewrite(body, chunk)


@pytest.mark.anyio
async def test_text_without_uris_passes_unchanged() -> None:
    body = orjson.dumps([{"00100010": {"vr": "PN", "Value": [{"Alphabetic": "A^B"}]}}] * 500)
    assert await _rewrite(body, 333) == body


def test_frame_lists() -> None:
    assert bulkdata.parse_frame_list("1") == [1]
    assert bulkdata.parse_frame_list("3,1,2") == [3, 1, 2]
    for bad in ["", "0", "1,", "a", "1;2", "-1", "1,,2"]:
        with pytest.raises(BadRequest):
            bulkdata.parse_frame_list(bad)


def test_native_frames_are_slices_of_the_pixel_data() -> None:
    dataset = dcmread(get_testdata_file("SC_rgb_rle_2frame.dcm"))
    dataset.decompress()
    frames, syntax = bulkdata.frames_of(dataset, [2, 1], "")
    size = dataset.Rows * dataset.Columns * 3
    assert syntax == bulkdata.EXPLICIT_LITTLE
    assert frames == [dataset.PixelData[size : 2 * size], dataset.PixelData[:size]]
    with pytest.raises(NotFound):
        bulkdata.frames_of(dataset, [3], "")
    with pytest.raises(NotAcceptable):
        bulkdata.frames_of(dataset, [1], 'type="application/octet-stream"; transfer-syntax=1.2.9')


def test_compressed_frames_only_as_stored() -> None:
    dataset = dcmread(get_testdata_file("SC_rgb_rle_2frame.dcm"))
    stored = str(dataset.file_meta.TransferSyntaxUID)
    expected = list(generate_frames(dataset.PixelData, number_of_frames=2))
    frames, syntax = bulkdata.frames_of(dataset, [2], "transfer-syntax=*")
    assert (frames, syntax) == ([expected[1]], stored)
    assert bulkdata.frames_of(dataset, [1], f"transfer-syntax={stored}")[0] == [expected[0]]
    with pytest.raises(NotAcceptable):
        bulkdata.frames_of(dataset, [1], 'multipart/related; type="application/octet-stream"')


def test_element_bytes_by_tag_path() -> None:
    dataset = dcmread(get_testdata_file("CT_small.dcm"))
    assert bulkdata.element_bytes(dataset, "7FE00010") == dataset.PixelData
    with pytest.raises(NotFound):
        bulkdata.element_bytes(dataset, "00100010")
    with pytest.raises(NotFound):
        bulkdata.element_bytes(dataset, "00081140/9/7FE00010")
