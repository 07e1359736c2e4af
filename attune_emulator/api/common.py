"""Shared building blocks of the API routes: errors, body/query parsing, envelopes, auth, DB errors.

Error bodies follow upstream's three shapes (api.md §0.5):
  (a) `ApiError`      -> JSON {"error": "<message>", "code": "<CODE>"}
  (b) `AuthError`     -> JSON {"error": {"code": 401, "message": "..."}} (the RequireAuth extractor)
  (c) `PlainError`    -> text/plain, as axum's own extractor rejections.

Route handlers are `async`; the database driver is synchronous, so long or repeated queries should
go through `run_sync` (a worker thread) to keep the event loop responsive.
"""
from __future__ import annotations

import concurrent.futures
import json
import logging
import math
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple

import psycopg2
import psycopg2.errors
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .. import auth as _auth
from ..db import Database, _default, iso

log = logging.getLogger(__name__)

__all__ = [
    "ApiError", "AuthError", "PlainError", "Field", "Principal", "PageParams",
    "bad_request", "unauthorized", "forbidden", "not_found", "conflict", "unprocessable",
    "validation_error", "too_many", "unavailable", "not_implemented",
    "read_json", "validate_body", "check_rules", "bearer_token", "ok", "success", "paginated", "page_params", "query_bool", "query_int",
    "query_str", "path_int", "ts", "drop_none", "require_auth", "db", "db_call", "run_sync",
    "publish", "map_db_error", "JSON",
]

# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------

_CODES = {
    400: "BAD_REQUEST", 401: "UNAUTHORIZED", 403: "FORBIDDEN", 404: "NOT_FOUND",
    409: "CONFLICT", 413: "PAYLOAD_TOO_LARGE", 422: "UNPROCESSABLE_ENTITY",
    429: "TOO_MANY_REQUESTS", 500: "INTERNAL_SERVER_ERROR", 501: "NOT_IMPLEMENTED",
    503: "SERVICE_UNAVAILABLE",
}


class JSON(JSONResponse):
    """JSONResponse that also serialises datetimes (RFC 3339 `Z`) like the rest of the stack."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, default=_default, ensure_ascii=False,
                          separators=(",", ":")).encode("utf-8")


class ApiError(Exception):
    """A handler error, shape (a): {"error": message, "code": CODE}."""

    def __init__(self, status: int, message: str, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code or _CODES.get(status, "INTERNAL_SERVER_ERROR")

    def response(self) -> Response:
        return JSON({"error": self.message, "code": self.code}, status_code=self.status)


class AuthError(ApiError):
    """RequireAuth rejection, shape (b): {"error": {"code": 401, "message": ...}}."""

    def __init__(self, message: str, status: int = 401):
        super().__init__(status, message)

    def response(self) -> Response:
        return JSON({"error": {"code": self.status, "message": self.message}},
                    status_code=self.status)

    def as_api_error(self) -> ApiError:
        """The shape-(a) form used by /auth/me and the SSE endpoints."""
        return ApiError(self.status, "Unauthorized")


class PlainError(Exception):
    """A framework-level rejection answered as text/plain (axum extractor style)."""

    def __init__(self, status: int, text: str):
        super().__init__(text)
        self.status = status
        self.text = text

    def response(self) -> Response:
        return Response(self.text, status_code=self.status,
                        media_type="text/plain; charset=utf-8")


def bad_request(msg: str) -> ApiError:
    return ApiError(400, msg)


def unauthorized(msg: str) -> ApiError:
    return ApiError(401, msg)


def forbidden(msg: str) -> ApiError:
    return ApiError(403, msg)


def not_found(msg: str) -> ApiError:
    return ApiError(404, msg)


def conflict(msg: str) -> ApiError:
    return ApiError(409, msg)


def unprocessable(msg: str) -> ApiError:
    return ApiError(422, msg, "UNPROCESSABLE_ENTITY")


def validation_error(msg: str) -> ApiError:
    return ApiError(422, msg, "VALIDATION_ERROR")


def too_many(msg: str) -> ApiError:
    return ApiError(429, msg)


def unavailable(msg: str) -> ApiError:
    return ApiError(503, msg)


def not_implemented(msg: str) -> ApiError:
    return ApiError(501, msg)


# --------------------------------------------------------------------------------------------
# JSON bodies
# --------------------------------------------------------------------------------------------

_REQUIRED = object()


@dataclass
class Field:
    """One field of a request DTO.

    `type` is str, int, float, bool, dict, list or "json" (any value). `nullable=None` means
    "nullable unless required" (serde's `Option<T>`); null for a non-nullable field is a type
    error. `items` checks list elements. Length rules count characters (strings) or elements
    (lists) and give 422 VALIDATION_ERROR, as the `validator` crate does.
    """
    type: Any
    required: bool = False
    default: Any = None
    min_len: int | None = None
    max_len: int | None = None
    nullable: bool | None = None
    enum: tuple | list | None = None
    items: Any = None
    min_value: float | None = None
    max_value: float | None = None

    @property
    def allows_null(self) -> bool:
        return (not self.required) if self.nullable is None else self.nullable


_SERDE_EXPECT = {str: "a string", int: "i64", float: "f64", bool: "a boolean",
                 dict: "a map", list: "a sequence"}


def _serde_kind(value: Any) -> str:
    """How serde names an unexpected JSON value in 'invalid type' messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean `{'true' if value else 'false'}`"
    if isinstance(value, int):
        return f"integer `{value}`"
    if isinstance(value, float):
        return f"floating point `{value}`"
    if isinstance(value, str):
        return f"string {json.dumps(value)}"
    if isinstance(value, list):
        return "sequence"
    return "map"


def _type_ok(typ: Any, value: Any) -> bool:
    if typ == "json" or typ is Any:
        return True
    if typ is bool:
        return isinstance(value, bool)
    if typ is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if typ is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, typ)


