"""Unit tests: E9 `keystore` namespace and redaction (attune_emulator/keystore.py), its use in rule
templates and conditions, and E7 expiry parsing."""
import datetime as dt

import pytest

from attune_emulator import keystore, templates
from attune_emulator.executor.events import evaluate_conditions

REDACTED = {"$attune_secret": True, "redacted": True}


def rows(*entries):
    return [{"ref": f"p.{n}", "name": n, "value": v, "encrypted": enc, "owner_type": o}
            for n, v, enc, o in entries]


def test_build_orders_system_then_pack_and_decrypts():
    ks = keystore.build(rows(("a", 1, False, "system"), ("b", "enc:s3cret-b", True, "system"),
                             ("a", 2, False, "pack")),
                        decrypt=lambda row: row["value"].removeprefix("enc:"))
    assert ks.values == {"a": 2, "b": "s3cret-b"}
    assert ks.secret_names == {"b"} and ks.secret_texts == {"s3cret-b"}


def test_build_without_encryption_key_leaves_encrypted_keys_out():
    ks = keystore.build(rows(("b", "x", True, "pack"), ("c", 3, False, "pack")), decrypt=None)
    assert ks.values == {"c": 3} and not ks.has_secrets


def test_build_skips_undecryptable_keys():
    def boom(row):
        raise ValueError("bad tag")
    ks = keystore.build(rows(("b", "x", True, "pack")), decrypt=boom)
    assert ks.values == {} and ks.secret_names == set()


def test_plain_key_overriding_a_secret_is_not_secret():
    ks = keystore.build(rows(("a", "enc:zzzz", True, "system"), ("a", "plain", False, "pack")),
                        decrypt=lambda row: row["value"].removeprefix("enc:"))
    assert ks.values == {"a": "plain"} and ks.secret_names == set()


def test_redact_by_template_reference_and_by_contained_text():
    ks = keystore.build(rows(("tok", "enc:topsecret", True, "pack"), ("n", 7, False, "pack"),
                             ("num", "enc:42", True, "pack")),
                        decrypt=lambda row: row["value"].removeprefix("enc:"))
    template = {"a": "{{ keystore.tok }}", "b": "Bearer {{ keystore.tok }}", "c": "{{ keystore.n }}",
                "d": ["x", "{{ keystore['num'] }}"], "e": "{{ workflow.copy }}", "f": "literal"}
    rendered = {"a": "topsecret", "b": "Bearer topsecret", "c": 7, "d": ["x", "42"],
                "e": "was topsecret", "f": "literal"}
    redacted, found = keystore.redact(template, rendered, ks)
    assert redacted == {"a": REDACTED, "b": REDACTED, "c": 7, "d": ["x", REDACTED],
                        "e": REDACTED, "f": "literal"}
    assert sorted(found) == [("/a", "topsecret"), ("/b", "Bearer topsecret"), ("/d/1", "42"),
                             ("/e", "was topsecret")]


def test_redact_whole_namespace_and_secret_parameters():
    ks = keystore.build(rows(("tok", "enc:topsecret", True, "pack")),
                        decrypt=lambda row: row["value"].removeprefix("enc:"))
    redacted, found = keystore.redact(
        {"all": "{{ keystore }}", "p": "{{ parameters.pw }}", "q": "{{ parameters.user }}"},
        {"all": {"tok": "topsecret"}, "p": 1234, "q": "bob"}, ks, secret_params={"pw"})
    assert redacted == {"all": REDACTED, "p": REDACTED, "q": "bob"}
    assert dict(found) == {"/all": {"tok": "topsecret"}, "/p": 1234}


def test_redact_without_secrets_is_identity():
    ks = keystore.build(rows(("n", 1, False, "pack")), decrypt=None)
    value = {"a": "{{ keystore.n }}"}
    assert keystore.redact(value, {"a": 1}, ks) == ({"a": 1}, [])
    assert keystore.redact(value, {"a": 1}, None) == ({"a": 1}, [])


def test_restore_puts_plaintext_back_at_pointers():
    config = {"a": REDACTED, "d": ["x", REDACTED], "we/ird": REDACTED, "keep": 1}
    out = keystore.restore(config, [("/a", "s"), ("/d/1", 42), ("/we~1ird", True), ("/gone/x", 0)])
    assert out == {"a": "s", "d": ["x", 42], "we/ird": True, "keep": 1}
    assert config["a"] == REDACTED, "restore must not change its input"


def test_pointer_round_trip():
    assert keystore.split_pointer(keystore._pointer(["a/b", "c~d", 3])) == ["a/b", "c~d", "3"]


def test_mentions_keystore():
    assert keystore.mentions_keystore({"x": ["{{ keystore.a }}"]})
    assert not keystore.mentions_keystore({"x": "{{ event.payload.a }}"})


def test_rule_templates_resolve_keystore_paths():
    event = {"id": 5, "payload": {"v": 1}, "trigger_ref": "p.t"}
    out = templates.render_action_params(
        {"url": "{{ keystore.cfg.api_url }}", "s": "u={{ keystore.cfg.api_url }}",
         "missing": "{{ keystore.nope }}"}, event, {}, {"id": 1, "ref": "p.r"},
        keystore={"cfg": {"api_url": "https://x"}})
    assert out == {"url": "https://x", "s": "u=https://x", "missing": None}


def test_rule_templates_without_keystore_treat_it_as_unknown():
    out = templates.render_action_params({"a": "{{ keystore.cfg }}"}, {"payload": {}}, {}, None)
    assert out == {"a": None}


def test_conditions_see_keystore():
    cond = {"expression": "event.payload.value > keystore.threshold"}
    assert evaluate_conditions(cond, {"payload": {"value": 120}}, {"threshold": 100})[0] is True
    assert evaluate_conditions(cond, {"payload": {"value": 80}}, {"threshold": 100})[0] is False
    matched, reason = evaluate_conditions(cond, {"payload": {"value": 120}})
    assert matched is False and "failed to evaluate" in reason


def test_parse_expiry_requires_future_offset_timestamps():
    from attune_emulator.api.common import ApiError
    from attune_emulator.api.routes_keys import parse_expiry

    future = dt.datetime.now(dt.timezone.utc) + dt.timedelta(minutes=5)
    assert parse_expiry(future.strftime("%Y-%m-%dT%H:%M:%S.%fZ")) > dt.datetime.now(dt.timezone.utc)
    for bad in ("2001-01-01T00:00:00Z", "soon", future.strftime("%Y-%m-%dT%H:%M:%S")):
        with pytest.raises(ApiError) as info:
            parse_expiry(bad)
        assert info.value.status == 422
