"""The workflow engine (upstream behaviour: behavior.md section 4, inquiries section 5).

A workflow parent (an execution whose action has `workflow_def`) gets a `workflow_execution`
row and goes `scheduling -> running`. Its tasks become child executions (`parent` = the workflow
execution, `workflow_task` metadata); children are scheduled through the normal scheduler path
(`execution.requested`). On each child's `execution.completed` the engine, holding the
workflow_execution row lock (`SELECT ... FOR UPDATE`, so advancing is serialized per workflow):

  1. claims the completion (sets `workflow_task.completed_at` once; duplicates stop here);
  2. retries a failed task that has `retry` (new row, `original_execution`, delayed publish);
  3. for `with_items`, releases waiting items up to `concurrency` and waits for the whole batch;
  4. evaluates the task's transitions (`next`), applies `publish`, dispatches targets (`join`);
  5. when no child is left, completes the parent with the rendered `output_map` or fails it with
     "Workflow failed: N task(s) failed: a, b".

`core.ask` tasks create their inquiry directly: the child is `running` with
`result {"inquiry_id", "status": "pending"}` and no worker; `inquiry.responded` completes it.

Pure parts (definition parsing, transition selection, task views, retry delays) take no database
and can be used on their own.
"""
from __future__ import annotations

import copy
import datetime as _dt
import json
import logging
from typing import Any

import yaml

from .. import audit, expressions
from .. import keystore as keystore_mod
from ..db import J, iso, utcnow
from .common import ACTIVE, TERMINAL, Ctx

log = logging.getLogger(__name__)

ASK_ACTION = "core.ask"
OUTCOMES = {"completed": "succeeded", "failed": "failed", "cancelled": "failed",
            "abandoned": "failed", "timeout": "timed_out"}
RETRYABLE_STATUSES = ("failed", "timeout", "abandoned")


class WorkflowParseError(Exception):
    """The definition cannot run; the message says why."""


# ============================================================================ parsing (pure)

def _as_list(value: Any) -> list:
    if value is None:
        return []
    if isinstance(value, list):
        return value
    return [value]


def _publish_pairs(value: Any, where: str) -> list[list]:
    """`publish` as [[name, template], ...] from a list of maps, a map, or bare names."""
    pairs: list[list] = []
    if value is None:
        return pairs
    if isinstance(value, dict):
        return [[str(k), v] for k, v in value.items()]
    if not isinstance(value, list):
        raise WorkflowParseError(f"{where}: publish must be a list or a map")
    for entry in value:
        if isinstance(entry, dict):
            pairs.extend([str(k), v] for k, v in entry.items())
        elif isinstance(entry, str):
            pairs.append([entry, "{{ result() }}"])
        else:
            raise WorkflowParseError(f"{where}: invalid publish entry {entry!r}")
    return pairs


def _retry(value: Any, where: str) -> dict | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise WorkflowParseError(f"{where}: retry must be a map")
    try:
        count = int(value.get("count", 0))
    except (TypeError, ValueError):
        raise WorkflowParseError(f"{where}: retry.count must be an integer") from None
    if not 1 <= count <= 100:
        raise WorkflowParseError(f"{where}: retry.count must be between 1 and 100")
    backoff = str(value.get("backoff") or "constant").lower()
    if backoff not in ("constant", "linear", "exponential"):
        raise WorkflowParseError(f"{where}: retry.backoff must be constant, linear or exponential")
    try:
        delay = float(value.get("delay", 0) or 0)
        max_delay = value.get("max_delay")
        max_delay = float(max_delay) if max_delay is not None else None
    except (TypeError, ValueError):
        raise WorkflowParseError(f"{where}: retry.delay/max_delay must be numbers") from None
    return {"count": count, "delay": delay, "backoff": backoff, "max_delay": max_delay,
            "on_error": value.get("on_error")}


def _opt_int(value: Any, where: str, key: str, minimum: int = 0) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise WorkflowParseError(f"{where}: {key} must be an integer")
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise WorkflowParseError(f"{where}: {key} must be an integer") from None
    if n < minimum:
        raise WorkflowParseError(f"{where}: {key} must be >= {minimum}")
    return n


