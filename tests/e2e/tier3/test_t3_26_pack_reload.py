"""T3.26 Pack update and reload (scenarios.md T3.26, behavior.md §1.1, §1.5, §2.6).

The plan's `POST /packs/{id}/reload` is upstream's forced re-upload: `POST /api/v1/packs/upload`
with `force=true`, `skip_tests=true`, which re-registers the pack in place (upsert by ref, so the
ids survive). Fixture packs `e2e_reload_v1` (1.0.0, `six==1.15.0`) and `e2e_reload_v2` (1.1.0,
`six==1.16.0`) are two versions of one pack, uploaded under the same per-test ref
`e2e_reload_<uid>`. Every file that differs says which version it is: the actions' CODE, the
`lib/reload_info.py` CODE, `pack.yaml`'s version and the six pin.

`slow_whoami` prints `started v1` at once, sleeps, and only then imports `lib/reload_info.py` and
`six` and reads `pack.yaml`. The test waits for `started v1` on the execution's stdout (log tail
SSE) before uploading v2, and checks that it is still `running` when the upload has returned, so
the upload certainly happened while it was in flight.

Embedded stack: an upload writes a new version directory and swaps `<packs_base_dir>/<ref>`
(a symlink) atomically; a running execution holds the version it started on (and a shared lock
on its virtualenv, which a rebuild waits for), so even its late imports and file reads see v1
(attune_emulator/pack_store.py, worker/envs.py). Those late-read checks are asserted on the
embedded stack only; the printed `v1` (code the interpreter compiled at start) on every target.

Deadlines: each of the two virtualenv builds (v1 first run, first run after the update) is a
PyPI install on a 2-core machine: 240 s (tests/helpers/deps.py); other runs 20 s.
"""
import hashlib

import pytest

from tests.helpers.deps import (FIXTURE_PACKS, INSTALL_DEADLINE, INSTALL_TEST_TIMEOUT,
                                WARM_DEADLINE)
from tests.helpers.pack_versions import (HealthPoller, delete_quietly, service_pids, stdout_lines,
                                         upload, wait_for_stdout)
from tests.helpers.polling import wait_for_execution

pytestmark = [pytest.mark.tier3, pytest.mark.packs, pytest.mark.python,
              pytest.mark.timeout(INSTALL_TEST_TIMEOUT)]

V2_REQUIREMENTS = (FIXTURE_PACKS / "e2e_reload_v2" / "requirements.txt").read_bytes()
SLOW_SECONDS = 5  # slow_whoami's sleep: the upload (well under 1 s here) must fit inside it
HEALTH_INTERVAL_PROBES_MIN = 3  # at 100 ms, an upload plus a first run spans many more probes


def _data(execution: dict, what: str) -> dict:
    assert execution["status"] == "completed", \
        f"{what}: expected `completed`, got `{execution['status']}`: {execution.get('result')}"
    data = execution["result"].get("data")
    assert isinstance(data, dict), f"{what}: expected a JSON object as result.data: " \
                                   f"{execution['result']}"
    return data


def _action_ids(client, ref: str) -> dict[str, int]:
    return {name: client.get_action(f"{ref}.{name}")["id"] for name in ("whoami", "slow_whoami")}


