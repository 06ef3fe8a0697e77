"""Fakes and helpers for the API's unit tests: recording scheduler and conductor
endpoints, users with tokens, and checks of the error body."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from libs import rpc
from libs.db import Database, Node, Project, Role, User
from libs.errors import TetsuError
from services.api.auth import hash_password, issue_token

ADMIN_TOKEN = "admin-bootstrap-token"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
CONDUCTOR_HOST = "cond-1"


@dataclass
class Call:
    method: str
    ctxt: rpc.RequestContext
    args: dict[str, Any]


@dataclass
class Recorder:
    """What a fake endpoint was asked, so tests can wait for a cast to arrive."""

    calls: list[Call] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)

    def add(self, method: str, ctxt: rpc.RequestContext, **args: Any) -> None:
        with self.cond:
            self.calls.append(Call(method, ctxt, args))
            self.cond.notify_all()

    def wait_for(self, method: str, timeout: float = 5.0, **args: Any) -> Call:
        """The first call of ``method`` with these arguments, waiting up to ``timeout``."""

        def find() -> Call | None:
            for call in self.calls:
                if call.method == method and all(call.args.get(k) == v for k, v in args.items()):
                    return call
            return None

        with self.cond:
            assert self.cond.wait_for(lambda: find() is not None, timeout), self.calls
            found = find()
            assert found is not None
            return found

    def methods(self) -> list[str]:
        with self.cond:
            return [c.method for c in self.calls]


class FakeScheduler:
    RPC_API_VERSION = "1.0"

    def __init__(self) -> None:
        self.recorder = Recorder()

    @rpc.expose
    def schedule_instance(self, ctxt: rpc.RequestContext, instance_id: str) -> None:
        self.recorder.add("schedule_instance", ctxt, instance_id=instance_id)

    @rpc.expose
    def reschedule_instance(
        self, ctxt: rpc.RequestContext, instance_id: str, failed_node_id: str, reason: str
    ) -> None:
        self.recorder.add("reschedule_instance", ctxt, instance_id=instance_id)


class FakeConductor:
    """Records every request; ``error`` makes the calls raise it; ``provision_states``
    maps an action to the state the node is put in (as a real conductor would)."""

    RPC_API_VERSION = "1.1"

    def __init__(self, db: Database) -> None:
        self.db = db
        self.recorder = Recorder()
        self.error: TetsuError | None = None
        self.provision_states = {"manage": "manageable", "provide": "available"}

    def _maybe_fail(self) -> None:
        if self.error is not None:
            raise self.error

    @rpc.expose
    def deploy_node(self, ctxt: rpc.RequestContext, node_id: str, instance_id: str) -> None:
        self.recorder.add("deploy_node", ctxt, node_id=node_id, instance_id=instance_id)

    @rpc.expose
    def tear_down_node(self, ctxt: rpc.RequestContext, node_id: str) -> None:
        self.recorder.add("tear_down_node", ctxt, node_id=node_id)

    @rpc.expose
    def rebuild_node(self, ctxt: rpc.RequestContext, node_id: str, instance_id: str) -> None:
        self.recorder.add("rebuild_node", ctxt, node_id=node_id, instance_id=instance_id)

    @rpc.expose
    def evacuate_node(self, ctxt: rpc.RequestContext, node_id: str, instance_id: str) -> None:
        self.recorder.add("evacuate_node", ctxt, node_id=node_id, instance_id=instance_id)

    @rpc.expose
    def ramdisk_callback(
        self, ctxt: rpc.RequestContext, node_id: str, success: bool, message: str | None = None
    ) -> None:
        self.recorder.add(
            "ramdisk_callback", ctxt, node_id=node_id, success=success, message=message
        )
        self._maybe_fail()

    @rpc.expose
    def do_provisioning_action(self, ctxt: rpc.RequestContext, node_id: str, action: str) -> None:
        self.recorder.add("do_provisioning_action", ctxt, node_id=node_id, action=action)
        self._maybe_fail()
        if action in self.provision_states:
            with self.db.session() as session:
                node = session.get(Node, node_id)
                assert node is not None
                node.provision_state = self.provision_states[action]
                session.add(node)

    @rpc.expose
    def set_power_state(self, ctxt: rpc.RequestContext, node_id: str, state: str) -> None:
        self.recorder.add("set_power_state", ctxt, node_id=node_id, state=state)
        self._maybe_fail()

    @rpc.expose
    def validate_node(self, ctxt: rpc.RequestContext, node_id: str) -> dict[str, Any]:
        self.recorder.add("validate_node", ctxt, node_id=node_id)
        self._maybe_fail()
        return {
            "power": {"result": True, "reason": None},
            "boot": {"result": False, "reason": "no deploy kernel"},
        }


@dataclass
class Backend:
    scheduler: FakeScheduler
    conductor: FakeConductor


@dataclass
class Member:
    """A user with a token, in a project of their own."""

    name: str
    user_id: str
    project_id: str
    headers: dict[str, str]


#: Hashed once: scrypt is slow on purpose, and most tests need a user but not a login.
PASSWORD = "correct horse battery"
_PASSWORD_HASH = hash_password(PASSWORD)


def make_member(db: Database, name: str, role: Role = Role.MEMBER) -> Member:
    """A project named ``<name>-project`` with a user ``name`` (password :data:`PASSWORD`)
    and a token, made in the database (``test_auth`` covers doing it through the API)."""
    with db.session() as session:
        project = Project(name=f"{name}-project")
        user = User(name=name, project_id=project.id, role=role, password_hash=_PASSWORD_HASH)
        session.add(project)
        session.add(user)
        session.flush()
        secret, _ = issue_token(session, user, ttl_seconds=3600)
    return Member(
        name=name,
        user_id=user.id,
        project_id=project.id,
        headers={"Authorization": f"Bearer {secret}"},
    )


@dataclass
class Catalog:
    flavor: dict[str, Any]
    image: dict[str, Any]


def error_of(response: Any) -> dict[str, str]:
    """The ``error`` object of an error answer (and a check that it has every part)."""
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "reason", "request_id"}, body
    assert body["error"]["request_id"] == response.headers["X-Request-ID"]
    error: dict[str, str] = body["error"]
    return error


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)
