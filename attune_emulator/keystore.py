"""Extension E9 `template_context` (a): the `keystore` template namespace and secret redaction.

`keystore.<name>` holds the decrypted value of every key visible to a rule or workflow: system keys
and keys owned by its pack (the worker's ambient set and precedence, minus action-owned keys; pack
keys win over system keys of the same name). E7-expired keys are excluded.

Values that come from **encrypted** keys must not be stored in clear in `enforcement.config` or
`execution.config`. After rendering, every rendered leaf whose template mentions an encrypted key
(`keystore.<name>`, `keystore['<name>']`, or the whole `keystore`), or a secret parameter
(`parameters.<name>` of a workflow whose own config held a secret), or whose string value contains
the text of a secret, is replaced by `{"$attune_secret": true, "redacted": true}`. The plaintext is
kept encrypted in `execution_secret_value` (entity `enforcement` or `execution`, JSON pointer), from
which the worker restores it just before running the action.
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from . import crypto
from .db import J

log = logging.getLogger(__name__)

REDACTED = {"$attune_secret": True, "redacted": True}
MIN_SECRET_TEXT = 4  # shorter string secrets are matched by template reference only

KEYS_SQL = """SELECT ref, name, value, encrypted, encryption_key_hash, owner_type FROM key
    WHERE (owner_type = 'system'
           OR (owner_type = 'pack' AND (owner_pack = %s OR owner_pack_ref = %s)))
      AND (expires_at IS NULL OR expires_at > now())
    ORDER BY CASE owner_type WHEN 'system' THEN 0 ELSE 1 END, id"""


@dataclass
class Keystore:
    values: dict = field(default_factory=dict)          # name -> decrypted value
    secret_names: set = field(default_factory=set)      # names whose value came from an encrypted key
    refs: dict = field(default_factory=dict)            # name -> key ref
    secret_texts: set = field(default_factory=set)      # string leaves of secret values

    @property
    def has_secrets(self) -> bool:
        return bool(self.secret_names or self.secret_texts)


def _string_leaves(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _string_leaves(v)
    elif isinstance(value, list):
        for v in value:
            yield from _string_leaves(v)


def build(rows: Iterable[dict], decrypt: Callable[[dict], Any] | None) -> Keystore:
    """The namespace from key rows (system first, then pack; later wins). `decrypt(row)` returns the
    plaintext of an encrypted row or raises; without it encrypted keys are left out."""
    ks = Keystore()
    for row in rows:
        name = row["name"]
        value = row["value"]
        if row.get("encrypted"):
            if decrypt is None:
                log.warning("key %s is encrypted but no encryption key is configured; not in "
                            "keystore", row.get("ref"))
                continue
            try:
                value = decrypt(row)
            except Exception as exc:  # a key we cannot decrypt is absent, as for the worker
                log.warning("key %s cannot be decrypted (%s); not in keystore", row.get("ref"), exc)
                continue
            ks.secret_names.add(name)
            ks.secret_texts.update(t for t in _string_leaves(value) if len(t) >= MIN_SECRET_TEXT)
        else:
            ks.secret_names.discard(name)
        ks.values[name] = value
        ks.refs[name] = row.get("ref")
    return ks


def load(fetch_all: Callable[[str, tuple], list], encryption_key: str | None, pack_id: Any,
         pack_ref: Any) -> Keystore:
    """Query the keys of `pack_id`/`pack_ref` plus system keys; `fetch_all(sql, params)`."""
    rows = fetch_all(KEYS_SQL, (pack_id, pack_ref))
    decrypt = None
    if encryption_key:
        def decrypt(row: dict) -> Any:
            return crypto.decrypt_value(encryption_key, row["value"], row.get("encryption_key_hash"))
    return build(rows, decrypt)


def mentions_keystore(template: Any) -> bool:
    """Whether a template (any JSON) uses the keystore namespace at all."""
    return "keystore" in json.dumps(template, default=str)


_KS_REF = re.compile(r"keystore\s*(?:\.\s*([A-Za-z_][A-Za-z0-9_\-]*)|\[\s*['\"]([^'\"]+)['\"]\s*\])?")
_PARAM_REF = re.compile(r"parameters\s*(?:\.\s*([A-Za-z_][A-Za-z0-9_\-]*)|\[\s*['\"]([^'\"]+)['\"]\s*\])?")


def _refers(text: str, pattern: re.Pattern, names: set) -> bool:
    if not names or "{{" not in text:
        return False
    for m in pattern.finditer(text):
        name = m.group(1) or m.group(2)
        if name is None or name in names:  # the whole namespace, or a secret entry
            return True
    return False


def _pointer(path: list) -> str:
    return "/" + "/".join(str(p).replace("~", "~0").replace("/", "~1") for p in path)


def redact(template: Any, rendered: Any, ks: Keystore | None,
           secret_params: set | None = None,
           secret_texts: set | None = None) -> tuple[Any, list[tuple[str, Any]]]:
    """Redact the secret parts of `rendered` (the rendering of `template`).

    Returns (the redacted copy, [(JSON pointer, plaintext)]). `secret_params` names top-level
    workflow parameters that hold secrets; `secret_texts` adds more strings to look for.
    """
    names = set(ks.secret_names) if ks else set()
    texts = set(ks.secret_texts) if ks else set()
    texts.update(t for t in (secret_texts or ()) if isinstance(t, str) and len(t) >= MIN_SECRET_TEXT)
    params = set(secret_params or ())
    found: list[tuple[str, Any]] = []
    if not (names or texts or params):
        return rendered, found

    def is_secret(tmpl: Any, value: Any) -> bool:
        if isinstance(tmpl, str) and (_refers(tmpl, _KS_REF, names) or
                                      _refers(tmpl, _PARAM_REF, params)):
            return True
        return any(t in s for s in _string_leaves(value) for t in texts)

    def walk(tmpl: Any, value: Any, path: list) -> Any:
        if isinstance(tmpl, dict) and isinstance(value, dict):
            return {k: walk(tmpl.get(k), v, path + [k]) for k, v in value.items()}
        if isinstance(tmpl, list) and isinstance(value, list) and len(tmpl) == len(value):
            return [walk(t, v, path + [i]) for i, (t, v) in enumerate(zip(tmpl, value))]
        if value is not None and path and is_secret(tmpl, value):
            found.append((_pointer(path), value))
            return dict(REDACTED)
        return value

    return walk(template, rendered, []), found


def split_pointer(pointer: str) -> list[str]:
    return [p.replace("~1", "/").replace("~0", "~") for p in pointer.lstrip("/").split("/")]


def restore(config: Any, secrets: Iterable[tuple[str, Any]]) -> Any:
    """A copy of `config` with each (pointer, plaintext) put back."""
    out = json.loads(json.dumps(config))
    for pointer, value in secrets:
        node = out
        parts = split_pointer(pointer)
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if isinstance(node, list) and part.isdigit() and int(part) < len(node):
                if last:
                    node[int(part)] = value
                node = node[int(part)]
            elif isinstance(node, dict) and part in node:
                if last:
                    node[part] = value
                node = node[part]
            else:
                break
    return out


# ------------------------------------------------------------------ execution_secret_value rows
def store(execute: Callable[[str, tuple], Any], encryption_key: str, entity_type: str,
          entity_id: int, secrets: Iterable[tuple[str, Any]], source_ref: str | None = None) -> int:
    """Persist the plaintexts encrypted, addressed by (entity, JSON pointer)."""
    n = 0
    for pointer, value in secrets:
        execute(
            "INSERT INTO execution_secret_value (entity_type, entity_id, json_path, source_kind,"
            " source_ref, encrypted_value, encryption_key_hash) VALUES (%s, %s, %s, 'keystore',"
            " %s, %s, %s) ON CONFLICT (entity_type, entity_id, json_path) DO UPDATE SET"
            " encrypted_value = EXCLUDED.encrypted_value,"
            " encryption_key_hash = EXCLUDED.encryption_key_hash",
            (entity_type, entity_id, pointer, source_ref,
             J(crypto.encrypt_value(encryption_key, value)), crypto.key_hash(encryption_key)))
        n += 1
    return n


def copy_rows(execute: Callable[[str, tuple], Any], from_type: str, from_id: int,
              to_type: str, to_id: int) -> None:
    """Give entity (to_type, to_id) the secret rows of (from_type, from_id)."""
    execute(
        "INSERT INTO execution_secret_value (entity_type, entity_id, json_path, source_kind,"
        " source_ref, encrypted_value, encryption_key_hash)"
        " SELECT %s, %s, json_path, source_kind, source_ref, encrypted_value, encryption_key_hash"
        " FROM execution_secret_value WHERE entity_type = %s AND entity_id = %s"
        " ON CONFLICT (entity_type, entity_id, json_path) DO NOTHING",
        (to_type, to_id, from_type, from_id))


def load_secrets(fetch_all: Callable[[str, tuple], list], encryption_key: str | None,
                 entity_type: str, entity_id: int) -> list[tuple[str, Any]]:
    """The decrypted (pointer, plaintext) pairs stored for an entity."""
    if not encryption_key:
        return []
    rows = fetch_all("SELECT json_path, encrypted_value, encryption_key_hash FROM"
                     " execution_secret_value WHERE entity_type = %s AND entity_id = %s ORDER BY id",
                     (entity_type, entity_id))
    out = []
    for row in rows:
        try:
            out.append((row["json_path"], crypto.decrypt_value(
                encryption_key, row["encrypted_value"], row.get("encryption_key_hash"))))
        except crypto.DecryptionError as exc:
            log.warning("secret %s of %s %s cannot be decrypted: %s", row["json_path"],
                        entity_type, entity_id, exc)
    return out
