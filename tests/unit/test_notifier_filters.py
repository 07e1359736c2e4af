"""The notifier's pure protocol logic (attune_emulator.notifier.protocol)."""
import json

import pytest

from attune_emulator.notifier import protocol as P


def note(channel="execution_status_changed", entity_type="execution", entity_id=101, user_id=None):
    return P.Notification(channel, entity_type, entity_id, user_id, {"id": entity_id}, "t")


@pytest.mark.parametrize("text,expected", [
    ("all", P.Filter("all")),
    ("entity_type:execution", P.Filter("entity_type", "execution")),
    ("entity:execution:101", P.Filter("entity", "execution", 101)),
    ("notification_type:inquiry_created", P.Filter("notification_type", "inquiry_created")),
    ("user:7", P.Filter("user", id=7)),
    ("user:+7", P.Filter("user", id=7)),
    ("entity_type:execution:extra", P.Filter("entity_type", "execution")),  # upstream ignores extras
])
def test_parse_valid_filters(text, expected):
    assert P.parse_filter(text) == expected


@pytest.mark.parametrize("text,reason", [
    ("bogus", "Invalid filter format: bogus"),
    ("", "Invalid filter format: "),
    ("ALL", "Invalid filter format: ALL"),
    ("kind:x", "Unknown filter type: kind"),
    ("user:abc", "Invalid user ID"),
    ("user: 7", "Invalid user ID"),
    ("user:1_000", "Invalid user ID"),
    ("user:99999999999999999999", "Invalid user ID"),
    ("entity:execution", "Entity filter requires type and id: entity:type:id"),
    ("entity:execution:x", "Invalid entity ID"),
])
def test_parse_invalid_filters(text, reason):
    with pytest.raises(P.FilterError) as err:
        P.parse_filter(text)
    assert str(err.value) == reason
    assert P.invalid_filter_message(text, str(err.value)) == {
        "type": "error", "message": f"Invalid filter '{text}': {reason}"}


def test_matching():
    n = note()
    assert P.parse_filter("all").matches(n)
    assert P.parse_filter("entity_type:execution").matches(n)
    assert not P.parse_filter("entity_type:inquiry").matches(n)
    assert P.parse_filter("entity:execution:101").matches(n)
    assert not P.parse_filter("entity:execution:102").matches(n)
    assert not P.parse_filter("entity:inquiry:101").matches(n)
    assert P.parse_filter("notification_type:execution_status_changed").matches(n)
    assert not P.parse_filter("notification_type:execution_created").matches(n)
    # user filters match user_id, which no trigger sets
    assert not P.parse_filter("user:1").matches(n)
    assert P.parse_filter("user:1").matches(note(user_id=1))


def test_subscriptions_need_a_filter_and_dedupe():
    subs = P.Subscriptions()
    n = note()
    assert not subs.wants(n)  # nothing before the first subscribe
    assert subs.add(P.parse_filter("entity_type:inquiry"))
    assert not subs.wants(n)
    assert subs.add(P.parse_filter("entity:execution:101"))
    assert not subs.add(P.parse_filter("entity:execution:101"))
    assert len(subs) == 2 and subs.wants(n)
    assert subs.remove(P.parse_filter("entity:execution:101"))
    assert not subs.remove(P.parse_filter("entity:execution:101"))
    assert not subs.wants(n)


def test_user_filter_acl():
    own, other = P.parse_filter("user:5"), P.parse_filter("user:6")
    assert P.filter_allowed(own, 5, [])
    assert not P.filter_allowed(other, 5, [])
    assert not P.filter_allowed(other, 5, ["Admin", "user"])
    assert P.filter_allowed(other, 5, ["user", "admin"])
    assert P.filter_allowed(P.parse_filter("all"), 5, [])


