"""Events (api.md §7.1): list with filters, get, and creation by sensor/execution tokens."""
from __future__ import annotations

import re

from starlette.routing import Route

from .. import broker
from ..db import J
from . import common as C
from . import apib_util as U
from . import crud


def list_page(db, request, principal, sql: str, params: list, serializer, pack_of=None,
              default_size: int = 50, cap: int | None = None):
    """`page`/`per_page` listing ordered by created DESC: totals only with include_total,
    otherwise has_next from one extra row. `pack_of(row)` enables E3 filtering."""
    page = C.query_int(request, "page", 1, unsigned=True)
    size = C.query_int(request, "per_page", default_size, unsigned=True)
    limit = min(size, cap) if cap is not None else size
    include_total = C.query_bool(request, "include_total", False)
    offset = (page - 1) * limit if page > 0 else 0
    sql = f"SELECT * FROM ({sql}) listing"
    order = " ORDER BY created DESC, id DESC"
    cfg = request.app.state.cfg
    if pack_of is not None and U.owner_scoping(cfg):
        # Filter hidden packs' rows in Python, reading the ordered listing in growing batches
        # until the page (+1 row for has_next) is filled: a page no longer reads the whole table
        # (only include_total, which needs every visible row, still does).
        cache: dict = {}
        want = None if include_total else offset + limit + 1
        # first batch sized to the page (a small page, e.g. per_page=1, reads a few rows only)
        rows, seen, scanned, batch = [], set(), 0, max(20, 2 * (offset + limit + 1))
        while True:
            got = db.all(sql + order + " LIMIT %s OFFSET %s", params + [batch, scanned])
            scanned += len(got)
            for r in got:
                key = r.get("id")
                if key in seen:  # a row inserted meanwhile shifted the offsets
                    continue
                seen.add(key)
                if not U.pack_hidden(db, cfg, principal, pack_of(r), cache):
                    rows.append(r)
            if len(got) < batch or (want is not None and len(rows) >= want):
                break
            batch = min(batch * 2, 5000)
        chunk = rows[offset:offset + limit]
        has_next = offset + limit < len(rows)
        return C.paginated([serializer(r) for r in chunk], page, size,
                           total=len(rows) if include_total else None, has_next=has_next)
    rows = db.all(sql + order + " LIMIT %s OFFSET %s", params + [limit + 1, offset])
    has_next = len(rows) > limit
    rows = rows[:limit]
    total = U.count(db, sql, params) if include_total else None
    return C.paginated([serializer(r) for r in rows], page, size, total=total,
                       has_next=has_next)


def _event_pack(row):
    return (row.get("trigger_ref") or "").split(".", 1)[0] or None


async def list_events(request):
    p = await C.require_auth(request)
    trigger = C.query_int(request, "trigger")
    source = C.query_int(request, "source")
    trigger_ref = C.query_str(request, "trigger_ref")
    rule_ref = C.query_str(request, "rule_ref")

    def work():
        db = C.db(request)
        where, params = [], []
        if trigger is not None:
            where.append("trigger = %s")
            params.append(trigger)
        if source is not None:
            where.append("source = %s")
            params.append(source)
        if trigger_ref is not None:
            where.append(U.glob_condition("trigger_ref", trigger_ref, params))
        if rule_ref is not None:
            where.append(U.glob_condition("rule_ref", rule_ref, params))
        sql = "SELECT * FROM event" + crud.where_clause(where)
        return list_page(db, request, p, sql, params, U.event_summary, _event_pack)
    return await U.sync(work)


async def get_event(request):
    p = await C.require_auth(request)
    event_id = C.path_int(request, "id")

    def work():
        db = C.db(request)
        row = db.one("SELECT * FROM event WHERE id = %s", (event_id,))
        if row is None or U.pack_hidden(db, request.app.state.cfg, p, _event_pack(row)):
            raise C.not_found(f"Event {event_id} not found")
        return C.ok(U.event_response(row))
    return await U.sync(work)


CREATE_SPEC = {
    "trigger_ref": C.Field(str),
    "trigger_type": C.Field(str),
    "payload": C.Field("json"),
    "config": C.Field("json"),
    "trigger_instance_id": C.Field(str),
}


async def create_event(request):
    p = await C.require_auth(request)
    raw = await C.read_json(request)
    body = C.validate_body(raw, CREATE_SPEC, "{}")
    trigger_ref = body["trigger_ref"] or body["trigger_type"]
    if trigger_ref is None:
        raise C.PlainError(422, "Failed to deserialize the JSON body into the target type: "
                                "missing field `trigger_ref` at line 1 column 1")
    if p.token_type not in ("sensor", "execution"):
        raise C.forbidden("Events may only be created by sensor services or execution tokens")

    def work():
        db = C.db(request)
        trigger = db.one("SELECT id, ref FROM trigger WHERE ref = %s", (trigger_ref,))
        if trigger is None:
            raise C.not_found(f"Trigger '{trigger_ref}' not found")
        rule_id = rule_ref = None
        tid = body["trigger_instance_id"]
        m = re.fullmatch(r"rule_(\d+)", tid or "")
        if m:
            rule = db.one("SELECT id, ref FROM rule WHERE id = %s", (int(m.group(1)),))
            if rule is not None:
                rule_id, rule_ref = rule["id"], rule["ref"]
        source = None
        if p.token_type == "sensor" and p.login.startswith("sensor:"):
            sensor = db.one("SELECT id FROM sensor WHERE ref = %s", (p.login[len("sensor:"):],))
            source = sensor["id"] if sensor else None
        row = db.one(
            "INSERT INTO event (trigger, trigger_ref, config, payload, source, source_ref, rule, "
            "rule_ref, trigger_instance_id) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s) RETURNING *",
            (trigger["id"], trigger["ref"], J(body["config"]), J(body["payload"]), source,
             p.login, rule_id, rule_ref, tid))
        C.publish(request, broker.EVENTS, "event.created",
                  {"event_id": row["id"], "trigger_ref": row["trigger_ref"]})
        return C.ok(U.event_response(row), 201)
    return await U.sync(work)


ROUTES = [
    Route("/api/v1/events", list_events, methods=["GET"]),
    Route("/api/v1/events", create_event, methods=["POST"]),
    Route("/api/v1/events/{id}", get_event, methods=["GET"]),
]
