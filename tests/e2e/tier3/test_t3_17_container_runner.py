"""T3.17 Container runner (scenarios.md T3.17; extension E12 `container_runtime`, section (b)).

The fixture pack `e2e_container` (uploaded once per module as `e2e_container_<8hex>`) has the
action `probe` (`runner_type: container`, `container: {image: python:3.11-slim, network: none,
memory_mb: 256, cpus: 1}`) that reports what it sees from inside (tests/helpers/containers.py).

Engines: the worker takes docker, then podman, then the bubblewrap sandbox, whichever works at its
start. On the project machines only the sandbox works (no Docker engine, podman's crun fails, no
registry), so the image cannot be honoured there and `result.container.image_honoured` is false;
image checks run only where it is true. The checks that hold in every mode (namespaces, no
capabilities, read-only code mount, no network, clean environment, no /tmp state between runs,
exit codes, memory limit, cleanup) always run. Host-side leftovers (staging dir, sandbox PID,
labelled containers) are checked on the embedded stack, whose worker runs on this machine.

Without any engine the worker does not advertise `container`, and the probe fails
"Execution is unschedulable" (upstream's path for a missing runtime): that is asserted, then the
isolation tests skip for lack of an engine.

Timing: a probe run takes ~0.2-1 s in the sandbox; every wait has a stated deadline
(`RUN_DEADLINE` 30 s, which also covers a warm docker start).
"""
import os
import socket
import time

import pytest

from tests.helpers.containers import (ENGINES, IMAGE, MEMORY_MB, PACK_MOUNT, PACK_NAME,
                                      RUN_DEADLINE, api_port, container_advertised,
                                      engine_leftovers, env_violations, probe_sha256,
                                      process_exists, report_of, run_probe, staging_dir,
                                      wait_stdout_contains)
from tests.helpers.deps import FixturePack
from tests.helpers.polling import wait_for_execution
from tests.helpers.scenario import expect_api_error

pytestmark = [pytest.mark.tier3, pytest.mark.runner, pytest.mark.container,
              pytest.mark.security, pytest.mark.needs_extension("container_runtime"),
              pytest.mark.timeout(120)]

NO_CAPABILITIES = "0000000000000000"


@pytest.fixture(scope="module")
def cpack(admin):
    """e2e_container uploaded once for the module; deleted afterwards."""
    pack = FixturePack(admin, PACK_NAME)
    yield pack
    pack.delete()


@pytest.fixture
def probe_ref(admin, cpack, uid):
    """The probe's ref, once an engine is known to be advertised. Without one, asserts the
    upstream outcome (unschedulable) and skips: no container engine works on this machine."""
    ref = cpack.action("probe")
    if not container_advertised(admin):
        execution = run_probe(admin, ref, token=uid)
        result = execution.get("result") or {}
        assert execution["status"] == "failed" and execution.get("worker") is None, \
            f"expected the probe to fail unscheduled without a container engine, got " \
            f"{execution['status']} on worker {execution.get('worker')}: {result}"
        assert result.get("error") == "Execution is unschedulable", f"unexpected result {result}"
        assert "requires runtime: Container" in (result.get("message") or ""), result
        pytest.skip("no container engine works on this machine (no docker, podman or bwrap); "
                    "unschedulable outcome asserted")
    return ref


def _container_info(execution: dict) -> dict:
    info = (execution.get("result") or {}).get("container")
    assert isinstance(info, dict), f"execution {execution['id']} has no result.container: " \
                                   f"{execution.get('result')}"
    assert info.get("engine") in ENGINES, f"unexpected engine in {info}"
    assert info.get("image") == IMAGE, f"expected image {IMAGE!r} in {info}"
    assert isinstance(info.get("image_honoured"), bool), info
    if info["engine"] == "sandbox":
        assert info["image_honoured"] is False, \
            f"the sandbox runs on the host's root and cannot honour an image, got {info}"
    else:
        assert info["image_honoured"] is True, info
    return info


