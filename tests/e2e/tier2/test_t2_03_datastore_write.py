"""T2.3 Action writes to the datastore (scenarios.md T2.3).

Upstream idiom: a workflow `write` -> `read`. `write` is `<pack>.kv_put` with task
`permission_set_refs: ["core.admin"]` (creating keys needs `keys:create`), which POSTs to
/api/v1/keys; `read` is `<pack>.kv_get` with `["standard"]` (its pack's keys, decrypted), which reads
the key through the API and reports the ambient copy the worker merges in under the key's name.
Key TTL is extension E7 `key_expiry` (`expires_at`): at or after it the key is absent everywhere.
Keys written by the actions are deleted in teardown; never `system` keys.
"""
import base64
import json
from datetime import timedelta

import pytest

from tests.helpers.polling import wait_for_execution, wait_until
from tests.helpers.scenario import (all_items, expect_api_error, iso_ms, parse_ts, secret_value,
                                    utcnow)

pytestmark = [pytest.mark.tier2, pytest.mark.datastore, pytest.mark.secrets, pytest.mark.workflow]

PROD_URL = "https://api.production.com"
# The plan says 3 s; 8 s gives headroom: the workflow (two python actions) must finish before expiry on
# a loaded machine; a late read fails with its own message rather than a wrong verdict.
TTL_SECONDS = 8


def write_read_workflow(make, pack: str, uid: str, write_input: dict, read_input: dict,
                        client=None, read_sets: tuple = ("standard",)) -> dict:
    """Workflow `write` (kv_put, token core.admin) -> on success `read` (kv_get, token
    `read_sets`: standard reads the pack's own keys)."""
    return make.workflow(
        client=client, ref=f"{pack}.write_read_{uid}", pack_ref=pack, label=f"write/read {uid}",
        definition={"version": "1.0.0", "tasks": [
            {"name": "write", "action": f"{pack}.kv_put", "input": write_input,
             "permission_set_refs": ["core.admin"],
             "next": [{"when": "{{ succeeded() }}", "do": ["read"]}]},
            {"name": "read", "action": f"{pack}.kv_get", "input": read_input,
             "permission_set_refs": list(read_sets)}]})


def run_workflow(client, ref: str, timeout: float = 30) -> tuple[dict, dict]:
    """Execute workflow `ref`; wait for `completed`; return (parent, {task name: child})."""
    parent = wait_for_execution(client, client.execute(ref, {})["id"], "completed", timeout=timeout)
    children = [client.get_execution(c["id"]) for c in all_items(client.list_executions,
                                                                 parent=parent["id"])]
    return parent, {c["workflow_task"]["task_name"]: c for c in children}


def defer_key_delete(make, client, ref: str) -> None:
    make.defer(f"delete key {ref}", lambda: client.delete_key(ref))


def run_kv_get(client, pack: str, ref: str, name: str | None, permission_sets: list[str]) -> dict:
    params = {"ref": ref} if name is None else {"ref": ref, "name": name}
    execution = client.execute(f"{pack}.kv_get", params, permission_set_refs=permission_sets)
    return wait_for_execution(client, execution["id"], "completed", timeout=20)


def test_value_written_by_one_task_is_read_by_the_next(admin, make, uid, e2e_pack, db_probe):
    """T2.3 Action writes to the datastore: `write` creates an encrypted pack-owned key (HTTP 201)
    and `read` gets exactly that value, through the API and as the ambient parameter; the admin
    reads it back (pack-owned, encrypted, same value); the stored row holds base64 ciphertext, not
    the plaintext; the plaintext is in no execution config."""
    name = f"api_url_{uid}"
    ref = f"{e2e_pack}.{name}"
    defer_key_delete(make, admin, ref)
    workflow = write_read_workflow(
        make, e2e_pack, uid,
        {"ref": ref, "name": name, "owner_type": "pack", "owner_pack_ref": e2e_pack,
         "value": PROD_URL, "encrypted": True},
        {"ref": ref, "name": name})

    parent, tasks = run_workflow(admin, workflow["ref"])

    assert sorted(tasks) == ["read", "write"], f"expected children write and read, got {sorted(tasks)}"
    assert tasks["write"]["result"].get("data") == {"ref": ref, "http_status": 201, "created": True}, \
        f"kv_put did not create the key: {tasks['write']['result']}"
    assert tasks["read"]["result"].get("data") == \
        {"found": True, "value": PROD_URL, "ambient": PROD_URL, "http_status": 200}, \
        f"kv_get did not read the written value: {tasks['read']['result']}"
    stored = admin.get_key(ref)
    assert (stored["owner_type"], stored["owner_pack_ref"], stored["name"], stored["encrypted"],
            stored["value"]) == ("pack", e2e_pack, name, True, PROD_URL), f"admin read: {stored}"
    with db_probe.cursor() as cur:
        cur.execute("SELECT value, encrypted, encryption_key_hash FROM key WHERE ref = %s", (ref,))
        row = cur.fetchone()
    assert row is not None, f"no row for {ref} in table key"
    raw, encrypted, key_hash = row
    assert encrypted is True and key_hash, f"row not marked encrypted: {row}"
    assert isinstance(raw, str) and PROD_URL not in raw, f"stored value is not ciphertext: {raw!r}"
    assert len(base64.b64decode(raw, validate=True)) > 12 + 16, f"stored value is not base64: {raw!r}"
    for execution in (parent, *tasks.values()):
        assert json.dumps(execution["config"]).count(PROD_URL) == \
            (1 if execution is tasks["write"] else 0), \
            f"the value appears where it was not given: execution {execution['id']} {execution['config']}"


