"""Grant evaluation (api.md §2): permission sets -> grants, per identity or role label.

A grant is `{"resource", "actions": [...], "constraints"?}`; it allows a request when the resource
and action match and every constraint present matches the request's context. Grants are
re-validated against the database on each request (a per-process cache keyed by the authz epoch
read with the caller's identity, authz.py), so assignment changes apply to already-issued tokens
from the next request on.

Token types: access tokens use the identity's grants; execution tokens use only the permission
sets named in the token (plus the pseudo-ref `standard`); sensor and worker tokens skip RBAC.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Iterable

from ..db import J, Database
from .common import ApiError, Principal, forbidden

log = logging.getLogger(__name__)

STANDARD_REF = "standard"

# Resource -> actions the grant validator accepts (api.md §2.1).
ALLOWED_ACTIONS: dict[str, tuple[str, ...]] = {
    "packs": ("read", "create", "install", "configure", "delete"),
    "actions": ("read", "create", "update", "delete", "execute"),
    "queues": ("read", "create", "update", "delete"),
    "rules": ("read", "create", "update", "delete"),
    "triggers": ("read", "create", "update", "delete"),
    "executions": ("read", "update", "cancel", "decrypt"),
    "events": ("read",),
    "enforcements": ("read", "decrypt"),
    "inquiries": ("read", "create", "update", "delete", "respond"),
    "keys": ("read", "create", "update", "delete", "decrypt"),
    "artifacts": ("read", "create", "update", "delete"),
    "runtimes": ("read", "create", "update", "delete"),
    "workers": ("read", "manage"),
    "retention": ("read", "update"),
    "identities": ("read", "create", "update", "delete"),
    "permissions": ("read", "manage"),
    "audit_log": ("read",),
}
CONSTRAINT_KEYS = ("pack_refs", "refs", "owner", "owner_types", "visibility", "execution_scope",
                   "encrypted", "attributes")
# Constraints that narrow a grant to particular owners or objects ("scoping" constraints).
PACK_SCOPING = ("owner", "pack_refs", "refs")


@dataclass
class Context:
    """What the request touches; None means "not applicable / unknown"."""
    identity_id: int
    attributes: dict = field(default_factory=dict)
    pack_ref: str | None = None
    ref: str | None = None
    owner_identity: int | None = None
    owner_type: str | None = None
    owner_ref: str | None = None
    visibility: str | None = None
    encrypted: bool | None = None
    execution_owner: int | None = None
    execution_ancestors: tuple = ()


def _constraints_match(constraints: Any, ctx: Context) -> bool:
    if not constraints:
        return True
    if not isinstance(constraints, dict):
        return False
    c = constraints
    if c.get("pack_refs") is not None and ctx.pack_ref not in c["pack_refs"]:
        return False
    owner = c.get("owner")
    if owner is not None:
        if owner == "self" and ctx.owner_identity != ctx.identity_id:
            return False
        if owner == "none" and ctx.owner_identity is not None:
            return False
        if owner not in ("self", "any", "none"):
            return False
    if c.get("owner_types") is not None and (ctx.owner_type is None
                                             or ctx.owner_type not in c["owner_types"]):
        return False
    if c.get("owner_refs") is not None and (ctx.owner_ref is None
                                            or ctx.owner_ref not in c["owner_refs"]):
        return False
    if c.get("visibility") is not None and (ctx.visibility is None
                                            or ctx.visibility not in c["visibility"]):
        return False
    scope = c.get("execution_scope")
    if scope is not None:
        if scope == "self" and ctx.execution_owner != ctx.identity_id:
            return False
        if scope == "descendants" and not (ctx.execution_owner == ctx.identity_id
                                           or ctx.identity_id in ctx.execution_ancestors):
            return False
        if scope not in ("self", "descendants", "any"):
            return False
    if c.get("refs") is not None and (ctx.ref is None or ctx.ref not in c["refs"]):
        return False
    if c.get("ids") is not None:  # rejected by the API validator; never matches a context here
        return False
    if c.get("encrypted") is not None and (ctx.encrypted is None
                                           or bool(c["encrypted"]) != ctx.encrypted):
        return False
    attrs = c.get("attributes")
    if attrs is not None:
        if not isinstance(attrs, dict):
            return False
        for key, expected in attrs.items():
            if key not in ctx.attributes or ctx.attributes[key] != expected:
                return False
    return True


def grant_allows(grant: dict, resource: str, action: str, ctx: Context) -> bool:
    if not isinstance(grant, dict) or grant.get("resource") != resource:
        return False
    actions = grant.get("actions")
    if not isinstance(actions, list) or action not in actions:
        return False
    return _constraints_match(grant.get("constraints"), ctx)


def is_allowed(grants: Iterable[dict], resource: str, action: str, ctx: Context) -> bool:
    return any(grant_allows(g, resource, action, ctx) for g in grants)


# ------------------------------------------------------------------------------ loading grants

def _grants_of(rows: Iterable[dict]) -> list[dict]:
    grants: list[dict] = []
    for row in rows:
        value = row.get("grants")
        if isinstance(value, list):
            grants.extend(g for g in value if isinstance(g, dict))
        else:
            log.warning("permission set %s has malformed grants; ignored", row.get("ref"))
    return grants


def identity_permission_sets(db: Database, identity_id: int) -> list[dict]:
    """Sets assigned directly plus those linked to the identity's role labels (deduplicated)."""
    return db.all(
        """SELECT ps.id, ps.ref, ps.grants FROM permission_set ps
            WHERE ps.id IN (SELECT permset FROM permission_assignment WHERE identity = %(i)s)
               OR ps.id IN (SELECT psr.permset FROM permission_set_role_assignment psr
                              JOIN identity_role_assignment ira ON ira.role = psr.role
                             WHERE ira.identity = %(i)s)
            ORDER BY ps.id""", {"i": identity_id})


