"""How the gateway serves OHIF's ``dist/`` under ``/apps/ohif/`` (no browser, no npm).

A small stand-in for the package's ``dist/`` has the same shape as the real
one: an ``index.html`` with root links and inline scripts, a main bundle and a
worker whose chunk loader names ``/``, a stylesheet with a root font URL.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient

from gateway.apps import routes as apps_routes
from gateway.apps.routes import FHIR_CLIENT, OHIF_DIST
from tests.conftest import make_settings

INDEX = (
    '<!doctype html><html><head><script>console.time("x"),window.PUBLIC_URL="/"</script>'
    '<link rel="manifest" href="/manifest.json"><link rel="icon" href="/assets/favicon.ico">'
    '<script rel="preload" as="script" src="/app-config.js"></script>'
    '<script rel="preload" as="script" type="module" src="/init-service-worker.js"></script>'
    "<script>function browserImportFunction(n){return import(n)}"
    'window.PUBLIC_URL="/"</script><script defer src="/app.bundle.0123abcd.js"></script>'
    '<link href="/app.bundle.css" rel="stylesheet"></head><body><div id="root"></div></body></html>'
)
BUNDLE = (
    '(() => {\n__webpack_require__.p = "/";\n})();\n'
    "browserImportFunction('/dicom-microscopy-viewer/x.js')"
)


@pytest.fixture
def apps_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "smart_apps"
    dist = folder / OHIF_DIST
    dist.mkdir(parents=True)
    (dist / "index.html").write_text(INDEX)
    (dist / "app.bundle.0123abcd.js").write_text(BUNDLE)
    (dist / "interpolation.bundle.99.js").write_text('__webpack_require__.p = "/";')
    (dist / "7.bundle.aa.js").write_text("console.log(1)")
    (dist / "app.bundle.css").write_text("@font-face{src:url(/a.woff2)}")
    (dist / "a.wasm").write_bytes(b"\0asm")
    (folder / FHIR_CLIENT).mkdir(parents=True)
    (folder / FHIR_CLIENT / "fhir-client.min.js").write_text("window.FHIR={}")
    (folder / "ohif").mkdir()
    (folder / "ohif" / "smart-auth.js").write_text("window.gatewaySmart={}")
    (folder / "launch").mkdir()
    (folder / "launch" / "index.html").write_text("<p>launch</p>")
    return folder


def client_for(tmp_path: Path, apps_dir: Path, public_url: str) -> TestClient:
    settings = make_settings(tmp_path, apps_dir=apps_dir, public_url=public_url)
    return TestClient(Starlette(routes=apps_routes.routes(settings)))


@pytest.mark.parametrize(
    ("public_url", "prefix"),
    [("https://images.example", "/apps/ohif/"), ("https://h.example/gw", "/gw/apps/ohif/")],
)
def test_index_links_under_the_prefix_without_inline_script(
    tmp_path: Path, apps_dir: Path, public_url: str, prefix: str
) -> None:
    client = client_for(tmp_path, apps_dir, public_url)
    html = client.get("/apps/ohif/").text
    assert "<script>" not in html and "init-service-worker" not in html
    assert 'href="/manifest.json"' not in html and f'href="{prefix}manifest.json"' in html
    assert f'src="{prefix}app.bundle.0123abcd.js"' in html
    base = prefix.removesuffix("ohif/")
    order = [
        f'src="{prefix}gateway-boot.js"',
        f'src="{base}lib/fhir-client.min.js"',
        f'src="{prefix}smart-auth.js"',
        f'src="{prefix}app-config.js"',
        f'src="{prefix}app.bundle.0123abcd.js"',
    ]
    assert [html.index(tag) for tag in order] == sorted(html.index(tag) for tag in order)
    boot = client.get("/apps/ohif/gateway-boot.js").text
    assert f'window.PUBLIC_URL = "{prefix}";' in boot and "browserImportFunction" in boot


def test_the_config_names_this_gateway_alone(tmp_path: Path, apps_dir: Path) -> None:
    client = client_for(tmp_path, apps_dir, "https://images.example")
    config = client.get("/apps/ohif/app-config.js")
    assert config.headers["content-type"].startswith("text/javascript")
    text = config.text
    for root in ("qidoRoot", "wadoRoot", "wadoUriRoot"):
        assert f'"{root}": "https://images.example/dicomweb"' in text
    assert text.count('"sourceName"') == 1 and '"routerBasename": "/apps/ohif"' in text
    assert "extensions: [window.gatewaySmart.extension]" in text


def test_chunk_loaders_and_fonts_point_under_the_prefix(tmp_path: Path, apps_dir: Path) -> None:
    client = client_for(tmp_path, apps_dir, "https://images.example")
    bundle = client.get("/apps/ohif/app.bundle.0123abcd.js").text
    assert '__webpack_require__.p = "/apps/ohif/";' in bundle
    assert "browserImportFunction('/apps/ohif/dicom-microscopy-viewer/x.js')" in bundle
    worker = client.get("/apps/ohif/interpolation.bundle.99.js").text
    assert worker == '__webpack_require__.p = "/apps/ohif/";'
    assert client.get("/apps/ohif/7.bundle.aa.js").text == "console.log(1)"  # as it is
    assert client.get("/apps/ohif/app.bundle.css").text == "@font-face{src:url(/apps/ohif/a.woff2)}"
    wasm = client.get("/apps/ohif/a.wasm")
    assert wasm.headers["content-type"] == "application/wasm"


def test_spa_routes_fall_back_and_missing_files_do_not(tmp_path: Path, apps_dir: Path) -> None:
    client = client_for(tmp_path, apps_dir, "https://images.example")
    index = client.get("/apps/ohif/").text
    for route in ("/apps/ohif/viewer", "/apps/ohif/viewer/dicomweb", "/apps/ohif/local"):
        answer = client.get(route, params={"StudyInstanceUIDs": "1.2.3"})
        assert answer.status_code == 200 and answer.text == index
    assert client.get("/apps/ohif/missing.js").status_code == 404
    assert client.get("/apps/ohif/%2e%2e/%2e%2e/pyproject.toml").status_code == 404
    assert client.post("/apps/ohif/").status_code == 405
    policy = client.get("/apps/ohif/viewer").headers["content-security-policy"]
    assert "script-src 'self' 'wasm-unsafe-eval';" in policy


def test_without_the_npm_packages_only_the_launch_page_is_served(
    tmp_path: Path, apps_dir: Path
) -> None:
    import shutil

    shutil.rmtree(apps_dir / "node_modules")
    client = client_for(tmp_path, apps_dir, "https://images.example")
    assert client.get("/apps/launch/").status_code == 200
    assert client.get("/apps/ohif/").status_code == 404
    assert client.get("/apps/lib/fhir-client.min.js").status_code == 404
