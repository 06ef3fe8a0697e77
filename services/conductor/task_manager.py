"""Node locks and tasks: how conductor code gets hold of a node to work on it.

``TaskManager.acquire(ctxt, node_id, purpose)`` takes the node's exclusive lock (the
``Node.reservation`` column, set only where it is NULL) and hands back a :class:`Task`:
the node row, its ports, its hardware interfaces and the request context. The lock is
released when the ``with`` block ends, or, when the block handed work to a background
worker with :meth:`Task.spawn_after`, when that work ends, so an RPC handler can answer
before a long deploy step is over::

    with tasks.acquire(ctxt, node_id, "deploy") as task:
        task.process_event(Event.DEPLOY)
        task.spawn_after(deployments.deploy, instance_id)
"""

from __future__ import annotations

import contextvars
import copy
import functools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from sqlalchemy import Executable, bindparam, delete
from sqlalchemy import update as core_update
from sqlmodel import Session, col, select, update

from libs import metrics
from libs.db import Database, Node, Port, PowerState, as_utc, is_unavailable, utcnow
from libs.errors import NodeLocked, NotFound
from libs.notify import EventMessage, Notifier, Phase, event_params, node_transition, with_events
from libs.rpc import RequestContext

from .drivers import (
    BootInterface,
    DeployInterface,
    DriverFactory,
    InterfaceKind,
    ManagementInterface,
    PowerInterface,
)
from .states import TRANSIENT_STATES, Event, ProvisionState, next_state, target_state

LOG = logging.getLogger(__name__)

#: driver_internal_info key naming the conductor that runs a node's transient state, so a
#: conductor taking the node over knows whether that work can still be going on.
CONDUCTOR_KEY = "conductor"

#: driver_internal_info keys holding when the node's deploy and cleaning began (ISO
#: 8601), for their duration metrics, whichever conductor finishes them.
DEPLOY_STARTED_KEY = "deploy_started_at"
CLEAN_STARTED_KEY = "clean_started_at"

#: The node columns a task writes. Others belong to the API (driver_info, maintenance)
#: or are written elsewhere without the lock (instance_id by the scheduler's claim), so a
#: save writes only the columns the task changed.
SAVED_FIELDS = (
    "provision_state",
    "target_provision_state",
    "provision_updated_at",
    "power_state",
    "target_power_state",
    "driver_internal_info",
    "last_error",
    "instance_id",
    # Only an evacuation's fencing sets these here; the API's maintenance toggle otherwise.
    "maintenance",
    "maintenance_reason",
)

LOCK_RETRY_INTERVAL = 0.05

Work = Callable[..., None]

_NODE = Node.metadata.tables["node"]
_PORT = Port.metadata.tables["port"]

# The statements of every task, built once (building one cost as much CPU as running
# it) and run on a Core connection: the ORM's bookkeeping around a statement cost more
# CPU than the statement itself.
#: Take the lock and read the node in one round trip.
_LOCK = (
    core_update(_NODE)
    .where(_NODE.c.id == bindparam("b_id"), _NODE.c.reservation.is_(None))
    .values(reservation=bindparam("b_holder"))
    .returning(*_NODE.c)
)
_HOLDER = select(_NODE.c.reservation).where(_NODE.c.id == bindparam("b_id"))
_PORTS = (
    select(*_PORT.c)
    .where(_PORT.c.node_id == bindparam("b_id"))
    .order_by(_PORT.c.created_at, _PORT.c.address)
)
#: Let go of the lock if this conductor holds it.
_UNLOCK = (
    core_update(_NODE)
    .where(_NODE.c.id == bindparam("b_id"), _NODE.c.reservation == bindparam("b_holder"))
    .values(reservation=None)
)


