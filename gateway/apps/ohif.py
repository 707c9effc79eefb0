"""OHIF Viewer at ``/apps/ohif/``, served from the npm package ``@ohif/app``'s built ``dist/``.

The package is built to live at ``/``: its ``index.html`` links every file from
the root, sets ``window.PUBLIC_URL`` in inline scripts and its webpack runtime
loads chunks from ``/``. Three files are therefore made here, in memory, once:

- ``index.html``: links under this prefix, the inline scripts replaced by
  ``gateway-boot.js`` (no inline script runs, so the policy needs no
  ``'unsafe-inline'`` for scripts), the service worker left out, and the SMART
  hand-over (``smart_apps/ohif/smart-auth.js`` with the ``fhirclient`` library)
  loaded before ``app-config.js``;
- ``app-config.js``: one data source, this gateway's ``/dicomweb``, and nothing
  else (no demo server, no local files, no ``?url=`` sources);
- the bundles and workers whose chunk loader names ``/`` as its public path, and the
  stylesheet that links its font from ``/``: made to name this prefix.

Every other path is the package's file, or ``index.html`` for the viewer's own
routes (``/apps/ohif/viewer?...``), as a single-page app needs.

A share's recipient gets the same files with another page (:meth:`OhifFiles.shell`
with ``share-viewer.js``) and config (:func:`share_config`: a capability URL as
the data source), served under ``/share/ohif/`` by ``portal/recipient_viewer.py``.
"""

from __future__ import annotations

import json
import re
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from starlette.responses import FileResponse, PlainTextResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

from gateway.settings import Settings

BOOT, SMART_AUTH, CONFIG = "gateway-boot.js", "smart-auth.js", "app-config.js"
_INLINE_SCRIPT = re.compile(r"<script>.*?</script>", re.S)
_SERVICE_WORKER = re.compile(r"<script[^>]*init-service-worker\.js[^>]*></script>")
_CONFIG_TAG = re.compile(r'<script[^>]*src="/app-config\.js"[^>]*></script>')
_ROOT_LINK = re.compile(r'(href|src)="/(?!/)')
_PUBLIC_PATH = '__webpack_require__.p = "/";'
_MICROSCOPY = "browserImportFunction('/dicom-microscopy-viewer/"
NO_CACHE = {"Cache-Control": "no-cache"}
JS = "text/javascript; charset=utf-8"


def app_config(settings: Settings, prefix: str, dicomweb: str | None = None) -> dict[str, Any]:
    """OHIF's configuration: this gateway's DICOMweb (or a capability URL of it, for a
    share's recipient) as the only data source."""
    dicomweb = dicomweb or settings.dicomweb_base_url
    return {
        "routerBasename": prefix.rstrip("/") or "/",
        "showStudyList": True,
        "modes": [],
        "customizationService": {},
        "maxNumberOfWebWorkers": 3,
        "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": True,
        "showLoadingIndicator": True,
        "strictZSpacingForVolumeViewport": True,
        "investigationalUseDialog": {"option": "never"},
        "defaultDataSourceName": "gateway",
        "dataSources": [
            {
                "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
                "sourceName": "gateway",
                "configuration": {
                    "friendlyName": "Image Share Gateway",
                    "name": "gateway",
                    "wadoUriRoot": dicomweb,
                    "qidoRoot": dicomweb,
                    "wadoRoot": dicomweb,
                    "qidoSupportsIncludeField": False,
                    "imageRendering": "wadors",
                    "thumbnailRendering": "wadors",
                    "enableStudyLazyLoad": True,
                    "supportsFuzzyMatching": False,
                    "supportsWildcard": False,
                    "staticWado": False,
                    "singlepart": "bulkdata,video,pdf",
                    "bulkDataURI": {"enabled": True, "relativeResolution": "studies"},
                    "omitQuotationForMultipartRequest": True,
                },
            }
        ],
    }


