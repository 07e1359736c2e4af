"""AttuneClient: the one HTTP client of the suite, one method per endpoint of upstream Attune's API.

Conventions (api.md §0):
- single objects come wrapped as {"data": ...}; the per-endpoint methods unwrap them;
- lists come as {"items", "pagination"}; list methods return that "page" dict unchanged;
- deletes of packs/actions/triggers/rules/keys return {"success", "message"}; returned as is;
- any non-2xx answer raises ApiError (an AssertionError) carrying method, path, status and body.
  It never turns into None or []: negative tests assert on the error.
"""
from __future__ import annotations

import json as _json
import time
from typing import Any

import requests

from tests.helpers import timeline

_UNSET = object()


class ApiError(AssertionError):
    """A non-2xx answer. `body` is the parsed JSON when the answer was JSON, else its text."""

    def __init__(self, method: str, path: str, status: int, body: Any):
        self.method = method
        self.path = path
        self.status = status
        self.body = body
        super().__init__(f"{method} {path} -> HTTP {status}: {_trim(body, 600)}")

    @property
    def code(self) -> Any:
        """The error code: "NOT_FOUND"-style string (shape a) or the int of shape b; None for text."""
        if isinstance(self.body, dict):
            err = self.body.get("error")
            if isinstance(err, dict):
                return err.get("code")
            return self.body.get("code")
        return None

    @property
    def message(self) -> str:
        """The human message whatever the error shape (a: error string, b: error.message, c: text)."""
        if isinstance(self.body, dict):
            err = self.body.get("error")
            if isinstance(err, dict):
                return str(err.get("message", ""))
            if err is not None:
                return str(err)
            return str(self.body.get("message", ""))
        return "" if self.body is None else str(self.body)


def _trim(value: Any, limit: int = 400) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 15] + f"...(+{len(text) - limit + 15})"


def _unwrap(body: Any) -> Any:
    if isinstance(body, dict) and "data" in body and set(body) <= {"data", "message"}:
        return body["data"]
    return body


def _record_executions(value: Any) -> Any:
    """Record execution ids of an ExecutionResponse or a page/list of them; return value unchanged."""
    if isinstance(value, dict) and "items" in value:
        items = value.get("items") or []
    elif isinstance(value, list):
        items = value
    else:
        items = [value]
    timeline.record(i.get("id") for i in items if isinstance(i, dict))
    return value


def _clean(params: dict | None) -> dict | None:
    if not params:
        return None
    out = {}
    for key, val in params.items():
        if val is None:
            continue
        if isinstance(val, bool):
            val = "true" if val else "false"
        out[key] = val
    return out


