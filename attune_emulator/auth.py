"""JWTs and passwords, shared by the API, worker and notifier.

Tokens are HS256 with `security.jwt_secret` (upstream's insecure default when unset). Claims:
`sub` (identity id as text), `login`, `iat`, `exp`, `token_type` (access, refresh, sensor,
execution, worker; default access), optional `scope` and `metadata`. No iss/aud/jti.
Passwords are argon2id hashes, as upstream.
"""
from __future__ import annotations

import time
from typing import Any

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

TOKEN_TYPES = ("access", "refresh", "sensor", "execution", "worker")
_hasher = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1)


class TokenError(Exception):
    """Invalid token; `expired` tells an expired signature apart from any other fault."""

    def __init__(self, message: str, expired: bool = False):
        super().__init__(message)
        self.expired = expired


def encode_token(secret: str, sub: int | str, login: str, token_type: str = "access",
                 ttl_seconds: int = 3600, scope: str | None = None,
                 metadata: dict | None = None) -> str:
    now = int(time.time())
    claims: dict[str, Any] = {"sub": str(sub), "login": login, "iat": now,
                              "exp": now + int(ttl_seconds), "token_type": token_type}
    if scope:
        claims["scope"] = scope
    if metadata:
        claims["metadata"] = metadata
    return jwt.encode(claims, secret, algorithm="HS256")


def decode_token(secret: str, token: str) -> dict:
    """Verify signature and expiry; `alg: none` and other algorithms are rejected."""
    try:
        claims = jwt.decode(token, secret, algorithms=["HS256"],
                            options={"require": ["sub", "exp"]})
    except jwt.ExpiredSignatureError as exc:
        raise TokenError("Authentication token expired", expired=True) from exc
    except jwt.PyJWTError as exc:
        raise TokenError("Invalid authentication token") from exc
    claims.setdefault("token_type", "access")
    if claims["token_type"] not in TOKEN_TYPES:
        raise TokenError("Invalid authentication token")
    return claims


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    if not password_hash:
        return False
    try:
        return _hasher.verify(password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False
