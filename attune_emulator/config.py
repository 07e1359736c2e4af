"""Configuration loading in upstream Attune's scheme.

Order (later wins), as upstream's `crates/common/src/config.rs`:
  1. the YAML file named by `--config` / `ATTUNE_CONFIG` (default `config.yaml`);
  2. environment variables `ATTUNE__SECTION__KEY` (values parsed as YAML scalars, so
     `ATTUNE__WORKER__HEARTBEAT_INTERVAL=1` is an int and `...=true` a bool).

Relative directory settings (`packs_base_dir`, `runtime_envs_dir`, `artifacts_dir`, `log.file`)
are resolved against the config file's folder, so services started from any directory agree.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Mapping

import yaml

DEFAULTS: dict[str, Any] = {
    "service_name": "attune",
    "environment": "development",
    "packs_base_dir": "/opt/attune/packs",
    "runtime_envs_dir": "/opt/attune/runtime_envs",
    "artifacts_dir": "/opt/attune/artifacts",
    "database": {
        "url": "postgresql://postgres:postgres@localhost:5432/attune",
        "max_connections": 50,
        "min_connections": 1,
        "connect_timeout": 30,
        "schema": "attune",
    },
    "server": {
        "host": "0.0.0.0",
        "port": 8080,
        "request_timeout": 30,
        "max_body_size": 2 * 1024 * 1024,
    },
    "security": {
        "jwt_secret": None,
        "jwt_access_expiration": 3600,
        "jwt_refresh_expiration": 604800,
        "encryption_key": None,
        "enable_auth": True,
        "allow_self_registration": False,
    },
    "worker": {
        "name": None,
        "worker_type": "local",
        "max_concurrent_tasks": 10,
        "heartbeat_interval": 30,
        "task_timeout": 300,
        "max_stdout_bytes": 10 * 1024 * 1024,
        "max_stderr_bytes": 10 * 1024 * 1024,
        "shutdown_timeout": 30,
        "kill_grace_seconds": 5,
        # emulator: built environments unused this long leave the store (worker/envs.py)
        "env_store_max_age_days": 14,
    },
    "sensor": {"heartbeat_interval": 30},
    "executor": {
        "scheduled_timeout": 300,
        "timeout_check_interval": 60,
        "enable_timeout_monitor": True,
        "worker_heartbeat_timeout": 90,
    },
    "log": {"level": "info", "format": "text", "console": True, "file": None},
}

INSECURE_JWT_SECRET = "insecure_default_secret_change_in_production"
_PATH_KEYS = ("packs_base_dir", "runtime_envs_dir", "artifacts_dir")


class ConfigError(Exception):
    """The configuration cannot be used; the message says which key and why."""


def _merge(base: dict, extra: Mapping) -> dict:
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = copy.deepcopy(value)
    return base


def env_overrides(environ: Mapping[str, str]) -> dict:
    """Turn `ATTUNE__SECTION__KEY=value` variables into a nested dict."""
    out: dict = {}
    for name, raw in environ.items():
        if not name.startswith("ATTUNE__"):
            continue
        parts = [p.lower() for p in name[len("ATTUNE__"):].split("__") if p]
        if not parts:
            continue
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                break
        else:
            node[parts[-1]] = value
    return out


class Config:
    """Merged configuration with dotted look-ups: `cfg.get("worker.heartbeat_interval")`."""

    def __init__(self, data: dict, path: Path | None = None):
        self.data = data
        self.path = path

    def get(self, dotted: str, default: Any = None) -> Any:
        node: Any = self.data
        for part in dotted.split("."):
            if not isinstance(node, Mapping) or part not in node:
                return default
            node = node[part]
        return default if node is None else node

    def section(self, name: str) -> dict:
        value = self.data.get(name)
        return value if isinstance(value, dict) else {}

    def has_section(self, name: str) -> bool:
        return isinstance(self.data.get(name), dict)

    @property
    def jwt_secret(self) -> str:
        return self.get("security.jwt_secret") or INSECURE_JWT_SECRET

    @property
    def database_url(self) -> str:
        return self.get("database.url")

    @property
    def amqp_url(self) -> str | None:
        return self.get("message_queue.url")

    @property
    def api_url(self) -> str:
        """Where other processes reach the API (0.0.0.0 rewritten to 127.0.0.1, as upstream)."""
        explicit = os.environ.get("ATTUNE_API_URL")
        if explicit:
            return explicit.rstrip("/")
        host = self.get("server.host", "127.0.0.1")
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        return f"http://{host}:{self.get('server.port')}"


def load_config(path: str | os.PathLike | None = None,
                environ: Mapping[str, str] | None = None) -> Config:
    environ = os.environ if environ is None else environ
    path = path or environ.get("ATTUNE_CONFIG") or "config.yaml"
    cfg_path = Path(path).resolve()
    data = copy.deepcopy(DEFAULTS)
    if cfg_path.exists():
        try:
            loaded = yaml.safe_load(cfg_path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{cfg_path}: invalid YAML: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"{cfg_path}: the top level must be a mapping")
        _merge(data, loaded)
    elif environ.get("ATTUNE_CONFIG") or path != "config.yaml":
        raise ConfigError(f"config file not found: {cfg_path}")
    _merge(data, env_overrides(environ))

    base = cfg_path.parent
    for key in _PATH_KEYS:
        if data.get(key):
            data[key] = str((base / str(data[key])).resolve())
    log_file = data.get("log", {}).get("file")
    if log_file:
        data["log"]["file"] = str((base / str(log_file)).resolve())

    key = data["security"].get("encryption_key")
    if key is not None and len(str(key)) < 32:
        raise ConfigError("security.encryption_key must be at least 32 characters")
    if not data["database"].get("url"):
        raise ConfigError("database.url must not be empty")
    level = str(data["log"].get("level", "info")).lower()
    if level not in ("trace", "debug", "info", "warn", "error"):
        raise ConfigError(f"log.level must be one of trace, debug, info, warn, error (got {level!r})")
    return Config(data, cfg_path)