class AttuneClient:
    """Client of one Attune API. `token` is the bearer access token (None: anonymous)."""

    def __init__(self, base_url: str, token: str | None = None, timeout: float = 15):
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.refresh_token: str | None = None
        self.timeout = timeout
        self.session = requests.Session()

    def __repr__(self) -> str:
        return f"AttuneClient({self.base_url!r}, token={'set' if self.token else None})"

    # ------------------------------------------------------------------ core
    def with_token(self, token: str | None) -> "AttuneClient":
        """A new client (own session) on the same API with another token."""
        return AttuneClient(self.base_url, token=token, timeout=self.timeout)

    def url(self, path: str) -> str:
        return path if path.startswith("http") else f"{self.base_url}{path}"

    def _headers(self, headers: dict | None, auth: bool) -> dict:
        out = {}
        if auth and self.token:
            out["Authorization"] = f"Bearer {self.token}"
        if headers:
            out.update(headers)
        return out

    def raw(self, method: str, path: str, *, auth: bool = True, headers: dict | None = None,
            timeout: Any = None, **kwargs) -> requests.Response:
        """The unparsed requests.Response (no status check). For tests of odd wire behaviour."""
        return self.session.request(method, self.url(path), headers=self._headers(headers, auth),
                                    timeout=timeout or self.timeout, **kwargs)

    def request(self, method: str, path: str, *, json: Any = _UNSET, params: dict | None = None,
                data: Any = None, files: Any = None, headers: dict | None = None,
                auth: bool = True, timeout: float | None = None) -> Any:
        """Send one request; return the parsed body (JSON, else text, None when empty).

        Raises ApiError for every non-2xx status.
        """
        kwargs: dict[str, Any] = {"params": _clean(params)}
        if json is not _UNSET:
            kwargs["json"] = json
        if data is not None:
            kwargs["data"] = data
        if files is not None:
            kwargs["files"] = files
        resp = self.raw(method, path, auth=auth, headers=headers, timeout=timeout, **kwargs)
        body = self.parse(resp)
        if not 200 <= resp.status_code < 300:
            shown = path
            if kwargs["params"]:
                shown += "?" + "&".join(f"{k}={v}" for k, v in kwargs["params"].items())
            raise ApiError(method.upper(), shown, resp.status_code, body)
        return body

    @staticmethod
    def parse(resp: requests.Response) -> Any:
        if not resp.content:
            return None
        ctype = resp.headers.get("Content-Type", "")
        text = resp.text
        if "json" in ctype or text[:1] in "{[":
            try:
                return resp.json()
            except ValueError:
                return text
        return text

    def get(self, path: str, **params) -> Any:
        return self.request("GET", path, params=params)

    def post(self, path: str, body: Any = _UNSET, **kw) -> Any:
        return self.request("POST", path, json=body, **kw)

    def put(self, path: str, body: Any = _UNSET, **kw) -> Any:
        return self.request("PUT", path, json=body, **kw)

    def delete(self, path: str, **kw) -> Any:
        return self.request("DELETE", path, **kw)

    def _data(self, method: str, path: str, **kw) -> Any:
        return _unwrap(self.request(method, path, **kw))

    # ------------------------------------------------------------------ health, auth
    def health(self) -> Any:
        return self.request("GET", "/health", auth=False)

    def health_detailed(self) -> Any:
        return self.request("GET", "/health/detailed", auth=False)

    def login(self, login: str, password: str) -> dict:
        """POST /auth/login; stores the access and refresh tokens on this client."""
        data = self._data("POST", "/auth/login", json={"login": login, "password": password},
                          auth=False)
        self.token = data["access_token"]
        self.refresh_token = data.get("refresh_token")
        return data

    def refresh(self, refresh_token: str | None = None) -> dict:
        """POST /auth/refresh; stores the new tokens on this client."""
        data = self._data("POST", "/auth/refresh",
                          json={"refresh_token": refresh_token or self.refresh_token}, auth=False)
        self.token = data["access_token"]
        self.refresh_token = data.get("refresh_token", self.refresh_token)
        return data

    def me(self) -> dict:
        return self._data("GET", "/auth/me")

    def register(self, login: str, password: str, display_name: str | None = None) -> dict:
        """POST /auth/register (tokens are returned, not stored)."""
        body = {"login": login, "password": password}
        if display_name is not None:
            body["display_name"] = display_name
        return self._data("POST", "/auth/register", json=body, auth=False)

    # ------------------------------------------------------------------ packs
    def list_packs(self, **params) -> dict:
        return self.request("GET", "/api/v1/packs", params=params)

    def get_pack(self, ref: str) -> dict:
        return self._data("GET", f"/api/v1/packs/{ref}")

    def create_pack(self, **body) -> dict:
        return self._data("POST", "/api/v1/packs", json=body)

    def update_pack(self, ref: str, **body) -> dict:
        return self._data("PUT", f"/api/v1/packs/{ref}", json=body)

    def delete_pack(self, ref: str) -> Any:
        return self.request("DELETE", f"/api/v1/packs/{ref}")

    def register_pack(self, path: str, force: bool = False, skip_tests: bool = True) -> dict:
        return self._data("POST", "/api/v1/packs/register",
                          json={"path": path, "force": force, "skip_tests": skip_tests})

    def upload_pack(self, archive: bytes, force: bool = False, skip_tests: bool = True) -> dict:
        """POST /api/v1/packs/upload (multipart); returns data = {pack, test_result, tests_skipped}."""
        return self._data(
            "POST", "/api/v1/packs/upload",
            files={"pack": ("pack.tar.gz", archive, "application/gzip")},
            data={"force": "true" if force else "false",
                  "skip_tests": "true" if skip_tests else "false"},
            timeout=max(self.timeout, 60))

    def sync_pack_workflows(self, ref: str) -> dict:
        return self._data("POST", f"/api/v1/packs/{ref}/workflows/sync")

    # ------------------------------------------------------------------ actions, runtimes
    def list_actions(self, **params) -> dict:
        return self.request("GET", "/api/v1/actions", params=params)

    def get_action(self, ref: str) -> dict:
        return self._data("GET", f"/api/v1/actions/{ref}")

    def create_action(self, **body) -> dict:
        return self._data("POST", "/api/v1/actions", json=body)

    def update_action(self, ref: str, **body) -> dict:
        return self._data("PUT", f"/api/v1/actions/{ref}", json=body)

    def delete_action(self, ref: str) -> Any:
        return self.request("DELETE", f"/api/v1/actions/{ref}")

    def list_runtimes(self, **params) -> dict:
        return self.request("GET", "/api/v1/runtimes", params=params)

    # ------------------------------------------------------------------ triggers, webhooks
    def list_triggers(self, **params) -> dict:
        return self.request("GET", "/api/v1/triggers", params=params)

    def create_trigger(self, **body) -> dict:
        return self._data("POST", "/api/v1/triggers", json=body)

    def get_trigger(self, ref: str) -> dict:
        return self._data("GET", f"/api/v1/triggers/{ref}")

    def update_trigger(self, ref: str, **body) -> dict:
        return self._data("PUT", f"/api/v1/triggers/{ref}", json=body)

    def delete_trigger(self, ref: str) -> Any:
        return self.request("DELETE", f"/api/v1/triggers/{ref}")

    def enable_webhook(self, ref: str) -> dict:
        """POST /triggers/{ref}/webhooks/enable -> the trigger (with `webhook_key`)."""
        return self._data("POST", f"/api/v1/triggers/{ref}/webhooks/enable")

    def disable_webhook(self, ref: str) -> dict:
        return self._data("POST", f"/api/v1/triggers/{ref}/webhooks/disable")

    def regenerate_webhook(self, ref: str) -> dict:
        return self._data("POST", f"/api/v1/triggers/{ref}/webhooks/regenerate")

    def post_webhook(self, key: str, payload: Any = None, *, body: Any = None,
                     raw: bytes | None = None, headers: dict | None = None) -> dict:
        """POST /api/v1/webhooks/{key} without auth.

        Default body {"payload": payload}; `body` sends a whole custom JSON body; `raw` sends bytes.
        """
        path = f"/api/v1/webhooks/{key}"
        if raw is not None:
            return self._data("POST", path, data=raw, headers=headers, auth=False)
        if body is None:
            body = {"payload": {} if payload is None else payload}
        return self._data("POST", path, json=body, headers=headers, auth=False)

    # ------------------------------------------------------------------ rules
    def list_rules(self, **params) -> dict:
        return self.request("GET", "/api/v1/rules", params=params)

    def create_rule(self, **body) -> dict:
        return self._data("POST", "/api/v1/rules", json=body)

    def get_rule(self, ref: str) -> dict:
        return self._data("GET", f"/api/v1/rules/{ref}")

    def update_rule(self, ref: str, **body) -> dict:
        return self._data("PUT", f"/api/v1/rules/{ref}", json=body)

    def enable_rule(self, ref: str) -> dict:
        return self._data("POST", f"/api/v1/rules/{ref}/enable")

    def disable_rule(self, ref: str) -> dict:
        return self._data("POST", f"/api/v1/rules/{ref}/disable")

    def delete_rule(self, ref: str) -> Any:
        return self.request("DELETE", f"/api/v1/rules/{ref}")

    # ------------------------------------------------------------------ events, enforcements
    def list_events(self, **filters) -> dict:
        return self.request("GET", "/api/v1/events", params=filters)

    def get_event(self, event_id: int) -> dict:
        return self._data("GET", f"/api/v1/events/{event_id}")

    def list_enforcements(self, **filters) -> dict:
        return self.request("GET", "/api/v1/enforcements", params=filters)

    def get_enforcement(self, enforcement_id: int) -> dict:
        return self._data("GET", f"/api/v1/enforcements/{enforcement_id}")

    def list_enforcement_executions(self, enforcement_id: int, **params) -> dict:
        return _record_executions(self.request(
            "GET", f"/api/v1/enforcements/{enforcement_id}/executions", params=params))

    # ------------------------------------------------------------------ executions
    def execute(self, action_ref: str, parameters: dict | None = None, **extra) -> dict:
        """POST /api/v1/executions/execute -> the execution (status `requested`)."""
        body = {"action_ref": action_ref, "parameters": parameters or {}}
        body.update(extra)
        return _record_executions(self._data("POST", "/api/v1/executions/execute", json=body))

    def get_execution(self, execution_id: int, **params) -> dict:
        return _record_executions(
            self._data("GET", f"/api/v1/executions/{execution_id}", params=params))

    def list_executions(self, **filters) -> dict:
        return _record_executions(self.request("GET", "/api/v1/executions", params=filters))

    def cancel_execution(self, execution_id: int) -> dict:
        return _record_executions(self._data("POST", f"/api/v1/executions/{execution_id}/cancel"))

    def execution_stats(self) -> dict:
        return self._data("GET", "/api/v1/executions/stats")

    def read_log_stream(self, execution_id: int, stream: str = "stdout", timeout: float = 10,
                        offset: int | None = None) -> list[tuple[str, str | None, str]]:
        """Read GET /executions/{id}/logs/{stream}/stream until its `done` event.

        Returns [(event_name, event_id, data), ...]. Raises ApiError for a non-2xx answer and
        WaitTimeout when `done` has not arrived within `timeout` seconds.
        """
        from tests.helpers.polling import WaitTimeout
        from tests.helpers.sse import iter_sse

        path = f"/api/v1/executions/{execution_id}/logs/{stream}/stream"
        params = {"offset": offset} if offset is not None else None
        deadline = time.monotonic() + timeout
        events: list[tuple[str, str | None, str]] = []
        resp = self.raw("GET", path, params=params, stream=True, timeout=(5, timeout),
                        headers={"Accept": "text/event-stream"})
        try:
            if not 200 <= resp.status_code < 300:
                raise ApiError("GET", path, resp.status_code, self.parse(resp))
            try:
                for name, ev_id, data in iter_sse(resp):
                    events.append((name or "message", ev_id, data))
                    if name == "done":
                        return events
                    if time.monotonic() > deadline:
                        break
            except requests.exceptions.RequestException:
                pass
        finally:
            resp.close()
        raise WaitTimeout(f"log stream {stream} of execution {execution_id} sent no `done` "
                          f"within {timeout:.1f} s; events so far: {_trim(events)}")

    # ------------------------------------------------------------------ keys
    def list_keys(self, **params) -> dict:
        return self.request("GET", "/api/v1/keys", params=params)

    def create_key(self, **body) -> dict:
        return self._data("POST", "/api/v1/keys", json=body)

    def get_key(self, ref: str) -> dict:
        return self._data("GET", f"/api/v1/keys/{ref}")

    def update_key(self, ref: str, **body) -> dict:
        return self._data("PUT", f"/api/v1/keys/{ref}", json=body)

    def delete_key(self, ref: str) -> Any:
        return self.request("DELETE", f"/api/v1/keys/{ref}")

    # ------------------------------------------------------------------ workflows
    def list_workflows(self, **params) -> dict:
        return self.request("GET", "/api/v1/workflows", params=params)

    def create_workflow(self, **body) -> dict:
        return self._data("POST", "/api/v1/workflows", json=body)

    def get_workflow(self, ref: str) -> dict:
        return self._data("GET", f"/api/v1/workflows/{ref}")

    def update_workflow(self, ref: str, **body) -> dict:
        return self._data("PUT", f"/api/v1/workflows/{ref}", json=body)

    def delete_workflow(self, ref: str) -> Any:
        return self.request("DELETE", f"/api/v1/workflows/{ref}")

    # ------------------------------------------------------------------ inquiries
    def list_inquiries(self, **params) -> dict:
        return self.request("GET", "/api/v1/inquiries", params=params)

    def get_inquiry(self, inquiry_id: int) -> dict:
        return self._data("GET", f"/api/v1/inquiries/{inquiry_id}")

    def create_inquiry(self, **body) -> dict:
        return self._data("POST", "/api/v1/inquiries", json=body)

    def respond_inquiry(self, inquiry_id: int, response: Any) -> dict:
        return self._data("POST", f"/api/v1/inquiries/{inquiry_id}/respond",
                          json={"response": response})

    # ------------------------------------------------------------------ identities, RBAC
    def list_identities(self, **params) -> dict:
        return self.request("GET", "/api/v1/identities", params=params)

    def create_identity(self, **body) -> dict:
        return self._data("POST", "/api/v1/identities", json=body)

    def get_identity(self, identity_id: int) -> dict:
        return self._data("GET", f"/api/v1/identities/{identity_id}")

    def delete_identity(self, identity_id: int) -> Any:
        return self._data("DELETE", f"/api/v1/identities/{identity_id}")

    def list_permission_sets(self, **params) -> list:
        return self.request("GET", "/api/v1/permissions/sets", params=params)

    def assign_permission_set(self, identity_id: int, set_ref: str) -> dict:
        return self._data("POST", "/api/v1/permissions/assignments",
                          json={"identity_id": identity_id, "permission_set_ref": set_ref})

    def delete_assignment(self, assignment_id: int) -> Any:
        return self._data("DELETE", f"/api/v1/permissions/assignments/{assignment_id}")

    # ------------------------------------------------------------------ workers, audit
    def list_workers(self, **params) -> dict:
        return self.request("GET", "/api/v1/workers", params=params)

    def list_audit_events(self, **params) -> dict:
        return self.request("GET", "/api/v1/audit-events", params=params)


def items(page_or_list: Any) -> list:
    """The items of a page ({"items", "pagination"}) or a bare list."""
    if isinstance(page_or_list, dict):
        return list(page_or_list.get("items") or [])
    return list(page_or_list or [])


def dumps(value: Any) -> str:
    return _json.dumps(value, sort_keys=True, default=str)


__all__ = ["ApiError", "AttuneClient", "items"]
