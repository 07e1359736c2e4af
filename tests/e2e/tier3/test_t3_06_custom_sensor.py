"""T3.6 Sensor-generated custom event (scenarios.md T3.6).

The fixture pack `e2e_sensor` (uploaded per test) holds the trigger `file_changed` and the python
sensor `file_watch`. The sensor service runs the sensor as a process of its own while an enabled
rule uses the trigger (restarting it when the rules change); the process polls each rule's
`trigger_params.path` and posts `POST /api/v1/events` with its sensor token: a `seq 0` baseline when
it starts watching, then one event per content change, bound to the rule (`rule_<id>`).
"""
import hashlib
from pathlib import Path

import pytest

from tests.helpers.lanes import (expect_absent_for, sensor_processes, sensor_shared_dir,
                                 upload_fixture_pack, write_atomic)
from tests.helpers.polling import wait_for_execution, wait_for_items, wait_until
from tests.helpers.scenario import chain_for_event, full_events, total

pytestmark = [pytest.mark.tier3, pytest.mark.sensor, pytest.mark.packs]

POLL_MS = 200


def _events(admin, rule_ref: str, seq: int) -> list[dict]:
    return [e for e in full_events(admin, rule_ref) if e["payload"].get("seq") == seq]


def _wait_event(admin, rule_ref: str, seq: int, count: int = 1, timeout: float = 15) -> dict:
    found = wait_until(lambda: _events(admin, rule_ref, seq), timeout=timeout,
                       done=lambda evs: len(evs) >= count,
                       description=f"{count} event(s) with seq {seq} for rule {rule_ref}")
    return found[count - 1]


def test_custom_file_sensor_emits_events_that_trigger_rules(admin, make, uid, e2e_pack, target,
                                                            tmp_path):
    """T3.6 Sensor-generated custom event: the file_watch sensor posts a seq 0 baseline (no
    execution), then one event per write (seq 1, 2) with the content and its sha256, bound to the
    rule and with source_ref "sensor:<sensor ref>"; exactly 2 executions whose result.data.content
    is each content; no event without a change (3 poll intervals after the last execution);
    disabling the rule restarts the sensor without it, so a third write gives no event while a
    second rule on another file still fires; with no enabled rule left the sensor process stops."""
    shared = sensor_shared_dir(target, tmp_path, uid)
    if shared is None:
        pytest.skip("needs a directory shared with the sensor host: set ATTUNE_E2E_SHARED_DIR")
    pack = upload_fixture_pack(make, "e2e_sensor", f"e2e_sensor_{uid}")
    trigger_ref, sensor_ref = f"{pack}.file_changed", f"{pack}.file_watch"
    file_a, file_b = Path(shared, "a.txt"), Path(shared, "b.txt")
    write_atomic(file_a, f"initial-a-{uid}")
    write_atomic(file_b, f"initial-b-{uid}")

    def rule(slug: str, path: Path) -> dict:
        return make.rule(slug=slug, trigger_ref=trigger_ref,
                         trigger_params={"path": str(path), "poll_interval_ms": POLL_MS},
                         action_ref=f"{e2e_pack}.echo_params",
                         action_params={"content": "{{ event.payload.content }}"},
                         conditions={"expression": "event.payload.seq > 0"})

    # B first: creating A afterwards restarts the sensor, so A's events start with one baseline.
    rule_b = rule("watch_b", file_b)
    _wait_event(admin, rule_b["ref"], 0)
    rule_a = rule("watch_a", file_a)
    baseline = _wait_event(admin, rule_a["ref"], 0)
    assert baseline["payload"]["content"] == f"initial-a-{uid}", f"baseline: {baseline['payload']}"
    assert baseline["source_ref"] == f"sensor:{sensor_ref}", f"baseline event: {baseline}"

    executions = []
    for seq in (1, 2):
        content = f"alpha-{seq}-{uid}"
        write_atomic(file_a, content)
        event = _wait_event(admin, rule_a["ref"], seq)
        p = event["payload"]
        assert (p["content"], p["path"]) == (content, str(file_a)), f"event {seq}: {p}"
        assert p["sha256"] == hashlib.sha256(content.encode()).hexdigest(), f"event {seq}: {p}"
        assert (event["rule"], event["rule_ref"]) == (rule_a["id"], rule_a["ref"]), f"{event}"
        assert event["trigger_ref"] == trigger_ref, f"event {seq}: {event}"
        assert event["source_ref"] == f"sensor:{sensor_ref}", f"event {seq}: {event}"
        _, execution = chain_for_event(admin, event["id"])
        execution = wait_for_execution(admin, execution["id"], "completed", timeout=20)
        assert (execution["result"].get("data") or {}).get("content") == content, (
            f"execution {execution['id']} result: {execution['result']}")
        executions.append(execution)

    # The sensor reacts within one poll interval; three intervals without a write add nothing.
    expect_absent_for(lambda: total(admin.list_events, rule_ref=rule_a["ref"]) > 3,
                      3 * POLL_MS / 1000, f"a 4th event of {rule_a['ref']} without a change")
    assert total(admin.list_events, rule_ref=rule_a["ref"]) == 3, "expected seq 0, 1, 2 only"
    assert total(admin.list_executions, rule_ref=rule_a["ref"]) == 2, (
        "expected exactly 2 executions (the baseline matches no condition)")

    # Disable A: the sensor restarts without it (B's second baseline), so writes to A go unseen.
    b_baselines = len(_events(admin, rule_b["ref"], 0))
    assert admin.disable_rule(rule_a["ref"])["enabled"] is False
    _wait_event(admin, rule_b["ref"], 0, count=b_baselines + 1)
    write_atomic(file_a, f"alpha-3-{uid}")
    # P2-style marker: B's changes, written after A's, are seen by the running sensor; B's second
    # change proves at least one full polling pass started after the write to A.
    for seq in (1, 2):
        write_atomic(file_b, f"beta-{seq}-{uid}")
        _wait_event(admin, rule_b["ref"], seq)
    assert total(admin.list_events, rule_ref=rule_a["ref"]) == 3, (
        "the disabled rule got an event for the third write")
    assert total(admin.list_executions, rule_ref=rule_a["ref"]) == 2, "executions changed"

    # No enabled rule left: the sensor process stops (observable where the sensor runs locally).
    assert admin.disable_rule(rule_b["ref"])["enabled"] is False
    if target.embedded:
        wait_until(lambda: not sensor_processes(sensor_ref), timeout=15,
                   description=f"the {sensor_ref} process to stop after its last rule was disabled")
    wait_for_items(lambda: admin.list_executions(rule_ref=rule_b["ref"]), 2, timeout=20,
                   description=f"executions of {rule_b['ref']}")
