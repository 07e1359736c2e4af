"""Bad-input catalogue (issue 7, "Bad input"): a table of hostile or malformed requests across the
API, each answered with upstream's status and error shape (api.md §0.5, §1.2), never a 500.

Each row is one parametrized test. After every row the stack must still answer (GET /health, an
authenticated read, a list: `assert_alive`), and rows that could leave a trace (values shaped like
SQL injection, requests by one identity against another's objects, rejected creates, refused
webhooks) check explicitly that they did not: the value is stored verbatim and a count filtered by
it is exactly what was created, the other identity's view is unchanged, nothing was created.

Not a plan scenario (no tier marker). Row ids name the case; the request machinery (raw bodies and
headers, JWT forging, hostile archives) lives in tests/helpers/bad_input.py.
"""
from __future__ import annotations

import json
import os
import uuid
from datetime import datetime

import pytest

from tests.helpers.bad_input import (BODY_LIMIT, DESERIALIZE, EXPIRED_TOKEN, INVALID_TOKEN,
                                     MISSING_TOKEN, PARSE_JSON, BadInputContext, Case, Req, api,
                                     assert_alive, auth, check_answer, chunked, empty,
                                     hs256_token, ok, pack_yaml, packs_base_dir, plain, send,
                                     tar_gz, upload_files)
from tests.helpers.scenario import (UTC, all_items, expect_api_error, forge_claims, jwt_claims,
                                    service_log_problems, unsigned_token)

pytestmark = [pytest.mark.robustness, pytest.mark.validation, pytest.mark.security,
              pytest.mark.edge_case]

JSON_CT = {"Content-Type": "application/json"}
UNICODE_LABEL = "Ünïcødé ✓ 漢字 🚀 עברית Ελληνικά e\u0301 \u200b\u00a0tab\there"
SQLI = "'; DROP TABLE key; --"
SQLI_PAYLOAD = {"q": "' OR '1'='1", "drop": "1; DROP TABLE event;--", "union": "x' UNION SELECT "
                "login, password_hash FROM identity--", "nested": {"$where": "1==1", "n": [SQLI]}}
CONSTRAINT = "Validation constraint failed: "


# ------------------------------------------------------------------ small builders
def _post(path, body, token=None, **kw) -> Req:
    return Req("POST", path, token=token, json=body, **kw)


def _pack_body(ctx, **changes) -> dict:
    body = {"ref": f"e2e_bad_{ctx.uid}", "label": f"bad input {ctx.uid}", "version": "1.0.0"}
    body.update(changes)
    return body


def _action_body(ctx, ref) -> dict:
    return {"ref": ref, "pack_ref": ctx.pack, "label": "bad-input action", "entrypoint": "true",
            "runtime_ref": "core.shell"}


def _key_body(ctx, **changes) -> dict:
    body = {"ref": f"{ctx.pack}.bad_key_{ctx.uid}", "owner_type": "pack",
            "owner_pack_ref": ctx.pack, "name": f"bad_key_{ctx.uid}", "value": "v"}
    body.update(changes)
    return body


def _cleanup_pack(ctx, ref):
    ctx.make.defer(f"delete pack {ref}", lambda: ctx.admin.delete_pack(ref))


def _cleanup_key(ctx, ref):
    ctx.make.defer(f"delete key {ref}", lambda: ctx.admin.delete_key(ref))


def _cleanup_trigger(ctx, ref):
    ctx.make.defer(f"delete trigger {ref}", lambda: ctx.admin.delete_trigger(ref))


# ------------------------------------------------------------------ trace checks
def _pack_absent(ref_of):
    def verify(ctx, body):
        ref = ref_of(ctx)
        expect_api_error(lambda: ctx.admin.get_pack(ref), 404, f"rejected pack {ref!r} must not exist")
    return verify


def _action_absent(ref_of):
    def verify(ctx, body):
        ref = ref_of(ctx)
        expect_api_error(lambda: ctx.admin.get_action(ref), 404, f"rejected action {ref!r} must not exist")
    return verify


def _no_events(hook_of):
    def verify(ctx, body):
        trigger = hook_of(ctx)[0]
        n = ctx.event_count(trigger["ref"])
        assert n == 0, f"a refused webhook post created {n} event(s) for {trigger['ref']}"
    return verify


