"""Parameter documents and their delivery formats (pure functions, no I/O).

Upstream reference: `crates/worker/src/runtime/parameter_passing.rs` and the shell runtime's inline
script wrapper. The document handed to an action is the execution's `config` with the ambient keys
(system, then pack-owned, then action-owned; later wins) merged on top under each key's `name`.
"""
from __future__ import annotations

import json
from typing import Any, Iterable, Mapping

import yaml

DELIVERIES = ("stdin", "file")
FORMATS = ("json", "dotenv", "yaml")


def merge_document(config: Any, ambient: Iterable[tuple[str, Any]]) -> dict:
    """`execution.config` (an object, else ignored) with ambient `(name, value)` pairs on top."""
    doc: dict = dict(config) if isinstance(config, Mapping) else {}
    for name, value in ambient:
        doc[name] = value
    return doc


def json_text(value: Any) -> str:
    """Compact JSON as serde_json writes it (no spaces, non-ASCII kept)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _scalar_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return json_text(value)
    return json_text(value)


def flatten(doc: Mapping, prefix: str = "") -> dict[str, str]:
    """Nested objects become dotted keys; arrays become JSON text; null becomes ''."""
    out: dict[str, str] = {}
    for key, value in doc.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out.update(flatten(value, full))
        elif isinstance(value, (list, tuple)):
            out[full] = json_text(list(value))
        else:
            out[full] = _scalar_text(value)
    return out


def shell_single_quote(text: str) -> str:
    """'text' with embedded single quotes written as '\\''."""
    return "'" + text.replace("'", "'\\''") + "'"


def render_dotenv(doc: Mapping) -> str:
    """One `key='value'` line per flattened key, lines sorted, joined by newlines (no final one)."""
    lines = [f"{key}={shell_single_quote(value)}" for key, value in flatten(doc).items()]
    lines.sort()
    return "\n".join(lines)


def render_json(doc: Mapping) -> str:
    return json_text(doc)


def render_yaml(doc: Mapping) -> str:
    return yaml.safe_dump(dict(doc), sort_keys=False, allow_unicode=True, default_flow_style=False)


def render(doc: Mapping, fmt: str) -> str:
    fmt = (fmt or "json").lower()
    if fmt == "dotenv":
        return render_dotenv(doc)
    if fmt == "yaml":
        return render_yaml(doc)
    return render_json(doc)


def stdin_payload(doc: Mapping, fmt: str) -> bytes:
    """What goes to the action's stdin: the rendered document plus one newline."""
    return (render(doc, fmt) + "\n").encode("utf-8")


def split_json_path(path: str) -> list[str]:
    """`/a/b` (JSON pointer), `$.a.b` or `a.b` -> ["a", "b"]."""
    text = str(path or "").strip()
    if text.startswith("/"):
        return [p.replace("~1", "/").replace("~0", "~") for p in text[1:].split("/")]
    if text.startswith("$"):
        text = text[1:].lstrip(".")
    return [p for p in text.split(".") if p]


def set_path(doc: Any, path: list[str], value: Any) -> None:
    """Set `value` at `path` inside nested objects/arrays (missing objects are created)."""
    node = doc
    for i, key in enumerate(path):
        last = i == len(path) - 1
        if isinstance(node, list):
            try:
                idx = int(key)
            except ValueError:
                return
            if not 0 <= idx < len(node):
                return
            if last:
                node[idx] = value
                return
            node = node[idx]
        elif isinstance(node, dict):
            if last:
                node[key] = value
                return
            if not isinstance(node.get(key), (dict, list)):
                node[key] = {}
            node = node[key]
        else:
            return


# ------------------------------------------------------------------ inline (ad-hoc) shell scripts
def _shell_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return json_text(value)
    return json_text(value)


def _valid_shell_name(name: str) -> bool:
    return bool(name) and (name[0].isalpha() or name[0] == "_") and all(
        c.isalnum() or c == "_" for c in name) and name.isascii()


def build_inline_script(code: str, params: Mapping) -> str:
    """The temp script for an ad-hoc shell action: `#!/bin/bash`, `set -e`, each parameter as the
    non-exported variables `PARAM_<UPPER>` and `<name>` (non-scalars as JSON), then the code."""
    lines = ["#!/bin/bash", "set -e", ""]
    for name in params:
        value = shell_single_quote(_shell_value(params[name]))
        upper = "".join(c if c.isalnum() or c == "_" else "_" for c in str(name)).upper()
        if _valid_shell_name("PARAM_" + upper):
            lines.append(f"PARAM_{upper}={value}")
        if _valid_shell_name(str(name)):
            lines.append(f"{name}={value}")
    lines.append("")
    lines.append(code if code.endswith("\n") else code + "\n")
    return "\n".join(lines)


def is_inline_shell(action: Mapping, runtime_name: str | None) -> bool:
    """Ad-hoc actions outside `core*` packs on the shell runtime carry script text as entrypoint."""
    pack_ref = str(action.get("pack_ref") or "")
    return bool(action.get("is_adhoc")) and not pack_ref.startswith("core") and \
        (runtime_name or "").lower() == "shell"