def test_notification_from_pg_shape():
    payload = {"entity_type": "execution", "entity_id": 9, "id": 9, "status": "running",
               "old_status": "scheduled"}
    n = P.notification_from_pg("execution_status_changed", json.dumps(payload),
                               "2026-01-01T00:00:00.000000Z")
    assert n.to_message() == {
        "type": "notification", "notification_type": "execution_status_changed",
        "entity_type": "execution", "entity_id": 9, "user_id": None, "payload": payload,
        "timestamp": "2026-01-01T00:00:00.000000Z"}
    assert P.notification_from_pg("x", json.dumps({**payload, "user_id": 4})).user_id == 4
    assert P.now_rfc3339().endswith("Z")


@pytest.mark.parametrize("text", [
    "not json", "[]", json.dumps({"entity_type": "execution"}),
    json.dumps({"entity_id": 1}), json.dumps({"entity_type": "e", "entity_id": "1"}),
    json.dumps({"entity_type": "e", "entity_id": True}),
])
def test_notification_without_entity_is_dropped(text):
    with pytest.raises(ValueError):
        P.notification_from_pg("attune_notifications", text)


def test_client_messages():
    assert P.parse_client_message('{"type":"subscribe","filter":"all"}') == {
        "type": "subscribe", "filter": "all"}
    assert P.parse_client_message('{"type":"unsubscribe","filter":"all"}')["type"] == "unsubscribe"
    assert P.parse_client_message('{"type":"ping"}') == {"type": "ping"}
    for bad in ("nope", "[]", "{}", '{"type":"subscribe"}', '{"type":"subscribe","filter":1}',
                '{"type":"hello"}'):
        with pytest.raises(P.MessageError) as err:
            P.parse_client_message(bad)
        assert str(err.value).startswith("Malformed message: ")


def test_welcome_and_error_shapes():
    assert P.welcome_message("client_3") == {
        "type": "welcome", "client_id": "client_3", "message": "Connected to Attune Notifier"}
    assert P.error_message("x") == {"type": "error", "message": "x"}


@pytest.mark.parametrize("headers,token", [
    ({"Authorization": "Bearer abc"}, "abc"),
    ({"Authorization": "bearer abc"}, "abc"),
    ({"Authorization": "BEARER  abc "}, "abc"),
    ({"Authorization": "Basic abc"}, None),
    ({"Authorization": "Bearer"}, None),
    ({"Sec-WebSocket-Protocol": "attune.v1, attune.jwt.xyz"}, "xyz"),
    ({"Sec-WebSocket-Protocol": "attune.v1"}, None),
    ({"Sec-WebSocket-Protocol": "attune.jwt."}, None),
    ({}, None),
])
def test_extract_token(headers, token):
    assert P.extract_token(headers) == token


@pytest.mark.parametrize("claims,result", [
    ({"sub": "3", "token_type": "access"}, (3, None)),
    ({"sub": "3"}, (3, None)),
    ({"sub": "3", "token_type": "execution"}, (3, None)),
    ({"sub": "3", "token_type": "refresh"}, (None, "refresh_tokens_not_allowed")),
    ({"sub": "3", "token_type": "sensor"}, (None, "sensor_tokens_not_allowed")),
    ({"sub": "3", "token_type": "worker"}, (None, "worker_tokens_not_allowed")),
    ({"sub": "abc", "token_type": "access"}, (None, "invalid_subject_in_token")),
    ({"sub": 3, "token_type": "access"}, (None, "invalid_subject_in_token")),
])
def test_check_claims(claims, result):
    assert P.check_claims(claims) == result


def test_token_expired():
    assert not P.token_expired(1060, 1000)
    assert P.token_expired(1000, 1000)
    assert P.token_expired(999, 1000)
    assert P.token_expired(0, 1000)
    assert P.token_expired(None, 1000)


def test_channels_cover_api_contract():
    for channel in ("execution_created", "execution_status_changed",
                    "workflow_execution_status_changed", "event_created", "enforcement_created",
                    "enforcement_status_changed", "inquiry_created", "inquiry_responded",
                    "inquiry_timeout", "rule_triggered"):
        assert channel in P.CHANNELS