def _no_rows():
    def verify(ctx, body):
        items = body.get("items")
        assert items == [], f"an injection-shaped filter matched {len(items)} row(s): {items[:3]}"
        assert body["pagination"].get("total_items") == 0, f"total_items: {body['pagination']}"
    return verify


def _a_view_unchanged():
    """A's view (recorded by `_as_b` before the request) is the same after the case; B's lists
    do not show A's objects either."""
    def verify(ctx, body):
        before = ctx._cache["a_view_before"]
        after = ctx.a_view()
        assert after == before, f"A's view changed: before {before}, after {after}"
        client_b = ctx.user_b[0]
        key = ctx._cache.get("a_key")
        if key:
            b_keys = {k["ref"] for k in all_items(client_b.list_keys, owner_type="identity")}
            assert key["ref"] not in b_keys, "B's key list shows A's identity key"
        pack = ctx._cache.get("a_pack")
        if pack:
            b_packs = {p["ref"] for p in client_b.list_packs(page_size=100)["items"]}
            assert pack["ref"] not in b_packs, "B's pack list shows A's pack"
    return verify


def _as_b(make_req):
    """Build a request of B against A's objects, after recording A's view."""
    def build(ctx):
        req = make_req(ctx)
        ctx._cache["a_view_before"] = ctx.a_view()
        req.token = ctx.user_b[0].token
        return req
    return build


# ------------------------------------------------------------------ rows needing a little set-up
def _oversize_key(ctx, chunk: bool) -> Req:
    body = json.dumps(_key_body(ctx, value="x" * (BODY_LIMIT + 1024))).encode()
    data = chunked(body) if chunk else body
    return Req("POST", "/api/v1/keys", token=ctx.token, data=data, headers=dict(JSON_CT))


def _oversize_upload(ctx) -> Req:
    ref = f"e2e_bad_big_{ctx.uid}"
    filler = os.urandom(BODY_LIMIT + 65536)  # random bytes: gzip cannot shrink them
    archive = tar_gz([("pack.yaml", pack_yaml(ref)), ("blob.bin", filler)])
    assert len(archive) > BODY_LIMIT, f"archive of {len(archive)} bytes is not over the limit"
    return Req("POST", "/api/v1/packs/upload", token=ctx.token, files=upload_files(archive))


def _archive_req(ctx, slug, extra) -> Req:
    ref = f"e2e_bad_{slug}_{ctx.uid}"
    archive = tar_gz([("pack.yaml", pack_yaml(ref))] + extra(ctx))
    return Req("POST", "/api/v1/packs/upload", token=ctx.token, files=upload_files(archive))


def _escaped_absent(slug, rel_paths):
    """The hostile archive registered nothing and wrote nothing outside the staging area."""
    def verify(ctx, body):
        ref = f"e2e_bad_{slug}_{ctx.uid}"
        expect_api_error(lambda: ctx.admin.get_pack(ref), 404, f"pack {ref} from a rejected archive")
        base = packs_base_dir()
        if base is None:
            return  # external target: its filesystem is not visible; the 400 and 404 above hold
        for rel in rel_paths(ctx):
            for root in (base, base.parent, base / ref):
                assert not (root / rel).exists(), f"archive member escaped to {root / rel}"
    return verify


def _sqli_key(ctx) -> Req:
    ref = f"{ctx.pack}.bad_sqli_{ctx.uid}' or '1'='1"
    ctx._cache["sqli_key_ref"] = ref
    _cleanup_key(ctx, ref)
    return _post("/api/v1/keys", _key_body(ctx, ref=ref, name=f"sqli_{ctx.uid}' OR 1=1--",
                                          value={"v": SQLI, "n": [SQLI, 1]}), ctx.token)


def _verify_sqli_key(ctx, body):
    ref = ctx._cache["sqli_key_ref"]
    assert body["data"]["ref"] == ref, f"ref not stored verbatim: {body['data']}"
    got = ctx.admin.get_key(ref)
    assert (got["name"], got["value"]) == (f"sqli_{ctx.uid}' OR 1=1--", {"v": SQLI, "n": [SQLI, 1]}), \
        f"key not stored verbatim: {got}"
    pack_id = ctx.admin.get_pack(ctx.pack)["id"]
    mine = [k for k in all_items(ctx.admin.list_keys, owner_type="pack", owner=str(pack_id))
            if k["ref"].startswith(f"{ctx.pack}.bad_sqli_{ctx.uid}")]
    assert [k["ref"] for k in mine] == [ref], f"expected exactly the one key created, got {mine}"


