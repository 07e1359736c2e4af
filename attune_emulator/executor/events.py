"""event.created -> rule matching -> enforcement (upstream `event_processor.rs` semantics).

Candidates: when `event.rule` is set (timer events) only that rule, if enabled; otherwise every
enabled rule whose `trigger_ref` equals the event's. Conditions:
  - `{}`, `[]`, null, or an event without payload: always match;
  - `{"expression": "<expr>"}`: Attune expression over `event = {id, trigger, trigger_ref, payload,
    created}`; truthy matches; any evaluation error is no match (logged);
  - list of `{field, operator: equals|not_equals|contains, value}`: all must hold; `field` is a
    dotted path inside the payload; a missing field is an error (no enforcement);
  - any other shape never matches.
On a match the rule's `action_params` are rendered and one enforcement per (rule, event) is
inserted (`ON CONFLICT DO NOTHING` makes a duplicate delivery harmless).

Extension E9 `template_context`: conditions expressions and `action_params` also see `keystore`
(system and rule-pack keys, decrypted; keystore.py). Values from encrypted keys are stored redacted in
`enforcement.config`, their plaintext in `execution_secret_value` (entity `enforcement`).
"""
from __future__ import annotations

import logging
from typing import Any

import psycopg2
import psycopg2.errors

from .. import expressions, keystore as keystore_mod, secret_params, templates
from ..db import J, iso
from . import rule_notify
from .common import Ctx

log = logging.getLogger(__name__)


class ConditionError(Exception):
    pass


def event_context(event: dict) -> dict:
    created = event.get("created")
    return {"event": {
        "id": event.get("id"),
        "trigger": event.get("trigger_ref"),
        "trigger_ref": event.get("trigger_ref"),
        "payload": event.get("payload"),
        "created": iso(created) if hasattr(created, "tzinfo") else created,
    }}


def _field(payload: Any, path: str) -> Any:
    cur = payload
    for part in str(path).split("."):
        if isinstance(cur, dict) and part in cur:
            cur = cur[part]
        elif isinstance(cur, list) and part.isdigit() and int(part) < len(cur):
            cur = cur[int(part)]
        else:
            raise ConditionError(f"field '{path}' not found in event payload")
    return cur


def _check(op: Any, actual: Any, expected: Any) -> bool:
    if op == "equals":
        return expressions.json_eq(actual, expected)
    if op == "not_equals":
        return not expressions.json_eq(actual, expected)
    if op == "contains":
        return isinstance(actual, str) and isinstance(expected, str) and expected in actual
    return False


def evaluate_conditions(conditions: Any, event: dict,
                        keystore: dict | None = None) -> tuple[bool, str]:
    """(matched, reason) for a rule's `conditions` against an event row (pure; no I/O).
    `keystore` (E9) is the `keystore` namespace of expression conditions."""
    if conditions is None or conditions == {} or conditions == []:
        return True, "no conditions"
    if event.get("payload") is None:
        return True, "event has no payload"
    if isinstance(conditions, dict):
        if "expression" not in conditions:
            return False, f"unsupported conditions object (keys {sorted(conditions)}) never matches"
        expr = conditions.get("expression")
        try:
            context = event_context(event)
            if keystore is not None:
                context["keystore"] = keystore
            value = expressions.evaluate(expr, context)
        except expressions.ExpressionError as exc:
            return False, f"expression {expr!r} failed to evaluate: {exc}"
        if expressions.truthy(value):
            return True, f"expression {expr!r} is true"
        return False, f"expression {expr!r} evaluated to {value!r}"
    if isinstance(conditions, list):
        for i, cond in enumerate(conditions):
            if not isinstance(cond, dict):
                return False, f"condition #{i} is not an object"
            field, op = cond.get("field"), cond.get("operator")
            try:
                actual = _field(event.get("payload"), field)
            except ConditionError as exc:
                return False, f"condition #{i} error: {exc}"
            if op not in ("equals", "not_equals", "contains"):
                return False, f"condition #{i}: unknown operator {op!r}"
            if not _check(op, actual, cond.get("value")):
                return False, (f"condition #{i} {field} {op} {cond.get('value')!r} is false "
                               f"(actual {actual!r})")
        return True, f"all {len(conditions)} condition(s) hold"
    return False, f"conditions of type {type(conditions).__name__} never match"