def _end_position(text: str) -> str:
    """serde reports struct-level errors at the end of the object: `line L column C`."""
    stripped = text.rstrip()
    lines = stripped.split("\n")
    return f"line {len(lines)} column {len(lines[-1])}"


def _deser_error(detail: str, path: str | None, text: str) -> PlainError:
    prefix = f"{path}: " if path else ""
    return PlainError(422, "Failed to deserialize the JSON body into the target type: "
                           f"{prefix}{detail} at {_end_position(text)}")


def _serde_syntax_message(exc: json.JSONDecodeError) -> str:
    msg = exc.msg
    if msg.startswith("Expecting value"):
        msg = "EOF while parsing a value" if exc.pos >= len(exc.doc.rstrip()) else "expected value"
    elif msg.startswith("Extra data"):
        msg = "trailing characters"
    elif msg.startswith("Unterminated string"):
        msg = "EOF while parsing a string"
    elif msg.startswith("Expecting property name"):
        msg = "key must be a string"
    elif msg.startswith("Expecting ','"):
        msg = "expected `,` or `}`"
    elif msg.startswith("Expecting ':'"):
        msg = "expected `:`"
    elif msg.startswith("Invalid control character"):
        msg = "control character (\\u0000-\\u001F) found while parsing a string"
    else:
        msg = msg[0].lower() + msg[1:] if msg else "invalid JSON"
    return f"{msg} at line {exc.lineno} column {exc.colno}"


def _reject_constant(name: str):
    # serde_json does not accept NaN / Infinity literals.
    raise json.JSONDecodeError("Expecting value", name, 0)


def _is_json_content_type(value: str | None) -> bool:
    if not value:
        return False
    mime = value.split(";", 1)[0].strip().lower()
    if mime == "application/json":
        return True
    return mime.startswith("application/") and mime.endswith("+json")


def _length_error(name: str, f: Field, value: Any, prefix: str) -> ApiError:
    # Mirrors the `validator` crate's Display: `field: Validation error: length [{params}]`.
    bounds = []
    if f.min_len is not None:
        bounds.append(f'"min": Number({f.min_len})')
    if f.max_len is not None:
        bounds.append(f'"max": Number({f.max_len})')
    shown = f"String({json.dumps(value)})" if isinstance(value, str) else "Array([...])"
    return validation_error(f"{prefix}: {name}: Validation error: length "
                            f"[{{{', '.join(bounds)}, \"value\": {shown}}}]")


