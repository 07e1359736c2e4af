"""T1.7 Multi-tenant isolation (scenarios.md T1.7).

Upstream has no tenants: isolation is ownership plus RBAC. A pack created with POST /api/v1/packs
records `installed_by`, and is hidden from every other identity without a scoped pack grant (even
core.admin); identity-owned keys are hidden from other identities. Hiding pack contents and
everything derived from them (actions, rules, executions, events, enforcements) is extension E3
`owner_scoping`. Cross-user access answers 404, not 403. A's pack is deleted by A: nobody else
can see it.
"""
import json

import pytest

from tests.helpers.client import ApiError
from tests.helpers.polling import wait_for_execution
from tests.helpers.scenario import (all_items, chain_for_event, expect_api_error, forge_claims,
                                    jwt_claims, total, unsigned_token)

pytestmark = [pytest.mark.tier1, pytest.mark.multi_tenant, pytest.mark.security, pytest.mark.rbac]

INVALID_TOKEN = {"error": {"code": 401, "message": "Invalid authentication token"}}


def _refs(items: list[dict]) -> set:
    return {i.get("ref") for i in items}


def _page_refs(list_fn, **params) -> set:
    """Refs of every item of a page/page_size list (packs)."""
    refs, page = set(), 1
    while True:
        body = list_fn(page=page, page_size=100, **params)
        refs |= _refs(body["items"])
        if not body["pagination"].get("has_next"):
            return refs
        page += 1


def test_users_cannot_see_each_others_packs_and_keys(make, uid):
    """T1.7 Multi-tenant isolation (upstream behaviour): user B (core.admin) does not see user A's
    pack in the list and gets 404 NOT_FOUND on it; A's identity-owned encrypted key is a 404 for B
    and absent from B's key list; A sees both."""
    user_a, ident_a = make.user(["core.admin"])
    user_b, _ = make.user(["core.admin"])
    pack = make.pack(client=user_a, ref=f"e2e_tenant_a_{uid}", label=f"tenant A {uid}")
    key = make.key(client=user_a, ref=f"e2e_user.a_secret_{uid}", name=f"a_secret_{uid}",
                   owner_type="identity", owner_identity=ident_a["id"], value=f"a-secret-{uid}",
                   encrypted=True)

    assert pack["ref"] not in _page_refs(user_b.list_packs), "B's pack list shows A's pack"
    err = expect_api_error(lambda: user_b.get_pack(pack["ref"]), 404, "B reading A's pack")
    assert err.code == "NOT_FOUND", f"expected code NOT_FOUND, got {err.body}"
    expect_api_error(lambda: user_b.get_key(key["ref"]), 404, "B reading A's identity key")
    b_keys = _refs(all_items(user_b.list_keys, owner_type="identity"))
    assert key["ref"] not in b_keys, "B's key list shows A's identity key"

    assert user_a.get_pack(pack["ref"])["ref"] == pack["ref"], "A must see A's pack"
    assert pack["ref"] in _page_refs(user_a.list_packs), "A's pack list must show A's pack"
    assert user_a.get_key(key["ref"])["value"] == f"a-secret-{uid}", "A must read A's key"


def test_forged_tokens_and_injection_attempts_are_rejected(admin, make, uid):
    """T1.7 Multi-tenant isolation, security cases: B's token with `sub` changed to A's id (original
    signature), an `alg: none` token and a refresh token used as bearer each get 401 "Invalid
    authentication token"; SQL-injection-shaped refs and filters find nothing and change nothing."""
    user_a, ident_a = make.user(["core.admin"])
    user_b, ident_b = make.user(["core.admin"])
    pack = make.pack(client=user_a, ref=f"e2e_tenant_a_{uid}", label=f"tenant A {uid}")
    assert jwt_claims(user_b.token)["sub"] == str(ident_b["id"]), "unexpected claims in B's token"

    forged = {
        "sub edited to A's id": forge_claims(user_b.token, sub=str(ident_a["id"])),
        "alg none": unsigned_token(user_b.token, sub=str(ident_a["id"])),
        "refresh token as bearer": user_b.refresh_token,
    }
    for what, token in forged.items():
        assert token, f"no token for case {what!r}"
        err = expect_api_error(lambda: admin.with_token(token).get_pack(pack["ref"]), 401,
                               f"request with a {what} token")
        assert err.body == INVALID_TOKEN, f"{what}: expected body {INVALID_TOKEN}, got {err.body}"

    expect_api_error(lambda: user_b.get_pack("x' OR '1'='1"), 404, "pack ref with SQL injection")
    injected = total(user_b.list_executions, action_ref="' OR 1=1--")
    assert injected == 0, f"an injected action_ref filter matched {injected} executions"
    assert user_a.get_pack(pack["ref"])["ref"] == pack["ref"], "A's pack changed after the attempts"
    assert admin.get_pack("core")["ref"] == "core", "the core pack changed after the attempts"


