"""Rule `action_params` templating (upstream `template_resolver.rs` semantics).

Only `{{ dotted.path }}` substitution; no expressions, filters or defaults. Roots:

    event.payload.*, event.id, event.trigger (the trigger ref), event.created (RFC 3339)
    pack.config.*                        the rule's pack config
    system.timestamp, system.rule.id, system.rule.ref
    keystore.<name>.*                    extension E9 `template_context`: system and rule-pack keys

Numeric path segments index arrays. A string that is exactly one template keeps the resolved
JSON type; otherwise values are interpolated (containers as compact JSON, null as ""). An unknown
path gives null for a whole-string template and "" when interpolated (logged as a warning).
"""
from __future__ import annotations

import datetime as _dt
import json
import logging
import re
from typing import Any

log = logging.getLogger(__name__)

TEMPLATE_RE = re.compile(r"\{\{\s*([^}]+?)\s*\}\}")
_MISSING = object()


def _iso(value: Any) -> Any:
    if isinstance(value, _dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=_dt.timezone.utc)
        return value.astimezone(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return value


def build_context(event: dict, pack_config: dict | None, rule: dict | None,
                  now: _dt.datetime | None = None, keystore: dict | None = None) -> dict:
    """The namespaces as plain JSON: {"event": {...}, "pack_config": ..., "system": {...}} plus
    "keystore" (name -> decrypted value) when given (E9)."""
    event = event or {}
    ev: dict[str, Any] = {"payload": event.get("payload")}
    if event.get("id") is not None:
        ev["id"] = event.get("id")
    trigger = event.get("trigger_ref") or event.get("trigger")
    if isinstance(trigger, str):
        ev["trigger"] = trigger
    if event.get("created") is not None:
        ev["created"] = _iso(event.get("created"))
    now = now or _dt.datetime.now(_dt.timezone.utc)
    rule = rule or {}
    system = {"timestamp": _iso(now),
              "rule": {"id": rule.get("id"), "ref": rule.get("ref")}}
    ctx = {"event": ev, "pack_config": pack_config if pack_config is not None else {},
           "system": system}
    if keystore is not None:
        ctx["keystore"] = keystore
    return ctx


def _walk(root: Any, parts: list[str]) -> Any:
    cur = root
    for part in parts:
        if isinstance(cur, dict):
            if part not in cur:
                return _MISSING
            cur = cur[part]
        elif isinstance(cur, list):
            if not part.isdigit():
                return _MISSING
            idx = int(part)
            if idx >= len(cur):
                return _MISSING
            cur = cur[idx]
        else:
            return _MISSING
    return cur


def lookup(path: str, ctx: dict) -> Any:
    """Resolve a dotted path; returns the module's _MISSING sentinel when it does not resolve."""
    parts = path.split(".")
    head = parts[0]
    if head == "event":
        return _walk(ctx["event"], parts[1:])
    if head == "pack":
        if len(parts) < 2 or parts[1] != "config":
            log.warning("invalid template path %r: expected 'pack.config.*'", path)
            return _MISSING
        return _walk(ctx["pack_config"], parts[2:])
    if head == "system":
        return _walk(ctx["system"], parts[1:])
    if head == "keystore" and ctx.get("keystore") is not None:
        return _walk(ctx["keystore"], parts[1:])
    log.warning("unknown template source %r in {{ %s }}", head, path)
    return _MISSING


def _display(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e16:
        return f"{int(value)}.0"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)


def render_string(s: str, ctx: dict) -> Any:
    m = TEMPLATE_RE.search(s)
    if m is None:
        return s
    if m.start() == 0 and m.end() == len(s):
        value = lookup(m.group(1).strip(), ctx)
        if value is _MISSING:
            log.warning("template variable not found: %s (resolved to null)", m.group(1).strip())
            return None
        return value

    def repl(match: re.Match) -> str:
        path = match.group(1).strip()
        value = lookup(path, ctx)
        if value is _MISSING:
            log.warning("template variable not found: %s (interpolated as empty string)", path)
            return ""
        return _display(value)

    return TEMPLATE_RE.sub(repl, s)


def render(value: Any, ctx: dict) -> Any:
    if isinstance(value, str):
        return render_string(value, ctx)
    if isinstance(value, dict):
        return {k: render(v, ctx) for k, v in value.items()}
    if isinstance(value, list):
        return [render(v, ctx) for v in value]
    return value


def render_action_params(params: Any, event: dict, pack_config: dict | None, rule: dict | None,
                         now: _dt.datetime | None = None, keystore: dict | None = None) -> Any:
    """Render a rule's `action_params` for one event (the enforcement's `config`)."""
    if params is None:
        return {}
    return render(params, build_context(event, pack_config, rule, now, keystore))