def _assert_cleaned_up(target, execution: dict, info: dict) -> None:
    """Nothing of the run is left once its status is terminal (the worker cleans up before it
    records the result)."""
    if not target.embedded:
        return  # the worker's machine is not this one
    exec_id = execution["id"]
    if info["engine"] == "sandbox":
        pid = info.get("host_pid")
        assert isinstance(pid, int) and pid > 1, f"expected the sandbox's host PID in {info}"
        assert not process_exists(pid), \
            f"sandbox process {pid} of execution {exec_id} still exists after it ended"
    else:
        assert engine_leftovers(info["engine"], exec_id) == [], \
            f"containers labelled attune.execution_id={exec_id} were left behind"
    assert not staging_dir(exec_id).exists(), \
        f"staging dir {staging_dir(exec_id)} of execution {exec_id} was left behind"


def _worker_host(admin, execution: dict) -> str | None:
    worker = execution.get("worker")
    if worker is None:
        return None
    body = admin.get(f"/api/v1/workers/{worker}")
    return (body.get("data") if isinstance(body.get("data"), dict) else body).get("host")


def test_probe_runs_isolated_in_a_container(admin, target, probe_ref, uid):
    """T3.17 Container runner: the probe completes inside the container runtime and reports its
    own PID namespace (pid <= 2), a hostname other than the worker host's, no effective
    capabilities, a read-only pack mount at /opt/attune/pack serving the fixture file byte for byte
    (same SHA-256), a refused connect to the API port (network none), an environment of only the
    fixed basics and per-execution ATTUNE_* variables (no ATTUNE__* override, no encryption key),
    and the token it got on stdin; `result.container` names the engine and the image, with
    image_honoured false in the sandbox (sys.version 3.11 checked only where the image is
    honoured); afterwards the sandbox process, the staging dir and any container are gone."""
    port = api_port(target)
    execution = run_probe(admin, probe_ref, token=uid, api_port=port)
    assert execution["status"] == "completed", \
        f"expected the probe to complete, got {execution['status']}: {execution.get('result')}"
    result = execution["result"]
    assert (result.get("exit_code"), result.get("succeeded")) == (0, True), result
    info = _container_info(execution)
    report = report_of(execution)

    assert report["token"] == uid, f"parameters did not arrive on stdin: token {report['token']!r}"
    assert report["exec_id"] == str(execution["id"]), report["exec_id"]
    assert report["pid"] <= 2, f"expected an own PID namespace (pid <= 2), got pid {report['pid']}"
    worker_host = _worker_host(admin, execution)
    assert worker_host and report["hostname"] != worker_host, \
        f"expected a hostname other than the worker host's {worker_host!r}, got {report['hostname']!r}"
    if target.embedded:
        assert report["hostname"] != socket.gethostname(), report["hostname"]
    assert report["cap_eff"] == NO_CAPABILITIES, \
        f"expected no effective capabilities, got CapEff {report['cap_eff']}"

    assert report["file"] == f"{PACK_MOUNT}/actions/probe.py", report["file"]
    assert report["cwd"] == f"{PACK_MOUNT}/actions", report["cwd"]
    assert report["pack_write"] == "EROFS", \
        f"expected the pack mount to be read-only (EROFS), writing gave {report['pack_write']!r}"
    assert report["sha256"] == probe_sha256(), \
        "the probe inside the container is not the fixture file (code copied stale?)"

    network = report["network"]
    assert network["attempted"] is True and network["connected"] is False, \
        f"expected no route to 127.0.0.1:{port} with network none, got {network}"

    assert report["encryption_key_present"] is False, "the worker's encryption key leaked in"
    assert env_violations(report["env_names"]) == [], \
        f"variables beyond the allow-list reached the container: {env_violations(report['env_names'])}"
    assert {"ATTUNE_EXEC_ID", "ATTUNE_ACTION", "ATTUNE_API_URL"} <= set(report["env_names"]), \
        report["env_names"]

    if info["image_honoured"]:
        assert report["version"].startswith("3.11"), \
            f"expected the image's Python 3.11, got {report['version']!r}"
        assert info.get("container_name") == f"attune-exec-{execution['id']}", info
    else:
        assert info["engine"] == "sandbox", info

    _assert_cleaned_up(target, execution, info)
    if target.embedded:
        assert not os.path.exists(f"/tmp/leak-{uid}"), \
            "the container's /tmp marker appeared in the host's /tmp (no private /tmp)"


