"""``create_app(settings)``: wires routes, middleware and the lifespan. No globals."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.routing import Mount, Route
from starlette.types import ASGIApp

from gateway import __version__, error_handlers, logs, operations
from gateway.admin import research as admin_research
from gateway.admin import routes as admin_routes
from gateway.admin import transfers as admin_transfers
from gateway.apps import routes as apps_routes
from gateway.audit import AuditMiddleware
from gateway.auth import routes as auth_routes
from gateway.auth.enforcement import BearerTokenMiddleware
from gateway.body_timeout import BodyTimeoutMiddleware
from gateway.dicomweb import capability_gate
from gateway.dicomweb import routes as dicomweb_routes
from gateway.donation import routes as research_routes
from gateway.fhir import routes as fhir_routes
from gateway.portal import recipient
from gateway.portal import routes as portal_routes
from gateway.security_headers import SecurityHeadersMiddleware
from gateway.services import Services
from gateway.settings import Settings

logger = logging.getLogger(__name__)


class _Gateway(Starlette):
    """Starlette with the security headers outside everything, its own 500s included.

    Middleware passed to Starlette runs inside ``ServerErrorMiddleware``, whose
    answer to an unhandled exception would otherwise go out without them.
    """

    def build_middleware_stack(self) -> ASGIApp:
        return SecurityHeadersMiddleware(super().build_middleware_stack())


def create_app(
    settings: Settings, *, services: Services | None = None, check_migrations: bool = True
) -> Starlette:
    """Build the application. Tests pass their own settings (and may pass services)."""
    logs.install()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        built = services or Services.build(settings)
        if check_migrations:
            await built.database.ensure_migrated()
        built.start()
        if not settings.auth_required:
            logger.warning(
                "GATEWAY_AUTH_REQUIRED is off: /fhir and /dicomweb answer without a token"
            )
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

    ohif = apps_routes.ohif_files(settings)  # /apps/ohif/, and a share's viewer at /share/ohif/
    return _Gateway(
        routes=[
            *auth_routes.discovery_routes(),
            Mount("/oauth", routes=auth_routes.routes()),
            Mount("/portal", routes=portal_routes.routes()),
            Mount("/share", routes=recipient.routes(ohif)),
            Mount(
                "/admin",
                routes=[
                    *admin_routes.routes(),
                    *admin_research.routes(),
                    *admin_transfers.routes(),
                ],
            ),
            Mount(
                "/fhir",
                routes=fhir_routes.routes(),
                middleware=[
                    Middleware(AuditMiddleware, api="fhir", refusal=error_handlers.audit_failure),
                    Middleware(BearerTokenMiddleware),
                ],
            ),
            *capability_gate.routes(error_handlers.audit_failure),
            Mount(
                "/dicomweb",
                routes=dicomweb_routes.routes(),
                middleware=[
                    Middleware(
                        AuditMiddleware, api="dicomweb", refusal=error_handlers.audit_failure
                    ),
                    Middleware(BearerTokenMiddleware),
                ],
            ),
            Mount(
                "/research",
                routes=research_routes.routes(),
                middleware=[Middleware(BearerTokenMiddleware)],
            ),
            *apps_routes.routes(settings, ohif),
            Route("/healthz", operations.healthz, methods=["GET"]),
            Route("/readyz", operations.readyz, methods=["GET"]),
            Route("/metrics", operations.metrics, methods=["GET"]),
        ],
        middleware=[
            Middleware(BodyTimeoutMiddleware, seconds=settings.body_timeout),
            Middleware(
                CORSMiddleware,
                allow_origins=settings.cors_origins.split(),
                allow_methods=["GET", "POST", "OPTIONS"],
                allow_headers=["Authorization", "Content-Type", "Accept", "Prefer"],
                expose_headers=["Location", "WWW-Authenticate", "Warning", "Preference-Applied"],
                max_age=600,
            ),
        ],
        # Errors and outages, in each area's format (gateway/error_handlers.py).
        exception_handlers=error_handlers.handlers(),
        lifespan=lifespan,
    )
