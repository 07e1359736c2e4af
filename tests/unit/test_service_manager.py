"""tests/helpers/services.py with dummy processes (no Attune service is started)."""
import datetime as dt
import os
import signal
import sys
import textwrap
import time

import pytest

from tests.helpers import services as S
from tests.helpers.services import ServiceManager, slice_log_text

UTC = dt.timezone.utc

LOG = textwrap.dedent("""\
    preamble without timestamp
    2026-11-22T01:00:00.000Z INFO  api a: one
    2026-11-22T01:00:01.500Z INFO  api a: two
    Traceback (most recent call last):
      File "x.py", line 1
    2026-11-22T01:00:03.000Z INFO  api a: three
    2026-11-22T01:00:05.999Z ERROR api a: four
    """)


def t(s):
    return dt.datetime(2026, 11, 22, 1, 0, 0, tzinfo=UTC) + dt.timedelta(seconds=s)


def test_log_slice_window_and_continuations():
    out = slice_log_text(LOG, t(1), t(3))
    assert out.splitlines() == [
        "2026-11-22T01:00:01.500Z INFO  api a: two",
        "Traceback (most recent call last):",
        '  File "x.py", line 1',
        "2026-11-22T01:00:03.000Z INFO  api a: three",
    ]


def test_log_slice_open_ended_and_precision():
    assert slice_log_text(LOG, t(5)).splitlines() == ["2026-11-22T01:00:05.999Z ERROR api a: four"]
    # `since` with microseconds still includes the line logged in the same millisecond
    assert "four" in slice_log_text(LOG, t(5.9994))
    assert slice_log_text(LOG, None).splitlines()[0] == "preamble without timestamp"
    assert slice_log_text(LOG, t(10)) == ""


def test_log_slice_timezones():
    plus2 = dt.timezone(dt.timedelta(hours=2))
    since = t(1).astimezone(plus2)
    assert slice_log_text(LOG, since, t(1.6)).splitlines()[0].endswith("two")
    naive_local = t(3).astimezone().replace(tzinfo=None)  # naive = local time
    assert slice_log_text(LOG, naive_local).splitlines()[0].endswith("three")


@pytest.fixture
def manager(tmp_path, monkeypatch):
    cfg = tmp_path / "config.yaml"
    cfg.write_text("server: {host: 127.0.0.1, port: 28999}\nnotifier: {host: 0.0.0.0, port: 28998}\n"
                   "database: {url: 'postgresql://u:p@127.0.0.1:1/db'}\n")
    for key in list(os.environ):  # the run's own overrides must not leak into these tests
        if key.startswith(("ATTUNE__", "ATTUNE_E2E_CMD_")) or key in ("ATTUNE_API_URL", "ATTUNE_CONFIG"):
            monkeypatch.delenv(key, raising=False)
    m = ServiceManager(cfg, tmp_path / "state", tmp_path / "logs")
    yield m
    for name in m.names():
        m.kill_session(name)


def test_default_command_and_template(manager, monkeypatch):
    monkeypatch.delenv("ATTUNE_E2E_CMD_API", raising=False)
    assert manager.command("api") == [manager.python, "-m", "attune_emulator", "api",
                                      "--config", str(manager.config_path)]
    monkeypatch.setenv("ATTUNE_E2E_CMD_API", "/opt/attune/bin/attune-api --config '{config}' -v")
    assert manager.command("api") == ["/opt/attune/bin/attune-api", "--config",
                                      str(manager.config_path), "-v"]
    monkeypatch.setenv("ATTUNE_E2E_CMD_WORKER_2", "{python} -m x")
    assert manager.command("worker-2") == [manager.python, "-m", "x"]


def test_urls(manager):
    assert manager.api_url() == "http://127.0.0.1:28999"
    assert manager.notifier_url() == "http://127.0.0.1:28998"


