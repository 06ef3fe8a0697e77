"""Re-driving stranded work: a deploy or tear-down that was asked for but never ran (its
message waits in the queue of a conductor that died, or was lost, or its handler gave up
on a locked node), and work that ended without moving its node out of a working state.

Every ``check_interval``, for the nodes this conductor owns and nobody has locked:

- claimed for a BUILD instance but still ``available`` after ``redrive_after``: deploy;
- its instance DELETING, the node in a stable state after ``redrive_after``: tear down;
- ``deploying``, ``cleaning`` or ``deleting`` (states whose work always holds the node's
  lock) yet unlocked for longer than :meth:`Redrive.abandoned_after`: the work ended
  without an outcome (a failure path raised), so the node fails as in a take-over.

Starting a deploy or a tear-down twice is harmless: both ignore a repeat, so a message
that was only late finds its work done.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlmodel import col, select

from libs.db import Database, Instance, InstanceStatus, Node, as_utc, utcnow
from libs.errors import NodeLocked, NotFound
from libs.rpc import RequestContext

from . import instances
from .cleaning import Cleaning
from .deployments import Deployments
from .hashring import HashRing
from .settings import ConductorSettings
from .states import ProvisionState
from .takeover import TakeOver
from .task_manager import CONDUCTOR_KEY, TaskManager

LOG = logging.getLogger(__name__)

S = ProvisionState

#: The states whose work holds the node's lock from start to end: unlocked, nobody works.
LOCKED_WORK_STATES = (S.DEPLOYING, S.CLEANING, S.DELETING)

#: The states in which a node whose instance is being deleted waits for its tear-down.
TEAR_DOWN_FROM = (S.ACTIVE, S.DEPLOYFAIL, S.ERROR, S.AVAILABLE)


@dataclass(frozen=True)
class _Sighting:
    """A node first seen unlocked in a working state (monotonic time), and how it was."""

    state: str
    provision_updated_at: datetime | None
    since: float


class Redrive:
    def __init__(
        self,
        settings: ConductorSettings,
        db: Database,
        tasks: TaskManager,
        deployments: Deployments,
        cleaning: Cleaning,
        takeover: TakeOver,
    ) -> None:
        self.settings = settings
        self.hostname = settings.hostname
        self.db = db
        self.tasks = tasks
        self.deployments = deployments
        self.cleaning = cleaning
        self.takeover = takeover
        # No column says since when a node is unlocked, so this conductor remembers when
        # it first saw each one so; a new owner starts its own count.
        self._unlocked: dict[str, _Sighting] = {}

    @property
    def abandoned_after(self) -> float:
        """Seconds a node in a working state must be seen unlocked before it counts as
        abandoned: a few checks, past the instant a take-over clears a dead conductor's
        lock and takes it itself."""
        return 2 * self.settings.check_interval

    def run(self, ring: HashRing, ctxt: RequestContext) -> int:
        """Re-drive the owned nodes whose work is stranded; returns how many."""
        return (
            self.start_stalled_deploys(ring, ctxt)
            + self.start_stalled_tear_downs(ring, ctxt)
            + self.fail_abandoned(ring, ctxt)
        )

    def start_stalled_deploys(self, ring: HashRing, ctxt: RequestContext) -> int:
        """Deploy the instances whose node was claimed ``redrive_after`` ago or more and
        whose deploy never started."""
        cutoff = self._cutoff()
        with self.db.session() as session:
            rows = session.exec(
                select(Node.id, Instance.id, Node.updated_at, Instance.updated_at)
                .join(Instance, col(Instance.id) == col(Node.instance_id))
                .where(
                    col(Node.provision_state) == S.AVAILABLE.value,
                    col(Node.reservation).is_(None),
                    col(Instance.status) == InstanceStatus.BUILD,
                    col(Instance.node_id) == col(Node.id),
                    # Only the old ones: a burst's thousand fresh claims stay in the database.
                    col(Node.updated_at) < cutoff,
                    col(Instance.updated_at) < cutoff,
                )
            ).all()
        started = 0
        for node_id, instance_id, node_changed, instance_changed in rows:
            if not self._owns(ring, node_id) or not _before(cutoff, node_changed, instance_changed):
                continue
            try:
                with self.tasks.acquire(ctxt, node_id, "re-drive deploy", wait=0) as task:
                    node = task.node
                    if (
                        node.provision_state != S.AVAILABLE
                        or node.instance_id != instance_id
                        or not _before(cutoff, node.updated_at)
                    ):
                        continue  # its deploy came meanwhile
                    LOG.warning(
                        "node %s: the deploy of instance %s has not started %g s after the "
                        "claim (its message is lost or waits for a dead conductor): "
                        "starting it here",
                        node_id,
                        instance_id,
                        self.settings.redrive_after,
                    )
                    self.deployments.start(task, instance_id)
                    started += 1
            except (NodeLocked, NotFound):
                continue  # busy after all, or gone: the next check looks again
            except Exception:
                LOG.exception("re-driving the deploy on node %s failed", node_id)
        return started

    def start_stalled_tear_downs(self, ring: HashRing, ctxt: RequestContext) -> int:
        """Tear down the nodes whose instance has been DELETING for ``redrive_after`` or
        more while the node stayed in a stable state."""
        cutoff = self._cutoff()
        with self.db.session() as session:
            rows = session.exec(
                select(Node.id, Instance.id, Node.updated_at, Instance.updated_at)
                .join(Instance, col(Instance.node_id) == col(Node.id))
                .where(
                    col(Instance.status) == InstanceStatus.DELETING,
                    col(Node.provision_state).in_([state.value for state in TEAR_DOWN_FROM]),
                    col(Node.reservation).is_(None),
                    col(Node.updated_at) < cutoff,
                    col(Instance.updated_at) < cutoff,
                )
            ).all()
        started = 0
        for node_id, instance_id, node_changed, instance_changed in rows:
            if not self._owns(ring, node_id) or not _before(cutoff, node_changed, instance_changed):
                continue
            try:
                with self.tasks.acquire(ctxt, node_id, "re-drive tear down", wait=0) as task:
                    node = task.node
                    if (
                        node.provision_state not in TEAR_DOWN_FROM
                        or not _before(cutoff, node.updated_at)
                        or instances.status_of(self.db, instance_id) != InstanceStatus.DELETING
                    ):
                        continue  # its tear-down came meanwhile
                    LOG.warning(
                        "node %s: instance %s has been deleting for %g s with the node still "
                        "%s (the message is lost, waits for a dead conductor, or found the "
                        "node locked): tearing it down here",
                        node_id,
                        instance_id,
                        self.settings.redrive_after,
                        node.provision_state,
                    )
                    self.cleaning.tear_down_instance(task)
                    started += 1
            except (NodeLocked, NotFound):
                continue  # busy after all, or gone: the next check looks again
            except Exception:
                LOG.exception("re-driving the tear-down of node %s failed", node_id)
        return started

    def fail_abandoned(self, ring: HashRing, ctxt: RequestContext) -> int:
        """Fail the nodes seen unlocked in a working state for ``abandoned_after``."""
        with self.db.session() as session:
            rows = session.exec(
                select(Node.id, Node.provision_state, Node.provision_updated_at).where(
                    col(Node.provision_state).in_([state.value for state in LOCKED_WORK_STATES]),
                    col(Node.reservation).is_(None),
                )
            ).all()
        now = time.monotonic()
        seen: dict[str, _Sighting] = {}
        due: list[tuple[str, _Sighting]] = []
        for node_id, state, changed in rows:
            if not self._owns(ring, node_id):
                continue
            earlier = self._unlocked.get(node_id)
            if earlier is None or (earlier.state, earlier.provision_updated_at) != (state, changed):
                seen[node_id] = _Sighting(state, changed, now)
            else:
                seen[node_id] = earlier
                if now - earlier.since >= self.abandoned_after:
                    due.append((node_id, earlier))
        self._unlocked = seen
        failed = 0
        for node_id, sighting in due:
            if self._fail_abandoned(ctxt, node_id, sighting):
                self._unlocked.pop(node_id, None)
                failed += 1
        return failed

    def _fail_abandoned(self, ctxt: RequestContext, node_id: str, sighting: _Sighting) -> bool:
        try:
            with self.tasks.acquire(ctxt, node_id, "re-drive abandoned", wait=0) as task:
                node = task.node
                if (node.provision_state, node.provision_updated_at) != (
                    sighting.state,
                    sighting.provision_updated_at,
                ):
                    return False  # its work moved on meanwhile
                worker = node.driver_internal_info.get(CONDUCTOR_KEY) or "unknown"
                reason = (
                    f"work abandoned during {node.provision_state}: it ended on conductor "
                    f"{worker} without finishing or failing the node"
                )
                LOG.warning(
                    "node %s (instance %s): %s; failing it", node_id, node.instance_id, reason
                )
                task.spawn_after(self.takeover.fail, ProvisionState(node.provision_state), reason)
                return True
        except (NodeLocked, NotFound):
            return False

    def _cutoff(self) -> datetime:
        return utcnow() - timedelta(seconds=self.settings.redrive_after)

    def _owns(self, ring: HashRing, node_id: str) -> bool:
        return bool(ring.hosts) and ring.owner(node_id) == self.hostname


def _before(cutoff: datetime, *moments: datetime | None) -> bool:
    """Whether every one of ``moments`` is before ``cutoff``."""
    return all(moment is None or as_utc(moment) < cutoff for moment in moments)
