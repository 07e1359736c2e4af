"""`/auth/*` (api.md §1.3): login, register, refresh, me, change-password, settings, sensor tokens.

Access tokens live `security.jwt_access_expiration` s, refresh tokens
`security.jwt_refresh_expiration` s; refresh tokens are stateless (refreshing revokes nothing).
"""
from __future__ import annotations

import datetime as _dt
import logging

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .. import auth
from ..db import J
from . import authz, rbac
from .common import (ApiError, AuthError, Field, Principal, check_rules, conflict, forbidden,
                     not_found, ok, read_json, require_auth, run_sync, unauthorized)

log = logging.getLogger(__name__)

SENSOR_TOKEN_DEFAULT_TTL = 86400
FROZEN = "Identity is frozen and cannot authenticate"

LOGIN_SPEC = {"login": Field(str, required=True, min_len=1, max_len=255),
              "password": Field(str, required=True, min_len=1)}
REGISTER_SPEC = {"login": Field(str, required=True, min_len=3, max_len=255),
                 "password": Field(str, required=True, min_len=8, max_len=128),
                 "display_name": Field(str, max_len=255)}
REFRESH_SPEC = {"refresh_token": Field(str, required=True, min_len=1)}
UPDATE_ME_SPEC = {"display_name": Field(str, max_len=255)}
CHANGE_PASSWORD_SPEC = {"current_password": Field(str, required=True, min_len=1),
                        "new_password": Field(str, required=True, min_len=8, max_len=128)}
SENSOR_TOKEN_SPEC = {"sensor_ref": Field(str, required=True, min_len=1, max_len=255),
                     "trigger_types": Field(list, required=True, items=str, min_len=1),
                     "ttl_seconds": Field(int, min_value=3600, max_value=259200)}


# ------------------------------------------------------------------------------ helpers

def _cfg(request: Request):
    return request.app.state.cfg


def _token_response(cfg, identity: dict | None, ident_id: int, login: str,
                     with_user: bool = True) -> dict:
    access_ttl = int(cfg.get("security.jwt_access_expiration", 3600))
    refresh_ttl = int(cfg.get("security.jwt_refresh_expiration", 604800))
    body = {
        "access_token": auth.encode_token(cfg.jwt_secret, ident_id, login, "access", access_ttl),
        "refresh_token": auth.encode_token(cfg.jwt_secret, ident_id, login, "refresh", refresh_ttl),
        "token_type": "Bearer",
        "expires_in": access_ttl,
    }
    if with_user and identity is not None:
        body["user"] = {"id": identity["id"], "login": identity["login"],
                        "display_name": identity["display_name"]}
    return body


def _find_by_login(db, login: str) -> dict | None:
    return db.one("SELECT * FROM identity WHERE login = %s", (login,))


def _find_by_id(db, ident_id: int) -> dict | None:
    return db.one("SELECT * FROM identity WHERE id = %s", (ident_id,))


def _auth_provider(identity: dict) -> str:
    attrs = identity.get("attributes") if isinstance(identity.get("attributes"), dict) else {}
    if attrs.get("oidc") is not None:
        return "oidc"
    if attrs.get("ldap") is not None:
        return "ldap"
    return "local"


def _find_with_epoch(db, ident_id: int) -> dict | None:
    """The identity row plus the authz epoch, so cached permission sets can be used."""
    return db.one(f"SELECT i.*, {authz.EPOCH_COLUMNS} FROM identity i "
                  "LEFT JOIN api_cache_epoch e ON e.id = 1 WHERE i.id = %s", (ident_id,))


def _assigned_refs(db, ident_id: int, principal: Principal | None = None) -> list[str]:
    if principal is not None and principal.identity_id == ident_id:
        if principal.token_type == "access":
            rows = rbac.principal_sets(db, principal)
        elif principal.cache is not None and principal.authz_epoch is not None:
            rows = principal.cache.identity_sets(db, ident_id, principal.authz_epoch)
        else:
            rows = rbac.identity_permission_sets(db, ident_id)
    else:
        rows = rbac.identity_permission_sets(db, ident_id)
    return sorted({r["ref"] for r in rows})


def _current_user(db, identity: dict, principal: Principal) -> dict:
    provider = _auth_provider(identity)
    body = {
        "id": identity["id"],
        "login": identity["login"],
        "display_name": identity["display_name"],
        "auth_provider": provider,
        "is_local": provider == "local",
        "can_change_password": provider == "local" and identity.get("password_hash") is not None,
        "effective_permissions": rbac.summarize_permissions(rbac.effective_grants(db, principal)),
        "assigned_permission_set_refs": _assigned_refs(db, identity["id"], principal),
    }
    if provider != "local":
        attrs = identity["attributes"].get(provider) or {}
        attrs = attrs if isinstance(attrs, dict) else {}
        body["provider_profile"] = {
            "provider": provider,
            "display_name": attrs.get("name" if provider == "oidc" else "display_name")
            or identity["display_name"],
            "login": attrs.get("preferred_username" if provider == "oidc" else "login"),
            "email": attrs.get("email"),
            "groups": [g for g in (attrs.get("groups") or []) if isinstance(g, str)],
        }
    return body


