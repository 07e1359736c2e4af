"""Logging set-up shared by the services: one line per record on stderr, UTC timestamps.

Format: `2026-11-22T01:02:03.456Z INFO  api attune_emulator.api.app: message`. The suite's
service manager slices these files by timestamp for failure reports, so keep the prefix stable.
"""
from __future__ import annotations

import logging
import sys
import time

_LEVELS = {"trace": logging.DEBUG, "debug": logging.DEBUG, "info": logging.INFO,
           "warn": logging.WARNING, "error": logging.ERROR}


class _UTCFormatter(logging.Formatter):
    converter = time.gmtime

    def formatTime(self, record, datefmt=None):  # noqa: N802 (logging's API)
        t = time.gmtime(record.created)
        return time.strftime("%Y-%m-%dT%H:%M:%S", t) + f".{int(record.msecs):03d}Z"


def setup_logging(service: str, cfg=None) -> None:
    # The format uses none of the caller, thread or process fields: do not collect them (the
    # logging module's documented optimisation flags; findCaller walks the stack per record).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    level = _LEVELS.get(str(cfg.get("log.level", "info")).lower(), logging.INFO) if cfg else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_UTCFormatter(f"%(asctime)s %(levelname)-5s {service} %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("pika", "urllib3", "websockets", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