@functools.lru_cache(maxsize=256)
def _save_statement(columns: tuple[str, ...], events: int) -> Executable:
    """A save: the UPDATE of ``columns`` (parameters ``s_<column>``) and, with ``events``
    (PostgreSQL only), the INSERT of that many events (parameters ``e<i>_<column>``) for
    the row it updated, in one statement; its row count is the events', or 1 without
    any. Built once per kind of save."""
    saved = core_update(_NODE).where(
        _NODE.c.id == bindparam("b_id"), _NODE.c.reservation == bindparam("b_holder")
    )
    saved = saved.values(
        {name: bindparam(f"s_{name}", type_=_NODE.c[name].type) for name in columns}
    )
    return with_events(saved, _NODE.c.id, events) if events else saved


class NodeDriver:
    """A node's hardware interfaces, looked up by the names on the node when first used, so
    a node naming an unknown interface fails at that step with a BadRequest reason."""

    def __init__(self, factory: DriverFactory, node: Node) -> None:
        self._factory = factory
        self._node = node

    @property
    def power(self) -> PowerInterface:
        return self._factory.get(InterfaceKind.POWER, self._node.power_interface)

    @property
    def boot(self) -> BootInterface:
        return self._factory.get(InterfaceKind.BOOT, self._node.boot_interface)

    @property
    def deploy(self) -> DeployInterface:
        return self._factory.get(InterfaceKind.DEPLOY, self._node.deploy_interface)

    @property
    def management(self) -> ManagementInterface:
        return self._factory.get(InterfaceKind.MANAGEMENT, self._node.management_interface)


