"""T1.6 Action reads from the datastore (scenarios.md T1.6).

Upstream idiom: keys live at /api/v1/keys. The `kv_get` fixture action reads a key through the API
with its execution token (`permission_set_refs: ["standard"]` is the least-privilege token: it may
read and decrypt keys owned by the action's own pack) and also reports the ambient copy the worker
merges into its parameters (pack-owned keys, under the key's `name`).
Never create `system` keys here: the worker merges them into every action's parameters.
"""
import json

import pytest

from tests.helpers.polling import wait_for_execution
from tests.helpers.scenario import expect_api_error, secret_value

pytestmark = [pytest.mark.tier1, pytest.mark.datastore, pytest.mark.secrets]

API_URL = "https://api.example.com"


def run_kv_get(client, pack: str, ref: str, name: str | None, permission_sets: list[str]) -> dict:
    """Run `<pack>.kv_get` for `ref` and wait for completion; return the execution."""
    params = {"ref": ref} if name is None else {"ref": ref, "name": name}
    execution = client.execute(f"{pack}.kv_get", params, permission_set_refs=permission_sets)
    return wait_for_execution(client, execution["id"], "completed", timeout=20)


def test_action_reads_pack_key(admin, make, uid, e2e_pack):
    """T1.6 Action reads from the datastore: a plain pack-owned key is read by kv_get through the
    API (found, HTTP 200) and arrives as the ambient parameter under its name, both equal to the
    stored value."""
    key = make.key(ref=f"{e2e_pack}.api_url_{uid}", name=f"api_url_{uid}", owner_type="pack",
                   owner_pack_ref=e2e_pack, value=API_URL)

    execution = run_kv_get(admin, e2e_pack, key["ref"], key["name"], ["standard"])

    assert execution["result"].get("data") == \
        {"found": True, "value": API_URL, "ambient": API_URL, "http_status": 200}, \
        f"unexpected kv_get output: {execution['result']}"


def test_action_receives_encrypted_key_decrypted(admin, make, uid, e2e_pack):
    """T1.6 Action reads from the datastore, encrypted value: kv_get gets the plaintext both
    through the API and as the ambient parameter; the admin reads it back decrypted with
    encrypted=true, a core.viewer gets value null (200); the plaintext is not in the execution's
    stored config."""
    plaintext = secret_value("test_password", uid)
    key = make.key(ref=f"{e2e_pack}.db_password_{uid}", name=f"db_password_{uid}",
                   owner_type="pack", owner_pack_ref=e2e_pack, value=plaintext, encrypted=True)

    execution = run_kv_get(admin, e2e_pack, key["ref"], key["name"], ["standard"])

    assert execution["result"].get("data") == \
        {"found": True, "value": plaintext, "ambient": plaintext, "http_status": 200}, \
        f"unexpected kv_get output: {execution['result']}"
    assert plaintext not in json.dumps(execution["config"]), \
        f"the plaintext leaked into execution.config: {execution['config']}"
    stored = admin.get_key(key["ref"])
    assert (stored["value"], stored["encrypted"]) == (plaintext, True), f"admin read: {stored}"
    viewer, _ = make.user(["core.viewer"])
    seen = viewer.get_key(key["ref"])
    assert (seen["value"], seen["encrypted"]) == (None, True), \
        f"a viewer (no keys:decrypt) must get value null, got {seen}"


def test_missing_key_reads_as_null(admin, uid, e2e_pack):
    """T1.6 Action reads from the datastore, missing key: the API answers 404, which kv_get
    reports as found=false, value=null; the execution still completes."""
    missing = f"{e2e_pack}.absent_{uid}"

    execution = run_kv_get(admin, e2e_pack, missing, f"absent_{uid}", ["standard"])

    assert execution["result"].get("data") == \
        {"found": False, "value": None, "ambient": None, "http_status": 404}, \
        f"unexpected kv_get output: {execution['result']}"


def test_identity_keys_are_scoped_to_their_owner(make, uid, e2e_pack):
    """T1.6 Action reads from the datastore, scoping: user A's action (token with core.admin)
    reads A's own identity-owned key but gets 404 for user B's, and A's own API request for B's key
    is a 404 too, while B reads it."""
    user_a, ident_a = make.user(["core.admin"])
    user_b, ident_b = make.user(["core.admin"])
    key_a = make.key(client=user_a, ref=f"e2e_user.a_token_{uid}", name=f"a_token_{uid}",
                     owner_type="identity", owner_identity=ident_a["id"], value=f"a-{uid}")
    key_b = make.key(client=user_b, ref=f"e2e_user.b_token_{uid}", name=f"b_token_{uid}",
                     owner_type="identity", owner_identity=ident_b["id"], value=f"b-{uid}")

    own = run_kv_get(user_a, e2e_pack, key_a["ref"], None, ["core.admin"])
    other = run_kv_get(user_a, e2e_pack, key_b["ref"], None, ["core.admin"])

    assert own["result"].get("data") == \
        {"found": True, "value": f"a-{uid}", "ambient": None, "http_status": 200}, \
        f"A's action reading A's key: {own['result']}"
    assert other["result"].get("data") == \
        {"found": False, "value": None, "ambient": None, "http_status": 404}, \
        f"A's action reading B's key must get 404: {other['result']}"
    expect_api_error(lambda: user_a.get_key(key_b["ref"]), 404, "user A reading user B's key")
    assert user_b.get_key(key_b["ref"])["value"] == f"b-{uid}", "B must still read B's own key"
