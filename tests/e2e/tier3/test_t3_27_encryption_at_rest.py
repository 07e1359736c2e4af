"""T3.27 Datastore encryption at rest (scenarios.md T3.27).

Upstream (`common/src/crypto.rs`): AES-256-GCM, key = SHA-256(`security.encryption_key`), a random
96-bit nonce per value; the stored `key.value` is a JSON string of base64(nonce || ciphertext ||
tag) over the JSON text of the value (`"secret"`, quotes included: 8 bytes), so 12 + 8 + 16 = 36
bytes; `encryption_key_hash` is the hex SHA-256 of the key string. The raw row is read with the
`db_probe` fixture (read-only storage access); the API and actions get the plaintext back.
"""
import json

import pytest

from tests.helpers.security import (decrypt_stored, encryption_key, raw_key_row,
                                    run_secret_probe, sha256_hex, unseal)

pytestmark = [pytest.mark.tier3, pytest.mark.datastore, pytest.mark.secrets,
              pytest.mark.security, pytest.mark.db]

PLAINTEXT = "secret"


def _password_key(make, uid: str, e2e_pack: str, slug: str) -> dict:
    name = f"{slug}_{uid}"
    return make.key(ref=f"{e2e_pack}.{name}", name=name, owner_type="pack",
                    owner_pack_ref=e2e_pack, value=PLAINTEXT, encrypted=True)


def test_encrypted_value_is_ciphertext_at_rest(make, uid, e2e_pack, db_probe):
    """T3.27 Encryption at rest, raw storage: the stored value is a string that is not and does
    not contain "secret"; its base64 decodes to 36 bytes (nonce 12 + JSON text 8 + tag 16); two
    keys with the same plaintext have different ciphertexts (and nonces); encrypted=true and an
    encryption_key_hash of 64 hex digits are stored."""
    first = _password_key(make, uid, e2e_pack, "password")
    second = _password_key(make, uid, e2e_pack, "password_twin")

    row1, row2 = raw_key_row(db_probe, first["ref"]), raw_key_row(db_probe, second["ref"])

    for row in (row1, row2):
        stored = row["value"]
        assert isinstance(stored, str), f"raw value must be a JSON string, got {stored!r}"
        assert PLAINTEXT not in stored, f"the plaintext is visible at rest: {stored!r}"
        sealed = unseal(stored)
        assert (len(sealed.nonce), sealed.size) == (12, 12 + len(json.dumps(PLAINTEXT)) + 16), \
            f"unexpected sealed layout: {sealed.size} bytes"
        assert row["encrypted"] is True, f"row not flagged encrypted: {row}"
        key_hash = row["encryption_key_hash"]
        assert isinstance(key_hash, str) and len(key_hash) == 64 and \
            all(c in "0123456789abcdef" for c in key_hash), f"bad encryption_key_hash {key_hash!r}"
    assert row1["value"] != row2["value"], "same plaintext, same ciphertext: nonce reuse"
    assert unseal(row1["value"]).nonce != unseal(row2["value"]).nonce, "nonce reused"


def test_stored_key_hash_matches_and_key_is_not_stored(make, uid, e2e_pack, db_probe):
    """T3.27 Encryption at rest, with the stack's encryption key known (embedded stack):
    encryption_key_hash == sha256(key).hex(); the key string appears in no column of the row;
    AES-256-GCM decryption of the raw value with SHA-256(key) gives "secret"."""
    enc_key = encryption_key()
    if not enc_key:
        pytest.skip("the target's encryption key is not known (external target without "
                    "ATTUNE__SECURITY__ENCRYPTION_KEY)")
    key = _password_key(make, uid, e2e_pack, "password")

    row = raw_key_row(db_probe, key["ref"])

    assert row["encryption_key_hash"] == sha256_hex(enc_key)
    columns_with_key = [col for col, val in row.items() if enc_key in json.dumps(val, default=str)]
    assert not columns_with_key, f"the encryption key is stored in columns {columns_with_key}"
    assert decrypt_stored(enc_key, row["value"]) == PLAINTEXT


def test_api_and_actions_get_the_plaintext(admin, make, uid, e2e_pack):
    """T3.27 Encryption at rest, transparent decryption: the admin reads "secret" with
    encrypted=true, a core.viewer reads value null (no keys:decrypt), and secret_probe receives
    the plaintext as its ambient parameter (sha256 matches)."""
    key = _password_key(make, uid, e2e_pack, "password")
    viewer, _ = make.user(["core.viewer"])

    got = admin.get_key(key["ref"])
    assert (got["value"], got["encrypted"]) == (PLAINTEXT, True), f"admin read: {got}"
    seen = viewer.get_key(key["ref"])
    assert (seen["value"], seen["encrypted"]) == (None, True), f"viewer read: {seen}"
    probe = run_secret_probe(admin, e2e_pack, key["name"])
    data = probe["result"].get("data") or {}
    assert (data.get("present"), data.get("sha256")) == (True, sha256_hex(PLAINTEXT)), \
        f"secret_probe did not receive the plaintext: {data}"
