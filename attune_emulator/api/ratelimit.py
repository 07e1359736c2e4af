"""Extension E5 `api_rate_limit`: a per-identity sliding-window limit on the API.

Config (defaults give upstream behaviour, i.e. no limit):

    server:
      rate_limit:
        enabled: false
        requests: 1000           # accepted requests per window
        window_seconds: 1
        exempt_permission_sets: [core.admin]

Per-identity override: identity `attributes.rate_limit = {"requests": N, "window_seconds": S}`
(set with POST/PUT /api/v1/identities). Identities holding one of `exempt_permission_sets`
(directly or through a role) are never limited, whatever their attributes say.

Scope: `/api/v1/*` except `/api/v1/webhooks/*` (the per-trigger webhook limiter of upstream).
`/auth/*` and `/health*` are outside `/api/v1` and never limited. The key is the identity of a
valid access token; requests without a usable token are keyed by client IP (they are answered 401
by the route anyway). Service tokens (sensor, worker) and execution tokens are not limited.

Sliding window: only accepted requests occupy the window. Over the limit the answer is
429 `{"error": "Rate limit exceeded. Maximum N requests per S seconds", "code":
"TOO_MANY_REQUESTS"}` with `Retry-After: <ceil seconds until the oldest accepted request leaves
the window, >= 1>`, and an audit event `security.rate_limited` (category `api`, outcome
`denied`), at most one per identity per window.

The window lives in PostgreSQL (schema.sql `api_rate_limit_hit`), so every API process (see
`server.workers`) counts the same requests; `SlidingWindow` is the same model in memory, the
reference for its unit tests. The exemption and the per-identity override are read with the
request's identity (api/authz.py), so changes to them apply from the next request on.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Callable

from starlette.concurrency import run_in_threadpool

from .. import audit
from .. import auth as _auth
from . import common as C
from .common import JSON

log = logging.getLogger(__name__)

EXCLUDED_PREFIXES = ("/api/v1/webhooks/",)
UNLIMITED_TOKEN_TYPES = ("sensor", "worker", "execution")


# ------------------------------------------------------------------------------ pure logic
@dataclass(frozen=True)
class Limit:
    requests: int
    window_seconds: float

    def message(self) -> str:
        window = self.window_seconds
        shown = int(window) if float(window).is_integer() else window
        return f"Rate limit exceeded. Maximum {self.requests} requests per {shown} seconds"


def parse_limit(value: Any) -> Limit | None:
    """A `{requests, window_seconds}` object as a Limit; None when absent or malformed."""
    if not isinstance(value, dict):
        return None
    requests, window = value.get("requests"), value.get("window_seconds", 1)
    if isinstance(requests, bool) or not isinstance(requests, int) or requests < 0:
        return None
    if isinstance(window, bool) or not isinstance(window, (int, float)) or window <= 0:
        return None
    return Limit(int(requests), float(window))


class SlidingWindow:
    """Accepted-request timestamps per key; `hit` admits or refuses one request."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self._hits: dict[Any, collections.deque] = {}
        self._last_sweep = clock()

    def hit(self, key: Any, limit: Limit, now: float | None = None) -> tuple[bool, int]:
        """(allowed, retry_after_seconds). retry_after is 0 when allowed."""
        now = self.clock() if now is None else now
        window = limit.window_seconds
        q = self._hits.setdefault(key, collections.deque())
        while q and q[0] <= now - window:
            q.popleft()
        if len(q) < limit.requests:
            q.append(now)
            self._sweep(now, window)
            return True, 0
        if not q:  # a limit of 0: nothing ever frees up before a whole window
            return False, max(1, math.ceil(window))
        return False, max(1, math.ceil(q[0] + window - now))

    def _sweep(self, now: float, window: float) -> None:
        """Forget idle keys now and then (bounded memory)."""
        if now - self._last_sweep < 60:
            return
        self._last_sweep = now
        for key in [k for k, q in self._hits.items() if not q or q[-1] <= now - max(window, 60)]:
            self._hits.pop(key, None)


def in_scope(path: str) -> bool:
    return path.startswith("/api/v1/") and not path.startswith(EXCLUDED_PREFIXES)


# ------------------------------------------------------------------------------ middleware
HIT_SQL = "SELECT retry_after, audit FROM api_rate_limit_hit(%s, %s, %s)"
SWEEP_SQL = "DELETE FROM api_rate_limit_hit WHERE until <= extract(epoch FROM clock_timestamp()) - 60"


def shared_hit(db, key: str, limit: Limit) -> tuple[bool, int, bool]:
    """(allowed, retry_after, audit) from the window every API process shares (schema.sql
    `api_rate_limit_hit`): the same sliding window as `SlidingWindow`, on the database clock."""
    row = db.one(HIT_SQL, (key, limit.requests, float(limit.window_seconds)))
    retry_after = int(row["retry_after"])
    return retry_after == 0, retry_after, bool(row["audit"])