def test_no_tmp_state_leaks_between_runs(admin, target, probe_ref, uid):
    """T3.17 Container runner, no state between runs: two runs with the same token each find no
    /tmp/leak-<token> (the first creates it inside its private /tmp, the second does not see it);
    on docker/podman the second run reports pulled false (the image is cached)."""
    first = run_probe(admin, probe_ref, token=uid)
    second = run_probe(admin, probe_ref, token=uid)
    for n, execution in enumerate((first, second), 1):
        assert execution["status"] == "completed", \
            f"run {n}: expected completed, got {execution['status']}: {execution.get('result')}"
    marker1, marker2 = report_of(first)["tmp_marker"], report_of(second)["tmp_marker"]
    assert (marker1["existed"], marker1["created"]) == (False, True), f"run 1: {marker1}"
    assert (marker2["existed"], marker2["created"]) == (False, True), \
        f"run 2 saw run 1's /tmp marker {marker2['path']}: state leaked between runs"
    info = _container_info(second)
    if info["engine"] != "sandbox":
        assert info.get("pulled") is False, f"second run pulled the image again: {info}"
    for execution in (first, second):
        _assert_cleaned_up(target, execution, _container_info(execution))


def test_exit_code_variant_fails_with_that_code(admin, target, probe_ref, uid):
    """T3.17 Container runner, failure variant: mode exit with exit_code 3 -> failed, exit_code 3,
    succeeded false, error "Command exited with code 3" (empty stderr), the report still on stdout,
    result.container present and nothing left behind."""
    execution = run_probe(admin, probe_ref, token=uid, mode="exit", exit_code=3)
    assert execution["status"] == "failed", f"expected failed, got {execution['status']}"
    result = execution["result"]
    assert (result.get("exit_code"), result.get("succeeded")) == (3, False), result
    assert result.get("error") == "Command exited with code 3", result.get("error")
    assert report_of(execution)["token"] == uid
    _assert_cleaned_up(target, execution, _container_info(execution))


def test_memory_limit_stops_a_hog(admin, target, probe_ref, uid):
    """T3.17 Container runner, resource limit: allocating 2 x memory_mb (512 MiB) fails the run
    (exit 137 on docker/podman, MemoryError under the sandbox's RLIMIT_AS), while a control run
    allocating 64 MiB under the same limit completes (so the limit, not the probe, stops it)."""
    hog = run_probe(admin, probe_ref, token=uid, mode="memory", alloc_mb=2 * MEMORY_MB)
    control = run_probe(admin, probe_ref, token=uid, mode="memory", alloc_mb=64)
    assert control["status"] == "completed", \
        f"control allocation of 64 MiB failed: {control['status']} {control.get('result')}"
    assert report_of(control)["allocated_mb"] == 64
    assert hog["status"] == "failed", \
        f"expected allocating {2 * MEMORY_MB} MiB under a {MEMORY_MB} MiB limit to fail, got " \
        f"{hog['status']}: {hog.get('result')}"
    info = _container_info(hog)
    result = hog["result"]
    if info["engine"] == "sandbox":
        assert result.get("exit_code") == 1 and "MemoryError" in (result.get("error") or ""), \
            f"expected MemoryError (exit 1) in the sandbox, got {result}"
    else:
        assert result.get("exit_code") == 137, f"expected an OOM kill (137), got {result}"
    _assert_cleaned_up(target, hog, info)