@dataclass
class OhifFiles:
    """The package's ``dist`` folder and what is made from it for ``prefix``."""

    dist: Path
    helpers: Path  # smart_apps/ohif: smart-auth.js
    prefix: str  # the URL path, with its slashes: /apps/ohif/
    launch_page: str  # the URL path of the SMART launch page
    fhir_client: str  # the URL path of fhirclient's browser build
    settings: Settings
    _made: dict[str, bytes] = field(default_factory=dict)
    _as_is: set[str] = field(default_factory=set)

    def index(self) -> bytes:
        if "index.html" not in self._made:
            scripts = (self.fhir_client, f"{self.prefix}{SMART_AUTH}", f"{self.prefix}{CONFIG}")
            self._made["index.html"] = self.shell(scripts)
        return self._made["index.html"]

    def shell(self, scripts: Sequence[str]) -> bytes:
        """``index.html`` with its files under this prefix, ``gateway-boot.js``, then
        ``scripts`` (the hand-over and the config; a share's viewer has its own)."""
        html = (self.dist / "index.html").read_text(encoding="utf-8")
        html = _SERVICE_WORKER.sub("", _INLINE_SCRIPT.sub("", html))
        html = _CONFIG_TAG.sub("<!--gateway-->", html, count=1)
        html = _ROOT_LINK.sub(lambda m: f'{m.group(1)}="{self.prefix}', html)
        ours = "".join(
            f'<script src="{src}"></script>' for src in (f"{self.prefix}{BOOT}", *scripts)
        )
        return html.replace("<!--gateway-->", ours, 1).encode()

    def patched(self, name: str) -> bytes | None:
        """A file of the package that names the root, made to name the prefix; None for
        a file that does not (served as it is). Read once per process, in a thread."""
        if name in self._made:
            return self._made[name]
        if name in self._as_is or "/" in name or not name.endswith((".js", ".css")):
            return None
        path = self.dist / name
        if not path.is_file():
            return None
        text = path.read_text(encoding="utf-8", errors="surrogateescape")
        if name.endswith(".css"):
            made = text.replace("url(/", f"url({self.prefix}")
        else:
            public_path = f"__webpack_require__.p = {json.dumps(self.prefix)};"
            made = text.replace(_PUBLIC_PATH, public_path).replace(
                _MICROSCOPY, f"browserImportFunction('{self.prefix}dicom-microscopy-viewer/"
            )
        if made == text:
            self._as_is.add(name)
            return None
        self._made[name] = made.encode("utf-8", errors="surrogateescape")
        return self._made[name]

    def boot(self) -> bytes:
        values = {"launchPage": self.launch_page}
        return (
            f"window.PUBLIC_URL = {json.dumps(self.prefix)};\n"
            f"window.gatewayOhif = {json.dumps(values)};\n"
            "window.browserImportFunction = function (name) { return import(name); };\n"
        ).encode()

    def config(self) -> bytes:
        configuration = json.dumps(app_config(self.settings, self.prefix), indent=1)
        return (
            "// Made by the gateway from its settings (gateway/apps/ohif.py).\n"
            f"window.config = Object.assign({configuration}, {{\n"
            "  extensions: [window.gatewaySmart.extension],\n"
            "  httpErrorHandler: window.gatewaySmart.httpError,\n"
            "});\n"
        ).encode()


def share_config(settings: Settings, prefix: str, dicomweb: str, session: dict[str, Any]) -> bytes:
    """OHIF's configuration for a share's recipient: the capability URL as the data
    source's root, ``session`` for ``share-viewer.js`` (renewal, where to go at the end)."""
    configuration = json.dumps(app_config(settings, prefix, dicomweb), indent=1)
    return (
        "// Made by the gateway for this share session (gateway/portal/recipient_viewer.py).\n"
        f"window.gatewayShareSession = {json.dumps(session)};\n"
        f"window.config = Object.assign({configuration}, {{\n"
        "  extensions: [window.gatewayShare.extension],\n"
        "  httpErrorHandler: window.gatewayShare.httpError,\n"
        "});\n"
    ).encode()


class OhifApp:
    """ASGI app for the prefix: the made files, the package's files, else ``index.html``."""

    def __init__(self, files: OhifFiles) -> None:
        self.files = files
        self.static = StaticFiles(directory=files.dist)
        files.index()  # made at start, not in a request

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["method"] not in ("GET", "HEAD"):
            await PlainTextResponse("Method Not Allowed", 405)(scope, receive, send)
            return
        path, root = scope.get("path", ""), scope.get("root_path", "")
        name = (path[len(root) :] if root and path.startswith(root) else path).lstrip("/")
        response = self.made(name) or await self.answer(name)
        await response(scope, receive, send)

    def made(self, name: str) -> Response | None:
        files = self.files
        if name in ("", "index.html"):
            return Response(files.index(), media_type="text/html; charset=utf-8", headers=NO_CACHE)
        if name == BOOT:
            return Response(files.boot(), media_type=JS, headers=NO_CACHE)
        if name == CONFIG:
            return Response(files.config(), media_type=JS, headers=NO_CACHE)
        if name == SMART_AUTH:
            return FileResponse(files.helpers / SMART_AUTH, media_type=JS, headers=NO_CACHE)
        return None

    async def answer(self, name: str) -> Response:
        """A file of the package, or the single-page app for a path without an extension."""
        patched = await anyio.to_thread.run_sync(self.files.patched, name)
        if patched is not None:
            media = JS if name.endswith(".js") else "text/css; charset=utf-8"
            return Response(patched, media_type=media)
        full, found = await anyio.to_thread.run_sync(self.static.lookup_path, name)
        if full and found and stat.S_ISREG(found.st_mode) and not name.startswith("."):
            return FileResponse(full)
        if "." not in name.rsplit("/", 1)[-1]:
            return Response(
                self.files.index(), media_type="text/html; charset=utf-8", headers=NO_CACHE
            )
        return PlainTextResponse("Not Found", 404)
