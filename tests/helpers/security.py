"""Machinery of the security scenarios (T3.10 RBAC, T3.11 system packs, T3.20 secret injection,
T3.27 encryption at rest, T3.28 audit trail, T3.29 rate limiting), kept out of the test bodies.

- RBAC: `expect_forbidden` (403 with upstream's exact body), `grant_role` (a role label linked to
  a permission set, then held by an identity), `permission_set_id`;
- fixture packs: `upload_fixture_pack` (any folder of tests/fixtures/packs under a unique ref);
- secrets: `sha256_hex`, `run_secret_probe`, `proc_environ`, `encryption_key` (the key of an
  embedded stack, read from its config), `decrypt_stored` (AES-256-GCM as upstream's crypto.rs);
- audit: `audit_trail` (every audit event of one resource, oldest first, full objects);
- rate limiting: `burst` (N sequential requests with timings, status and Retry-After),
  `sleep_retry_after` (the P4 system deadline named by a 429's Retry-After).
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from tests.helpers.client import ApiError, AttuneClient
from tests.helpers.packs import build_pack_archive
from tests.helpers.polling import wait_for_execution
from tests.helpers.scenario import all_items
from tests.helpers.target import STACK_ENV

FIXTURE_PACKS = Path(__file__).resolve().parents[1] / "fixtures" / "packs"
REDACTED = {"$attune_secret": True, "redacted": True}


# ------------------------------------------------------------------ RBAC
def forbidden_body(resource: str, action: str) -> dict:
    return {"error": f"Insufficient permissions: {resource}:{action}", "code": "FORBIDDEN"}


def expect_forbidden(call: Callable[[], Any], resource: str, action: str, what: str) -> ApiError:
    """`call` must fail with 403 and upstream's exact denial body for `<resource>:<action>`."""
    try:
        value = call()
    except ApiError as exc:
        assert exc.status == 403, f"{what}: expected HTTP 403 {resource}:{action}, got {exc}"
        assert exc.body == forbidden_body(resource, action), \
            f"{what}: expected body {forbidden_body(resource, action)}, got {exc.body}"
        return exc
    raise AssertionError(f"{what}: expected HTTP 403 {resource}:{action}, but the call "
                         f"succeeded: {json.dumps(value, default=str)[:600]}")


def permission_set_id(admin: AttuneClient, ref: str) -> int:
    sets = admin.list_permission_sets()
    found = [s for s in sets if s.get("ref") == ref]
    assert len(found) == 1, f"permission set {ref} not found exactly once in {[s.get('ref') for s in sets]}"
    return int(found[0]["id"])


def grant_role(admin: AttuneClient, make, identity_id: int, set_ref: str, role: str) -> None:
    """Link role label `role` to `set_ref`, then give `identity_id` that role (api.md §2.3);
    the set's role link is removed at cleanup (the identity's goes with the identity)."""
    set_id = permission_set_id(admin, set_ref)
    link = admin.post(f"/api/v1/permissions/sets/{set_id}/roles", {"role": role})["data"]
    make.defer(f"unlink role {role} from {set_ref}",
               lambda: admin.delete(f"/api/v1/permissions/sets/roles/{link['id']}"))
    held = admin.post(f"/api/v1/identities/{identity_id}/roles", {"role": role})["data"]
    assert (held["identity_id"], held["role"]) == (identity_id, role), f"role assignment: {held}"


def pack_refs(client: AttuneClient) -> set:
    """Refs of every pack `client` sees in `GET /packs` (page/page_size paging)."""
    refs, page = set(), 1
    while True:
        body = client.list_packs(page=page, page_size=100)
        refs |= {p.get("ref") for p in body["items"]}
        if not body["pagination"].get("has_next"):
            return refs
        page += 1


# ------------------------------------------------------------------ fixture packs
def upload_fixture_pack(admin: AttuneClient, make, folder: str, prefix: str | None = None) -> str:
    """Upload tests/fixtures/packs/<folder> as `<prefix or folder>_<8hex>`; deleted at cleanup."""
    ref = f"{prefix or folder}_{uuid.uuid4().hex[:8]}"
    admin.upload_pack(build_pack_archive(FIXTURE_PACKS / folder, ref), force=False,
                      skip_tests=True)
    make.defer(f"delete pack {ref}", lambda: admin.delete_pack(ref))
    return ref


# ------------------------------------------------------------------ secrets
def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def run_secret_probe(client: AttuneClient, pack: str, name: str, *, timeout: float = 30,
                     permission_set_refs: list[str] | None = None, **params) -> dict:
    """Execute `<pack>.secret_probe` for parameter `name` (extra parameters as keywords) and
    wait for `completed`; return the execution."""
    extra = {} if permission_set_refs is None else {"permission_set_refs": permission_set_refs}
    execution = client.execute(f"{pack}.secret_probe", {"name": name, **params}, **extra)
    return wait_for_execution(client, execution["id"], "completed", timeout=timeout)


def proc_environ(pid: int) -> bytes:
    with open(f"/proc/{pid}/environ", "rb") as fh:
        return fh.read()


def encryption_key() -> str | None:
    """`security.encryption_key` of the embedded stack (its config file, or the
    ATTUNE__SECURITY__ENCRYPTION_KEY override); None for an external target."""
    override = os.environ.get("ATTUNE__SECURITY__ENCRYPTION_KEY")
    if override:
        return override
    raw = os.environ.get(STACK_ENV)
    if not raw:
        return None
    path = json.loads(raw).get("config_path")
    if not path or not os.path.isfile(path):
        return None
    import yaml

    data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    return ((data.get("security") or {}).get("encryption_key")) or None