def _range_error(name: str, f: Field, value: Any, prefix: str) -> ApiError:
    bounds = []
    if f.min_value is not None:
        bounds.append(f'"min": Number({f.min_value})')
    if f.max_value is not None:
        bounds.append(f'"max": Number({f.max_value})')
    return validation_error(f"{prefix}: {name}: Validation error: range "
                            f"[{{{', '.join(bounds)}, \"value\": Number({value})}}]")


def _check_value(name: str, f: Field, value: Any, text: str) -> Any:
    if value is None:
        if f.type != "json" and not f.allows_null:
            expected = _SERDE_EXPECT.get(f.type, "a value")
            raise _deser_error(f"invalid type: null, expected {expected}", name, text)
        return None
    if not _type_ok(f.type, value):
        expected = _SERDE_EXPECT.get(f.type, "a value")
        raise _deser_error(f"invalid type: {_serde_kind(value)}, expected {expected}", name, text)
    if f.type is int and not (-(2 ** 63) <= value < 2 ** 63):
        raise _deser_error(f"invalid value: integer `{value}`, expected i64", name, text)
    if f.items is not None and isinstance(value, list):
        for i, item in enumerate(value):
            if not _type_ok(f.items, item):
                expected = _SERDE_EXPECT.get(f.items, "a value")
                raise _deser_error(f"invalid type: {_serde_kind(item)}, expected {expected}",
                                   f"{name}[{i}]", text)
    if f.enum is not None and value not in f.enum:
        variants = ", ".join(f"`{v}`" for v in f.enum)
        raise _deser_error(f"unknown variant `{value}`, expected one of {variants}", name, text)
    return value


def validate_body(body: Any, spec: dict[str, Field], text: str = "{}",
                  invalid_prefix: str | None = "Validation failed") -> dict:
    """Check a parsed body against `spec` (serde first, then `validator` length/range rules).

    `invalid_prefix` starts the 422 VALIDATION_ERROR message (handlers word it differently,
    e.g. "Invalid login request"); None skips the rule pass (call `check_rules` later, when a
    handler checks something else first). Returns a dict holding every spec'd field (defaults
    filled in); unknown fields are dropped. Like serde, present fields are checked in document
    order and missing required fields are reported after that.
    """
    if not isinstance(body, dict):
        raise _deser_error(f"invalid type: {_serde_kind(body)}, expected a map", None, text)
    out: dict[str, Any] = {}
    # serde pass: types and enums of present fields, then missing ones (all -> plain 422).
    for name in body:
        f = spec.get(name)
        if f is not None:
            out[name] = _check_value(name, f, body[name], text)
    for name, f in spec.items():
        if name not in body:
            if f.required:
                raise _deser_error(f"missing field `{name}`", None, text)
            out[name] = f.default() if callable(f.default) else f.default
    if invalid_prefix is not None:
        check_rules(out, spec, invalid_prefix)
    return out


def check_rules(values: dict, spec: dict[str, Field],
                invalid_prefix: str = "Validation failed") -> None:
    """The `validator` pass: lengths and ranges (-> 422 VALIDATION_ERROR)."""
    for name, f in spec.items():
        value = values.get(name)
        if value is None:
            continue
        if isinstance(value, (str, list)) and (f.min_len is not None or f.max_len is not None):
            n = len(value)
            if (f.min_len is not None and n < f.min_len) or (f.max_len is not None and n > f.max_len):
                raise _length_error(name, f, value, invalid_prefix)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and (
                f.min_value is not None or f.max_value is not None):
            if (f.min_value is not None and value < f.min_value) or (
                    f.max_value is not None and value > f.max_value):
                raise _range_error(name, f, value, invalid_prefix)


