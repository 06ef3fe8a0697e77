"""Enough of tetsu's REST API v1, in memory, to test the CLI against (an httpx handler).

It answers like services/api: ``{"<plural>": [...], "next_marker"}`` pages ordered by
id, ``{"error": {"code", "reason", "request_id"}}`` errors with an ``X-Request-ID``
header, 202 for provisioning and instances. Progress is scripted: each GET of a node or
an instance applies the next step queued for it.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any

import httpx

ADMIN_TOKEN = "admin-secret-token"
MEMBER_TOKEN = "member-secret-token"
PLURALS = ("projects", "users", "flavors", "images", "networks", "nodes", "ports", "instances")

#: How the fake conductor moves a node for each provisioning target: (state, target) steps.
PROVISION_STEPS: dict[str, list[tuple[str, str | None]]] = {
    "manage": [("manageable", None)],
    "provide": [("cleaning", "available"), ("clean wait", "available"), ("available", None)],
    "delete": [("deleting", "available"), ("cleaning", "available"), ("available", None)],
}


class FakeAPI:
    def __init__(self, page_size: int = 1000) -> None:
        self.page_size = page_size  # the server's cap on ?limit=, to test pagination
        self.items: dict[str, dict[str, dict[str, Any]]] = {plural: {} for plural in PLURALS}
        self.roles = {ADMIN_TOKEN: "admin", MEMBER_TOKEN: "member"}
        self.passwords: dict[str, str] = {}
        self.requests: list[httpx.Request] = []
        self.uploads: dict[str, bytes] = {}
        self.steps: dict[str, deque[dict[str, Any]]] = {}  # id -> changes, one per GET
        self.fail_clean: str | None = None  # provide/undeploy end in "clean failed"
        self.refuse_addresses: set[str] = set()  # port creations answered 409 duplicate
        # What the CLI's transport calls: tests wrap it to add failures or scripts.
        self.handler: Callable[[httpx.Request], httpx.Response] = self.handle

    # What the tests set up and look at

    def add(self, plural: str, **fields: Any) -> dict[str, Any]:
        item = {"id": fields.pop("id", None) or str(uuid.uuid4()), **fields}
        self.items[plural][item["id"]] = item
        return item

    def then(self, item_id: str, *changes: dict[str, Any]) -> None:
        """Apply ``changes`` to the item, one per later GET of it."""
        self.steps.setdefault(item_id, deque()).extend(changes)

    def calls(self, method: str, prefix: str = "") -> list[httpx.Request]:
        return [r for r in self.requests if r.method == method and r.url.path.startswith(prefix)]

    # The handler

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        request_id = request.headers.get("X-Request-ID") or f"req-{uuid.uuid4()}"
        try:
            status, body = self._route(request)
        except _Refused as refused:
            status, body = (
                refused.status,
                {
                    "error": {
                        "code": refused.code,
                        "reason": refused.reason,
                        "request_id": request_id,
                    }
                },
            )
        headers = {"X-Request-ID": request_id}
        if body is None:
            return httpx.Response(status, headers=headers)
        return httpx.Response(status, json=body, headers=headers)

    def _route(self, request: httpx.Request) -> tuple[int, Any]:
        parts = request.url.path.strip("/").split("/")
        if parts[:2] == ["v1", "tokens"] and request.method == "POST":
            return self._login(json.loads(request.content))
        role = self._role(request)
        if len(parts) < 2 or parts[0] != "v1" or parts[1] not in PLURALS:
            raise _Refused(404, "not_found", f"no route {request.url.path}")
        plural = parts[1]
        if plural in {"projects", "users", "nodes", "ports"} and role != "admin":
            raise _Refused(403, "forbidden", "admins only")
        if len(parts) == 2:
            if request.method == "GET":
                return 200, self._list(plural, request.url.params)
            if request.method == "POST":
                return self._create(plural, json.loads(request.content))
        item = self._get(plural, parts[2])
        if len(parts) == 3:
            if request.method == "GET":
                self._advance(item)
                return 200, item
            if request.method == "PATCH":
                item.update(json.loads(request.content))
                return 200, item
            if request.method == "DELETE":
                return self._delete(plural, item)
        if plural == "nodes" and parts[3:] == ["states", "provision"]:
            return self._provision(item, json.loads(request.content)["target"])
        if plural == "nodes" and parts[3:] == ["states", "power"]:
            item["target_power_state"] = json.loads(request.content)["target"]
            return 202, item
        if plural == "images" and parts[3:] == ["file"] and request.method == "PUT":
            data = request.read()
            self.uploads[item["id"]] = data
            item.update(status="active", size=len(data), sha256=hashlib.sha256(data).hexdigest())
            return 200, item
        raise _Refused(404, "not_found", f"no route {request.method} {request.url.path}")

    def _role(self, request: httpx.Request) -> str:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme != "Bearer" or token not in self.roles:
            raise _Refused(401, "unauthorized", "a valid bearer token is needed")
        return self.roles[token]

    def _login(self, body: dict[str, Any]) -> tuple[int, Any]:
        if self.passwords.get(body["name"]) != body["password"]:
            raise _Refused(401, "unauthorized", "wrong user name or password")
        token = f"token-of-{body['name']}"
        self.roles[token] = "member"
        answer = {
            "token": token,
            "expires_at": "2030-01-01T00:00:00Z",
            "user_id": "u1",
            "project_id": "p1",
            "role": "member",
        }
        return 201, answer

    def _list(self, plural: str, params: httpx.QueryParams) -> dict[str, Any]:
        limit = min(int(params.get("limit", 100)), self.page_size)
        marker = params.get("marker")
        filters = {k: v for k, v in params.items() if k not in {"limit", "marker"}}
        rows = [
            item
            for _, item in sorted(self.items[plural].items())
            if (marker is None or item["id"] > marker)
            and all(_as_query(item.get(key)) == value for key, value in filters.items())
        ]
        if plural == "instances" and "status" not in filters:
            rows = [row for row in rows if row.get("status") != "DELETED"]
        page = rows[:limit]
        next_marker = page[-1]["id"] if len(rows) > limit else None
        return {plural: page, "next_marker": next_marker}

    def _get(self, plural: str, ref: str) -> dict[str, Any]:
        found = self.items[plural].get(ref)
        if found is None and plural == "nodes":
            found = next((n for n in self.items["nodes"].values() if n["name"] == ref), None)
        if found is None:
            raise _Refused(404, "not_found", f"{plural[:-1]} {ref!r} not found")
        return found

    def _create(self, plural: str, body: dict[str, Any]) -> tuple[int, Any]:
        if plural == "ports" and body["address"] in self.refuse_addresses:
            raise _Refused(409, "duplicate", f"a port with address {body['address']} exists")
        if plural == "nodes":
            body = {
                **body,
                "provision_state": "enroll",
                "target_provision_state": None,
                "power_state": "unknown",
                "maintenance": False,
                "last_error": None,
                "instance_id": None,
            }
        if plural == "instances":
            body = {
                **body,
                "status": "BUILD",
                "task_state": "scheduling",
                "node_id": None,
                "fault": None,
                "network_ids": body.get("networks", []),
            }
            body.pop("networks", None)
            return 202, self.add(plural, **body)
        if plural == "images":
            body = {**body, "status": "active" if body.get("source_url") else "queued"}
        return 201, self.add(plural, **body)

    def _delete(self, plural: str, item: dict[str, Any]) -> tuple[int, Any]:
        if plural == "instances":
            if item.get("node_id"):
                item.update(status="DELETING", task_state="deleting")
            else:
                item.update(status="DELETED", task_state=None)
            return 202, item
        del self.items[plural][item["id"]]
        return 204, None

    def _provision(self, node: dict[str, Any], target: str) -> tuple[int, Any]:
        steps = [
            {"provision_state": s, "target_provision_state": t} for s, t in PROVISION_STEPS[target]
        ]
        if self.fail_clean and target in {"provide", "delete"}:
            steps[-1] = {
                "provision_state": "clean failed",
                "target_provision_state": None,
                "last_error": self.fail_clean,
            }
        self.then(node["id"], *steps)
        return 202, node

    def _advance(self, item: dict[str, Any]) -> None:
        pending = self.steps.get(item["id"])
        if pending:
            item.update(pending.popleft())


class _Refused(Exception):
    def __init__(self, status: int, code: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.code = code
        self.reason = reason


def _as_query(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)
