"""`python -m attune_emulator api`: serve the HTTP API with uvicorn.

Needs the database; the message queue is optional (without `message_queue.url` the API serves
requests and simply does not publish, as upstream). SIGTERM/SIGINT stop it gracefully: uvicorn
stops accepting, lets in-flight requests finish (bounded), then the app's lifespan closes the pool.

Extension `server.workers` (default 1, as upstream's single process; `auto` = one per CPU, at
most 4): with N > 1 the process binds the port once and forks N worker processes that accept on
the shared socket, each with its own pool and app. State every request depends on is shared
through PostgreSQL (the E5 rate-limit window, the authz epoch behind the permission caches). The
parent only supervises: it forwards SIGTERM/SIGINT, waits for the workers, restarts a worker that
died on its own, and the workers die with it (PR_SET_PDEATHSIG SIGKILL) even when it is killed.
"""
from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import socket
import sys
import time

import uvicorn

from ..db import Database
from .app import create_app

log = logging.getLogger(__name__)

DB_WAIT_SECONDS = 30
GRACEFUL_SHUTDOWN_SECONDS = 5
MAX_AUTO_WORKERS = 4
RESPAWN_MIN_INTERVAL = 1.0
PR_SET_PDEATHSIG = 1


class _Server(uvicorn.Server):
    """uvicorn re-raises a captured SIGTERM after its graceful shutdown, which ends the process
    with status 143; stop quietly instead (a second signal forces the exit)."""

    def handle_exit(self, sig, frame) -> None:
        if self.should_exit:
            self.force_exit = True
        else:
            log.info("signal %d received; shutting down", sig)
            self.should_exit = True


def _wait_for_database(db: Database, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while True:
        if db.ping():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.5)


# Upstream's server (axum on hyper) keeps idle HTTP/1.1 connections open; uvicorn's default 5 s
# idle timeout races with clients that reuse a pooled connection after a pause (the server closes
# it just as the next request is sent: "Remote end closed connection without response").
KEEP_ALIVE_SECONDS = 120


def worker_count(cfg) -> int:
    """`server.workers`: a positive integer or `auto`; anything else is 1."""
    raw = cfg.get("server.workers", 1)
    if isinstance(raw, str) and raw.strip().lower() == "auto":
        return max(1, min(os.cpu_count() or 1, MAX_AUTO_WORKERS))
    if isinstance(raw, bool):
        return 1
    try:
        return max(1, int(raw))
    except (TypeError, ValueError):
        log.warning("server.workers=%r is not a number or 'auto'; using 1", raw)
        return 1


STOP_SIGNAL = signal.SIGUSR1  # parent -> worker: stop (gracefully; a second one forces it)


def _ignore(sig, frame) -> None:
    """Workers leave SIGTERM/SIGINT to the parent: a stop signal sent to the whole process
    group would otherwise reach them twice (directly and forwarded), and uvicorn forces the
    exit on the second. A Python handler, unlike SIG_IGN, is not inherited across exec."""


class _WorkerServer(_Server):
    @contextlib.contextmanager
    def capture_signals(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, _ignore)
        signal.signal(STOP_SIGNAL, self.handle_exit)
        yield


def _uvicorn_config(app, cfg) -> uvicorn.Config:
    return uvicorn.Config(app, host=cfg.get("server.host", "0.0.0.0"),
                          port=int(cfg.get("server.port", 8080)), log_level="warning",
                          lifespan="on", access_log=False, workers=1, proxy_headers=False,
                          timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
                          timeout_keep_alive=KEEP_ALIVE_SECONDS, log_config=None)


def main(cfg) -> int:
    db = Database.from_config(cfg)
    if not _wait_for_database(db, DB_WAIT_SECONDS):
        log.error("database %s is not reachable; giving up", cfg.database_url.rsplit("@", 1)[-1])
        return 1
    if not cfg.amqp_url:
        log.warning("no message_queue configured: the API will not publish messages")
    host = cfg.get("server.host", "0.0.0.0")
    port = int(cfg.get("server.port", 8080))
    workers = worker_count(cfg)
    if workers > 1:
        db.close()  # no connection may be shared across fork
        return _supervise(cfg, host, port, workers)
    app = create_app(cfg, db=db)
    server = _Server(_uvicorn_config(app, cfg))
    log.info("API listening on http://%s:%d", host, port)
    server.run()  # handles SIGTERM/SIGINT and returns after a graceful shutdown
    log.info("API stopped")
    return 0


# ------------------------------------------------------------------------------ several processes

def _bind(host: str, port: int) -> socket.socket:
    """The listening socket every worker accepts on (no SO_REUSEPORT: a second API on the same
    port still fails to start instead of silently sharing it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets whose proto says TCP
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _die_with_parent(parent_pid: int) -> None:
    """SIGKILL this process when the parent dies, however it dies (Linux)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        log.warning("PR_SET_PDEATHSIG unavailable; workers may outlive a killed parent")
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def _run_worker(cfg, sock: socket.socket, index: int, parent_pid: int) -> None:
    """Body of a forked worker; never returns."""
    code = 0
    try:
        _die_with_parent(parent_pid)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, _ignore)
        signal.signal(STOP_SIGNAL, signal.SIG_DFL)  # stopped while starting: just go
        app = create_app(cfg, db=Database.from_config(cfg), background=index == 0)
        server = _WorkerServer(_uvicorn_config(app, cfg))
        server.run(sockets=[sock])
    except BaseException:  # noqa: BLE001 - report and leave; the parent restarts us
        log.exception("API worker %d failed", index)
        code = 1
    finally:
        for handler in logging.getLogger().handlers:
            try:
                handler.flush()
            except Exception:  # noqa: BLE001
                pass
        os._exit(code)


def _supervise(cfg, host: str, port: int, workers: int) -> int:
    try:
        sock = _bind(host, port)
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", host, port, exc)
        return 1
    parent = os.getpid()
    children: dict[int, int] = {}       # pid -> worker index
    started: dict[int, float] = {}      # worker index -> last start (monotonic)
    stopping = {"signal": None}

    def spawn(index: int) -> None:
        started[index] = time.monotonic()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _run_worker(cfg, sock, index, parent)
        children[pid] = index
        if stopping["signal"] is not None:  # a stop signal came while forking
            os.kill(pid, STOP_SIGNAL)

    def forward(sig, frame) -> None:
        if os.getpid() != parent:  # a worker before it installed its own handlers
            return
        first = stopping["signal"] is None
        stopping["signal"] = sig
        if first:
            log.info("signal %d received; stopping %d API worker(s)", sig, len(children))
        for pid in list(children):
            try:
                os.kill(pid, STOP_SIGNAL)  # a second one makes the workers force their exit
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for index in range(workers):
        spawn(index)
    log.info("API listening on http://%s:%d (%d worker processes)", host, port, workers)
    while children:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            break
        index = children.pop(pid, None)
        if index is None or stopping["signal"] is not None:
            continue
        log.warning("API worker %d (pid %d) exited with status %s; starting it again",
                    index, pid, os.waitstatus_to_exitcode(status))
        pause = RESPAWN_MIN_INTERVAL - (time.monotonic() - started.get(index, 0.0))
        if pause > 0:
            time.sleep(pause)
        if stopping["signal"] is None:
            spawn(index)
    sock.close()
    log.info("API stopped")
    return 0
