"""The notifier's wire protocol, as pure functions (no I/O), after upstream's `crates/notifier`.

* Filters: `all`, `entity_type:<t>`, `entity:<t>:<id>`, `notification_type:<channel>`,
  `user:<identity id>` (parsed like upstream: split on `:`, extra parts ignored).
* A client with no filter receives nothing; a notification is delivered when any filter matches.
* `user:<id>` is allowed for the caller's own id or when it holds the role `admin`; it matches
  `user_id`, which no trigger sets, so in practice never.
* Client messages: `{"type":"subscribe","filter":F}`, `{"type":"unsubscribe","filter":F}`,
  `{"type":"ping"}` (upstream answers nothing at the JSON level; WebSocket ping frames get pongs).
* Server messages: `welcome`, `notification`, `error`.
"""
from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

# Channels the notifier LISTENs on (api.md section 13.3 plus the extension E11 `rule_triggered`).
CHANNELS: tuple[str, ...] = (
    "attune_notifications",
    "execution_created",
    "execution_status_changed",
    "workflow_execution_status_changed",
    "event_created",
    "enforcement_created",
    "enforcement_status_changed",
    "inquiry_created",
    "inquiry_responded",
    "inquiry_timeout",
    "artifact_created",
    "artifact_updated",
    "work_queue_created",
    "work_queue_updated",
    "work_queue_item_created",
    "work_queue_item_updated",
    "rule_triggered",
)

ADMIN_ROLE = "admin"
WELCOME_MESSAGE = "Connected to Attune Notifier"
CLOSE_CODE_TOKEN_EXPIRED = 4401
CLOSE_REASON_TOKEN_EXPIRED = "token expired"


class FilterError(ValueError):
    """An unparseable filter; str() is upstream's reason text."""


class MessageError(ValueError):
    """A client message that is not valid JSON of a known shape."""


@dataclass(frozen=True)
class Filter:
    kind: str                  # all | entity_type | entity | notification_type | user
    value: str | None = None   # entity type, channel
    id: int | None = None      # entity id or user id

    def matches(self, n: "Notification") -> bool:
        if self.kind == "all":
            return True
        if self.kind == "entity_type":
            return n.entity_type == self.value
        if self.kind == "entity":
            return n.entity_type == self.value and n.entity_id == self.id
        if self.kind == "notification_type":
            return n.notification_type == self.value
        if self.kind == "user":
            return n.user_id is not None and n.user_id == self.id
        return False


_I64 = re.compile(r"[+-]?[0-9]+")


def _parse_i64(text: str, what: str) -> int:
    """Like Rust's `str::parse::<i64>`: optional sign, ASCII digits, no spaces, in range."""
    if not _I64.fullmatch(text):
        raise FilterError(what)
    value = int(text)
    if not -(2 ** 63) <= value < 2 ** 63:
        raise FilterError(what)
    return value


def parse_filter(text: str) -> Filter:
    """Parse a filter string like upstream's `parse_subscription_filter`."""
    if not isinstance(text, str):
        raise FilterError("Invalid filter format: filter must be a string")
    if text == "all":
        return Filter("all")
    parts = text.split(":")
    if len(parts) < 2:
        raise FilterError(f"Invalid filter format: {text}")
    kind = parts[0]
    if kind == "entity_type":
        return Filter("entity_type", parts[1])
    if kind == "notification_type":
        return Filter("notification_type", parts[1])
    if kind == "user":
        return Filter("user", id=_parse_i64(parts[1], "Invalid user ID"))
    if kind == "entity":
        if len(parts) < 3:
            raise FilterError("Entity filter requires type and id: entity:type:id")
        return Filter("entity", parts[1], _parse_i64(parts[2], "Invalid entity ID"))
    raise FilterError(f"Unknown filter type: {kind}")


def filter_allowed(f: Filter, identity_id: int, roles: list[str] | tuple[str, ...]) -> bool:
    """`user:<other>` needs the `admin` role; everything else is open to any identity."""
    if f.kind == "user":
        return f.id == identity_id or ADMIN_ROLE in roles
    return True


@dataclass
class Notification:
    notification_type: str
    entity_type: str
    entity_id: int
    user_id: int | None
    payload: Any
    timestamp: str
    payload_text: str | None = None   # the JSON text `payload` was parsed from, when known

    def to_message(self) -> dict:
        return {"type": "notification", "notification_type": self.notification_type,
                "entity_type": self.entity_type, "entity_id": self.entity_id,
                "user_id": self.user_id, "payload": self.payload, "timestamp": self.timestamp}

    def to_frame(self) -> str:
        """`to_message()` as JSON text; the payload's own text is spliced in (not re-encoded)."""
        if self.payload_text is None:
            return json.dumps(self.to_message(), separators=(",", ":"))
        return (f'{{"type":"notification","notification_type":{json.dumps(self.notification_type)},'
                f'"entity_type":{json.dumps(self.entity_type)},"entity_id":{self.entity_id},'
                f'"user_id":{"null" if self.user_id is None else self.user_id},'
                f'"payload":{self.payload_text},"timestamp":{json.dumps(self.timestamp)}}}')


_second: list = [None, ""]   # (epoch second, its formatted prefix): strftime once per second