def parse_definition(definition: Any) -> dict:
    """Validate and normalise a workflow definition into a JSON-serialisable task graph."""
    if isinstance(definition, str):
        try:
            definition = yaml.safe_load(definition)
        except yaml.YAMLError as exc:
            raise WorkflowParseError(f"definition is not valid YAML: {exc}") from None
    if not isinstance(definition, dict):
        raise WorkflowParseError("definition must be a map")
    version = definition.get("version")
    if version is None or str(version).strip() == "":
        raise WorkflowParseError("missing required field 'version'")
    raw_vars = definition.get("vars")
    if raw_vars is None:
        raw_vars = {}
    if not isinstance(raw_vars, dict):
        raise WorkflowParseError("'vars' must be a map of initial values")
    raw_tasks = definition.get("tasks")
    if not isinstance(raw_tasks, list) or not raw_tasks:
        raise WorkflowParseError("'tasks' must be a non-empty list")
    output_map = definition.get("output_map") or {}
    if not isinstance(output_map, dict):
        raise WorkflowParseError("'output_map' must be a map")

    tasks: dict[str, dict] = {}
    order: list[str] = []
    for i, raw in enumerate(raw_tasks):
        if not isinstance(raw, dict):
            raise WorkflowParseError(f"task #{i} must be a map")
        name = raw.get("name")
        if not isinstance(name, str) or not name:
            raise WorkflowParseError(f"task #{i} has no name")
        if name in tasks:
            raise WorkflowParseError(f"duplicate task name '{name}'")
        where = f"task '{name}'"
        ttype = str(raw.get("type") or "action")
        action = raw.get("action")
        if ttype in ("action", "workflow") and not (isinstance(action, str) and action):
            raise WorkflowParseError(f"{where}: 'action' is required")
        task_input = raw.get("input") or {}
        if not isinstance(task_input, dict):
            raise WorkflowParseError(f"{where}: 'input' must be a map")
        transitions: list[dict] = []
        for j, tr in enumerate(_as_list(raw.get("next"))):
            if not isinstance(tr, dict):
                raise WorkflowParseError(f"{where}: next[{j}] must be a map")
            transitions.append({
                "when": tr.get("when"),
                "publish": _publish_pairs(tr.get("publish"), f"{where} next[{j}]"),
                "do": [str(d) for d in _as_list(tr.get("do"))],
            })
        legacy_publish = _publish_pairs(raw.get("publish"), where)
        legacy = [("on_success", "{{ succeeded() }}"), ("on_failure", "{{ failed() }}"),
                  ("on_complete", None), ("on_timeout", "{{ timed_out() }}")]
        for key, when in legacy:
            target = raw.get(key)
            if target is None:
                continue
            if not isinstance(target, str):
                raise WorkflowParseError(f"{where}: '{key}' must be a task name (string)")
            pub = legacy_publish if key in ("on_success", "on_complete") else []
            transitions.append({"when": when, "publish": pub, "do": [target]})
            if pub:
                legacy_publish = []
        for j, dec in enumerate(_as_list(raw.get("decision"))):
            if isinstance(dec, dict) and dec.get("do") is not None:
                transitions.append({"when": dec.get("when"), "publish": [],
                                    "do": [str(d) for d in _as_list(dec.get("do"))]})
        if legacy_publish:
            transitions.append({"when": "{{ succeeded() }}", "publish": legacy_publish, "do": []})
        concurrency = _opt_int(raw.get("concurrency"), where, "concurrency", 1)
        tasks[name] = {
            "name": name,
            "type": ttype,
            "action": action,
            "input": task_input,
            "next": transitions,
            "with_items": raw.get("with_items"),
            "concurrency": concurrency or 1,
            "retry": _retry(raw.get("retry"), where),
            "timeout": _opt_int(raw.get("timeout"), where, "timeout", 1),
            "join": _opt_int(raw.get("join"), where, "join", 1),
            "permission_set_refs": raw.get("permission_set_refs"),
        }
        order.append(name)

    targeted: set[str] = set()
    for task in tasks.values():
        for tr in task["next"]:
            for target in tr["do"]:
                if target not in tasks:
                    raise WorkflowParseError(
                        f"task '{task['name']}' transitions to unknown task '{target}'")
                targeted.add(target)
    entry = [n for n in order if n not in targeted] or [order[0]]
    return {"version": str(version), "vars": raw_vars, "parameters": definition.get("parameters"),
            "output_map": output_map, "tasks": tasks, "order": order, "entry": entry}


# ============================================================================ transitions (pure)

def transition_kind(when: Any) -> str:
    """'always', 'succeeded', 'failed', 'timed_out' or 'expression' (substring test, as upstream)."""
    if when is None or (isinstance(when, str) and not when.strip()):
        return "always"
    text = str(when)
    if "succeeded()" in text:
        return "succeeded"
    if "failed()" in text:
        return "failed"
    if "timed_out()" in text:
        return "timed_out"
    return "expression"


def outcome_functions(outcome: str, result_view: Any) -> dict:
    return {
        "result": lambda *_a: result_view,
        "succeeded": lambda *_a: outcome == "succeeded",
        "failed": lambda *_a: outcome == "failed",
        "timed_out": lambda *_a: outcome == "timed_out",
    }


def transition_fires(when: Any, outcome: str, context: dict, functions: dict | None = None) -> bool:
    kind = transition_kind(when)
    if kind == "always":
        return True
    if kind in ("succeeded", "failed", "timed_out"):
        return outcome == kind
    try:
        return expressions.truthy(expressions.evaluate(str(when), context, functions))
    except expressions.ExpressionError as exc:
        log.info("transition condition %r could not be evaluated (%s); treated as 'on success'",
                 when, exc)
        return outcome == "succeeded"


def next_tasks(definition: dict, task_name: str, outcome: str, context: dict,
               functions: dict | None = None) -> list[dict]:
    """The transitions of `task_name` that fire for `outcome` (in definition order)."""
    task = definition["tasks"][task_name]
    return [tr for tr in task["next"] if transition_fires(tr.get("when"), outcome, context, functions)]


