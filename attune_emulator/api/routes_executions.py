"""Executions (api.md §8): execute, list, get, cancel, stats, status lists, and the two SSE
streams (execution notifications; live stdout/stderr tail)."""
from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import psycopg2
from starlette.responses import StreamingResponse
from starlette.routing import Route

from ..artifacts import execution_log_dir
from .. import audit, broker, keystore, secret_params
from ..db import J
from . import common as C
from . import apib_util as U
from . import crud
from .routes_events import list_page

log = logging.getLogger(__name__)

PENDING = ("requested", "scheduling", "scheduled")
CANCEL_BEFORE_START = {"error": "Cancelled by user before execution started"}
KEEPALIVE_SECONDS = 15.0


def _pack_of(row) -> str | None:
    return (row.get("action_ref") or "").split(".", 1)[0] or None


def ancestors_of(db, row) -> list:
    out, seen, parent = [], set(), row.get("parent")
    while parent is not None and parent not in seen and len(seen) < 100:
        seen.add(parent)
        up = db.one("SELECT parent, executor FROM execution WHERE id = %s", (parent,))
        if up is None:
            break
        out.append(up["executor"])
        parent = up["parent"]
    return out


def load_execution(db, request, principal, exec_id: int) -> dict:
    row = db.one("SELECT * FROM execution WHERE id = %s", (exec_id,))
    if row is None or U.pack_hidden(db, request.app.state.cfg, principal, _pack_of(row)):
        raise C.not_found(f"Execution with ID {exec_id} not found")
    return row


def authorize_read(db, principal, row, action: str = "read") -> None:
    U.rbac_authorize(db, principal, "executions", action,
                     execution={"executor": row["executor"], "ancestors": ancestors_of(db, row),
                                "action_ref": row["action_ref"]})


# ------------------------------------------------------------------ execute
EXECUTE_SPEC = {
    "action_ref": C.Field(str, required=True),
    "parameters": C.Field("json"),
    "env_vars": C.Field(dict),
    "permission_set_refs": C.Field(list, items=str),
    "artifact_retention_policy": C.Field(str, enum=("versions", "days", "hours", "minutes")),
    "artifact_retention_limit": C.Field(int),
    "worker_selector": C.Field("json"),
    "worker_tolerations": C.Field("json"),
    "worker_affinity": C.Field("json"),
}


# The caller and the token's execution are stored only when they (still) exist.
_INSERT = """INSERT INTO execution (action, action_ref, config, env_vars, parent, executor, status,
        permission_set_refs, workflow_def, max_retries, worker_selector, worker_tolerations,
        worker_affinity)
    VALUES (%(action)s, %(action_ref)s, %(config)s, %(env_vars)s,
            (SELECT id FROM execution WHERE id = %(parent)s),
            (SELECT id FROM identity WHERE id = %(executor)s), 'requested', %(refs)s,
            %(workflow_def)s, %(max_retries)s, %(selector)s, %(tolerations)s, %(affinity)s)"""
# ... with its `execution.requested` audit row (E6, as audit.record_execution writes it)
_INSERT_AUDITED = f"""WITH created AS ({_INSERT} RETURNING *),
    audited AS (
        INSERT INTO audit_event (category, event_type, outcome, actor_identity, actor_login,
                                 actor_token_type, resource_type, resource_id, resource_ref,
                                 details)
        SELECT 'execution', '{audit.EXECUTION_REQUESTED}',
               '{audit.execution_outcome(audit.EXECUTION_REQUESTED)}', c.executor, %(login)s,
               %(token_type)s, 'executions', c.id::text, c.action_ref,
               jsonb_build_object('action_ref', c.action_ref, 'parent_execution', c.parent)
        FROM created c)
    SELECT * FROM created"""