def standard_grants(principal: Principal) -> list[dict]:
    """The pseudo-ref `standard`: key read/decrypt and artifact CRUD limited to what the
    execution's own action and pack own."""
    meta = principal.metadata or {}
    action_refs = [r for r in (meta.get("standard_access_action_refs") or []) if isinstance(r, str)]
    pack_refs = [r for r in (meta.get("standard_access_pack_refs") or []) if isinstance(r, str)]
    action_ref = meta.get("action_ref")
    if isinstance(action_ref, str) and action_ref:
        if action_ref not in action_refs:
            action_refs.append(action_ref)
        pack = action_ref.split(".", 1)[0]
        if pack not in pack_refs:
            pack_refs.append(pack)
    grants: list[dict] = []
    for resource, actions in (("keys", ["read", "decrypt"]),
                              ("artifacts", ["read", "create", "update", "delete"])):
        if pack_refs:
            grants.append({"resource": resource, "actions": actions,
                           "constraints": {"owner_types": ["pack"], "owner_refs": pack_refs}})
        if action_refs:
            grants.append({"resource": resource, "actions": actions,
                           "constraints": {"owner_types": ["action"], "owner_refs": action_refs}})
    return grants


def principal_sets(db: Database, principal: Principal) -> list[dict]:
    """The identity's permission sets for an access token: those read at authentication
    (authz.py) when known, else from the database."""
    if principal.permission_sets is not None:
        return principal.permission_sets
    if principal.cache is not None and principal.authz_epoch is not None:
        principal.permission_sets = principal.cache.identity_sets(
            db, principal.identity_id, principal.authz_epoch)
        return principal.permission_sets
    return identity_permission_sets(db, principal.identity_id)


def effective_grants(db: Database, principal: Principal) -> list[dict]:
    """Grants in force for this token (empty for token types that skip RBAC)."""
    if principal.token_type == "access":
        return _grants_of(principal_sets(db, principal))
    if principal.token_type == "execution":
        refs = list(principal.permission_set_refs or [])
        named = [r for r in refs if r != STANDARD_REF]
        if not named:
            rows = []
        elif principal.cache is not None and principal.authz_epoch is not None:
            rows = principal.cache.named_sets(db, named, principal.authz_epoch)
        else:
            rows = db.all("SELECT id, ref, grants FROM permission_set WHERE ref = ANY(%s) "
                          "ORDER BY id", (named,))
        grants = _grants_of(rows)
        if STANDARD_REF in refs:
            grants.extend(standard_grants(principal))
        return grants
    return []


def _attributes(db: Database, identity_id: int) -> dict:
    row = db.one("SELECT attributes FROM identity WHERE id = %s", (identity_id,))
    attrs = row["attributes"] if row else None
    return attrs if isinstance(attrs, dict) else {}