async def read_json(request: Request, spec: dict[str, Field] | None = None, *,
                    required_body: bool = True,
                    invalid_prefix: str | None = "Validation failed") -> Any:
    """Parse the request body like axum's `Json<T>` extractor, then validate against `spec`.

    With `required_body=False` (axum's `Option<Json<T>>`) a request without a Content-Type header
    yields None. Without `spec` the parsed JSON value is returned as is.
    """
    ctype = request.headers.get("content-type")
    if not required_body and ctype is None:
        return None
    if not _is_json_content_type(ctype):
        raise PlainError(415, "Expected request with `Content-Type: application/json`")
    raw = await request.body()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise PlainError(400, "Failed to parse the request body as JSON: "
                              "invalid unicode code point at line 1 column 1") from None
    try:
        body = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise PlainError(400, "Failed to parse the request body as JSON: "
                              + _serde_syntax_message(exc)) from None
    except RecursionError:
        raise PlainError(400, "Failed to parse the request body as JSON: "
                              "recursion limit exceeded at line 1 column 1") from None
    if spec is None:
        return body
    return validate_body(body, spec, text, invalid_prefix)


# --------------------------------------------------------------------------------------------
# Envelopes
# --------------------------------------------------------------------------------------------

def ok(data: Any, status: int = 200, message: str | None = None) -> Response:
    """ApiResponse: {"data": ..., "message"?}."""
    body: dict[str, Any] = {"data": data}
    if message is not None:
        body["message"] = message
    return JSON(body, status_code=status)


def success(message: str, wrapped: bool = False, status: int = 200) -> Response:
    """SuccessResponse: bare {"success": true, "message"} or wrapped in "data"."""
    body = {"success": True, "message": message}
    return JSON({"data": body} if wrapped else body, status_code=status)


def paginated(items: list, page: int, page_size: int, total: int | None = None,
              has_next: bool | None = None) -> Response:
    """PaginatedResponse (not wrapped). `total_items`/`total_pages` only when `total` is known."""
    pagination: dict[str, Any] = {"page": page, "page_size": page_size}
    if total is not None:
        pages = math.ceil(total / page_size) if page_size > 0 else 0
        pagination["total_items"] = total
        pagination["total_pages"] = pages
        if has_next is None:
            has_next = page < pages
    pagination["has_previous"] = page > 1
    pagination["has_next"] = bool(has_next)
    return JSON({"items": items, "pagination": pagination})


# --------------------------------------------------------------------------------------------
# Query strings and path parameters
# --------------------------------------------------------------------------------------------

class PageParams(NamedTuple):
    """(page, size, offset); `size` echoes the request, `limit` is the capped row count."""
    page: int
    size: int
    offset: int
    limit: int


def _query_error(name: str, detail: str) -> PlainError:
    return PlainError(400, f"Failed to deserialize query string: {name}: {detail}")


def query_int(request: Request, name: str, default: int | None = None, *,
              unsigned: bool = False) -> int | None:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        if not raw.strip() or raw.strip() != raw or "_" in raw:
            raise ValueError
        value = int(raw, 10)
    except ValueError:
        detail = "cannot parse integer from empty string" if raw == "" else "invalid digit found in string"
        raise _query_error(name, detail) from None
    if unsigned and value < 0:
        raise _query_error(name, "invalid digit found in string")
    if not -(2 ** 63) <= value < 2 ** 63:
        raise _query_error(name, "number too large to fit in target type")
    return value


def query_bool(request: Request, name: str, default: bool = False) -> bool:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if raw == "true":
        return True
    if raw == "false":
        return False
    raise _query_error(name, "provided string was not `true` or `false`")


def query_str(request: Request, name: str, default: str | None = None, *,
              enum: tuple | list | None = None) -> str | None:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if enum is not None and raw not in enum:
        variants = ", ".join(f"`{v}`" for v in enum)
        raise _query_error(name, f"unknown variant `{raw}`, expected one of {variants}")
    return raw


def page_params(request: Request, size_param: str = "page_size", default: int = 50,
                cap: int | None = 100) -> PageParams:
    """Upstream pagination: page defaults to 1, size to `default`, the SQL limit capped at `cap`."""
    page = query_int(request, "page", 1, unsigned=True)
    size = query_int(request, size_param, default, unsigned=True)
    limit = min(size, cap) if cap is not None else size
    offset = max(page - 1, 0) * limit
    return PageParams(page, size, offset, limit)