async def execute(request):
    p = await C.require_auth(request)
    body = await C.read_json(request, EXECUTE_SPEC)
    if body["artifact_retention_limit"] is not None and body["artifact_retention_limit"] <= 0:
        raise C.bad_request("artifact_retention_limit must be greater than 0")
    if body["env_vars"] is not None and not all(isinstance(v, str) for v in body["env_vars"].values()):
        raise C.PlainError(422, "Failed to deserialize the JSON body into the target type: "
                                "env_vars: invalid type, expected a string at line 1 column 1")
    if body["worker_selector"] is not None and not isinstance(body["worker_selector"], dict):
        raise C.bad_request("worker_selector must be an object")
    if body["worker_tolerations"] is not None and not isinstance(body["worker_tolerations"], list):
        raise C.bad_request("worker_tolerations must be an array")

    def work():
        db = C.db(request)
        action = crud.load_cached_action(db, request.app.state.cfg, p,
                                         f"{U.ACTION_SELECT} WHERE a.ref = %s", body["action_ref"])
        U.rbac_authorize(db, p, "actions", "execute", pack_ref=action["pack_ref"],
                         ref=action["ref"])
        refs = body["permission_set_refs"]
        if refs is None:
            refs = action["default_execution_permission_set_refs"] or []
        else:
            U.check_delegation(db, p, refs)
        parent = None
        if p.token_type == "execution":
            try:
                parent = int(p.metadata.get("execution_id"))
            except (TypeError, ValueError):
                parent = None
        params = body["parameters"] if body["parameters"] is not None else {}
        # `secret: true` parameters: redacted in config, stored encrypted (secret_params.py).
        enc_key = request.app.state.cfg.get("security.encryption_key")
        secrets = []
        if enc_key:
            params, secrets = secret_params.redact(
                params, secret_params.secret_names(action.get("param_schema")))
        args = {"action": action["id"], "action_ref": action["ref"], "config": J(params),
                "env_vars": J(body["env_vars"]), "parent": parent, "executor": p.identity_id,
                "refs": J(list(refs)), "workflow_def": action["workflow_def"],
                "max_retries": action.get("max_retries"),
                "selector": J(body["worker_selector"] or None),
                "tolerations": J(body["worker_tolerations"] or None),
                "affinity": J(body["worker_affinity"] or None),
                "login": p.login, "token_type": p.token_type}
        row = None
        if not secrets:  # the row and its E6 `execution.requested` entry in one statement
            try:
                row = db.one(_INSERT_AUDITED, args)
            except (psycopg2.OperationalError, psycopg2.InterfaceError, psycopg2.IntegrityError):
                raise  # the insert itself cannot succeed (e.g. the action was just deleted)
            except psycopg2.Error as exc:  # nothing was written: insert, then audit apart
                log.warning("execution insert with its audit entry failed (%s); auditing apart",
                            str(exc).strip())
        if row is None:
            row = db.one(_INSERT + " RETURNING *", args)
            if secrets:
                keystore.store(db.execute, enc_key, "execution", row["id"], secrets)
            # the caller and the token's execution, each only when it (still) exists
            audit.record_execution(db.execute, row, audit.EXECUTION_REQUESTED,
                                   actor_identity=row["executor"], actor_login=p.login,
                                   actor_token_type=p.token_type,
                                   details={"action_ref": action["ref"],
                                            "parent_execution": row["parent"]})
        C.publish(request, broker.EXECUTIONS, "execution.requested", {"execution_id": row["id"]})
        return C.ok(U.execution_response(row), 201)
    return await U.sync(work)