@dataclass
class Sealed:
    """A stored encrypted value split as upstream's crypto.rs writes it."""
    nonce: bytes
    ciphertext_and_tag: bytes

    @property
    def size(self) -> int:
        return len(self.nonce) + len(self.ciphertext_and_tag)


def unseal(stored: Any) -> Sealed:
    """The base64 text of an encrypted `key.value` as (96-bit nonce, ciphertext || 128-bit tag)."""
    assert isinstance(stored, str), f"encrypted value must be stored as a JSON string, got {stored!r}"
    raw = base64.b64decode(stored, validate=True)
    return Sealed(raw[:12], raw[12:])


def decrypt_stored(enc_key: str, stored: Any) -> Any:
    """AES-256-GCM with SHA-256(enc_key) as the key; returns the decoded JSON plaintext."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    sealed = unseal(stored)
    aes = AESGCM(hashlib.sha256(enc_key.encode("utf-8")).digest())
    return json.loads(aes.decrypt(sealed.nonce, sealed.ciphertext_and_tag, None))


def raw_key_row(db_probe, ref: str) -> dict:
    """The `key` row of `ref` straight from storage, every column (name -> value)."""
    with db_probe.cursor() as cur:
        cur.execute("SELECT * FROM key WHERE ref = %s", (ref,))
        row = cur.fetchone()
        assert row is not None, f"no key row for ref {ref}"
        names = [d[0] for d in cur.description]
    return dict(zip(names, row))


# ------------------------------------------------------------------ audit
def audit_trail(client: AttuneClient, resource_type: str, resource_id: Any) -> list[dict]:
    """Every audit event of one resource as full objects (`GET /audit-events/{id}`), ordered by
    (`created`, `id`)."""
    summaries = all_items(client.list_audit_events, resource_type=resource_type,
                          resource_id=str(resource_id))
    full = [client._data("GET", f"/api/v1/audit-events/{s['id']}") for s in summaries]
    return sorted(full, key=lambda e: (e["created"], e["id"]))


# ------------------------------------------------------------------ rate limiting
@dataclass
class Reply:
    status: int
    retry_after: str | None
    body: Any
    sent: float     # time.monotonic() just before sending
    done: float     # time.monotonic() once the answer was read


def burst(client: AttuneClient, path: str, count: int, *, auth: bool = True) -> list[Reply]:
    """`count` sequential GETs of `path` on one keep-alive session, as fast as they go."""
    out = []
    for _ in range(count):
        sent = time.monotonic()
        resp = client.raw("GET", path, auth=auth)
        body = AttuneClient.parse(resp)
        out.append(Reply(resp.status_code, resp.headers.get("Retry-After"), body, sent,
                         time.monotonic()))
    return out


def statuses(replies: list[Reply]) -> list[int]:
    return [r.status for r in replies]


@dataclass
class WindowCheck:
    forced_limited: int = 0   # replies that had to be 429 (window surely full)
    forced_allowed: int = 0   # replies that had to be 200 (window surely not full)
    either: int = 0           # replies whose server arrival time is too uncertain to tell


def check_sliding_window(replies: list[Reply], requests: int, window: float,
                         ok_status: int = 200) -> WindowCheck:
    """Check that every reply is what a sliding window of `requests` accepted requests per
    `window` seconds must answer, given only client-side times.

    The server saw request k at some instant r_k in [sent_k, done_k]. An accepted request i is
    surely inside k's window when sent_i > done_k - window, and possibly inside it when
    done_i > sent_k - window. So k must be 429 when `requests` accepted ones are surely inside,
    and must be `ok_status` when fewer than `requests` are possibly inside. Raises
    AssertionError naming the first inconsistent reply; returns how many replies were forced.
    """
    accepted: list[Reply] = []
    check = WindowCheck()
    for k, reply in enumerate(replies, 1):
        sure = sum(1 for a in accepted if a.sent > reply.done - window)
        maybe = sum(1 for a in accepted if a.done > reply.sent - window)
        if sure >= requests:
            assert reply.status == 429, \
                f"reply {k}: {sure} accepted requests surely within the last {window} s, " \
                f"expected 429, got {reply.status} {reply.body}"
            check.forced_limited += 1
        elif maybe < requests:
            assert reply.status == ok_status, \
                f"reply {k}: at most {maybe} accepted requests within the last {window} s, " \
                f"expected {ok_status}, got {reply.status} {reply.body}"
            check.forced_allowed += 1
        else:
            assert reply.status in (ok_status, 429), f"reply {k}: unexpected {reply.status}"
            check.either += 1
        if reply.status == ok_status:
            accepted.append(reply)
    return check


def sleep_retry_after(reply: Reply, window: float) -> float:
    """P4 system deadline after the last reply of a burst: every request the server accepted
    arrived before that reply, so all have left the window `window` seconds after it. When the
    reply is a 429, its Retry-After (seconds until a slot frees, never below 1) is waited if
    longer. Sleeps until then, counted from when that reply arrived, plus 50 ms of slack for
    the server's clock granularity; returns the delay slept."""
    wait = window
    if reply.status == 429:
        assert reply.retry_after, f"a 429 without Retry-After: {reply}"
        wait = max(window, float(reply.retry_after))
    delay = max(0.0, reply.done + wait + 0.05 - time.monotonic())
    time.sleep(delay)
    return delay


__all__ = [
    "REDACTED", "forbidden_body", "expect_forbidden", "permission_set_id", "grant_role",
    "pack_refs", "upload_fixture_pack", "sha256_hex", "run_secret_probe", "proc_environ", "encryption_key",
    "Sealed", "unseal", "decrypt_stored", "raw_key_row", "audit_trail", "Reply", "burst",
    "statuses", "WindowCheck", "check_sliding_window", "sleep_retry_after",
]
