"""What every measurement shares: the target, an admin client, a unique prefix, LIFO cleanup,
progress output, a notifier listener, and a sampler of RabbitMQ queue depths."""
from __future__ import annotations

import sys
import threading
import time
import uuid
from typing import Any, Callable

from tests.helpers.cleanup import CleanupStack
from tests.helpers.client import ApiError, AttuneClient, items
from tests.helpers.notifier import NotifierListener
from tests.helpers.polling import TERMINAL
from tests.helpers.scenario import all_items, parse_ts
from tests.helpers.target import Target

T0 = time.monotonic()


def say(msg: str) -> None:
    """Progress line on stderr: `[bench +12.3s] msg`."""
    print(f"[bench +{time.monotonic() - T0:5.1f}s] {msg}", file=sys.stderr, flush=True)


class Bench:
    def __init__(self, target: Target, admin: AttuneClient):
        self.target = target
        self.admin = admin
        self.uid = uuid.uuid4().hex[:8]
        self.pack_ref = f"bench_{self.uid}"
        self._cleanup = CleanupStack()
        self.notes: list[str] = []
        self._listeners: list[NotifierListener] = []

    # ------------------------------------------------------------------ cleanup
    @property
    def cleanup_errors(self) -> list[str]:
        return self._cleanup.errors

    def defer(self, description: str, fn: Callable[[], Any]) -> None:
        self._cleanup.defer(description, fn)

    def cleanup(self) -> None:
        errors = self._cleanup.run()
        if errors:
            say(f"cleanup: {len(errors)} error(s): {errors[:3]}")

    # ------------------------------------------------------------------ objects
    def client(self) -> AttuneClient:
        """A fresh client (own HTTP session) with the admin's token, for a sender thread."""
        return self.admin.with_token(self.admin.token)

    def setup_pack(self) -> None:
        self.admin.create_pack(ref=self.pack_ref, label=f"bench {self.uid}", version="1.0.0",
                               description="attune-e2e benchmark (deleted at the end)")
        self.defer(f"delete pack {self.pack_ref}", lambda: self.admin.delete_pack(self.pack_ref))

    def action(self, slug: str, entrypoint: str = "true", **body) -> dict:
        ref = f"{self.pack_ref}.{slug}"
        body.setdefault("runtime_ref", "core.shell")
        created = self.admin.create_action(ref=ref, pack_ref=self.pack_ref, label=ref,
                                           entrypoint=entrypoint, **body)
        self.defer(f"delete action {ref}", lambda: self.admin.delete_action(ref))
        return created

    def webhook_trigger(self, slug: str) -> tuple[dict, str]:
        ref = f"{self.pack_ref}.{slug}"
        self.admin.create_trigger(ref=ref, pack_ref=self.pack_ref, label=ref)
        self.defer(f"delete trigger {ref}", lambda: self.admin.delete_trigger(ref))
        enabled = self.admin.enable_webhook(ref)
        return enabled, enabled["webhook_key"]

    def rule(self, slug: str, trigger_ref: str, action_ref: str, **body) -> dict:
        ref = f"{self.pack_ref}.{slug}"
        created = self.admin.create_rule(ref=ref, pack_ref=self.pack_ref, label=ref,
                                         trigger_ref=trigger_ref, action_ref=action_ref,
                                         enabled=True, **body)
        self.defer(f"delete rule {ref}", lambda: self.admin.delete_rule(ref))
        self.defer(f"disable rule {ref}", lambda: self.admin.disable_rule(ref))
        return created

    def workflow(self, slug: str, definition: dict) -> dict:
        ref = f"{self.pack_ref}.{slug}"
        created = self.admin.create_workflow(ref=ref, pack_ref=self.pack_ref, label=ref,
                                             version="1.0.0", definition=definition)
        self.defer(f"delete workflow action {ref}", lambda: self.admin.delete_action(ref))
        self.defer(f"delete workflow {ref}", lambda: self.admin.delete_workflow(ref))
        return created

    def terminal_records(self, action_ref: str) -> dict[int, tuple[str, float]]:
        """id -> (status, `updated` as epoch seconds) of every terminal execution of the action,
        from the API (the platform's own records)."""
        out = {}
        for ex in all_items(self.admin.list_executions, action_ref=action_ref):
            if ex.get("status") in TERMINAL and ex.get("updated"):
                out[int(ex["id"])] = (ex["status"], parse_ts(ex["updated"]).timestamp())
        return out

    def close_listeners(self) -> None:
        """Close the listeners a phase opened, so they do not spend the benchmark's CPU on the
        next phase's notifications (closing twice is harmless)."""
        while self._listeners:
            self._listeners.pop().close()

    def listener(self, filters: tuple[str, ...] = ("entity_type:execution",)) -> NotifierListener:
        lst = NotifierListener(self.target.ws_url, self.admin.token)
        for f in filters:
            lst.subscribe(f)
        self._listeners.append(lst)
        self.defer("close notifier listener", lst.close)
        time.sleep(0.3)  # a subscribe is never acknowledged (api.md §13.2)
        return lst


# ------------------------------------------------------------------ RabbitMQ queue depths
class QueueSampler(threading.Thread):
    """Samples the message count of the named queues every `interval` s with pika (passive
    declare, so nothing is created). Queues that do not exist are dropped."""

    def __init__(self, amqp_url: str, queues: list[str], interval: float = 0.5):
        super().__init__(name="bench-queue-sampler", daemon=True)
        self.amqp_url = amqp_url
        self.queues = list(queues)
        self.interval = interval
        self.samples: list[dict] = []   # {"t": epoch, "<queue>": depth, ..., "total": n}
        self.error: str | None = None
        self._halt = threading.Event()

    def run(self) -> None:
        try:
            import pika
        except ImportError:
            self.error = "pika not installed"
            return
        try:
            conn = pika.BlockingConnection(pika.URLParameters(self.amqp_url))
        except Exception as exc:
            self.error = f"cannot connect to {self.amqp_url}: {exc}"
            return
        channel = conn.channel()
        try:
            while not self._halt.is_set():
                sample: dict[str, Any] = {"t": round(time.time(), 3)}
                total = 0
                for q in list(self.queues):
                    try:
                        ok = channel.queue_declare(queue=q, passive=True)
                        depth = ok.method.message_count
                        sample[q] = depth
                        total += depth
                    except Exception:
                        self.queues.remove(q)
                        if not channel.is_open:
                            channel = conn.channel()
                sample["total"] = total
                self.samples.append(sample)
                conn.sleep(self.interval) if hasattr(conn, "sleep") else time.sleep(self.interval)
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            try:
                conn.close()
            except Exception:
                pass

    def latest(self) -> dict | None:
        return self.samples[-1] if self.samples else None

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)


def executor_and_worker_queues(admin: AttuneClient) -> list[str]:
    """The embedded stack's work queues (executor consumers and every active worker's dispatch
    queue); names of upstream Attune's queues differ, so on other targets some are dropped."""
    queues = ["executor.events", "executor.enforcements", "executor.requests",
              "executor.completions"]
    try:
        for w in items(admin.list_workers(per_page=100)):
            if w.get("status") == "active" and w.get("id") is not None:
                queues.append(f"worker.{w['id']}.executions")
    except Exception:
        pass
    return queues
