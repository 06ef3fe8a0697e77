"""A conductor's periodic work, each on a thread of its own until stopped: the heartbeat,
take-over when the ring changes, the power-state sync, ramdisk callback timeouts, the
re-drive of stranded work (``redrive.py``), and fresh planner statistics of the tables
that change in bulk (``libs/db/statistics.py``).

Only nodes this conductor owns on the hash ring are visited, and only ones nobody has
locked: a busy node is simply looked at next time.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from datetime import timedelta

from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select, update

from libs.db import Conductor, Database, Node, as_utc, is_unavailable, utcnow
from libs.db.statistics import refresh_statistics
from libs.errors import NodeLocked, NotFound
from libs.rpc import RequestContext, current_context

from . import power
from .cleaning import Cleaning
from .deployments import Deployments
from .evacuation import Evacuations
from .hashring import HashRing
from .redrive import Redrive
from .rpcapi import live_ring
from .settings import ConductorSettings
from .states import ProvisionState
from .takeover import TakeOver
from .task_manager import Task, TaskManager

LOG = logging.getLogger(__name__)

S = ProvisionState

#: Seconds between a periodic job's attempts while the database is unavailable.
OUTAGE_RETRY_INTERVAL = 1.0


class PeriodicTasks:
    def __init__(
        self,
        settings: ConductorSettings,
        db: Database,
        tasks: TaskManager,
        deployments: Deployments,
        cleaning: Cleaning,
        evacuations: Evacuations | None = None,
    ) -> None:
        self.settings = settings
        self.evacuations = evacuations
        self.hostname = settings.hostname
        self.db = db
        self.tasks = tasks
        self.deployments = deployments
        self.cleaning = cleaning
        self.takeover = TakeOver(db, self.hostname, tasks, deployments, cleaning)
        self.redrive = Redrive(settings, db, tasks, deployments, cleaning, self.takeover)
        self._live: frozenset[str] | None = None
        # A database outage stops every heartbeat at once: one long enough to make them
        # stale must not pass for dead conductors. When the outage began (monotonic) while
        # it lasts, and until when after it a missing heartbeat is not believed.
        self._outage_began: float | None = None
        self._distrust_until = -math.inf
        self._outage_lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        """Start one thread per periodic job (the first runs come after one interval)."""
        if self._threads:
            raise RuntimeError("periodic tasks already started")
        self._stop.clear()
        settings = self.settings
        jobs: list[tuple[str, float, Callable[[], object]]] = [
            ("heartbeat", settings.heartbeat_interval, self.heartbeat),
            ("ring check", settings.check_interval, self.check_ring),
            ("callback timeouts", settings.check_interval, self.check_callback_timeouts),
            ("re-drive", settings.check_interval, self.redrive_stranded_work),
            ("power sync", settings.power_sync_interval, self.sync_power_states),
            ("planner statistics", settings.statistics_interval, self.refresh_statistics),
        ]
        for name, interval, job in jobs:
            thread = threading.Thread(
                target=self._loop, args=(name, interval, job), name=f"periodic-{name}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the threads, letting a run in progress end (up to ``timeout`` each)."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout)
            if thread.is_alive():
                LOG.warning("periodic thread %s did not stop in %g s", thread.name, timeout)
        self._threads = []

    def _loop(self, name: str, interval: float, job: Callable[[], object]) -> None:
        wait = interval
        while not self._stop.wait(wait):
            wait = interval
            token = current_context.set(RequestContext.admin())
            try:
                job()
                self.db.outage.succeeded()
                self._database_answered()
            except Exception as exc:
                if is_unavailable(exc):
                    # Once per outage, not a traceback per job and interval.
                    self.db.outage.failed(exc, f"periodic {name}")
                    self._database_failed()
                    # Soon again: the heartbeat above all, so that the ring is whole soon
                    # after the database is back.
                    wait = min(interval, OUTAGE_RETRY_INTERVAL)
                else:
                    LOG.exception("periodic %s failed", name)
            finally:
                current_context.reset(token)

    def refresh_statistics(self) -> list[str]:
        """Analyze the bulk tables whose planner statistics are stale (statistics.py)."""
        return refresh_statistics(self.db)

    def heartbeat(self, *, online: bool = True) -> None:
        """Tell the others this conductor is alive (or, at stop, that it has left)."""
        now = utcnow()
        try:
            with self.db.session() as session:
                found = session.exec(
                    update(Conductor)
                    .where(col(Conductor.hostname) == self.hostname)
                    .values(online=online, updated_at=now)
                ).rowcount
                if not found:
                    session.add(Conductor(hostname=self.hostname, online=online, updated_at=now))
        except IntegrityError:
            # Another process with our hostname inserted it first: a configuration error.
            LOG.error("another conductor registered hostname %s at the same time", self.hostname)

    def ring(self) -> HashRing:
        return live_ring(self.db, self.settings.conductor_heartbeat_timeout)

    def take_over(self, *, at_start: bool = False, ring: HashRing | None = None) -> int:
        """Fail the owned nodes whose work died with its conductor. At start, the work this
        hostname ran before is dead too: nothing of this process runs yet."""
        ring = ring or self.ring()
        alive = set(ring.hosts)
        if at_start:
            alive.discard(self.hostname)
        else:
            alive.add(self.hostname)
        failed = self.takeover.run(ring, alive)
        # Only once it is done: a take-over that failed half-way, or found a node it must
        # fail locked for a moment, runs again next check.
        if self.takeover.complete:
            self._live = ring.hosts
        return failed

    def check_ring(self) -> None:
        """Take over again when conductors came or went since the last look."""
        ring = self.ring()
        if ring.hosts != self._live:
            if not self._heartbeats_trusted():
                # Their heartbeats stopped with the database, not their work: taking
                # their nodes over now would fail deploys that are going well.
                LOG.info("conductors missing after a database outage: waiting for heartbeats")
                return
            LOG.info("live conductors now: %s", ", ".join(sorted(ring.hosts)) or "none")
            self.take_over(ring=ring)

    def _database_failed(self) -> None:
        with self._outage_lock:
            if self._outage_began is None:
                self._outage_began = time.monotonic()

    def _database_answered(self) -> None:
        with self._outage_lock:
            began, self._outage_began = self._outage_began, None
            now = time.monotonic()
            if began is not None and now - began > self._stale_after:
                # Every live conductor beats again within this, once the database is back.
                self._distrust_until = now + self.settings.conductor_heartbeat_timeout

    @property
    def _stale_after(self) -> float:
        """How long an outage must last before the others' heartbeats may look stale
        because of it (they beat every heartbeat_interval)."""
        settings = self.settings
        return max(0.0, settings.conductor_heartbeat_timeout - 2 * settings.heartbeat_interval)

    def _heartbeats_trusted(self) -> bool:
        """Whether a heartbeat missing now means its conductor died: not during a long
        database outage, nor for a heartbeat timeout after it."""
        now = time.monotonic()
        with self._outage_lock:
            began = self._outage_began
            if began is not None and now - began > self._stale_after:
                return False
            return now >= self._distrust_until

    def sync_power_states(self) -> None:
        """Record each owned, unlocked, managed node's power state."""
        ring = self.ring()
        with self.db.session() as session:
            node_ids = session.exec(
                select(Node.id).where(
                    col(Node.reservation).is_(None), col(Node.provision_state) != S.ENROLL
                )
            ).all()
        ctxt = current_context.get() or RequestContext.admin()
        for node_id in node_ids:
            if not self._owns(ring, node_id):
                continue
            try:
                if self._power_unchanged(ctxt, node_id):
                    continue
                with self.tasks.acquire(ctxt, node_id, "power sync", wait=0) as task:
                    power.sync_power_state(task)
                    self._evacuate_if_gone(task)
            except (NodeLocked, NotFound):
                continue

    def _power_unchanged(self, ctxt: RequestContext, node_id: str) -> bool:
        """Read the power state without taking the node's lock: True when it is the one
        recorded and there is nothing to record or clear. That is the common case, and it
        then costs one read of the node instead of a lock, a load, a write and a release
        (a large estate's sync held every node's lock in turn, in the way of deploys). A
        node whose reads fail goes straight to the locked sync, which records why."""
        with self.tasks.acquire(ctxt, node_id, "power read", shared=True) as task:
            node = task.node
            if node.reservation is not None:
                return True  # someone works on it: its own steps record the power state
            sync_error = (node.last_error or "").startswith(power.SYNC_ERROR_PREFIX)
            if sync_error or power.unreachable_since(node) is not None:
                return False
            try:
                state = task.driver.power.get_power_state(task)
            except Exception:
                return False
            return bool(state == node.power_state)

    def _evacuate_if_gone(self, task: Task) -> None:
        """The automatic evacuation policy (``evacuate_after`` > 0): an active node whose
        power state could not be read for that long has its instance evacuated."""
        limit = self.settings.evacuate_after
        node = task.node
        if limit <= 0 or self.evacuations is None or node.maintenance:
            return
        if node.provision_state != S.ACTIVE or node.instance_id is None:
            return
        since = power.unreachable_since(node)
        if since is None or time.time() - since < limit:
            return
        why = f"its power state could not be read for {time.time() - since:.0f} s"
        LOG.warning("node %s: %s: evacuating instance %s", node.id, why, node.instance_id)
        self.evacuations.evacuate(task, node.instance_id, why)

    def redrive_stranded_work(self) -> int:
        """Start the owned nodes' deploys and tear-downs whose messages never came, and
        fail the work that ended without an outcome. Returns how many nodes it drove."""
        ctxt = current_context.get() or RequestContext.admin()
        # First the locks a database outage kept this conductor from releasing: their
        # nodes' work is over, so the re-drive below must see them unlocked.
        self.tasks.release_unreleased()
        return self.redrive.run(self.ring(), ctxt)

    def check_callback_timeouts(self) -> None:
        """Fail the owned nodes that waited for their ramdisk longer than callback_timeout."""
        timeout = self.settings.callback_timeout
        cutoff = utcnow() - timedelta(seconds=timeout)
        ring = self.ring()
        with self.db.session() as session:
            rows = session.exec(
                select(Node.id, Node.provision_updated_at).where(
                    col(Node.provision_state).in_([S.DEPLOYWAIT.value, S.CLEANWAIT.value]),
                    col(Node.reservation).is_(None),
                )
            ).all()
        ctxt = current_context.get() or RequestContext.admin()
        for node_id, since in rows:
            if since is None or as_utc(since) > cutoff or not self._owns(ring, node_id):
                continue
            try:
                with self.tasks.acquire(ctxt, node_id, "callback timeout", wait=0) as task:
                    node = task.node
                    waiting_since = node.provision_updated_at
                    if waiting_since is None or as_utc(waiting_since) > cutoff:
                        continue  # the callback came meanwhile
                    reason = (
                        f"timed out after {timeout:g} s waiting for the ramdisk's callback "
                        f"({node.provision_state})"
                    )
                    if node.provision_state == S.DEPLOYWAIT:
                        task.spawn_after(self.deployments.fail, reason)
                    elif node.provision_state == S.CLEANWAIT:
                        task.spawn_after(self.cleaning.fail, reason)
            except (NodeLocked, NotFound):
                continue

    def _owns(self, ring: HashRing, node_id: str) -> bool:
        return bool(ring.hosts) and ring.owner(node_id) == self.hostname
