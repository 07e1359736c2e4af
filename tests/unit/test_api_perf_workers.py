"""Unit tests of `server.workers` (attune_emulator/api/service.py): the supervisor forks its
workers on one shared socket, stops them on SIGTERM to its process group (each worker stopped
once, gracefully), restarts a worker that died, and takes every worker with it when it is killed
with SIGKILL. The workers here are stand-ins (no app, no database) run in a child interpreter."""
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from attune_emulator.api import service

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent("""
    import os, signal, sys, time
    sys.path.insert(0, {root!r})
    from attune_emulator.api import service

    def fake_worker(cfg, sock, index, parent):
        service._die_with_parent(parent)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, service._ignore)
        stops = []
        def stop(sig, frame):
            stops.append(sig)
            with open(os.path.join({out!r}, f"stop-{{os.getpid()}}"), "a") as fh:
                fh.write("x")
        signal.signal(service.STOP_SIGNAL, stop)
        with open(os.path.join({out!r}, f"worker-{{index}}-{{os.getpid()}}"), "w") as fh:
            fh.write(str(sock.getsockname()[1]))
        while not stops:
            time.sleep(0.05)
        time.sleep(0.3)  # a graceful stop takes a moment; a second stop signal would show
        os._exit(0)

    service._run_worker = fake_worker
    service.RESPAWN_MIN_INTERVAL = 0.1
    sys.exit(service._supervise(None, "127.0.0.1", {port}, 2))
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _workers(out: Path) -> dict[int, int]:
    found = {}
    for f in out.glob("worker-*"):
        _, index, pid = f.name.split("-")
        found[int(pid)] = int(index)
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def _wait(pred, timeout=10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def supervisor(tmp_path):
    port = _free_port()
    script = SCRIPT.format(root=str(ROOT), out=str(tmp_path), port=port)
    proc = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    assert _wait(lambda: len(_workers(tmp_path)) == 2), "two workers did not start"
    yield proc, tmp_path, port
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)
    for pid in _workers(tmp_path):
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_workers_share_the_parents_listening_socket(supervisor):
    proc, out, port = supervisor
    assert {int(f.read_text()) for f in out.glob("worker-*")} == {port}
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) == 0


def test_sigterm_to_the_group_stops_each_worker_once_and_exits_0(supervisor):
    proc, out, _ = supervisor
    workers = _workers(out)
    os.killpg(proc.pid, signal.SIGTERM)
    assert proc.wait(10) == 0
    assert _wait(lambda: not any(_alive(p) for p in workers))
    assert sorted(f.read_text() for f in out.glob("stop-*")) == ["x", "x"]


def test_a_dead_worker_is_started_again(supervisor):
    proc, out, _ = supervisor
    (pid, index), = [(p, i) for p, i in _workers(out).items() if i == 0]
    os.kill(pid, signal.SIGKILL)
    assert _wait(lambda: len(_workers(out)) == 3), "worker 0 was not restarted"
    assert sorted(_workers(out).values()) == [0, 0, 1]
    assert proc.poll() is None


def test_sigkill_of_the_parent_takes_the_workers_with_it(supervisor):
    proc, out, port = supervisor
    workers = _workers(out)
    proc.kill()
    proc.wait(5)
    assert _wait(lambda: not any(_alive(p) for p in workers)), "a worker outlived its parent"
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0, "the port is still served"


@pytest.mark.parametrize("raw,expected", [(None, 1), (1, 1), (3, 3), ("2", 2), (0, 1),
                                          (True, 1), ("many", 1)])
def test_worker_count_parsing(raw, expected):
    class Cfg:
        def get(self, key, default=None):
            return default if raw is None else raw
    assert service.worker_count(Cfg()) == expected


def test_worker_count_auto_follows_the_cpus(monkeypatch):
    class Cfg:
        def get(self, key, default=None):
            return "auto"
    monkeypatch.setattr(service.os, "cpu_count", lambda: 2)
    assert service.worker_count(Cfg()) == 2
    monkeypatch.setattr(service.os, "cpu_count", lambda: 64)
    assert service.worker_count(Cfg()) == service.MAX_AUTO_WORKERS
