"""enforcement.created -> one execution (upstream `enforcement_processor.rs` semantics).

The enforcement row is locked and must still be `created` (a duplicate delivery finds it
`processed` and stops). A disabled or deleted rule, or a missing action or trigger, marks the
enforcement `disabled`; otherwise one `requested` execution is inserted and the enforcement set to
`processed`, in the same transaction, and `execution.requested` is published after commit.
"""
from __future__ import annotations

import logging

from .. import keystore
from ..db import J
from .common import Ctx

log = logging.getLogger(__name__)


def handle_enforcement_created(ctx: Ctx, body: dict) -> None:
    enf_id = body.get("enforcement_id")
    created_exec = None
    with ctx.db.tx() as cur:
        cur.execute("SELECT * FROM enforcement WHERE id = %s FOR UPDATE", (enf_id,))
        enf = cur.fetchone()
        if enf is None:
            log.warning("enforcement %s not found; ignoring", enf_id)
            return
        if enf["status"] != "created":
            log.info("enforcement %s already %s (duplicate delivery); skipped", enf_id, enf["status"])
            return
        rule = None
        if enf["rule"] is not None:
            cur.execute("SELECT * FROM rule WHERE id = %s", (enf["rule"],))
            rule = cur.fetchone()
        reason = None
        action = None
        if rule is None:
            reason = "its rule was deleted"
        elif not rule["enabled"]:
            reason = f"rule {rule['ref']} is disabled"
        elif rule["trigger"] is None:
            reason = f"rule {rule['ref']} has no trigger (deleted)"
        else:
            if rule["action"] is not None:
                cur.execute("SELECT * FROM action WHERE id = %s", (rule["action"],))
            else:
                cur.execute("SELECT * FROM action WHERE ref = %s", (rule["action_ref"],))
            action = cur.fetchone()
            if action is None:
                reason = f"action {rule['action_ref']} no longer exists"
        if reason is not None:
            cur.execute("UPDATE enforcement SET status = 'disabled', resolved_at = now() "
                        "WHERE id = %s", (enf_id,))
            log.info("enforcement %s disabled: %s", enf_id, reason)
            return
        psr = rule.get("permission_set_refs")
        if psr is None:
            psr = action.get("default_execution_permission_set_refs") or []
        cur.execute(
            "INSERT INTO execution (action, action_ref, config, enforcement, executor, status,"
            " permission_set_refs, workflow_def) VALUES (%s, %s, %s, %s,"
            " (SELECT id FROM identity WHERE id = %s), 'requested', %s, %s) RETURNING id",
            (action["id"], action["ref"], J(enf["config"] if enf["config"] is not None else {}),
             enf_id, rule.get("owner_identity") or 1, J(psr), action.get("workflow_def")))
        created_exec = cur.fetchone()["id"]
        # E9: secret parameters stored redacted in the enforcement go with its execution.
        keystore.copy_rows(cur.execute, "enforcement", enf_id, "execution", created_exec)
        cur.execute("UPDATE enforcement SET status = 'processed', resolved_at = now() "
                    "WHERE id = %s", (enf_id,))
    log.info("enforcement %s processed: execution %s requested for action %s (rule %s)",
             enf_id, created_exec, action["ref"], rule["ref"])
    ctx.execution_requested(created_exec)