def _require_access_token(principal: Principal) -> None:
    if principal.token_type != "access":
        raise forbidden("User profile changes require a user access token")


# ------------------------------------------------------------------------------ handlers

async def settings(request: Request) -> Response:
    cfg = _cfg(request)
    enabled = bool(cfg.get("security.enable_auth", True))
    return ok({
        "authentication_enabled": enabled,
        "local_password_enabled": enabled,
        "local_password_visible_by_default": enabled,
        "oidc_enabled": False,
        "oidc_visible_by_default": False,
        "oidc_provider_name": None,
        "oidc_provider_label": None,
        "oidc_provider_icon_url": None,
        "ldap_enabled": False,
        "ldap_visible_by_default": False,
        "ldap_provider_name": None,
        "ldap_provider_label": None,
        "ldap_provider_icon_url": None,
        "self_registration_enabled": bool(cfg.get("security.allow_self_registration", False)),
    })


def _audit_login(db, login: str, identity_id: int | None, success: bool, reason: str | None,
                 request: Request) -> None:
    try:
        db.execute(
            """INSERT INTO audit_event (category, event_type, outcome, actor_identity, actor_login,
                                        actor_ip, actor_user_agent, details)
               VALUES ('auth', %s, %s, %s, %s, %s, %s, %s)""",
            ("auth.login.success" if success else "auth.login.failure",
             "success" if success else "failure", identity_id, login,
             request.client.host if request.client else None,
             request.headers.get("user-agent"), J({"reason": reason} if reason else {})))
    except Exception:  # auditing never changes the answer
        log.debug("could not record login audit event", exc_info=True)


async def login(request: Request) -> Response:
    body = await read_json(request, LOGIN_SPEC, invalid_prefix="Invalid login request")
    db = request.app.state.db

    def work():
        identity = _find_by_login(db, body["login"])
        if identity is None:
            _audit_login(db, body["login"], None, False, "unknown_user", request)
            raise unauthorized("Invalid login or password")
        if identity["frozen"]:
            _audit_login(db, body["login"], identity["id"], False, "frozen", request)
            raise forbidden(FROZEN)
        if not auth.verify_password(identity["password_hash"], body["password"]):
            reason = "no_password" if not identity["password_hash"] else "invalid_password"
            _audit_login(db, body["login"], identity["id"], False, reason, request)
            raise unauthorized("Invalid login or password")
        _audit_login(db, identity["login"], identity["id"], True, None, request)
        return identity

    identity = await run_sync(work)
    return ok(_token_response(_cfg(request), identity, identity["id"], identity["login"]))


async def register(request: Request) -> Response:
    # Shape errors first (plain 422), then the feature switch (403), then lengths (422).
    body = await read_json(request, REGISTER_SPEC, invalid_prefix=None)
    cfg = _cfg(request)
    if not cfg.get("security.allow_self_registration", False):
        raise forbidden("Self-service registration is disabled; identities must be provisioned "
                        "by an administrator or identity provider")
    check_rules(body, REGISTER_SPEC, "Invalid registration request")
    db = request.app.state.db
    password_hash = await run_sync(auth.hash_password, body["password"])

    def work():
        if _find_by_login(db, body["login"]) is not None:
            raise conflict(f"Identity with login '{body['login']}' already exists")
        return db.one("INSERT INTO identity (login, display_name, password_hash, attributes) "
                      "VALUES (%s, %s, %s, '{}') RETURNING *",
                      (body["login"], body["display_name"], password_hash))

    identity = await run_sync(work)
    return ok(_token_response(cfg, identity, identity["id"], identity["login"]))


async def refresh(request: Request) -> Response:
    body = await read_json(request, REFRESH_SPEC, required_body=False,
                           invalid_prefix="Invalid refresh token request")
    if body is None:
        token = request.cookies.get("attune_refresh_token")
        if not token:
            raise unauthorized("Missing refresh token")
    else:
        token = body["refresh_token"]
    cfg = _cfg(request)
    try:
        claims = auth.decode_token(cfg.jwt_secret, token)
    except auth.TokenError:
        raise unauthorized("Invalid or expired refresh token") from None
    if claims.get("token_type") != "refresh":
        raise unauthorized("Invalid token type")
    try:
        ident_id = int(str(claims["sub"]))
    except ValueError:
        raise unauthorized("Invalid token") from None
    identity = await run_sync(_find_by_id, request.app.state.db, ident_id)
    if identity is None:
        raise unauthorized("Identity not found")
    if identity["frozen"]:
        raise forbidden(FROZEN)
    return ok(_token_response(cfg, identity, identity["id"], identity["login"], with_user=False))


async def _me_principal(request: Request) -> Principal:
    # /auth/me answers auth failures in shape (a), not the extractor's shape (b).
    try:
        return await require_auth(request, check_identity=False)
    except AuthError as exc:
        raise exc.as_api_error() from None


