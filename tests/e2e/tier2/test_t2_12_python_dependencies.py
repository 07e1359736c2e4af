"""T2.12 Python action with dependencies (scenarios.md T2.12, behavior.md §2.1, §2.6).

The fixture pack `e2e_pydeps` (`requirements.txt`: `requests==2.28.0`) is uploaded once per module
(the module's tests share one xdist worker) as `e2e_pydeps_<8hex>`. The module fixture runs
`http_get` once right after the upload: that first use builds the virtualenv
`<runtime_envs_dir>/<pack ref>/python` (lazily, on the embedded worker), so every test can compare
against the same cold run whatever order the tests run in.

Durations: `result.duration_ms` times only the action process (upstream's process_executor and the
embedded worker alike), so an install shows in how long the execution stayed `running`
(`started_at` -> `updated`). The embedded worker copies environments it built before for the same
requirements (its content-addressed store), so on a machine that ran the suite before, the first
run installs nothing: the install time of requests tells which case a run is in. Deadlines (tests/helpers/deps.py): 240 s for a run that builds an
environment (a cold PyPI download on a 2-core machine takes 10-30 s, ~3-5 s with a warm download
cache), 20 s for a run on a built environment.
"""
import hashlib

import pytest

from tests.helpers.deps import (FIXTURE_PACKS, INSTALL_DEADLINE, INSTALL_TEST_TIMEOUT,
                                FixturePack, assert_second_run_reused, completed_data, first_run,
                                run_to_end, run_to_terminal)
from tests.helpers.scenario import parse_ts

pytestmark = [pytest.mark.tier2, pytest.mark.runner, pytest.mark.packs, pytest.mark.python,
              pytest.mark.xdist_group("t2_12_pydeps"), pytest.mark.timeout(INSTALL_TEST_TIMEOUT)]

REQUIREMENTS = (FIXTURE_PACKS / "e2e_pydeps" / "requirements.txt").read_bytes()
PIN = "requests==2.28.0"
BAD_PIN = "requests==999.0.0"  # a real package, a version that does not exist: pip cannot install it
# file mtimes (worker host) against execution timestamps (database clock), same machine here
CLOCK_SLACK = 1.0


@pytest.fixture(scope="module")
def pydeps(admin):
    """e2e_pydeps uploaded once, plus its first `http_get` execution (any terminal status; the
    tests assert on it)."""
    deps = first_run(admin, "e2e_pydeps", "http_get")
    yield deps
    deps.pack.delete()


def test_first_run_imports_requests_from_the_pack_venv(pydeps, target):
    """T2.12 Python action with dependencies: the first execution of http_get completes with
    requests 2.28.0 imported from a virtualenv at `<runtime_envs_dir>/<pack ref>/python` (sys.prefix,
    sys.executable, VIRTUAL_ENV and requests.__file__ all inside it), its GET of the stack's own
    /health returns 200 `{"status": "ok"}`, the marker `.attune_deps_installed` holds the SHA-256 of
    requirements.txt, and the venv was created after the upload and before that run ended (on the
    embedded worker: during that run, i.e. lazily on first use)."""
    data = completed_data(pydeps.first)
    assert data["version"] == "2.28.0", f"expected requests 2.28.0 (the pin), got {data['version']!r}"
    assert (data["status_code"], data["body"]) == (200, {"status": "ok"}), \
        f"expected GET /health -> 200 {{'status': 'ok'}}, got {data['status_code']} {data['body']!r}"

    prefix = data["prefix"]
    assert prefix.endswith(f"/{pydeps.ref}/python"), \
        f"expected sys.prefix to end with /{pydeps.ref}/python, got {prefix!r}"
    for what in ("executable", "requests_file"):
        assert data[what].startswith(prefix + "/"), \
            f"expected {what} inside the pack venv {prefix}, got {data[what]!r}"
    assert data["virtual_env"] == prefix, \
        f"expected VIRTUAL_ENV == sys.prefix == {prefix!r}, got {data['virtual_env']!r}"
    assert data["marker"] == hashlib.sha256(REQUIREMENTS).hexdigest(), \
        f"expected .attune_deps_installed to hold sha256(requirements.txt), got {data['marker']!r}"

    created = data["pyvenv_cfg_mtime"]
    assert created is not None, f"no pyvenv.cfg in {prefix}: not a virtualenv"
    started = parse_ts(pydeps.first["started_at"]).timestamp()
    ended = parse_ts(pydeps.first["updated"]).timestamp()
    assert pydeps.before_upload.timestamp() - CLOCK_SLACK <= created <= ended + CLOCK_SLACK, \
        f"expected the venv to be created between the upload and the end of the first run, " \
        f"pyvenv.cfg mtime {created}, upload {pydeps.before_upload.timestamp()}, end {ended}"
    if target.embedded:
        # upstream's API may also build it at register time (behavior.md §2.6); the worker: lazily
        assert created >= started - CLOCK_SLACK, \
            f"expected the embedded worker to build the venv on first use (after {started}), " \
            f"pyvenv.cfg mtime {created}"