def now_rfc3339() -> str:
    now = time.time()
    sec = int(now)
    if _second[0] != sec:
        _second[:] = [sec, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))]
    return f"{_second[1]}.{int((now - sec) * 1_000_000):06d}Z"


def notification_from_pg(channel: str, payload_text: str, timestamp: str | None = None
                         ) -> Notification:
    """Build a notification from a NOTIFY; raises ValueError (dropped, as upstream) when the
    payload is not JSON or lacks a string `entity_type` or an integer `entity_id`."""
    try:
        payload = json.loads(payload_text)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"Failed to parse notification payload as JSON: {exc}") from exc
    if not isinstance(payload, dict):
        raise ValueError("Missing 'entity_type' in notification payload")
    entity_type = payload.get("entity_type")
    if not isinstance(entity_type, str):
        raise ValueError("Missing 'entity_type' in notification payload")
    entity_id = payload.get("entity_id")
    if isinstance(entity_id, bool) or not isinstance(entity_id, int):
        raise ValueError("Missing 'entity_id' in notification payload")
    user_id = payload.get("user_id")
    if isinstance(user_id, bool) or not isinstance(user_id, int):
        user_id = None
    return Notification(channel, entity_type, entity_id, user_id, payload,
                        timestamp or now_rfc3339(), payload_text)


@dataclass
class Subscriptions:
    """One client's filters, in subscription order, without duplicates."""
    filters: list[Filter] = field(default_factory=list)

    def add(self, f: Filter) -> bool:
        if f in self.filters:
            return False
        self.filters.append(f)
        return True

    def remove(self, f: Filter) -> bool:
        if f in self.filters:
            self.filters.remove(f)
            return True
        return False

    def wants(self, n: Notification) -> bool:
        return bool(self.filters) and any(f.matches(n) for f in self.filters)

    def may_want(self, channel: str) -> bool:
        """False when no filter can match a notification of `channel` (before parsing it)."""
        return any(f.kind != "notification_type" or f.value == channel for f in self.filters)

    def __len__(self) -> int:
        return len(self.filters)


def parse_client_message(text: str | bytes) -> dict:
    """Validate a client frame; returns {"type": ..., "filter"?: ...} or raises MessageError
    with upstream's `Malformed message: ...` text."""
    try:
        msg = json.loads(text)
    except (TypeError, ValueError) as exc:
        raise MessageError(f"Malformed message: {exc}") from None
    if not isinstance(msg, dict):
        raise MessageError("Malformed message: expected an object with a `type` field")
    kind = msg.get("type")
    if kind is None:
        raise MessageError("Malformed message: missing field `type`")
    if kind in ("subscribe", "unsubscribe"):
        if "filter" not in msg:
            raise MessageError("Malformed message: missing field `filter`")
        if not isinstance(msg["filter"], str):
            raise MessageError("Malformed message: invalid type for `filter`, expected a string")
        return {"type": kind, "filter": msg["filter"]}
    if kind == "ping":
        return {"type": "ping"}
    raise MessageError(f"Malformed message: unknown variant `{kind}`, expected one of "
                       "`subscribe`, `unsubscribe`, `ping`")


def welcome_message(client_id: str) -> dict:
    return {"type": "welcome", "client_id": client_id, "message": WELCOME_MESSAGE}


def error_message(message: str) -> dict:
    return {"type": "error", "message": message}


def invalid_filter_message(filter_text: str, reason: str) -> dict:
    return error_message(f"Invalid filter '{filter_text}': {reason}")


UNAUTHORIZED_USER_FILTER = "Unauthorized to subscribe to user filter for another identity"


# ---------------------------------------------------------------- authentication (upgrade time)
def extract_token(headers: dict[str, str] | Any) -> str | None:
    """Token from `Authorization: Bearer <jwt>` (prefix case-insensitive) or from the
    subprotocol list `attune.v1, attune.jwt.<jwt>`. `headers` is any mapping with `.get`."""
    auth = headers.get("Authorization") or headers.get("authorization")
    if auth:
        parts = auth.strip().split(None, 1)
        if len(parts) == 2 and parts[0].lower() == "bearer" and parts[1].strip():
            return parts[1].strip()
    protocols = headers.get("Sec-WebSocket-Protocol") or headers.get("sec-websocket-protocol")
    if protocols:
        for item in protocols.split(","):
            item = item.strip()
            if item.startswith("attune.jwt.") and len(item) > len("attune.jwt."):
                return item[len("attune.jwt."):]
    return None


def check_claims(claims: dict) -> tuple[int | None, str | None]:
    """(identity_id, None) for an acceptable token, else (None, error reason)."""
    token_type = claims.get("token_type", "access")
    if token_type == "refresh":
        return None, "refresh_tokens_not_allowed"
    if token_type == "sensor":
        return None, "sensor_tokens_not_allowed"
    if token_type == "worker":
        return None, "worker_tokens_not_allowed"
    if token_type not in ("access", "execution"):
        return None, "invalid_or_expired_token"
    sub = claims.get("sub")
    if not isinstance(sub, str) or not _I64.fullmatch(sub) or not -(2 ** 63) <= int(sub) < 2 ** 63:
        return None, "invalid_subject_in_token"
    identity_id = int(sub)
    return identity_id, None


def token_expired(exp: Any, now: float) -> bool:
    try:
        exp = int(exp)
    except (TypeError, ValueError):
        return True
    return exp <= 0 or now >= exp
