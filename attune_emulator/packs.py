"""Pack directory loader, shared by the API (`/packs/register`, `/packs/upload`) and `bootstrap`.

`register_pack_dir` reads `<dir>/pack.yaml` and the component folders, in upstream's order
(permission_sets, runtimes, triggers, actions, rules, sensors; `*.yaml`/`*.yml` directly inside,
file-name order), plus standalone `workflows/*.yaml`. Every component is upserted by `ref`, so
database ids survive a re-register; afterwards the pack's non-ad-hoc components that no longer
appear in YAML are deleted. All of it runs in one transaction.

`safe_extract_pack_archive` unpacks an uploaded `.tar.gz` without following symlinks or leaving
the destination folder.
"""
from __future__ import annotations

import io
import logging
import os
import re
import shutil
import tarfile
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from .db import J

log = logging.getLogger(__name__)

RUNTIME_ALIASES = {
    "shell": "core.shell", "bash": "core.shell", "sh": "core.shell",
    "python": "core.python", "python3": "core.python",
    "node": "core.nodejs", "nodejs": "core.nodejs", "node.js": "core.nodejs",
    "native": "core.native", "builtin": "core.native", "standalone": "core.native",
}

MAX_ARCHIVE_ENTRIES = 10_000
MAX_ARCHIVE_BYTES = 100 * 1024 * 1024
MAX_ENTRY_BYTES = 50 * 1024 * 1024


