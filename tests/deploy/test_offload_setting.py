"""GATEWAY_OFFLOAD: off by default, where the gateway relays the bytes itself; nginx
only in front of a PACS (the embedded store is read in-process)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.settings import ConfigError, Offload, load_settings
from tests.conftest import Gateway
from tests.support.catalog import read_catalog

DICOM = {"Accept": 'multipart/related; type="application/dicom"'}


def test_offload_is_off_unless_asked(tmp_path: Path) -> None:
    settings = load_settings(_env_file=None, data_dir=tmp_path)
    assert settings.offload is Offload.off
    assert settings.offload_prefix == "/_pacs"


def test_offload_to_nginx_needs_a_pacs(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="GATEWAY_OFFLOAD=nginx needs GATEWAY_DICOMWEB_URL"):
        load_settings(_env_file=None, data_dir=tmp_path, offload="nginx")
    on = load_settings(
        _env_file=None,
        data_dir=tmp_path,
        offload="nginx",
        dicomweb_url="http://pacs:8042/dicom-web",
    )
    assert on.offload is Offload.nginx


@pytest.mark.parametrize("prefix", ["", "pacs", "/a/../b", "/pacs?x", "/pa cs"])
def test_the_offload_prefix_is_a_plain_path(tmp_path: Path, prefix: str) -> None:
    with pytest.raises(ConfigError, match="GATEWAY_OFFLOAD_PREFIX"):
        load_settings(_env_file=None, data_dir=tmp_path, offload_prefix=prefix)


def test_by_default_the_gateway_relays_the_bytes(
    gateway: Gateway, fixture_files: list[Path]
) -> None:
    study = next(iter(read_catalog(fixture_files)))
    answer = gateway.get(f"/dicomweb/studies/{study}", headers=DICOM)
    assert answer.status_code == 200
    assert "x-accel-redirect" not in answer.headers
    assert b"DICM" in answer.content
