"""Notifier fan-out shortcuts: frames spliced from the payload text, notifications nobody can
receive left unparsed, the cached-second timestamp."""
import json
import re

import pytest

from attune_emulator.notifier import protocol as P

PAYLOAD = ('{"id": 5, "status": "running", "action_ref": "p.a", "entity_id": 5, '
           '"entity_type": "execution", "workflow_task": null, "text": "\\u00e9 \\"q\\" \\n", '
           '"n": 1.5, "user_id": 3}')


def test_spliced_frame_is_the_message_as_json():
    n = P.notification_from_pg("execution_status_changed", PAYLOAD)
    assert n.payload_text == PAYLOAD
    assert json.loads(n.to_frame()) == n.to_message()
    assert n.to_message()["user_id"] == 3


def test_frame_without_payload_text_and_null_user():
    n = P.Notification("c\"x", "e", 1, None, {"a": [1, None]}, "2026-01-01T00:00:00.000000Z")
    assert json.loads(n.to_frame()) == n.to_message()


def test_timestamp_format_and_progress():
    first = P.now_rfc3339()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", first)
    assert P.now_rfc3339() >= first


@pytest.mark.parametrize("filters, channel, expected", [
    ([], "execution_created", False),
    (["notification_type:execution_status_changed"], "execution_created", False),
    (["notification_type:execution_status_changed"], "execution_status_changed", True),
    (["entity_type:event"], "execution_created", True),   # decided after parsing
    (["all"], "anything", True),
])
def test_may_want(filters, channel, expected):
    subs = P.Subscriptions()
    for f in filters:
        subs.add(P.parse_filter(f))
    assert subs.may_want(channel) is expected


def test_dispatch_skips_parsing_when_no_client_can_receive(monkeypatch):
    from attune_emulator.notifier.service import Notifier

    notifier = Notifier.__new__(Notifier)
    notifier.clients = {}
    notifier.delivered = 0

    def boom(*_a, **_k):
        raise AssertionError("parsed")

    monkeypatch.setattr(P, "notification_from_pg", boom)
    notifier.dispatch("execution_created", "not even json")
    assert notifier.delivered == 0