def task_view(result: Any) -> Any:
    """The task's result as templates see it: `data` keys (or a JSON-object stdout) on top."""
    if not isinstance(result, dict):
        return result
    view = dict(result)
    data = result.get("data")
    if isinstance(data, dict):
        view.update(data)
    elif data is None and isinstance(result.get("stdout"), str):
        try:
            parsed = json.loads(result["stdout"])
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            view.update(parsed)
    return view


def retry_delay(retry: dict, attempt: int) -> float:
    """Delay before retry number `attempt` (1-based)."""
    delay = float(retry.get("delay") or 0)
    backoff = retry.get("backoff") or "constant"
    if backoff == "linear":
        delay = delay * attempt
    elif backoff == "exponential":
        delay = delay * (2 ** (attempt - 1))
    if retry.get("max_delay") is not None:
        delay = min(delay, float(retry["max_delay"]))
    return max(0.0, delay)


def apply_parameter_defaults(params: Any, *schemas: Any) -> dict:
    out = dict(params) if isinstance(params, dict) else {}
    for schema in schemas:
        if not isinstance(schema, dict):
            continue
        props = schema.get("properties") if isinstance(schema.get("properties"), dict) else schema
        for key, spec in props.items():
            if isinstance(spec, dict) and "default" in spec and key not in out:
                out[key] = copy.deepcopy(spec["default"])
    return out


def build_context(parameters: dict, variables: dict, task_results: dict,
                  system: dict | None = None, item: Any = None, index: int | None = None,
                  with_item: bool = False, keystore: dict | None = None) -> dict:
    ctx: dict = dict(variables)  # bare names fall back to workflow variables
    ctx.update({"parameters": parameters, "workflow": variables, "vars": variables,
                "variables": variables, "task": task_results, "tasks": task_results,
                "config": None, "keystore": keystore, "system": system or {}})
    if with_item:
        ctx["item"] = item
        ctx["index"] = index
    return ctx


# ============================================================================ engine (database)

