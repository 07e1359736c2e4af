"""Scenario machinery shared by the tier tests (kept out of the test bodies).

- timestamps: `parse_ts`, `iso_ms`, `utcnow`, `secs` (server timestamps are RFC 3339 UTC);
- lists: `all_items` (every page of a server-filtered list), `total` (`include_total=true` count);
- flows: `wait_timer_events` / `full_events`, `chain_for_event` (event -> its one enforcement ->
  its one execution), `wait_event_for_webhook`;
- negative-check anchors (scenarios.md §0.3): `Clock` is the P2 clock rule, `first_index` helps
  with P6 ordering on a recorded stream;
- `max_overlap` of execution windows, `expect_rule_rejected` (a create that must fail, cleaned up
  if it does not), JWT tampering for the token-forgery cases (`forge_claims`, `unsigned_token`),
  `service_log_problems` (ERROR/panic lines in the embedded services' log slices).

Every waiting function fails with what it expected and what it saw last (polling.wait_until).
"""
from __future__ import annotations

import base64
import json
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Iterable

from tests.helpers.client import ApiError
from tests.helpers.polling import wait_until

UTC = timezone.utc

# ------------------------------------------------------------------ timestamps
_TS = re.compile(r"^(\d{4}-\d{2}-\d{2})[T ](\d{2}:\d{2}:\d{2})(?:\.(\d+))?(Z|[+-]\d{2}:?\d{2})?$")


