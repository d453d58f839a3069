"""create_app(): the ASGI application with the FHIR and /api faces on one store."""

from __future__ import annotations

import asyncio
import sys
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi_offline import FastAPIOffline

from vitasync_fhir import __version__, errors, heap, openapi
from vitasync_fhir.api.routes import routers as api_routers
from vitasync_fhir.auth.account_pages import router as account_router
from vitasync_fhir.auth.oauth_routes import router as oauth_router
from vitasync_fhir.auth.oauth_routes import well_known
from vitasync_fhir.auth.routes import router as auth_router
from vitasync_fhir.auth.trail import AuditTrail
from vitasync_fhir.config import Settings
from vitasync_fhir.config import settings as default_settings
from vitasync_fhir.db import Database
from vitasync_fhir.documents.pages import router as verify_router
from vitasync_fhir.documents.renderer import Renderer
from vitasync_fhir.documents.router import router as documents_router
from vitasync_fhir.fhir import operations
from vitasync_fhir.fhir.plainread import PlainReads
from vitasync_fhir.fhir.router import router as fhir_router
from vitasync_fhir.fhir.search.routes import router as search_router
from vitasync_fhir.limits import BodyLimit


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or default_settings

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # type: ignore[no-untyped-def]
        freezing = None
        if settings.gc_freeze_seconds > 0:
            freezing = asyncio.create_task(heap.freeze_after(settings.gc_freeze_seconds))
        switch = sys.getswitchinterval()
        sys.setswitchinterval(settings.thread_switch_ms / 1000)
        yield
        sys.setswitchinterval(switch)
        if freezing is not None:
            freezing.cancel()
        app.state.audit_trail.close()
        app.state.renderer.close()
        await app.state.db.dispose()

    # FastAPIOffline serves the /docs assets from the package, so the docs work without internet.
    app = FastAPIOffline(
        title="VitaSync FHIR",
        version=__version__,
        lifespan=lifespan,
        docs_url="/docs",
        openapi_url="/openapi.json",
    )
    app.state.settings = settings
    app.state.db = Database(settings)
    app.state.audit_trail = AuditTrail(settings)
    app.state.renderer = Renderer()  # its process starts with the first PDF
    errors.install(app)
    # Routes are matched in order: the busiest (FHIR) first.
    for router in operations.routers():  # before the REST routes: "$op" is not an id
        app.include_router(router, prefix="/fhir", tags=["FHIR operations"])
    app.state.operations = operations.capability_entries()
    app.state.type_operations = operations.type_capability_entries()
    app.include_router(fhir_router, prefix="/fhir", tags=["FHIR"])
    app.include_router(search_router, prefix="/fhir", tags=["FHIR search"])
    app.include_router(well_known, tags=["SMART"])
    app.include_router(oauth_router, tags=["OAuth2"])
    app.include_router(auth_router, tags=["Accounts"])
    for router in api_routers():
        app.include_router(router)
    app.include_router(documents_router)
    app.include_router(verify_router)
    app.include_router(account_router)
    openapi.install(app)
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    if settings.cors_origins:  # browser SMART apps on other origins
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["*"],
            allow_headers=["*"],
            expose_headers=["Location", "ETag", "Last-Modified", "Content-Location"],
        )
    app.add_middleware(PlainReads)  # outermost: the commonest request skips the rest
    return app
