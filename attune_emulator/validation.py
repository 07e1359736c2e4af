"""Parameter validation against Attune's flat (StackStorm-style) schemas.

A flat schema maps each parameter name to a JSON-Schema property plus Attune's extras
`required: true`, `secret: true` and `position`. `to_json_schema` turns it into a real JSON Schema
(`type: object`, `properties`, `required`); a schema that already is one (`type: object` with
`properties`) passes through unchanged. `validate_params` first replaces every `{{ ... }}`
template value with a placeholder of the property's type, so templates pass type checks while
literal values are still validated, then reports every error in one message:

    Invalid parameters for action 'pack.x': "msg" is a required property, 5 is not of type "string" at /n
"""
from __future__ import annotations

import copy
import json
from typing import Any

import jsonschema

PLACEHOLDER = "__template_placeholder__"


class SchemaError(ValueError):
    """The schema itself is unusable (upstream answers 500 for this, not 422)."""


def to_json_schema(flat: Any) -> dict:
    """Flat parameter schema -> JSON Schema. Anything that is not an object validates anything."""
    if not isinstance(flat, dict):
        return {}
    if flat.get("type") == "object" and "properties" in flat:
        return flat
    properties: dict[str, Any] = {}
    required: list[str] = []
    for name, prop in flat.items():
        if not isinstance(prop, dict):
            continue
        clean = dict(prop)
        is_required = clean.pop("required", False)
        clean.pop("secret", None)
        clean.pop("position", None)
        if is_required is True:
            required.append(name)
        properties[name] = clean
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = required
    return schema


def is_template(value: Any) -> bool:
    return isinstance(value, str) and "{{" in value and "}}" in value


def placeholder_for(prop: Any) -> Any:
    """A value satisfying the property's type (default, minimum, first enum value, ...)."""
    if not isinstance(prop, dict):
        return PLACEHOLDER
    for key in ("anyOf", "oneOf"):
        variants = prop.get(key)
        if isinstance(variants, list) and variants:
            return placeholder_for(variants[0])
    typ = prop.get("type")
    if typ == "integer":
        if "default" in prop:
            return prop["default"]
        minimum = prop.get("minimum")
        return int(minimum) if isinstance(minimum, (int, float)) and not isinstance(minimum, bool) else 0
    if typ == "number":
        if "default" in prop:
            return prop["default"]
        minimum = prop.get("minimum")
        return float(minimum) if isinstance(minimum, (int, float)) and not isinstance(minimum, bool) else 0.0
    if typ == "boolean":
        return prop.get("default", True)
    if typ == "array":
        return prop.get("default", [])
    if typ == "object":
        return prop.get("default", {})
    if typ == "string" or typ is None:
        enum = prop.get("enum")
        if isinstance(enum, list) and enum:
            return enum[0]
        if "default" in prop:
            return prop["default"]
        return PLACEHOLDER
    return None


def replace_templates(params: Any, schema: Any) -> Any:
    """Replace template leaves in an object with placeholders, recursing into objects and arrays."""
    if not isinstance(params, dict):
        return params
    props = schema.get("properties") if isinstance(schema, dict) else None
    props = props if isinstance(props, dict) else {}
    out: dict[str, Any] = {}
    for key, value in params.items():
        prop = props.get(key)
        if is_template(value):
            out[key] = placeholder_for(prop) if prop is not None else PLACEHOLDER
        elif isinstance(value, dict):
            out[key] = replace_templates(value, prop if isinstance(prop, dict) else {})
        elif isinstance(value, list):
            item_schema = prop.get("items") if isinstance(prop, dict) else None
            item_schema = item_schema if isinstance(item_schema, dict) else {}
            new = []
            for item in value:
                if is_template(item):
                    new.append(placeholder_for(item_schema))
                elif isinstance(item, (dict, list)):
                    new.append(replace_templates(item, item_schema))
                else:
                    new.append(item)
            out[key] = new
        else:
            out[key] = value
    return out


# ------------------------------------------------------------------ messages
def _j(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _plural(n: Any, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def error_message(err: jsonschema.ValidationError) -> str:
    """One error in the wording of the Rust `jsonschema` crate used upstream."""
    v, inst, val = err.validator, err.instance, err.validator_value
    if v == "required":
        missing = [name for name in val if isinstance(inst, dict) and name not in inst]
        name = missing[0] if missing else err.message
        return f"{_j(name)} is a required property"
    if v == "type":
        if isinstance(val, list):
            return f"{_j(inst)} is not of types {', '.join(_j(t) for t in val)}"
        return f"{_j(inst)} is not of type {_j(val)}"
    if v == "enum":
        return f"{_j(inst)} is not one of {_j(val)}"
    if v == "const":
        return f"{_j(val)} was expected"
    if v == "minimum":
        return f"{_j(inst)} is less than the minimum of {_j(val)}"
    if v == "maximum":
        return f"{_j(inst)} is greater than the maximum of {_j(val)}"
    if v == "exclusiveMinimum":
        return f"{_j(inst)} is less than or equal to the minimum of {_j(val)}"
    if v == "exclusiveMaximum":
        return f"{_j(inst)} is greater than or equal to the maximum of {_j(val)}"
    if v == "minLength":
        return f"{_j(inst)} is shorter than {_plural(val, 'character')}"
    if v == "maxLength":
        return f"{_j(inst)} is longer than {_plural(val, 'character')}"
    if v == "minItems":
        return f"{_j(inst)} has less than {_plural(val, 'item')}"
    if v == "maxItems":
        return f"{_j(inst)} has more than {_plural(val, 'item')}"
    if v == "pattern":
        return f"{_j(inst)} does not match {_j(val)}"
    if v == "multipleOf":
        return f"{_j(inst)} is not a multiple of {_j(val)}"
    if v == "format":
        return f"{_j(inst)} is not a {_j(val)}"
    if v == "additionalProperties":
        extras = sorted(set(inst) - set((err.schema or {}).get("properties", {}))) if isinstance(inst, dict) else []
        listed = ", ".join(f"'{e}'" for e in extras)
        verb = "was" if len(extras) == 1 else "were"
        return f"Additional properties are not allowed ({listed} {verb} unexpected)"
    if v == "uniqueItems":
        return f"{_j(inst)} has non-unique elements"
    if v in ("anyOf", "oneOf"):
        return f"{_j(inst)} is not valid under any of the schemas listed in the '{v}' keyword"
    return err.message


def _pointer(err: jsonschema.ValidationError) -> str:
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in err.absolute_path)


def schema_errors(schema: dict, instance: Any) -> list[str]:
    """Every error of `instance` against a JSON Schema, formatted `<message>[ at <pointer>]`."""
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft7Validator)
    try:
        cls.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise SchemaError(f"Invalid parameter schema: {exc.message}") from exc
    validator = cls(schema, format_checker=cls.FORMAT_CHECKER)
    errors = sorted(validator.iter_errors(instance), key=lambda e: (list(e.absolute_path), e.validator))
    out = []
    for err in errors:
        msg = error_message(err)
        path = _pointer(err)
        out.append(f"{msg} at {path}" if path else msg)
    return out


