"""``/healthz`` (the process runs), ``/readyz`` (it can serve), ``/metrics``."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from gateway import __version__
from gateway.services import Services


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok", "version": __version__})


async def readyz(request: Request) -> Response:
    services: Services = request.state.services
    checks = await services.readiness()
    ready = all(value == "ok" for value in checks.values())
    return JSONResponse(
        {"status": "ready" if ready else "not ready", "checks": checks},
        status_code=200 if ready else 503,
    )


async def metrics(request: Request) -> Response:
    services: Services = request.state.services
    lines = [
        "# HELP gateway_info Gateway version and store.",
        "# TYPE gateway_info gauge",
        f'gateway_info{{version="{__version__}",store="{services.store_name}"}} 1',
    ]
    return PlainTextResponse("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")