def path_int(request: Request, name: str) -> int:
    """A numeric path id; garbage is axum's plain 400."""
    raw = request.path_params.get(name, "")
    try:
        value = int(raw, 10)
        if not -(2 ** 63) <= value < 2 ** 63 or raw.strip() != raw:
            raise ValueError
    except (ValueError, TypeError):
        raise PlainError(400, f"Invalid URL: Cannot parse `{raw}` to a `i64`") from None
    return value


# --------------------------------------------------------------------------------------------
# Small serialisation helpers
# --------------------------------------------------------------------------------------------

def ts(value) -> str | None:
    return iso(value)


def drop_none(d: dict, *keys: str) -> dict:
    """Omit fields upstream skips: with `keys`, those keys when None or empty ({} / []);
    without, every None value."""
    if not keys:
        return {k: v for k, v in d.items() if v is not None}
    for k in keys:
        if k in d and (d[k] is None or d[k] == {} or d[k] == []):
            del d[k]
    return d


# --------------------------------------------------------------------------------------------
# Database and broker access
# --------------------------------------------------------------------------------------------

def db(request: Request) -> Database:
    return request.app.state.db


db_call = db


async def run_sync(fn: Callable, *args, **kwargs):
    """Run blocking work (database, filesystem) in a worker thread."""
    return await run_in_threadpool(fn, *args, **kwargs)


# One background thread keeps publishes in call order without blocking the event loop.
_PUBLISH_POOL = concurrent.futures.ThreadPoolExecutor(max_workers=1,
                                                      thread_name_prefix="api-publish")


def _publish_now(publisher, exchange: str, routing_key: str, body: dict) -> None:
    try:
        publisher.publish(exchange, routing_key, body)
    except Exception:  # a broker outage must never fail the request that already committed
        log.exception("failed to publish %s/%s", exchange, routing_key)


def publish(request: Request, exchange: str, routing_key: str, body: dict) -> None:
    """Publish after the transaction committed; no-op without a broker, never raises."""
    publisher = getattr(request.app.state, "publisher", None)
    if publisher is None:
        log.debug("no message queue configured; not publishing %s", routing_key)
        return
    try:
        _PUBLISH_POOL.submit(_publish_now, publisher, exchange, routing_key, body)
    except RuntimeError:  # pool shut down during process exit
        log.warning("publisher stopped; dropping %s", routing_key)


def map_db_error(exc: Exception) -> ApiError | None:
    """Translate constraint/trigger errors into upstream's ApiErrors; None when not a client fault."""
    pgcode = getattr(exc, "pgcode", None)
    diag = getattr(exc, "diag", None)
    constraint = getattr(diag, "constraint_name", None) if diag is not None else None
    primary = (getattr(diag, "message_primary", None) if diag is not None else None) or str(exc)
    if pgcode == "23505":
        return conflict(f"Already exists ({constraint or 'unique'})")
    if pgcode == "23503":
        return unprocessable(f"Referenced entity does not exist ({constraint or 'foreign key'})")
    if pgcode == "23514":
        return unprocessable(f"Validation constraint failed: {constraint or 'check'}")
    if pgcode == "23502":
        column = getattr(diag, "column_name", None) if diag is not None else None
        return unprocessable(f"Missing required value ({column or 'not null'})")
    if pgcode == "P0001":
        return bad_request(primary.strip())
    if pgcode in ("22P02", "22007", "22008", "22003", "22001"):
        # invalid enum/text representation, bad timestamp, numeric/string overflow
        return bad_request(primary.strip())
    return None


# --------------------------------------------------------------------------------------------
# Authentication
# --------------------------------------------------------------------------------------------