def build_context(db: Database | None, principal: Principal, *, pack_ref=None, ref=None,
                  owner_identity=None, owner_type=None, owner_ref=None, visibility=None,
                  encrypted=None, key=None, execution=None, attributes=None) -> Context:
    """`key` is a key row (fills owner and encryption fields); `execution` is a dict with
    `executor` and optional `ancestors` (executor ids of the parent chain)."""
    if key is not None:
        owner_type = key.get("owner_type")
        owner_identity = key.get("owner_identity")
        encrypted = bool(key.get("encrypted"))
        ref = ref or key.get("ref")
        if owner_type == "pack":
            owner_ref = key.get("owner_pack_ref")
        elif owner_type == "action":
            owner_ref = key.get("owner_action_ref")
        elif owner_type == "sensor":
            owner_ref = key.get("owner_sensor_ref")
        if owner_ref is None and owner_type != "system":
            owner_ref = key.get("owner")
    exec_owner, ancestors = None, ()
    if execution is not None:
        exec_owner = execution.get("executor")
        ancestors = tuple(a for a in (execution.get("ancestors") or ()) if a is not None)
        owner_identity = owner_identity if owner_identity is not None else exec_owner
        ref = ref or execution.get("action_ref")
        if pack_ref is None and isinstance(execution.get("action_ref"), str):
            pack_ref = execution["action_ref"].split(".", 1)[0]
    if attributes is None:
        if principal.attributes is not None:  # read with the identity at authentication
            attributes = principal.attributes
        else:
            attributes = _attributes(db, principal.identity_id) if db is not None else {}
    return Context(identity_id=principal.identity_id, attributes=attributes, pack_ref=pack_ref,
                   ref=ref, owner_identity=owner_identity, owner_type=owner_type,
                   owner_ref=owner_ref, visibility=visibility, encrypted=encrypted,
                   execution_owner=exec_owner, execution_ancestors=ancestors)


def can(db: Database, principal: Principal, resource: str, action: str, *,
        grants: list[dict] | None = None, **context) -> bool:
    if principal.skips_rbac:
        return True
    grants = effective_grants(db, principal) if grants is None else grants
    if not grants:
        return False
    return is_allowed(grants, resource, action, build_context(db, principal, **context))


def _audit_denied(db: Database, principal: Principal, resource: str, action: str,
                  ref: str | None) -> None:
    try:
        db.execute(
            """INSERT INTO audit_event (category, event_type, outcome, actor_identity, actor_login,
                                        actor_token_type, resource_type, resource_ref, details)
               VALUES ('rbac', 'rbac.denied', 'denied', %s, %s, %s, %s, %s, %s)""",
            (principal.identity_id, principal.login, principal.token_type, resource, ref,
             J({"resource": resource, "action": action})))
    except Exception:  # auditing must never change the answer
        log.debug("could not record rbac.denied", exc_info=True)


def authorize(db: Database, principal: Principal, resource: str, action: str, *,
              grants: list[dict] | None = None, **context) -> None:
    """Raise 403 "Insufficient permissions: <resource>:<action>" unless a grant allows it.

    Context keywords: pack_ref, ref, owner_identity, owner_type, owner_ref, visibility,
    encrypted, key (a key row), execution ({"executor", "ancestors"}).
    """
    if can(db, principal, resource, action, grants=grants, **context):
        return
    _audit_denied(db, principal, resource, action, context.get("ref"))
    raise forbidden(f"Insufficient permissions: {resource}:{action}")


def denied(resource: str, action: str) -> ApiError:
    return forbidden(f"Insufficient permissions: {resource}:{action}")


# ------------------------------------------------------------------------------ visibility

def _scoped(grant: dict, keys: tuple[str, ...]) -> bool:
    c = grant.get("constraints")
    return isinstance(c, dict) and any(c.get(k) is not None for k in keys)


def pack_visible(db: Database, principal: Principal, pack_row: dict, *,
                 grants: list[dict] | None = None, action: str = "read") -> bool:
    """api.md §2.6: standard packs are visible to all; a pack with `installed_by` only to its
    creator or to a pack grant carrying a scoping constraint; others follow plain grants."""
    if principal.skips_rbac or pack_row.get("is_standard"):
        return True
    grants = effective_grants(db, principal) if grants is None else grants
    owner = pack_row.get("installed_by")
    ctx = build_context(db, principal, pack_ref=pack_row.get("ref"), ref=pack_row.get("ref"),
                        owner_identity=owner)
    candidates = grants
    if owner is not None and owner != principal.identity_id:
        candidates = [g for g in grants if _scoped(g, PACK_SCOPING)]
    return is_allowed(candidates, "packs", action, ctx)


def key_visible(db: Database, principal: Principal, key_row: dict, *,
                grants: list[dict] | None = None, action: str = "read") -> bool:
    """Keys owned by another identity need an owner-scoped grant; others follow plain grants."""
    if principal.skips_rbac:
        return True
    grants = effective_grants(db, principal) if grants is None else grants
    ctx = build_context(db, principal, key=key_row)
    candidates = grants
    if key_row.get("owner_type") == "identity" and key_row.get("owner_identity") != principal.identity_id:
        candidates = [g for g in grants if _scoped(g, ("owner", "owner_types", "refs"))]
    return is_allowed(candidates, "keys", action, ctx)


# ------------------------------------------------------------------------------ validation

