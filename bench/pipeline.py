"""Pipeline hops, from the platform's own records: webhook receipt -> event -> enforcement ->
execution scheduled -> running -> completed, and trigger -> completed end to end.

Timestamps: the webhook answer's `received_at`, `event.created`, `enforcement.created`,
`execution.created` / `started_at` / `updated` (the terminal update). The API exposes no
"scheduled at", so that instant is the `updated` field of the notifier's
`execution_status_changed` message whose status is `scheduled`. Client clocks add the POST round
trip and send -> completed notification arrival.
Also yields notification latency: database change (the row timestamp carried in the
notification payload) -> WebSocket arrival, per notification type.
"""
from __future__ import annotations

import time

from bench.context import Bench, say
from bench.report import ms_between, parse_ts, summarize
from tests.helpers.client import items
from tests.helpers.polling import TERMINAL, wait_until


def _status_times(listener, exec_ids: set, status: str) -> dict:
    out = {}
    for m in listener.notifications:
        p = m.get("payload") or {}
        if m.get("notification_type") == "execution_status_changed" and \
                m.get("entity_id") in exec_ids and p.get("status") == status:
            out.setdefault(m["entity_id"], (p.get("updated"), m.get("_received_at")))
    return out


def notification_latency(listener, prefix: str) -> dict:
    """DB change -> WebSocket arrival for every notification about our objects."""
    by_type: dict[str, list[float]] = {}
    for m in listener.notifications:
        p = m.get("payload") or {}
        ref = p.get("action_ref") or p.get("rule_ref") or p.get("trigger_ref") or ""
        if not str(ref).startswith(prefix + "."):
            continue
        ntype = m.get("notification_type") or "?"
        stamp = p.get("updated") if ntype.endswith("status_changed") else p.get("created")
        if not stamp or not m.get("_received_at"):
            continue
        ms = (m["_received_at"] - parse_ts(stamp).timestamp()) * 1000.0
        by_type.setdefault(ntype, []).append(ms)
    every = [v for vs in by_type.values() for v in vs]
    return {"all": summarize(every),
            "by_type": {k: summarize(v) for k, v in sorted(by_type.items())},
            "raw": {k: [round(x, 2) for x in v] for k, v in by_type.items()},
            "source": "payload row timestamp (created, or updated for status changes) -> "
                      "WebSocket arrival (client clock, same host)"}


def run(bench: Bench, count: int = 30, gap: float = 0.25) -> dict:
    admin = bench.admin
    action = bench.action("hop", "true")
    trigger, key = bench.webhook_trigger("hook")
    bench.rule("hop_rule", trigger["ref"], action["ref"])
    listener = bench.listener(("entity_type:execution", "entity_type:event",
                               "entity_type:enforcement"))
    time.sleep(0.5)  # the rule reaches the executor's cache
    say(f"pipeline: {count} webhooks, one every {gap} s, rule -> {action['ref']}")
    posts = []
    for i in range(count):
        t_send = time.time()
        resp = admin.post_webhook(key, {"seq": i, "bench": bench.uid})
        posts.append({"seq": i, "sent": t_send, "answered": time.time(),
                      "event_id": resp["event_id"], "received_at": resp["received_at"]})
        time.sleep(gap)

    def done_count():
        n = 0
        for m in listener.notifications:
            p = m.get("payload") or {}
            if p.get("action_ref") == action["ref"] and p.get("status") in TERMINAL and \
                    m.get("notification_type") == "execution_status_changed":
                n += 1
        return n
    try:
        wait_until(done_count, timeout=45, done=lambda n: n >= count,
                   description=f"{count} pipeline executions terminal")
    except AssertionError as exc:
        say(f"pipeline: {exc}")

    rows = []
    for post in posts:
        row = dict(post)
        event = admin.get_event(post["event_id"])
        row["event_created"] = event.get("created")
        enfs = items(admin.list_enforcements(event=post["event_id"]))
        if enfs:
            enf = admin.get_enforcement(enfs[0]["id"])
            row.update(enforcement_id=enf["id"], enforcement_created=enf.get("created"),
                       enforcement_resolved=enf.get("resolved_at"))
            execs = items(admin.list_executions(enforcement=enf["id"], top_level_only=True))
            if execs:
                ex = admin.get_execution(execs[0]["id"])
                row.update(execution_id=ex["id"], execution_created=ex.get("created"),
                           started_at=ex.get("started_at"), status=ex.get("status"),
                           terminal_updated=ex.get("updated") if ex.get("status") in TERMINAL
                           else None)
        rows.append(row)
    ids = {r["execution_id"] for r in rows if r.get("execution_id")}
    scheduled = _status_times(listener, ids, "scheduled")
    completed_ws = _status_times(listener, ids, "completed")
    hops: dict[str, list[float]] = {k: [] for k in (
        "webhook_to_event", "event_to_enforcement", "enforcement_resolved",
        "enforcement_to_execution_created", "enforcement_to_scheduled", "scheduled_to_running",
        "running_to_completed", "trigger_to_completed", "client_webhook_post_rtt",
        "client_send_to_completed_notification")}

    def add(name, value):
        if value is not None:
            hops[name].append(value)

    for r in rows:
        sched = scheduled.get(r.get("execution_id"), (None, None))[0]
        r["scheduled_at_notification"] = sched
        add("webhook_to_event", ms_between(r["received_at"], r.get("event_created")))
        add("event_to_enforcement", ms_between(r.get("event_created"), r.get("enforcement_created")))
        add("enforcement_resolved", ms_between(r.get("enforcement_created"),
                                               r.get("enforcement_resolved")))
        add("enforcement_to_execution_created", ms_between(r.get("enforcement_created"),
                                                           r.get("execution_created")))
        add("enforcement_to_scheduled", ms_between(r.get("enforcement_created"), sched))
        add("scheduled_to_running", ms_between(sched, r.get("started_at")))
        add("running_to_completed", ms_between(r.get("started_at"), r.get("terminal_updated")))
        add("trigger_to_completed", ms_between(r["received_at"], r.get("terminal_updated")))
        add("client_webhook_post_rtt", (r["answered"] - r["sent"]) * 1000.0)
        arrived = completed_ws.get(r.get("execution_id"), (None, None))[1]
        if arrived:
            add("client_send_to_completed_notification", (arrived - r["sent"]) * 1000.0)
    out = {k: summarize(v) for k, v in hops.items()}
    out.update(
        webhooks=count, completed=sum(1 for r in rows if r.get("status") == "completed"),
        scheduled_source="execution_status_changed notification `updated` (status scheduled); "
                         "the API exposes no scheduled time",
        raw={k: [round(x, 2) for x in v] for k, v in hops.items()},
        records=rows)
    bench.notification_listener_pipeline = listener
    say("pipeline: p50/p95 ms " + ", ".join(
        f"{k} {out[k]['p50']}/{out[k]['p95']}" for k in
        ("webhook_to_event", "event_to_enforcement", "enforcement_to_scheduled",
         "scheduled_to_running", "running_to_completed", "trigger_to_completed")))
    return out
