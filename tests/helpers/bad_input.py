"""Machinery of the bad-input catalogue (tests/e2e/robustness/test_bad_input.py), kept out of the
test bodies.

- `Req` / `send`: one raw HTTP request (any method, headers, bytes or JSON body, multipart, a
  chunked body) sent without the client's own Authorization header;
- `Expect` / `check_answer`: upstream's answer (api.md §0.5): status plus one of the error shapes
  (`plain` text of axum's extractors, `api` {"error": str, "code"}, `auth` {"error": {"code",
  "message"}}, `empty` body) or a 2xx JSON body;
- `Case`: one row of the catalogue (id, request builder, expected answer, optional trace check);
- `BadInputContext`: what the rows need, created lazily per test under unique refs (two users A
  and B, A's pack and identity key, webhook keys, a finished execution, inquiries) and cleaned up
  by `make`; JWT forging (`hs256_token` with any key, the target's own `jwt_secret` when known);
- archives: `tar_gz` with hostile members (`..`, absolute paths, symlinks);
- `assert_alive`: GET /health and authenticated reads still answer after a case.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import os
import tarfile
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Iterable

import pytest
import requests

from tests.helpers.client import AttuneClient
from tests.helpers.polling import wait_for_execution, wait_until
from tests.helpers.scenario import all_items, iso_ms, total, utcnow
from tests.helpers.target import STACK_ENV

UNSET = object()
INVALID_TOKEN = {"error": {"code": 401, "message": "Invalid authentication token"}}
MISSING_TOKEN = {"error": {"code": 401, "message": "Missing authentication token"}}
EXPIRED_TOKEN = {"error": {"code": 401, "message": "Authentication token expired"}}
DESERIALIZE = "Failed to deserialize the JSON body into the target type: "
PARSE_JSON = "Failed to parse the request body as JSON: "
BODY_LIMIT = 2 * 1024 * 1024  # axum's default request-body limit (api.md §0.5)


# ------------------------------------------------------------------ requests
@dataclass
class Req:
    """One raw request. `token` None sends no Authorization header; `auth_header` overrides the
    whole header value. `json` is serialised with json.dumps (non-ASCII kept as UTF-8); `data`
    is sent as is (bytes, str, or an iterator for a chunked body)."""
    method: str
    path: str
    token: str | None = None
    json: Any = UNSET
    data: Any = None
    headers: dict = field(default_factory=dict)
    files: dict | None = None
    params: dict | None = None
    auth_header: str | None = None


def send(base_url: str, req: Req, timeout: float = 30) -> requests.Response:
    headers = dict(req.headers)
    if req.auth_header is not None:
        headers["Authorization"] = req.auth_header
    elif req.token is not None:
        headers["Authorization"] = f"Bearer {req.token}"
    data = req.data
    if req.json is not UNSET:
        data = json.dumps(req.json, ensure_ascii=False).encode("utf-8")
        headers.setdefault("Content-Type", "application/json")
    with requests.Session() as session:
        return session.request(req.method, base_url.rstrip("/") + req.path, headers=headers,
                               data=data, files=req.files, params=req.params, timeout=timeout)


# ------------------------------------------------------------------ expected answers
@dataclass
class Expect:
    """Upstream's answer. `shape`: plain | api | auth | empty | ok. `message` is compared exactly,
    `fragment` as a substring, `body` as the whole parsed body."""
    status: int
    shape: str
    code: str | None = None
    message: str | None = None
    fragment: str | None = None
    body: Any = UNSET


def plain(status: int, fragment: str) -> Expect:
    return Expect(status, "plain", fragment=fragment)


def api(status: int, code: str, message: str | None = None, fragment: str | None = None) -> Expect:
    return Expect(status, "api", code=code, message=message, fragment=fragment)


def auth(body: dict) -> Expect:
    return Expect(401, "auth", body=body)


def empty(status: int) -> Expect:
    return Expect(status, "empty")


def ok(status: int = 200) -> Expect:
    return Expect(status, "ok")


def parse_body(resp: requests.Response) -> Any:
    if not resp.content:
        return None
    try:
        return resp.json()
    except ValueError:
        return resp.text


def check_answer(resp: requests.Response, expect: Expect, what: str) -> Any:
    """Assert status and error shape; return the parsed body."""
    body = parse_body(resp)
    shown = resp.text[:600]
    ctype = resp.headers.get("Content-Type", "")
    assert resp.status_code != 500, f"{what}: HTTP 500 {shown}"
    assert resp.status_code == expect.status, \
        f"{what}: expected HTTP {expect.status}, got {resp.status_code} {shown}"
    if expect.shape == "plain":
        assert ctype.startswith("text/plain"), f"{what}: expected a text/plain body, got {ctype!r}: {shown}"
        assert isinstance(body, str) and expect.fragment in body, \
            f"{what}: expected text containing {expect.fragment!r}, got {shown!r}"
    elif expect.shape == "api":
        assert "json" in ctype, f"{what}: expected a JSON body, got {ctype!r}: {shown}"
        assert isinstance(body, dict) and set(body) == {"error", "code"} and \
            isinstance(body["error"], str), f"{what}: expected {{error: str, code}}, got {shown}"
        assert body["code"] == expect.code, f"{what}: expected code {expect.code}, got {body}"
        if expect.message is not None:
            assert body["error"] == expect.message, \
                f"{what}: expected message {expect.message!r}, got {body['error']!r}"
        if expect.fragment is not None:
            assert expect.fragment in body["error"], \
                f"{what}: expected a message containing {expect.fragment!r}, got {body['error']!r}"
    elif expect.shape == "auth":
        assert body == expect.body, f"{what}: expected body {expect.body}, got {shown}"
    elif expect.shape == "empty":
        assert not resp.content, f"{what}: expected an empty body, got {shown!r}"
    elif expect.shape == "ok":
        assert isinstance(body, dict), f"{what}: expected a JSON object, got {shown}"
    else:
        raise AssertionError(f"unknown shape {expect.shape}")
    if expect.body is not UNSET and expect.shape != "auth":
        assert body == expect.body, f"{what}: expected body {expect.body}, got {shown}"
    return body


@dataclass
class Case:
    """One catalogue row: `build(ctx)` gives the request, `expect` the answer (or a function of
    ctx), `verify(ctx, body)` checks that the case left no trace (optional)."""
    id: str
    build: Callable[["BadInputContext"], Req]
    expect: Expect | Callable[["BadInputContext"], Expect]
    verify: Callable[["BadInputContext", Any], None] | None = None
    marks: tuple = ()

    def expected(self, ctx: "BadInputContext") -> Expect:
        return self.expect(ctx) if callable(self.expect) else self.expect

    def param(self):
        return pytest.param(self, id=self.id, marks=list(self.marks))


# ------------------------------------------------------------------ JWT forging
def _b64e(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def hs256_token(secret: str, claims: dict) -> str:
    """A JWT signed HS256 with `secret` (any key: the target's own or a wrong one)."""
    header = _b64e(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
    payload = _b64e(json.dumps(claims, separators=(",", ":")).encode())
    signing_input = f"{header}.{payload}".encode("ascii")
    sig = hmac.new(secret.encode("utf-8"), signing_input, hashlib.sha256).digest()
    return f"{header}.{payload}.{_b64e(sig)}"


def embedded_config() -> dict | None:
    """The embedded stack's YAML config (None on an external target)."""
    raw = os.environ.get(STACK_ENV)
    if not raw:
        return None
    path = json.loads(raw).get("config_path")
    if not path or not os.path.isfile(path):
        return None
    import yaml

    return yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}


def jwt_secret() -> str | None:
    """`security.jwt_secret` of the embedded stack (or its ATTUNE__SECURITY__JWT_SECRET override)."""
    override = os.environ.get("ATTUNE__SECURITY__JWT_SECRET")
    if override:
        return override
    cfg = embedded_config()
    if cfg is None:
        return None
    return ((cfg.get("security") or {}).get("jwt_secret")) or \
        "insecure_default_secret_change_in_production"


def packs_base_dir() -> Path | None:
    """`packs_base_dir` of the embedded stack, resolved against its config file's folder."""
    raw = os.environ.get(STACK_ENV)
    cfg = embedded_config()
    if cfg is None or not cfg.get("packs_base_dir"):
        return None
    base = Path(os.environ.get("ATTUNE__PACKS_BASE_DIR") or cfg["packs_base_dir"])
    if not base.is_absolute():
        base = Path(json.loads(raw)["config_path"]).resolve().parent / base
    return base


# ------------------------------------------------------------------ archives
def tar_gz(members: Iterable[tuple]) -> bytes:
    """A .tar.gz from (name, bytes) regular files and (name, None, link_target) symlinks."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for member in members:
            name, content = member[0], member[1]
            info = tarfile.TarInfo(name)
            info.mtime = int(time.time())
            if content is None:
                info.type = tarfile.SYMTYPE
                info.linkname = member[2]
                tar.addfile(info)
            else:
                info.size = len(content)
                info.mode = 0o644
                tar.addfile(info, io.BytesIO(content))
    return buf.getvalue()


def pack_yaml(ref: str) -> bytes:
    return (f"ref: {ref}\nname: {ref}\nversion: 1.0.0\ndescription: bad-input archive\n"
            ).encode("utf-8")


def upload_files(archive: bytes) -> dict:
    return {"pack": ("pack.tar.gz", archive, "application/gzip"),
            "skip_tests": (None, "true")}


def chunked(data: bytes, size: int = 256 * 1024):
    """An iterator body: requests sends it with Transfer-Encoding: chunked (no Content-Length)."""
    for start in range(0, len(data), size):
        yield data[start:start + size]


# ------------------------------------------------------------------ per-test context
class BadInputContext:
    """Everything a catalogue row may need, created on first use under the test's uid."""

    def __init__(self, admin: AttuneClient, make, uid: str, target):
        self.admin = admin
        self.make = make
        self.uid = uid
        self.target = target
        self._cache: dict[str, Any] = {}

    def _once(self, name: str, build: Callable[[], Any]) -> Any:
        if name not in self._cache:
            self._cache[name] = build()
        return self._cache[name]

    @property
    def pack(self) -> str:
        """The session's fixture pack (e2e_core_<8hex>)."""
        return self.make.pack_ref

    @property
    def token(self) -> str:
        return self.admin.token

    # -- identities
    @property
    def user_a(self) -> tuple[AttuneClient, dict]:
        return self._once("user_a", lambda: self.make.user(["core.admin"]))

    @property
    def user_b(self) -> tuple[AttuneClient, dict]:
        return self._once("user_b", lambda: self.make.user(["core.admin"]))

    def a_pack(self) -> dict:
        """A DB-only pack created by A (upstream: hidden from every other identity)."""
        client = self.user_a[0]
        return self._once("a_pack", lambda: self.make.pack(
            client=client, ref=f"e2e_bad_a_{self.uid}", label=f"A's pack {self.uid}"))

    def a_key(self) -> dict:
        """An identity-owned key of A (upstream: hidden from B, 404 and absent from lists)."""
        client, ident = self.user_a

        def build():
            return self.make.key(client=client, ref=f"e2e_user.bad_a_{self.uid}",
                                 name=f"bad_a_{self.uid}", owner_type="identity",
                                 owner_identity=ident["id"], value=f"a-value-{self.uid}")
        return self._once("a_key", build)

    def a_view(self) -> dict:
        """What A sees of A's own objects (pack, key value, identity-key refs)."""
        client = self.user_a[0]
        pack = self._cache.get("a_pack")
        key = self._cache.get("a_key")
        view: dict[str, Any] = {}
        if pack:
            view["pack"] = client.get_pack(pack["ref"])["updated"]
        if key:
            got = client.get_key(key["ref"])
            view["key"] = (got["value"], got["updated"])
            view["key_list"] = sorted(k["ref"] for k in all_items(client.list_keys,
                                                                     owner_type="identity"))
        return view

    # -- webhooks
    def hook(self) -> tuple[dict, str]:
        """A webhook-enabled trigger of the fixture pack -> (trigger, key)."""
        return self._once("hook", lambda: self.make.webhook_trigger(
            ref=f"{self.pack}.bad_hook_{self.uid}", pack_ref=self.pack, label="bad-input hook"))

    def disabled_hook_key(self) -> tuple[dict, str]:
        """A trigger whose webhooks were enabled then disabled -> (trigger, its former key)."""
        def build():
            trigger, key = self.make.webhook_trigger(
                ref=f"{self.pack}.bad_off_{self.uid}", pack_ref=self.pack, label="disabled hook")
            off = self.admin.disable_webhook(trigger["ref"])
            assert off["webhook_enabled"] is False and "webhook_key" not in off, \
                f"disabling webhooks must null the key: {off}"
            return off, key
        return self._once("disabled_hook", build)

    def event_count(self, trigger_ref: str) -> int:
        return total(self.admin.list_events, trigger_ref=trigger_ref)

    # -- executions and inquiries
    def finished_execution(self) -> dict:
        """A completed execution of an inline shell action."""
        def build():
            action = self.make.action(ref=f"{self.pack}.bad_done_{self.uid}", pack_ref=self.pack,
                                      label="finishes", runtime_ref="core.shell",
                                      entrypoint=f"printf done-{self.uid}")
            created = self.admin.execute(action["ref"], {})
            return wait_for_execution(self.admin, created["id"], "completed", timeout=30)
        return self._once("finished", build)

    def inquiry(self, name: str, **body) -> dict:
        def build():
            made = self.admin.create_inquiry(execution=self.finished_execution()["id"],
                                             prompt=f"bad-input {name} {self.uid}", **body)
            self.make.defer(f"delete inquiry {made['id']}",
                            lambda: self.admin.delete(f"/api/v1/inquiries/{made['id']}"))
            return made
        return self._once(f"inquiry_{name}", build)

    def answered_inquiry(self) -> dict:
        def build():
            made = self.inquiry("answered")
            done = self.admin.respond_inquiry(made["id"], {"approved": True, "by": "first"})
            assert done["status"] == "responded", f"first response not recorded: {done}"
            return done
        return self._once("answered", build)

    def timed_out_inquiry(self) -> dict:
        """An inquiry whose timeout_at (1 s ahead) has passed and that the API's 1 s sweep has
        flipped to `timeout` (api.md §10)."""
        def build():
            made = self.inquiry("timeout", timeout_at=iso_ms(utcnow() + timedelta(seconds=1)))
            return wait_until(lambda: (lambda i: i if i["status"] == "timeout" else None)(
                self.admin.get_inquiry(made["id"])), timeout=15,
                description=f"inquiry {made['id']} flipped to timeout by the API's sweep")
        return self._once("timed_out", build)

    # -- JWT
    def signing_secret(self) -> str:
        secret = jwt_secret()
        if not secret:
            pytest.skip("needs the target's JWT signing secret (known for the embedded stack only)")
        return secret


def assert_alive(admin: AttuneClient, what: str) -> None:
    """The stack still answers after a case: /health, an authenticated read, a list."""
    health = admin.with_token(None).health()
    assert health == {"status": "ok"}, f"after {what}: GET /health answered {health}"
    me = admin.me()
    assert me.get("login"), f"after {what}: GET /auth/me answered {me}"
    assert admin.get_pack("core")["ref"] == "core", f"after {what}: GET /packs/core failed"
    page = admin.list_actions(page_size=1)
    assert isinstance(page.get("items"), list), f"after {what}: GET /actions answered {page}"


__all__ = [
    "UNSET", "INVALID_TOKEN", "MISSING_TOKEN", "EXPIRED_TOKEN", "DESERIALIZE", "PARSE_JSON",
    "BODY_LIMIT", "Req", "send", "Expect", "plain", "api", "auth", "empty", "ok", "parse_body",
    "check_answer", "Case", "hs256_token", "embedded_config", "jwt_secret", "packs_base_dir",
    "tar_gz", "pack_yaml", "upload_files", "chunked", "BadInputContext", "assert_alive",
]
