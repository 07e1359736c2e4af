"""The shapes the ref-addressed resource routes (triggers, sensors, rules, actions, workflows,
packs) share: a row by ref or 404, the pack a new row goes into, paged listings, and the get /
delete / enable / disable handlers.

Every helper raises and answers exactly what the handlers it replaced did; the check order of a
handler (422 -> 409 -> 404 -> 403, api.md §0.5) stays with the caller, which decides when to call.
"""
from __future__ import annotations

from typing import Callable

from . import common as C
from . import apib_util as U


# ------------------------------------------------------------------ lookups
def load_by_ref(db, cfg, principal, sql: str, ref: str, noun: str) -> dict:
    """The row `sql` (one `%s`: the ref) finds; missing or in a pack hidden from the caller (E3)
    is the same 404 `<noun> '<ref>' not found`, so hidden rows cannot be probed."""
    row = db.one(sql, (ref,))
    if row is None or U.pack_hidden(db, cfg, principal, row["pack_ref"]):
        raise C.not_found(f"{noun} '{ref}' not found")
    return row


def load_cached_action(db, cfg, principal, sql: str, ref: str) -> dict:
    """`load_by_ref` for actions, from the per-process cache when the caller's request read the
    current action epoch (authz.py); a copy, so callers may change it."""
    shared = getattr(principal, "cache", None)
    epoch = getattr(principal, "action_epoch", None)
    if shared is None or epoch is None:
        return load_by_ref(db, cfg, principal, sql, ref, "Action")
    row = shared.action(db, sql, ref, epoch)
    if row is None or U.pack_hidden(db, cfg, principal, row["pack_ref"]):
        raise C.not_found(f"Action '{ref}' not found")
    return dict(row)


def load_pack(db, cfg, principal, pack_ref: str) -> dict:
    """The pack a row is created in (or listed from): missing or hidden (E3) -> 404."""
    pack = db.one("SELECT * FROM pack WHERE ref = %s", (pack_ref,))
    if pack is None or U.pack_hidden(db, cfg, principal, pack["ref"]):
        raise C.not_found(f"Pack '{pack_ref}' not found")
    return pack


def ensure_new_ref(db, table: str, ref: str, noun: str) -> None:
    """409 when a `table` row with this ref exists already."""
    if db.one(f"SELECT id FROM {table} WHERE ref = %s", (ref,)):
        raise C.conflict(f"{noun} with ref '{ref}' already exists")


def update_row(db, table: str, row: dict, sets: list, params: list) -> dict:
    """`UPDATE table SET <sets>` on `row`, returning the new row (`row` itself when nothing is set)."""
    if not sets:
        return row
    return db.one(f"UPDATE {table} SET {', '.join(sets)} WHERE id = %s RETURNING *",
                  params + [row["id"]])


def where_clause(where: list) -> str:
    return " WHERE " + " AND ".join(where) if where else ""


# ------------------------------------------------------------------ pages (`page`/`page_size`)
def page_rows(db, sql: str, params: list, pg: C.PageParams, order: str) -> tuple[list, int]:
    """(rows of the page, total) for `sql`, counted and paged in SQL."""
    total = U.count(db, sql, params)
    rows = db.all(f"{sql} ORDER BY {order} LIMIT %s OFFSET %s", params + [pg.limit, pg.offset])
    return rows, total


def visible_rows(db, cfg, principal, sql: str, params: list, order: str) -> list:
    """Every row of `sql` in `order`, less those in packs hidden from the caller (E3)."""
    cache: dict = {}
    return [r for r in db.all(f"{sql} ORDER BY {order}", params)
            if not U.pack_hidden(db, cfg, principal, r["pack_ref"], cache)]


def page_visible(db, cfg, principal, sql: str, params: list, pg: C.PageParams,
                 order: str, *, sql_paging: bool = True) -> tuple[list, int]:
    """`page_rows` with E3: when owner scoping is on, hidden packs' rows are filtered in Python
    (they count neither in the page nor in the total). `sql_paging=False` always pages in Python,
    as the sensor and workflow lists do: there an offset past bigint is an empty page, not 400."""
    if sql_paging and not U.owner_scoping(cfg):
        return page_rows(db, sql, params, pg, order)
    rows = visible_rows(db, cfg, principal, sql, params, order)
    return rows[pg.offset:pg.offset + pg.limit], len(rows)


# ------------------------------------------------------------------ handlers
def _authorize(request, db, principal, upstream_rbac: bool, resource: str, action: str, **ctx):
    # upstream checks some routes itself; the rest are checked only under E4
    if upstream_rbac:
        U.rbac_authorize(db, principal, resource, action, **ctx)
    else:
        U.mutation_rbac(request, db, principal, resource, action, **ctx)


def list_handler(table: str, serialize: Callable, enabled_only: bool, *, sql_paging: bool = True):
    """GET /<resources>[/enabled]: visible rows by ref, paged (`page_visible`)."""
    async def handler(request):
        p = await C.require_auth(request)
        pg = C.page_params(request)

        def work():
            db = C.db(request)
            base = f"SELECT * FROM {table}" + (" WHERE enabled" if enabled_only else "")
            rows, total = page_visible(db, request.app.state.cfg, p, base, [], pg, "ref",
                                       sql_paging=sql_paging)
            return C.paginated([serialize(r) for r in rows], pg.page, pg.size, total=total)
        return await U.sync(work)
    return handler


def get_handler(load: Callable, serialize: Callable):
    """GET /<resources>/{ref}."""
    async def handler(request):
        p = await C.require_auth(request)
        ref = request.path_params["ref"]

        def work():
            return C.ok(serialize(load(C.db(request), request.app.state.cfg, p, ref)))
        return await U.sync(work)
    return handler


def delete_handler(table: str, load: Callable, noun: str, resource: str, *,
                   upstream_rbac: bool = False, after: Callable | None = None):
    """DELETE /<resources>/{ref}: 404, then `<resource>:delete`, then delete; `after(request,
    row)` runs once the row is gone (e.g. to publish)."""
    async def handler(request):
        p = await C.require_auth(request)
        ref = request.path_params["ref"]

        def work():
            db = C.db(request)
            row = load(db, request.app.state.cfg, p, ref)
            _authorize(request, db, p, upstream_rbac, resource, "delete",
                       pack_ref=row["pack_ref"], ref=ref)
            db.execute(f"DELETE FROM {table} WHERE id = %s", (row["id"],))
            if after is not None:
                after(request, row)
            return C.success(f"{noun} '{ref}' deleted successfully")
        return await U.sync(work)
    return handler


def toggle_handler(table: str, load: Callable, resource: str, serialize: Callable,
                   enabled: bool, *, noun: str | None = None, after: Callable | None = None):
    """POST /<resources>/{ref}/enable|disable (E4 `<resource>:update`). The message
    `<noun> enabled|disabled successfully` only where upstream sends one (`noun`)."""
    word = "enabled" if enabled else "disabled"

    async def handler(request):
        p = await C.require_auth(request)
        ref = request.path_params["ref"]

        def work():
            db = C.db(request)
            row = load(db, request.app.state.cfg, p, ref)
            U.mutation_rbac(request, db, p, resource, "update", pack_ref=row["pack_ref"], ref=ref)
            row = db.one(f"UPDATE {table} SET enabled = %s WHERE id = %s RETURNING *",
                         (enabled, row["id"]))
            if after is not None:
                after(request, row)
            return C.ok(serialize(row), message=f"{noun} {word} successfully" if noun else None)
        return await U.sync(work)
    return handler