_DEBUG_NAMES = {"audit_log": "AuditLog"}
_CONSTRAINT_RESOURCES = {
    "pack_refs": ({"packs", "actions", "queues", "rules", "triggers", "executions", "enforcements",
                   "artifacts"}, "{R} grants do not support pack scope constraints"),
    "refs": ({"packs", "actions", "queues", "rules", "triggers", "executions", "enforcements",
              "keys", "artifacts"}, "{R} grants do not support component ref constraints"),
    "owner": ({"packs", "keys", "artifacts"}, "{R} grants do not support owner constraints"),
    "owner_types": ({"keys", "artifacts"}, "{R} grants do not support owner type constraints"),
    "visibility": ({"artifacts"}, "Visibility constraints only apply to artifacts grants"),
    "execution_scope": ({"executions"}, "Execution scope constraints only apply to executions grants"),
    "encrypted": ({"keys"}, "Encryption constraints only apply to keys grants"),
}
_OWNER_TYPES = ("system", "identity", "pack", "action", "sensor")


def _debug_name(resource: str) -> str:
    """Rust's `{:?}` of the Resource enum (e.g. `Packs`, `AuditLog`)."""
    return _DEBUG_NAMES.get(resource, resource.capitalize())


def _schema_error(detail: str) -> str:
    return f"Invalid permission grant schema: {detail}"


def validate_grants(grants: Any) -> str | None:
    """Check a grants document as the API does before saving a permission set; returns the
    400 message or None."""
    if not isinstance(grants, list):
        return "Permission set grants must be an array"
    for g in grants:
        if not isinstance(g, dict):
            return _schema_error("invalid type: expected struct Grant")
        resource = g.get("resource")
        if "resource" not in g:
            return _schema_error("missing field `resource`")
        if resource not in ALLOWED_ACTIONS:
            return _schema_error(f"unknown variant `{resource}`")
        actions = g.get("actions")
        if not isinstance(actions, list):
            return _schema_error("missing field `actions`" if actions is None
                                 else "invalid type: expected a sequence")
        known = {"read", "create", "install", "configure", "update", "delete", "execute",
                 "cancel", "respond", "manage", "decrypt"}
        for a in actions:
            if a not in known:
                return _schema_error(f"unknown variant `{a}`")
        if not actions or any(a not in ALLOWED_ACTIONS[resource] for a in actions):
            return f"Permission grant for {_debug_name(resource)} includes unsupported actions"
        c = g.get("constraints")
        if c is None:
            continue
        if not isinstance(c, dict):
            return _schema_error("invalid type: expected struct GrantConstraints")
        for key in ("pack_refs", "refs", "owner_types", "visibility", "owner_refs"):
            if c.get(key) is not None and not (isinstance(c[key], list)
                                               and all(isinstance(v, str) for v in c[key])):
                return _schema_error(f"invalid type for `{key}`: expected a sequence of strings")
        if c.get("owner") is not None and c["owner"] not in ("self", "any", "none"):
            return _schema_error(f"unknown variant `{c['owner']}`")
        if c.get("execution_scope") is not None and c["execution_scope"] not in (
                "self", "descendants", "any"):
            return _schema_error(f"unknown variant `{c['execution_scope']}`")
        for t in c.get("owner_types") or []:
            if t not in _OWNER_TYPES:
                return _schema_error(f"unknown variant `{t}`")
        for v in c.get("visibility") or []:
            if v not in ("public", "private"):
                return _schema_error(f"unknown variant `{v}`")
        if c.get("encrypted") is not None and not isinstance(c["encrypted"], bool):
            return _schema_error("invalid type for `encrypted`: expected a boolean")
        if c.get("attributes") is not None and not isinstance(c["attributes"], dict):
            return _schema_error("invalid type for `attributes`: expected a map")
        if c.get("ids") is not None:
            return ("Permission set grants cannot be scoped by database IDs; "
                    "use metadata refs instead")
        if c.get("owner_refs") is not None:
            return ("Permission set grants cannot use owner_refs; use a pack scope, component "
                    "ref scope, or owner type/self constraints")
        if c.get("pack_refs") is not None and c.get("refs") is not None:
            return "Permission set grants can be pack scoped or component scoped, not both"
        for key, (resources, message) in _CONSTRAINT_RESOURCES.items():
            if c.get(key) is not None and resource not in resources:
                return message.replace("{R}", _debug_name(resource))
    return None


def summarize_permissions(grants: Iterable[dict]) -> list[dict]:
    """`effective_permissions` for /auth/me: resources sorted, each with its sorted action set."""
    by_resource: dict[str, set] = {}
    for g in grants:
        if not isinstance(g, dict) or not isinstance(g.get("resource"), str):
            continue
        acts = g.get("actions") if isinstance(g.get("actions"), list) else []
        by_resource.setdefault(g["resource"], set()).update(a for a in acts if isinstance(a, str))
    return [{"resource": r, "actions": sorted(a)} for r, a in sorted(by_resource.items())]
