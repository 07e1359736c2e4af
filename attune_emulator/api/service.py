"""`python -m attune_emulator api`: serve the HTTP API with uvicorn (one process).

Needs the database; the message queue is optional (without `message_queue.url` the API serves
requests and simply does not publish, as upstream). SIGTERM/SIGINT stop it gracefully: uvicorn
stops accepting, lets in-flight requests finish (bounded), then the app's lifespan closes the pool.
"""
from __future__ import annotations

import logging
import time

import uvicorn

from ..db import Database
from .app import create_app

log = logging.getLogger(__name__)

DB_WAIT_SECONDS = 30
GRACEFUL_SHUTDOWN_SECONDS = 5


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


def main(cfg) -> int:
    db = Database.from_config(cfg)
    if not _wait_for_database(db, DB_WAIT_SECONDS):
        log.error("database %s is not reachable; giving up", cfg.database_url.rsplit("@", 1)[-1])
        return 1
    if not cfg.amqp_url:
        log.warning("no message_queue configured: the API will not publish messages")
    app = create_app(cfg, db=db)
    host = cfg.get("server.host", "0.0.0.0")
    port = int(cfg.get("server.port", 8080))
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on",
                            access_log=False, workers=1, proxy_headers=False,
                            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
                            timeout_keep_alive=KEEP_ALIVE_SECONDS, log_config=None)
    server = _Server(config)
    log.info("API listening on http://%s:%d", host, port)
    server.run()  # handles SIGTERM/SIGINT and returns after a graceful shutdown
    log.info("API stopped")
    return 0