def test_cancel_kills_the_container_and_cleans_up(admin, target, probe_ref, uid):
    """T3.17 Container runner, cancel behaves as for any process runtime: a probe sleeping 60 s
    after printing its report is cancelled once the report is on its stdout stream -> cancelled
    with error "Execution cancelled by user" well before the sleep would end (< 15 s after the
    cancel: SIGTERM, at most the 5 s grace, SIGKILL), result.container present, nothing left
    behind."""
    execution = admin.execute(probe_ref, {"token": uid, "mode": "sleep", "seconds": 60})
    wait_for_execution(admin, execution["id"], "running", timeout=RUN_DEADLINE)
    wait_stdout_contains(admin, execution["id"], uid, timeout=RUN_DEADLINE)
    cancelled_at = time.monotonic()
    admin.cancel_execution(execution["id"])
    final = wait_for_execution(admin, execution["id"], "cancelled", timeout=15)
    took = time.monotonic() - cancelled_at
    assert took < 15, f"cancel took {took:.1f} s"
    result = final["result"]
    assert result.get("error") == "Execution cancelled by user", result
    assert (result.get("duration_ms") or 0) < 30000, f"ran {result.get('duration_ms')} ms"
    _assert_cleaned_up(target, final, _container_info(final))


def test_container_field_through_the_action_api(admin, target, make, cpack, probe_ref, uid):
    """T3.17 Container runner, the `container` field: the YAML probe shows runtime core.container
    and its normalised container object; an ad-hoc action created through POST /actions with
    `container` (network bridge, a 2 s timeout_seconds) returns it; a bad network value is a 422
    VALIDATION_ERROR; in the sandbox, network bridge shares the host network, so the same connect
    the isolated probe could not make succeeds (the negative check above is not vacuous); the
    2 s timeout ends a sleeping run failed "Execution timed out after 2 seconds", exit -1, nothing
    left behind; PUT container null removes the field from the response."""
    probe = admin.get_action(probe_ref)
    assert probe.get("runtime_ref") == "core.container", probe
    assert probe.get("container") == {"image": IMAGE, "network": "none", "memory_mb": MEMORY_MB,
                                      "cpus": 1}, probe.get("container")

    spec = {"image": IMAGE, "network": "bridge", "memory_mb": MEMORY_MB}
    bad = expect_api_error(lambda: admin.create_action(
        ref=f"{cpack.ref}.bad_{uid}", pack_ref=cpack.ref, label="bad", entrypoint="probe.py",
        runtime_ref="core.container", container={**spec, "network": "host"}), 422,
        "container.network host")
    assert bad.code == "VALIDATION_ERROR" and "container.network" in bad.message, bad

    action = make.action(ref=f"{cpack.ref}.bridged_{uid}", pack_ref=cpack.ref,
                         label=f"bridged probe {uid}", entrypoint="probe.py",
                         runtime_ref="core.container", container=spec, timeout_seconds=2)
    assert action.get("container") == spec, action.get("container")

    port = api_port(target)
    execution = run_probe(admin, action["ref"], token=uid, api_port=port)
    assert execution["status"] == "completed", f"{execution['status']}: {execution.get('result')}"
    info = _container_info(execution)
    report = report_of(execution)
    assert report["token"] == uid
    if info["engine"] == "sandbox" and target.embedded:
        assert report["network"]["connected"] is True, \
            f"network bridge in the sandbox should reach 127.0.0.1:{port}: {report['network']}"
    _assert_cleaned_up(target, execution, info)

    slow = run_probe(admin, action["ref"], token=uid, mode="sleep", seconds=30)
    assert slow["status"] == "failed", f"expected the 2 s timeout to fail it, got {slow['status']}"
    assert slow["result"].get("error") == "Execution timed out after 2 seconds", slow["result"]
    assert slow["result"].get("exit_code") == -1, slow["result"]
    _assert_cleaned_up(target, slow, _container_info(slow))

    updated = admin.update_action(action["ref"], container=None)
    assert "container" not in updated, f"container should be omitted once cleared: {updated}"
