"""Unit tests of the API's per-process caches (attune_emulator/api/authz.py) and of how
require_auth, rbac and the E5 middleware use them: answers must equal the uncached ones, and a
new epoch (a committed change) must be seen by the very next request."""
import asyncio
import time

import pytest
from starlette.datastructures import State

from attune_emulator import auth
from attune_emulator.api import authz, ratelimit, rbac
from attune_emulator.api import common as c

SECRET = "unit-test-secret-0123456789abcdef-0123456789"
VIEWER = [{"resource": "packs", "actions": ["read"]}]
ADMIN = [{"resource": "packs", "actions": ["read", "create"]}]


def run(coro):
    return asyncio.run(coro)


# ------------------------------------------------------------------------------ tokens

def test_token_cache_answers_like_decode_token():
    cache = authz.TokenCache(SECRET)
    tok = auth.encode_token(SECRET, 7, "alice", ttl_seconds=60)
    first = cache.decode(tok)
    assert first == auth.decode_token(SECRET, tok)
    assert cache.decode(tok) is first, "second decode is a cache hit"
    with pytest.raises(auth.TokenError) as exc:
        cache.decode(auth.encode_token("another-secret-0123456789abcdef-0123456", 7, "alice"))
    assert not exc.value.expired
    with pytest.raises(auth.TokenError) as exc:
        cache.decode(auth.encode_token(SECRET, 7, "alice", ttl_seconds=-5))
    assert exc.value.expired


def test_cached_token_expires_on_time(monkeypatch):
    cache = authz.TokenCache(SECRET)
    tok = auth.encode_token(SECRET, 7, "alice", ttl_seconds=30)
    cache.decode(tok)
    real = time.time
    monkeypatch.setattr(authz.time, "time", lambda: real() + 31)
    with pytest.raises(auth.TokenError) as exc:
        cache.decode(tok)
    assert exc.value.expired and str(exc.value) == "Authentication token expired"


def test_failures_are_not_cached():
    cache = authz.TokenCache(SECRET)
    for _ in range(2):
        with pytest.raises(auth.TokenError):
            cache.decode("garbage")
    assert not cache._claims


# ------------------------------------------------------------------------------ sets and packs

class CountingDb:
    """Answers the cache's queries from mutable dicts and counts them."""

    def __init__(self):
        self.sets = {1: [{"id": 1, "ref": "core.viewer", "grants": VIEWER}]}
        self.named = {"core.admin": ADMIN}
        self.packs = {"p1": {"id": 3, "ref": "p1", "is_standard": False, "installed_by": 2}}
        self.queries = 0

    def all(self, sql, params=None):
        self.queries += 1
        if sql == authz.IDENTITY_SETS_SQL:
            return list(self.sets.get(params["i"], []))
        return [{"id": i, "ref": r, "grants": self.named[r]}
                for i, r in enumerate(params[0]) if r in self.named]

    def one(self, sql, params=None):
        self.queries += 1
        assert sql == authz.PACK_SQL
        return self.packs.get(params[0])


def test_sets_are_reused_within_an_epoch_and_reloaded_after():
    db, cache = CountingDb(), authz.AuthzCache()
    assert cache.identity_sets(db, 1, 10)[0]["ref"] == "core.viewer"
    assert cache.identity_sets(db, 1, 10)[0]["ref"] == "core.viewer"
    assert db.queries == 1
    db.sets[1] = []  # revoked, committed with epoch 11
    assert cache.identity_sets(db, 1, 11) == []
    assert db.queries == 2


def test_an_older_epoch_never_replaces_a_newer_entry():
    db, cache = CountingDb(), authz.AuthzCache()
    cache.identity_sets(db, 1, 12)
    db.sets[1] = [{"id": 9, "ref": "stale.view", "grants": []}]
    cache.identity_sets(db, 1, 11)  # a slow request that read epoch 11 before
    db.sets[1] = [{"id": 1, "ref": "core.viewer", "grants": VIEWER}]
    assert cache.identity_sets(db, 1, 12)[0]["ref"] == "core.viewer"