def _sqli_trigger(ctx) -> Req:
    ref = f"{ctx.pack}.bad_t_{ctx.uid}' or '1'='1"
    ctx._cache["sqli_trigger_ref"] = ref
    _cleanup_trigger(ctx, ref)
    return _post("/api/v1/triggers", {"ref": ref, "pack_ref": ctx.pack, "label": SQLI,
                                      "description": "x' UNION SELECT 1--"}, ctx.token)


def _verify_sqli_trigger(ctx, body):
    ref = ctx._cache["sqli_trigger_ref"]
    got = ctx.admin.get_trigger(ref)
    assert (got["ref"], got["label"], got["description"]) == (ref, SQLI, "x' UNION SELECT 1--"), \
        f"trigger not stored verbatim: {got}"
    assert ctx.event_count(ref) == 0, "an injection-shaped trigger_ref filter matched events"
    per_pack = ctx.admin.get(f"/api/v1/packs/{ctx.pack}/triggers", page_size=100)["items"]
    mine = [t["ref"] for t in per_pack if t["ref"].startswith(f"{ctx.pack}.bad_t_{ctx.uid}")]
    assert mine == [ref], f"expected exactly the one trigger created, got {mine}"


def _sqli_webhook(ctx) -> Req:
    trigger, key = ctx.hook()
    return _post(f"/api/v1/webhooks/{key}", {"payload": SQLI_PAYLOAD})


def _verify_sqli_webhook(ctx, body):
    trigger = ctx.hook()[0]
    event_id = body["data"]["event_id"]
    assert body["data"]["trigger_ref"] == trigger["ref"], f"webhook answer: {body}"
    assert ctx.admin.get_event(event_id)["payload"] == SQLI_PAYLOAD, "payload not stored verbatim"
    assert ctx.event_count(trigger["ref"]) == 1, "expected exactly the one event posted"


def _unicode_pack(ctx, label, slug) -> Req:
    ref = f"e2e_bad_{slug}_{ctx.uid}"
    _cleanup_pack(ctx, ref)
    return _post("/api/v1/packs", _pack_body(ctx, ref=ref, label=label), ctx.token)


def _label_verbatim(slug, label):
    def verify(ctx, body):
        ref = f"e2e_bad_{slug}_{ctx.uid}"
        assert body["data"]["label"] == label, "create answer changed the label"
        got = ctx.admin.get_pack(ref)["label"]
        assert got == label and len(got) == len(label), \
            f"label not stored verbatim ({len(got)} vs {len(label)} characters): {got!r}"
    return verify


def _long_key(ctx) -> Req:
    ref = f"{ctx.pack}.bad_long_{ctx.uid}"
    _cleanup_key(ctx, ref)
    return _post("/api/v1/keys", _key_body(ctx, ref=ref, name=f"bad_long_{ctx.uid}",
                                          value=_long_value(ctx)), ctx.token)


def _long_value(ctx) -> str:
    return ("ζ" + ctx.uid) * 100_000  # 900 000 characters, ~1 MB of UTF-8: under the body limit


def _verify_long_key(ctx, body):
    got = ctx.admin.get_key(f"{ctx.pack}.bad_long_{ctx.uid}")["value"]
    assert got == _long_value(ctx), f"long value not stored verbatim ({len(got)} characters)"


def _expired(ctx) -> Req:
    secret = ctx.signing_secret()
    claims = dict(jwt_claims(ctx.token))
    now = int(datetime.now(UTC).timestamp())
    claims.update(iat=now - 7200, exp=now - 3600)
    return Req("GET", "/api/v1/actions", token=hs256_token(secret, claims))


def _typed(ctx, token_type) -> Req:
    secret = ctx.signing_secret()
    claims = dict(jwt_claims(ctx.token), token_type=token_type)
    return Req("GET", "/api/v1/actions", token=hs256_token(secret, claims))