def handle_event_created(ctx: Ctx, body: dict) -> None:
    event_id = body.get("event_id")
    event = ctx.db.one("SELECT * FROM event WHERE id = %s", (event_id,))
    if event is None:
        log.warning("event %s not found; ignoring event.created", event_id)
        return
    # A bound event (a timer fire: trigger_instance_id rule_<id>) is for its rule only. When the
    # rule was deleted after the fire, `rule` is NULL (ON DELETE SET NULL) but `rule_ref` still
    # says it was bound: it must not fan out to every rule of the trigger.
    if event.get("rule") is not None or event.get("rule_ref"):
        rules = ctx.db.all("SELECT * FROM rule WHERE id = %s", (event["rule"],)) \
            if event.get("rule") is not None else []
        if not rules:
            log.info("event %s is bound to rule %s which no longer exists; no enforcement",
                     event_id, event.get("rule") or event.get("rule_ref"))
            return
        if not rules[0]["enabled"]:
            log.info("event %s: rule %s is disabled; not matched", event_id, rules[0]["ref"])
            return
    else:
        rules = ctx.db.all("SELECT * FROM rule WHERE trigger_ref = %s AND enabled ORDER BY id",
                           (event["trigger_ref"],))
    if not rules:
        log.info("event %s (%s): no enabled rule for this trigger", event_id, event["trigger_ref"])
        return
    for rule in rules:
        try:
            _process_rule(ctx, event, rule)
        except Exception:
            log.exception("event %s: rule %s processing failed", event_id, rule["ref"])


def _rule_keystore(ctx: Ctx, rule: dict) -> keystore_mod.Keystore | None:
    """The E9 keystore of a rule's pack, loaded only when its conditions or params use it."""
    if not (keystore_mod.mentions_keystore(rule.get("conditions")) or
            keystore_mod.mentions_keystore(rule.get("action_params"))):
        return None
    return keystore_mod.load(ctx.db.all, ctx.cfg.get("security.encryption_key"), rule["pack"],
                             rule.get("pack_ref"))


def _process_rule(ctx: Ctx, event: dict, rule: dict) -> None:
    ks = _rule_keystore(ctx, rule)
    matched, reason = evaluate_conditions(rule.get("conditions"), event,
                                          ks.values if ks is not None else None)
    if not matched:
        log.info("event %s: rule %s not matched: %s", event["id"], rule["ref"], reason)
        return
    log.info("event %s: rule %s matched (%s)", event["id"], rule["ref"], reason)
    pack = ctx.db.one("SELECT config FROM pack WHERE id = %s", (rule["pack"],))
    pack_config = (pack or {}).get("config") or {}
    config = templates.render_action_params(rule.get("action_params") or {}, event, pack_config,
                                            rule, keystore=ks.values if ks is not None else None)
    secrets: list = []
    if ks is not None and ks.has_secrets:
        config, secrets = keystore_mod.redact(rule.get("action_params") or {}, config, ks)
    # the action's `secret: true` parameters are stored redacted too (upstream behaviour)
    action_row = ctx.db.one("SELECT param_schema FROM action WHERE id = %s OR (%s IS NULL AND ref = %s)"
                            " ORDER BY id LIMIT 1", (rule.get("action"), rule.get("action"),
                                                     rule.get("action_ref")))
    names = secret_params.secret_names((action_row or {}).get("param_schema"))
    if names and ctx.cfg.get("security.encryption_key"):
        config, more = secret_params.redact(config, names)
        secrets = secrets + more
    try:
        row = ctx.db.one(
            "INSERT INTO enforcement (rule, rule_ref, trigger_ref, config, event, status, payload,"
            " condition, conditions) VALUES (%s, %s, %s, %s, %s, 'created', %s, 'all', %s)"
            " ON CONFLICT (rule, event) DO NOTHING RETURNING id",
            (rule["id"], rule["ref"], event["trigger_ref"], J(config), event["id"],
             J(event.get("payload")),
             J(rule.get("conditions") if rule.get("conditions") is not None else {})))
    except psycopg2.errors.ForeignKeyViolation:  # the rule (or event) was deleted meanwhile
        log.info("event %s: rule %s was deleted while it was being matched; no enforcement",
                 event["id"], rule["ref"])
        return
    if row is None:
        log.info("event %s: enforcement for rule %s already exists (duplicate delivery); skipped",
                 event["id"], rule["ref"])
        return
    if secrets:
        keystore_mod.store(ctx.db.execute, ctx.cfg.get("security.encryption_key"), "enforcement",
                           row["id"], secrets)
        log.info("enforcement %s: %d secret parameter(s) stored redacted", row["id"], len(secrets))
    log.info("enforcement %s created for rule %s, event %s", row["id"], rule["ref"], event["id"])
    try:  # extension E11: rule_triggered for rules with notify_on_trigger
        rule_notify.on_enforcement_created(ctx, rule, event, row["id"])
    except Exception:
        log.exception("rule %s: rule_triggered notification failed", rule["ref"])
    ctx.enforcement_created(row["id"])