def parse_ts(value: str) -> datetime:
    """An RFC 3339 timestamp (any number of fraction digits, `Z` or an offset) as an aware datetime."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    m = _TS.match(str(value).strip())
    assert m, f"expected an RFC 3339 timestamp, got {value!r}"
    date, clock, frac, zone = m.groups()
    frac = (frac or "0")[:6].ljust(6, "0")
    if zone in (None, "Z"):
        zone = "+00:00"
    elif ":" not in zone:
        zone = zone[:3] + ":" + zone[3:]
    return datetime.fromisoformat(f"{date}T{clock}.{frac}{zone}").astimezone(UTC)


def iso_ms(dt: datetime) -> str:
    """`2026-01-27T10:30:00.123Z`: RFC 3339 UTC with milliseconds."""
    dt = dt.astimezone(UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def utcnow() -> datetime:
    return datetime.now(UTC)


def secs(earlier: Any, later: Any) -> float:
    """`later - earlier` in seconds (either may be a timestamp string or a datetime)."""
    return (parse_ts(later) - parse_ts(earlier)).total_seconds()


def whole_second_after(dt: datetime, seconds: int) -> datetime:
    """The whole second `seconds` after `dt` rounded up to a whole second."""
    base = dt.replace(microsecond=0) + timedelta(seconds=1 if dt.microsecond else 0)
    return base + timedelta(seconds=seconds)


# ------------------------------------------------------------------ lists
def _page_items(page: Any) -> list:
    if isinstance(page, dict):
        return list(page.get("items") or [])
    return list(page or [])


def all_items(list_fn: Callable[..., Any], *, per_page: int = 100, max_pages: int = 100,
              **filters) -> list:
    """Every item of a server-filtered list endpoint that pages with `page`/`per_page`."""
    out: list = []
    for page_no in range(1, max_pages + 1):
        page = list_fn(page=page_no, per_page=per_page, **filters)
        batch = _page_items(page)
        out.extend(batch)
        pagination = page.get("pagination", {}) if isinstance(page, dict) else {}
        if not batch or not pagination.get("has_next"):
            return out
    raise AssertionError(f"list still had a next page after {max_pages} pages of {per_page}")


def total(list_fn: Callable[..., Any], **filters) -> int:
    """`pagination.total_items` of a list endpoint asked with `include_total=true`."""
    page = list_fn(include_total=True, **filters)
    pagination = page.get("pagination") or {}
    assert "total_items" in pagination, (
        f"expected pagination.total_items with include_total=true for filters {filters}, "
        f"got pagination {pagination}")
    return int(pagination["total_items"])


def ids(objs: Iterable[dict]) -> list:
    return [o.get("id") for o in objs]


# ------------------------------------------------------------------ events and their chains
def full_events(client, rule_ref: str | None = None, **filters) -> list[dict]:
    """Every event (full `EventResponse`, with payload) matching the server filters, oldest first."""
    if rule_ref is not None:
        filters["rule_ref"] = rule_ref
    summaries = all_items(client.list_events, **filters)
    return [client.get_event(s["id"]) for s in sorted(summaries, key=lambda s: s["id"])]


def wait_timer_events(client, rule_ref: str, count: int, timeout: float) -> list[dict]:
    """Wait until timer rule `rule_ref` has at least `count` events; return the first `count`
    (full events, oldest first)."""
    wait_until(lambda: _page_items(client.list_events(rule_ref=rule_ref, per_page=100)),
               timeout=timeout, done=lambda found: len(found) >= count,
               description=f"{count} event(s) of timer rule {rule_ref}")
    return full_events(client, rule_ref)[:count]


def chain_for_event(client, event_id: int, *, timeout: float = 15) -> tuple[dict, dict]:
    """The single enforcement of `event_id` and the single top-level execution it created (full
    objects). Workflow children inherit the enforcement, hence `top_level_only`.

    Fails at once if a second enforcement or top-level execution shows up while waiting.
    """
    from tests.helpers.polling import wait_for_items

    enfs = wait_for_items(lambda: client.list_enforcements(event=event_id), 1, timeout=timeout,
                          description=f"enforcements of event {event_id}")
    enforcement_id = enfs[0]["id"]
    execs = wait_for_items(lambda: client.list_executions(enforcement=enforcement_id,
                                                          top_level_only=True), 1,
                           timeout=timeout,
                           description=f"executions of enforcement {enforcement_id}")
    # Read the enforcement only now: it leaves `created` in the transaction that creates its
    # execution, so a copy read before the execution existed would show a stale status.
    return client.get_enforcement(enforcement_id), client.get_execution(execs[0]["id"])


# ------------------------------------------------------------------ P2 clock rule
class Clock:
    """P2 clock rule: a 1 s `core.intervaltimer` rule (running `core.noop`).

    Once `wait_ticks_after(t)` returns, the timer process was alive and armed after `t`, so a timer
    rule that should have fired (or must not fire again) by `t` can be checked for absences.
    Creating it restarts the timer process (upstream behaviour), which also re-arms every other
    timer rule: T1.2 uses that on purpose.
    """

    def __init__(self, client, rule: dict):
        self.client = client
        self.rule = rule
        self.ref = rule["ref"]
        self.created = parse_ts(rule["created"])

    @classmethod
    def start(cls, client, make, uid: str) -> "Clock":
        rule = make.timer_rule("core.intervaltimer", {"unit": "seconds", "interval": 1},
                               "core.noop", label=f"P2 clock {uid}")
        return cls(client, rule)

    def ticks(self) -> list[dict]:
        return full_events(self.client, self.ref)

    def wait_ticks_after(self, after: Any, n: int = 2, timeout: float = 15) -> list[dict]:
        """Wait for `n` clock events whose `payload.fired_at` is later than `after`; return them."""
        after = parse_ts(after)

        def probe():
            summaries = _page_items(self.client.list_events(rule_ref=self.ref, per_page=n + 5))
            # list is newest first; only the newest few can be after `after`
            late = []
            for s in summaries:
                ev = self.client.get_event(s["id"])
                fired = (ev.get("payload") or {}).get("fired_at")
                if fired and parse_ts(fired) > after:
                    late.append(ev)
            return late

        return wait_until(probe, timeout=timeout, done=lambda late: len(late) >= n,
                          description=f"{n} clock event(s) of {self.ref} fired after "
                                      f"{iso_ms(after)} (P2 anchor)")


# ------------------------------------------------------------------ orderings and overlaps
def stream_exec_id(notification: dict) -> Any:
    """The execution id of an SSE/WS execution notification payload."""
    return notification.get("entity_id", notification.get("id"))


def first_index(events: list[dict], predicate: Callable[[dict], bool], what: str) -> int:
    """Index of the first recorded notification matching `predicate`; fails naming `what`."""
    for i, event in enumerate(events):
        if predicate(event):
            return i
    raise AssertionError(f"expected a stream notification: {what}; none among {len(events)} "
                         f"recorded: {json.dumps(events[-12:], default=str)[:1500]}")


def last_index(events: list[dict], predicate: Callable[[dict], bool], what: str) -> int:
    found = [i for i, e in enumerate(events) if predicate(e)]
    if not found:
        raise AssertionError(f"expected a stream notification: {what}; none among {len(events)} "
                             f"recorded")
    return found[-1]


def max_overlap(windows: Iterable[tuple[Any, Any]]) -> int:
    """The largest number of [start, end) windows covering one instant."""
    points = []
    for start, end in windows:
        points.append((parse_ts(start), 1))
        points.append((parse_ts(end), -1))
    points.sort(key=lambda p: (p[0], p[1]))  # an end sorts before a start at the same instant
    best = cur = 0
    for _, delta in points:
        cur += delta
        best = max(best, cur)
    return best


# ------------------------------------------------------------------ negative API checks
def expect_api_error(call: Callable[[], Any], status: int, what: str) -> ApiError:
    """Run `call`, which must fail with HTTP `status`; return the ApiError."""
    try:
        value = call()
    except ApiError as exc:
        assert exc.status == status, f"{what}: expected HTTP {status}, got {exc}"
        return exc
    raise AssertionError(f"{what}: expected HTTP {status}, but the call succeeded: "
                         f"{json.dumps(value, default=str)[:800]}")


def expect_rule_rejected(client, status: int, what: str, **body) -> ApiError:
    """POST /rules must fail with `status`. A rule created anyway is disabled and deleted at once
    (an enabled timer rule left behind would keep firing) before the test fails."""
    try:
        rule = client.create_rule(**body)
    except ApiError as exc:
        assert exc.status == status, f"{what}: expected HTTP {status}, got {exc}"
        return exc
    try:
        client.disable_rule(rule["ref"])
    finally:
        client.delete_rule(rule["ref"])
    raise AssertionError(f"{what}: expected HTTP {status}, but the rule was created: "
                         f"{json.dumps(rule, default=str)[:800]}")


# ------------------------------------------------------------------ JWT tampering
def _b64d(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def _b64e(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def jwt_claims(token: str) -> dict:
    return json.loads(_b64d(token.split(".")[1]))


def forge_claims(token: str, **changes) -> str:
    """The same JWT with some claims changed, keeping the original header and signature."""
    header, payload, signature = token.split(".")
    claims = json.loads(_b64d(payload))
    claims.update(changes)
    body = _b64e(json.dumps(claims, separators=(",", ":")).encode())
    return f"{header}.{body}.{signature}"


def unsigned_token(token: str, **changes) -> str:
    """The token's claims (optionally changed) under `alg: none`, with an empty signature."""
    claims = jwt_claims(token)
    claims.update(changes)
    header = _b64e(json.dumps({"alg": "none", "typ": "JWT"}, separators=(",", ":")).encode())
    body = _b64e(json.dumps(claims, separators=(",", ":")).encode())
    return f"{header}.{body}."


