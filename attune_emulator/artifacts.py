"""Where an execution's output logs live, shared by the worker (writer) and the API (log stream).

`<artifacts_dir>/executions/<id>/<started_at>/{stdout,stderr}.log`: the folder is keyed by the
run's own `started_at`, so a log left on disk by another life of the same execution id (a
database recreated while the artifacts folder was kept) can never be mistaken for this run's.
"""
from __future__ import annotations

import datetime as _dt
from pathlib import Path


def execution_log_dir(artifacts_dir: str, execution_id: int, started_at: _dt.datetime) -> Path:
    if started_at.tzinfo is None:
        started_at = started_at.replace(tzinfo=_dt.timezone.utc)
    stamp = started_at.astimezone(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    return Path(artifacts_dir) / "executions" / str(execution_id) / stamp