def test_identity_owned_key_is_visible_only_to_its_owner(make, uid, e2e_pack):
    """T2.3 Action writes to the datastore, scoping: user A's workflow writes a key owned by A's
    identity and reads it back with an execution token of A (found, exact value); user B's
    execution (token of B, same permission set) gets 404 for it, as does B's own API request."""
    user_a, ident_a = make.user(["core.admin"])
    user_b, _ = make.user(["core.admin"])
    ref = f"e2e_user.token_{uid}"
    value = secret_value("test_api_key", uid)
    defer_key_delete(make, user_a, ref)
    workflow = write_read_workflow(
        make, e2e_pack, uid,
        {"ref": ref, "name": f"token_{uid}", "owner_type": "identity",
         "owner_identity": ident_a["id"], "value": value},
        {"ref": ref}, client=user_a, read_sets=("core.admin",))

    _, tasks = run_workflow(user_a, workflow["ref"])
    other = run_kv_get(user_b, e2e_pack, ref, None, ["core.admin"])

    assert tasks["read"]["result"].get("data") == \
        {"found": True, "value": value, "ambient": None, "http_status": 200}, \
        f"A's read of A's key: {tasks['read']['result']}"
    assert other["result"].get("data") == \
        {"found": False, "value": None, "ambient": None, "http_status": 404}, \
        f"B's execution must get 404 for A's key: {other['result']}"
    expect_api_error(lambda: user_b.get_key(ref), 404, "user B reading user A's key")
    assert user_a.get_key(ref)["value"] == value, "A must still read A's own key"


@pytest.mark.needs_extension("key_expiry")
def test_written_key_expires(admin, make, uid, e2e_pack):
    """T2.3 Action writes to the datastore, TTL (extension key_expiry): `write` sets expires_at =
    now + 8 s and the immediate `read` finds it (API and ambient); after expires_at + 0.5 s (P4)
    GET is 404, the key is absent from the list, a new kv_get gets found=false with no ambient
    parameter; the ref can then be created again."""
    name = f"ttl_{uid}"
    ref = f"{e2e_pack}.{name}"
    defer_key_delete(make, admin, ref)
    expires_at = iso_ms(utcnow() + timedelta(seconds=TTL_SECONDS))
    workflow = write_read_workflow(
        make, e2e_pack, uid,
        {"ref": ref, "name": name, "value": PROD_URL, "expires_at": expires_at},
        {"ref": ref, "name": name})

    _, tasks = run_workflow(admin, workflow["ref"])

    assert tasks["write"]["result"].get("data", {}).get("http_status") == 201, \
        f"kv_put with expires_at: {tasks['write']['result']}"
    assert tasks["read"]["result"].get("data") == \
        {"found": True, "value": PROD_URL, "ambient": PROD_URL, "http_status": 200}, \
        f"read before expiry (read started {tasks['read']['started_at']}, key expires " \
        f"{expires_at}; if it started after that, the machine is too slow for TTL_SECONDS): " \
        f"{tasks['read']['result']}"

    deadline = parse_ts(expires_at) + timedelta(seconds=0.5)  # P4: the key's own expiry + ε
    wait_until(lambda: utcnow() >= deadline, timeout=10, description=f"expires_at + 0.5 s of {ref}")

    expect_api_error(lambda: admin.get_key(ref), 404, "GET of an expired key")
    listed = all_items(admin.list_keys, owner_type="pack")
    assert ref not in [k["ref"] for k in listed], f"expired key {ref} still listed"
    after = run_kv_get(admin, e2e_pack, ref, name, ["standard"])
    assert after["result"].get("data") == \
        {"found": False, "value": None, "ambient": None, "http_status": 404}, \
        f"kv_get after expiry: {after['result']}"
    again = admin.create_key(ref=ref, name=name, owner_type="pack", owner_pack_ref=e2e_pack,
                             value="again")
    assert (again["value"], "expires_at" in again) == ("again", False), \
        f"re-created key (no expiry, so no expires_at field): {again}"


@pytest.mark.needs_extension("key_expiry")
def test_key_expiry_api_contract(admin, make, uid, e2e_pack):
    """T2.3 Action writes to the datastore, E7 contract: a past expires_at is 422
    VALIDATION_ERROR; a key without one has no `expires_at` field; the tagged update patch sets it
    (`op: set`, echoed in get and list) and clears it (`op: clear`)."""
    past = iso_ms(utcnow() - timedelta(seconds=5))
    err = expect_api_error(lambda: admin.create_key(
        ref=f"{e2e_pack}.past_{uid}", name=f"past_{uid}", owner_type="pack",
        owner_pack_ref=e2e_pack, value=1, expires_at=past), 422, "create with a past expires_at")
    assert err.code == "VALIDATION_ERROR", f"unexpected error: {err}"
    key = make.key(ref=f"{e2e_pack}.later_{uid}", name=f"later_{uid}", value=1)
    assert "expires_at" not in key, f"a key without expiry must omit expires_at: {key}"

    later = iso_ms(utcnow() + timedelta(hours=1))
    updated = admin.update_key(key["ref"], expires_at={"op": "set", "value": later})
    assert parse_ts(updated["expires_at"]) == parse_ts(later), f"update set: {updated}"
    summary = [k for k in all_items(admin.list_keys, owner_type="pack") if k["ref"] == key["ref"]]
    assert len(summary) == 1 and parse_ts(summary[0]["expires_at"]) == parse_ts(later), \
        f"list summary of {key['ref']}: {summary}"
    expect_api_error(lambda: admin.update_key(key["ref"], expires_at={"op": "set", "value": past}),
                     422, "update to a past expires_at")
    cleared = admin.update_key(key["ref"], expires_at={"op": "clear"})
    assert "expires_at" not in cleared and "expires_at" not in admin.get_key(key["ref"]), \
        f"update clear: {cleared}"