# ------------------------------------------------------------------ secret fixtures
SECRETS_FILE = Path(__file__).resolve().parents[1] / "fixtures" / "secrets" / "test_secrets.json"


def secret_value(name: str, uid: str) -> str:
    """A fake secret from tests/fixtures/secrets/test_secrets.json, made unique with `-<uid>`."""
    data = json.loads(SECRETS_FILE.read_text(encoding="utf-8"))
    assert name in data and not name.startswith("_"), f"no secret fixture named {name!r}"
    return f"{data[name]}-{uid}"


# ------------------------------------------------------------------ service logs
_ERROR = re.compile(r"\b(ERROR|CRITICAL|FATAL)\b")
_CRASH = re.compile(r"\bpanic|Traceback \(most recent call last\)")


def service_log_problems(services: Any, since: datetime, mentions: Iterable[str] = ()) -> dict[str, list[str]]:
    """Problem lines per service in the log slices written since `since` (an aware datetime).

    A crash line (panic, Python traceback) counts wherever it comes from. An ERROR / CRITICAL /
    FATAL line counts when it mentions one of `mentions` (the test's refs and uid): tests running
    in parallel may log their own, expected errors. `services` is the embedded stack's
    ServiceManager (`names()`, `log_slice(name, since)`).
    """
    mentions = [m for m in mentions if m]
    problems: dict[str, list[str]] = {}
    for name in services.names():
        text = services.log_slice(name, since) or ""
        bad = [line for line in text.splitlines()
               if _CRASH.search(line) or (_ERROR.search(line) and any(m in line for m in mentions))]
        if bad:
            problems[name] = bad[:20]
    return problems


__all__ = [
    "UTC", "parse_ts", "iso_ms", "utcnow", "secs", "whole_second_after",
    "all_items", "total", "ids", "full_events", "wait_timer_events", "chain_for_event",
    "Clock", "stream_exec_id", "first_index", "last_index", "max_overlap",
    "expect_api_error", "expect_rule_rejected",
    "jwt_claims", "forge_claims", "unsigned_token", "secret_value", "service_log_problems",
]