def test_unknown_epoch_is_never_cached():
    db, cache = CountingDb(), authz.AuthzCache()
    cache.identity_sets(db, 1, None)
    cache.identity_sets(db, 1, None)
    assert db.queries == 2


def test_named_sets_key_ignores_order_and_duplicates():
    db, cache = CountingDb(), authz.AuthzCache()
    assert cache.named_sets(db, ["core.admin", "x.y"], 5) == \
        cache.named_sets(db, ["x.y", "core.admin", "core.admin"], 5)
    assert db.queries == 1


def test_action_cache_is_valid_for_one_action_epoch():
    actions = {"p.a": {"id": 7, "ref": "p.a", "pack_ref": "p", "max_retries": None}}
    reads = []

    class ActionDb:
        def one(self, sql, params=None):
            reads.append(params[0])
            row = actions.get(params[0])
            return dict(row) if row is not None else None

    cache, db = authz.AuthzCache(), ActionDb()
    sql = "SELECT ... WHERE a.ref = %s"
    assert cache.action(db, sql, "p.a", 3)["id"] == 7
    assert cache.action(db, sql, "p.a", 3)["id"] == 7
    assert cache.action(db, sql, "p.gone", 3) is None
    assert cache.action(db, sql, "p.gone", 3) is None
    assert reads == ["p.a", "p.gone"]
    actions["p.a"]["max_retries"] = 2  # an update commits with action epoch 4
    assert cache.action(db, sql, "p.a", 4)["max_retries"] == 2
    assert cache.action(db, sql, "p.a", None)["max_retries"] == 2  # unknown epoch: always read
    assert reads == ["p.a", "p.gone", "p.a", "p.a"]


def test_pack_cache_remembers_missing_packs_per_epoch():
    db, cache = CountingDb(), authz.AuthzCache()
    assert cache.pack(db, "nope", 1) is None
    assert cache.pack(db, "nope", 1) is None
    assert db.queries == 1
    db.packs["nope"] = {"id": 4, "ref": "nope", "is_standard": True, "installed_by": None}
    assert cache.pack(db, "nope", 2)["is_standard"] is True


# ------------------------------------------------------------------------------ require_auth

class AuthDb:
    """identity_state for require_auth plus the set queries of AuthzCache."""

    def __init__(self, rows, sets=None):
        self.rows, self.sets, self.set_queries = rows, sets or {}, 0

    def one(self, sql, params=None):
        assert sql == authz.IDENTITY_STATE_SQL
        return self.rows.get(params[0])

    def all(self, sql, params=None):
        self.set_queries += 1
        return list(self.sets.get(params["i"], []))


def make_request(db, token, state=None):
    from starlette.requests import Request
    app = type("App", (), {})()
    app.state = State({"cfg": type("Cfg", (), {"jwt_secret": SECRET})(), "db": db,
                       "token_cache": authz.TokenCache(SECRET),
                       "authz_cache": authz.AuthzCache()})
    scope = {"type": "http", "method": "GET", "path": "/api/v1/packs", "query_string": b"",
             "headers": [(b"authorization", f"Bearer {token}".encode())], "app": app,
             "state": state if state is not None else {}}
    return Request(scope)


def row(identity_id=1, frozen=False, epoch=100, attributes=None):
    return {"id": identity_id, "login": "alice", "frozen": frozen,
            "attributes": attributes or {"team": "a"}, "authz_epoch": epoch, "pack_epoch": 50}


def test_require_auth_carries_identity_state_and_sets():
    db = AuthDb({1: row()}, {1: [{"id": 1, "ref": "core.viewer", "grants": VIEWER}]})
    p = run(c.require_auth(make_request(db, auth.encode_token(SECRET, 1, "alice"))))
    assert (p.attributes, p.authz_epoch, p.pack_epoch) == ({"team": "a"}, 100, 50)
    assert [s["ref"] for s in p.permission_sets] == ["core.viewer"]
    assert rbac.effective_grants(db, p) == VIEWER
    assert rbac.build_context(db, p).attributes == {"team": "a"}


