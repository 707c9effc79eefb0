"""``/apps/...``: the SMART apps of ``smart_apps/``, each under its own Content-Security-Policy.

- ``/apps/launch/``: the SMART launch page (``smart_apps/launch``);
- ``/apps/lib/``: the ``fhirclient`` browser build from npm;
- ``/apps/ohif/``: OHIF Viewer from npm (``gateway.apps.ohif``).

The npm packages are fetched by ``scripts/smart-apps.sh`` into
``smart_apps/node_modules``; a package that is not there is not served (the
gateway starts all the same, and says so in its log).
"""

from __future__ import annotations

import logging
from pathlib import Path
from urllib.parse import urlsplit

from starlette.routing import BaseRoute, Mount
from starlette.staticfiles import StaticFiles

from gateway.apps.ohif import OhifApp, OhifFiles
from gateway.security_headers import APPS_POLICY, OHIF_POLICY, SecurityHeadersMiddleware
from gateway.settings import Settings

logger = logging.getLogger(__name__)
SMART_APPS = Path(__file__).resolve().parents[2] / "smart_apps"
OHIF_DIST = Path("node_modules/@ohif/app/dist")
FHIR_CLIENT = Path("node_modules/fhirclient/build")
FHIR_CLIENT_FILE = "fhir-client.min.js"


def ohif_files(settings: Settings) -> OhifFiles | None:
    """OHIF's files and what is made from them, or None when OHIF is not installed."""
    folder = settings.apps_dir or SMART_APPS
    dist = folder / OHIF_DIST
    if not (dist / "index.html").is_file() or not (folder / "ohif").is_dir():
        logger.info("OHIF is not installed in %s (scripts/smart-apps.sh fetches it)", folder)
        return None
    base = urlsplit(settings.public_url).path.rstrip("/")
    return OhifFiles(
        dist=dist,
        helpers=folder / "ohif",
        prefix=f"{base}/apps/ohif/",
        launch_page=f"{base}/apps/launch/",
        fhir_client=f"{base}/apps/lib/{FHIR_CLIENT_FILE}",
        settings=settings,
    )


def routes(settings: Settings, ohif: OhifFiles | None = None) -> list[BaseRoute]:
    """The apps' mounts; ``ohif`` (from :func:`ohif_files`) is made here when not given."""
    folder = settings.apps_dir or SMART_APPS
    if not folder.is_dir():
        return []
    mounted: list[BaseRoute] = []
    if (folder / "launch").is_dir():
        launch = StaticFiles(directory=folder / "launch", html=True)
        mounted.append(Mount("/apps/launch", SecurityHeadersMiddleware(launch, APPS_POLICY)))
    if (folder / FHIR_CLIENT / FHIR_CLIENT_FILE).is_file():
        library = StaticFiles(directory=folder / FHIR_CLIENT)
        mounted.append(Mount("/apps/lib", SecurityHeadersMiddleware(library, APPS_POLICY)))
    files = ohif or ohif_files(settings)
    if files is not None:
        mounted.append(Mount("/apps/ohif", SecurityHeadersMiddleware(OhifApp(files), OHIF_POLICY)))
    return mounted
