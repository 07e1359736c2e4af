"""Key store, `/api/v1/keys` (api.md §11).

Encrypted values are stored as a JSON string (crypto.encrypt_value) plus `encryption_key_hash`.
Reads return the decrypted value only with `keys:decrypt`, otherwise `value: null` (still 200).
Keys owned by another identity are hidden (404 / dropped from lists) unless an owner-scoped grant
covers them.

Extension E7 `key_expiry`: an optional `expires_at` (RFC 3339; in the future on create; tagged patch
`{"op": "set", "value": ...}` / `{"op": "clear"}` on update; omitted from answers when null). At or
after it the key is absent everywhere (GET/PUT/DELETE 404, dropped from lists, no ambient injection,
no `keystore`); expired rows are purged lazily, so the ref can be created again.
"""
from __future__ import annotations

import datetime as _dt
import logging

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .. import crypto
from ..db import J
from . import rbac
from .common import (ApiError, Field, Principal, bad_request, check_rules, conflict, not_found,
                     ok, page_params, paginated, query_str, read_json, require_auth, run_sync,
                     success, ts, validation_error)

log = logging.getLogger(__name__)

OWNER_TYPES = ("system", "identity", "pack", "action", "sensor")
CREATE_SPEC = {
    "ref": Field(str, required=True, min_len=1, max_len=255),
    "owner_type": Field(str, required=True, enum=OWNER_TYPES),
    "owner": Field(str),
    "owner_identity": Field(int), "owner_pack": Field(int), "owner_pack_ref": Field(str),
    "owner_action": Field(int), "owner_action_ref": Field(str),
    "owner_sensor": Field(int), "owner_sensor_ref": Field(str),
    "name": Field(str, required=True, min_len=1, max_len=255),
    "value": Field("json", required=True),
    "encrypted": Field(bool, nullable=False, default=False),
    "expires_at": Field(str),
}
UPDATE_SPEC = {"name": Field(str, min_len=1, max_len=255), "value": Field("json"),
               "encrypted": Field(bool), "expires_at": Field(dict)}


# ------------------------------------------------------------------------------ helpers

def _with_expiry(out: dict, row: dict) -> dict:
    if row.get("expires_at") is not None:
        out["expires_at"] = ts(row["expires_at"])
    return out


def _summary(row: dict) -> dict:
    return _with_expiry({"id": row["id"], "ref": row["ref"], "owner_type": row["owner_type"],
                         "owner": row["owner"], "name": row["name"], "encrypted": row["encrypted"],
                         "created": ts(row["created"])}, row)


def _response(row: dict, value) -> dict:
    return {"id": row["id"], "ref": row["ref"], "owner_type": row["owner_type"],
            "owner": row["owner"], "owner_identity": row["owner_identity"],
            "owner_pack": row["owner_pack"], "owner_pack_ref": row["owner_pack_ref"],
            "owner_action": row["owner_action"], "owner_action_ref": row["owner_action_ref"],
            "owner_sensor": row["owner_sensor"], "owner_sensor_ref": row["owner_sensor_ref"],
            "name": row["name"], "encrypted": row["encrypted"], "value": value,
            **_with_expiry({}, row),
            "created": ts(row["created"]), "updated": ts(row["updated"])}


def _encryption_key(request: Request) -> str | None:
    return request.app.state.crypto_key


def _require_encryption_key(request: Request) -> str:
    key = _encryption_key(request)
    if not key:
        raise bad_request("Cannot encrypt: encryption key not configured on server")
    return key


def _plain_value(request: Request, row: dict):
    """The stored value, decrypted when needed (500 when the server cannot decrypt it)."""
    if not row["encrypted"]:
        return row["value"]
    key = _encryption_key(request)
    if not key:
        raise ApiError(500, "Encryption key not configured on server")
    try:
        return crypto.decrypt_value(key, row["value"], row["encryption_key_hash"])
    except crypto.DecryptionError as exc:
        log.error("failed to decrypt key '%s': %s", row["ref"], exc)
        raise ApiError(500, f"Failed to decrypt key: {exc}") from None