@dataclass
class Principal:
    identity_id: int
    login: str
    token_type: str
    claims: dict
    permission_set_refs: list | None = None
    metadata: dict = field(default_factory=dict)
    # Read with the identity row at authentication (authz.py); None = not known, read on demand.
    attributes: dict | None = None
    authz_epoch: int | None = None
    pack_epoch: int | None = None
    action_epoch: int | None = None
    permission_sets: list | None = None
    cache: Any = None  # authz.AuthzCache of the app

    @property
    def is_execution(self) -> bool:
        return self.token_type == "execution"

    @property
    def skips_rbac(self) -> bool:
        """Sensor and worker tokens bypass RBAC (upstream authorize() returns OK)."""
        return self.token_type not in ("access", "execution")


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header is not None:
        return header[len("Bearer "):] if header.startswith("Bearer ") else ""
    return request.cookies.get("attune_access_token")


def decode_claims(app, token: str) -> dict:
    """`auth.decode_token` with the app's secret, through the per-process token cache."""
    cache = getattr(app.state, "token_cache", None)
    if cache is None:
        return _auth.decode_token(app.state.cfg.jwt_secret, token)
    return cache.decode(token)


def load_identity(app, identity_id: int, token_type: str) -> tuple[dict | None, list | None]:
    """(identity state row or None, the identity's permission-set rows for an access token).
    Blocking: call from a worker thread."""
    from . import authz
    database = app.state.db
    row = authz.identity_state(database, identity_id)
    sets = None
    if row is not None and token_type == "access":
        cache = getattr(app.state, "authz_cache", None)
        if cache is not None:
            sets = cache.identity_sets(database, identity_id, row.get("authz_epoch"))
    return row, sets


IDENTITY_STASH = "attune_identity"  # request.state key: (identity id, row, sets, token type)


async def require_auth(request: Request, *, check_identity: bool = True) -> Principal:
    """The RequireAuth extractor: bearer header (exact "Bearer " prefix) or access cookie.

    With `check_identity` (the default) a deleted or frozen identity is rejected with 401;
    /auth/me turns that off to answer 404/403 itself.
    """
    cached = getattr(request.state, "principal", None)
    if cached is not None and check_identity:
        return cached
    token = bearer_token(request)
    if token is None:
        raise AuthError("Missing authentication token")
    if not token:
        raise AuthError("Invalid authentication token")
    try:
        claims = decode_claims(request.app, token)
    except _auth.TokenError as exc:
        raise AuthError("Authentication token expired" if exc.expired
                        else "Invalid authentication token") from None
    if claims.get("token_type") == "refresh":
        raise AuthError("Invalid authentication token")
    try:
        identity_id = int(str(claims.get("sub")))
    except ValueError:
        raise AuthError("Invalid authentication token") from None
    if not -(2 ** 63) <= identity_id < 2 ** 63:
        raise AuthError("Invalid authentication token")
    token_type = claims.get("token_type", "access")
    row = sets = None
    if check_identity:
        # The rate limiter may have read it for this very request already.
        stash = getattr(request.state, IDENTITY_STASH, None)
        if stash is not None and stash[0] == identity_id and stash[3] == token_type:
            row, sets = stash[1], stash[2]
        else:
            row, sets = await run_sync(load_identity, request.app, identity_id, token_type)
        if row is None or row["frozen"]:
            raise AuthError("Invalid authentication token")
    metadata = claims.get("metadata") if isinstance(claims.get("metadata"), dict) else {}
    refs = None
    if token_type == "execution":
        raw = metadata.get("permission_set_refs")
        refs = [r for r in raw if isinstance(r, str)] if isinstance(raw, list) else []
    attrs = None
    if row is not None:
        attrs = row.get("attributes")
        attrs = attrs if isinstance(attrs, dict) else {}
    principal = Principal(identity_id=identity_id, login=str(claims.get("login") or (row or {}).get("login") or ""),
                          token_type=token_type, claims=claims,
                          permission_set_refs=refs, metadata=metadata, attributes=attrs,
                          authz_epoch=row.get("authz_epoch") if row is not None else None,
                          pack_epoch=row.get("pack_epoch") if row is not None else None,
                          action_epoch=row.get("action_epoch") if row is not None else None,
                          permission_sets=sets,
                          cache=getattr(request.app.state, "authz_cache", None))
    if check_identity:
        request.state.principal = principal
    return principal
