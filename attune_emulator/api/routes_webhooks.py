"""Webhooks (api.md §5.4): key management on triggers (`triggers:update`) and the public receiver
`POST /api/v1/webhooks/{webhook_key}` with the optional per-trigger `webhook_config` checks
(payload size, IP allow-list, rate limit, HMAC signature)."""
from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import secrets

from starlette.routing import Route

from .. import broker
from ..db import J, iso, utcnow
from . import common as C
from . import apib_util as U
from .routes_triggers import load_trigger

log = logging.getLogger(__name__)


def new_webhook_key() -> str:
    return "wh_" + secrets.token_hex(16)


def _manage(kind: str):
    async def handler(request):
        p = await C.require_auth(request)
        ref = request.path_params["ref"]

        def work():
            db = C.db(request)
            row = load_trigger(db, request.app.state.cfg, p, ref)
            U.rbac_authorize(db, p, "triggers", "update", pack_ref=row["pack_ref"], ref=ref)
            if kind == "enable":
                key = row["webhook_key"] or new_webhook_key()
                row = db.one("UPDATE trigger SET webhook_enabled = true, webhook_key = %s, "
                             "webhook_config = '{}'::jsonb WHERE id = %s RETURNING *",
                             (key, row["id"]))
            elif kind == "disable":
                row = db.one("UPDATE trigger SET webhook_enabled = false, webhook_key = NULL "
                             "WHERE id = %s RETURNING *", (row["id"],))
            else:
                if not row["webhook_enabled"]:
                    raise C.bad_request("Webhooks are not enabled for this trigger")
                row = db.one("UPDATE trigger SET webhook_key = %s WHERE id = %s RETURNING *",
                             (new_webhook_key(), row["id"]))
            return C.ok(U.trigger_response(row))
        return await U.sync(work)
    return handler


# ------------------------------------------------------------------ receiver
def _client_ip(request) -> str | None:
    """Only X-Forwarded-For (the whole header) or X-Real-IP, never the TCP peer (as upstream)."""
    fwd = request.headers.get("x-forwarded-for")
    if fwd:
        return fwd.strip()
    real = request.headers.get("x-real-ip")
    return real.strip() if real else None


def _ip_allowed(ip: str, allowed) -> bool:
    candidates = [part.strip() for part in ip.split(",") if part.strip()]
    if not candidates:
        return False
    try:
        addr = ipaddress.ip_address(candidates[0])
    except ValueError:
        return False
    for entry in allowed or []:
        try:
            if "/" in str(entry):
                if addr in ipaddress.ip_network(str(entry), strict=False):
                    return True
            elif addr == ipaddress.ip_address(str(entry)):
                return True
        except ValueError:
            continue
    return False


_HMAC_ALGS = {"sha256": hashlib.sha256, "sha512": hashlib.sha512, "sha1": hashlib.sha1}


def _verify_hmac(cfg: dict, request, raw: bytes) -> None:
    sig = request.headers.get("x-webhook-signature") or request.headers.get("x-hub-signature-256")
    if not sig:
        raise C.unauthorized("Signature required")
    alg = str(cfg.get("algorithm") or "sha256").lower()
    digest = _HMAC_ALGS.get(alg)
    if digest is None:
        raise C.unauthorized("Invalid webhook signature")
    value = sig.strip()
    if "=" in value:
        prefix, value = value.split("=", 1)
        if prefix.lower() != alg:
            raise C.unauthorized("Invalid webhook signature")
    expected = hmac.new(str(cfg.get("secret") or "").encode(), raw, digest).hexdigest()
    if not hmac.compare_digest(expected, value.strip().lower()):
        raise C.unauthorized("Invalid webhook signature")


def _parse_body(raw: bytes) -> dict:
    text = raw.decode("utf-8", errors="replace")
    try:
        body = json.loads(text)
    except json.JSONDecodeError as exc:
        raise C.bad_request("Invalid JSON payload: " + C._serde_syntax_message(exc)) from None
    if not isinstance(body, dict):
        raise C.bad_request(f"Invalid JSON payload: invalid type: {C._serde_kind(body)}, "
                            "expected struct WebhookReceiverRequest at line 1 column 1")
    if "payload" not in body:
        raise C.bad_request("Invalid JSON payload: missing field `payload` at "
                            + C._end_position(text))
    headers = body.get("headers")
    if headers is not None and not isinstance(headers, dict):
        raise C.bad_request(f"Invalid JSON payload: headers: invalid type: {C._serde_kind(headers)}, "
                            "expected a map at " + C._end_position(text))
    for name in ("source_ip", "user_agent"):
        if body.get(name) is not None and not isinstance(body[name], str):
            raise C.bad_request(f"Invalid JSON payload: {name}: invalid type: "
                                f"{C._serde_kind(body[name])}, expected a string at "
                                + C._end_position(text))
    return body