def _audit(db, principal: Principal, event_type: str, row: dict) -> None:
    try:
        db.execute(
            """INSERT INTO audit_event (category, event_type, outcome, actor_identity, actor_login,
                                        actor_token_type, resource_type, resource_id, resource_ref)
               VALUES ('secret', %s, 'success', %s, %s, %s, 'key', %s, %s)""",
            (event_type, principal.identity_id, principal.login, principal.token_type,
             str(row["id"]), row["ref"]))
    except Exception:  # auditing never changes the answer
        log.debug("could not record %s", event_type, exc_info=True)


def parse_expiry(value: str) -> _dt.datetime:
    """An RFC 3339 timestamp with an offset (or `Z`) that lies in the future (E7)."""
    try:
        when = _dt.datetime.fromisoformat(str(value).strip().replace("z", "Z"))
    except ValueError:
        raise validation_error(f"Invalid expires_at '{value}': expected an RFC 3339 timestamp") \
            from None
    if when.tzinfo is None:
        raise validation_error(f"Invalid expires_at '{value}': the timestamp needs a UTC offset")
    if when <= _dt.datetime.now(_dt.timezone.utc):
        raise validation_error(f"Invalid expires_at '{value}': must be in the future")
    return when


def _expiry_patch(patch: dict | None):
    """The update's tagged patch -> (changed?, new value or None)."""
    if patch is None:
        return False, None
    op = patch.get("op")
    if op == "clear":
        return True, None
    if op == "set" and isinstance(patch.get("value"), str):
        return True, parse_expiry(patch["value"])
    raise validation_error("Invalid expires_at: expected {\"op\": \"set\", \"value\": "
                           "\"<RFC 3339>\"} or {\"op\": \"clear\"}")


def purge_expired(db, key_ref: str | None = None) -> int:
    """Delete keys whose `expires_at` has passed (all of them, or the one with `key_ref`)."""
    if key_ref is None:
        n = db.execute("DELETE FROM key WHERE expires_at IS NOT NULL AND expires_at <= now()")
    else:
        n = db.execute("DELETE FROM key WHERE ref = %s AND expires_at IS NOT NULL"
                       " AND expires_at <= now()", (key_ref,))
    if n:
        log.info("purged %d expired key(s)%s", n, f" ({key_ref})" if key_ref else "")
    return n


# Purge and lookup in one round trip. The CTE's DELETE runs whether or not it is read; the
# SELECT sees the rows as before it, but never returns an expired one, so the answer is that of
# the purge followed by the lookup.
_FIND_SQL = """WITH purged AS (DELETE FROM key WHERE {scope} expires_at IS NOT NULL
                                         AND expires_at <= now() RETURNING 1)
    SELECT (SELECT count(*) FROM purged) AS purged__, k.*
      FROM (SELECT 1) one
      LEFT JOIN key k ON k.ref = %s AND (k.expires_at IS NULL OR k.expires_at > now())"""


def _find(db, key_ref: str, purge_all: bool = False) -> dict | None:
    """The live key `key_ref`, after purging expired keys (that one, or all with `purge_all`)."""
    if purge_all:
        row = db.one(_FIND_SQL.format(scope=""), (key_ref,))
    else:
        row = db.one(_FIND_SQL.format(scope="ref = %s AND"), (key_ref, key_ref))
    purged = row.pop("purged__")
    if purged:
        log.info("purged %d expired key(s)%s", purged, "" if purge_all else f" ({key_ref})")
    return row if row["id"] is not None else None


def _visible_or_404(db, principal: Principal, key_ref: str, grants: list) -> dict:
    row = _find(db, key_ref)
    if row is None or not rbac.key_visible(db, principal, row, grants=grants):
        raise not_found(f"Key '{key_ref}' not found")
    return row


