"""Unit tests of extension E5's pure logic (attune_emulator/api/ratelimit.py) and of the suite's
sliding-window consistency checker (tests/helpers/security.py)."""
import pytest

from attune_emulator.api.ratelimit import Limit, SlidingWindow, in_scope, parse_limit
from tests.helpers.security import Reply, check_sliding_window


def test_parse_limit_accepts_well_formed_objects_only():
    assert parse_limit({"requests": 10, "window_seconds": 1}) == Limit(10, 1.0)
    assert parse_limit({"requests": 5}) == Limit(5, 1.0)
    for bad in (None, [], {"requests": "10"}, {"requests": True}, {"requests": -1},
                {"requests": 3, "window_seconds": 0}, {"window_seconds": 1}):
        assert parse_limit(bad) is None, bad


def test_limit_message_matches_upstream_wording():
    assert Limit(10, 1.0).message() == "Rate limit exceeded. Maximum 10 requests per 1 seconds"
    assert Limit(3, 2.5).message() == "Rate limit exceeded. Maximum 3 requests per 2.5 seconds"


def test_sliding_window_admits_limit_then_refuses_with_retry_after():
    window = SlidingWindow(clock=lambda: 0.0)
    limit = Limit(3, 1.0)
    assert [window.hit("u", limit, now=t)[0] for t in (0.0, 0.1, 0.2)] == [True] * 3
    assert window.hit("u", limit, now=0.3) == (False, 1)
    assert window.hit("v", limit, now=0.3) == (True, 0), "limits are per key"
    assert window.hit("u", limit, now=1.05) == (True, 0), "the oldest left the window"
    assert window.hit("u", limit, now=1.06) == (False, 1)


def test_refused_requests_do_not_occupy_the_window():
    window = SlidingWindow(clock=lambda: 0.0)
    limit = Limit(2, 1.0)
    window.hit("u", limit, now=0.0)
    window.hit("u", limit, now=0.5)
    for t in (0.6, 0.7, 0.9):
        assert window.hit("u", limit, now=t)[0] is False
    assert window.hit("u", limit, now=1.01)[0] is True


def test_retry_after_rounds_up_and_is_at_least_one():
    window = SlidingWindow(clock=lambda: 0.0)
    limit = Limit(1, 5.0)
    window.hit("u", limit, now=0.0)
    assert window.hit("u", limit, now=0.5) == (False, 5)
    assert window.hit("u", limit, now=4.99) == (False, 1)
    assert SlidingWindow().hit("z", Limit(0, 2.0)) == (False, 2)


@pytest.mark.parametrize("path,limited", [
    ("/api/v1/packs", True), ("/api/v1/executions/5", True),
    ("/api/v1/webhooks/wh_abc", False), ("/health", False), ("/auth/login", False),
])
def test_scope_excludes_webhooks_auth_and_health(path, limited):
    assert in_scope(path) is limited


def _replies(spec):
    return [Reply(status, "1" if status == 429 else None, None, sent, done)
            for status, sent, done in spec]


def test_window_checker_accepts_a_consistent_sequence():
    seq = _replies([(200, 0.00, 0.01), (200, 0.02, 0.03), (429, 0.04, 0.05),
                    (200, 1.10, 1.11)])
    check = check_sliding_window(seq, 2, 1.0)
    assert (check.forced_allowed, check.forced_limited) == (3, 1)


def test_window_checker_rejects_an_admission_over_the_limit():
    seq = _replies([(200, 0.00, 0.01), (200, 0.02, 0.03), (200, 0.04, 0.05)])
    with pytest.raises(AssertionError, match="reply 3"):
        check_sliding_window(seq, 2, 1.0)


def test_window_checker_rejects_a_refusal_with_room_left():
    seq = _replies([(200, 0.00, 0.01), (429, 0.02, 0.03)])
    with pytest.raises(AssertionError, match="reply 2"):
        check_sliding_window(seq, 2, 1.0)


def test_window_checker_tolerates_boundary_uncertainty():
    # the first accepted request may or may not still be in the window of the last one
    seq = _replies([(200, 0.00, 0.20), (200, 0.30, 0.31), (429, 1.10, 1.15)])
    assert check_sliding_window(seq, 2, 1.0).either == 1