# ------------------------------------------------------------------ list / get
async def list_executions(request):
    p = await C.require_auth(request)
    status = C.query_str(request, "status", enum=U.EXECUTION_STATUSES)
    action_ref = C.query_str(request, "action_ref")
    pack_name = C.query_str(request, "pack_name")
    rule_ref = C.query_str(request, "rule_ref")
    trigger_ref = C.query_str(request, "trigger_ref")
    executor = C.query_int(request, "executor")
    result_contains = C.query_str(request, "result_contains")
    enforcement = C.query_int(request, "enforcement")
    parent = C.query_int(request, "parent")
    top_level_only = C.query_bool(request, "top_level_only", False)

    def work():
        db = C.db(request)
        where, params = [], []
        if status is not None:
            where.append("x.status = %s")
            params.append(status)
        if action_ref is not None:
            where.append(U.glob_condition("x.action_ref", action_ref, params))
        if pack_name is not None:
            where.append("x.action_ref LIKE %s ESCAPE '\\'")
            params.append(pack_name.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + ".%")
        if rule_ref is not None:
            where.append(U.glob_condition("en.rule_ref", rule_ref, params))
        if trigger_ref is not None:
            where.append(U.glob_condition("en.trigger_ref", trigger_ref, params))
        if executor is not None:
            where.append("x.executor = %s")
            params.append(executor)
        if result_contains is not None:
            where.append("x.result::text ILIKE %s ESCAPE '\\'")
            params.append("%" + result_contains.replace("\\", "\\\\").replace("%", "\\%")
                          .replace("_", "\\_") + "%")
        if enforcement is not None:
            where.append("x.enforcement = %s")
            params.append(enforcement)
        if parent is not None:
            where.append("x.parent = %s")
            params.append(parent)
        if top_level_only:
            where.append("x.parent IS NULL")
        sql = U.EXECUTION_SUMMARY_SELECT + (" WHERE " + " AND ".join(where) if where else "")
        return list_page(db, request, p, sql, params, U.execution_summary, _pack_of,
                         default_size=20, cap=100)
    return await U.sync(work)


async def get_execution(request):
    p = await C.require_auth(request)
    exec_id = C.path_int(request, "id")
    reveal = C.query_bool(request, "include_secret_values", False)

    def work():
        db = C.db(request)
        row = load_execution(db, request, p, exec_id)
        authorize_read(db, p, row)
        if reveal:
            authorize_read(db, p, row, "decrypt")
            enc_key = request.app.state.cfg.get("security.encryption_key")
            found = keystore.load_secrets(db.all, enc_key, "execution", row["id"])
            if found:
                row = dict(row, config=keystore.restore(row.get("config"), found))
        return C.ok(U.execution_response(row))
    return await U.sync(work)


async def stats(request):
    await C.require_auth(request)

    def work():
        rows = C.db(request).all("SELECT status::text AS s, count(*) AS n FROM execution GROUP BY status")
        n = {r["s"]: int(r["n"]) for r in rows}
        return C.ok({"total": sum(n.values()), "completed": n.get("completed", 0),
                     "failed": n.get("failed", 0), "running": n.get("running", 0),
                     "pending": sum(n.get(s, 0) for s in PENDING),
                     "cancelled": n.get("canceling", 0) + n.get("cancelled", 0),
                     "timeout": n.get("timeout", 0), "abandoned": n.get("abandoned", 0)})
    return await U.sync(work)


async def by_status(request):
    await C.require_auth(request)
    status = request.path_params["status"]
    if status not in U.EXECUTION_STATUSES:
        raise C.bad_request(f"Invalid execution status: {status}")
    pg = C.page_params(request)

    def work():
        db = C.db(request)
        base = U.EXECUTION_SUMMARY_SELECT + " WHERE x.status = %s"
        total = U.count(db, base, [status])
        rows = db.all(base + " ORDER BY x.created DESC, x.id DESC LIMIT %s OFFSET %s",
                      [status, pg.limit, pg.offset])
        return C.paginated([U.execution_summary(r) for r in rows], pg.page, pg.size, total=total)
    return await U.sync(work)