class Task:
    """One piece of work on one node, holding its lock unless ``shared``."""

    def __init__(
        self,
        manager: TaskManager,
        context: RequestContext,
        node: Node,
        ports: list[Port],
        purpose: str,
        *,
        shared: bool,
    ) -> None:
        self.manager = manager
        self.context = context
        self.node = node
        self.ports = ports
        self.purpose = purpose
        self.shared = shared
        self.driver = NodeDriver(manager.drivers, node)
        #: The plain callback token of the ramdisk run being started (memory only: the
        #: database keeps its hash), for the boot/deploy interfaces to hand to the ramdisk.
        self.callback_token: str | None = None
        self._saved = _snapshot(node)
        self._spawn: tuple[Work, tuple[Any, ...]] | None = None
        #: Failures to publish with the next save: (action, reason).
        self._errors: list[tuple[str, str]] = []
        #: The node was deleted (:meth:`retire`).
        self.retired = False

    @property
    def hostname(self) -> str:
        return self.manager.hostname

    def process_event(
        self, event: Event | str, *, also: Callable[[Session], None] | None = None
    ) -> ProvisionState:
        """Move the node along the state machine (InvalidStateTransition if not allowed)
        and save it (with ``also``'s change, see :meth:`save`)."""
        self._check_exclusive()
        old = self.node.provision_state
        new = next_state(old, event)
        now = utcnow()
        self.node.provision_state = new.value
        target = target_state(new)
        self.node.target_provision_state = target.value if target is not None else None
        self.node.provision_updated_at = now
        if new in TRANSIENT_STATES:
            self.node.driver_internal_info[CONDUCTOR_KEY] = self.hostname
        else:
            self.node.driver_internal_info.pop(CONDUCTOR_KEY, None)
        finished = self._time_work(old, new, now)
        self.save(also=also)
        if finished is not None:
            histogram, outcome, seconds = finished
            histogram.labels(outcome).observe(seconds)
        LOG.info("node %s: %s -> %s (%s)", self.node.id, old, new.value, event)
        return new

    def _time_work(
        self, old: str, new: ProvisionState, now: datetime
    ) -> tuple[Any, str, float] | None:
        """Note when a deploy or a cleaning begins; when one ends, its histogram, outcome
        and duration (observed once the save succeeded)."""
        info = self.node.driver_internal_info
        if old == ProvisionState.AVAILABLE and new == ProvisionState.DEPLOYING:
            info[DEPLOY_STARTED_KEY] = now.isoformat()
        elif old in (ProvisionState.DELETING, ProvisionState.MANAGEABLE) and (
            new == ProvisionState.CLEANING
        ):
            info[CLEAN_STARTED_KEY] = now.isoformat()
        ends = {
            ProvisionState.ACTIVE: (DEPLOY_STARTED_KEY, metrics.DEPLOY_SECONDS, "success"),
            ProvisionState.DEPLOYFAIL: (DEPLOY_STARTED_KEY, metrics.DEPLOY_SECONDS, "failure"),
            ProvisionState.AVAILABLE: (CLEAN_STARTED_KEY, metrics.CLEAN_SECONDS, "success"),
            ProvisionState.CLEANFAIL: (CLEAN_STARTED_KEY, metrics.CLEAN_SECONDS, "failure"),
        }
        if new not in ends:
            return None
        key, histogram, outcome = ends[new]
        began = info.pop(key, None)
        if not isinstance(began, str):
            return None
        try:
            seconds = (now - as_utc(datetime.fromisoformat(began))).total_seconds()
        except ValueError:
            return None
        return histogram, outcome, max(0.0, seconds)

    def report_error(self, action: str, reason: str) -> None:
        """Publish a failure of ``action`` (e.g. ``power``: ``tetsu.node.power.error``)
        with the next :meth:`save`; ``reason`` must be scrubbed of credentials already."""
        self._errors.append((action, reason))

    def retire(self) -> None:
        """Delete the node and its ports (a VM node made on demand whose cleaning is
        done: its room on the hypervisor is free again). Later saves do nothing.
        NodeLocked if this task lost the lock."""
        self._check_exclusive()
        self.save()
        with self.manager.db.session() as session:
            session.exec(delete(Port).where(col(Port.node_id) == self.node.id))
            result = session.exec(
                delete(Node).where(
                    col(Node.id) == self.node.id, col(Node.reservation) == self.hostname
                )
            )
            if result.rowcount != 1:
                session.rollback()
                raise NodeLocked(
                    f"node {self.node.id} is no longer locked by conductor {self.hostname}"
                )
            self.manager.notifier.node(session, self.node, "delete", Phase.END)
        self.retired = True
        LOG.info("node %s: deleted (its VM's room on the hypervisor is free)", self.node.id)

    def save(self, *, also: Callable[[Session], None] | None = None) -> None:
        """Write the node's changed columns with the events of the change, and
        ``also(session)``'s change in the same transaction (the instance a deploy or a
        tear-down ends with). NodeLocked if this task lost the lock."""
        self._check_exclusive()
        if self.retired:
            return
        changes = {
            name: copy.deepcopy(getattr(self.node, name))
            for name in SAVED_FIELDS
            if getattr(self.node, name) != self._saved[name]
        }
        if not changes and not self._errors and also is None:
            return
        now = utcnow()
        events = self._events()
        if changes:
            changes["updated_at"] = now
        if changes and also is None and self.manager.db.engine.dialect.name == "postgresql":
            self._save_in_one_statement(changes, events)
        else:
            with self.manager.db.session() as session:
                if changes:
                    result = session.connection().execute(
                        _save_statement(tuple(changes), 0), self._save_params(changes, [])
                    )
                    if result.rowcount != 1:
                        raise self._lock_lost()
                for message in events:
                    self.manager.notifier.record(session, message)
                if also is not None:
                    also(session)
        if changes:
            self.node.updated_at = now
        self._saved = _snapshot(self.node)
        self._errors = []

    def _save_in_one_statement(self, changes: dict[str, Any], events: list[EventMessage]) -> None:
        """The save as one statement committed on its own (PostgreSQL): the node's UPDATE
        in a WITH clause and the events inserted for the row it updated, so a lost lock
        writes neither. One round trip where a transaction took four (BEGIN, UPDATE,
        INSERT, COMMIT)."""
        statement = _save_statement(tuple(changes), len(events))
        with self.manager.db.autocommit() as connection:
            result = connection.execute(statement, self._save_params(changes, events))
        if result.rowcount != max(len(events), 1):
            raise self._lock_lost()
        self.manager.notifier.publish(events)

    def _save_params(self, changes: dict[str, Any], events: list[EventMessage]) -> dict[str, Any]:
        """The parameters of :func:`_save_statement` for ``changes`` and ``events``."""
        params: dict[str, Any] = {"b_id": self.node.id, "b_holder": self.hostname}
        params.update((f"s_{name}", value) for name, value in changes.items())
        params.update(event_params(events))
        return params

    def _lock_lost(self) -> NodeLocked:
        return NodeLocked(f"node {self.node.id} is no longer locked by conductor {self.hostname}")

    def _events(self) -> list[EventMessage]:
        """The events of what this save changes: the provision state's move, the power
        state's, and the failures reported since the last save."""
        notifier = self.manager.notifier
        node, before = self.node, self._saved
        # A failure lets go of the instance in the same save: the event is still its.
        instance_id = before["instance_id"]
        events = []
        if node.provision_state != before["provision_state"]:
            action, phase = node_transition(before["provision_state"], node.provision_state)
            events.append(
                notifier.node_message(
                    node,
                    action,
                    phase,
                    instance_id=instance_id,
                    previous_provision_state=before["provision_state"],
                )
            )
        power_failed = any(action == "power" for action, _ in self._errors)
        if node.power_state != before["power_state"]:
            phase = Phase.ERROR if node.power_state == PowerState.ERROR else Phase.END
            events.append(
                notifier.node_message(
                    node,
                    "power",
                    phase,
                    instance_id=instance_id,
                    previous_power_state=_value(before["power_state"]),
                )
            )
        elif node.target_power_state != before["target_power_state"]:
            if node.target_power_state is not None:
                events.append(
                    notifier.node_message(node, "power", Phase.START, instance_id=instance_id)
                )
            elif not power_failed:  # reached: the node was in that state already
                events.append(
                    notifier.node_message(node, "power", Phase.END, instance_id=instance_id)
                )
        for action, reason in self._errors:
            events.append(
                notifier.node_message(
                    node, action, Phase.ERROR, instance_id=instance_id, reason=reason
                )
            )
        return events

    def spawn_after(self, work: Work, *args: Any) -> None:
        """Run ``work(task, *args)`` on a worker thread once the ``with`` block ends
        without an exception; the lock goes with it and is released when it returns."""
        self._check_exclusive()
        if self._spawn is not None:
            raise RuntimeError("a task spawns at most one piece of work")
        self._spawn = (work, args)

    def _check_exclusive(self) -> None:
        if self.shared:
            raise RuntimeError(f"a shared task ({self.purpose}) cannot change node {self.node.id}")


