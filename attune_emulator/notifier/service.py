"""Notifier service: PostgreSQL LISTEN/NOTIFY -> WebSocket clients (upstream `crates/notifier`).

* `GET /ws`: WebSocket; the JWT is checked at upgrade time (`Authorization: Bearer <jwt>` or the
  subprotocols `attune.v1, attune.jwt.<jwt>`; access and execution tokens only). Failures answer a
  plain HTTP 401 `{"error": "<reason>"}` before any upgrade. The server selects `attune.v1`.
* `GET /health` -> `{"status":"ok"}`; `GET /stats` -> `{"connected_clients","total_subscriptions"}`.
* One dedicated psycopg2 connection LISTENs on every channel of `protocol.CHANNELS`; it is driven by
  the asyncio loop (`loop.add_reader`) and reconnects after a database outage (notifications sent
  while it is disconnected are lost, as upstream).
* Each NOTIFY is fanned out, in arrival (= commit) order, to every client with a matching filter.
* A connection is closed with 4401 "token expired" when its JWT's `exp` passes.
* SIGTERM/SIGINT: stop accepting, close every connection (1001), exit 0.

The protocol logic (filters, message shapes, token rules) lives in `protocol.py`.
"""
from __future__ import annotations

import asyncio
import contextlib
import http
import itertools
import json
import logging
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import psycopg2
import psycopg2.extensions
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from .. import auth
from ..db import Database
from . import protocol as P

log = logging.getLogger("attune_emulator.notifier")

EXPIRY_CHECK_INTERVAL = 30.0   # upstream's cadence; we also wake up exactly at `exp`
LISTENER_KEEPALIVE = 5.0       # seconds between `SELECT 1` probes on the LISTEN connection
HIDDEN_CACHE_SECONDS = 2.0     # E3: how long a client's pack-visibility answer is reused


def _json_response(status: int, body: Any) -> Response:
    data = json.dumps(body, separators=(",", ":")).encode()
    headers = Headers([
        ("Content-Type", "application/json"),
        ("Content-Length", str(len(data))),
        ("Access-Control-Allow-Origin", "*"),
        ("Connection", "close"),
    ])
    return Response(status, http.HTTPStatus(status).phrase, headers, data)


@dataclass
class Client:
    client_id: str
    identity_id: int
    roles: list[str]
    exp: int
    conn: ServerConnection
    claims: dict = field(default_factory=dict)
    subs: P.Subscriptions = field(default_factory=P.Subscriptions)
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    principal: Any = None
    hidden_cache: dict = field(default_factory=dict)   # pack_ref -> (hidden, checked at)


@dataclass
class _Auth:
    identity_id: int
    roles: list[str]
    exp: int
    token_type: str
    claims: dict


class PgListener:
    """LISTEN on the notifier channels over one psycopg2 connection driven by the event loop."""

    def __init__(self, url: str, channels: tuple[str, ...], on_notify, connect_timeout: int = 5):
        self.url = url
        self.channels = channels
        self.on_notify = on_notify
        self.connect_timeout = connect_timeout
        self.conn: psycopg2.extensions.connection | None = None
        self.connected = asyncio.Event()
        self._broken: asyncio.Event | None = None
        self._stopping = False

    def _connect_blocking(self) -> psycopg2.extensions.connection:
        conn = psycopg2.connect(self.url, connect_timeout=self.connect_timeout,
                                keepalives=1, keepalives_idle=5, keepalives_interval=2,
                                keepalives_count=3, application_name="attune-notifier")
        conn.autocommit = True
        with conn.cursor() as cur:
            for channel in self.channels:
                cur.execute(f'LISTEN "{channel}"')
        return conn

    def _drain(self) -> None:
        conn = self.conn
        if conn is None:
            return
        while conn.notifies:
            n = conn.notifies.pop(0)
            try:
                self.on_notify(n.channel, n.payload)
            except Exception:  # noqa: BLE001 - one bad notification must not stop the feed
                log.exception("failed to dispatch notification on %s", n.channel)

    def _on_readable(self) -> None:
        conn = self.conn
        if conn is None:
            return
        try:
            conn.poll()
        except (psycopg2.Error, OSError) as exc:
            log.error("PostgreSQL listener connection lost: %s", str(exc).strip())
            self._mark_broken()
            return
        self._drain()

    def _mark_broken(self) -> None:
        if self._broken is not None and not self._broken.is_set():
            self._broken.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        delay = 0.2
        first = True
        while not self._stopping:
            try:
                conn = await loop.run_in_executor(None, self._connect_blocking)
            except Exception as exc:  # noqa: BLE001
                if first:
                    log.warning("PostgreSQL listener cannot connect yet: %s", str(exc).strip())
                    first = False
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            self.conn = conn
            self._broken = asyncio.Event()
            fd = conn.fileno()
            loop.add_reader(fd, self._on_readable)
            self.connected.set()
            log.info("listening on PostgreSQL channels: %s", ", ".join(self.channels))
            delay = 0.2
            first = True
            try:
                while not self._broken.is_set() and not self._stopping:
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(self._broken.wait(), LISTENER_KEEPALIVE)
                    if self._broken.is_set() or self._stopping:
                        break
                    try:  # keep-alive probe; also surfaces half-open connections
                        with conn.cursor() as cur:
                            cur.execute("SELECT 1")
                        self._drain()
                    except (psycopg2.Error, OSError) as exc:
                        log.error("PostgreSQL listener probe failed: %s", str(exc).strip())
                        break
            finally:
                self.connected.clear()
                with contextlib.suppress(Exception):
                    loop.remove_reader(fd)
                with contextlib.suppress(Exception):
                    conn.close()
                self.conn = None
            if not self._stopping:
                log.warning("PostgreSQL listener reconnecting")
                await asyncio.sleep(0.2)

    def stop(self) -> None:
        self._stopping = True
        self._mark_broken()


