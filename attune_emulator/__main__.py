"""Command line: `python -m attune_emulator <command> --config FILE`.

Services (long-running, one per OS process, as upstream's binaries):
  api, executor, worker, sensor, notifier
Administration:
  migrate     apply the database schema (idempotent)
  bootstrap   migrate, load the core pack and any `--pack DIR`, seed the test admin
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from .config import ConfigError, load_config
from .logs import setup_logging

SERVICES = {
    "api": "attune_emulator.api.service",
    "executor": "attune_emulator.executor.service",
    "worker": "attune_emulator.worker.service",
    "sensor": "attune_emulator.sensor.service",
    "notifier": "attune_emulator.notifier.service",
}
ADMIN = {
    "migrate": "attune_emulator.bootstrap",
    "bootstrap": "attune_emulator.bootstrap",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m attune_emulator",
        description="Attune-compatible services for end-to-end testing.")
    parser.add_argument("command", choices=sorted(SERVICES) + sorted(ADMIN),
                        help="service to run, or administration command")
    parser.add_argument("-c", "--config", default=os.environ.get("ATTUNE_CONFIG", "config.yaml"),
                        help="YAML configuration file (default: $ATTUNE_CONFIG or config.yaml)")
    parser.add_argument("--pack", action="append", default=[], metavar="DIR",
                        help="bootstrap only: register this pack directory too (repeatable)")
    args = parser.parse_args(argv)
    os.environ["ATTUNE_CONFIG"] = args.config
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"attune_emulator: configuration error: {exc}", file=sys.stderr)
        return 2
    setup_logging(args.command, cfg)
    if args.command in SERVICES:
        module = importlib.import_module(SERVICES[args.command])
        return int(module.main(cfg) or 0)
    module = importlib.import_module(ADMIN[args.command])
    if args.command == "migrate":
        return int(module.migrate(cfg) or 0)
    return int(module.bootstrap(cfg, extra_packs=args.pack) or 0)


if __name__ == "__main__":
    sys.exit(main())