def test_forced_reupload_reloads_code_and_env_while_inflight_run_keeps_v1(admin, make, uid,
                                                                          target):
    """T3.26 Pack update and reload: after uploading e2e_reload v1 (201, version 1.0.0) whoami
    prints "v1" with six 1.15.0 from /<ref>/python. A slow_whoami is started and seen printing
    `started v1`; v2 is then uploaded under the same ref with force=true (201, data.pack.version
    1.1.0, pack id and both action ids unchanged, GET /packs/<ref> says 1.1.0) while slow_whoami
    is still `running`, with /health polled every 100 ms from before the upload until the first
    v2 run finished: zero failed probes, and (embedded) every service PID unchanged. The in-flight
    run completes printing "v1" (embedded: its late imports and pack.yaml read still see v1 and
    six 1.15.0); a new whoami run started after the upload prints "v2" with six 1.16.0 from the
    same env path, whose marker now holds sha256 of v2's requirements.txt."""
    ref = f"e2e_reload_{uid}"
    make.defer(f"delete pack {ref}", lambda: delete_quietly(admin, ref))

    # --- v1
    status1, up1 = upload(admin, "e2e_reload_v1", ref)
    assert (status1, up1["pack"]["ref"], up1["pack"]["version"]) == (201, ref, "1.0.0"), \
        f"upload v1: {status1} {up1}"
    pack_id, action_ids = up1["pack"]["id"], _action_ids(admin, ref)

    first = wait_for_execution(admin, admin.execute(f"{ref}.whoami", {})["id"], "completed",
                               timeout=INSTALL_DEADLINE)
    v1 = _data(first, "whoami on v1")
    assert (v1["code"], v1["lib"], v1["six"], v1["pack_yaml_version"]) == \
        ("v1", "v1", "1.15.0", "1.0.0"), f"whoami on v1 reported {v1}"
    assert v1["prefix"].endswith(f"/{ref}/python"), f"whoami on v1: sys.prefix {v1['prefix']!r}"
    assert stdout_lines(admin, first["id"])[0] == "v1", "whoami on v1 did not print v1 first"

    # --- slow_whoami in flight on v1
    pids_before = service_pids(target) if target.embedded else None
    slow = admin.execute(f"{ref}.slow_whoami", {"seconds": SLOW_SECONDS})
    wait_for_stdout(admin, slow["id"], "started v1", timeout=WARM_DEADLINE)

    # --- v2, forced, with /health polled throughout
    with HealthPoller(target.api_url) as health:
        status2, up2 = upload(admin, "e2e_reload_v2", ref, force=True)
        in_flight = admin.get_execution(slow["id"])
        new = wait_for_execution(admin, admin.execute(f"{ref}.whoami", {})["id"], "completed",
                                 timeout=INSTALL_DEADLINE)
    assert in_flight["status"] == "running", \
        f"premise: slow_whoami must still be running when the v2 upload returned, it is " \
        f"`{in_flight['status']}` (result {in_flight.get('result')})"

    assert (status2, up2["pack"]["version"]) == (201, "1.1.0"), f"upload v2: {status2} {up2}"
    assert up2["pack"]["id"] == pack_id, \
        f"the forced re-upload changed the pack id: {pack_id} -> {up2['pack']['id']}"
    assert _action_ids(admin, ref) == action_ids, \
        f"the forced re-upload changed action ids: {action_ids} -> {_action_ids(admin, ref)}"
    assert admin.get_pack(ref)["version"] == "1.1.0", "GET /packs/<ref> does not say 1.1.0"

    assert len(health.probes) >= HEALTH_INTERVAL_PROBES_MIN and not health.failures, \
        f"/health failed during the update: {health.failures} ({len(health.probes)} probes)"
    if target.embedded:
        assert service_pids(target) == pids_before, \
            f"a service restarted during the update: {pids_before} -> {service_pids(target)}"

    # --- the in-flight run finished on v1
    done = wait_for_execution(admin, slow["id"], "completed", timeout=WARM_DEADLINE)
    old = _data(done, "in-flight slow_whoami")
    assert old["code"] == "v1", f"in-flight slow_whoami ran v{old['code']} code: {old}"
    lines = stdout_lines(admin, slow["id"])
    assert lines[:2] == ["started v1", "v1"], f"in-flight slow_whoami printed {lines}"
    if target.embedded:
        assert (old["lib"], old["six"], old["pack_yaml_version"]) == ("v1", "1.15.0", "1.0.0"), \
            f"the in-flight run's late imports / reads saw the new version: {old}"
        assert old["prefix"] == v1["prefix"], f"in-flight run's venv: {old['prefix']!r}"

    # --- new runs use v2 code and the rebuilt env
    v2 = _data(new, "whoami after the update")
    assert (v2["code"], v2["lib"], v2["six"], v2["pack_yaml_version"]) == \
        ("v2", "v2", "1.16.0", "1.1.0"), f"whoami after the update reported {v2}"
    assert stdout_lines(admin, new["id"])[0] == "v2", "whoami after the update did not print v2"
    assert v2["prefix"] == v1["prefix"], \
        f"expected the pack's env at the same path, got {v2['prefix']!r} (was {v1['prefix']!r})"
    assert v2["six_file"].startswith(v2["prefix"] + "/"), f"six not from the pack env: {v2}"
    assert v2["marker"] == hashlib.sha256(V2_REQUIREMENTS).hexdigest(), \
        f"expected the env marker to hold sha256(v2 requirements.txt), got {v2['marker']!r}"