def _resolve_owner(db, body: dict) -> dict:
    """Fill owner ids from owner refs (and refs from ids), as upstream's create does."""
    out = dict(body)
    lookups = (("pack", "owner_pack", "owner_pack_ref", "pack", "Pack"),
               ("action", "owner_action", "owner_action_ref", "action", "Action"),
               ("sensor", "owner_sensor", "owner_sensor_ref", "sensor", "Sensor"))
    for owner_type, id_field, ref_field, table, label in lookups:
        if body["owner_type"] != owner_type:
            continue
        if out[id_field] is None and out[ref_field] is not None:
            row = db.one(f"SELECT id FROM {table} WHERE ref = %s", (out[ref_field],))
            if row is None:
                raise not_found(f"{label} with ref '{out[ref_field]}' not found")
            out[id_field] = row["id"]
        elif out[id_field] is not None and out[ref_field] is None:
            row = db.one(f"SELECT ref FROM {table} WHERE id = %s", (out[id_field],))
            if row is not None:
                out[ref_field] = row["ref"]
    return out


# ------------------------------------------------------------------------------ handlers

async def list_keys(request: Request) -> Response:
    principal = await require_auth(request)
    owner_type = query_str(request, "owner_type", enum=OWNER_TYPES)
    owner = query_str(request, "owner")
    page = page_params(request, size_param="per_page", default=50, cap=None)
    db = request.app.state.db

    def work():
        grants = rbac.effective_grants(db, principal)
        if not principal.skips_rbac and not any(
                g.get("resource") == "keys" and "read" in (g.get("actions") or []) for g in grants):
            raise rbac.denied("keys", "read")
        purge_expired(db)
        where, params = ["(expires_at IS NULL OR expires_at > now())"], []
        if owner_type is not None:
            where.append("owner_type = %s")
            params.append(owner_type)
        if owner is not None:
            where.append("owner = %s")
            params.append(owner)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        total = db.one(f"SELECT count(*) AS n FROM key {clause}", params)["n"]
        rows = db.all(f"SELECT * FROM key {clause} ORDER BY ref LIMIT %s OFFSET %s",
                      (*params, page.limit, page.offset))
        # Counted before filtering, as upstream: total_items may exceed what a caller can see.
        items = [_summary(r) for r in rows if rbac.key_visible(db, principal, r, grants=grants)]
        return items, total

    items, total = await run_sync(work)
    return paginated(items, page.page, page.size, total)


async def get_key(request: Request) -> Response:
    principal = await require_auth(request)
    key_ref = request.path_params["ref"]
    db = request.app.state.db

    def work():
        grants = rbac.effective_grants(db, principal)
        row = _visible_or_404(db, principal, key_ref, grants)
        value = row["value"]
        if row["encrypted"]:
            if rbac.can(db, principal, "keys", "decrypt", grants=grants, key=row):
                value = _plain_value(request, row)
                _audit(db, principal, "secret.decrypt", row)
            else:
                value = None
        _audit(db, principal, "secret.read", row)
        return _response(row, value)

    return ok(await run_sync(work))


