"""Audit events (api.md §12): `GET /api/v1/audit-events`, `/audit-events/{id}`,
`/audit-events/by-request/{request_id}`. All need `audit_log:read`. The trail is append-only:
there are no mutating routes, so PUT/DELETE answer 405 like any unknown method."""
from __future__ import annotations

from starlette.routing import Route

from ..db import iso
from . import common as C
from . import apib_util as U

CATEGORIES = ("api", "auth", "rbac", "secret", "admin", "execution", "pack")
OUTCOMES = ("success", "failure", "denied")

_SUMMARY = ("id", "category", "event_type", "outcome", "actor_identity", "actor_login",
            "resource_type", "resource_ref", "http_method", "http_path", "http_status",
            "request_id")
_DETAIL = ("actor_token_type", "actor_ip", "actor_user_agent", "resource_id", "duration_ms",
           "details", "correlation_chain")


def audit_summary(row: dict) -> dict:
    out = {k: row.get(k) for k in _SUMMARY}
    out["created"] = iso(row.get("created"))
    return out


def audit_response(row: dict) -> dict:
    out = audit_summary(row)
    out.update({k: row.get(k) for k in _DETAIL})
    return out


async def list_audit_events(request):
    p = await C.require_auth(request)
    filters = {
        "category": C.query_str(request, "category", enum=CATEGORIES),
        "event_type": C.query_str(request, "event_type"),
        "outcome": C.query_str(request, "outcome", enum=OUTCOMES),
        "actor_identity": C.query_int(request, "actor_identity"),
        "actor_login": C.query_str(request, "actor_login"),
        "resource_type": C.query_str(request, "resource_type"),
        "resource_id": C.query_str(request, "resource_id"),
        "resource_ref": C.query_str(request, "resource_ref"),
        "request_id": C.query_str(request, "request_id"),
        "http_status": C.query_int(request, "http_status"),
        "http_method": C.query_str(request, "http_method"),
        "http_path": C.query_str(request, "http_path"),
        "created_after": C.query_str(request, "created_after"),
        "created_before": C.query_str(request, "created_before"),
    }
    page = C.query_int(request, "page", 1, unsigned=True)
    size = C.query_int(request, "per_page", 50, unsigned=True)
    include_total = C.query_bool(request, "include_total", False)

    def work():
        db = C.db(request)
        U.rbac_authorize(db, p, "audit_log", "read")
        where, params = [], []
        for name in ("category", "event_type", "outcome", "actor_identity", "resource_type",
                     "resource_id", "resource_ref", "request_id", "http_status"):
            if filters[name] is not None:
                where.append(f"{name} = %s")
                params.append(filters[name])
        if filters["http_method"] is not None:
            where.append("upper(http_method) = upper(%s)")
            params.append(filters["http_method"])
        for name in ("actor_login", "http_path"):  # "contains"
            if filters[name] is not None:
                where.append(f"{name} LIKE %s")
                params.append(U.contains_pattern(filters[name]))
        for name, op in (("created_after", ">="), ("created_before", "<=")):
            if filters[name] is not None:
                where.append(f"created {op} %s::timestamptz")
                params.append(filters[name])
        clause = (" WHERE " + " AND ".join(where)) if where else ""
        limit = min(size, 100) if size > 0 else 0
        offset = (page - 1) * limit if page > 0 else 0
        rows = db.all(f"SELECT * FROM audit_event{clause} ORDER BY created DESC, id DESC"
                      " LIMIT %s OFFSET %s", params + [limit + 1, offset])
        has_next = len(rows) > limit
        total = None
        if include_total:
            total = int(db.one(f"SELECT count(*) AS n FROM audit_event{clause}", params)["n"])
        return C.paginated([audit_summary(r) for r in rows[:limit]], page, size, total=total,
                           has_next=has_next)
    return await U.sync(work)


async def get_audit_event(request):
    p = await C.require_auth(request)
    event_id = C.path_int(request, "id")

    def work():
        db = C.db(request)
        U.rbac_authorize(db, p, "audit_log", "read")
        row = db.one("SELECT * FROM audit_event WHERE id = %s", (event_id,))
        if row is None:
            raise C.not_found(f"Audit event with ID {event_id} not found")
        return C.ok(audit_response(row))
    return await U.sync(work)


async def by_request(request):
    p = await C.require_auth(request)
    request_id = request.path_params["request_id"]

    def work():
        db = C.db(request)
        U.rbac_authorize(db, p, "audit_log", "read")
        rows = db.all("SELECT * FROM audit_event WHERE request_id = %s ORDER BY created, id",
                      (request_id,))
        return C.ok([audit_response(r) for r in rows])
    return await U.sync(work)


ROUTES = [
    Route("/api/v1/audit-events", list_audit_events, methods=["GET"]),
    Route("/api/v1/audit-events/by-request/{request_id}", by_request, methods=["GET"]),
    Route("/api/v1/audit-events/{id}", get_audit_event, methods=["GET"]),
]
