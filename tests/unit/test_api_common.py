"""Unit tests of attune_emulator.api.common: body parsing/validation, envelopes, query params,
DB error mapping and the auth extractor (no services; requests are built from ASGI scopes)."""
import asyncio
import json
import types

import psycopg2.errors
import pytest
from starlette.requests import Request

from attune_emulator import auth
from attune_emulator.api import common as c
from attune_emulator.api.common import ApiError, AuthError, Field, PlainError

SECRET = "unit-test-secret-0123456789abcdef-0123"


def make_request(body: bytes = b"", headers: dict | None = None, query: str = "",
                 path_params: dict | None = None, db=None) -> Request:
    raw_headers = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    cfg = types.SimpleNamespace(jwt_secret=SECRET)
    app = types.SimpleNamespace(state=types.SimpleNamespace(cfg=cfg, db=db, publisher=None))
    scope = {"type": "http", "method": "POST", "path": "/x", "headers": raw_headers,
             "query_string": query.encode(), "path_params": path_params or {}, "app": app}
    sent = {"done": False}

    async def receive():
        if sent["done"]:
            return {"type": "http.disconnect"}
        sent["done"] = True
        return {"type": "http.request", "body": body, "more_body": False}

    return Request(scope, receive)


def run(coro):
    return asyncio.run(coro)


JSON_CT = {"Content-Type": "application/json"}
SPEC = {"login": Field(str, required=True, min_len=3, max_len=10),
        "count": Field(int, min_value=1, max_value=5),
        "tags": Field(list, items=str),
        "kind": Field(str, enum=("a", "b")),
        "meta": Field(dict, nullable=False, default=dict)}


# ------------------------------------------------------------------------------ read_json

def test_read_json_valid_body_fills_defaults_and_drops_unknown():
    req = make_request(b'{"login": "alice", "extra": 1}', JSON_CT)
    out = run(c.read_json(req, SPEC))
    assert out == {"login": "alice", "count": None, "tags": None, "kind": None, "meta": {}}


def test_missing_content_type_is_415_plain():
    with pytest.raises(PlainError) as exc:
        run(c.read_json(make_request(b'{"login": "alice"}'), SPEC))
    assert exc.value.status == 415


def test_json_suffix_content_type_is_accepted():
    req = make_request(b'{"login": "alice"}', {"Content-Type": "application/vnd.x+json; charset=utf-8"})
    assert run(c.read_json(req, SPEC))["login"] == "alice"


@pytest.mark.parametrize("body", [b"{bad", b"", b"[1,", b'{"a": NaN}', b'{"a":1} x'])
def test_malformed_json_is_400_plain(body):
    with pytest.raises(PlainError) as exc:
        run(c.read_json(make_request(body, JSON_CT), SPEC))
    assert exc.value.status == 400
    assert exc.value.text.startswith("Failed to parse the request body as JSON: ")


def test_missing_required_field_is_422_plain_serde_style():
    with pytest.raises(PlainError) as exc:
        run(c.read_json(make_request(b'{"count": 2}', JSON_CT), SPEC))
    assert exc.value.status == 422
    assert exc.value.text.startswith(
        "Failed to deserialize the JSON body into the target type: missing field `login`")
    assert "at line 1 column" in exc.value.text


@pytest.mark.parametrize("body,path", [
    ({"login": 5}, "login"),
    ({"login": "alice", "count": "2"}, "count"),
    ({"login": "alice", "count": True}, "count"),
    ({"login": "alice", "tags": [1]}, "tags[0]"),
    ({"login": "alice", "kind": "c"}, "kind"),
    ({"login": "alice", "meta": None}, "meta"),
    ({"login": None}, "login"),
])
def test_wrong_types_are_422_plain_with_path(body, path):
    with pytest.raises(PlainError) as exc:
        run(c.read_json(make_request(json.dumps(body).encode(), JSON_CT), SPEC))
    assert exc.value.status == 422
    assert f"target type: {path}: " in exc.value.text


def test_non_object_body_is_422_plain():
    with pytest.raises(PlainError) as exc:
        run(c.read_json(make_request(b"[1, 2]", JSON_CT), SPEC))
    assert exc.value.status == 422