def validate_params(schema: Any, params: Any, what: str, ref: str) -> None:
    """Validate `params` against a flat (or JSON) schema; raise ValueError with upstream's message.

    `what` is "action" or "trigger". A missing schema (None) accepts anything.
    """
    if schema is None:
        return
    json_schema = to_json_schema(schema)
    sanitized = replace_templates(copy.deepcopy(params), json_schema)
    try:
        errors = schema_errors(json_schema, sanitized)
    except SchemaError as exc:
        raise SchemaError(f"Invalid parameter schema for {what} '{ref}': {exc}") from exc
    if errors:
        raise ValueError(f"Invalid parameters for {what} '{ref}': {', '.join(errors)}")


# ------------------------------------------------------------------ timer trigger params (E8)
_CRON_FIELD = r"^[0-9A-Za-z*?/,\-LW#]+$"


def _cron_field_ok(text: str, lo: int, hi: int, names: dict | None = None) -> bool:
    import re
    if not re.match(_CRON_FIELD, text):
        return False
    for part in text.split(","):
        if not part:
            return False
        base, _, step = part.partition("/")
        if step and (not step.isdigit() or int(step) == 0):
            return False
        if base in ("*", "?"):
            continue
        bounds = base.split("-")
        if len(bounds) > 2:
            return False
        for b in bounds:
            value = names.get(b.upper()) if names and not b.isdigit() else None
            if value is None:
                if not b.isdigit():
                    return False
                value = int(b)
            if not lo <= value <= hi:
                return False
    return True


_MONTHS = {m: i + 1 for i, m in enumerate("JAN FEB MAR APR MAY JUN JUL AUG SEP OCT NOV DEC".split())}
_DAYS = {d: i for i, d in enumerate("SUN MON TUE WED THU FRI SAT".split())}


def cron_error(expression: Any) -> str | None:
    """Why a 6-field (seconds first, optional 7th year) cron expression is unusable, or None."""
    if not isinstance(expression, str):
        return "expression must be a string"
    fields = expression.split()
    if len(fields) not in (6, 7):
        return (f"invalid cron expression '{expression}': expected 6 fields "
                f"(sec min hour day-of-month month day-of-week), got {len(fields)}")
    specs = [(0, 59, None), (0, 59, None), (0, 23, None), (1, 31, None), (1, 12, _MONTHS),
             (0, 7, _DAYS), (1970, 2099, None)]
    names = ["seconds", "minutes", "hours", "day of month", "month", "day of week", "year"]
    for i, text in enumerate(fields):
        lo, hi, nm = specs[i]
        if not _cron_field_ok(text, lo, hi, nm):
            return f"invalid cron expression '{expression}': bad {names[i]} field '{text}'"
    return None


def timer_params_error(trigger_ref: str, params: Any) -> str | None:
    """Extension E8: checks beyond the schema for the core timer triggers."""
    import datetime as _dt
    if not isinstance(params, dict):
        return None
    if trigger_ref == "core.datetimetimer":
        fire_at = params.get("fire_at")
        if isinstance(fire_at, str) and not is_template(fire_at):
            try:
                when = _dt.datetime.fromisoformat(fire_at.strip().replace("Z", "+00:00").replace("z", "+00:00"))
            except ValueError:
                return f"fire_at is not a valid RFC 3339 timestamp: '{fire_at}'"
            if when.tzinfo is None:
                when = when.replace(tzinfo=_dt.timezone.utc)
            if when <= _dt.datetime.now(_dt.timezone.utc):
                return "fire_at must be in the future"
    if trigger_ref == "core.crontimer":
        expr = params.get("expression")
        if expr is not None and not is_template(expr):
            err = cron_error(expr)
            if err:
                return err
        tz = params.get("timezone")
        if isinstance(tz, str) and tz and not is_template(tz):
            try:
                import zoneinfo
                zoneinfo.ZoneInfo(tz)
            except Exception:
                return f"unknown timezone '{tz}'"
    return None
