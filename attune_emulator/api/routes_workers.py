"""Workers, `/api/v1/workers` (api.md §9.4): registry rows with heartbeat health and load.

A heartbeat older than `executor.worker_heartbeat_timeout` is stale (the same threshold the
scheduler uses; upstream hard-codes 90 s). As upstream's handler, `GET /workers/{id}` returns the
summary itself, not wrapped in `data`.
"""
from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..db import utcnow
from . import rbac
from .common import (JSON, not_found, page_params, paginated, path_int, query_bool, query_str,
                     require_auth, run_sync, ts)

ROLES = ("action", "sensor")
STATUSES = ("active", "inactive", "busy", "error")
HEALTH_STATES = ("active", "busy", "offline", "cordoned", "error", "inactive")
ACTIVE_STATUSES = ("requested", "scheduling", "scheduled", "running", "canceling")


def _loads(db, ids: list[int]) -> dict[int, dict]:
    if not ids:
        return {}
    rows = db.all("SELECT worker, status::text AS status, count(*) AS n FROM execution "
                  "WHERE worker = ANY(%s) AND status = ANY(%s::execution_status_enum[]) "
                  "GROUP BY worker, status", (ids, list(ACTIVE_STATUSES)))
    out: dict[int, dict] = {}
    for r in rows:
        out.setdefault(r["worker"], {})[r["status"]] = int(r["n"])
    return out


def _runtimes(capabilities: dict) -> list[dict]:
    raw = capabilities.get("runtimes") if isinstance(capabilities, dict) else None
    out = []
    for item in raw or []:
        if isinstance(item, str):
            out.append({"name": item, "versions": []})
        elif isinstance(item, dict) and isinstance(item.get("name"), str):
            versions = item.get("versions") if isinstance(item.get("versions"), list) else []
            out.append({"name": item["name"], "versions": versions})
    return out


def _summary(row: dict, load: dict, stale_after: float) -> dict:
    caps = row["capabilities"] if isinstance(row["capabilities"], dict) else {}
    age = None
    stale = True
    if row["last_heartbeat"] is not None:
        seconds = max((utcnow() - row["last_heartbeat"]).total_seconds(), 0.0)
        age = int(seconds)  # whole seconds on the wire, as upstream
        # Compare the exact age: rounding first made a worker 3.5 s silent read fresh against a
        # 3 s threshold while the executor (exact) had already marked it inactive.
        stale = seconds > stale_after
    total_active = sum(load.values())
    status = row["status"]
    if status == "active" and total_active > 0:
        status = "busy"
    if status == "error":
        health = "error"
    elif status == "inactive" or (status in ("active", "busy") and stale):
        health = "offline"
    elif status == "busy":
        health = "busy"
    elif status == "active":
        health = "active"
    else:
        health = "inactive"
    max_exec = caps.get("max_concurrent_executions")
    max_exec = max_exec if isinstance(max_exec, int) and not isinstance(max_exec, bool) else None
    return {
        "id": row["id"], "name": row["name"], "worker_type": row["worker_type"],
        "worker_role": row["worker_role"], "host": row["host"], "port": row["port"],
        "status": status, "last_heartbeat": ts(row["last_heartbeat"]),
        "heartbeat_age_seconds": age, "heartbeat_stale": stale,
        "cordoned": False, "cordon_reason": None, "cordoned_by": None, "cordoned_at": None,
        "health_state": health,
        "supported_runtimes": _runtimes(caps),
        "load": {
            "requested": load.get("requested", 0), "scheduling": load.get("scheduling", 0),
            "scheduled": load.get("scheduled", 0), "running": load.get("running", 0),
            "canceling": load.get("canceling", 0), "total_active": total_active,
            "max_concurrent_executions": max_exec,
            "utilization_percent": round(total_active / max_exec * 100) if max_exec else None,
            "queue_depth": None, "sensor_processes_monitored": None,
            "sensor_processes_running": None, "active_rules": None,
            "max_concurrent_sensors": None,
        },
        "created": ts(row["created"]), "updated": ts(row["updated"]),
    }


def _stale_after(request: Request) -> float:
    return float(request.app.state.cfg.get("executor.worker_heartbeat_timeout", 90))


async def list_workers(request: Request) -> Response:
    principal = await require_auth(request)
    page = page_params(request)
    role = query_str(request, "role", enum=ROLES)
    status = query_str(request, "status", enum=STATUSES)
    cordoned = query_bool(request, "cordoned", None)
    health = query_str(request, "health_state", enum=HEALTH_STATES)
    db = request.app.state.db
    stale_after = _stale_after(request)

    def work():
        rbac.authorize(db, principal, "workers", "read")
        rows = db.all("SELECT * FROM worker ORDER BY id")
        loads = _loads(db, [r["id"] for r in rows])
        items = [_summary(r, loads.get(r["id"], {}), stale_after) for r in rows]
        items = [w for w in items
                 if (role is None or w["worker_role"] == role)
                 and (status is None or w["status"] == status)
                 and (cordoned is None or w["cordoned"] == cordoned)
                 and (health is None or w["health_state"] == health)]
        return items[page.offset:page.offset + page.limit], len(items)

    items, total = await run_sync(work)
    return paginated(items, page.page, page.size, total)


async def get_worker(request: Request) -> Response:
    principal = await require_auth(request)
    worker_id = path_int(request, "id")
    db = request.app.state.db
    stale_after = _stale_after(request)

    def work():
        rbac.authorize(db, principal, "workers", "read")
        row = db.one("SELECT * FROM worker WHERE id = %s", (worker_id,))
        if row is None:
            raise not_found(f"Worker with ID {worker_id} not found")
        return _summary(row, _loads(db, [worker_id]).get(worker_id, {}), stale_after)

    return JSON(await run_sync(work))


ROUTES = [
    Route("/api/v1/workers", list_workers, methods=["GET"]),
    Route("/api/v1/workers/{id}", get_worker, methods=["GET"]),
]
