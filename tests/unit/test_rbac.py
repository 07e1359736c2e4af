"""Unit tests of grant evaluation (attune_emulator.api.rbac) with an in-memory fake database."""
import pytest

from attune_emulator.api import rbac
from attune_emulator.api.common import ApiError, Principal

ADMIN = [{"resource": "packs", "actions": ["read", "create"]},
         {"resource": "keys", "actions": ["read", "create", "update", "delete", "decrypt"]}]
VIEWER = [{"resource": "keys", "actions": ["read"]}, {"resource": "packs", "actions": ["read"]}]


class FakeDb:
    """Answers the few queries rbac issues: sets of an identity, sets by ref, attributes."""

    def __init__(self, identity_sets=None, sets_by_ref=None, attributes=None):
        self.identity_sets = identity_sets or []
        self.sets_by_ref = sets_by_ref or {}
        self.attributes = attributes or {}
        self.audits = 0

    def all(self, sql, params=None):
        if "permission_assignment" in sql:
            return self.identity_sets
        refs = params[0]
        return [{"id": i, "ref": r, "grants": self.sets_by_ref[r]}
                for i, r in enumerate(refs) if r in self.sets_by_ref]

    def one(self, sql, params=None):
        return {"attributes": self.attributes}

    def execute(self, sql, params=None):
        self.audits += 1
        return 1


def access(identity_id=1):
    return Principal(identity_id=identity_id, login="u", token_type="access", claims={})


def db_with(grants, **kw):
    return FakeDb(identity_sets=[{"id": 1, "ref": "x.y", "grants": grants}], **kw)


def test_unconstrained_grant_allows_listed_actions_only():
    db = db_with(VIEWER)
    assert rbac.can(db, access(), "keys", "read")
    assert not rbac.can(db, access(), "keys", "create")
    assert not rbac.can(db, access(), "identities", "read")


def test_authorize_raises_403_with_upstream_message_and_audits():
    db = db_with(VIEWER)
    with pytest.raises(ApiError) as exc:
        rbac.authorize(db, access(), "keys", "create")
    assert exc.value.status == 403
    assert exc.value.message == "Insufficient permissions: keys:create"
    assert exc.value.code == "FORBIDDEN"
    assert db.audits == 1


def test_no_grants_denies():
    assert not rbac.can(FakeDb(), access(), "packs", "read")


def test_sensor_and_worker_tokens_skip_rbac():
    for t in ("sensor", "worker"):
        p = Principal(identity_id=5, login="s", token_type=t, claims={})
        assert rbac.can(FakeDb(), p, "permissions", "manage")


@pytest.mark.parametrize("constraints,ctx,allowed", [
    ({"pack_refs": ["p1"]}, {"pack_ref": "p1"}, True),
    ({"pack_refs": ["p1"]}, {"pack_ref": "p2"}, False),
    ({"pack_refs": ["p1"]}, {}, False),
    ({"refs": ["p1.a"]}, {"ref": "p1.a"}, True),
    ({"refs": ["p1.a"]}, {"ref": "p1.b"}, False),
    ({"owner": "self"}, {"owner_identity": 1}, True),
    ({"owner": "self"}, {"owner_identity": 2}, False),
    ({"owner": "any"}, {"owner_identity": 2}, True),
    ({"owner": "none"}, {}, True),
    ({"owner": "none"}, {"owner_identity": 1}, False),
    ({"owner_types": ["system"]}, {"owner_type": "system"}, True),
    ({"owner_types": ["system"]}, {"owner_type": "pack"}, False),
    ({"encrypted": False}, {"encrypted": False}, True),
    ({"encrypted": False}, {"encrypted": True}, False),
    ({"visibility": ["public"]}, {"visibility": "private"}, False),
    ({"execution_scope": "self"}, {"execution": {"executor": 1}}, True),
    ({"execution_scope": "self"}, {"execution": {"executor": 2}}, False),
    ({"execution_scope": "descendants"}, {"execution": {"executor": 2, "ancestors": [1]}}, True),
    ({"execution_scope": "descendants"}, {"execution": {"executor": 2, "ancestors": [3]}}, False),
    ({"execution_scope": "any"}, {"execution": {"executor": 2}}, True),
])
def test_constraints(constraints, ctx, allowed):
    resource = "executions" if "execution" in ctx else "keys"
    db = db_with([{"resource": resource, "actions": ["read"], "constraints": constraints}])
    assert rbac.can(db, access(1), resource, "read", **ctx) is allowed


def test_attributes_constraint_matches_identity_attributes():
    grant = [{"resource": "packs", "actions": ["read"], "constraints": {"attributes": {"team": "a"}}}]
    assert rbac.can(db_with(grant, attributes={"team": "a"}), access(), "packs", "read")
    assert not rbac.can(db_with(grant, attributes={"team": "b"}), access(), "packs", "read")
    assert not rbac.can(db_with(grant), access(), "packs", "read")


