"""The API application: routes from every `routes_*` module, error handling, body limit, and the
background inquiry-timeout sweep that upstream's API runs.

Route modules expose `ROUTES: list[starlette.routing.Route]`; a module that does not exist (yet)
is skipped, so the app serves whatever is present.
"""
from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
from pathlib import Path

import psycopg2
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from ..broker import Publisher
from ..db import Database
from . import authz, ratelimit
from .common import JSON, ApiError, PlainError, map_db_error

log = logging.getLogger(__name__)

ROUTE_MODULES = (
    "routes_health", "routes_auth", "routes_identities", "routes_keys", "routes_workers",
    "routes_packs", "routes_actions", "routes_triggers", "routes_sensors", "routes_rules",
    "routes_webhooks", "routes_events", "routes_enforcements", "routes_executions",
    "routes_inquiries", "routes_workflows", "routes_audit",
)
SENTINEL = ".attune-packs-sentinel"
INQUIRY_SWEEP_SECONDS = 1.0
RATE_LIMIT_SWEEP_SECONDS = 60.0
BODY_LIMIT_TEXT = "Failed to buffer the request body: length limit exceeded"


def collect_routes() -> list:
    routes = []
    for name in ROUTE_MODULES:
        module_name = f"{__package__}.{name}"
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                log.debug("route module %s not present", name)
                continue
            raise
        routes.extend(getattr(module, "ROUTES", []))
    return routes


# ------------------------------------------------------------------------------ middleware

class BodyLimitMiddleware:
    """413 for bodies over `server.max_body_size` (axum's default 2 MB limit).

    A declared Content-Length is rejected before reading; a chunked body is counted as it is
    read, and the handler's read fails with a PlainError answered by the exception handlers.
    """

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > self.max_bytes:
                    return await PlainError(413, BODY_LIMIT_TEXT).response()(scope, receive, send)
        seen = 0

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message.get("type") == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise PlainError(413, BODY_LIMIT_TEXT)
            return message

        return await self.app(scope, limited_receive, send)


