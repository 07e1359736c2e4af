"""T2.13 Node.js action (scenarios.md T2.13, behavior.md §2.1, §2.6).

The fixture pack `e2e_nodedeps` (`package.json`: `axios ^1.0.0`) is uploaded once per module as
`e2e_nodedeps_<8hex>`; the module fixture runs `axios_get` once right after the upload, and that
first use installs the dependencies into `<runtime_envs_dir>/<pack ref>/node.js/node_modules`
(`npm install --prefix`, NODE_PATH pointing there). Skipped when no active worker advertises the
node runtime.

Deadlines (tests/helpers/deps.py): 240 s for the run that installs (a cold npm download on a
2-core machine takes 10-30 s, ~2-4 s with a warm npm cache), 20 s for later runs.
"""
import hashlib
import shutil

import pytest

from tests.helpers.deps import (FIXTURE_PACKS, INSTALL_TEST_TIMEOUT, assert_second_run_reused,
                                completed_data, first_run, run_to_end, worker_runtimes)

pytestmark = [pytest.mark.tier2, pytest.mark.runner, pytest.mark.packs, pytest.mark.nodejs,
              pytest.mark.xdist_group("t2_13_nodedeps"), pytest.mark.timeout(INSTALL_TEST_TIMEOUT)]

NODE_RUNTIMES = {"node", "nodejs", "node.js"}
MANIFEST = (FIXTURE_PACKS / "e2e_nodedeps" / "package.json").read_bytes()


@pytest.fixture(scope="module")
def nodedeps(admin, target):
    """e2e_nodedeps uploaded once, plus its first `axios_get` execution (any terminal status)."""
    if not worker_runtimes(admin) & NODE_RUNTIMES:
        # Embedded stack on a machine with node: the worker must advertise it (a stack defect
        # otherwise). Skip only where node is really missing, or on an external target.
        assert not (target.embedded and shutil.which("node")), \
            "node is installed but the embedded worker does not advertise the node runtime"
        pytest.skip("no active worker advertises the node runtime (GET /api/v1/workers)")
    deps = first_run(admin, "e2e_nodedeps", "axios_get")
    yield deps
    deps.pack.delete()


def test_axios_from_pack_node_modules_with_awaited_get(nodedeps):
    """T2.13 Node.js action: the first axios_get execution completes; its awaited axios GET of the
    stack's own /health returned 200 `{"status": "ok"}` together with the awaited timer value;
    axios is a 1.x release resolved from NODE_PATH, which is
    `<runtime_envs_dir>/<pack ref>/node.js/node_modules` (upstream's runtime-name folder); the
    install marker `.attune_deps_installed` next to it holds the SHA-256 of package.json."""
    data = completed_data(nodedeps.first)
    assert (data["status"], data["body"]) == (200, {"status": "ok"}), \
        f"expected the awaited GET /health -> 200 {{'status': 'ok'}}, got {data['status']} {data['body']!r}"
    assert data["awaited"] == "timer-resolved", \
        f"expected the awaited Promise.all result, got {data['awaited']!r}"
    assert str(data["axios_version"]).startswith("1."), \
        f"expected axios 1.x (package.json ^1.0.0), got {data['axios_version']!r}"

    node_path = data["node_path"] or ""
    suffixes = (f"/{nodedeps.ref}/node.js/node_modules", f"/{nodedeps.ref}/nodejs/node_modules")
    assert node_path.endswith(suffixes), f"expected NODE_PATH ending with one of {suffixes}, got {node_path!r}"
    assert data["axios_file"].startswith(node_path + "/axios/"), \
        f"expected axios resolved under NODE_PATH {node_path}, got {data['axios_file']!r}"
    assert data["marker"] == hashlib.sha256(MANIFEST).hexdigest(), \
        f"expected .attune_deps_installed to hold sha256(package.json), got {data['marker']!r}"


def test_second_run_reuses_node_modules_without_reinstalling(admin, nodedeps):
    """T2.13 Node.js action, caching: a second run reports the same NODE_PATH, the same marker
    (content and mtime) and the same mtimes of node_modules/axios/package.json and of npm's
    node_modules/.package-lock.json, so npm did not run again. When npm installed during the
    first run, the second spends less than half the first run's time in `running`; when the
    install predates the upload (the embedded worker reuses node_modules it built for the same
    package.json in an earlier session), both runs are warm."""
    first = completed_data(nodedeps.first)
    second_ex = run_to_end(admin, nodedeps.pack.action("axios_get"), {})
    second = completed_data(second_ex)

    assert (second["status"], second["axios_version"]) == (200, first["axios_version"]), \
        f"second run: {second}"
    assert second["node_path"] == first["node_path"], \
        f"expected the same node_modules, got {second['node_path']!r} after {first['node_path']!r}"
    for what in ("marker", "marker_mtime", "axios_pkg_mtime", "installed_mtime"):
        assert second[what] == first[what], \
            f"{what} changed ({first[what]} -> {second[what]}): node modules were reinstalled"
    assert_second_run_reused(nodedeps.first, second_ex, first["installed_mtime"],
                             nodedeps.before_upload.timestamp(), "axios_get")


def test_runtime_errors_in_async_code_fail_the_execution(admin, nodedeps, uid):
    """T2.13 Node.js action, failures: an Error thrown after the awaited GET and a TypeError raised
    inside the async function both end `failed` with exit code 1, and result.error carries the
    error as the action reported it (`Error: boom-<uid>`, `TypeError: Cannot read properties of
    null ...`)."""
    completed_data(nodedeps.first)
    action = nodedeps.pack.action("axios_get")

    thrown = run_to_end(admin, action, {"mode": "throw", "message": f"boom-{uid}"}, status="failed")
    result = thrown["result"]
    assert (result.get("succeeded"), result.get("exit_code")) == (False, 1), f"result: {result}"
    assert (result.get("error") or "").strip() == f"Error: boom-{uid}", \
        f"expected result.error 'Error: boom-{uid}', got {result.get('error')!r}"

    type_error = run_to_end(admin, action, {"mode": "throw"}, status="failed")
    result = type_error["result"]
    assert (result.get("succeeded"), result.get("exit_code")) == (False, 1), f"result: {result}"
    assert (result.get("error") or "").startswith("TypeError: Cannot read properties of null"), \
        f"expected a TypeError in result.error, got {result.get('error')!r}"
