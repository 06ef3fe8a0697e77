"""The scheduler's RPC endpoint: pick a node for a BUILD instance, claim it, start the deploy.

Filters (``filters.py``) find the nodes that fit, weighers (``weighers.py``) order them,
and the atomic claim (``claims.py``) settles races with other schedulers. Requests may
come twice (casts are at least once): an instance that no longer waits for a node is
left alone.
"""

from __future__ import annotations

import logging
import random
import uuid
from collections.abc import Iterable, Sequence
from datetime import timedelta

from sqlalchemy import bindparam
from sqlalchemy import select as sa_select
from sqlmodel import Session, col, select

from libs import rpc
from libs.db import Database, Flavor, Instance, InstanceStatus, utcnow
from libs.errors import NoValidHost, ServiceUnavailable, TetsuError
from libs.notify import Notifier, bus_for
from services.conductor.rpcapi import ConductorAPI

from .claims import ClaimOutcome, claim_node, fail_instance, release_claim
from .filters import (
    DEFAULT_FILTERS,
    Candidate,
    NodeFilter,
    best_candidates,
    candidate_shapes,
    find_candidates,
    no_valid_host_reason,
    nodes_of_shape,
)
from .hypervisors import claim_vm, hypervisor_reason
from .request import RequestSpec
from .settings import SchedulerSettings
from .weighers import DEFAULT_WEIGHERS, Weigher, rank

LOG = logging.getLogger(__name__)

# Each round re-reads the candidates after losing the race for every one of them; a few
# rounds are plenty, and the bound keeps a node that flips between free and locked from
# holding a worker forever.
CLAIM_ROUNDS = 5

#: Nodes the database hands back per round, best first: enough for the schedulers working
#: at the same time (from random places in the id order) to find a free one among them,
#: few enough to cost little at any size. Each is checked for its ports: at 1,000 nodes,
#: half of them busy, 50 a round cost 2.0 ms of filtering and weighing, 10 cost 1.35 ms.
CANDIDATES_PER_ROUND = 10

#: Hardware shapes beyond which the candidates are ranked node by node (by the database).
MAX_SHAPES = 200

DEPLOY_FAILED = "deploy_failed"

_INSTANCE = Instance.metadata.tables["instance"]
_FLAVOR = Flavor.metadata.tables["flavor"]
#: An instance and its flavor in one round trip, built once and run on a Core
#: connection (the ORM's two gets cost the scheduler a fifth of its CPU).
_INSTANCE_AND_FLAVOR = (
    sa_select(_INSTANCE, _FLAVOR)
    .select_from(_INSTANCE.outerjoin(_FLAVOR, _FLAVOR.c.id == _INSTANCE.c.flavor_id))
    .where(_INSTANCE.c.id == bindparam("b_id"))
)


