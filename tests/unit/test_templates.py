"""Rule action_params templating (attune_emulator.templates)."""
import datetime as dt

from attune_emulator.templates import render_action_params

EVENT = {"id": 42, "trigger": 7, "trigger_ref": "pk.hook",
         "created": dt.datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=dt.timezone.utc),
         "payload": {"user_id": 12345, "email": "test@example.com",
                     "metadata": {"campaign": "spring2024"}, "items": ["a", "b"], "flag": True,
                     "none": None}}
RULE = {"id": 9, "ref": "pk.on_hook"}
NOW = dt.datetime(2026, 5, 1, tzinfo=dt.timezone.utc)


def render(params, pack_config=None):
    return render_action_params(params, EVENT, pack_config or {"url": "http://x", "n": 3}, RULE, NOW)


def test_whole_templates_keep_type():
    out = render({"user_id": "{{ event.payload.user_id }}", "whole": "{{ event.payload }}",
                  "items": "{{ event.payload.items }}", "flag": "{{event.payload.flag}}",
                  "id": "{{ event.id }}", "n": "{{ pack.config.n }}"})
    assert out == {"user_id": 12345, "whole": EVENT["payload"], "items": ["a", "b"], "flag": True,
                   "id": 42, "n": 3}


def test_interpolation_and_missing():
    out = render({"label": "id={{ event.id }}", "missing": "{{ event.payload.nope }}",
                  "mixed_missing": "x{{ event.payload.nope }}y", "arr": "a={{ event.payload.items }}",
                  "null": "<{{ event.payload.none }}>", "flag": "f={{ event.payload.flag }}",
                  "first": "{{ event.payload.items.0 }}", "two": "{{ event.id }}-{{ event.trigger }}"})
    assert out == {"label": "id=42", "missing": None, "mixed_missing": "xy",
                   "arr": 'a=["a","b"]', "null": "<>", "flag": "f=true", "first": "a",
                   "two": "42-pk.hook"}


def test_event_system_and_pack_roots():
    out = render({"t": "{{ event.trigger }}", "c": "{{ event.created }}",
                  "ts": "{{ system.timestamp }}", "rid": "{{ system.rule.id }}",
                  "rref": "{{ system.rule.ref }}", "url": "{{ pack.config.url }}/x",
                  "bad_root": "{{ trigger.x }}", "bad_pack": "{{ pack.ref }}",
                  "nested": {"list": ["{{ event.payload.metadata.campaign }}", 1]}})
    assert out["t"] == "pk.hook"
    assert out["c"] == "2026-01-02T03:04:05.678000Z"
    assert out["ts"] == "2026-05-01T00:00:00.000000Z"
    assert out["rid"] == 9 and out["rref"] == "pk.on_hook"
    assert out["url"] == "http://x/x"
    assert out["bad_root"] is None and out["bad_pack"] is None
    assert out["nested"] == {"list": ["spring2024", 1]}


def test_non_string_values_pass_through():
    assert render({"a": 1, "b": None, "c": [True]}) == {"a": 1, "b": None, "c": [True]}
    assert render_action_params(None, EVENT, {}, RULE) == {}