@pytest.mark.needs_extension("owner_scoping")
def test_pack_contents_and_history_are_hidden_from_other_users(make, uid):
    """T1.7 Multi-tenant isolation, owner scoping (extension E3): B gets 404 on A's action, rule,
    rule disable and execute ("Action '<ref>' not found"), on A's executions (also those found by
    guessing ids near A's), enforcement and event, and B's lists filtered by A's refs are empty;
    A still sees everything and A's rule is still enabled."""
    user_a, ident_a = make.user(["core.admin"])
    user_b, _ = make.user(["core.admin"])
    pack = make.pack(client=user_a, ref=f"e2e_tenant_a_{uid}", label=f"tenant A {uid}")["ref"]
    action = make.action(client=user_a, ref=f"{pack}.hello_{uid}", pack_ref=pack,
                         label="hello", runtime_ref="core.shell", entrypoint=f"printf 'hello-{uid}'")
    trigger, key = make.webhook_trigger(client=user_a, ref=f"{pack}.hook_{uid}", pack_ref=pack,
                                        label="hook")
    rule = make.rule(client=user_a, ref=f"{pack}.on_hook_{uid}", pack_ref=pack, label="on hook",
                     trigger_ref=trigger["ref"], action_ref=action["ref"])
    manual = wait_for_execution(user_a, user_a.execute(action["ref"])["id"], "completed")
    event_id = user_a.post_webhook(key, {"from": "a"})["event_id"]
    enforcement, by_rule = chain_for_event(user_a, event_id)
    by_rule = wait_for_execution(user_a, by_rule["id"], "completed")

    for what, call in {
        "GET action": lambda: user_b.get_action(action["ref"]),
        "GET rule": lambda: user_b.get_rule(rule["ref"]),
        "disable rule": lambda: user_b.disable_rule(rule["ref"]),
        "GET manual execution": lambda: user_b.get_execution(manual["id"]),
        "GET rule execution": lambda: user_b.get_execution(by_rule["id"]),
        "GET enforcement": lambda: user_b.get_enforcement(enforcement["id"]),
        "GET event": lambda: user_b.get_event(event_id),
    }.items():
        expect_api_error(call, 404, f"B: {what} of A")
    err = expect_api_error(lambda: user_b.execute(action["ref"]), 404, "B executing A's action")
    assert err.message == f"Action '{action['ref']}' not found", f"unexpected message {err.message!r}"

    # guessing ids: every execution near A's that belongs to A is hidden from B
    guessed = []
    for exec_id in range(manual["id"] - 3, by_rule["id"] + 4):
        try:
            seen = user_a.get_execution(exec_id)
        except ApiError as err:
            # no such execution, or not A's to see; anything else (a 500) is a failure
            assert err.status in (403, 404), f"A probing execution {exec_id}: {err}"
            continue
        if seen["executor"] == ident_a["id"]:
            guessed.append(exec_id)
            expect_api_error(lambda: user_b.get_execution(exec_id), 404, f"B guessing execution {exec_id}")
    assert {manual["id"], by_rule["id"]} <= set(guessed), f"A's executions not among {guessed}"

    for what, count in {
        "executions by action_ref": total(user_b.list_executions, action_ref=action["ref"]),
        "executions by rule_ref": total(user_b.list_executions, rule_ref=rule["ref"]),
        "events by trigger_ref": total(user_b.list_events, trigger_ref=trigger["ref"]),
        "enforcements by rule_ref": total(user_b.list_enforcements, rule_ref=rule["ref"]),
    }.items():
        assert count == 0, f"B's list of {what} of A has total_items {count}, expected 0"

    assert user_a.get_rule(rule["ref"])["enabled"] is True, "A's rule was disabled by B's attempt"
    assert user_a.get_action(action["ref"])["ref"] == action["ref"]
    assert user_a.get_event(event_id)["payload"] == {"from": "a"}
    assert user_a.get_enforcement(enforcement["id"])["rule"] == rule["id"]
    assert total(user_a.list_executions, action_ref=action["ref"]) == 2, \
        "A must see both of A's executions: " + json.dumps([manual["id"], by_rule["id"]])