def _inquiry_verify(kind, status, response):
    def verify(ctx, body):
        made = ctx._cache[kind]
        got = ctx.admin.get_inquiry(made["id"])
        assert (got["status"], got.get("response")) == (status, response), \
            f"inquiry {made['id']} changed: {got}"
    return verify


def _cancel_verify(ctx, body):
    done = ctx.finished_execution()
    got = ctx.admin.get_execution(done["id"])
    assert (got["status"], got["result"], got["updated"]) == \
        ("completed", done["result"], done["updated"]), f"cancel changed the execution: {got}"


def _register_expect(ctx):
    """Self-registration: a too-short password is 422 VALIDATION_ERROR when registration is on;
    when it is off every well-formed body is 403 first (api.md §1.3)."""
    settings = ctx.admin.with_token(None).request("GET", "/auth/settings", auth=False)["data"]
    if settings.get("self_registration_enabled"):
        return api(422, "VALIDATION_ERROR", fragment="password")
    return api(403, "FORBIDDEN")


def _register_verify(ctx, body):
    err = expect_api_error(lambda: ctx.admin.with_token(None).login(f"e2e_bad_reg_{ctx.uid}", "short"),
                           401, "login of a rejected registration")
    assert err.message == "Invalid login or password", f"{err.body}"


# ------------------------------------------------------------------ the catalogue
CASES = [
    # -- malformed bodies and content types (axum extractor rejections, plain text)
    Case("malformed-json-truncated",
         lambda c: Req("POST", "/api/v1/packs", token=c.token, data=b'{"ref": "x", ', headers=JSON_CT),
         plain(400, PARSE_JSON)),
    Case("malformed-json-trailing-garbage",
         lambda c: Req("POST", "/api/v1/keys", token=c.token, data=b'{"ref": "a"} extra', headers=JSON_CT),
         plain(400, PARSE_JSON + "trailing characters")),
    Case("malformed-json-invalid-utf8",
         lambda c: Req("POST", "/api/v1/triggers", token=c.token, data=b'{"ref": "\xff\xfe"}', headers=JSON_CT),
         plain(400, PARSE_JSON)),
    Case("missing-content-type",
         lambda c: Req("POST", "/api/v1/packs", token=c.token, data=json.dumps(_pack_body(c)).encode()),
         plain(415, "Expected request with `Content-Type: application/json`"),
         _pack_absent(lambda c: f"e2e_bad_{c.uid}")),
    Case("wrong-content-type-text-plain",
         lambda c: Req("POST", "/auth/login", data=b'{"login": "a", "password": "b"}',
                       headers={"Content-Type": "text/plain"}),
         plain(415, "Expected request with `Content-Type: application/json`")),
    # -- wrong types
    Case("wrong-type-integer-ref",
         lambda c: _post("/api/v1/packs", _pack_body(c, ref=123), c.token),
         plain(422, DESERIALIZE + "ref: invalid type: integer `123`, expected a string")),
    Case("wrong-type-array-body",
         lambda c: _post("/api/v1/rules", [1, 2], c.token),
         plain(422, DESERIALIZE + "invalid type")),
    Case("wrong-type-env-vars-string",
         lambda c: _post("/api/v1/executions/execute", {"action_ref": "core.echo", "env_vars": "x"}, c.token),
         plain(422, DESERIALIZE + 'env_vars: invalid type: string "x", expected a map')),
    Case("wrong-type-retention-limit-string",
         lambda c: _post("/api/v1/executions/execute",
                         {"action_ref": "core.echo", "artifact_retention_limit": "5"}, c.token),
         plain(422, DESERIALIZE + 'artifact_retention_limit: invalid type: string "5", expected i64')),
    Case("wrong-type-null-login",
         lambda c: _post("/auth/login", {"login": None, "password": "x"}),
         plain(422, DESERIALIZE + "login: invalid type: null, expected a string")),
    # -- missing required fields
    Case("missing-field-password",
         lambda c: _post("/auth/login", {"login": "someone"}),
         plain(422, DESERIALIZE + "missing field `password`")),
    Case("missing-field-rule-action-ref",
         lambda c: _post("/api/v1/rules", {"ref": f"{c.pack}.bad_rule_{c.uid}", "pack_ref": c.pack,
                                           "label": "no action", "trigger_ref": "core.intervaltimer"},
                         c.token),
         plain(422, DESERIALIZE + "missing field `action_ref`")),
    Case("missing-field-empty-execute",
         lambda c: _post("/api/v1/executions/execute", {}, c.token),
         plain(422, DESERIALIZE + "missing field `action_ref`")),
    # -- unknown enum values
    Case("enum-unknown-key-owner-type",
         lambda c: _post("/api/v1/keys", _key_body(c, owner_type="galaxy"), c.token),
         plain(422, DESERIALIZE + "owner_type: unknown variant `galaxy`")),
    Case("enum-unknown-retention-policy",
         lambda c: _post("/api/v1/executions/execute",
                         {"action_ref": "core.echo", "artifact_retention_policy": "weeks"}, c.token),
         plain(422, "unknown variant `weeks`")),
    Case("enum-unknown-status-query",
         lambda c: Req("GET", "/api/v1/executions", token=c.token, params={"status": "bogus"}),
         plain(400, "Failed to deserialize query string")),
    Case("enum-unknown-status-path",
         lambda c: Req("GET", "/api/v1/executions/status/bogus", token=c.token),
         api(400, "BAD_REQUEST", fragment="bogus")),
    Case("unparsable-path-id",
         lambda c: Req("GET", "/api/v1/executions/12abc", token=c.token),
         plain(400, "12abc")),
    # -- oversize bodies (axum's 2 MB default limit)
    Case("oversize-body-declared-length", lambda c: _oversize_key(c, chunk=False),
         plain(413, "length limit exceeded"),
         lambda c, b: expect_api_error(lambda: c.admin.get_key(f"{c.pack}.bad_key_{c.uid}"), 404,
                                       "oversize key must not exist")),
    Case("oversize-body-chunked", lambda c: _oversize_key(c, chunk=True),
         plain(413, "length limit exceeded"),
         lambda c, b: expect_api_error(lambda: c.admin.get_key(f"{c.pack}.bad_key_{c.uid}"), 404,
                                       "oversize key must not exist")),
    Case("oversize-pack-upload", _oversize_upload, plain(413, "length limit exceeded"),
         _pack_absent(lambda c: f"e2e_bad_big_{c.uid}")),
    Case("oversize-webhook-body",
         lambda c: Req("POST", f"/api/v1/webhooks/{c.hook()[1]}",
                       data=json.dumps({"payload": {"blob": "y" * (BODY_LIMIT + 10)}}).encode(),
                       headers=JSON_CT),
         plain(413, "length limit exceeded"), _no_events(lambda c: c.hook())),
    # -- refs breaking the format rules (DB CHECK constraints -> 422)
    Case("ref-pack-with-dot",
         lambda c: _post("/api/v1/packs", _pack_body(c, ref=f"e2e.bad_{c.uid}"), c.token),
         api(422, "UNPROCESSABLE_ENTITY", fragment=CONSTRAINT),
         _pack_absent(lambda c: f"e2e.bad_{c.uid}")),
    Case("ref-pack-upper-case",
         lambda c: _post("/api/v1/packs", _pack_body(c, ref=f"E2E_BAD_{c.uid.upper()}"), c.token),
         api(422, "UNPROCESSABLE_ENTITY", fragment=CONSTRAINT),
         _pack_absent(lambda c: f"E2E_BAD_{c.uid.upper()}")),
    Case("ref-pack-unicode",
         lambda c: _post("/api/v1/packs", _pack_body(c, ref=f"e2e_pâck_{c.uid}"), c.token),
         api(422, "UNPROCESSABLE_ENTITY", fragment=CONSTRAINT),
         _pack_absent(lambda c: f"e2e_pâck_{c.uid}")),
    Case("ref-action-two-dots",
         lambda c: _post("/api/v1/actions", _action_body(c, f"{c.pack}.a.b_{c.uid}"), c.token),
         api(422, "UNPROCESSABLE_ENTITY", fragment=CONSTRAINT),
         _action_absent(lambda c: f"{c.pack}.a.b_{c.uid}")),
    Case("ref-action-no-dot",
         lambda c: _post("/api/v1/actions", _action_body(c, f"nodot_{c.uid}"), c.token),
         api(422, "UNPROCESSABLE_ENTITY", fragment=CONSTRAINT),
         _action_absent(lambda c: f"nodot_{c.uid}")),
    Case("version-not-semver",
         lambda c: _post("/api/v1/packs", _pack_body(c, version="1.0"), c.token),
         api(422, "UNPROCESSABLE_ENTITY", fragment=CONSTRAINT),
         _pack_absent(lambda c: f"e2e_bad_{c.uid}")),
    # -- unicode and very long strings
    Case("unicode-label-stored-verbatim", lambda c: _unicode_pack(c, UNICODE_LABEL, "uni"),
         ok(201), _label_verbatim("uni", UNICODE_LABEL)),
    Case("long-label-255-emoji-accepted", lambda c: _unicode_pack(c, "🚀" * 255, "emoji"),
         ok(201), _label_verbatim("emoji", "🚀" * 255)),
    Case("long-label-256-rejected",
         lambda c: _post("/api/v1/packs", _pack_body(c, label="x" * 256), c.token),
         api(422, "VALIDATION_ERROR", fragment="label"),
         _pack_absent(lambda c: f"e2e_bad_{c.uid}")),
    Case("long-key-value-1mb-stored-verbatim", _long_key, ok(201), _verify_long_key),
    # -- SQL-injection-shaped values: stored verbatim, no effect
    Case("sqli-pack-ref-in-path",
         lambda c: Req("GET", "/api/v1/packs/x' OR '1'='1", token=c.token),
         api(404, "NOT_FOUND", message="Pack 'x' OR '1'='1' not found")),
    Case("sqli-execution-filter",
         lambda c: Req("GET", "/api/v1/executions", token=c.token,
                       params={"action_ref": "' OR 1=1--", "include_total": "true"}),
         ok(200), _no_rows()),
    Case("sqli-result-contains-filter",
         lambda c: Req("GET", "/api/v1/executions", token=c.token,
                       params={"result_contains": f"{c.uid}' OR '1'='1", "include_total": "true"}),
         ok(200), _no_rows()),
    Case("sqli-key-stored-verbatim", _sqli_key, ok(201), _verify_sqli_key),
    Case("sqli-trigger-ref-stored-verbatim", _sqli_trigger, ok(201), _verify_sqli_trigger),
    Case("sqli-webhook-payload-stored-verbatim", _sqli_webhook, ok(200), _verify_sqli_webhook),
    # -- path traversal in pack paths and uploaded archives
    Case("traversal-register-dotdot-dir",
         lambda c: _post("/api/v1/packs/register", {"path": "/etc/../etc", "skip_tests": True}, c.token),
         api(400, "BAD_REQUEST", fragment="pack.yaml not found")),
    Case("traversal-register-missing-dir",
         lambda c: _post("/api/v1/packs/register",
                         {"path": f"../../../../nonexistent_{c.uid}", "skip_tests": True}, c.token),
         api(400, "BAD_REQUEST", fragment="Pack directory does not exist")),
    Case("traversal-encoded-dotdot-pack-ref",
         lambda c: Req("DELETE", "/api/v1/packs/%2E%2E", token=c.token),
         api(404, "NOT_FOUND", message="Pack '..' not found"),
         lambda c, b: c.admin.get_pack(c.pack)),
    Case("traversal-archive-dotdot-member",
         lambda c: _archive_req(c, "dotdot", lambda c: [(f"../escape_{c.uid}.txt", b"escaped\n")]),
         api(400, "BAD_REQUEST"),
         _escaped_absent("dotdot", lambda c: [f"escape_{c.uid}.txt"])),
    Case("traversal-archive-absolute-member",
         lambda c: _archive_req(c, "abs", lambda c: [(f"/tmp/e2e_abs_{c.uid}.txt", b"escaped\n")]),
         api(400, "BAD_REQUEST"),
         _escaped_absent("abs", lambda c: [f"e2e_abs_{c.uid}.txt", f"/tmp/e2e_abs_{c.uid}.txt"])),
    Case("traversal-archive-symlink-member",
         lambda c: _archive_req(c, "link", lambda c: [("actions/passwd.sh", None, "/etc/passwd")]),
         api(400, "BAD_REQUEST"),
         _escaped_absent("link", lambda c: [])),
    # -- JWT tampering (RequireAuth, shape b)
    Case("jwt-missing", lambda c: Req("GET", "/api/v1/actions"), auth(MISSING_TOKEN)),
    Case("jwt-garbage", lambda c: Req("GET", "/api/v1/actions", token="not-a.jwt.at-all"),
         auth(INVALID_TOKEN)),
    Case("jwt-lowercase-bearer-prefix",
         lambda c: Req("GET", "/api/v1/actions", auth_header=f"bearer {c.token}"), auth(INVALID_TOKEN)),
    Case("jwt-alg-none",
         lambda c: Req("GET", "/api/v1/actions", token=unsigned_token(c.token)), auth(INVALID_TOKEN)),
    Case("jwt-wrong-key",
         lambda c: Req("GET", "/api/v1/actions",
                       token=hs256_token("not-the-server-secret", jwt_claims(c.token))),
         auth(INVALID_TOKEN)),
    Case("jwt-tampered-claims",
         lambda c: Req("GET", "/api/v1/actions", token=forge_claims(c.token, sub="1", login="root")),
         auth(INVALID_TOKEN)),
    Case("jwt-expired", _expired, auth(EXPIRED_TOKEN)),
    Case("jwt-unknown-token-type", lambda c: _typed(c, "superuser"), auth(INVALID_TOKEN)),
    Case("jwt-refresh-token-as-access",
         lambda c: Req("GET", "/api/v1/actions", token=c.user_a[0].refresh_token), auth(INVALID_TOKEN)),
    Case("jwt-query-string-token",
         lambda c: Req("GET", "/api/v1/actions", params={"token": c.token, "access_token": c.token}),
         auth(MISSING_TOKEN)),
    Case("jwt-garbage-on-auth-me",
         lambda c: Req("GET", "/auth/me", token="garbage"),
         api(401, "UNAUTHORIZED", message="Unauthorized")),
    Case("jwt-access-token-as-refresh",
         lambda c: _post("/auth/refresh", {"refresh_token": c.token}),
         api(401, "UNAUTHORIZED", message="Invalid token type")),
    Case("login-wrong-password",
         lambda c: _post("/auth/login", {"login": c.admin.me()["login"], "password": f"wrong-{c.uid}"}),
         api(401, "UNAUTHORIZED", message="Invalid login or password")),
    Case("register-short-password",
         lambda c: _post("/auth/register", {"login": f"e2e_bad_reg_{c.uid}", "password": "short"}),
         _register_expect, _register_verify),
    # -- one identity touching another's owned resources (404, no trace)
    Case("owner-get-others-key",
         _as_b(lambda c: Req("GET", f"/api/v1/keys/{c.a_key()['ref']}")),
         api(404, "NOT_FOUND"), _a_view_unchanged()),
    Case("owner-update-others-key",
         _as_b(lambda c: Req("PUT", f"/api/v1/keys/{c.a_key()['ref']}", json={"value": "b-was-here"})),
         api(404, "NOT_FOUND"), _a_view_unchanged()),
    Case("owner-delete-others-key",
         _as_b(lambda c: Req("DELETE", f"/api/v1/keys/{c.a_key()['ref']}")),
         api(404, "NOT_FOUND"), _a_view_unchanged()),
    Case("owner-get-others-pack",
         _as_b(lambda c: Req("GET", f"/api/v1/packs/{c.a_pack()['ref']}")),
         lambda c: api(404, "NOT_FOUND", message=f"Pack '{c.a_pack()['ref']}' not found"),
         _a_view_unchanged()),
    Case("owner-delete-others-pack",
         _as_b(lambda c: Req("DELETE", f"/api/v1/packs/{c.a_pack()['ref']}")),
         lambda c: api(404, "NOT_FOUND", message=f"Pack '{c.a_pack()['ref']}' not found"),
         _a_view_unchanged()),
    # -- webhooks to unknown or disabled keys, malformed webhook bodies
    Case("webhook-unknown-key",
         lambda c: _post(f"/api/v1/webhooks/wh_{uuid.uuid4().hex}", {"payload": {"x": 1}}),
         api(404, "NOT_FOUND", message="Invalid webhook key")),
    Case("webhook-disabled-key",
         lambda c: _post(f"/api/v1/webhooks/{c.disabled_hook_key()[1]}", {"payload": {"x": 1}}),
         api(404, "NOT_FOUND", message="Invalid webhook key"), _no_events(lambda c: c.disabled_hook_key())),
    Case("webhook-missing-payload-field",
         lambda c: _post(f"/api/v1/webhooks/{c.hook()[1]}", {"foo": 1}),
         api(400, "BAD_REQUEST", fragment="missing field `payload`"), _no_events(lambda c: c.hook())),
    Case("webhook-malformed-json",
         lambda c: Req("POST", f"/api/v1/webhooks/{c.hook()[1]}", data=b'{"payload": {', headers=JSON_CT),
         api(400, "BAD_REQUEST", fragment="Invalid JSON payload"), _no_events(lambda c: c.hook())),
    # -- inquiries already answered or timed out (400, not 409)
    Case("inquiry-respond-already-answered",
         lambda c: _post(f"/api/v1/inquiries/{c.answered_inquiry()['id']}/respond",
                         {"response": {"approved": False, "by": "second"}}, c.token),
         api(400, "BAD_REQUEST"),
         _inquiry_verify("answered", "responded", {"approved": True, "by": "first"})),
    Case("inquiry-respond-timed-out",
         lambda c: _post(f"/api/v1/inquiries/{c.timed_out_inquiry()['id']}/respond",
                         {"response": {"approved": True}}, c.token),
         api(400, "BAD_REQUEST"), _inquiry_verify("timed_out", "timeout", None)),
    # -- executions
    Case("cancel-finished-execution",
         lambda c: Req("POST", f"/api/v1/executions/{c.finished_execution()['id']}/cancel", token=c.token),
         lambda c: api(409, "CONFLICT", message=f"Execution {c.finished_execution()['id']} is in "
                                                "status 'completed' and cannot be cancelled"),
         _cancel_verify),
    Case("cancel-unknown-execution",
         lambda c: Req("POST", "/api/v1/executions/9007199254740000/cancel", token=c.token),
         api(404, "NOT_FOUND")),
    # -- routing
    Case("unknown-route", lambda c: Req("GET", f"/api/v1/no_such_thing_{c.uid}", token=c.token),
         empty(404)),
    Case("wrong-method-patch-rule", lambda c: Req("PATCH", f"/api/v1/rules/{c.pack}.x", token=c.token,
                                                  json={"enabled": False}),
         empty(405)),
]