def sweep(db) -> int:
    """Forget windows idle for a minute (bounded table); run now and then by one process."""
    return db.execute(SWEEP_SQL)


class RateLimitMiddleware:
    def __init__(self, app, cfg, db):
        self.app = app
        self.cfg = cfg
        self.db = db
        settings = cfg.get("server.rate_limit") or {}
        self.default = parse_limit(settings) or Limit(1000, 1.0)
        self.exempt_sets = frozenset(str(s) for s in (settings.get("exempt_permission_sets") or []))

    def _policy(self, row: dict | None, sets: list | None) -> Limit | None:
        """None = exempt. `row`/`sets`: the identity and its permission sets, read for this
        request (api/authz.py; never stale)."""
        if row is None:
            return self.default
        if sets is not None and any(s["ref"] in self.exempt_sets for s in sets):
            return None
        attrs = row["attributes"] if isinstance(row["attributes"], dict) else {}
        return parse_limit(attrs.get("rate_limit")) or self.default

    def _identity(self, scope, app) -> tuple[str, Any]:
        """("identity", id) | ("service", None) | ("ip", address)."""
        header = None
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                header = value.decode("latin-1")
                break
        if header and header.startswith("Bearer "):
            try:
                claims = C.decode_claims(app, header[len("Bearer "):])
                kind = claims.get("token_type", "access")
                if kind in UNLIMITED_TOKEN_TYPES:
                    return "service", None
                if kind == "access":
                    return "identity", int(str(claims.get("sub")))
            except (_auth.TokenError, ValueError):
                pass
        client = scope.get("client") or ("unknown", 0)
        return "ip", client[0]

    def _admit(self, app, kind: str, key: Any):
        """Blocking: (limit or None when exempt, allowed, retry_after, audit, identity stash)."""
        stash = None
        limit = self.default
        if kind == "identity":
            try:
                row, sets = C.load_identity(app, key, "access")
                stash = (key, row, sets, "access")
                limit = self._policy(row, sets)
            except Exception:  # a lookup failure never blocks the request
                log.warning("rate limit policy of identity %s unavailable", key, exc_info=True)
                limit = self.default
            if limit is None:
                return None, True, 0, False, stash
        try:
            allowed, retry_after, audit_it = shared_hit(self.db, f"{kind}:{key}", limit)
        except Exception:  # nor does a window that cannot be read
            log.warning("rate limit window of %s %s unavailable", kind, key, exc_info=True)
            return limit, True, 0, False, stash
        return limit, allowed, retry_after, audit_it, stash

    def _audit(self, kind: str, key: Any, scope, limit: Limit, retry_after: int) -> None:
        identity_id = key if kind == "identity" else None
        login = None
        if identity_id is not None:
            row = self.db.one("SELECT login FROM identity WHERE id = %s", (identity_id,))
            login = row["login"] if row else None
        client = scope.get("client") or (None, 0)
        audit.record(self.db.execute, category="api", event_type=audit.SECURITY_RATE_LIMITED,
                     outcome="denied", actor_identity=identity_id, actor_login=login,
                     actor_token_type="access" if identity_id is not None else None,
                     actor_ip=client[0], http_method=scope.get("method"),
                     http_path=scope.get("path"), http_status=429,
                     details={"limit": limit.requests, "window_seconds": limit.window_seconds,
                              "retry_after": retry_after})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not in_scope(scope.get("path", "")):
            return await self.app(scope, receive, send)
        app = scope["app"]
        kind, key = self._identity(scope, app)
        if kind == "service":
            return await self.app(scope, receive, send)
        limit, allowed, retry_after, audit_it, stash = await run_in_threadpool(
            self._admit, app, kind, key)
        if stash is not None:  # require_auth reuses the identity read for this request
            scope.setdefault("state", {})[C.IDENTITY_STASH] = stash
        if allowed:
            return await self.app(scope, receive, send)
        if audit_it:
            loop = asyncio.get_running_loop()
            loop.run_in_executor(None, self._audit, kind, key, scope, limit, retry_after)
        response = JSON({"error": limit.message(), "code": "TOO_MANY_REQUESTS"}, status_code=429,
                        headers={"Retry-After": str(retry_after)})
        return await response(scope, receive, send)


def enabled(cfg) -> bool:
    settings = cfg.get("server.rate_limit") or {}
    return isinstance(settings, dict) and bool(settings.get("enabled", False))


__all__ = ["Limit", "SlidingWindow", "RateLimitMiddleware", "parse_limit", "in_scope", "enabled",
           "shared_hit", "sweep"]
