"""The conductor's RPC endpoint: each method takes the node's lock and hands the work to
the workflow modules (deployments, cleaning, power). Methods match ``rpcapi.ConductorAPI``.

Ownership on the hash ring only routes messages: any conductor serves any node, because
the node's lock, not the ring, keeps two conductors from working on it at once.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from libs import rpc
from libs.db import Database, is_unavailable
from libs.errors import BadRequest, InvalidStateTransition, NodeLocked, TetsuError
from libs.notify import Notifier, bus_for
from libs.rpc import RequestContext, Transport, current_context
from services.netctl.rpcapi import NetworkAPI
from services.scheduler.rpcapi import SchedulerAPI

from . import callback_tokens, power
from .cleaning import Cleaning
from .deployments import Deployments
from .drivers import DriverEnv, DriverFactory, InterfaceKind
from .evacuation import Evacuations
from .periodic import PeriodicTasks
from .settings import ConductorSettings
from .states import Event, ProvisionState
from .task_manager import Task, TaskManager

LOG = logging.getLogger(__name__)

#: How long a cast from another service waits for a busy node (a power sync, a deploy
#: step) before giving up: casts have no caller to answer "try again".
SERVICE_LOCK_WAIT = 30.0

#: How long the in-process ramdisk keeps calling back while its node is locked or the
#: database is unavailable (the real one: 20 attempts 3 s apart, docs/baremetal.md).
RAMDISK_RETRY_FOR = 60.0

#: Seconds between its calls while the database is unavailable.
RAMDISK_RETRY_INTERVAL = 1.0


class ConductorManager:
    RPC_API_VERSION = "1.1"

    def __init__(self, settings: ConductorSettings, db: Database, transport: Transport) -> None:
        self.settings = settings
        self.db = db
        self.drivers = DriverFactory(settings, DriverEnv(settings, self._ramdisk_reported, db))
        self.notifier = Notifier(bus_for(transport), service="conductor")
        self.tasks = TaskManager(
            db, settings.hostname, self.drivers, workers=settings.workers, notifier=self.notifier
        )
        network = NetworkAPI(transport)
        scheduler = SchedulerAPI(transport)
        self.cleaning = Cleaning(db, network, self.notifier)
        self.deployments = Deployments(db, network, scheduler, self.cleaning, self.notifier)
        self.evacuations = Evacuations(db, network, scheduler, self.notifier)
        self.periodic = PeriodicTasks(
            settings, db, self.tasks, self.deployments, self.cleaning, self.evacuations
        )
        self._stopped = False
        self._actions = {
            Event.MANAGE.value: power.request_manage,
            Event.PROVIDE.value: self.cleaning.provide,
            Event.DELETE.value: self.cleaning.delete,
        }

    @rpc.expose
    def deploy_node(self, ctxt: RequestContext, *, node_id: str, instance_id: str) -> None:
        try:
            with self.tasks.acquire(ctxt, node_id, "deploy", wait=SERVICE_LOCK_WAIT) as task:
                self.deployments.start(task, instance_id)
        except NodeLocked as exc:
            self.deployments.give_up_locked(ctxt, node_id, instance_id, exc.reason)

    @rpc.expose
    def evacuate_node(self, ctxt: RequestContext, *, node_id: str, instance_id: str) -> None:
        with self.tasks.acquire(ctxt, node_id, "evacuate", wait=SERVICE_LOCK_WAIT) as task:
            self.evacuations.evacuate(task, instance_id, "asked by an admin")

    @rpc.expose
    def rebuild_node(self, ctxt: RequestContext, *, node_id: str, instance_id: str) -> None:
        with self.tasks.acquire(ctxt, node_id, "rebuild", wait=SERVICE_LOCK_WAIT) as task:
            self.deployments.rebuild(task, instance_id)

    @rpc.expose
    def tear_down_node(self, ctxt: RequestContext, *, node_id: str) -> None:
        with self.tasks.acquire(ctxt, node_id, "tear down", wait=SERVICE_LOCK_WAIT) as task:
            self.cleaning.tear_down_instance(task)

    @rpc.expose
    def ramdisk_callback(
        self, ctxt: RequestContext, *, node_id: str, success: bool, message: str | None = None
    ) -> None:
        """The ramdisk finished its deploy or cleaning (the caller checked its token)."""
        with self.tasks.acquire(ctxt, node_id, "ramdisk callback") as task:
            self._resume(task, success, message)

    def _resume(self, task: Task, success: bool, message: str | None) -> None:
        state = task.node.provision_state
        if state == ProvisionState.DEPLOYWAIT:
            self.deployments.resume(task, success, message)
        elif state == ProvisionState.CLEANWAIT:
            self.cleaning.resume(task, success, message)
        else:
            raise InvalidStateTransition(
                f"node {task.node.id} is not waiting for a ramdisk callback "
                f"(provision state {state!r})"
            )

    @rpc.expose
    def do_provisioning_action(self, ctxt: RequestContext, *, node_id: str, action: str) -> None:
        start = self._actions.get(action)
        if start is None:
            raise BadRequest(
                f"unknown provisioning action {action!r} (allowed: {', '.join(self._actions)})"
            )
        with self.tasks.acquire(ctxt, node_id, action) as task:
            start(task)

    @rpc.expose
    def set_power_state(self, ctxt: RequestContext, *, node_id: str, state: str) -> None:
        with self.tasks.acquire(ctxt, node_id, f"set power {state}") as task:
            power.request_power(task, state)

    @rpc.expose
    def validate_node(self, ctxt: RequestContext, *, node_id: str) -> dict[str, Any]:
        """Each interface's validate(): {"power": {"result": bool, "reason": str | None}}."""
        with self.tasks.acquire(ctxt, node_id, "validate", shared=True) as task:
            return {kind.value: _validate(task, kind) for kind in InterfaceKind}

    def stop(self, timeout: float) -> bool:
        """Take no more work; let running work finish for up to ``timeout`` seconds."""
        self._stopped = True
        return self.tasks.shutdown(timeout)

    def _ramdisk_reported(
        self, node_id: str, token: str, success: bool, message: str | None
    ) -> None:
        """The in-process ramdisk's report: checked like the API checks a callback, then
        the same :meth:`ramdisk_callback` the API calls. It runs on the ramdisk's own
        thread, so every failure is logged here (the callback timeout fails the node)."""
        if self._stopped:
            return
        ctxt = RequestContext.admin()
        reset = current_context.set(ctxt)
        deadline = time.monotonic() + RAMDISK_RETRY_FOR
        try:
            while True:
                try:
                    self._report_ramdisk(ctxt, node_id, token, success, message)
                    return
                except NodeLocked:
                    # Like a real ramdisk answered 409: the node is busy, call again.
                    if self._stopped or time.monotonic() >= deadline:
                        raise
                except Exception as exc:
                    # Like a real ramdisk answered 503: the database is down, call again.
                    if not is_unavailable(exc) or self._stopped or time.monotonic() >= deadline:
                        raise
                    self.db.outage.failed(exc, f"taking node {node_id}'s ramdisk report")
                    time.sleep(RAMDISK_RETRY_INTERVAL)
        except TetsuError as exc:
            LOG.warning("node %s: ramdisk callback refused: %s", node_id, exc.reason)
        except Exception:
            LOG.exception("node %s: ramdisk callback failed", node_id)
        finally:
            current_context.reset(reset)

    def _report_ramdisk(
        self, ctxt: RequestContext, node_id: str, token: str, success: bool, message: str | None
    ) -> None:
        # The token is checked on the node the task holds: no read of its own first.
        with self.tasks.acquire(ctxt, node_id, "ramdisk callback") as task:
            if not callback_tokens.matches(task.node.driver_internal_info, token):
                LOG.warning("node %s: a ramdisk called back with a token no longer valid", node_id)
                return
            self._resume(task, success, message)


def _validate(task: Task, kind: InterfaceKind) -> dict[str, Any]:
    try:
        getattr(task.driver, kind.value).validate(task)
    except BadRequest as exc:
        return {"result": False, "reason": exc.reason}
    return {"result": True, "reason": None}