def test_require_auth_never_caches_the_identity_row():
    tok = auth.encode_token(SECRET, 1, "alice")
    db = AuthDb({1: row()})
    req = make_request(db, tok)
    run(c.require_auth(req))
    db.rows[1] = row(frozen=True)
    with pytest.raises(c.AuthError):
        run(c.require_auth(make_request(db, tok)))
    del db.rows[1]
    with pytest.raises(c.AuthError):
        run(c.require_auth(make_request(db, tok)))


def test_require_auth_reuses_the_rate_limiters_read_for_the_same_identity_only():
    tok = auth.encode_token(SECRET, 1, "alice")
    db = AuthDb({})  # the database would say "deleted": the stash must be what is used
    stash = {c.IDENTITY_STASH: (1, row(epoch=7), [], "access")}
    assert run(c.require_auth(make_request(db, tok, state=stash))).authz_epoch == 7
    other = {c.IDENTITY_STASH: (2, row(identity_id=2), [], "access")}
    with pytest.raises(c.AuthError):
        run(c.require_auth(make_request(db, tok, state=other)))


# ------------------------------------------------------------------------------ E5 middleware

class WindowDb(AuthDb):
    """AuthDb plus the shared window function, emulated with SlidingWindow."""

    def __init__(self, rows, sets=None):
        super().__init__(rows, sets)
        self.window = ratelimit.SlidingWindow()
        self.hits, self.audited = 0, set()

    def one(self, sql, params=None):
        if sql == ratelimit.HIT_SQL:
            self.hits += 1
            key, n, w = params
            allowed, retry = self.window.hit(key, ratelimit.Limit(n, w))
            audit_it = not allowed and key not in self.audited
            if audit_it:
                self.audited.add(key)
            return {"retry_after": retry, "audit": audit_it}
        if sql.startswith("SELECT login"):
            return {"login": "alice"}
        return super().one(sql, params)

    def execute(self, sql, params=None):
        return 1


class Cfg:
    jwt_secret = SECRET

    def __init__(self, settings):
        self.settings = settings

    def get(self, key, default=None):
        return self.settings if key == "server.rate_limit" else default


def call_middleware(db, token, settings):
    seen = {}

    async def inner(scope, receive, send):
        seen["state"] = dict(scope.get("state") or {})
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    mw = ratelimit.RateLimitMiddleware(inner, cfg=Cfg(settings), db=db)
    req = make_request(db, token)
    req.app.state.db = db
    sent = []

    async def send(message):
        sent.append(message)

    async def receive():
        return {"type": "http.request", "body": b""}

    scope = dict(req.scope, state={})
    run(mw(scope, receive, send))
    headers = dict(sent[0].get("headers") or [])
    return sent[0]["status"], headers.get(b"retry-after"), seen.get("state")


def test_exempt_identity_skips_the_window_and_hands_its_read_to_require_auth():
    db = WindowDb({1: row()}, {1: [{"id": 1, "ref": "core.admin", "grants": ADMIN}]})
    tok = auth.encode_token(SECRET, 1, "alice")
    settings = {"enabled": True, "requests": 1, "window_seconds": 60,
                "exempt_permission_sets": ["core.admin"]}
    for _ in range(3):
        status, _, state = call_middleware(db, tok, settings)
        assert status == 200
    assert db.hits == 0
    assert state[c.IDENTITY_STASH][0] == 1


def test_attribute_override_limits_and_answers_429_with_retry_after():
    db = WindowDb({1: row(attributes={"rate_limit": {"requests": 2, "window_seconds": 3}})},
                  {1: [{"id": 1, "ref": "core.viewer", "grants": VIEWER}]})
    tok = auth.encode_token(SECRET, 1, "alice")
    settings = {"enabled": True, "requests": 1000, "window_seconds": 1,
                "exempt_permission_sets": ["core.admin"]}
    statuses = [call_middleware(db, tok, settings)[:2] for _ in range(3)]
    assert statuses == [(200, None), (200, None), (429, b"3")]
