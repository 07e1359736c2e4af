"""T3.19 Dependency conflict isolation (scenarios.md T3.19, behavior.md §2.6).

Two fixture packs pin conflicting versions of one library: `e2e_dep_a` (`requests==2.25.0`) and
`e2e_dep_b` (`requests==2.28.0`). Both are uploaded under per-test refs (`e2e_dep_a_<uid>`,
`e2e_dep_b_<uid>`) and each gets its own virtualenv `<runtime_envs_dir>/<pack ref>/python`. Their
action `report_version` reports `requests.__version__`, `requests.__file__`, `sys.prefix`, the `site-packages` folders on
`sys.path`, its PID and its own process window (`started`/`finished`, time.time()).

Deadlines (tests/helpers/deps.py): the first run of each pack builds its venv, a cold PyPI download
and install on a 2-core machine: 240 s; every later run: 20 s. The concurrent runs hold for 2 s
inside the action so that their process windows overlap whatever the dispatch order.
"""
import pytest

from tests.helpers.deps import INSTALL_DEADLINE, INSTALL_TEST_TIMEOUT, WARM_DEADLINE
from tests.helpers.pack_versions import delete_quietly, process_windows_overlap, upload
from tests.helpers.polling import wait_for_execution
from tests.helpers.scenario import max_overlap
from tests.helpers.workflows import run_window

pytestmark = [pytest.mark.tier3, pytest.mark.runner, pytest.mark.packs, pytest.mark.python,
              pytest.mark.slow, pytest.mark.timeout(INSTALL_TEST_TIMEOUT)]

PINS = {"a": "2.25.0", "b": "2.28.0"}
HOLD = 2.0  # seconds each concurrent run stays running (inside the action)


@pytest.fixture
def dep_packs(admin, uid):
    """e2e_dep_a and e2e_dep_b uploaded as e2e_dep_a_<uid> / e2e_dep_b_<uid>; deleted afterwards."""
    refs = {side: f"e2e_dep_{side}_{uid}" for side in PINS}
    uploaded = []
    try:
        for side, ref in refs.items():
            upload(admin, f"e2e_dep_{side}", ref)
            uploaded.append(ref)
        yield refs
    finally:
        for ref in uploaded:
            delete_quietly(admin, ref)


def _report(execution: dict) -> dict:
    assert execution["status"] == "completed", \
        f"expected report_version to complete, got `{execution['status']}`: {execution['result']}"
    data = execution["result"].get("data")
    assert isinstance(data, dict), f"expected a JSON object as result.data: {execution['result']}"
    return data


def _assert_isolated(data: dict, side: str, ref: str, other_ref: str, what: str) -> None:
    """`data` comes from pack `ref`'s own venv with its own pin, and nothing from `other_ref`."""
    assert data["version"] == PINS[side], \
        f"{what}: expected requests {PINS[side]} (pack {ref}'s pin), got {data['version']!r}"
    prefix = data["prefix"]
    assert prefix.endswith(f"/{ref}/python"), \
        f"{what}: expected sys.prefix to end with /{ref}/python, got {prefix!r}"
    assert data["file"].startswith(prefix + "/"), \
        f"{what}: expected requests.__file__ under {prefix}, got {data['file']!r}"
    assert data["executable"].startswith(prefix + "/"), \
        f"{what}: expected sys.executable under {prefix}, got {data['executable']!r}"
    assert data["site_packages"] and all(p.startswith(prefix + "/")
                                         for p in data["site_packages"]), \
        f"{what}: expected every site-packages on sys.path inside {prefix}, got " \
        f"{data['site_packages']}"
    leaked = [p for p in data["site_packages"] + [data["file"]] if f"/{other_ref}/" in p]
    assert not leaked, f"{what}: paths of the other pack {other_ref} visible: {leaked}"


def test_conflicting_pins_stay_isolated_sequentially_and_concurrently(admin, dep_packs):
    """T3.19 Dependency conflict isolation. Sequential: A's first run (builds its venv) reports
    requests 2.25.0, then B's (after A completed; builds its own) 2.28.0; each sys.prefix ends with
    /<its pack ref>/python, the prefixes differ, requests.__file__, sys.executable and every
    site-packages folder on sys.path lie inside the run's own prefix, and no path of the other
    pack appears. Concurrent, two rounds: A and B submitted together (each holding 2 s inside the
    action) both complete in two different processes whose own time.time() windows intersect, as
    do the API's started_at..updated windows, and each still reports its own pin from the same
    venv as in the sequential runs."""
    ref_a, ref_b = dep_packs["a"], dep_packs["b"]
    other = {"a": ref_b, "b": ref_a}

    # --- sequential: A to completion, then B (each first run builds that pack's venv)
    first = {}
    for side, ref in dep_packs.items():
        ex = admin.execute(f"{ref}.report_version", {})
        first[side] = _report(wait_for_execution(admin, ex["id"], "completed",
                                                 timeout=INSTALL_DEADLINE))
        _assert_isolated(first[side], side, ref, other[side], f"sequential run {side.upper()}")
    assert first["a"]["prefix"] != first["b"]["prefix"], \
        f"both packs ran in the same venv {first['a']['prefix']!r}"
    assert first["b"]["started"] > first["a"]["finished"], \
        f"expected B to run after A completed: A ended {first['a']['finished']}, B started " \
        f"{first['b']['started']}"

    # --- concurrent, twice
    for round_no in (1, 2):
        submitted = {side: admin.execute(f"{ref}.report_version", {"hold": HOLD})
                     for side, ref in dep_packs.items()}
        done = {side: wait_for_execution(admin, ex["id"], "completed", timeout=WARM_DEADLINE)
                for side, ex in submitted.items()}
        a, b = _report(done["a"]), _report(done["b"])
        _assert_isolated(a, "a", ref_a, ref_b, f"round {round_no}, run A")
        _assert_isolated(b, "b", ref_b, ref_a, f"round {round_no}, run B")
        assert (a["prefix"], b["prefix"]) == (first["a"]["prefix"], first["b"]["prefix"]), \
            f"round {round_no}: the venvs changed: A {first['a']['prefix']} -> {a['prefix']}, " \
            f"B {first['b']['prefix']} -> {b['prefix']}"
        assert a["pid"] != b["pid"], f"round {round_no}: both runs report PID {a['pid']}"
        assert process_windows_overlap(a, b), \
            f"round {round_no}: expected the two processes to run at the same time: A " \
            f"[{a['started']:.3f}, {a['finished']:.3f}], B [{b['started']:.3f}, " \
            f"{b['finished']:.3f}]"
        windows = [run_window(ex) for ex in done.values()]
        assert max_overlap(windows) == 2, \
            f"round {round_no}: expected the executions' running windows to intersect: {windows}"
