"""Configuration: defaults, and one clear line naming the setting when it is wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.settings import ConfigError, Settings
from tests.conftest import make_settings


def test_defaults_are_the_embedded_store_and_sqlite(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    assert settings.public_url == "http://127.0.0.1:8080"
    assert settings.uses_embedded_store
    assert settings.dicom_dir == tmp_path / "dicom"
    assert settings.effective_database_url.startswith("sqlite+aiosqlite:///")
    assert settings.fhir_base_url == "http://127.0.0.1:8080/fhir"


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"public_url": "ftp://x"}, "GATEWAY_PUBLIC_URL"),
        ({"public_url": "example.org"}, "GATEWAY_PUBLIC_URL"),
        ({"dicomweb_url": "pacs:8042"}, "GATEWAY_DICOMWEB_URL"),
        ({"database_url": "mysql://x"}, "GATEWAY_DATABASE_URL"),
        ({"local_timezone": "Mars/Olympus"}, "GATEWAY_LOCAL_TIMEZONE"),
        ({"upstream_read_timeout": 0}, "GATEWAY_UPSTREAM_READ_TIMEOUT"),
        ({"upstream_auth": "kerberos"}, "GATEWAY_UPSTREAM_AUTH"),
        ({"upstream_auth": "basic"}, "GATEWAY_UPSTREAM_USERNAME"),
    ],
)
def test_bad_configuration_names_the_setting(
    tmp_path: Path, overrides: dict[str, object], named: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        make_settings(tmp_path, **overrides)
    message = str(caught.value)
    assert named in message
    assert "\n" not in message


def test_environment_variables_are_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GATEWAY_PUBLIC_URL", "https://images.example.org/")
    monkeypatch.setenv("GATEWAY_DICOMWEB_URL", "http://pacs:8042/dicom-web/")
    settings = Settings(_env_file=None, data_dir=tmp_path)  # type: ignore[call-arg]
    assert settings.public_url == "https://images.example.org"
    assert settings.dicomweb_url == "http://pacs:8042/dicom-web"
    assert not settings.uses_embedded_store