def test_second_run_reuses_the_venv_without_reinstalling(admin, pydeps):
    """T2.12 Python action with dependencies, caching: a second http_get run reports the same
    sys.prefix, the same pyvenv.cfg mtime and the same marker file (content and mtime), so the venv
    was neither rebuilt nor reinstalled; it also spends less than half the first run's time in
    `running` (the first one included the install)."""
    first = completed_data(pydeps.first)
    second_ex = run_to_end(admin, pydeps.pack.action("http_get"), {})
    second = completed_data(second_ex)

    assert (second["version"], second["status_code"]) == ("2.28.0", 200), f"second run: {second}"
    assert second["prefix"] == first["prefix"], \
        f"expected the same venv, got {second['prefix']!r} after {first['prefix']!r}"
    assert second["pyvenv_cfg_mtime"] == first["pyvenv_cfg_mtime"], \
        f"pyvenv.cfg changed ({first['pyvenv_cfg_mtime']} -> {second['pyvenv_cfg_mtime']}): " \
        f"the venv was rebuilt"
    assert (second["marker"], second["marker_mtime"]) == (first["marker"], first["marker_mtime"]), \
        f"the marker changed ({first['marker_mtime']} -> {second['marker_mtime']}): " \
        f"dependencies were reinstalled"

    assert second["requests_mtime"] == first["requests_mtime"], "requests was reinstalled"
    assert_second_run_reused(pydeps.first, second_ex, first["requests_mtime"],
                             pydeps.before_upload.timestamp(), "http_get")


def test_sibling_action_shares_the_venv_and_a_missing_module_fails(admin, pydeps):
    """T2.12 Python action with dependencies, sibling action: import_missing runs in the same venv
    (importing `requests` works and resolves inside the pack's prefix), and importing `yaml`, which
    requirements.txt does not declare, fails the execution with exit code 1 and
    `ModuleNotFoundError: No module named 'yaml'` as result.error."""
    prefix = completed_data(pydeps.first)["prefix"]
    ok = run_to_end(admin, pydeps.pack.action("import_missing"), {"module": "requests"})
    data = ok["result"]["data"]
    assert data["imported"] == "requests" and data["file"].startswith(prefix + "/"), \
        f"expected requests imported from {prefix}, got {data}"

    bad = run_to_end(admin, pydeps.pack.action("import_missing"), {"module": "yaml"},
                     status="failed")
    result = bad["result"]
    assert (result.get("succeeded"), result.get("exit_code")) == (False, 1), f"result: {result}"
    assert "ModuleNotFoundError: No module named 'yaml'" in (result.get("error") or ""), \
        f"expected ModuleNotFoundError for yaml in result.error, got {result.get('error')!r}"


def test_uninstallable_requirement_fails_with_the_installer_error(admin, make, uid, target):
    """T2.12 Python action with dependencies, broken requirements: a copy of e2e_pydeps pinning
    `requests==999.0.0` makes http_get fail (no hang: terminal within the install deadline), with
    the installer's error in result.error on the embedded stack (`pip install for pack '<ref>'
    failed ... No matching distribution found for requests==999.0.0`; upstream logs that error and
    runs the action anyway, which then fails with ModuleNotFoundError). A second run fails the same
    way: the failed install left no marker that would let it pass."""
    broken = FixturePack(admin, "e2e_pydeps", ref=f"e2e_pydeps_bad_{uid}",
                         replacements={PIN: BAD_PIN})
    make.defer(f"delete pack {broken.ref}", broken.delete)

    installer_error = f"No matching distribution found for {BAD_PIN}"
    for attempt in (1, 2):
        execution = run_to_terminal(admin, broken.action("http_get"), {}, timeout=INSTALL_DEADLINE)
        result = execution["result"] or {}
        error = result.get("error") or ""
        assert execution["status"] == "failed" and result.get("succeeded") is False, \
            f"run {attempt}: expected `failed`, got `{execution['status']}`: {result}"
        if target.embedded:
            assert f"pip install for pack '{broken.ref}' failed" in error and installer_error in error, \
                f"run {attempt}: expected pip's error in result.error, got {error!r}"
        else:
            assert installer_error in error or "ModuleNotFoundError" in error, \
                f"run {attempt}: expected pip's error or ModuleNotFoundError, got {error!r}"