class SchedulerManager:
    RPC_API_VERSION = "1.0"

    def __init__(
        self,
        settings: SchedulerSettings,
        db: Database,
        transport: rpc.Transport,
        *,
        filters: Sequence[NodeFilter] = DEFAULT_FILTERS,
        weighers: Sequence[Weigher] = DEFAULT_WEIGHERS,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self.db = db
        self.filters = tuple(filters)
        self.weighers = tuple(weighers)
        self.rng = rng
        self.conductor = ConductorAPI(
            transport, db, heartbeat_timeout=settings.conductor_heartbeat_timeout
        )
        self.notifier = Notifier(bus_for(transport), service="scheduler")

    @rpc.expose
    def schedule_instance(self, ctxt: rpc.RequestContext, instance_id: str) -> None:
        """Claim the best node for a BUILD instance and cast ``deploy_node`` to its owner."""
        waiting = self._waiting_instance(instance_id)
        if waiting is None:
            return
        _, spec = waiting
        self._schedule(ctxt, spec)

    @rpc.expose
    def reschedule_instance(
        self, ctxt: rpc.RequestContext, instance_id: str, failed_node_id: str, reason: str
    ) -> None:
        """A deploy failed on ``failed_node_id`` (the conductor released it): try another
        node, or give up with ERROR once ``max_attempts`` deploys were tried."""
        waiting = self._waiting_instance(instance_id, also_excluded=[failed_node_id])
        if waiting is None:
            return
        instance, spec = waiting
        failures = f"deploy failed on {len(spec.excluded_node_ids)} node(s); last: {reason}"
        if instance.attempts >= self.settings.max_attempts:
            LOG.warning("instance %s: giving up after %d attempts", instance_id, instance.attempts)
            fail_instance(
                self.db, instance_id, {"code": DEPLOY_FAILED, "message": failures}, self.notifier
            )
            return
        LOG.info("instance %s: rescheduling (%s)", instance_id, failures)
        self._schedule(ctxt, spec, history=f" ({failures})")

    def schedule_stranded(self, ctxt: rpc.RequestContext) -> int:
        """Schedule again every BUILD instance that has waited without a node for longer
        than ``stranded_after`` (its request or reschedule was lost); returns how many.

        Safe beside the normal path and other schedulers: the claim only succeeds while
        the instance still waits, so a request that arrives late changes nothing.
        """
        since = utcnow() - timedelta(seconds=self.settings.stranded_after)
        with self.db.reader() as session:
            stranded = session.exec(
                select(Instance.id).where(
                    col(Instance.status) == InstanceStatus.BUILD,
                    col(Instance.node_id).is_(None),
                    col(Instance.updated_at) < since,
                )
            ).all()
        for instance_id in stranded:
            waiting = self._waiting_instance(instance_id)
            if waiting is None:
                continue
            instance, spec = waiting
            LOG.warning(
                "instance %s waited %.0f s or more without a node: scheduling it again",
                instance_id,
                self.settings.stranded_after,
            )
            if instance.attempts >= self.settings.max_attempts:
                message = f"deploy failed on {len(spec.excluded_node_ids)} node(s)"
                fail_instance(
                    self.db,
                    instance_id,
                    {"code": DEPLOY_FAILED, "message": message},
                    self.notifier,
                )
                continue
            self._schedule(ctxt, spec)
        return len(stranded)

    def _waiting_instance(
        self, instance_id: str, *, also_excluded: Iterable[str] = ()
    ) -> tuple[Instance, RequestSpec] | None:
        """The instance and what it needs, if it still waits for a node (else None)."""
        with self.db.autocommit() as connection:
            row = connection.execute(_INSTANCE_AND_FLAVOR, {"b_id": instance_id}).first()
        self.db.outage.succeeded()
        if row is None:
            LOG.warning("instance %s: not found, nothing to schedule", instance_id)
            return None
        columns = row._mapping
        instance = Instance(**{column.key: columns[column] for column in _INSTANCE.c})
        if instance.status != InstanceStatus.BUILD or instance.node_id is not None:
            LOG.info(
                "instance %s: not waiting for a node (status %s, node %s); ignored",
                instance_id,
                instance.status,
                instance.node_id,
            )
            return None
        flavor = None
        if columns[_FLAVOR.c.id] is not None:
            flavor = Flavor(**{column.key: columns[column] for column in _FLAVOR.c})
        if flavor is None:
            message = f"flavor {instance.flavor_id} no longer exists"
            fail_instance(
                self.db, instance_id, {"code": "not_found", "message": message}, self.notifier
            )
            return None
        return instance, RequestSpec.for_instance(instance, flavor, also_excluded=also_excluded)

    def _schedule(self, ctxt: rpc.RequestContext, spec: RequestSpec, history: str = "") -> None:
        if self.db.outage.ended_within(self.settings.conductor_heartbeat_timeout):
            # Right after a database outage every heartbeat is stale: no live conductor
            # then means none has beaten yet, not that none runs. Raised before the claim,
            # so the request is simply handled again (the server requeues it).
            self.conductor.ring_or_raise()
        try:
            node_id = self._claim_best(spec)
        except NoValidHost as exc:
            LOG.warning("instance %s: %s%s", spec.instance_id, exc.reason, history)
            fault = {"code": NoValidHost.code, "message": exc.reason + history}
            fail_instance(self.db, spec.instance_id, fault, self.notifier)
            return
        if node_id is None:
            LOG.info("instance %s: no longer waits for a node; claim dropped", spec.instance_id)
            return
        try:
            self.conductor.deploy_node(ctxt, node_id, spec.instance_id)
        except (TetsuError, rpc.RPCError) as exc:
            # The cast never reached a conductor, so nothing else will move the instance on.
            code = exc.code if isinstance(exc, TetsuError) else ServiceUnavailable.code
            message = f"cannot start the deploy on node {node_id}: {exc}"
            LOG.error("instance %s: %s", spec.instance_id, message)
            release_claim(
                self.db,
                spec.instance_id,
                node_id,
                {"code": code, "message": message},
                self.notifier,
            )
            return
        LOG.info("instance %s: deploying on node %s", spec.instance_id, node_id)

    def ranked_candidates(self, spec: RequestSpec) -> list[Candidate]:
        """The nodes that pass the filters, best first (the weighers' order): the best
        ``CANDIDATES_PER_ROUND`` ranked by the database when every weigher has an SQL
        form, else all of them ranked here."""
        # Reads only: no transaction (two round trips fewer; at 10k nodes 17 -> 11 ms).
        if all(weigher.by_shape for weigher in self.weighers):
            with self.db.reader() as session:
                ranked = self._ranked_by_shape(session, spec)
            if ranked is not None:
                return ranked
        weights = [weigher.sql_weight(spec) for weigher in self.weighers]
        with self.db.reader() as session:
            if weights and all(weight is not None for weight in weights):
                return best_candidates(
                    session,
                    spec,
                    self.filters,
                    [weight for weight in weights if weight is not None],
                    CANDIDATES_PER_ROUND,
                )
            candidates = find_candidates(session, spec, self.filters)
        return rank(candidates, spec, self.weighers, self.rng)

    def _ranked_by_shape(self, session: Session, spec: RequestSpec) -> list[Candidate] | None:
        """The best ``CANDIDATES_PER_ROUND`` nodes when every weigher weighs by shape:
        the shapes are weighed (as if one node each: the weights compare shapes only),
        and the nodes are read from the best shapes on. None: too many shapes for this
        to pay (every node its own), rank the nodes themselves."""
        shapes = candidate_shapes(session, spec, self.filters, MAX_SHAPES)
        if shapes is None:
            return None
        rng = self.rng or random
        rng.shuffle(shapes)  # equal shapes in random order: the sort below is stable
        totals = [0.0] * len(shapes)
        for weigher in self.weighers:
            for index, weight in enumerate(weigher.weights(shapes, spec)):
                totals[index] += weight
        order = sorted(range(len(shapes)), key=lambda index: -totals[index])
        found: list[Candidate] = []
        pivot = str(uuid.UUID(int=rng.getrandbits(128)))
        for index in order:
            shape = shapes[index]
            wanted = CANDIDATES_PER_ROUND - len(found)
            found += nodes_of_shape(session, spec, self.filters, shape, wanted, pivot)
            if len(found) >= CANDIDATES_PER_ROUND:
                break
        return found

    def _claim_best(self, spec: RequestSpec) -> str | None:
        """The id of the node claimed for the instance; None when the instance no longer
        waits (deleted, or scheduled by a duplicate request). Raises NoValidHost."""
        for _ in range(CLAIM_ROUNDS):
            candidates = self.ranked_candidates(spec)
            if not candidates:
                break
            for candidate in candidates:
                outcome = claim_node(
                    self.db,
                    spec.instance_id,
                    candidate.id,
                    self.notifier,
                    pinned=self.conductor.remember_pin,
                )
                if outcome is ClaimOutcome.CLAIMED:
                    return candidate.id
                if outcome is ClaimOutcome.INSTANCE_GONE:
                    return None
                LOG.debug("instance %s: node %s taken meanwhile", spec.instance_id, candidate.id)
        # No enrolled node: a VM node made on a hypervisor of the flavor's class, if any.
        outcome, node_id = claim_vm(
            self.db, spec, self.settings.conductor_heartbeat_timeout, self.notifier
        )
        if outcome is ClaimOutcome.CLAIMED:
            return node_id
        if outcome is ClaimOutcome.INSTANCE_GONE:
            return None
        with self.db.reader() as session:
            reason = no_valid_host_reason(session, spec, self.filters)
            vms = hypervisor_reason(session, spec)
        raise NoValidHost(reason if vms is None else f"{reason}; {vms}")