def test_length_and_range_rules_are_422_validation_error():
    with pytest.raises(ApiError) as exc:
        run(c.read_json(make_request(b'{"login": "al"}', JSON_CT), SPEC))
    assert (exc.value.status, exc.value.code) == (422, "VALIDATION_ERROR")
    assert exc.value.message.startswith("Validation failed: login")
    with pytest.raises(ApiError) as exc:
        run(c.read_json(make_request(b'{"login": "alice", "count": 9}', JSON_CT), SPEC,
                        invalid_prefix="Invalid thing"))
    assert exc.value.message.startswith("Invalid thing: count")


def test_rules_can_be_deferred():
    out = run(c.read_json(make_request(b'{"login": "al"}', JSON_CT), SPEC, invalid_prefix=None))
    assert out["login"] == "al"
    with pytest.raises(ApiError):
        c.check_rules(out, SPEC)


def test_optional_body_without_content_type_is_none():
    assert run(c.read_json(make_request(b""), SPEC, required_body=False)) is None


def test_type_errors_win_over_missing_fields_in_document_order():
    with pytest.raises(PlainError) as exc:
        c.validate_body({"count": "x"}, SPEC)
    assert "count: invalid type" in exc.value.text


# ------------------------------------------------------------------------------ envelopes

def body_of(resp):
    return json.loads(resp.body)


def test_ok_and_success_envelopes():
    assert body_of(c.ok({"a": 1})) == {"data": {"a": 1}}
    r = c.ok({"a": 1}, status=201, message="Created")
    assert r.status_code == 201 and body_of(r) == {"data": {"a": 1}, "message": "Created"}
    assert body_of(c.success("gone")) == {"success": True, "message": "gone"}
    assert body_of(c.success("gone", wrapped=True)) == {"data": {"success": True, "message": "gone"}}


def test_paginated_with_totals():
    p = body_of(c.paginated([1, 2], page=2, page_size=2, total=5))["pagination"]
    assert p == {"page": 2, "page_size": 2, "total_items": 5, "total_pages": 3,
                 "has_previous": True, "has_next": True}


def test_paginated_without_totals_omits_them():
    p = body_of(c.paginated([1], page=1, page_size=20, has_next=False))["pagination"]
    assert p == {"page": 1, "page_size": 20, "has_previous": False, "has_next": False}


def test_error_shapes():
    assert body_of(c.not_found("nope").response()) == {"error": "nope", "code": "NOT_FOUND"}
    assert c.validation_error("x").code == "VALIDATION_ERROR"
    assert c.unprocessable("x").code == "UNPROCESSABLE_ENTITY"
    assert c.too_many("x").code == "TOO_MANY_REQUESTS"
    r = AuthError("Missing authentication token").response()
    assert r.status_code == 401
    assert body_of(r) == {"error": {"code": 401, "message": "Missing authentication token"}}
    plain = PlainError(415, "nope").response()
    assert plain.status_code == 415 and plain.body == b"nope"
    assert plain.headers["content-type"].startswith("text/plain")


def test_drop_none():
    d = {"a": None, "b": [], "c": {}, "d": 0}
    assert c.drop_none(dict(d)) == {"b": [], "c": {}, "d": 0}
    assert c.drop_none(dict(d), "a", "b", "c") == {"d": 0}


# ------------------------------------------------------------------------------ query params

def test_page_params_defaults_cap_and_echo():
    assert tuple(c.page_params(make_request())) == (1, 50, 0, 50)
    p = c.page_params(make_request(query="page=3&page_size=500"))
    assert (p.page, p.size, p.limit, p.offset) == (3, 500, 100, 200)
    p = c.page_params(make_request(query="per_page=7&page=2"), size_param="per_page", default=20,
                      cap=None)
    assert (p.size, p.limit, p.offset) == (7, 7, 7)


@pytest.mark.parametrize("query", ["page=x", "page=-1", "page_size=1.5", "page="])
def test_page_params_garbage_is_400_plain(query):
    with pytest.raises(PlainError) as exc:
        c.page_params(make_request(query=query))
    assert exc.value.status == 400


def test_query_bool_and_int():
    assert c.query_bool(make_request(query="x=true"), "x") is True
    assert c.query_bool(make_request(query=""), "x", default=False) is False
    with pytest.raises(PlainError):
        c.query_bool(make_request(query="x=yes"), "x")
    assert c.query_int(make_request(query="n=-4"), "n") == -4
    with pytest.raises(PlainError):
        c.query_int(make_request(query="n=4a"), "n")


