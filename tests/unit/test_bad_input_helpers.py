"""Unit tests of tests/helpers/bad_input.py: JWT forging, hostile archives, answer checks."""
import io
import json
import tarfile

import jwt
import pytest
import requests

from tests.helpers.bad_input import (INVALID_TOKEN, Req, api, auth, check_answer, chunked, empty,
                                     hs256_token, plain, tar_gz)


def _resp(status: int, body: bytes, ctype: str | None) -> requests.Response:
    resp = requests.Response()
    resp.status_code = status
    resp._content = body
    if ctype:
        resp.headers["Content-Type"] = ctype
    return resp


def test_hs256_token_verifies_with_its_key_only():
    claims = {"sub": "7", "login": "x", "iat": 1, "exp": 4_000_000_000, "token_type": "access"}
    token = hs256_token("s3cret-" + "k" * 32, claims)
    assert jwt.decode(token, "s3cret-" + "k" * 32, algorithms=["HS256"]) == claims
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(token, "other-" + "k" * 32, algorithms=["HS256"])


def test_tar_gz_keeps_hostile_members_verbatim():
    data = tar_gz([("pack.yaml", b"ref: x\n"), ("../up.txt", b"u"), ("/abs.txt", b"a"),
                   ("actions/l.sh", None, "/etc/passwd")])
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert set(members) == {"pack.yaml", "../up.txt", "/abs.txt", "actions/l.sh"}
    assert members["actions/l.sh"].issym() and members["actions/l.sh"].linkname == "/etc/passwd"
    assert members["../up.txt"].size == 1


def test_chunked_splits_and_keeps_every_byte():
    data = bytes(range(256)) * 5
    parts = list(chunked(data, size=300))
    assert [len(p) for p in parts] == [300, 300, 300, 300, 80] and b"".join(parts) == data


def test_check_answer_shapes():
    text = _resp(415, b"Expected request with `Content-Type: application/json`",
                 "text/plain; charset=utf-8")
    assert check_answer(text, plain(415, "Content-Type"), "t").startswith("Expected")
    body = {"error": "Pack 'x' not found", "code": "NOT_FOUND"}
    js = _resp(404, json.dumps(body).encode(), "application/json")
    assert check_answer(js, api(404, "NOT_FOUND", message="Pack 'x' not found"), "t") == body
    with pytest.raises(AssertionError, match="expected code CONFLICT"):
        check_answer(js, api(404, "CONFLICT"), "t")
    b = _resp(401, json.dumps(INVALID_TOKEN).encode(), "application/json")
    assert check_answer(b, auth(INVALID_TOKEN), "t") == INVALID_TOKEN
    with pytest.raises(AssertionError, match="expected a text/plain body"):
        check_answer(js, plain(404, "x"), "t")
    assert check_answer(_resp(405, b"", None), empty(405), "t") is None
    with pytest.raises(AssertionError, match="HTTP 500"):
        check_answer(_resp(500, b'{"error":"x","code":"INTERNAL_SERVER_ERROR"}', "application/json"),
                     api(500, "INTERNAL_SERVER_ERROR"), "t")


def test_req_defaults():
    req = Req("GET", "/health")
    assert req.token is None and req.headers == {} and req.auth_header is None
