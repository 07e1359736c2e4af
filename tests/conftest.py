"""Suite wiring: target selection, the embedded stack, clients, users, factories, cleanup.

- In the xdist master (or a plain run) that selects e2e tests and has no ATTUNE_API_URL, the
  embedded stack is started once (EmbeddedStack.up) and described to the workers through the
  ATTUNE_E2E_STACK environment variable; it is stopped at session end unless --keep-stack.
- Fixtures hand tests an admin client, unique ids, the session's fixture pack, factories with
  LIFO cleanup, an SSE recorder, notifier listeners, a database probe and the service manager.
"""
from __future__ import annotations

import json
import logging
import os
import secrets
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import pytest

from tests.helpers import report as report_plugin
from tests.helpers.cleanup import CleanupStack
from tests.helpers.client import AttuneClient
from tests.helpers.notifier import NotifierListener
from tests.helpers.packs import build_pack_archive
from tests.helpers.sse import ExecutionStream
from tests.helpers.target import STACK_ENV, Target, external_api_url, resolve_target

log = logging.getLogger("attune-e2e")

ROOT = Path(__file__).resolve().parent.parent
E2E_DIR = ROOT / "tests" / "e2e"
FIXTURE_PACKS = ROOT / "tests" / "fixtures" / "packs"
# A private stack (own ports, state and reports) for parallel development: point these at a copy
# of config.e2e.yaml with other ports. Relative paths are taken from the repository root.
CONFIG_FILE = os.environ.get("ATTUNE_E2E_CONFIG", "config.e2e.yaml")
STATE_DIR = os.environ.get("ATTUNE_E2E_STATE_DIR", ".state")
REPORTS_DIR = os.environ.get("ATTUNE_E2E_REPORTS_DIR", "reports")
WORKERS_ENV = "ATTUNE_E2E_WORKERS"


# =========================================================================== options, markers
def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("attune-e2e")
    group.addoption("--keep-stack", action="store_true", default=False,
                    help="leave the embedded stack running after the session (prints its URLs)")
    group.addoption("--target-url", action="store", default=None, dest="target_url",
                    help="API URL of an external Attune (alias of ATTUNE_API_URL); starts nothing")
    group.addoption("--run-extension-tests-on-live", action="store_true", default=False,
                    help="on external targets, run needs_extension tests as non-strict xfail "
                         "instead of skipping them")