class _Run:
    """One serialized step of a workflow, inside a transaction holding the workflow row lock."""

    def __init__(self, ctx: Ctx, cur, wf: dict, parent: dict):
        self.ctx = ctx
        self.cur = cur
        self.wf = wf
        self.parent = parent
        self.graph = wf["task_graph"]
        self.tasks = self.graph["tasks"]
        self.state = self.graph.setdefault("state", {})
        self.state.setdefault("joins", {})
        self.state.setdefault("batches", {})
        self.state.setdefault("task_errors", {})
        self.variables = dict(wf.get("variables") or {})
        self.completed = list(wf.get("completed_tasks") or [])
        self.failed = list(wf.get("failed_tasks") or [])
        self.messages: list[tuple] = []
        self.parameters = apply_parameter_defaults(parent.get("config"), self.graph.get("parameters"))
        self.system = {"workflow_start": iso(wf.get("created")) if wf.get("created") else None}
        self._results_cache: dict | None = None
        # E9 template_context: the workflow pack's keystore (loaded when a template uses it) and
        # the parent's own secret parameters (stored redacted in its config), restored here.
        self._keystore: keystore_mod.Keystore | None = None
        self._enc_key = ctx.cfg.get("security.encryption_key")
        parent_secrets = keystore_mod.load_secrets(self._fetch_all, self._enc_key, "execution",
                                                   parent["id"])
        self.secret_params = {keystore_mod.split_pointer(p)[0] for p, _ in parent_secrets}
        self.secret_texts = {v for _, v in parent_secrets if isinstance(v, str)}
        if parent_secrets:
            self.parameters = apply_parameter_defaults(
                keystore_mod.restore(parent.get("config"), parent_secrets),
                self.graph.get("parameters"))

    def _fetch_all(self, sql: str, params: tuple) -> list:
        self.cur.execute(sql, params)
        return list(self.cur.fetchall())

    def keystore(self) -> keystore_mod.Keystore | None:
        if self._keystore is None and keystore_mod.mentions_keystore(self.tasks):
            self.cur.execute("SELECT pack, pack_ref FROM action WHERE id = %s",
                             (self.parent.get("action"),))
            owner = self.cur.fetchone() or {}
            self._keystore = keystore_mod.load(self._fetch_all, self._enc_key, owner.get("pack"),
                                               owner.get("pack_ref"))
        return self._keystore

    def secure(self, template: Any, rendered: Any) -> tuple[Any, list]:
        """E9: `rendered` with secret values redacted, and the (pointer, plaintext) pairs."""
        return keystore_mod.redact(template, rendered, self._keystore, self.secret_params,
                                   self.secret_texts)

    # ---------------------------------------------------------------- context
    def task_results(self) -> dict:
        if self._results_cache is not None:
            return self._results_cache
        self.cur.execute(
            "SELECT id, status, result, workflow_task FROM execution WHERE parent = %s"
            " AND (workflow_task->>'workflow_execution')::bigint = %s ORDER BY id",
            (self.parent["id"], self.wf["id"]))
        rows = self.cur.fetchall()
        results: dict[str, Any] = {}
        batches: dict[str, dict] = {}
        for row in rows:
            if row["status"] not in TERMINAL:
                continue
            wt = row["workflow_task"] or {}
            name = wt.get("task_name")
            if wt.get("task_index") is not None:
                b = batches.setdefault(name, {"batch": None, "items": {}})
                batch = wt.get("task_batch")
                if b["batch"] != batch:
                    b["batch"] = batch
                    b["items"] = {}
                b["items"][wt["task_index"]] = task_view(row["result"])
            else:
                results[name] = task_view(row["result"])
        for name, b in batches.items():
            results[name] = [b["items"][i] for i in sorted(b["items"])]
        self._results_cache = results
        return results

    def context(self, **item) -> dict:
        ks = self.keystore()
        return build_context(self.parameters, self.variables, self.task_results(), self.system,
                             item=item.get("item"), index=item.get("index"),
                             with_item="item" in item,
                             keystore=ks.values if ks is not None else None)

    def save(self) -> None:
        self.cur.execute(
            "UPDATE workflow_execution SET task_graph = %s, variables = %s, completed_tasks = %s,"
            " failed_tasks = %s WHERE id = %s",
            (J(self.graph), J(self.variables), J(self.completed), J(self.failed), self.wf["id"]))

    # ---------------------------------------------------------------- dispatch
    def dispatch(self, name: str, triggered_by: str | None) -> None:
        task = self.tasks[name]
        if self.parent["status"] != "running":
            log.info("workflow %s: parent is %s; task %s not dispatched", self.parent["id"],
                     self.parent["status"], name)
            return
        join = task.get("join")
        if join:
            arrivals = self.state["joins"].setdefault(name, [])
            src = triggered_by or "<entry>"
            if src not in arrivals:
                arrivals.append(src)
            if len(arrivals) < join:
                log.info("workflow %s: task %s waits at join (%d/%d arrived: %s)",
                         self.parent["id"], name, len(arrivals), join, ", ".join(arrivals))
                return
            self.state["joins"][name] = []
            log.info("workflow %s: join for task %s satisfied (%d inbound)", self.parent["id"],
                     name, join)
        if not task.get("action"):
            log.info("workflow %s: task %s (type %s) has no action; completes at once",
                     self.parent["id"], name, task.get("type"))
            self.finish_task(name, "succeeded", {})
            return
        self.cur.execute("SELECT * FROM action WHERE ref = %s", (task["action"],))
        action = self.cur.fetchone()
        if action is None:
            self.fail_before_child(name, f"Action '{task['action']}' not found for task '{name}'")
            return
        ctx = self.context()
        if task.get("with_items") is not None:
            self._dispatch_items(task, action, ctx, triggered_by)
            return
        try:
            rendered = expressions.render(task.get("input") or {}, ctx)
        except expressions.ExpressionError as exc:
            self.fail_before_child(name, f"Template rendering failed for task '{name}': {exc}")
            return
        config, secrets = self.secure(task.get("input") or {}, rendered)
        inherited = not (isinstance(rendered, dict) and rendered)
        config = self.parent.get("config") if inherited else config
        self._create_child(task, action, config, triggered_by, None, None,
                           secrets=None if inherited else secrets)

    def _dispatch_items(self, task: dict, action: dict, ctx: dict, triggered_by: str | None) -> None:
        name = task["name"]
        try:
            items = expressions.render(task["with_items"], ctx)
            if not isinstance(items, list):
                items = [items]
            configs = []
            for i, item in enumerate(items):
                rendered = expressions.render(task.get("input") or {}, self.context(item=item, index=i))
                if isinstance(rendered, dict) and rendered:
                    configs.append(self.secure(task.get("input") or {}, rendered))
                else:
                    configs.append((self.parent.get("config"), None))
        except expressions.ExpressionError as exc:
            self.fail_before_child(name, f"Template rendering failed for task '{name}': {exc}")
            return
        batch = int(self.state["batches"].get(name, -1)) + 1
        self.state["batches"][name] = batch
        if not items:
            log.info("workflow %s: task %s with_items is empty; task completes with []",
                     self.parent["id"], name)
            self.finish_task(name, "succeeded", [])
            return
        concurrency = max(1, int(task.get("concurrency") or 1))
        ids = [self._create_child(task, action, cfg, triggered_by, i, batch, publish=False,
                                  secrets=secrets)
               for i, (cfg, secrets) in enumerate(configs)]
        for eid in ids[:concurrency]:
            self.messages.append(("execution_requested", eid))
        log.info("workflow %s: task %s with_items created %d item execution(s) %s, "
                 "concurrency %d (dispatched %s)", self.parent["id"], name, len(ids), ids,
                 concurrency, ids[:concurrency])

    def _create_child(self, task: dict, action: dict, config: Any, triggered_by: str | None,
                      index: int | None, batch: int | None, publish: bool = True,
                      retry_of: dict | None = None, secrets: list | None = None) -> int:
        """`secrets` (E9): the redacted parts of `config`; None means `config` is the parent's own
        (inherited, or a retry's copy of the failed attempt's), whose secret rows are copied."""
        retry = task.get("retry") or {}
        wt = {
            "workflow_execution": self.wf["id"],
            "task_name": task["name"],
            "triggered_by": triggered_by,
            "task_index": index,
            "task_batch": batch,
            "retry_count": 0,
            "max_retries": retry.get("count", 0) if retry else 0,
            "next_retry_at": None,
            "timeout_seconds": task.get("timeout"),
            "timed_out": False,
            "duration_ms": None,
            "started_at": None,
            "completed_at": None,
        }
        original = None
        retry_reason = None
        if retry_of is not None:
            wt.update(retry_of["workflow_task"])
        psr = task.get("permission_set_refs")
        if psr is None:
            psr = action.get("default_execution_permission_set_refs") or []
        is_ask = action["ref"] == ASK_ACTION
        if retry_of is not None:
            original = retry_of["original_execution"]
            retry_reason = retry_of["retry_reason"]
        self.cur.execute(
            "INSERT INTO execution (action, action_ref, config, env_vars, parent, enforcement,"
            " executor, status, permission_set_refs, workflow_task, workflow_def, retry_count,"
            " max_retries, original_execution, retry_reason, started_at)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s,"
            " CASE WHEN %s THEN now() END) RETURNING id",
            (action["id"], action["ref"], J(config), J(self.parent.get("env_vars")),
             self.parent["id"], self.parent.get("enforcement"), self.parent.get("executor"),
             "running" if is_ask else "requested", J(psr), J(wt), action.get("workflow_def"),
             wt["retry_count"], wt["max_retries"], original, retry_reason, is_ask))
        eid = self.cur.fetchone()["id"]
        self._results_cache = None
        # E6 execution_audit: the child, on the child's resource id.
        audit.record_execution(self.cur.execute, {"id": eid, "action_ref": action["ref"]},
                               audit.EXECUTION_WORKFLOW_CHILD_DISPATCHED, actor_login="executor",
                               actor_token_type="service",
                               details={"parent_execution": self.parent["id"],
                                        "task_name": task["name"],
                                        "task_index": wt.get("task_index")})
        if secrets:
            keystore_mod.store(self.cur.execute, self._enc_key, "execution", eid, secrets)
        elif secrets is None:
            source = (retry_of or {}).get("source_execution") or self.parent["id"]
            keystore_mod.copy_rows(self.cur.execute, "execution", source, "execution", eid)
        if is_ask:
            self._create_inquiry(eid, task, config)
            log.info("workflow %s: task %s dispatched as inquiry execution %s (triggered by %s)",
                     self.parent["id"], task["name"], eid, triggered_by or "<start>")
        else:
            if publish:
                self.messages.append(("execution_requested", eid))
            log.info("workflow %s: task %s dispatched as execution %s (%s, triggered by %s%s%s)",
                     self.parent["id"], task["name"], eid, action["ref"], triggered_by or "<start>",
                     f", item {index}" if index is not None else "",
                     f", retry {wt['retry_count']}" if wt["retry_count"] else "")
        return eid

    def _create_inquiry(self, eid: int, task: dict, config: Any) -> None:
        cfg = config if isinstance(config, dict) else {}
        prompt = cfg.get("prompt") or "Approval required"
        assigned = cfg.get("assigned_to")
        if assigned is not None:
            try:
                assigned = int(assigned)
                self.cur.execute("SELECT id FROM identity WHERE id = %s", (assigned,))
                if self.cur.fetchone() is None:
                    assigned = None
            except (TypeError, ValueError):
                assigned = None
        timeout = task.get("timeout")
        self.cur.execute(
            "INSERT INTO inquiry (execution, prompt, response_schema, assigned_to, status, timeout_at)"
            " VALUES (%s, %s, %s, %s, 'pending',"
            " CASE WHEN %s::int IS NULL THEN NULL ELSE now() + make_interval(secs => %s::int) END)"
            " RETURNING id",
            (eid, str(prompt), J(cfg.get("response_schema")), assigned, timeout, timeout))
        inquiry_id = self.cur.fetchone()["id"]
        self.cur.execute(
            "UPDATE execution SET result = %s,"
            " workflow_task = workflow_task || jsonb_build_object('started_at', %s::text)"
            " WHERE id = %s", (J({"inquiry_id": inquiry_id, "status": "pending"}),
                              iso(utcnow()), eid))
        log.info("inquiry %s created for execution %s (prompt %r, timeout %s)", inquiry_id, eid,
                 prompt, f"{timeout}s" if timeout else "none")

    def fail_before_child(self, name: str, message: str) -> None:
        log.warning("workflow %s: task %s failed before a child existed: %s", self.parent["id"],
                  name, message)
        self.state["task_errors"][name] = message
        if name not in self.failed:
            self.failed.append(name)

    # ---------------------------------------------------------------- completion
    def finish_task(self, name: str, outcome: str, result_view: Any) -> None:
        fns = outcome_functions(outcome, result_view)
        ctx = self.context()
        fired = next_tasks(self.graph, name, outcome, ctx, fns)
        targets: list[str] = []
        for tr in fired:
            for var, template in tr.get("publish") or []:
                try:
                    self.variables[var] = expressions.render(template, self.context(), fns)
                    log.info("workflow %s: task %s published %s = %s", self.parent["id"], name,
                             var, json.dumps(self.variables[var], default=str)[:200])
                except expressions.ExpressionError as exc:
                    log.warning("workflow %s: task %s: publish of %s failed: %s",
                              self.parent["id"], name, var, exc)
            targets.extend(tr.get("do") or [])
        log.info("workflow %s: task %s %s; %d transition(s) fired -> %s", self.parent["id"], name,
                 outcome, len(fired), targets or "nothing")
        if outcome == "succeeded":
            if name not in self.completed:
                self.completed.append(name)
        elif targets:
            log.info("workflow %s: failure of task %s handled by transition(s) to %s",
                     self.parent["id"], name, targets)
            if name not in self.completed:
                self.completed.append(name)
        else:
            log.info("workflow %s: task %s %s with no handling transition", self.parent["id"],
                     name, outcome)
            if name not in self.failed:
                self.failed.append(name)
        for target in targets:
            self.dispatch(target, name)

    def child_finished(self, child: dict) -> None:
        wt = child.get("workflow_task") or {}
        name = wt.get("task_name")
        task = self.tasks.get(name)
        if task is None:
            log.warning("workflow %s: child %s names unknown task %r", self.parent["id"],
                        child["id"], name)
            return
        outcome = OUTCOMES.get(child["status"], "failed")
        log.info("workflow %s: child %s (task %s%s) finished %s", self.parent["id"], child["id"],
                 name, f" item {wt['task_index']}" if wt.get("task_index") is not None else "",
                 child["status"])
        if self.parent["status"] != "running":
            log.info("workflow %s: parent is %s; not advancing", self.parent["id"],
                     self.parent["status"])
            return
        retry = task.get("retry")
        if (retry and child["status"] in RETRYABLE_STATUSES
                and int(wt.get("retry_count") or 0) < int(retry["count"])):
            self._retry(task, child)
            return
        if task.get("with_items") is not None and wt.get("task_index") is not None:
            self._item_finished(task, child)
            return
        self.finish_task(name, outcome, task_view(child.get("result")))

    def _retry(self, task: dict, child: dict) -> None:
        wt = dict(child["workflow_task"])
        attempt = int(wt.get("retry_count") or 0) + 1
        delay = retry_delay(task["retry"], attempt)
        due = utcnow() + _dt.timedelta(seconds=delay)
        new_wt = {"retry_count": attempt, "max_retries": task["retry"]["count"],
                  "next_retry_at": iso(due), "task_index": wt.get("task_index"),
                  "task_batch": wt.get("task_batch"), "triggered_by": wt.get("triggered_by")}
        self.cur.execute("SELECT * FROM action WHERE ref = %s", (child["action_ref"],))
        action = self.cur.fetchone()
        if action is None:
            self.finish_task(task["name"], OUTCOMES.get(child["status"], "failed"),
                             task_view(child.get("result")))
            return
        eid = self._create_child(
            task, action, child.get("config"), wt.get("triggered_by"), wt.get("task_index"),
            wt.get("task_batch"), publish=False,
            retry_of={"workflow_task": new_wt,
                      "original_execution": child.get("original_execution") or child["id"],
                      "retry_reason": child["status"], "source_execution": child["id"]})
        log.info("workflow %s: task %s attempt %d (execution %s) %s; retry %d/%d as execution %s "
                 "in %.2fs (%s backoff)", self.parent["id"], task["name"], attempt, child["id"],
                 child["status"], attempt, task["retry"]["count"], eid, delay,
                 task["retry"]["backoff"])
        self.messages.append(("_delayed_request", eid, delay))

    def _item_finished(self, task: dict, child: dict) -> None:
        name = task["name"]
        wt = child["workflow_task"]
        self.cur.execute(
            "SELECT id, status, result, workflow_task FROM execution WHERE parent = %s"
            " AND workflow_task->>'task_name' = %s"
            " AND COALESCE(workflow_task->>'task_batch', '') = COALESCE(%s, '')"
            " ORDER BY (workflow_task->>'task_index')::int, id",
            (self.parent["id"], name,
             None if wt.get("task_batch") is None else str(wt.get("task_batch"))))
        rows = self.cur.fetchall()
        concurrency = max(1, int(task.get("concurrency") or 1))
        active = sum(1 for r in rows if r["status"] in ACTIVE)
        waiting = [r["id"] for r in rows if r["status"] == "requested"]
        release = waiting[:max(0, concurrency - active)]
        for eid in release:
            self.messages.append(("execution_requested", eid))
        if release:
            log.info("workflow %s: task %s released waiting item execution(s) %s (%d active, "
                     "concurrency %d)", self.parent["id"], name, release, active, concurrency)
        latest: dict[int, dict] = {}
        for r in rows:
            latest[int(r["workflow_task"]["task_index"])] = r
        pending = [r["id"] for r in latest.values()
                   if r["status"] not in TERMINAL or not (r["workflow_task"] or {}).get("completed_at")]
        if pending:
            return
        items = [latest[i] for i in sorted(latest)]
        statuses = [r["status"] for r in items]
        if all(s == "completed" for s in statuses):
            outcome = "succeeded"
        elif all(s in ("completed", "timeout") for s in statuses):
            outcome = "timed_out"
        else:
            outcome = "failed"
        log.info("workflow %s: task %s: all %d item(s) done (%s)", self.parent["id"], name,
                 len(items), ", ".join(statuses))
        self.finish_task(name, outcome, [task_view(r["result"]) for r in items])

    def check_completion(self) -> None:
        self.cur.execute(
            "SELECT count(*) AS n FROM execution WHERE parent = %s AND"
            " (status NOT IN ('completed', 'failed', 'timeout', 'cancelled', 'abandoned')"
            "  OR (workflow_task IS NOT NULL AND workflow_task->>'completed_at' IS NULL))",
            (self.parent["id"],))
        remaining = self.cur.fetchone()["n"]
        if remaining:
            return
        pid = self.parent["id"]
        if self.parent["status"] == "canceling":
            self.cur.execute("UPDATE execution SET status = 'cancelled' WHERE id = %s"
                             " AND status = 'canceling' RETURNING id", (pid,))
            if self.cur.fetchone() is None:
                return
            self.cur.execute("UPDATE workflow_execution SET status = 'cancelled' WHERE id = %s"
                             " AND NOT (status = ANY(%s::execution_status_enum[]))",
                             (self.wf["id"], list(TERMINAL)))
            self.messages.append(("execution_completed", pid, "cancelled"))
            log.info("workflow %s cancelled (no child left running)", pid)
            return
        if self.parent["status"] != "running":
            return
        if self.failed:
            result: dict = {"error": f"Workflow failed: {len(self.failed)} task(s) failed: "
                                     f"{', '.join(self.failed)}", "succeeded": False}
            errors = {k: v for k, v in self.state["task_errors"].items() if k in self.failed}
            if errors:
                result["task_errors"] = errors
            status = "failed"
        else:
            result = {}
            ctx = self.context()
            for key, template in (self.graph.get("output_map") or {}).items():
                try:
                    result[key] = expressions.render(template, ctx)
                except expressions.ExpressionError as exc:
                    log.warning("workflow %s: output_map %s could not be rendered: %s", pid, key, exc)
                    result[key] = None
            result["succeeded"] = True
            status = "completed"
        self.cur.execute("UPDATE execution SET status = %s, result = %s WHERE id = %s"
                         " AND status = 'running' RETURNING id", (status, J(result), pid))
        if self.cur.fetchone() is None:  # cancelled meanwhile: the decided status stands
            log.info("workflow %s is no longer running; not marking it %s", pid, status)
            return
        self.cur.execute("UPDATE workflow_execution SET status = %s WHERE id = %s"
                         " AND status = 'running'", (status, self.wf["id"]))
        self.parent["status"] = status
        self.messages.append(("execution_completed", pid, status))
        if status == "completed":
            log.info("workflow %s completed (tasks: %s)", pid, ", ".join(self.completed) or "none")
        else:
            log.info("workflow %s failed: %s", pid, result["error"])