# ------------------------------------------------------------------ cancel
def _cancel_one(db, request, row: dict, *, cascade_running: bool) -> dict:
    """Apply the cancel transition to one execution; returns the (possibly updated) row."""
    for _attempt in range(3):
        status = row["status"]
        if status in PENDING:
            new = db.one("UPDATE execution SET status = 'cancelled', result = %s "
                         "WHERE id = %s AND status = ANY(%s::execution_status_enum[]) RETURNING *",
                         (J(CANCEL_BEFORE_START), row["id"], list(PENDING)))
            if new is not None:
                C.publish(request, broker.EXECUTIONS, "execution.completed",
                          {"execution_id": new["id"], "status": "cancelled"})
                return new
        elif status == "running":
            if not cascade_running:
                return row
            new = db.one("UPDATE execution SET status = 'canceling' WHERE id = %s "
                         "AND status = 'running' RETURNING *", (row["id"],))
            if new is not None:
                if new["worker"] is not None:
                    C.publish(request, broker.EXECUTIONS,
                              f"execution.cancel.worker.{new['worker']}",
                              {"execution_id": new["id"]})
                return new
        else:
            return row
        row = db.one("SELECT * FROM execution WHERE id = %s", (row["id"],))
    return row


def _is_workflow(db, row) -> bool:
    if row.get("workflow_def") is not None:
        return True
    if row.get("action") is None:
        return False
    a = db.one("SELECT workflow_def FROM action WHERE id = %s", (row["action"],))
    return bool(a and a["workflow_def"] is not None)


def _cancellation_policy(db, row) -> str:
    wf = row.get("workflow_def")
    if wf is None and row.get("action") is not None:
        a = db.one("SELECT workflow_def FROM action WHERE id = %s", (row["action"],))
        wf = a["workflow_def"] if a else None
    if wf is None:
        return "allow_finish"
    d = db.one("SELECT definition FROM workflow_definition WHERE id = %s", (wf,))
    definition = d["definition"] if d and isinstance(d["definition"], dict) else {}
    return definition.get("cancellation_policy") or "allow_finish"


def _cancel_children(db, request, parent_row: dict, policy: str, depth: int = 0) -> None:
    if depth > 20:
        return
    children = db.all("SELECT * FROM execution WHERE parent = %s AND NOT (status = ANY(%s::execution_status_enum[]))",
                      (parent_row["id"], list(U.TERMINAL)))
    for child in children:
        if _is_workflow(db, child):
            _cancel_workflow(db, request, child, policy, depth + 1)
        else:
            _cancel_one(db, request, child, cascade_running=(policy == "cancel_running"))


class _WorkflowStarted(Exception):
    """The parent started (got its workflow_execution row) while we waited for its lock."""


def _lock_and_cancel_workflow(db, exec_id: int) -> tuple[dict | None, bool]:
    """Cancel a workflow parent in one transaction that holds, in the executor's lock order,
    the workflow_execution row and then the parent's row (executor/workflows.py takes the same
    locks to advance or complete a workflow). Whoever locks first decides: a completion that
    committed first leaves the parent terminal here (-> 409 at the top level); a cancel that
    commits first leaves it `cancelled`, which the executor never overwrites.
    Returns (the parent row as committed, whether this call cancelled it)."""
    with db.tx() as cur:
        cur.execute("SELECT id FROM workflow_execution WHERE execution = %s FOR UPDATE", (exec_id,))
        wf = cur.fetchone()
        cur.execute("SELECT * FROM execution WHERE id = %s FOR UPDATE", (exec_id,))
        row = cur.fetchone()
        if row is None or row["status"] in U.TERMINAL or row["status"] == "canceling":
            return row, False
        if wf is None and row["status"] not in PENDING:
            raise _WorkflowStarted()
        cur.execute("UPDATE execution SET status = 'cancelled', result = %s WHERE id = %s "
                    "RETURNING *",
                    (J({"error": "Workflow cancelled by user", "succeeded": False}
                       if row["status"] not in PENDING else CANCEL_BEFORE_START), exec_id))
        row = cur.fetchone()
        cur.execute("UPDATE workflow_execution SET status = 'cancelled' WHERE execution = %s "
                    "AND NOT (status = ANY(%s::execution_status_enum[]))",
                    (exec_id, list(U.TERMINAL)))
        return row, True


