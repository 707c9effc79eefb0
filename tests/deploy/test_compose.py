"""deploy/compose.yaml, checked without a container engine: the services of the
topology, pinned images, every GATEWAY_* name a real setting, and every
placeholder of deploy/nginx.conf given a value."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from gateway.settings import Settings
from tests.support.stack import PLACEHOLDER

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
REPLICAS = ("gateway-1", "gateway-2")
PINNED = re.compile(r"^[a-z0-9./-]+:\d+(\.\d+)+(-[a-z0-9.]+)?$")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    assert isinstance(loaded, dict)
    return loaded


def services(compose: dict[str, Any]) -> dict[str, Any]:
    found = compose["services"]
    assert isinstance(found, dict)
    return found


def test_the_topology_has_its_services(compose: dict[str, Any]) -> None:
    assert set(services(compose)) == {"nginx", *REPLICAS, "migrate", "postgres", "orthanc"}
    # Only nginx is published: the replicas and the PACS are reachable from nginx alone.
    for name, service in services(compose).items():
        assert ("ports" in service) == (name == "nginx"), name


def test_images_are_pinned_to_a_version(compose: dict[str, Any]) -> None:
    for name, service in services(compose).items():
        if "build" in service:
            assert service["build"]["dockerfile"] == "Dockerfile"
            assert (DEPLOY / service["build"]["context"] / "Dockerfile").is_file()
            continue
        image = service["image"]
        assert "latest" not in image, (name, image)
        assert PINNED.match(image), f"{name}: {image} is not pinned to a version"
    assert services(compose)["nginx"]["image"].startswith("nginx:1.27.")
    assert services(compose)["postgres"]["image"].startswith("postgres:16.")


def test_replica_settings_are_real_and_complete(compose: dict[str, Any]) -> None:
    known = {f"GATEWAY_{name.upper()}" for name in Settings.model_fields}
    for name in (*REPLICAS, "migrate"):
        environment = services(compose)[name]["environment"]
        unknown = {key for key in environment if key.startswith("GATEWAY_")} - known
        assert not unknown, f"{name}: not settings: {unknown}"
        assert environment["GATEWAY_DATABASE_URL"].startswith("postgresql+asyncpg://")
        assert "@postgres:5432/" in environment["GATEWAY_DATABASE_URL"]
        assert environment["GATEWAY_OFFLOAD"] == "nginx"
        for needed in ("GATEWAY_DICOMWEB_URL", "GATEWAY_PUBLIC_URL"):
            assert environment[needed], (name, needed)
    first = services(compose)[REPLICAS[0]]["environment"]
    assert all(services(compose)[r]["environment"] == first for r in REPLICAS)


def test_nginx_template_gets_every_placeholder(compose: dict[str, Any]) -> None:
    nginx = services(compose)["nginx"]
    template = (DEPLOY / "nginx.conf").read_text()
    placeholders = set(PLACEHOLDER.findall(template))
    assert placeholders, "deploy/nginx.conf has no placeholders?"
    environment = nginx["environment"]
    assert placeholders <= set(environment), placeholders - set(environment)
    # The official image renders templates/X.template into NGINX_ENVSUBST_OUTPUT_DIR/X.
    mounts = [volume.split(":") for volume in nginx["volumes"]]
    assert ["./nginx.conf", "/etc/nginx/templates/nginx.conf.template", "ro"] in mounts
    assert environment["NGINX_ENVSUBST_OUTPUT_DIR"] == "/etc/nginx"


def test_nginx_and_the_replicas_agree(compose: dict[str, Any]) -> None:
    nginx = services(compose)["nginx"]["environment"]
    replica = services(compose)[REPLICAS[0]]["environment"]
    named = re.findall(r"server ([\w.-]+):(\d+);", nginx["GATEWAY_SERVERS"])
    assert {host for host, _ in named} == set(REPLICAS)
    assert {port for _, port in named} == {"8080"}
    pacs = urlsplit(replica["GATEWAY_DICOMWEB_URL"])
    assert nginx["PACS_SERVER"] == pacs.netloc
    assert nginx["PACS_DICOMWEB_PATH"] == pacs.path.rstrip("/")
    assert nginx["OFFLOAD_PREFIX"] == replica["GATEWAY_OFFLOAD_PREFIX"]
    address = services(compose)["nginx"]["networks"]["backend"]["ipv4_address"]
    assert replica["GATEWAY_FORWARDED_ALLOW_IPS"] == address


def test_migrations_run_once_before_the_replicas(compose: dict[str, Any]) -> None:
    migrate = services(compose)["migrate"]
    assert migrate["command"] == ["db", "upgrade"]
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in REPLICAS:
        replica = services(compose)[name]
        assert "--migrate" not in replica["command"]
        assert replica["depends_on"]["migrate"]["condition"] == "service_completed_successfully"


def test_every_long_running_service_has_a_health_check(compose: dict[str, Any]) -> None:
    for name, service in services(compose).items():
        if name == "migrate":
            continue
        assert service["healthcheck"]["test"], name
    assert any("/readyz" in part for part in services(compose)["gateway-1"]["healthcheck"]["test"])
