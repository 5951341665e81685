"""FastAPI app factory: wires settings to the stores and the routers.

The DICOMweb routers (app.dicomweb: ingest and research STOW, QIDO, WADO, delete), the FHIR
façade and the audit trail's AuditEvents, the management API, the site's catalogue, the
issuer's keys, and the health checks that tell an orchestrator whether the server can do its job.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from sqlalchemy import text

from app import __version__
from app.admin.grants_router import grants_router
from app.admin.projects_router import projects_router
from app.audit.fhir_router import audit_router
from app.audit.http import AuditMiddleware
from app.auth.credentials import Credentials
from app.auth.grants import count_active_grants
from app.catalog.router import catalog_router
from app.config import Settings, get_settings
from app.dicomweb.delete import delete_router
from app.dicomweb.ingest_stow import stow_router
from app.dicomweb.public_base import parse_trusted_proxies
from app.dicomweb.qido import qido_router
from app.dicomweb.research_stow import research_stow_router
from app.dicomweb.wado import wado_router
from app.fhir.common import install_error_handlers
from app.fhir.router import fhir_router
from app.security_headers import SecurityHeadersMiddleware
from app.store.index import index_engine
from app.telemetry import TelemetryMiddleware, setup_telemetry, watch_active_grants
from app.vault import Vault


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    app = FastAPI(title="imaging-depot", version=__version__)
    app.state.index_url = settings.index_url
    app.state.credentials = Credentials(settings)  # app.auth.http verifies bearer tokens here
    app.state.trusted_proxies = parse_trusted_proxies(settings.trusted_proxies)
    vault = Vault.from_settings(settings)  # one per process: it holds a connection pool
    app.include_router(stow_router(settings, vault))
    app.include_router(wado_router(settings, vault))
    app.include_router(qido_router(settings))
    app.include_router(research_stow_router(settings, vault))
    app.include_router(delete_router(settings, vault))
    app.include_router(audit_router(settings))
    app.include_router(fhir_router(settings))
    app.include_router(projects_router(settings))
    app.include_router(grants_router())
    app.include_router(catalog_router(settings))
    install_error_handlers(app)  # OperationOutcome for every error on a FHIR path
    app.add_middleware(AuditMiddleware, index_url=settings.index_url)  # one event per request
    setup_telemetry(settings)  # OTEL_* variables; no exporter set: the API's no-ops
    watch_active_grants(lambda: count_active_grants(app.state.credentials.engine))
    app.add_middleware(TelemetryMiddleware)  # spans see the audit's 503 too
    app.add_middleware(SecurityHeadersMiddleware)  # on every answer, 503s and 401s included

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict:
        """The process is up."""
        return {"status": "ok", "version": __version__}

    @app.get("/.well-known/jwks.json", tags=["auth"])
    def jwks() -> JSONResponse:
        """The embedded issuer's public keys, for whoever checks our tokens' signatures."""
        return JSONResponse(
            app.state.credentials.jwks(),
            headers={"Cache-Control": "public, max-age=300"},
            media_type="application/jwk-set+json",
        )

    @app.get("/readyz", tags=["health"])
    def readyz() -> JSONResponse:
        """The index and the vault answer: the server can take work."""
        checks = {}
        try:
            with index_engine(settings.index_url).connect() as conn:
                conn.execute(text("SELECT 1"))
            checks["index"] = "ok"
        except Exception:  # noqa: BLE001  (a probe reports, never raises)
            checks["index"] = "unavailable"
        try:
            vault.has_project("-")
            checks["vault"] = "ok"
        except Exception:  # noqa: BLE001  (a VaultError, or its database down)
            checks["vault"] = "unavailable"
        ready = all(v == "ok" for v in checks.values())
        return JSONResponse(
            {"status": "ok" if ready else "unavailable", **checks}, 200 if ready else 503
        )

    return app