def _cancel_workflow(db, request, row: dict, policy: str | None = None, depth: int = 0,
                     outcome: dict | None = None) -> dict:
    policy = policy or _cancellation_policy(db, row)
    for _attempt in range(5):
        try:
            new, changed = _lock_and_cancel_workflow(db, row["id"])
            break
        except _WorkflowStarted:
            continue
    else:
        new, changed = db.one("SELECT * FROM execution WHERE id = %s", (row["id"],)), False
    if outcome is not None:
        outcome["changed"] = changed
    if new is not None:
        row = new
    if changed:
        C.publish(request, broker.EXECUTIONS, "execution.completed",
                  {"execution_id": row["id"], "status": "cancelled"})
    _cancel_children(db, request, row, policy, depth)
    return row


async def cancel(request):
    p = await C.require_auth(request)
    exec_id = C.path_int(request, "id")

    def work():
        db = C.db(request)
        row = load_execution(db, request, p, exec_id)
        U.mutation_rbac(request, db, p, "executions", "cancel",
                        execution={"executor": row["executor"], "ancestors": ancestors_of(db, row),
                                   "action_ref": row["action_ref"]})
        if row["status"] in U.TERMINAL:
            raise C.conflict(f"Execution {exec_id} is in status '{row['status']}' "
                             "and cannot be cancelled")
        if row["status"] == "canceling":
            return C.ok(U.execution_response(row))
        if _is_workflow(db, row):
            outcome: dict = {}
            row = _cancel_workflow(db, request, row, outcome=outcome)
            if not outcome.get("changed") and row["status"] in U.TERMINAL:
                # the workflow completed before the cancel got its lock: the completion won
                raise C.conflict(f"Execution {exec_id} is in status '{row['status']}' "
                                 "and cannot be cancelled")
        else:
            row = _cancel_one(db, request, row, cascade_running=True)
            if row["status"] in ("completed", "failed", "timeout", "abandoned"):
                raise C.conflict(f"Execution {exec_id} is in status '{row['status']}' "
                                 "and cannot be cancelled")
        return C.ok(U.execution_response(row))
    return await U.sync(work)


# ------------------------------------------------------------------ SSE helpers
async def _sse_auth(request, execution_id: int | None = None) -> C.Principal:
    try:
        p = await C.require_auth(request)
    except C.AuthError as exc:
        raise exc.as_api_error() from None
    if p.token_type == "access":
        return p
    if p.token_type == "execution":
        own = p.metadata.get("execution_id")
        if execution_id is not None and str(own) == str(execution_id):
            return p
    raise C.unauthorized("Unauthorized")


def _sse(data: str, event: str | None = None, id_: str | None = None) -> str:
    out = []
    if event:
        out.append(f"event: {event}")
    if id_ is not None:
        out.append(f"id: {id_}")
    lines = data.split("\n") if data else [""]
    out.extend(f"data: {line}" for line in lines)
    return "\n".join(out) + "\n\n"


SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
CHANNELS = ("execution_created", "execution_status_changed", "workflow_execution_status_changed")


async def execution_stream(request):
    execution_id = C.query_int(request, "execution_id")
    p = await _sse_auth(request, execution_id)
    db = C.db(request)
    conn = await C.run_sync(db.connect, True)
    try:
        with conn.cursor() as cur:
            for ch in CHANNELS:
                cur.execute(f"LISTEN {ch}")
    except Exception:
        conn.close()
        raise
    queue: asyncio.Queue = asyncio.Queue()
    loop = asyncio.get_running_loop()

    def on_readable():
        try:
            conn.poll()
        except Exception:
            queue.put_nowait(None)
            return
        while conn.notifies:
            queue.put_nowait(conn.notifies.pop(0).payload)

    loop.add_reader(conn.fileno(), on_readable)
    cfg = request.app.state.cfg
    hidden_cache: dict = {}

    async def gen():
        try:
            while True:
                try:
                    payload = await asyncio.wait_for(queue.get(), KEEPALIVE_SECONDS)
                except asyncio.TimeoutError:
                    yield ": keep-alive\n\n"
                    continue
                if payload is None:
                    return
                try:
                    doc = json.loads(payload)
                except ValueError:
                    continue
                if not isinstance(doc, dict) or doc.get("entity_type") != "execution":
                    continue
                if execution_id is not None and doc.get("id") != execution_id:
                    continue
                if U.owner_scoping(cfg):
                    pack = (doc.get("action_ref") or "").split(".", 1)[0]
                    hidden = await C.run_sync(U.pack_hidden, db, cfg, p, pack, hidden_cache)
                    if hidden:
                        continue
                yield _sse(payload)
        finally:
            try:
                loop.remove_reader(conn.fileno())
            except Exception:
                pass
            conn.close()

    return StreamingResponse(gen(), media_type="text/event-stream", headers=SSE_HEADERS)