async def get_me(request: Request) -> Response:
    principal = await _me_principal(request)
    db = request.app.state.db

    def work():
        identity = _find_with_epoch(db, principal.identity_id)
        if identity is None:
            raise not_found("Identity not found")
        if identity["frozen"]:
            raise forbidden(FROZEN)
        if principal.authz_epoch is None:
            principal.authz_epoch = identity["authz_epoch"]
            principal.pack_epoch = identity["pack_epoch"]
            principal.action_epoch = identity["action_epoch"]
        return _current_user(db, identity, principal)

    return ok(await run_sync(work))


async def put_me(request: Request) -> Response:
    principal = await require_auth(request)
    body = await read_json(request, UPDATE_ME_SPEC, invalid_prefix="Invalid profile update request")
    _require_access_token(principal)
    db = request.app.state.db

    def work():
        identity = _find_by_id(db, principal.identity_id)
        if identity is None:
            raise not_found("Identity not found")
        if identity["frozen"]:
            raise forbidden("Identity is frozen and cannot update its profile")
        if _auth_provider(identity) != "local":
            raise forbidden("Profile details are managed by the configured identity provider")
        name = body["display_name"].strip() if isinstance(body["display_name"], str) else None
        identity = db.one("UPDATE identity SET display_name = %s WHERE id = %s RETURNING *",
                          (name or None, principal.identity_id))
        return _current_user(db, identity, principal)

    return ok(await run_sync(work))


async def change_password(request: Request) -> Response:
    principal = await require_auth(request)
    body = await read_json(request, CHANGE_PASSWORD_SPEC,
                           invalid_prefix="Invalid change password request")
    _require_access_token(principal)
    db = request.app.state.db

    def work():
        identity = _find_by_id(db, principal.identity_id)
        if identity is None:
            raise not_found("Identity not found")
        if identity["frozen"]:
            raise forbidden("Identity is frozen and cannot change its password")
        if _auth_provider(identity) != "local":
            raise forbidden("Passwords for this identity are managed by the configured "
                            "identity provider")
        if not identity["password_hash"]:
            raise unauthorized("No password set")
        if not auth.verify_password(identity["password_hash"], body["current_password"]):
            raise unauthorized("Invalid current password")
        db.execute("UPDATE identity SET password_hash = %s WHERE id = %s",
                   (auth.hash_password(body["new_password"]), principal.identity_id))

    await run_sync(work)
    return ok({"success": True, "message": "Password changed successfully"})


def _issue_sensor_token(request: Request, body: dict) -> dict:
    db = request.app.state.db
    cfg = _cfg(request)
    login = f"sensor:{body['sensor_ref']}"
    identity = _find_by_login(db, login)
    if identity is None:
        identity = db.one(
            "INSERT INTO identity (login, display_name, attributes) VALUES (%s, %s, %s) "
            "ON CONFLICT DO NOTHING RETURNING *",
            (login, f"Sensor: {body['sensor_ref']}",
             J({"type": "sensor", "sensor_ref": body["sensor_ref"],
                "trigger_types": body["trigger_types"]})))
        identity = identity or _find_by_login(db, login)  # a concurrent request created it
    ttl = body["ttl_seconds"] or SENSOR_TOKEN_DEFAULT_TTL
    token = auth.encode_token(cfg.jwt_secret, identity["id"], login, "sensor", ttl,
                              scope="sensor", metadata={"trigger_types": body["trigger_types"]})
    expires = _dt.datetime.now(_dt.timezone.utc) + _dt.timedelta(seconds=ttl)
    return {"identity_id": identity["id"], "sensor_ref": body["sensor_ref"], "token": token,
            "expires_at": expires.isoformat(), "trigger_types": body["trigger_types"]}


async def sensor_token(request: Request) -> Response:
    await require_auth(request)
    body = await read_json(request, SENSOR_TOKEN_SPEC, invalid_prefix="Invalid sensor token request")
    return ok(await run_sync(_issue_sensor_token, request, body))


async def sensor_token_internal(request: Request) -> Response:
    # Unauthenticated, as upstream (meant to be reachable only from the service network).
    body = await read_json(request, SENSOR_TOKEN_SPEC, invalid_prefix="Invalid sensor token request")
    return ok(await run_sync(_issue_sensor_token, request, body))


ROUTES = [
    Route("/auth/settings", settings, methods=["GET"]),
    Route("/auth/login", login, methods=["POST"]),
    Route("/auth/register", register, methods=["POST"]),
    Route("/auth/refresh", refresh, methods=["POST"]),
    Route("/auth/me", get_me, methods=["GET"]),
    Route("/auth/me", put_me, methods=["PUT"]),
    Route("/auth/change-password", change_password, methods=["POST"]),
    Route("/auth/sensor-token", sensor_token, methods=["POST"]),
    Route("/auth/internal/sensor-token", sensor_token_internal, methods=["POST"]),
]

__all__ = ["ROUTES", "ApiError"]
