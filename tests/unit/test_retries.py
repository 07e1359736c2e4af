"""Unit tests of attune_emulator.executor.retries (extension E2 action_retry): policy parsing,
retry delays (constant, linear, exponential, max_delay cap) and the retry decision."""
import pytest

from attune_emulator.executor.retries import (RetryPolicyError, parse_policy, retry_delay,
                                              should_retry)

EXP = {"count": 2, "delay": 1, "backoff": "exponential"}


def test_parse_policy_normalises_and_defaults():
    assert parse_policy(None) is None
    assert parse_policy({"count": 2}) == {"count": 2, "delay": 0, "backoff": "constant"}
    assert parse_policy({"count": 3, "delay": 1.5, "backoff": "linear", "max_delay": 4}) == \
        {"count": 3, "delay": 1.5, "backoff": "linear", "max_delay": 4}


@pytest.mark.parametrize("bad, why", [
    ([1], "must be an object"),
    ({"delay": 1}, "count must be an integer"),
    ({"count": True}, "count must be an integer"),
    ({"count": 0}, "between 1 and 100"),
    ({"count": 101}, "between 1 and 100"),
    ({"count": 1, "delay": -1}, "must not be negative"),
    ({"count": 1, "delay": "1"}, "delay must be a number"),
    ({"count": 1, "backoff": "fibonacci"}, "constant, linear or exponential"),
    ({"count": 1, "max_delay": -2}, "max_delay must not be negative"),
    ({"count": 1, "retries": 3}, "unknown field(s) retries"),
])
def test_parse_policy_rejects_malformed(bad, why):
    with pytest.raises(RetryPolicyError, match=None) as info:
        parse_policy(bad)
    assert why in str(info.value)


@pytest.mark.parametrize("policy, delays", [
    ({"count": 4, "delay": 2, "backoff": "constant"}, [2, 2, 2, 2]),
    ({"count": 4, "delay": 2, "backoff": "linear"}, [2, 4, 6, 8]),
    ({"count": 4, "delay": 1, "backoff": "exponential"}, [1, 2, 4, 8]),
    ({"count": 4, "delay": 2, "backoff": "exponential", "max_delay": 5}, [2, 4, 5, 5]),
    ({"count": 3, "delay": 1, "backoff": "exponential", "max_delay": 1}, [1, 1, 1]),
    ({"count": 2, "delay": 0, "backoff": "exponential"}, [0, 0]),
])
def test_retry_delay(policy, delays):
    assert [retry_delay(policy, n) for n in range(1, len(delays) + 1)] == delays


def _ex(**kw):
    row = {"parent": None, "status": "failed", "retry_count": 0, "result": {"exit_code": 1},
           "started_at": "2026-01-01T00:00:00Z"}
    row.update(kw)
    return row


def test_should_retry_failed_and_abandoned_until_count():
    assert should_retry(_ex(), EXP)
    assert should_retry(_ex(status="abandoned", retry_count=1), EXP)
    assert not should_retry(_ex(retry_count=2), EXP), "count 2 allows attempts 0, 1 and 2 only"


@pytest.mark.parametrize("row, policy", [
    (_ex(status="completed"), EXP),
    (_ex(status="cancelled"), EXP),
    (_ex(status="timeout"), EXP),
    (_ex(parent=7), EXP),
    (_ex(), None),
    (_ex(started_at=None, result={"succeeded": False,
                                  "error": "Invalid parameters for action 'p.a': \"x\" is a "
                                           "required property"}), EXP),
])
def test_should_not_retry(row, policy):
    assert not should_retry(row, policy)


def test_pack_yaml_retry_is_normalised_or_reported():
    """E2 in pack YAML: `retry:` is stored normalised; a malformed one is warned about, ignored."""
    from attune_emulator import packs

    warnings = []
    stored = packs._retry_policy("p.a", {"count": 2, "delay": 1, "backoff": "exponential"},
                                 warnings.append)
    assert stored.adapted == {"count": 2, "delay": 1, "backoff": "exponential"}
    assert packs._retry_policy("p.a", None, warnings.append) is None and warnings == []
    assert packs._retry_policy("p.a", {"count": 0}, warnings.append) is None
    assert warnings == ["action p.a: retry.count must be between 1 and 100; retry policy ignored"]