class PackError(Exception):
    """A pack cannot be registered; `status` is the HTTP status the API answers with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message

    def __str__(self) -> str:
        return self.message


# ------------------------------------------------------------------ small helpers
def _yaml_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix.lower() in (".yaml", ".yml"))


def _load_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise PackError(400, f"Failed to parse {path.name}: {exc}") from exc


def _plain(value: Any) -> Any:
    """YAML values as JSON-compatible values (dates become ISO strings)."""
    import datetime as _dt
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (_dt.datetime, _dt.date)):
        return value.isoformat()
    return value


def _str(value: Any) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else str(value)


def _label_from_ref(ref: str) -> str:
    name = ref.split(".", 1)[-1]
    words = re.split(r"[_\-\s]+", name)
    return " ".join(w[:1].upper() + w[1:] for w in words if w) or ref


def _qualify(pack_ref: str, ref: Any) -> str | None:
    ref = _str(ref)
    if not ref:
        return None
    return ref if "." in ref else f"{pack_ref}.{ref}"


def _str_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value if v is not None]
    return []


def _obj_or_none(value: Any) -> Any:
    return None if value is None else _plain(value)


def resolve_runtime(cur, runner_type: str | None) -> dict | None:
    """Map a YAML `runner_type` to a runtime row: alias, then ref, then name (case-insensitive)."""
    if not runner_type:
        return None
    key = str(runner_type).strip()
    alias = RUNTIME_ALIASES.get(key.lower())
    candidates = [alias] if alias else []
    candidates.append(key)
    for ref in candidates:
        cur.execute("SELECT * FROM runtime WHERE ref = %s", (ref,))
        row = cur.fetchone()
        if row:
            return row
    cur.execute("SELECT * FROM runtime WHERE lower(name) = lower(%s) ORDER BY id LIMIT 1", (key,))
    row = cur.fetchone()
    if row:
        return row
    cur.execute("SELECT * FROM runtime WHERE aliases @> %s ORDER BY id LIMIT 1", (J([key.lower()]),))
    return cur.fetchone()


# ------------------------------------------------------------------ pack.yaml
def read_pack_yaml(path: Path) -> dict:
    """Parse `<path>/pack.yaml`; raises PackError(400) when absent or missing ref/version."""
    path = Path(path)
    if not path.is_dir():
        raise PackError(400, f"Pack directory does not exist: {path}")
    manifest = path / "pack.yaml"
    if not manifest.is_file():
        alt = path / "pack.yml"
        if not alt.is_file():
            raise PackError(400, f"pack.yaml not found in {path}")
        manifest = alt
    data = _load_yaml(manifest)
    if not isinstance(data, dict):
        raise PackError(400, "pack.yaml must be a mapping")
    if not data.get("ref"):
        raise PackError(400, "Missing 'ref' field in pack.yaml")
    if data.get("version") in (None, ""):
        raise PackError(400, "Missing 'version' field in pack.yaml")
    return data


def pack_fields(meta: dict) -> dict:
    """pack.yaml (either dialect) -> pack columns."""
    ref = str(meta["ref"])

    def first(*keys, default=None):
        for key in keys:
            if meta.get(key) is not None:
                return meta[key]
        return default

    return {
        "ref": ref,
        "label": _str(first("name", "label", default=ref)) or ref,
        "description": _str(meta.get("description")),
        "version": str(meta["version"]),
        "conf_schema": _plain(first("config_schema", "conf_schema", default={})),
        "config": _plain(meta.get("config")) if isinstance(meta.get("config"), dict) else None,
        "meta": _plain(first("metadata", "meta", default={})),
        "tags": _str_list(first("keywords", "tags", default=[])),
        "runtime_deps": _str_list(meta.get("runtime_deps")),
        "dependencies": _str_list(meta.get("dependencies")),
        "system": bool(meta.get("system", False)),
    }


# ------------------------------------------------------------------ the loader
class _Loader:
    def __init__(self, cur, pack: dict, pack_dir: Path, changes: list | None):
        self.cur = cur
        self.pack = pack
        self.pack_id = pack["id"]
        self.pack_ref = pack["ref"]
        self.dir = pack_dir
        self.changes = changes if changes is not None else []
        self.warnings: list[str] = []

    def warn(self, msg: str) -> None:
        log.warning("pack %s: %s", self.pack_ref, msg)
        self.warnings.append(msg)

    def docs(self, folder: str) -> list[tuple[Path, dict]]:
        out = []
        for path in _yaml_files(self.dir / folder):
            data = _load_yaml(path)
            if not isinstance(data, dict):
                self.warn(f"{folder}/{path.name} is not a mapping, skipping")
                continue
            out.append((path, data))
        return out

    def upsert(self, table: str, ref: str, fields: dict) -> int:
        cols = ["ref"] + list(fields)
        vals = [ref] + list(fields.values())
        updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in fields)
        self.cur.execute(
            f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join(['%s'] * len(cols))}) "
            f"ON CONFLICT (ref) DO UPDATE SET {updates} RETURNING id, (xmax = 0) AS inserted",
            vals)
        row = self.cur.fetchone()
        return row["id"]

    # -- permission sets
    def permission_sets(self) -> list[str]:
        refs = []
        for path, d in self.docs("permission_sets"):
            ref = _qualify(self.pack_ref, d.get("ref"))
            if not ref:
                self.warn(f"permission set {path.name} has no 'ref', skipping")
                continue
            self.upsert("permission_set", ref, {
                "pack": self.pack_id, "pack_ref": self.pack_ref,
                "label": _str(d.get("label")), "description": _str(d.get("description")),
                "grants": J(_plain(d.get("grants") or [])),
            })
            refs.append(ref)
        return refs

    # -- runtimes
    def runtimes(self) -> list[str]:
        refs = []
        for path, d in self.docs("runtimes"):
            ref = _str(d.get("ref"))
            if not ref:
                self.warn(f"runtime {path.name} has no 'ref', skipping")
                continue
            ref = _qualify(self.pack_ref, ref)
            self.upsert("runtime", ref, {
                "pack": self.pack_id, "pack_ref": self.pack_ref,
                "name": _str(d.get("name")) or ref.split(".", 1)[-1],
                "description": _str(d.get("description")),
                "aliases": J([str(a).lower() for a in _str_list(d.get("aliases"))]),
                "distributions": J(_plain(d.get("distributions") or {})),
                "installation": J(_obj_or_none(d.get("installation"))),
                "execution_config": J(_plain(d.get("execution_config") or {})),
            })
            refs.append(ref)
        return refs

    # -- triggers
    def triggers(self) -> list[str]:
        refs = []
        for path, d in self.docs("triggers"):
            ref = _qualify(self.pack_ref, d.get("ref"))
            if not ref:
                self.warn(f"trigger {path.name} has no 'ref', skipping")
                continue
            self.upsert("trigger", ref, {
                "pack": self.pack_id, "pack_ref": self.pack_ref,
                "label": _str(d.get("label")) or _label_from_ref(ref),
                "description": _str(d.get("description")),
                "enabled": bool(d.get("enabled", True)),
                "param_schema": J(_obj_or_none(d.get("parameters"))),
                "out_schema": J(_obj_or_none(d.get("output"))),
                "is_adhoc": False,
            })
            refs.append(ref)
        return refs

    # -- workflows
    def _workflow_def(self, ref: str, wf: dict, *, label: str | None, description: str | None,
                      param_schema: Any, out_schema: Any, tags: Any) -> int:
        version = _str(wf.get("version")) or self.pack["version"]
        return self.upsert("workflow_definition", ref, {
            "pack": self.pack_id, "pack_ref": self.pack_ref,
            "label": label or _str(wf.get("label")) or _label_from_ref(ref),
            "description": description if description is not None else _str(wf.get("description")),
            "version": version,
            "param_schema": J(_obj_or_none(param_schema)),
            "out_schema": J(_obj_or_none(out_schema)),
            "definition": J(_plain(wf)),
            "tags": J(_str_list(tags)),
        })

    def workflows(self) -> list[str]:
        """Standalone `workflows/*.yaml`: a definition plus a companion action of the same ref."""
        refs = []
        for path, wf in self.docs("workflows"):
            stem = path.name.rsplit(".", 1)[0]
            if stem.endswith(".workflow"):
                stem = stem[: -len(".workflow")]
            ref = _qualify(self.pack_ref, wf.get("ref") or stem)
            if not isinstance(wf.get("tasks"), list) or not wf.get("tasks"):
                self.warn(f"workflow {path.name} has no tasks, skipping")
                continue
            label = _str(wf.get("label")) or _label_from_ref(ref)
            wf_id = self._workflow_def(ref, wf, label=label, description=_str(wf.get("description")),
                                       param_schema=wf.get("parameters"),
                                       out_schema=wf.get("output"), tags=wf.get("tags"))
            self.upsert("action", ref, {
                "pack": self.pack_id, "pack_ref": self.pack_ref, "label": label,
                "description": _str(wf.get("description")), "entrypoint": "workflow",
                "runtime": None, "param_schema": J(_obj_or_none(wf.get("parameters"))),
                "out_schema": J(_obj_or_none(wf.get("output"))), "is_adhoc": False,
                "workflow_def": wf_id,
            })
            refs.append(ref)
        return refs

    # -- actions
    def actions(self) -> list[str]:
        refs = []
        actions_dir = self.dir / "actions"
        for path, d in self.docs("actions"):
            ref = _str(d.get("ref"))
            if not ref:
                self.warn(f"action {path.name} has no 'ref', skipping")
                continue
            ref = _qualify(self.pack_ref, ref)
            params = d.get("parameters")
            output = d.get("output")
            fields: dict[str, Any] = {
                "pack": self.pack_id, "pack_ref": self.pack_ref,
                "label": _str(d.get("label")) or _label_from_ref(ref),
                "description": _str(d.get("description")),
                "runtime_version_constraint": _str(d.get("runtime_version")),
                "param_schema": J(_obj_or_none(params)),
                "out_schema": J(_obj_or_none(output)),
                "is_adhoc": False,
                "parameter_delivery": _str(d.get("parameter_delivery")) or "stdin",
                "parameter_format": _str(d.get("parameter_format")) or "json",
                "output_format": _str(d.get("output_format")) or "text",
                "default_execution_permission_set_refs":
                    J(_str_list(d.get("default_execution_permission_set_refs"))),
                "accesses_mcp": bool(d.get("accesses_mcp", False)),
                "required_worker_runtimes": J(_plain(d.get("required_worker_runtimes") or {})),
                "worker_selector": J(_plain(d.get("worker_selector") or {})),
                "worker_tolerations": J(_plain(d.get("worker_tolerations") or [])),
                "worker_affinity": J(_obj_or_none(d.get("worker_affinity"))),
                "timeout_seconds": _positive_int(d.get("timeout")),
                "max_retries": _retry_count(d.get("retry")),
                "retry_policy": _retry_policy(ref, d.get("retry"), self.warn),  # extension E2
                "container": _container_spec(ref, d.get("container"), self.warn),  # extension E12
            }
            wf_file = _str(d.get("workflow_file"))
            if wf_file:
                wf_path = (actions_dir / wf_file).resolve()
                try:
                    wf_path.relative_to(self.dir.resolve())
                except ValueError:
                    self.warn(f"action {ref}: workflow_file escapes the pack, skipping")
                    continue
                if not wf_path.is_file():
                    self.warn(f"action {ref}: workflow file {wf_file} not found, skipping")
                    continue
                wf = _load_yaml(wf_path)
                if not isinstance(wf, dict):
                    self.warn(f"action {ref}: workflow file {wf_file} is not a mapping, skipping")
                    continue
                wf_id = self._workflow_def(
                    ref, wf, label=fields["label"], description=fields["description"],
                    param_schema=params if params is not None else wf.get("parameters"),
                    out_schema=output if output is not None else wf.get("output"),
                    tags=d.get("tags") if d.get("tags") is not None else wf.get("tags"))
                if params is None and wf.get("parameters") is not None:
                    fields["param_schema"] = J(_plain(wf.get("parameters")))
                if output is None and wf.get("output") is not None:
                    fields["out_schema"] = J(_plain(wf.get("output")))
                fields.update({"entrypoint": wf_file, "runtime": None, "workflow_def": wf_id})
            else:
                runner = _str(d.get("runner_type")) or "shell"
                runtime = resolve_runtime(self.cur, runner)
                if runtime is None:
                    self.warn(f"action {ref}: runtime '{runner}' not found")
                fields.update({"entrypoint": _str(d.get("entry_point")) or "",
                               "runtime": runtime["id"] if runtime else None,
                               "workflow_def": None})
            self.upsert("action", ref, fields)
            refs.append(ref)
        return refs

    # -- rules
    def rules(self) -> list[str]:
        refs = []
        for path, d in self.docs("rules"):
            ref = _qualify(self.pack_ref, d.get("ref"))
            if not ref:
                self.warn(f"rule {path.name} has no 'ref', skipping")
                continue
            trigger_ref = _qualify(self.pack_ref, d.get("trigger_ref") or d.get("trigger"))
            action_ref = _qualify(self.pack_ref, d.get("action_ref") or d.get("action"))
            self.cur.execute("SELECT id FROM trigger WHERE ref = %s", (trigger_ref,))
            trig = self.cur.fetchone()
            self.cur.execute("SELECT id FROM action WHERE ref = %s", (action_ref,))
            act = self.cur.fetchone()
            if not trig or not act:
                self.warn(f"rule {ref}: trigger '{trigger_ref}' or action '{action_ref}' not found, skipping")
                continue
            psr = d.get("permission_set_refs")
            self.cur.execute("SELECT id, enabled, trigger_ref, trigger_params FROM rule WHERE ref = %s",
                             (ref,))
            before = self.cur.fetchone()
            enabled = bool(d.get("enabled", True))
            trigger_params = _plain(d.get("trigger_params") or {})
            rule_id = self.upsert("rule", ref, {
                "pack": self.pack_id, "pack_ref": self.pack_ref,
                "label": _str(d.get("label")) or _label_from_ref(ref),
                "description": _str(d.get("description")),
                "action": act["id"], "action_ref": action_ref,
                "trigger": trig["id"], "trigger_ref": trigger_ref,
                "conditions": J(_plain(d.get("conditions") if d.get("conditions") is not None else {})),
                "action_params": J(_plain(d.get("action_params") or {})),
                "trigger_params": J(trigger_params),
                "permission_set_refs": J(None if psr is None else _str_list(psr)),
                "enabled": enabled,
                "is_adhoc": False,
                "notify_on_trigger": bool(d.get("notify_on_trigger", False)),  # extension E11
            })
            if before is None:
                self.changes.append(("rule.created", rule_id, ref, trigger_ref))
            elif (before["enabled"] != enabled or before["trigger_ref"] != trigger_ref
                  or before["trigger_params"] != trigger_params):
                self.changes.append(("rule.enabled" if enabled else "rule.disabled",
                                     rule_id, ref, trigger_ref))
            refs.append(ref)
        return refs

    # -- sensors
    def sensors(self) -> list[str]:
        refs = []
        for path, d in self.docs("sensors"):
            ref = _qualify(self.pack_ref, d.get("ref"))
            if not ref:
                self.warn(f"sensor {path.name} has no 'ref', skipping")
                continue
            runner = _str(d.get("runner_type")) or "native"
            runtime = resolve_runtime(self.cur, runner)
            if runtime is None:
                self.warn(f"sensor {ref}: runtime '{runner}' not found")
            trigger_types = _str_list(d.get("trigger_types"))
            if not trigger_types and d.get("trigger_type"):
                trigger_types = _str_list(d.get("trigger_type"))
            trigger_types = [_qualify(self.pack_ref, t) for t in trigger_types]
            sensor_id = self.upsert("sensor", ref, {
                "pack": self.pack_id, "pack_ref": self.pack_ref,
                "label": _str(d.get("label")) or _label_from_ref(ref),
                "description": _str(d.get("description")),
                "entrypoint": _str(d.get("entry_point")) or "",
                "runtime": runtime["id"] if runtime else None,
                "runtime_ref": runtime["ref"] if runtime else None,
                "trigger_types": J(trigger_types),
                "enabled": bool(d.get("enabled", True)),
                "param_schema": J(_obj_or_none(d.get("parameters"))),
                "config": J(_plain(d.get("config") or {})),
            })
            for tref in trigger_types:
                self.cur.execute("UPDATE trigger SET sensor = %s, sensor_ref = %s WHERE ref = %s",
                                 (sensor_id, ref, tref))
            refs.append(ref)
        return refs

    # -- cleanup
    def cleanup(self, kept: dict[str, list[str]]) -> None:
        p = self.pack_id
        c = self.cur
        c.execute("SELECT id, ref, trigger_ref FROM rule WHERE pack = %s AND NOT is_adhoc "
                  "AND NOT (ref = ANY(%s))", (p, kept["rule"]))
        for row in c.fetchall():
            self.changes.append(("rule.deleted", row["id"], row["ref"], row["trigger_ref"]))
        c.execute("DELETE FROM rule WHERE pack = %s AND NOT is_adhoc AND NOT (ref = ANY(%s))",
                  (p, kept["rule"]))
        c.execute("DELETE FROM sensor WHERE pack = %s AND NOT (ref = ANY(%s))", (p, kept["sensor"]))
        c.execute("DELETE FROM action WHERE pack = %s AND NOT is_adhoc AND NOT (ref = ANY(%s))",
                  (p, kept["action"]))
        c.execute("DELETE FROM workflow_definition w WHERE w.pack = %s AND NOT (w.ref = ANY(%s)) "
                  "AND w.ref = ANY(%s)", (p, kept["action"], kept["prev_file_workflows"]))
        c.execute("DELETE FROM trigger WHERE pack = %s AND NOT is_adhoc AND NOT (ref = ANY(%s))",
                  (p, kept["trigger"]))
        c.execute("DELETE FROM runtime WHERE pack = %s AND NOT (ref = ANY(%s))", (p, kept["runtime"]))
        c.execute("DELETE FROM permission_set WHERE pack = %s AND NOT (ref = ANY(%s))",
                  (p, kept["permission_set"]))


def _positive_int(value: Any) -> int | None:
    try:
        n = int(value)
    except (TypeError, ValueError):
        return None
    return n if n >= 1 else None


def _parsed_field(ref: str, value: Any, warn, parse, error: type, what: str) -> Any:
    """An action YAML object checked by its extension's parser, as stored in its JSONB column
    (None when absent; a malformed one is reported and ignored, as upstream's loader does)."""
    if value is None:
        return None
    try:
        parsed = parse(_plain(value))
    except error as exc:
        warn(f"action {ref}: {exc}; {what} ignored")
        return None
    return J(parsed) if parsed else None


def _retry_policy(ref: str, value: Any, warn) -> Any:
    """Extension E2: the YAML `retry:` object -> `action.retry_policy`."""
    from .executor.retries import RetryPolicyError, parse_policy
    return _parsed_field(ref, value, warn, parse_policy, RetryPolicyError, "retry policy")


def _container_spec(ref: str, value: Any, warn) -> Any:
    """Extension E12: the YAML `container:` object -> `action.container`."""
    from .worker.container import SpecError, parse_spec
    return _parsed_field(ref, value, warn, parse_spec, SpecError, "container configuration")


def _retry_count(value: Any) -> int | None:
    if isinstance(value, dict):
        return _positive_int(value.get("count"))
    return _positive_int(value)


def register_pack_dir(db, cfg, path, *, force: bool = False, skip_tests: bool = True,
                      is_standard: bool | None = None, installed_by: int | None = None,
                      storage_path: str | None = None, changes: list | None = None) -> dict:
    """Register (or, with `force`, re-register in place) the pack in directory `path`.

    Returns the pack row. `changes`, when given, receives `(routing_key, rule_id, rule_ref,
    trigger_ref)` tuples for rules created, toggled or removed, so the caller can publish the
    rule lifecycle messages after the commit.
    """
    del cfg, skip_tests  # pack tests are not run by this stack (the API reports tests_skipped)
    pack_dir = Path(path).resolve()
    fields = pack_fields(read_pack_yaml(pack_dir))
    ref = fields["ref"]
    standard = fields.pop("system") if is_standard is None else bool(is_standard)
    if is_standard is not None:
        fields.pop("system")
    config = fields.pop("config")
    local_changes: list = []
    with db.tx() as cur:
        cur.execute("SELECT * FROM pack WHERE ref = %s FOR UPDATE", (ref,))
        existing = cur.fetchone()
        if existing and not force:
            raise PackError(409, f"Pack '{ref}' already exists. Use force=true to reinstall.")
        values = {
            "label": fields["label"], "description": fields["description"],
            "version": fields["version"], "conf_schema": J(fields["conf_schema"] or {}),
            "meta": J(fields["meta"] or {}), "tags": J(fields["tags"]),
            "runtime_deps": J(fields["runtime_deps"]), "dependencies": J(fields["dependencies"]),
            "storage_path": storage_path or str(pack_dir),
        }
        if existing:
            values["is_standard"] = bool(existing["is_standard"]) or standard
            if config is not None:
                values["config"] = J(config)
            sets = ", ".join(f"{k} = %s" for k in values)
            cur.execute(f"UPDATE pack SET {sets} WHERE id = %s RETURNING *",
                        list(values.values()) + [existing["id"]])
        else:
            values.update({"ref": ref, "is_standard": standard, "installed_by": installed_by,
                           "config": J(config or {})})
            cur.execute(f"INSERT INTO pack ({', '.join(values)}) VALUES "
                        f"({', '.join(['%s'] * len(values))}) RETURNING *", list(values.values()))
        pack = cur.fetchone()
        cur.execute("SELECT w.ref FROM workflow_definition w JOIN action a ON a.workflow_def = w.id "
                    "WHERE w.pack = %s AND NOT a.is_adhoc", (pack["id"],))
        prev_wf = [r["ref"] for r in cur.fetchall()]
        loader = _Loader(cur, pack, pack_dir, local_changes)
        kept = {"permission_set": loader.permission_sets(), "runtime": loader.runtimes(),
                "trigger": loader.triggers()}
        kept["action"] = loader.workflows() + loader.actions()
        kept["rule"] = loader.rules()
        kept["sensor"] = loader.sensors()
        kept["prev_file_workflows"] = prev_wf
        if existing:
            loader.cleanup(kept)
        cur.execute("SELECT * FROM pack WHERE id = %s", (pack["id"],))
        pack = cur.fetchone()
    if changes is not None:
        changes.extend(local_changes)
    log.info("registered pack %s from %s (%d warnings)", ref, pack_dir, len(loader.warnings))
    return pack


# ------------------------------------------------------------------ archives
def safe_extract_pack_archive(data: bytes, dest_dir) -> Path:
    """Unpack a (gzipped) tar archive into `dest_dir` and return the folder holding pack.yaml.

    Rejects symlinks, hard links, devices, absolute paths and `..` components, more than 10 000
    entries, more than 100 MB in total or 50 MB in one file. `pack.yaml` must be at the archive
    root or inside exactly one top-level folder.
    """
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    try:
        tar = tarfile.open(fileobj=io.BytesIO(data), mode="r:*")
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise PackError(400, f"Invalid pack archive: {exc}") from exc
    with tar:
        members = []
        total = 0
        try:
            for member in tar:
                members.append(member)
                if len(members) > MAX_ARCHIVE_ENTRIES:
                    raise PackError(400, f"Pack archive has more than {MAX_ARCHIVE_ENTRIES} entries")
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise PackError(400, f"Invalid pack archive: {exc}") from exc
        plan = []
        for member in members:
            name = member.name
            parts = PurePosixPath(name).parts
            if name.startswith("/") or name.startswith("\\") or re.match(r"^[A-Za-z]:", name):
                raise PackError(400, f"Pack archive contains an absolute path: {name}")
            if any(p == ".." for p in parts) or "\\.." in name or "..\\" in name:
                raise PackError(400, f"Pack archive contains a path traversal entry: {name}")
            if member.issym() or member.islnk():
                raise PackError(400, f"Pack archive contains a link: {name}")
            if not (member.isfile() or member.isdir()):
                raise PackError(400, f"Pack archive contains an unsupported entry: {name}")
            clean = [p for p in parts if p not in (".", "")]
            if not clean:
                continue
            if member.isfile():
                if member.size > MAX_ENTRY_BYTES:
                    raise PackError(400, f"Pack archive entry too large: {name}")
                total += member.size
                if total > MAX_ARCHIVE_BYTES:
                    raise PackError(400, "Pack archive is too large")
            plan.append((member, clean))
        root = dest.resolve()
        for member, clean in plan:
            target = root.joinpath(*clean)
            try:
                target.resolve().relative_to(root)
            except ValueError as exc:
                raise PackError(400, f"Pack archive entry escapes the destination: {member.name}") from exc
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            src = tar.extractfile(member)
            if src is None:
                continue
            with src, open(target, "wb") as out:
                shutil.copyfileobj(src, out)
            mode = member.mode & 0o777
            os.chmod(target, (mode | 0o600) if mode else 0o644)
    if (root / "pack.yaml").is_file() or (root / "pack.yml").is_file():
        return root
    entries = [p for p in root.iterdir() if not p.name.startswith("._")]
    dirs = [p for p in entries if p.is_dir()]
    if len(dirs) == 1 and ((dirs[0] / "pack.yaml").is_file() or (dirs[0] / "pack.yml").is_file()):
        return dirs[0]
    raise PackError(400, "pack.yaml not found in archive (expected at the root or in one top-level directory)")