def test_path_int():
    assert c.path_int(make_request(path_params={"id": "12"}), "id") == 12
    with pytest.raises(PlainError) as exc:
        c.path_int(make_request(path_params={"id": "abc"}), "id")
    assert exc.value.status == 400


# ------------------------------------------------------------------------------ DB errors

class FakeDiag:
    def __init__(self, constraint=None, message=None):
        self.constraint_name = constraint
        self.message_primary = message
        self.column_name = None


class FakePgError(Exception):
    def __init__(self, pgcode, constraint=None, message=None):
        super().__init__(message or "db error")
        self.pgcode = pgcode
        self.diag = FakeDiag(constraint, message)


def test_map_db_error():
    e = c.map_db_error(FakePgError("23505", "idx_key_unique"))
    assert (e.status, e.message) == (409, "Already exists (idx_key_unique)")
    e = c.map_db_error(FakePgError("23514", "pack_ref_format"))
    assert (e.status, e.code, e.message) == (422, "UNPROCESSABLE_ENTITY",
                                             "Validation constraint failed: pack_ref_format")
    assert c.map_db_error(FakePgError("23503", "fk")).status == 422
    e = c.map_db_error(FakePgError("P0001", message="owner_type pack requires its owner id"))
    assert (e.status, e.message) == (400, "owner_type pack requires its owner id")
    assert c.map_db_error(FakePgError("42P01")) is None


# ------------------------------------------------------------------------------ require_auth

class FakeDb:
    def __init__(self, rows):
        self.rows = rows

    def one(self, sql, params=None):
        return self.rows.get(params[0])


def auth_request(token=None, cookie=None, scheme="Bearer ", rows=None):
    headers = {}
    if token is not None:
        headers["Authorization"] = scheme + token
    if cookie is not None:
        headers["Cookie"] = f"attune_access_token={cookie}"
    db = FakeDb(rows if rows is not None else {1: {"id": 1, "login": "alice", "frozen": False}})
    return make_request(headers=headers, db=db)


def auth_message(req):
    with pytest.raises(AuthError) as exc:
        run(c.require_auth(req))
    return exc.value.message


def test_require_auth_accepts_header_and_cookie():
    tok = auth.encode_token(SECRET, 1, "alice")
    p = run(c.require_auth(auth_request(tok)))
    assert (p.identity_id, p.login, p.token_type, p.permission_set_refs) == (1, "alice", "access", None)
    assert run(c.require_auth(auth_request(cookie=tok))).identity_id == 1


def test_require_auth_rejections():
    assert auth_message(auth_request()) == "Missing authentication token"
    assert auth_message(auth_request("garbage")) == "Invalid authentication token"
    tok = auth.encode_token(SECRET, 1, "alice")
    assert auth_message(auth_request(tok, scheme="bearer ")) == "Invalid authentication token"
    refresh = auth.encode_token(SECRET, 1, "alice", token_type="refresh")
    assert auth_message(auth_request(refresh)) == "Invalid authentication token"
    expired = auth.encode_token(SECRET, 1, "alice", ttl_seconds=-10)
    assert auth_message(auth_request(expired)) == "Authentication token expired"
    other = auth.encode_token("another-secret-0123456789abcdef-0123456", 1, "alice")
    assert auth_message(auth_request(other)) == "Invalid authentication token"


def test_require_auth_rejects_frozen_or_deleted_identity():
    tok = auth.encode_token(SECRET, 1, "alice")
    assert auth_message(auth_request(tok, rows={})) == "Invalid authentication token"
    frozen = {1: {"id": 1, "login": "alice", "frozen": True}}
    assert auth_message(auth_request(tok, rows=frozen)) == "Invalid authentication token"


def test_execution_token_carries_permission_set_refs():
    tok = auth.encode_token(SECRET, 1, "execution:9", token_type="execution",
                            metadata={"execution_id": 9, "permission_set_refs": ["standard"]})
    p = run(c.require_auth(auth_request(tok)))
    assert p.is_execution and p.permission_set_refs == ["standard"]
    assert p.metadata["execution_id"] == 9


def test_sensor_token_skips_rbac():
    tok = auth.encode_token(SECRET, 1, "sensor:x", token_type="sensor", scope="sensor")
    assert run(c.require_auth(auth_request(tok))).skips_rbac