def _is_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def _selects_e2e(config: pytest.Config) -> bool:
    """Whether the command line's paths reach tests/e2e (so the stack is needed)."""
    from tests.helpers.report import selects_e2e

    return selects_e2e(config)


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config) -> None:
    """Pick a worker count when the user gave no -n: tests mostly wait on I/O."""
    if not config.pluginmanager.hasplugin("xdist") or _is_worker(config):
        return
    if getattr(config.option, "numprocesses", None) is not None:
        return
    if config.getoption("collectonly", False) or config.getoption("usepdb", False):
        return
    if not _selects_e2e(config):
        return
    wanted = os.environ.get(WORKERS_ENV)
    if wanted is not None:
        count = int(wanted)
    else:
        count = min(8, max(4, 2 * (os.cpu_count() or 1)))
    config.option.numprocesses = count


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Service-control tests share the "services" xdist group unless they name another one.
    Timer tests share "timers" because upstream restarts every timer whenever any timer rule
    changes (behavior.md §15); on a target advertising `timer_isolation` each timer module gets a
    group of its own instead, so they run in parallel (the suite's longest chain otherwise)."""
    for item in items:
        if item.get_closest_marker("xdist_group") is not None:
            continue
        if item.get_closest_marker("service_control") is not None:
            item.add_marker(pytest.mark.xdist_group("services"))
        elif item.get_closest_marker("timer") is not None and \
                item.get_closest_marker("serial") is not None:
            item.add_marker(pytest.mark.xdist_group("timers"))
    isolated = None
    for item in items:
        group = item.get_closest_marker("xdist_group")
        if group is not None and group.args and group.args[0] == "timers":
            if isolated is None:
                isolated = "timer_isolation" in _target_extensions(_session_target(config))
            if isolated:
                item.add_marker(pytest.mark.xdist_group(f"timers:{item.module.__name__}"))
    _long_work_first(items)


def _long_work_first(items: list[pytest.Item]) -> None:
    """xdist hands out work in collection order, so a long chain collected late starts late and
    the run waits for it: put `slow` tests (and every test of an xdist group holding one) first,
    then the other groups, then the rest; stable, so each module keeps its order."""
    def group(item):
        mark = item.get_closest_marker("xdist_group")
        return mark.args[0] if mark is not None and mark.args else None

    slow_groups = {group(i) for i in items if i.get_closest_marker("slow") is not None} - {None}

    def rank(item) -> int:
        g = group(item)
        if g in slow_groups or (g is None and item.get_closest_marker("slow") is not None):
            return 0
        return 1 if g is not None else 2

    items.sort(key=rank)


# =========================================================================== embedded stack
_STACK: dict[str, Any] = {}


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    config = session.config
    if _is_worker(config) or config.getoption("collectonly", False):
        return
    target_url = config.getoption("target_url")
    if target_url:
        os.environ["ATTUNE_API_URL"] = target_url  # workers and helpers read the environment
    if external_api_url(config) or os.environ.get(STACK_ENV) or not _selects_e2e(config):
        return
    from tests.helpers.stack import EmbeddedStack  # written by the stack helper

    tr = config.pluginmanager.get_plugin("terminalreporter")
    say = tr.write_line if tr is not None else print
    say(f"attune-e2e: starting the embedded stack ({CONFIG_FILE}) ...")
    stack = EmbeddedStack(str(ROOT / CONFIG_FILE), str(ROOT / STATE_DIR), str(ROOT / REPORTS_DIR))
    started = time.monotonic()
    try:
        info = stack.up()
    except BaseException as exc:
        try:
            stack.down()
        except Exception:
            pass
        pytest.exit(f"embedded stack failed to start: {type(exc).__name__}: {exc} "
                    f"(see {REPORTS_DIR}/ and {STATE_DIR}/ for logs)", returncode=3)
    elapsed = time.monotonic() - started
    info = dict(info)
    info.setdefault("config_path", str(ROOT / CONFIG_FILE))
    info.setdefault("state_dir", str(ROOT / STATE_DIR))
    _STACK.update(stack=stack, info=info)
    os.environ[STACK_ENV] = json.dumps(info, default=str)
    os.environ[report_plugin.STACK_START_ENV] = f"{elapsed:.3f}"
    reports = ROOT / REPORTS_DIR
    reports.mkdir(parents=True, exist_ok=True)
    (reports / "stack.json").write_text(json.dumps(
        {"start_seconds": round(elapsed, 3), **info}, indent=2, default=str))
    timings = info.get("timings") or {}
    shown = ", ".join(f"{k} {v:.1f}s" if isinstance(v, (int, float)) else f"{k} {v}"
                      for k, v in timings.items())
    say(f"attune-e2e: stack up in {elapsed:.1f}s at {info.get('api_url')} ({shown})")


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _is_worker(session.config) or "stack" not in _STACK:
        return
    stack, info = _STACK.pop("stack"), _STACK.pop("info", {})
    tr = session.config.pluginmanager.get_plugin("terminalreporter")
    say = tr.write_line if tr is not None else print
    if session.config.getoption("keep_stack"):
        say("attune-e2e: --keep-stack: the embedded stack keeps running")
        for key in ("api_url", "ws_url", "database_url", "amqp_url"):
            say(f"  {key}: {info.get(key)}")
        for name, path in (info.get("logs") or {}).items():
            say(f"  log {name}: {path}")
        say(f"  reuse it: ATTUNE_API_URL={info.get('api_url')} ATTUNE_WS_URL={info.get('ws_url')}"
            f" DATABASE_URL={info.get('database_url')} pytest ...")
        return
    try:
        stack.down(reset=True)  # the next run reuses the servers and env store, not the data
    except Exception as exc:  # never mask the test outcome
        say(f"attune-e2e: stack.down() failed: {exc}")


# =========================================================================== marker handling
_EXTENSIONS: dict[str, Any] = {}


def _target_extensions(target: Target) -> set[str]:
    if "set" not in _EXTENSIONS:
        try:
            detail = AttuneClient(target.api_url).health_detailed()
            _EXTENSIONS["set"] = set((detail or {}).get("extensions") or [])
        except Exception:
            _EXTENSIONS["set"] = set()
    return _EXTENSIONS["set"]


def pytest_runtest_setup(item: pytest.Item) -> None:
    if not str(getattr(item, "path", "")).startswith(str(E2E_DIR)):
        return
    marks = list(item.iter_markers("needs_extension"))
    needs_services = item.get_closest_marker("service_control") is not None
    if not marks and not needs_services:
        return
    target = _session_target(item.config)
    if needs_services and target.services is None:
        pytest.skip("needs service control: external target")
    if target.embedded:
        return
    have = _target_extensions(target)
    for mark in marks:
        for ext in mark.args:
            if ext in have:
                continue
            if item.config.getoption("run_extension_tests_on_live"):
                item.add_marker(pytest.mark.xfail(
                    reason=f"needs extension {ext}, absent upstream", strict=False))
            else:
                pytest.skip(f"needs extension {ext}, absent upstream")


# =========================================================================== session fixtures
_TARGET: dict[str, Target] = {}


def _session_target(config: pytest.Config) -> Target:
    if "t" not in _TARGET:
        _TARGET["t"] = resolve_target(config)
        t = _TARGET["t"]
        report_plugin.set_context(services=t.services, logs=t.logs, embedded=t.embedded)
    return _TARGET["t"]


@pytest.fixture(scope="session")
def target(pytestconfig) -> Target:
    """The Attune under test (embedded stack or external deployment)."""
    return _session_target(pytestconfig)


@pytest.fixture(scope="session")
def admin(target: Target) -> AttuneClient:
    """Client logged in as the seeded admin (holds core.admin). Do not change its token."""
    client = AttuneClient(target.api_url)
    client.login(target.admin_login, target.admin_password)
    report_plugin.set_context(client=client)
    return client


@pytest.fixture
def api(admin: AttuneClient) -> AttuneClient:
    """Function-scoped alias of `admin`."""
    return admin


@pytest.fixture
def uid() -> str:
    """8 lower-case hex characters, unique per test; refs are `<pack>.<slug>_<uid>`."""
    return uuid.uuid4().hex[:8]


@pytest.fixture(scope="session")
def e2e_pack(admin: AttuneClient) -> str:
    """The fixture pack tests/fixtures/packs/e2e_core, uploaded once per xdist worker as
    `e2e_core_<8hex>` (placeholder `__PACK__` replaced); deleted at the end. Returns its ref."""
    src = FIXTURE_PACKS / "e2e_core"
    if not (src / "pack.yaml").is_file():
        pytest.fail(f"fixture pack missing: {src}/pack.yaml", pytrace=False)
    ref = f"e2e_core_{uuid.uuid4().hex[:8]}"
    admin.upload_pack(build_pack_archive(src, ref), force=False, skip_tests=True)
    yield ref
    try:
        admin.delete_pack(ref)
    except Exception as exc:
        log.warning("cleanup: delete pack %s failed: %s", ref, exc)


# =========================================================================== factories
class Factory:
    """`make`: creates what a test uses under unique refs; cleans up last-in-first-out.

    Every method takes an optional `client=` (default: the admin) used to create the object;
    the same client deletes it. Cleanup errors are logged, never raised.
    """

    def __init__(self, request: pytest.FixtureRequest, admin: AttuneClient, uid: str):
        self._request = request
        self.admin = admin
        self.uid = uid
        self._cleanup = CleanupStack()
        self._counts: dict[str, int] = {}

    # ------------------------------------------------------------------ plumbing
    @property
    def pack_ref(self) -> str:
        return self._request.getfixturevalue("e2e_pack")

    def name(self, slug: str) -> str:
        """`<slug>_<uid>`, then `<slug>_<uid>_2`, ... within one test."""
        n = self._counts.get(slug, 0) + 1
        self._counts[slug] = n
        return f"{slug}_{self.uid}" if n == 1 else f"{slug}_{self.uid}_{n}"

    def ref(self, slug: str, pack: str | None = None) -> str:
        return f"{pack or self.pack_ref}.{self.name(slug)}"

    def defer(self, description: str, fn: Callable[[], Any]) -> None:
        """Register a cleanup step (runs LIFO at teardown)."""
        self._cleanup.defer(description, fn)

    def cleanup(self) -> None:
        for msg in self._cleanup.run():
            log.warning(msg)

    @property
    def errors(self) -> list[str]:
        return self._cleanup.errors

    def _pack_default(self, body: dict) -> str:
        pack = body.get("pack_ref") or self.pack_ref
        body.setdefault("pack_ref", pack)
        return pack

    # ------------------------------------------------------------------ objects
    def action(self, ref: str | None = None, *, client: AttuneClient | None = None,
               slug: str = "action", **body) -> dict:
        c = client or self.admin
        pack = self._pack_default(body)
        body["ref"] = ref or self.ref(slug, pack)
        body.setdefault("label", body["ref"])
        body.setdefault("runtime_ref", "core.shell")
        body.setdefault("entrypoint", "true")
        created = c.create_action(**body)
        self.defer(f"delete action {created['ref']}", lambda: c.delete_action(created["ref"]))
        return created

    def trigger(self, *, client: AttuneClient | None = None, slug: str = "trigger",
                **body) -> dict:
        c = client or self.admin
        pack = self._pack_default(body)
        body.setdefault("ref", self.ref(slug, pack))
        body.setdefault("label", body["ref"])
        created = c.create_trigger(**body)
        self.defer(f"delete trigger {created['ref']}", lambda: c.delete_trigger(created["ref"]))
        return created

    def webhook_trigger(self, *, client: AttuneClient | None = None, slug: str = "hook",
                        **body) -> tuple[dict, str]:
        """A trigger with webhooks enabled -> (trigger, webhook_key)."""
        c = client or self.admin
        created = self.trigger(client=c, slug=slug, **body)
        enabled = c.enable_webhook(created["ref"])
        return enabled, enabled["webhook_key"]

    def rule(self, *, client: AttuneClient | None = None, slug: str = "rule", **body) -> dict:
        """A rule (action_ref and trigger_ref required); disabled, then deleted at cleanup."""
        c = client or self.admin
        pack = self._pack_default(body)
        body.setdefault("ref", self.ref(slug, pack))
        body.setdefault("label", body["ref"])
        created = c.create_rule(**body)
        rref = created["ref"]
        self.defer(f"delete rule {rref}", lambda: c.delete_rule(rref))
        self.defer(f"disable rule {rref}", lambda: c.disable_rule(rref))
        return created

    def timer_rule(self, trigger_ref: str, trigger_params: dict, action_ref: str, *,
                   client: AttuneClient | None = None, slug: str = "timer", **body) -> dict:
        """A rule on a core timer trigger; disabled before it is deleted (upstream keeps firing
        a deleted enabled timer rule)."""
        return self.rule(client=client, slug=slug, trigger_ref=trigger_ref,
                         trigger_params=trigger_params, action_ref=action_ref, **body)

    def workflow(self, *, client: AttuneClient | None = None, slug: str = "wf",
                 **body) -> dict:
        c = client or self.admin
        pack = self._pack_default(body)
        body.setdefault("ref", self.ref(slug, pack))
        body.setdefault("label", body["ref"])
        body.setdefault("version", "1.0.0")
        created = c.create_workflow(**body)
        wref = created["ref"]
        self.defer(f"delete workflow action {wref}", lambda: c.delete_action(wref))
        self.defer(f"delete workflow {wref}", lambda: c.delete_workflow(wref))
        return created

    def key(self, *, client: AttuneClient | None = None, slug: str = "key", **body) -> dict:
        """A key; default owner: the session pack (`owner_type: pack`), never `system`."""
        c = client or self.admin
        if "owner_type" not in body:
            body["owner_type"] = "pack"
            body.setdefault("owner_pack_ref", self.pack_ref)
        body.setdefault("name", self.name(slug))
        if "ref" not in body:
            prefix = body.get("owner_pack_ref") or self.pack_ref
            body["ref"] = f"{prefix}.{body['name']}"
        created = c.create_key(**body)
        self.defer(f"delete key {created['ref']}", lambda: c.delete_key(created["ref"]))
        return created

    def pack(self, *, client: AttuneClient | None = None, slug: str = "pack", **body) -> dict:
        """A DB-only pack (POST /packs); deleted by the client that created it."""
        c = client or self.admin
        body.setdefault("ref", f"e2e_{self.name(slug)}")
        body.setdefault("label", body["ref"])
        body.setdefault("version", "1.0.0")
        created = c.create_pack(**body)
        self.defer(f"delete pack {created['ref']}", lambda: c.delete_pack(created["ref"]))
        return created

    def user(self, permission_sets: list[str] | tuple[str, ...] | None = ("core.admin",), *,
             login: str | None = None, password: str | None = None,
             **identity) -> tuple[AttuneClient, dict]:
        """A new identity holding `permission_sets`, logged in -> (client, identity)."""
        login = login or f"e2e_{self.name('user')}"
        password = password or f"Pw-{secrets.token_hex(10)}"
        ident = self.admin.create_identity(login=login, password=password, **identity)
        self.defer(f"delete identity {login}", lambda: self.admin.delete_identity(ident["id"]))
        for set_ref in permission_sets or ():
            self.admin.assign_permission_set(ident["id"], set_ref)
        client = self.admin.with_token(None)
        client.login(login, password)
        client.password = password  # type: ignore[attr-defined]
        client.identity = ident  # type: ignore[attr-defined]
        return client, ident


@pytest.fixture
def make(request: pytest.FixtureRequest, admin: AttuneClient, uid: str):
    """Factory with LIFO cleanup: make.action/trigger/webhook_trigger/rule/timer_rule/workflow/
    key/pack/user."""
    factory = Factory(request, admin, uid)
    yield factory
    factory.cleanup()


# =========================================================================== streams, probes
@pytest.fixture
def exec_stream(target: Target, admin: AttuneClient):
    """ExecutionStream on GET /api/v1/executions/stream, connected before the test acts."""
    stream = ExecutionStream(target.api_url, admin.token).connect()
    yield stream
    stream.close()


@pytest.fixture
def notifier(target: Target, admin: AttuneClient):
    """Factory of connected NotifierListeners: notifier(token=None, **kw); closed at teardown."""
    opened: list[NotifierListener] = []

    def open_listener(token: str | None = None, **kwargs) -> NotifierListener:
        listener = NotifierListener(target.ws_url, token if token is not None else admin.token,
                                    **kwargs)
        opened.append(listener)
        return listener

    yield open_listener
    for listener in reversed(opened):
        listener.close()


@pytest.fixture
def db_probe(target: Target):
    """psycopg2 connection (autocommit, search_path attune,public) on the target's database."""
    if not target.database_url:
        pytest.skip("needs database access: no DATABASE_URL known for this target")
    import psycopg2

    conn = psycopg2.connect(target.database_url, options="-c search_path=attune,public",
                            connect_timeout=5)
    conn.autocommit = True
    yield conn
    conn.close()


@pytest.fixture
def services(target: Target):
    """ServiceManager of the embedded stack (skips on targets without service control)."""
    if target.services is None:
        pytest.skip("needs service control: external target")
    return target.services


__all__ = ["Factory"]
