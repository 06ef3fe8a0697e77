"""Taking over the nodes of conductors that died: at start and whenever the ring changes.

A node this conductor owns now, in a transient state whose work was run by a conductor
that is no longer alive (``driver_internal_info["conductor"]``), cannot be resumed where
that work stopped: it fails (:data:`states.FAIL_ON_TAKEOVER`), with the reason in
last_error; a deploy failed this way goes back to the scheduler. Locks left by dead
conductors are cleared. Such a node that a live conductor has locked for a moment (a
periodic job; its former owner's power sync) is looked at again at the next check.
"""

from __future__ import annotations

import logging
from collections.abc import Set

from sqlmodel import col, or_, select

from libs.db import Database, Node
from libs.errors import NodeLocked, NotFound
from libs.rpc import RequestContext

from .cleaning import Cleaning
from .deployments import Deployments
from .hashring import HashRing
from .states import FAIL_ON_TAKEOVER, TRANSIENT_STATES, ProvisionState
from .task_manager import CONDUCTOR_KEY, Task, TaskManager

LOG = logging.getLogger(__name__)


class TakeOver:
    def __init__(
        self,
        db: Database,
        hostname: str,
        tasks: TaskManager,
        deployments: Deployments,
        cleaning: Cleaning,
    ) -> None:
        self.db = db
        self.hostname = hostname
        self.tasks = tasks
        self.deployments = deployments
        self.cleaning = cleaning
        #: Whether the last :meth:`run` looked at every node it had to: False when one
        #: whose work is dead was locked at that instant, so the caller runs it again.
        self.complete = True

    def run(self, ring: HashRing, alive: Set[str]) -> int:
        """Take over the nodes ``ring`` gives this conductor whose worker or lock holder is
        not in ``alive``, and any node still locked by this hostname when it is not in
        ``alive`` (at start). Returns how many nodes were failed."""
        ctxt = RequestContext.admin()
        transient = [state.value for state in TRANSIENT_STATES]
        self.complete = True
        with self.db.session() as session:
            rows = session.exec(
                select(
                    Node.id, Node.provision_state, Node.reservation, Node.driver_internal_info
                ).where(
                    or_(
                        col(Node.reservation).is_not(None),
                        col(Node.provision_state).in_(transient),
                    )
                )
            ).all()
        failed = 0
        for node_id, state, reservation, info in rows:
            owned = bool(ring.hosts) and ring.owner(node_id) == self.hostname
            # A lock of this hostname that no live work holds (at start) is cleared whoever
            # owns the node now: its owner sees this hostname alive and leaves it be.
            stale_own_lock = reservation == self.hostname and reservation not in alive
            if not owned and not stale_own_lock:
                continue
            if reservation is not None:
                if reservation in alive:
                    # A live conductor is working on it, or only holds it for a moment
                    # while its work died: then it is this conductor's to fail, later.
                    if state in transient and (info or {}).get(CONDUCTOR_KEY) not in alive:
                        self.complete = False
                    continue
                if self.tasks.release_stale_lock(node_id, reservation):
                    LOG.warning(
                        "node %s: cleared the lock of dead conductor %s", node_id, reservation
                    )
            if state in transient and self._fail_abandoned(ctxt, node_id, alive, reservation):
                failed += 1
        return failed

    def _fail_abandoned(
        self, ctxt: RequestContext, node_id: str, alive: Set[str], holder: str | None
    ) -> bool:
        try:
            with self.tasks.acquire(ctxt, node_id, "take-over", wait=0) as task:
                state = task.node.provision_state
                worker = task.node.driver_internal_info.get(CONDUCTOR_KEY)
                if state not in TRANSIENT_STATES or worker in alive:
                    return False  # its work moved on meanwhile
                reason = f"conductor {worker or holder or 'unknown'} died during {state}"
                LOG.warning("node %s: %s; failing it", node_id, reason)
                task.spawn_after(self.fail, ProvisionState(state), reason)
                return True
        except NodeLocked:
            self.complete = False  # busy at this instant: look again at the next check
            return False
        except NotFound:
            return False  # gone

    def fail(self, task: Task, state: ProvisionState, reason: str) -> None:
        """Fail the task's node, whose work in the transient ``state`` is gone, the way
        that work fails (:data:`FAIL_ON_TAKEOVER`): a deploy's instance is rescheduled."""
        target = FAIL_ON_TAKEOVER[state]
        # Each workflow's own failure handling, which moves the node to that same state.
        if target == ProvisionState.DEPLOYFAIL:
            self.deployments.fail(task, reason)
        else:
            self.cleaning.fail(task, reason)
        if task.node.provision_state != target:
            LOG.error(
                "node %s ended in %s, not %s", task.node.id, task.node.provision_state, target
            )
