"""Health endpoints (no auth), api.md §1.1. `/health/detailed` also lists the stack's extensions
(app.state.extensions, appended to by the modules that add behaviour beyond upstream)."""
from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .. import __version__ as _version
from .common import JSON, run_sync


async def health(request: Request) -> Response:
    return JSON({"status": "ok"})


def _db_check(db) -> str | None:
    try:
        db.one("SELECT 1 AS ok")
        return None
    except Exception as exc:  # any failure means "disconnected"
        return str(exc).strip() or type(exc).__name__


async def detailed(request: Request) -> Response:
    error = await run_sync(_db_check, request.app.state.db)
    extensions = list(getattr(request.app.state, "extensions", []))
    if error is None:
        return JSON({"status": "ok", "version": _version, "database": "connected",
                     "extensions": extensions})
    return JSON({"status": "error", "database": "disconnected", "error": error,
                 "extensions": extensions}, status_code=503)


async def ready(request: Request) -> Response:
    error = await run_sync(_db_check, request.app.state.db)
    return Response(b"", status_code=200 if error is None else 503)


async def live(request: Request) -> Response:
    return Response(b"", status_code=200)


ROUTES = [
    Route("/health", health, methods=["GET"]),
    Route("/health/detailed", detailed, methods=["GET"]),
    Route("/health/ready", ready, methods=["GET"]),
    Route("/health/live", live, methods=["GET"]),
]