async def log_stream(request):
    exec_id = C.path_int(request, "id")
    stream = request.path_params["stream"]
    p = await _sse_auth(request, exec_id)
    if stream not in ("stdout", "stderr"):
        raise C.bad_request(f"Invalid log stream '{stream}': expected 'stdout' or 'stderr'")
    offset = C.query_int(request, "offset", 0, unsigned=True) or 0

    def check():
        db = C.db(request)
        row = load_execution(db, request, p, exec_id)
        if p.token_type == "access":
            authorize_read(db, p, row)
        return row
    await U.sync(check)
    artifacts_dir = request.app.state.cfg.get("artifacts_dir")
    db = C.db(request)

    def state_now() -> tuple[str, Path | None]:
        """(status, log path): the path exists only once the run started (keyed by started_at)."""
        r = db.one("SELECT status::text AS s, started_at FROM execution WHERE id = %s", (exec_id,))
        if r is None:
            return "cancelled", None
        if r["started_at"] is None:
            return r["s"], None
        return r["s"], execution_log_dir(artifacts_dir, exec_id, r["started_at"]) / f"{stream}.log"

    def read_from(path: Path, pos: int) -> tuple[bytes, int]:
        try:
            with open(path, "rb") as fh:
                fh.seek(pos)
                data = fh.read(1024 * 1024)
                return data, pos + len(data)
        except FileNotFoundError:
            return b"", pos

    async def gen():
        pos = offset
        sent_content = False
        sent_waiting = False
        idle = 0.0
        while True:
            status, path = await C.run_sync(state_now)
            terminal = status in U.TERMINAL
            exists = path is not None and path.exists()
            if not exists and not terminal:
                if not sent_waiting:
                    yield _sse("", "waiting")
                    sent_waiting = True
            if exists:
                while True:
                    data, new_pos = await C.run_sync(read_from, path, pos)
                    if not data and sent_content:
                        break
                    text = data.decode("utf-8", errors="replace")
                    pos = new_pos
                    yield _sse(text, "append" if sent_content else "content", str(pos))
                    sent_content = True
                    if len(data) < 1024 * 1024:
                        break
            if terminal:
                yield _sse("", "done", str(pos))
                return
            await asyncio.sleep(0.25)
            idle += 0.25
            if idle >= KEEPALIVE_SECONDS:
                idle = 0.0
                yield ": keep-alive\n\n"

    return StreamingResponse(gen(), media_type="text/event-stream", headers=SSE_HEADERS)


ROUTES = [
    Route("/api/v1/executions", list_executions, methods=["GET"]),
    Route("/api/v1/executions/execute", execute, methods=["POST"]),
    Route("/api/v1/executions/stream", execution_stream, methods=["GET"]),
    Route("/api/v1/executions/stats", stats, methods=["GET"]),
    Route("/api/v1/executions/status/{status}", by_status, methods=["GET"]),
    Route("/api/v1/executions/{id}", get_execution, methods=["GET"]),
    Route("/api/v1/executions/{id}/cancel", cancel, methods=["POST"]),
    Route("/api/v1/executions/{id}/logs/{stream}/stream", log_stream, methods=["GET"]),
]