async def create_key(request: Request) -> Response:
    principal = await require_auth(request)
    body = await read_json(request, CREATE_SPEC, invalid_prefix=None)
    db = request.app.state.db

    def work():
        # RBAC first, then the DTO rules and the duplicate check (upstream's order for keys).
        owner_ref = {"pack": body["owner_pack_ref"], "action": body["owner_action_ref"],
                     "sensor": body["owner_sensor_ref"]}.get(body["owner_type"])
        rbac.authorize(db, principal, "keys", "create", ref=body["ref"],
                       owner_type=body["owner_type"], owner_identity=body["owner_identity"],
                       owner_ref=owner_ref, encrypted=bool(body["encrypted"]))
        check_rules(body, CREATE_SPEC)
        expires_at = parse_expiry(body["expires_at"]) if body["expires_at"] is not None else None
        if _find(db, body["ref"], purge_all=True) is not None:
            raise conflict(f"Key with ref '{body['ref']}' already exists")
        resolved = _resolve_owner(db, body)
        value, key_hash = body["value"], None
        if body["encrypted"]:
            enc_key = _require_encryption_key(request)
            value, key_hash = crypto.encrypt_value(enc_key, body["value"]), crypto.key_hash(enc_key)
        row = db.one(
            """INSERT INTO key (ref, owner_type, owner, owner_identity, owner_pack, owner_pack_ref,
                                owner_action, owner_action_ref, owner_sensor, owner_sensor_ref,
                                name, encrypted, encryption_key_hash, value, expires_at)
               VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING *""",
            (body["ref"], body["owner_type"], body["owner"], resolved["owner_identity"],
             resolved["owner_pack"], resolved["owner_pack_ref"], resolved["owner_action"],
             resolved["owner_action_ref"], resolved["owner_sensor"], resolved["owner_sensor_ref"],
             body["name"], bool(body["encrypted"]), key_hash, J(value), expires_at))
        return _response(row, body["value"])

    return ok(await run_sync(work), status=201, message="Key created successfully")


async def update_key(request: Request) -> Response:
    principal = await require_auth(request)
    key_ref = request.path_params["ref"]
    body = await read_json(request, UPDATE_SPEC, invalid_prefix=None)
    db = request.app.state.db

    def work():
        grants = rbac.effective_grants(db, principal)
        existing = _visible_or_404(db, principal, key_ref, grants)
        rbac.authorize(db, principal, "keys", "update", grants=grants, key=existing)
        check_rules(body, UPDATE_SPEC)
        expiry_changed, expires_at = _expiry_patch(body["expires_at"])
        encrypt = existing["encrypted"] if body["encrypted"] is None else body["encrypted"]
        if body["value"] is not None:
            plain = body["value"]
        elif encrypt != existing["encrypted"]:
            plain = _plain_value(request, existing)  # re-encode the current value
        else:
            plain = None
        sets, params = [], []
        if body["name"] is not None:
            sets.append("name = %s")
            params.append(body["name"])
        if plain is not None or encrypt != existing["encrypted"]:
            if encrypt:
                enc_key = _require_encryption_key(request)
                stored, key_hash = crypto.encrypt_value(enc_key, plain), crypto.key_hash(enc_key)
            else:
                stored, key_hash = plain, None
            sets += ["value = %s", "encrypted = %s", "encryption_key_hash = %s"]
            params += [J(stored), encrypt, key_hash]
        if expiry_changed:
            sets.append("expires_at = %s")
            params.append(expires_at)
        row = existing
        if sets:
            row = db.one(f"UPDATE key SET {', '.join(sets)} WHERE id = %s RETURNING *",
                         (*params, existing["id"]))
        return _response(row, _plain_value(request, row))

    return ok(await run_sync(work), message="Key updated successfully")


async def delete_key(request: Request) -> Response:
    principal = await require_auth(request)
    key_ref = request.path_params["ref"]
    db = request.app.state.db

    def work():
        grants = rbac.effective_grants(db, principal)
        existing = _visible_or_404(db, principal, key_ref, grants)
        rbac.authorize(db, principal, "keys", "delete", grants=grants, key=existing)
        if not db.execute("DELETE FROM key WHERE id = %s", (existing["id"],)):
            raise not_found(f"Key '{key_ref}' not found")

    await run_sync(work)
    return success("Key deleted successfully")


ROUTES = [
    Route("/api/v1/keys", list_keys, methods=["GET"]),
    Route("/api/v1/keys", create_key, methods=["POST"]),
    Route("/api/v1/keys/{ref}", get_key, methods=["GET"]),
    Route("/api/v1/keys/{ref}", update_key, methods=["PUT"]),
    Route("/api/v1/keys/{ref}", delete_key, methods=["DELETE"]),
]
