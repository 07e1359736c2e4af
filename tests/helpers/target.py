"""Which Attune the suite talks to.

External when ATTUNE_API_URL (or --target-url) is set: nothing is started and nothing is known
about the processes. Otherwise the embedded stack the conftest started, described by the
ATTUNE_E2E_STACK environment variable (JSON of `EmbeddedStack.up()`), which xdist workers inherit.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse, urlunparse

STACK_ENV = "ATTUNE_E2E_STACK"
DEFAULT_LOGIN = "test@attune.local"
DEFAULT_PASSWORD = "TestPass123!"

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG_PATH = os.path.join(ROOT, "config.e2e.yaml")
STATE_DIR = os.path.join(ROOT, ".state")
REPORTS_DIR = os.path.join(ROOT, "reports")


@dataclass
class Target:
    api_url: str
    ws_url: str
    database_url: str | None = None
    amqp_url: str | None = None
    admin_login: str = DEFAULT_LOGIN
    admin_password: str = DEFAULT_PASSWORD
    embedded: bool = False
    services: Any = None  # ServiceManager | None
    logs: dict = field(default_factory=dict)

    @property
    def has_service_control(self) -> bool:
        return self.services is not None


def _option(config, name: str):
    if config is None:
        return None
    try:
        return config.getoption(name)
    except (ValueError, AttributeError):
        return None


def external_api_url(config=None) -> str | None:
    return _option(config, "target_url") or os.environ.get("ATTUNE_API_URL") or None


def derive_ws_url(api_url: str) -> str:
    """Best guess of the notifier URL next to an API URL: same host, port 8081 (upstream default)."""
    parsed = urlparse(api_url)
    scheme = "wss" if parsed.scheme == "https" else "ws"
    host = parsed.hostname or "localhost"
    return urlunparse((scheme, f"{host}:8081", "", "", "", ""))


def _service_manager(stack: dict):
    from tests.helpers.services import ServiceManager  # written by the services helper

    logs = stack.get("logs") or {}
    log_dir = stack.get("log_dir")
    if not log_dir and logs:
        log_dir = os.path.dirname(next(iter(logs.values())))
    return ServiceManager(stack.get("config_path") or stack.get("config") or CONFIG_PATH,
                          stack.get("state_dir", STATE_DIR),
                          log_dir or os.path.join(REPORTS_DIR, "logs"))


def resolve_target(config=None) -> Target:
    """The target of this run (external when ATTUNE_API_URL / --target-url is set)."""
    login = os.environ.get("TEST_USER_LOGIN", DEFAULT_LOGIN)
    password = os.environ.get("TEST_USER_PASSWORD", DEFAULT_PASSWORD)
    api_url = external_api_url(config)
    if api_url:
        return Target(
            api_url=api_url.rstrip("/"),
            ws_url=(os.environ.get("ATTUNE_WS_URL") or derive_ws_url(api_url)).rstrip("/"),
            database_url=os.environ.get("DATABASE_URL") or None,
            amqp_url=os.environ.get("ATTUNE_AMQP_URL") or None,
            admin_login=login, admin_password=password, embedded=False)
    raw = os.environ.get(STACK_ENV)
    if not raw:
        raise RuntimeError(
            "no Attune target: set ATTUNE_API_URL (external) or run the e2e tests through pytest "
            "so the conftest starts the embedded stack")
    stack = json.loads(raw)
    services = None
    try:
        services = _service_manager(stack)
    except Exception:  # the services helper is missing or failed: no service control
        services = None
    return Target(api_url=stack["api_url"].rstrip("/"), ws_url=stack["ws_url"].rstrip("/"),
                  database_url=stack.get("database_url"), amqp_url=stack.get("amqp_url"),
                  admin_login=login, admin_password=password, embedded=True,
                  services=services, logs=dict(stack.get("logs") or {}))


__all__ = ["Target", "resolve_target", "STACK_ENV", "derive_ws_url", "external_api_url"]