def _log(db, trigger, key, ip, status, error=None, event_id=None, rate_limited=False):
    try:
        db.execute("INSERT INTO webhook_event_log (trigger_id, trigger_ref, webhook_key, event_id, "
                   "source_ip, status_code, error_message, rate_limited) "
                   "VALUES (%s,%s,%s,%s,%s,%s,%s,%s)",
                   (trigger["id"] if trigger else None, trigger["ref"] if trigger else None, key,
                    event_id, ip, status, error, rate_limited))
    except Exception:  # logging must not change the answer
        log.debug("webhook log insert failed", exc_info=True)


async def receive_webhook(request):
    key = request.path_params["key"]
    raw = await request.body()
    ip = _client_ip(request)

    def work():
        db = C.db(request)
        trigger = db.one("SELECT * FROM trigger WHERE webhook_key = %s", (key,))
        if trigger is None:
            _log(db, None, key, ip, 404, "Invalid webhook key")
            raise C.not_found("Invalid webhook key")
        if not trigger["webhook_enabled"]:
            _log(db, trigger, key, ip, 400, "Webhooks are not enabled for this trigger")
            raise C.bad_request("Webhooks are not enabled for this trigger")
        wcfg = trigger["webhook_config"] if isinstance(trigger["webhook_config"], dict) else {}
        limit_kb = wcfg.get("payload_size_limit_kb")
        if isinstance(limit_kb, (int, float)) and not isinstance(limit_kb, bool) and limit_kb > 0:
            if len(raw) > limit_kb * 1024:
                msg = f"Payload too large: {len(raw)} bytes exceeds limit of {int(limit_kb)} KB"
                _log(db, trigger, key, ip, 413, msg)
                raise C.bad_request(msg)
        wl = wcfg.get("ip_whitelist")
        if isinstance(wl, dict) and wl.get("enabled") and ip:
            if not _ip_allowed(ip, wl.get("ips")):
                _log(db, trigger, key, ip, 403, "IP address not allowed")
                raise C.forbidden("IP address not allowed")
        rl = wcfg.get("rate_limit")
        if isinstance(rl, dict) and rl.get("enabled"):
            limit = int(rl.get("requests") or 0)
            window = int(rl.get("window_seconds") or 60)
            row = db.one("SELECT count(*) AS n FROM webhook_event_log WHERE trigger_id = %s "
                         "AND webhook_key = %s AND source_ip IS NOT DISTINCT FROM %s "
                         "AND NOT rate_limited AND created > now() - make_interval(secs => %s)",
                         (trigger["id"], key, ip, window))
            if limit >= 0 and row["n"] >= limit:
                msg = f"Rate limit exceeded. Maximum {limit} requests per {window} seconds"
                _log(db, trigger, key, ip, 429, msg, rate_limited=True)
                raise C.ApiError(429, msg)
        hmac_verified = None
        hc = wcfg.get("hmac")
        if isinstance(hc, dict) and hc.get("enabled"):
            try:
                _verify_hmac(hc, request, raw)
            except C.ApiError as exc:
                _log(db, trigger, key, ip, 401, exc.message)
                raise
            hmac_verified = True
        try:
            body = _parse_body(raw)
        except C.ApiError as exc:
            _log(db, trigger, key, ip, 400, exc.message)
            raise
        received = utcnow()
        config = {"source": "webhook", "webhook_key": key, "received_at": iso(received)}
        if body.get("headers") is not None:
            config["headers"] = body["headers"]
        source_ip = body.get("source_ip") or ip
        if source_ip:
            config["source_ip"] = source_ip
        user_agent = body.get("user_agent") or request.headers.get("user-agent")
        if user_agent:
            config["user_agent"] = user_agent
        if hmac_verified is not None:
            config["hmac_verified"] = hmac_verified
        event = db.one("INSERT INTO event (trigger, trigger_ref, config, payload, source_ref) "
                       "VALUES (%s,%s,%s,%s,'webhook') RETURNING id",
                       (trigger["id"], trigger["ref"], J(config), J(body["payload"])))
        _log(db, trigger, key, ip, 200, None, event["id"])
        C.publish(request, broker.EVENTS, "event.created",
                  {"event_id": event["id"], "trigger_ref": trigger["ref"]})
        return C.ok({"event_id": event["id"], "trigger_ref": trigger["ref"],
                     "received_at": iso(received), "message": "Webhook received successfully"})
    return await U.sync(work)


ROUTES = [
    Route("/api/v1/triggers/{ref}/webhooks/enable", _manage("enable"), methods=["POST"]),
    Route("/api/v1/triggers/{ref}/webhooks/disable", _manage("disable"), methods=["POST"]),
    Route("/api/v1/triggers/{ref}/webhooks/regenerate", _manage("regenerate"), methods=["POST"]),
    Route("/api/v1/webhooks/{key}", receive_webhook, methods=["POST"]),
]