@pytest.mark.parametrize("case", [c.param() for c in CASES])
def test_bad_input(case: Case, admin, make, uid, target):
    """Bad-input catalogue row `case.id` (issue 7): the request gets upstream's exact status and
    error shape (plain-text extractor rejection, {error, code}, {error: {code, message}}, empty
    body), never a 500; the row's own trace check holds (nothing created, value stored verbatim
    and counted exactly, the other identity's view unchanged); afterwards /health, an
    authenticated read and a list still answer, and the API logged no traceback meanwhile."""
    ctx = BadInputContext(admin, make, uid, target)
    started = datetime.now(UTC)
    req = case.build(ctx)
    expected = case.expected(ctx)
    resp = send(target.api_url, req)
    body = check_answer(resp, expected, case.id)
    if case.verify is not None:
        case.verify(ctx, body)
    assert_alive(admin, case.id)
    if target.services is not None:
        problems = service_log_problems(target.services, started, mentions=[uid])
        assert not problems, f"{case.id}: service logs show errors: {problems}"


def test_catalogue_covers_issue_categories():
    """Bad-input catalogue completeness (issue 7): at least 30 rows, unique ids, and every category
    the issue names has a row."""
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)), "duplicate case ids"
    assert len(ids) >= 30, f"only {len(ids)} cases"
    for prefix in ("malformed-json", "wrong-type", "missing-field", "enum-unknown", "oversize",
                   "ref-", "unicode", "long-", "sqli-", "traversal-", "jwt-alg-none",
                   "jwt-wrong-key", "jwt-expired", "jwt-unknown-token-type", "jwt-garbage",
                   "jwt-refresh-token-as-access", "owner-", "webhook-disabled-key",
                   "webhook-unknown-key", "inquiry-respond-already-answered",
                   "inquiry-respond-timed-out", "cancel-finished-execution"):
        assert any(i.startswith(prefix) for i in ids), f"no case for {prefix}"
