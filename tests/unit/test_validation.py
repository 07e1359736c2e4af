"""attune_emulator.validation: flat schema -> JSON Schema, template placeholders, upstream messages,
and the timer-parameter checks (extension E8)."""
import datetime as dt

import pytest

from attune_emulator.validation import (PLACEHOLDER, SchemaError, cron_error, placeholder_for,
                                        replace_templates, timer_params_error, to_json_schema,
                                        validate_params)

INTERVAL = {"unit": {"type": "string", "enum": ["seconds", "minutes", "hours"], "required": True},
            "interval": {"type": "integer", "required": True}}


def test_flat_schema_is_converted():
    flat = {"url": {"type": "string", "required": True, "secret": True, "position": 0},
            "timeout": {"type": "integer", "default": 30}}
    schema = to_json_schema(flat)
    assert schema == {"type": "object",
                      "properties": {"url": {"type": "string"},
                                     "timeout": {"type": "integer", "default": 30}},
                      "required": ["url"]}


def test_empty_and_passthrough_schemas():
    assert to_json_schema({}) == {"type": "object", "properties": {}}
    js = {"type": "object", "properties": {"x": {"type": "string"}}, "required": ["x"]}
    assert to_json_schema(js) is js
    assert to_json_schema(None) == {}
    assert to_json_schema({"x": "not an object"}) == {"type": "object", "properties": {}}


def test_required_even_with_default():
    with pytest.raises(ValueError) as exc:
        validate_params({"m": {"type": "string", "default": "d", "required": True}}, {}, "action", "p.a")
    assert str(exc.value) == "Invalid parameters for action 'p.a': \"m\" is a required property"


def test_messages_in_upstream_wording():
    with pytest.raises(ValueError) as exc:
        validate_params(INTERVAL, {"unit": "days", "interval": 5}, "trigger", "core.intervaltimer")
    assert str(exc.value) == ("Invalid parameters for trigger 'core.intervaltimer': "
                              "\"days\" is not one of [\"seconds\",\"minutes\",\"hours\"] at /unit")
    with pytest.raises(ValueError) as exc:
        validate_params(INTERVAL, {"unit": "hours", "interval": "x"}, "trigger", "core.intervaltimer")
    assert str(exc.value).endswith("\"x\" is not of type \"integer\" at /interval")


def test_several_errors_are_joined():
    with pytest.raises(ValueError) as exc:
        validate_params({"a": {"type": "integer", "minimum": 1, "required": True},
                         "b": {"type": "string", "required": True}}, {"a": 0}, "action", "p.x")
    msg = str(exc.value)
    assert msg.startswith("Invalid parameters for action 'p.x': ")
    assert "0 is less than the minimum of 1 at /a" in msg
    assert "\"b\" is a required property" in msg
    assert ", " in msg


def test_templates_pass_type_checks_and_literals_do_not():
    schema = {"n": {"type": "integer"}, "flag": {"type": "boolean"}, "items": {"type": "array"},
              "unit": {"type": "string", "enum": ["a", "b"]}}
    validate_params(schema, {"n": "{{ event.payload.n }}", "flag": "{{ x }}",
                             "items": "{{ event.payload.items }}", "unit": "{{ u }}"}, "action", "p.a")
    with pytest.raises(ValueError):
        validate_params(schema, {"n": "five"}, "action", "p.a")


def test_placeholders():
    assert placeholder_for({"type": "integer", "minimum": 3}) == 3
    assert placeholder_for({"type": "integer", "default": 7}) == 7
    assert placeholder_for({"type": "number"}) == 0.0
    assert placeholder_for({"type": "string", "enum": ["x", "y"]}) == "x"
    assert placeholder_for({"type": "string"}) == PLACEHOLDER
    assert placeholder_for({"anyOf": [{"type": "boolean"}]}) is True
    out = replace_templates({"a": {"b": "{{ x }}"}, "l": ["{{ y }}", 1], "z": "{{ q }}"},
                            {"properties": {"l": {"items": {"type": "integer"}}}})
    assert out == {"a": {"b": PLACEHOLDER}, "l": [0, 1], "z": PLACEHOLDER}


def test_no_schema_accepts_anything():
    validate_params(None, {"anything": 1}, "action", "p.a")


def test_unusable_schema_is_a_schema_error():
    with pytest.raises(SchemaError):
        validate_params({"x": {"type": "no-such-type"}}, {"x": 1}, "action", "p.a")


def test_cron_expressions():
    assert cron_error("*/2 * * * * *") is None
    assert cron_error("5,8,11,17 * * * * *") is None
    assert cron_error("0 0 12 * * MON-FRI") is None
    assert "expected 6 fields" in cron_error("* * * * *")
    assert "bad seconds field" in cron_error("61 * * * * *")
    assert cron_error(5) is not None


def test_timer_params():
    past = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=5)).isoformat()
    future = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(minutes=5)).isoformat()
    assert timer_params_error("core.datetimetimer", {"fire_at": past}) == "fire_at must be in the future"
    assert timer_params_error("core.datetimetimer", {"fire_at": future}) is None
    assert timer_params_error("core.crontimer", {"expression": "* * * * * *",
                                                 "timezone": "Asia/Kathmandu"}) is None
    assert "unknown timezone" in timer_params_error("core.crontimer", {"expression": "* * * * * *",
                                                                       "timezone": "Mars/Base"})
    assert timer_params_error("core.intervaltimer", {"unit": "days"}) is None
