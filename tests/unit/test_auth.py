"""Unit tests of JWTs and passwords (attune_emulator.auth)."""
import base64
import json

import jwt
import pytest

from attune_emulator import auth

SECRET = "unit-test-secret-0123456789abcdef-0123"


def test_round_trip_claims():
    tok = auth.encode_token(SECRET, 7, "alice", ttl_seconds=60)
    claims = auth.decode_token(SECRET, tok)
    assert claims["sub"] == "7" and claims["login"] == "alice"
    assert claims["token_type"] == "access"
    assert claims["exp"] - claims["iat"] == 60
    assert "scope" not in claims and "metadata" not in claims
    assert jwt.get_unverified_header(tok)["alg"] == "HS256"


def test_scope_and_metadata_round_trip():
    tok = auth.encode_token(SECRET, 1, "execution:3", token_type="execution", scope="execution",
                            metadata={"execution_id": 3})
    claims = auth.decode_token(SECRET, tok)
    assert claims["token_type"] == "execution" and claims["scope"] == "execution"
    assert claims["metadata"] == {"execution_id": 3}


def test_expired_token():
    tok = auth.encode_token(SECRET, 1, "alice", ttl_seconds=-5)
    with pytest.raises(auth.TokenError) as exc:
        auth.decode_token(SECRET, tok)
    assert exc.value.expired
    assert str(exc.value) == "Authentication token expired"


def test_wrong_secret():
    tok = auth.encode_token("other-secret-0123456789abcdef-01234567", 1, "alice")
    with pytest.raises(auth.TokenError) as exc:
        auth.decode_token(SECRET, tok)
    assert not exc.value.expired


def _b64(obj) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


def test_alg_none_rejected():
    claims = {"sub": "1", "login": "alice", "iat": 0, "exp": 4102444800, "token_type": "access"}
    tok = f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(claims)}."
    with pytest.raises(auth.TokenError):
        auth.decode_token(SECRET, tok)


def test_missing_token_type_defaults_to_access_and_unknown_rejected():
    tok = jwt.encode({"sub": "1", "exp": 4102444800}, SECRET, algorithm="HS256")
    assert auth.decode_token(SECRET, tok)["token_type"] == "access"
    bad = jwt.encode({"sub": "1", "exp": 4102444800, "token_type": "root"}, SECRET, algorithm="HS256")
    with pytest.raises(auth.TokenError):
        auth.decode_token(SECRET, bad)


def test_refresh_type_is_kept():
    tok = auth.encode_token(SECRET, 1, "alice", token_type="refresh")
    assert auth.decode_token(SECRET, tok)["token_type"] == "refresh"


def test_missing_exp_rejected():
    tok = jwt.encode({"sub": "1"}, SECRET, algorithm="HS256")
    with pytest.raises(auth.TokenError):
        auth.decode_token(SECRET, tok)


def test_passwords():
    h = auth.hash_password("TestPass123!")
    assert h.startswith("$argon2id$")
    assert auth.verify_password(h, "TestPass123!")
    assert not auth.verify_password(h, "wrong")
    assert not auth.verify_password(None, "x")
    assert not auth.verify_password("not-a-hash", "x")
