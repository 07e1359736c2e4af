"""Key-store encryption at rest, as upstream: AES-256-GCM with the SHA-256 of
`security.encryption_key` as the key, a random 96-bit nonce per value, and the stored value a JSON
string of base64(nonce || ciphertext || tag). `encryption_key_hash` is the hex SHA-256 of the key
string; a mismatch fails decryption.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM


class DecryptionError(Exception):
    pass


def key_hash(encryption_key: str) -> str:
    return hashlib.sha256(encryption_key.encode()).hexdigest()


def _aes(encryption_key: str) -> AESGCM:
    return AESGCM(hashlib.sha256(encryption_key.encode()).digest())


def encrypt_value(encryption_key: str, value: Any) -> str:
    """Encrypt any JSON value; returns the base64 text stored (as a JSON string) in `key.value`."""
    nonce = os.urandom(12)
    plaintext = json.dumps(value, separators=(",", ":")).encode()
    return base64.b64encode(nonce + _aes(encryption_key).encrypt(nonce, plaintext, None)).decode()


def decrypt_value(encryption_key: str, stored: Any, stored_hash: str | None = None) -> Any:
    if stored_hash and stored_hash != key_hash(encryption_key):
        raise DecryptionError("value was encrypted with a different encryption key")
    if not isinstance(stored, str):
        raise DecryptionError("encrypted value is not a string")
    try:
        raw = base64.b64decode(stored, validate=True)
        plaintext = _aes(encryption_key).decrypt(raw[:12], raw[12:], None)
    except Exception as exc:  # binascii.Error, InvalidTag, ValueError
        raise DecryptionError(f"cannot decrypt value: {type(exc).__name__}") from exc
    return json.loads(plaintext)