def test_key_row_context():
    grant = [{"resource": "keys", "actions": ["decrypt"],
              "constraints": {"owner_types": ["pack"], "encrypted": True}}]
    key = {"ref": "k", "owner_type": "pack", "owner_pack_ref": "p1", "owner": "3",
           "owner_identity": None, "encrypted": True}
    assert rbac.can(db_with(grant), access(), "keys", "decrypt", key=key)
    assert not rbac.can(db_with(grant), access(), "keys", "decrypt",
                        key=dict(key, owner_type="system"))


def execution_token(refs, action_ref="mypack.act"):
    return Principal(identity_id=1, login="execution:5", token_type="execution", claims={},
                     permission_set_refs=refs,
                     metadata={"execution_id": 5, "action_ref": action_ref,
                               "permission_set_refs": refs})


def test_execution_token_uses_only_embedded_sets():
    db = FakeDb(identity_sets=[{"id": 1, "ref": "core.admin", "grants": ADMIN}],
                sets_by_ref={"core.viewer": VIEWER})
    p = execution_token(["core.viewer"])
    assert rbac.can(db, p, "keys", "read")
    assert not rbac.can(db, p, "keys", "create")  # the identity's own admin set does not apply
    assert not rbac.can(db, execution_token([]), "keys", "read")


def test_standard_pseudo_ref_limits_keys_to_own_pack_and_action():
    p = execution_token(["standard"])
    db = FakeDb()
    own_pack = {"ref": "a", "owner_type": "pack", "owner_pack_ref": "mypack", "encrypted": True}
    own_action = {"ref": "b", "owner_type": "action", "owner_action_ref": "mypack.act",
                  "encrypted": True}
    other_pack = dict(own_pack, owner_pack_ref="otherpack")
    system = {"ref": "c", "owner_type": "system", "encrypted": False}
    assert rbac.can(db, p, "keys", "read", key=own_pack)
    assert rbac.can(db, p, "keys", "decrypt", key=own_action)
    assert not rbac.can(db, p, "keys", "read", key=other_pack)
    assert not rbac.can(db, p, "keys", "read", key=system)
    assert not rbac.can(db, p, "keys", "create", key=own_pack)
    assert rbac.can(db, p, "artifacts", "create", owner_type="action", owner_ref="mypack.act")


def test_pack_visibility():
    mine, theirs = access(1), access(2)
    db = db_with(ADMIN)
    standard = {"ref": "core", "is_standard": True, "installed_by": None}
    registered = {"ref": "reg", "is_standard": False, "installed_by": None}
    created = {"ref": "own", "is_standard": False, "installed_by": 1}
    assert rbac.pack_visible(FakeDb(), theirs, standard)       # visible even without grants
    assert not rbac.pack_visible(FakeDb(), theirs, registered)
    assert rbac.pack_visible(db, theirs, registered)
    assert rbac.pack_visible(db, mine, created)
    assert not rbac.pack_visible(db, theirs, created)          # unconstrained admin grant
    scoped = db_with([{"resource": "packs", "actions": ["read"], "constraints": {"owner": "any"}}])
    assert rbac.pack_visible(scoped, theirs, created)
    by_ref = db_with([{"resource": "packs", "actions": ["read"], "constraints": {"pack_refs": ["own"]}}])
    assert rbac.pack_visible(by_ref, theirs, created)


def test_key_visibility_hides_other_identities_keys():
    db = db_with(ADMIN)
    key = {"ref": "k", "owner_type": "identity", "owner_identity": 1, "encrypted": False}
    assert rbac.key_visible(db, access(1), key)
    assert not rbac.key_visible(db, access(2), key)
    scoped = db_with([{"resource": "keys", "actions": ["read"], "constraints": {"owner": "any"}}])
    assert rbac.key_visible(scoped, access(2), key)


def test_validate_grants():
    assert rbac.validate_grants([{"resource": "packs", "actions": ["read"]}]) is None
    assert rbac.validate_grants({}) == "Permission set grants must be an array"
    assert "unsupported actions" in rbac.validate_grants([{"resource": "packs", "actions": ["execute"]}])
    assert "unknown variant" in rbac.validate_grants([{"resource": "nope", "actions": ["read"]}])
    assert "owner_refs" in rbac.validate_grants(
        [{"resource": "keys", "actions": ["read"], "constraints": {"owner_refs": ["x"]}}])
    assert "not both" in rbac.validate_grants(
        [{"resource": "actions", "actions": ["read"], "constraints": {"pack_refs": ["a"], "refs": ["a.b"]}}])
    assert rbac.validate_grants(
        [{"resource": "events", "actions": ["read"], "constraints": {"owner": "self"}}]) == \
        "Events grants do not support owner constraints"


def test_summarize_permissions_sorted():
    out = rbac.summarize_permissions(VIEWER + [{"resource": "keys", "actions": ["decrypt"]}])
    assert out == [{"resource": "keys", "actions": ["decrypt", "read"]},
                   {"resource": "packs", "actions": ["read"]}]