class ErrorGuardMiddleware:
    """Turn any unexpected exception into upstream's 500 body (with the traceback logged),
    instead of Starlette's plain-text page."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            if started:
                raise
            response = JSON({"error": "Internal server error", "code": "INTERNAL_SERVER_ERROR"},
                            status_code=500)
            await response(scope, receive, send)


# ------------------------------------------------------------------------------ exception handlers

async def _api_error(request: Request, exc: ApiError) -> Response:
    return exc.response()


async def _plain_error(request: Request, exc: PlainError) -> Response:
    return exc.response()


async def _http_exception(request: Request, exc: HTTPException) -> Response:
    # Unknown route 404 / wrong method 405: empty bodies, as axum.
    return Response(b"", status_code=exc.status_code, headers=exc.headers)


async def _db_unavailable(request: Request, exc: Exception) -> Response:
    log.warning("database unavailable on %s %s: %s", request.method, request.url.path, exc)
    return JSON({"error": "Database unavailable", "code": "SERVICE_UNAVAILABLE"}, status_code=503)


async def _db_error(request: Request, exc: psycopg2.Error) -> Response:
    if isinstance(exc, (psycopg2.OperationalError, psycopg2.InterfaceError)) and not getattr(exc, "pgcode", None):
        return await _db_unavailable(request, exc)
    mapped = map_db_error(exc)
    if mapped is not None:
        return mapped.response()
    log.error("database error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSON({"error": "Database error", "code": "DATABASE_ERROR"}, status_code=500)


# ------------------------------------------------------------------------------ background work

def _expire_inquiries(db: Database) -> int:
    return db.execute("UPDATE inquiry SET status = 'timeout' "
                      "WHERE status = 'pending' AND timeout_at IS NOT NULL AND timeout_at <= now()")


async def _inquiry_sweeper(db: Database, rate_limit: bool = False) -> None:
    """Upstream's API flips pending inquiries past `timeout_at` to `timeout` every second.
    With E5 on, idle rate-limit windows are forgotten every minute too."""
    last_rl_sweep = 0.0
    while True:
        try:
            n = await asyncio.to_thread(_expire_inquiries, db)
            if n:
                log.info("marked %d inquiry(ies) as timed out", n)
            now = asyncio.get_running_loop().time()
            if rate_limit and now - last_rl_sweep >= RATE_LIMIT_SWEEP_SECONDS:
                last_rl_sweep = now
                await asyncio.to_thread(ratelimit.sweep, db)
        except psycopg2.Error as exc:
            log.debug("inquiry sweep skipped: %s", exc)
        except Exception:
            log.exception("inquiry sweep failed")
        await asyncio.sleep(INQUIRY_SWEEP_SECONDS)


def _write_sentinel(cfg) -> None:
    """Mark packs_base_dir as a shared volume (workers/sensors read packs from it directly)."""
    base = cfg.get("packs_base_dir")
    if not base:
        return
    try:
        Path(base).mkdir(parents=True, exist_ok=True)
        (Path(base) / SENTINEL).write_text(f"attune-api pid {os.getpid()}\n")
    except OSError as exc:
        log.warning("cannot write %s into %s: %s", SENTINEL, base, exc)


# ------------------------------------------------------------------------------ factory

def create_app(cfg, db: Database | None = None, publisher: Publisher | None = None,
               background: bool = True) -> Starlette:
    db = db or Database.from_config(cfg)
    if publisher is None and cfg.amqp_url:
        publisher = Publisher(cfg.amqp_url)  # connects lazily on the first publish

    @contextlib.asynccontextmanager
    async def lifespan(app):
        _write_sentinel(cfg)
        tasks = [asyncio.create_task(_inquiry_sweeper(db, ratelimit.enabled(cfg)))] if background else []
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            db.close()

    exception_handlers = {
        ApiError: _api_error,
        PlainError: _plain_error,
        HTTPException: _http_exception,
        psycopg2.Error: _db_error,
    }
    app = Starlette(routes=collect_routes(), exception_handlers=exception_handlers,
                    lifespan=lifespan)
    app.router.redirect_slashes = False  # axum answers 404 for a trailing slash, not a redirect
    # add_middleware prepends: the body limit runs first, then the 500 guard.
    app.add_middleware(ErrorGuardMiddleware)
    if ratelimit.enabled(cfg):  # extension E5; runs after the body limit, before the routes
        app.add_middleware(ratelimit.RateLimitMiddleware, cfg=cfg, db=db)
    app.add_middleware(BodyLimitMiddleware,
                       max_bytes=int(cfg.get("server.max_body_size", 2 * 1024 * 1024)))
    app.state.cfg = cfg
    app.state.db = db
    app.state.publisher = publisher
    app.state.crypto_key = cfg.get("security.encryption_key")
    app.state.token_cache = authz.TokenCache(cfg.jwt_secret)
    app.state.authz_cache = authz.AuthzCache()
    app.state.extensions = active_extensions(cfg)
    return app


def active_extensions(cfg) -> list[str]:
    """Behaviour beyond upstream that this stack provides (scenarios.md section b), advertised in
    `GET /health/detailed` so a suite can tell which extension tests this target supports.
    Config-gated ones appear only when switched on; their defaults give upstream behaviour."""
    extensions = ["action_retry", "action_timeout", "key_expiry", "rule_notify",
                  "template_context", "timer_params"]
    extensions.append("param_validation")  # E10: executor/param_validation.py
    extensions.append("execution_audit")  # E6: audit.py, routes_audit.py
    if ratelimit.enabled(cfg):
        extensions.append("api_rate_limit")  # E5: api/ratelimit.py
    extensions.append("liveness_tuning")  # E13: executor.worker_heartbeat_timeout (default 90)
    extensions.append("container_runtime")  # E12: worker/container.py (engine probed per worker)
    # E14: the sensor arms each timer rule on its own; upstream restarts every timer on any
    # timer-rule change (behavior.md §15), which is why timer tests are serialised there
    extensions.append("timer_isolation")
    if cfg.get("security.owner_scoped_resources", False):
        extensions.append("owner_scoping")
    if cfg.get("security.rbac_all_mutations", False):
        extensions.append("mutation_rbac")
    return sorted(extensions)
