"""``create_app(settings)``: wires routes, middleware and the lifespan. No globals."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route

from gateway import __version__, operations
from gateway.dicomweb import routes as dicomweb_routes
from gateway.fhir import routes as fhir_routes
from gateway.services import Services
from gateway.settings import Settings

logger = logging.getLogger(__name__)


def create_app(
    settings: Settings, *, services: Services | None = None, check_migrations: bool = True
) -> Starlette:
    """Build the application. Tests pass their own settings (and may pass services)."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        built = services or Services.build(settings)
        if check_migrations:
            await built.database.ensure_migrated()
        logger.info(
            "gateway %s serving %s over %s store",
            __version__,
            settings.public_url,
            built.upstream.name,
        )
        try:
            yield {"services": built}
        finally:
            await built.aclose()

    async def not_found(request: Request, exc: Exception) -> Response:
        return JSONResponse({"error": "not found"}, status_code=404)

    return Starlette(
        routes=[
            Mount("/fhir", routes=fhir_routes.routes()),
            Mount("/dicomweb", routes=dicomweb_routes.routes()),
            Route("/healthz", operations.healthz, methods=["GET"]),
            Route("/readyz", operations.readyz, methods=["GET"]),
            Route("/metrics", operations.metrics, methods=["GET"]),
        ],
        exception_handlers={404: not_found},
        lifespan=lifespan,
    )