def _flush(ctx: Ctx, messages: list[tuple]) -> None:
    plain = []
    for msg in messages:
        if msg[0] == "_delayed_request":
            eid, delay = msg[1], msg[2]
            ctx.after(delay, lambda eid=eid: ctx.execution_requested(eid), name=f"retry-{eid}")
        else:
            plain.append(msg)
    ctx.flush(plain)


def start_workflow(ctx: Ctx, execution_id: int) -> None:
    """Start the workflow of a claimed (`scheduling`) execution."""
    messages: list[tuple] = []
    with ctx.db.tx() as cur:
        cur.execute("SELECT * FROM execution WHERE id = %s FOR UPDATE", (execution_id,))
        parent = cur.fetchone()
        if parent is None or parent["status"] != "scheduling":
            log.info("workflow execution %s is %s; not starting", execution_id,
                     parent and parent["status"])
            return
        cur.execute("SELECT * FROM workflow_definition WHERE id = %s", (parent["workflow_def"],))
        wdef = cur.fetchone()
        try:
            if wdef is None:
                raise WorkflowParseError(f"workflow definition {parent['workflow_def']} not found")
            graph = parse_definition(wdef["definition"])
        except WorkflowParseError as exc:
            cur.execute("UPDATE execution SET status = 'failed', result = %s WHERE id = %s",
                        (J({"error": f"Invalid workflow definition: {exc}", "succeeded": False}),
                         execution_id))
            messages.append(("execution_completed", execution_id, "failed"))
            log.warning("workflow execution %s (%s) failed: invalid definition: %s", execution_id,
                      parent["action_ref"], exc)
            graph = None
        if graph is not None:
            if wdef.get("param_schema") and not graph.get("parameters"):
                graph["parameters"] = wdef["param_schema"]
            params = apply_parameter_defaults(parent.get("config"), graph.get("parameters"))
            variables = {}
            for key, value in (graph.get("vars") or {}).items():
                try:
                    variables[key] = expressions.render(value, build_context(params, variables, {}))
                except expressions.ExpressionError as exc:
                    log.warning("workflow %s: initial var %s not rendered (%s); kept as written",
                                execution_id, key, exc)
                    variables[key] = value
            cur.execute(
                "INSERT INTO workflow_execution (execution, workflow_def, task_graph, variables,"
                " status) VALUES (%s, %s, %s, %s, 'running') ON CONFLICT (execution) DO NOTHING"
                " RETURNING *", (execution_id, wdef["id"], J(graph), J(variables)))
            wf = cur.fetchone()
            if wf is None:
                log.info("workflow execution %s already has its workflow_execution row", execution_id)
                cur.execute("UPDATE execution SET status = 'running' WHERE id = %s", (execution_id,))
                return
            cur.execute("UPDATE execution SET status = 'running', started_at = COALESCE(started_at,"
                        " now()) WHERE id = %s RETURNING *", (execution_id,))
            parent = cur.fetchone()
            log.info("workflow %s (%s) started: workflow_execution %s, entry task(s) %s",
                     execution_id, parent["action_ref"], wf["id"], ", ".join(graph["entry"]))
            run = _Run(ctx, cur, wf, parent)
            for name in graph["entry"]:
                run.dispatch(name, None)
            run.check_completion()
            run.save()
            messages.extend(run.messages)
    _flush(ctx, messages)