def _read(session: Session, node_id: str) -> tuple[Node, list[Port]]:
    """The node and its ports (NotFound if there is no such node)."""
    node = session.get(Node, node_id)
    if node is None:
        raise NotFound(f"node {node_id} not found")
    ports = list(
        session.exec(
            select(Port)
            .where(col(Port.node_id) == node_id)
            .order_by(col(Port.created_at), col(Port.address))
        ).all()
    )
    return node, ports


def _value(value: Any) -> Any:
    return getattr(value, "value", value)


def _snapshot(node: Node) -> dict[str, Any]:
    return {name: copy.deepcopy(getattr(node, name)) for name in SAVED_FIELDS}


class TaskManager:
    """Locks nodes for one conductor (``hostname``) and runs their background work on a
    pool of ``workers`` threads."""

    def __init__(
        self,
        db: Database,
        hostname: str,
        drivers: DriverFactory,
        *,
        workers: int,
        lock_wait: float = 3.0,
        notifier: Notifier | None = None,
    ) -> None:
        self.db = db
        #: Writes the events of every node change (and publishes them, given a bus).
        self.notifier = notifier or Notifier(service="conductor")
        self.hostname = hostname
        self.drivers = drivers
        self.lock_wait = lock_wait
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="node-task")
        self._pending: set[Future[None]] = set()
        self._pending_lock = threading.Lock()
        # Locks this conductor could not release (the database was down): released by
        # release_unreleased() later, or before this conductor takes the node again.
        self._unreleased: set[str] = set()
        self._unreleased_lock = threading.Lock()
        # Counts this conductor's releases of each node: a reservation that finds the node
        # locked by this same conductor waits for that node's next release instead of
        # sleeping blind (a ramdisk's report, or a request, racing the task that is
        # finishing with it). Per node: with many nodes at work, a wake-up at every other
        # node's release made a futile attempt each.
        self._releases: dict[str, int] = {}
        self._released = threading.Condition()
        # The nodes this conductor holds the lock of: a reservation of one of them waits
        # for its release without asking the database first (the ramdisk's report racing
        # the task that started the ramdisk: an UPDATE and a SELECT spared).
        self._held: set[str] = set()

    @contextmanager
    def acquire(
        self,
        ctxt: RequestContext,
        node_id: str,
        purpose: str,
        *,
        shared: bool = False,
        wait: float | None = None,
    ) -> Iterator[Task]:
        """A task on ``node_id``. Exclusive unless ``shared``: waits up to ``wait`` seconds
        (default ``lock_wait``) for another holder to let go, then raises NodeLocked.
        NotFound if there is no such node."""
        if shared:
            task = self._load(ctxt, node_id, purpose, shared=True)
        else:
            node, ports = self._reserve(node_id, purpose, self.lock_wait if wait is None else wait)
            task = self._task(ctxt, node, ports, purpose, shared=False)
        try:
            yield task
        except BaseException:
            if not shared:
                self._release(node_id)
            raise
        if task._spawn is None:
            if not shared:
                self._release(node_id)
            return
        try:
            self._submit(task, *task._spawn)
        except BaseException:
            self._release(node_id)
            raise

    def shutdown(self, timeout: float) -> bool:
        """Stop taking work; wait up to ``timeout`` seconds for the running work (queued
        work is dropped and its locks released). Returns whether everything finished."""
        self._executor.shutdown(wait=False, cancel_futures=True)
        with self._pending_lock:
            pending = set(self._pending)
        _, not_done = wait_futures(pending, timeout=timeout)
        if not_done:
            LOG.warning("%d node task(s) still running after %g s", len(not_done), timeout)
        return not not_done

    def release_unreleased(self) -> int:
        """Release the locks whose release failed earlier; returns how many it released.
        Without this, a node whose work ended during a database outage would stay locked
        by this live conductor, which nobody takes over."""
        with self._unreleased_lock:
            node_ids = sorted(self._unreleased)
        released = 0
        for node_id in node_ids:
            if self._release_again(node_id):
                LOG.info("node %s: released the lock left over from a database outage", node_id)
                released += 1
        return released

    def _release_again(self, node_id: str) -> bool:
        # Under the lock, and dropped from the set only once done: a _reserve() of this
        # node runs after this, never between the check and the release.
        with self._unreleased_lock:
            if node_id not in self._unreleased:
                return False
            with self.db.session() as session:
                session.exec(
                    update(Node)
                    .where(col(Node.id) == node_id, col(Node.reservation) == self.hostname)
                    .values(reservation=None)
                )
            self._unreleased.discard(node_id)
        self._released_one(node_id)
        return True

    def release_stale_lock(self, node_id: str, holder: str) -> bool:
        """Clear the lock of a conductor that died holding it. Returns whether it did."""
        with self.db.session() as session:
            result = session.exec(
                update(Node)
                .where(col(Node.id) == node_id, col(Node.reservation) == holder)
                .values(reservation=None)
            )
            return bool(result.rowcount)

    def _reserve(self, node_id: str, purpose: str, wait: float) -> tuple[Node, list[Port]]:
        """Lock the node and read it (one statement, committed on its own), then its
        ports; the lock is let go of again if reading them fails."""
        deadline = time.monotonic() + wait
        if node_id in self._unreleased:
            self._release_again(node_id)
        params = {"b_id": node_id, "b_holder": self.hostname}
        while True:
            releases = self._releases.get(node_id, 0)
            if node_id in self._held:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise NodeLocked(
                        f"node {node_id} is locked by conductor {self.hostname} "
                        f"(wanted for {purpose})"
                    )
                self._wait_for_a_release(node_id, releases, min(LOCK_RETRY_INTERVAL, remaining))
                continue
            locked = None
            try:
                with self.db.autocommit() as connection:
                    locked = connection.execute(_LOCK, params).first()
                    if locked is not None:
                        with self._released:
                            self._held.add(node_id)
                        ports = connection.execute(_PORTS, params).all()
                        return Node(**locked._mapping), [Port(**row._mapping) for row in ports]
                    found = connection.execute(_HOLDER, params).first()
            except BaseException:
                if locked is not None:
                    self._release(node_id)
                raise
            if found is None:
                raise NotFound(f"node {node_id} not found")
            holder = found[0]
            remaining = deadline - time.monotonic()
            if holder is not None and remaining <= 0:
                raise NodeLocked(
                    f"node {node_id} is locked by conductor {holder} (wanted for {purpose})"
                )
            if holder == self.hostname:
                self._wait_for_a_release(node_id, releases, min(LOCK_RETRY_INTERVAL, remaining))
            elif holder is not None:
                time.sleep(min(LOCK_RETRY_INTERVAL, remaining))

    def _wait_for_a_release(self, node_id: str, seen: int, timeout: float) -> None:
        """Wait until this conductor releases ``node_id`` after its ``seen``-th release, for
        ``timeout`` seconds at most (the node may be another's by then: tried again)."""
        with self._released:
            self._released.wait_for(lambda: self._releases.get(node_id, 0) != seen, timeout)

    def _released_one(self, node_id: str) -> None:
        with self._released:
            self._held.discard(node_id)
            self._releases[node_id] = self._releases.get(node_id, 0) + 1
            self._released.notify_all()

    def _release(self, node_id: str) -> None:
        try:
            with self.db.autocommit() as connection:
                connection.execute(_UNLOCK, {"b_id": node_id, "b_holder": self.hostname})
            self._released_one(node_id)
        except Exception as exc:
            # Released by release_unreleased() once the database is back (or, if this
            # process dies first, by the take-over of a later start).
            with self._unreleased_lock:
                self._unreleased.add(node_id)
            if is_unavailable(exc):
                self.db.outage.failed(exc, f"releasing the lock on node {node_id}")
                LOG.warning("node %s: lock not released (database unavailable); later", node_id)
            else:
                LOG.exception("could not release the lock on node %s", node_id)

    def _load(self, ctxt: RequestContext, node_id: str, purpose: str, *, shared: bool) -> Task:
        with self.db.session() as session:
            node, ports = _read(session, node_id)
        return self._task(ctxt, node, ports, purpose, shared=shared)

    def _task(
        self, ctxt: RequestContext, node: Node, ports: list[Port], purpose: str, *, shared: bool
    ) -> Task:
        # Rows written by hand may hold NULL: the drivers can count on dicts.
        node.driver_internal_info = dict(node.driver_internal_info or {})
        node.driver_info = dict(node.driver_info or {})
        return Task(self, ctxt, node, ports, purpose, shared=shared)

    def _submit(self, task: Task, work: Work, args: tuple[Any, ...]) -> None:
        # The work runs in a copy of this thread's context, so its log lines keep the
        # request id of the RPC request that started it.
        context = contextvars.copy_context()
        future: Future[None] = self._executor.submit(context.run, self._run, task, work, args)
        with self._pending_lock:
            self._pending.add(future)

        def settled(done: Future[None]) -> None:
            with self._pending_lock:
                self._pending.discard(done)
            if done.cancelled():
                self._release(task.node.id)

        future.add_done_callback(settled)

    def _run(self, task: Task, work: Work, args: tuple[Any, ...]) -> None:
        try:
            work(task, *args)
        except Exception:
            LOG.exception("%s on node %s failed", task.purpose, task.node.id)
        finally:
            self._release(task.node.id)