def test_pid_files_signal_and_exit_code(manager, monkeypatch):
    monkeypatch.setenv("ATTUNE_E2E_CMD_DUMMY", "sleep 30")
    pid = manager.start("dummy")
    assert manager.pid("dummy") == pid and manager.is_running("dummy")
    assert manager.start("dummy") == pid  # already running: no second process
    lines = (manager.run_dir / "dummy.pid").read_text().splitlines()
    assert lines[0] == str(pid) and lines[1] and lines[2].startswith("dummy-")
    assert manager.rss_kb("dummy") > 0
    assert manager.cpu_seconds("dummy") >= 0
    # another manager (as in another process) sees and controls the same service
    other = ServiceManager(manager.config_path, manager.state_dir, manager.log_dir)
    assert other.pid("dummy") == pid
    assert other.wait_exit("dummy", 0.2) is None
    other.signal("dummy", signal.SIGTERM)
    assert other.wait_exit("dummy", 5) == -signal.SIGTERM
    assert not manager.is_running("dummy")
    # the reaper thread of `manager` (the parent) logs the exit after recording it; under load
    # that line can trail wait_exit's answer, so wait for it (bounded) instead of reading once
    deadline = time.monotonic() + 5
    log = manager.log_path("dummy").read_text()
    while "exited with code -15" not in log and time.monotonic() < deadline:
        time.sleep(0.05)
        log = manager.log_path("dummy").read_text()
    assert "manager: starting dummy: sleep 30" in log
    assert "exited with code -15" in log, f"no exit line within 5 s; log:\n{log}"
    # restart gives a new pid; kill() simulates a crash
    pid2 = manager.restart("dummy")
    assert pid2 != pid and manager.is_running("dummy")
    manager.kill("dummy")
    assert manager.wait_exit("dummy", 5) == -signal.SIGKILL


def test_exit_code_of_a_failing_command(manager, monkeypatch):
    monkeypatch.setenv("ATTUNE_E2E_CMD_BAD", "sh -c 'echo boom >&2; exit 3'")
    with pytest.raises(S.ServiceError, match="exited at once with code 3"):
        manager.start("bad", wait_seconds=1)
    assert "boom" in manager.log_path("bad").read_text()


def test_env_is_passed_and_remembered(manager, monkeypatch, tmp_path):
    out = tmp_path / "env.txt"
    monkeypatch.setenv("ATTUNE_E2E_CMD_ENVY",
                       f"sh -c 'echo $ATTUNE__WORKER__NAME $ATTUNE_CONFIG $ATTUNE_API_URL >> {out}; sleep 30'")
    manager.start("envy", service="worker", env={"ATTUNE__WORKER__NAME": "lane-2"})
    manager.restart("envy", grace=2)
    deadline = time.time() + 5
    while time.time() < deadline and len(out.read_text().splitlines() if out.exists() else []) < 2:
        time.sleep(0.05)
    lines = out.read_text().splitlines()
    assert lines == [f"lane-2 {manager.config_path} http://127.0.0.1:28999"] * 2


def test_stop_kills_detached_descendants(manager, monkeypatch, tmp_path):
    """A child in its own session (like a worker's action) does not survive stop()."""
    pidfile = tmp_path / "grandchild.pid"
    script = tmp_path / "svc.py"
    script.write_text(textwrap.dedent(f"""\
        import signal, subprocess, sys, time
        p = subprocess.Popen(["sleep", "60"], start_new_session=True)
        open({str(pidfile)!r}, "w").write(str(p.pid))
        signal.signal(signal.SIGTERM, lambda *a: None)  # ignores SIGTERM: needs SIGKILL
        time.sleep(60)
        """))
    monkeypatch.setenv("ATTUNE_E2E_CMD_TREE", f"{sys.executable} {script}")
    manager.start("tree")
    deadline = time.time() + 5
    while time.time() < deadline and not pidfile.exists():
        time.sleep(0.05)
    gc = int(pidfile.read_text())
    assert gc in manager.leftovers("tree")
    t0 = time.monotonic()
    code = manager.stop("tree", grace=0.5)
    assert time.monotonic() - t0 < 5
    assert code == -signal.SIGKILL
    time.sleep(0.1)
    assert S._is_zombie(gc), "the detached grandchild survived stop()"
    assert manager.leftovers("tree") == []


def test_stop_all_and_status(manager, monkeypatch):
    for name in ("one", "two"):
        monkeypatch.setenv(f"ATTUNE_E2E_CMD_{name.upper()}", "sleep 30")
        manager.start(name)
    assert set(manager.names()) == {"one", "two"}
    codes = manager.stop_all(grace=5)
    assert codes == {"one": -signal.SIGTERM, "two": -signal.SIGTERM}
    assert not any(v["running"] for v in manager.status().values())
    assert manager.stop("one") is None  # not running: nothing to do


def test_pid_reuse_is_detected(manager):
    manager.run_dir.mkdir(parents=True, exist_ok=True)
    (manager.run_dir / "ghost.pid").write_text(f"{os.getpid()}\n1\nghost-x\nsleep\n")
    assert manager.pid("ghost") is None  # our own pid, but another start time