def handle_execution_completed(ctx: Ctx, body: dict, peek: dict | None = None) -> None:
    """`peek`: the execution's `id, parent, status, workflow_task` when already read."""
    eid = body.get("execution_id")
    child = peek if peek is not None else ctx.db.one(
        "SELECT id, parent, status, workflow_task FROM execution WHERE id = %s", (eid,))
    if child is None:
        log.warning("execution.completed for unknown execution %s", eid)
        return
    wt = child.get("workflow_task") or {}
    if child["parent"] is None or not wt.get("workflow_execution"):
        log.debug("execution %s (%s) is not a workflow task; nothing to advance", eid, child["status"])
        return
    messages: list[tuple] = []
    with ctx.db.tx() as cur:
        cur.execute("SELECT * FROM workflow_execution WHERE id = %s FOR UPDATE",
                    (wt["workflow_execution"],))
        wf = cur.fetchone()
        if wf is None:
            log.warning("execution %s: workflow_execution %s not found", eid, wt["workflow_execution"])
            return
        cur.execute("SELECT * FROM execution WHERE id = %s", (eid,))
        child = cur.fetchone()
        if child["status"] not in TERMINAL:
            log.info("execution %s is %s, not terminal; completion ignored", eid, child["status"])
            return
        started = child.get("started_at")
        cur.execute(
            "UPDATE execution SET workflow_task = workflow_task || jsonb_build_object("
            " 'completed_at', %s::text, 'duration_ms', %s::bigint,"
            " 'started_at', COALESCE(workflow_task->>'started_at', %s::text))"
            " WHERE id = %s AND workflow_task->>'completed_at' IS NULL RETURNING *",
            (iso(utcnow()),
             int((utcnow() - started).total_seconds() * 1000) if started else None,
             iso(started) if started else None, eid))
        claimed = cur.fetchone()
        if claimed is None:
            log.info("execution %s completion already processed (duplicate delivery); skipped", eid)
            return
        cur.execute("SELECT * FROM execution WHERE id = %s FOR UPDATE", (child["parent"],))
        parent = cur.fetchone()
        run = _Run(ctx, cur, wf, parent)
        run.child_finished(claimed)
        run.check_completion()
        run.save()
        messages.extend(run.messages)
    _flush(ctx, messages)


def handle_inquiry_responded(ctx: Ctx, body: dict) -> None:
    inquiry_id = body.get("inquiry_id")
    inquiry = ctx.db.one("SELECT * FROM inquiry WHERE id = %s", (inquiry_id,))
    if inquiry is None:
        log.warning("inquiry.responded for unknown inquiry %s", inquiry_id)
        return
    if inquiry["status"] != "responded":
        log.info("inquiry %s is %s, not responded; ignored", inquiry_id, inquiry["status"])
        return
    row = ctx.db.one(
        "UPDATE execution SET status = 'completed', result = %s WHERE id = %s"
        " AND status NOT IN ('completed') AND NOT (COALESCE(result, '{}'::jsonb) ? '__inquiry_id')"
        " RETURNING id",
        (J({"response": inquiry.get("response"), "__inquiry_id": inquiry_id,
            "__inquiry_created_published": True}), inquiry["execution"]))
    if row is None:
        log.info("inquiry %s: execution %s already resolved; skipped", inquiry_id, inquiry["execution"])
        return
    log.info("inquiry %s responded: execution %s completed", inquiry_id, inquiry["execution"])
    ctx.execution_completed(inquiry["execution"], "completed")