class Notifier:
    def __init__(self, cfg):
        self.cfg = cfg
        self.host = str(cfg.get("notifier.host", "0.0.0.0"))
        self.port = int(cfg.get("notifier.port", 8081))
        self.secret = cfg.jwt_secret
        self.db = Database.from_config(cfg, maxconn=4)
        self.clients: dict[str, Client] = {}
        self._ids = itertools.count(1)
        self._pending: dict[ServerConnection, _Auth] = {}
        self.listener = PgListener(cfg.database_url, P.CHANNELS, self.dispatch,
                                   int(cfg.get("database.connect_timeout", 5)))
        self.delivered = 0
        self.owner_scoping = bool(cfg.get("security.owner_scoped_resources", False))
        self._exec_action_ref: dict[int, str | None] = {}

    # ------------------------------------------------------------------ HTTP (pre-upgrade)
    def _role_names(self, identity_id: int) -> list[str]:
        # pooled connections may be stale after a database restart: retry on fresh ones
        for attempt in range(4):
            try:
                rows = self.db.all("SELECT role FROM identity_role_assignment WHERE identity = %s",
                                   (identity_id,))
                return [r["role"] for r in rows]
            except (psycopg2.OperationalError, psycopg2.InterfaceError):
                if attempt == 3:
                    raise
                time.sleep(0.05 * (attempt + 1))
        return []

    async def process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        if path == "/health":
            return _json_response(200, {"status": "ok"})
        if path == "/stats":
            return _json_response(200, {
                "connected_clients": len(self.clients),
                "total_subscriptions": sum(len(c.subs) for c in self.clients.values())})
        if path != "/ws":
            return _json_response(404, {"error": "not_found"})
        token = P.extract_token(request.headers)
        if not token:
            log.warning("WebSocket upgrade rejected: missing token")
            return _json_response(401, {"error": "missing_token"})
        try:
            claims = auth.decode_token(self.secret, token)
        except auth.TokenError:
            log.warning("WebSocket upgrade rejected: invalid_or_expired_token")
            return _json_response(401, {"error": "invalid_or_expired_token"})
        identity_id, reason = P.check_claims(claims)
        if reason:
            log.warning("WebSocket upgrade rejected: %s", reason)
            return _json_response(401, {"error": reason})
        if P.token_expired(claims.get("exp"), time.time()):
            return _json_response(401, {"error": "invalid_or_expired_token"})
        try:
            roles = await asyncio.get_running_loop().run_in_executor(
                None, self._role_names, identity_id)
        except Exception as exc:  # noqa: BLE001 - fail closed, as upstream
            log.error("WebSocket upgrade rejected: role lookup failed: %s", exc)
            return _json_response(500, {"error": "role_lookup_failed"})
        self._pending[conn] = _Auth(identity_id, roles, int(claims["exp"]),
                                    claims.get("token_type", "access"), claims)
        return None

    @staticmethod
    def select_subprotocol(conn: ServerConnection, offered) -> str | None:
        return "attune.v1" if "attune.v1" in offered else None

    # ------------------------------------------------------------------ WebSocket
    async def handler(self, conn: ServerConnection) -> None:
        a = self._pending.pop(conn, None)
        if a is None:  # cannot happen: process_request authenticated every /ws upgrade
            await conn.close(1008, "unauthenticated")
            return
        client = Client(f"client_{next(self._ids)}", a.identity_id, a.roles, a.exp, conn,
                        claims=a.claims)
        self.clients[client.client_id] = client
        log.info("New WebSocket connection: %s (identity_id=%s, token_type=%s)",
                 client.client_id, a.identity_id, a.token_type)
        client.queue.put_nowait(json.dumps(P.welcome_message(client.client_id)))
        sender = asyncio.create_task(self._sender(client))
        expiry = asyncio.create_task(self._expiry(client))
        try:
            async for message in conn:
                if isinstance(message, bytes):
                    log.warning("binary message from %s ignored", client.client_id)
                    continue
                self._on_message(client, message)
        except ConnectionClosed:
            pass
        finally:
            self.clients.pop(client.client_id, None)
            expiry.cancel()
            # let queued frames (e.g. the 4401 close) go out, then stop the sender
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(sender), 0.5) if not sender.done() else None
            sender.cancel()
            log.info("WebSocket connection closed: %s", client.client_id)

    def _send(self, client: Client, message: dict) -> None:
        client.queue.put_nowait(json.dumps(message))

    def _on_message(self, client: Client, text: str) -> None:
        try:
            msg = P.parse_client_message(text)
        except P.MessageError as exc:
            log.warning("malformed message from %s: %s", client.client_id, exc)
            self._send(client, P.error_message(str(exc)))
            return
        kind = msg["type"]
        if kind == "ping":
            log.debug("ping from %s", client.client_id)
            return
        try:
            f = P.parse_filter(msg["filter"])
        except P.FilterError as exc:
            log.warning("invalid filter from %s: %r: %s", client.client_id, msg["filter"], exc)
            self._send(client, P.invalid_filter_message(msg["filter"], str(exc)))
            return
        if kind == "subscribe":
            if not P.filter_allowed(f, client.identity_id, client.roles):
                log.warning("subscribe denied for %s: %s", client.client_id, msg["filter"])
                self._send(client, P.error_message(P.UNAUTHORIZED_USER_FILTER))
                return
            client.subs.add(f)
            log.info("Client %s subscribed to: %s", client.client_id, msg["filter"])
        else:
            client.subs.remove(f)
            log.info("Client %s unsubscribed from: %s", client.client_id, msg["filter"])

    async def _sender(self, client: Client) -> None:
        try:
            while True:
                item = await client.queue.get()
                if isinstance(item, tuple):  # ("close", code, reason)
                    await client.conn.close(item[1], item[2])
                    return
                await client.conn.send(item)
        except ConnectionClosed:
            pass
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001
            log.exception("sender for %s failed", client.client_id)
            with contextlib.suppress(Exception):
                await client.conn.close(1011, "internal error")

    async def _expiry(self, client: Client) -> None:
        while True:
            remaining = client.exp - time.time()
            if P.token_expired(client.exp, time.time()):
                log.info("WebSocket connection %s closed due to expired token", client.client_id)
                self.clients.pop(client.client_id, None)  # nothing more is delivered
                client.queue.put_nowait(("close", P.CLOSE_CODE_TOKEN_EXPIRED,
                                         P.CLOSE_REASON_TOKEN_EXPIRED))
                return
            await asyncio.sleep(min(max(remaining, 0.0) + 0.01, EXPIRY_CHECK_INTERVAL))

    # ------------------------------------------------------------------ fan-out
    def dispatch(self, channel: str, payload: str) -> None:
        if not any(c.subs.may_want(channel) for c in self.clients.values()):
            return  # nobody could receive it: not even parsed
        try:
            n = P.notification_from_pg(channel, payload)
        except ValueError as exc:
            log.warning("dropping notification on %s: %s", channel, exc)
            return
        frame = None
        for client in list(self.clients.values()):
            if client.subs.wants(n) and self._visible(client, n):
                if frame is None:
                    frame = n.to_frame()
                client.queue.put_nowait(frame)
                self.delivered += 1
        log.debug("notification %s %s:%s", channel, n.entity_type, n.entity_id)

    def _visible(self, client: Client, n: P.Notification) -> bool:
        """Upstream delivers every notification to every authenticated client. With extension E3
        (`security.owner_scoped_resources: true`) a notification about an entity of a pack hidden
        from the client (the API's pack-visibility predicate) is dropped for that client."""
        if not self.owner_scoping:
            return True
        pack_ref = self._pack_of(n)
        if not pack_ref:
            return True
        now = time.monotonic()
        cached = client.hidden_cache.get(pack_ref)
        if cached is not None and now - cached[1] < HIDDEN_CACHE_SECONDS:
            return not cached[0]
        try:
            from ..api import apib_util
            hidden = bool(apib_util.pack_hidden(self.db, self.cfg, self._principal(client),
                                                pack_ref))
        except Exception as exc:  # noqa: BLE001 - fail closed, as the API does
            log.warning("visibility check for %s failed: %s", client.client_id, exc)
            return False
        client.hidden_cache[pack_ref] = (hidden, now)
        return not hidden

    def _principal(self, client: Client):
        if client.principal is None:
            from ..api.common import Principal
            claims = client.claims
            metadata = claims.get("metadata") if isinstance(claims.get("metadata"), dict) else {}
            refs = None
            if claims.get("token_type") == "execution":
                raw = metadata.get("permission_set_refs")
                refs = [r for r in raw if isinstance(r, str)] if isinstance(raw, list) else []
            client.principal = Principal(identity_id=client.identity_id,
                                         login=str(claims.get("login") or ""),
                                         token_type=claims.get("token_type", "access"),
                                         claims=claims, permission_set_refs=refs,
                                         metadata=metadata)
        return client.principal

    def _pack_of(self, n: P.Notification) -> str | None:
        """The pack an entity belongs to: the action's (executions, inquiries via their
        execution), the trigger's (events) or the rule's (enforcements, rule notifications)."""
        payload = n.payload if isinstance(n.payload, dict) else {}
        ref = None
        if n.entity_type == "execution":
            ref = payload.get("action_ref")
        elif n.entity_type == "event":
            ref = payload.get("trigger_ref")
        elif n.entity_type in ("enforcement", "rule"):
            ref = payload.get("rule_ref")
        elif n.entity_type == "inquiry":
            exec_id = payload.get("execution")
            if isinstance(exec_id, int):
                if exec_id not in self._exec_action_ref:
                    try:
                        row = self.db.one("SELECT action_ref FROM execution WHERE id = %s",
                                          (exec_id,))
                    except Exception:  # noqa: BLE001
                        row = None
                    self._exec_action_ref[exec_id] = row["action_ref"] if row else None
                    if len(self._exec_action_ref) > 10000:
                        self._exec_action_ref.clear()
                ref = self._exec_action_ref.get(exec_id)
        if not isinstance(ref, str) or "." not in ref:
            return None
        return ref.split(".", 1)[0]

    # ------------------------------------------------------------------ lifecycle
    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        listener_task = asyncio.create_task(self.listener.run())
        async with serve(self.handler, self.host, self.port,
                         process_request=self.process_request,
                         select_subprotocol=self.select_subprotocol,
                         subprotocols=["attune.v1"],
                         ping_interval=20, ping_timeout=20, close_timeout=5,
                         max_size=1 << 20, logger=logging.getLogger("websockets.server")) as server:
            log.info("WebSocket server listening on %s:%s", self.host, self.port)
            await stop.wait()
            log.info("shutting down (%d client(s))", len(self.clients))
            server.close(close_connections=True)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(server.wait_closed(), 10)
        self.listener.stop()
        listener_task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await listener_task
        self.db.close()
        log.info("notifier stopped")
        return 0


def main(cfg) -> int:
    if not cfg.has_section("notifier"):
        print("attune_emulator notifier: the configuration has no `notifier:` section "
              "(add `notifier: {host: 127.0.0.1, port: 8081}`); refusing to start",
              file=sys.stderr)
        log.error("Notifier configuration not found in config")
        return 2
    try:
        return asyncio.run(Notifier(cfg).run())
    except OSError as exc:
        log.error("notifier failed to start: %s", exc)
        return 1
