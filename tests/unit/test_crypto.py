"""Unit tests of key-store encryption (attune_emulator.crypto)."""
import base64
import json

import pytest

from attune_emulator import crypto

KEY = "k" * 40


@pytest.mark.parametrize("value", ["hunter2", 42, {"a": [1, 2]}, [True, None], ""])
def test_round_trip_any_json_value(value):
    stored = crypto.encrypt_value(KEY, value)
    assert isinstance(stored, str)
    assert json.dumps(value) not in stored
    assert crypto.decrypt_value(KEY, stored, crypto.key_hash(KEY)) == value


def test_nonce_is_random():
    assert crypto.encrypt_value(KEY, "x") != crypto.encrypt_value(KEY, "x")
    assert len(base64.b64decode(crypto.encrypt_value(KEY, "x"))) == 12 + len('"x"') + 16


def test_wrong_key_fails():
    stored = crypto.encrypt_value(KEY, "secret")
    with pytest.raises(crypto.DecryptionError):
        crypto.decrypt_value("z" * 40, stored)


def test_hash_mismatch_fails_before_decrypting():
    stored = crypto.encrypt_value(KEY, "secret")
    with pytest.raises(crypto.DecryptionError):
        crypto.decrypt_value(KEY, stored, crypto.key_hash("other" * 8))


@pytest.mark.parametrize("stored", [123, "not base64!!", base64.b64encode(b"short").decode()])
def test_garbage_fails(stored):
    with pytest.raises(crypto.DecryptionError):
        crypto.decrypt_value(KEY, stored)


def test_tampered_ciphertext_fails():
    raw = bytearray(base64.b64decode(crypto.encrypt_value(KEY, "secret")))
    raw[-1] ^= 1
    with pytest.raises(crypto.DecryptionError):
        crypto.decrypt_value(KEY, base64.b64encode(bytes(raw)).decode())


def test_key_hash_is_sha256_hex():
    assert len(crypto.key_hash(KEY)) == 64
    assert crypto.key_hash(KEY) != crypto.key_hash(KEY + "x")
