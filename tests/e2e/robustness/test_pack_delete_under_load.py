"""Deleting a pack while executions of its action are being submitted, scheduled and run.

The delete cascades into rows the executor is updating at the same moment (it sets
`execution.action` to NULL). Before the API locked the pack's executions first, in the order the
executor takes them, about one delete in three lost a deadlock and answered 500. Several rounds
make a regression visible in one run.

Not a plan scenario (no tier marker): a reliability check of the stack (issue 7's "survives what
a real deployment survives").
"""
from __future__ import annotations

import threading

import pytest

from tests.helpers.client import ApiError
from tests.helpers.polling import TERMINAL, wait_until
from tests.helpers.scenario import expect_api_error

pytestmark = [pytest.mark.robustness, pytest.mark.packs]

ROUNDS = 4
SENDERS = 3
PER_SENDER = 12


def _submit(client, action_ref: str, accepted: list, refused: list, lock: threading.Lock) -> None:
    """Submit PER_SENDER executions; a refusal must be a 4xx (the action is going away)."""
    for _ in range(PER_SENDER):
        try:
            eid = client.execute(action_ref)["id"]
            with lock:
                accepted.append(eid)
        except ApiError as exc:
            with lock:
                refused.append(exc)


def test_pack_delete_while_its_executions_are_in_flight(admin, make):
    """A pack deleted while 3 clients submit executions of its action (each sleeping 50 ms) and
    the executor and worker are scheduling and running them: in each of 4 rounds the delete
    answers success (no 500), the pack is gone (404), every refused submission is a 4xx, and
    every accepted execution reaches a terminal status."""
    for round_no in range(1, ROUNDS + 1):
        pack = make.pack(slug=f"busy{round_no}")
        action = make.action(f"{pack['ref']}.nap", pack_ref=pack["ref"], entrypoint="sleep 0.05")
        accepted: list[int] = []
        refused: list[ApiError] = []
        lock = threading.Lock()
        senders = [threading.Thread(target=_submit, daemon=True,
                                    args=(admin.with_token(admin.token), action["ref"], accepted,
                                          refused, lock))
                   for _ in range(SENDERS)]
        for t in senders:
            t.start()
        # delete once executions are in every stage (submitted, scheduled, running)
        wait_until(lambda: len(accepted), timeout=10, done=lambda n: n >= 8,
                   description=f"round {round_no}: 8 executions of {action['ref']} accepted")
        answer = admin.delete_pack(pack["ref"])
        for t in senders:
            t.join(timeout=30)
        assert not any(t.is_alive() for t in senders), f"round {round_no}: a sender hangs"

        assert answer == {"success": True,
                          "message": f"Pack '{pack['ref']}' deleted successfully"}, \
            f"round {round_no}: unexpected delete answer {answer}"
        expect_api_error(lambda: admin.get_pack(pack["ref"]), 404,
                         f"round {round_no}: GET of the deleted pack")
        server_errors = [str(e) for e in refused if e.status >= 500]
        assert not server_errors, f"round {round_no}: submissions answered 5xx: {server_errors}"

        def not_terminal():
            statuses = [(eid, admin.get_execution(eid)["status"]) for eid in accepted]
            return [(eid, status) for eid, status in statuses if status not in TERMINAL]

        left = wait_until(not_terminal, timeout=15, done=lambda rows: not rows,
                          description=f"round {round_no}: the {len(accepted)} accepted "
                                      f"executions terminal (value: those that are not)")
        assert left == [], left
