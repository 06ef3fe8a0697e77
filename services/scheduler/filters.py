"""Filters: which nodes could take an instance at all, each one SQL condition on ``node``.

The database applies them, so thousands of nodes cost one query; when nothing is left,
one more query counts what each filter removed, for the "no valid host" reason.
"""

from __future__ import annotations

import dataclasses
import functools
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Integer,
    Select,
    String,
    and_,
    bindparam,
    case,
    func,
    not_,
    true,
)
from sqlalchemy import select as sa_select
from sqlmodel import Session, col, select

from libs.db import Node, Port
from services.conductor.states import ProvisionState

from .request import RequestSpec


class NodeFilter(ABC):
    """One reason a node cannot take an instance, as a condition the node must meet."""

    #: Whether the count of hardware shapes (:func:`candidate_shapes`) applies it too. A
    #: filter that reads another table is left to the reads of each shape's nodes, which
    #: stop at a few nodes: over the whole estate it costs more than the rest together.
    counts_shapes = True

    @property
    def name(self) -> str:
        return type(self).__name__

    @abstractmethod
    def clause(self, spec: RequestSpec) -> ColumnElement[bool]:
        """The SQL condition on ``node`` that the nodes passing this filter meet. It may
        depend on anything the spec asks for but not on its ``instance_id``: the scheduler
        builds its statements once per kind of request (see :func:`for_any_instance`)."""


class ResourceClassFilter(NodeFilter):
    """The node is of the flavor's resource class (its kind of hardware)."""

    def clause(self, spec: RequestSpec) -> ColumnElement[bool]:
        return col(Node.resource_class) == spec.resource_class


class PropertiesFilter(NodeFilter):
    """The node has at least the flavor's cpus, memory and disk."""

    def clause(self, spec: RequestSpec) -> ColumnElement[bool]:
        return and_(
            col(Node.cpus) >= spec.cpus,
            col(Node.memory_mb) >= spec.memory_mb,
            col(Node.disk_gb) >= spec.disk_gb,
        )


class AvailableFilter(NodeFilter):
    """The node is offered to users and free: available, not in maintenance and unclaimed
    (the same conditions the claim checks again). A conductor's lock does not matter: it
    is held for moments (a power sync), and the deploy waits for it."""

    def clause(self, spec: RequestSpec) -> ColumnElement[bool]:
        return and_(
            col(Node.provision_state) == ProvisionState.AVAILABLE.value,
            not_(col(Node.maintenance)),
            col(Node.instance_id).is_(None),
        )


class PortsFilter(NodeFilter):
    """The node has a port for each network of the instance."""

    # A semi-join over every port: half of the shape count's time at 10k nodes (5 of 10 ms).
    counts_shapes = False

    def clause(self, spec: RequestSpec) -> ColumnElement[bool]:
        if spec.port_count == 0:
            return true()
        if spec.port_count == 1:
            # A semi-join the planner may run as one pass over the ports' index.
            return select(col(Port.id)).where(col(Port.node_id) == col(Node.id)).exists()
        # Nodes with enough ports, found in one pass over the ports (a hashed subplan),
        # not a count per candidate node: that cost ~5 us a node, 40 ms at 10k nodes.
        enough_ports = (
            select(col(Port.node_id))
            .group_by(col(Port.node_id))
            .having(func.count(col(Port.id)) >= spec.port_count)
        )
        return col(Node.id).in_(enough_ports)


class ExcludeFailedFilter(NodeFilter):
    """The node is not one a deploy of this instance already failed on."""

    def clause(self, spec: RequestSpec) -> ColumnElement[bool]:
        if not spec.excluded_node_ids:
            return true()
        return col(Node.id).not_in(sorted(spec.excluded_node_ids))


#: The filters every request goes through, cheapest and most selective first.
DEFAULT_FILTERS: tuple[NodeFilter, ...] = (
    ResourceClassFilter(),
    PropertiesFilter(),
    AvailableFilter(),
    PortsFilter(),
    ExcludeFailedFilter(),
)


@dataclass(frozen=True)
class Candidate:
    """A node that passed every filter, with what the weighers compare."""

    id: str
    cpus: int
    memory_mb: int
    disk_gb: int


def find_candidates(
    session: Session, spec: RequestSpec, filters: Sequence[NodeFilter] = DEFAULT_FILTERS
) -> list[Candidate]:
    """The nodes that pass every filter, in no particular order."""
    rows = session.exec(
        select(col(Node.id), col(Node.cpus), col(Node.memory_mb), col(Node.disk_gb)).where(
            *(f.clause(spec) for f in filters)
        )
    ).all()
    return [Candidate(id=i, cpus=c, memory_mb=m, disk_gb=d) for i, c, m, d in rows]


def best_candidates(
    session: Session,
    spec: RequestSpec,
    filters: Sequence[NodeFilter],
    weights: Sequence[ColumnElement[Any]],
    limit: int,
) -> list[Candidate]:
    """The ``limit`` best nodes that pass every filter, best first by the sum of
    ``weights`` (SQL expressions of the weighers), equally good ones in random order.

    The database filters, weighs and sorts, so an estate of any size costs one query and
    ``limit`` rows, not a row per node to rank in Python.
    """
    weighed = (
        sa_select(
            col(Node.id).label("id"),
            col(Node.cpus).label("cpus"),
            col(Node.memory_mb).label("memory_mb"),
            col(Node.disk_gb).label("disk_gb"),
            sum(weights[1:], weights[0]).label("weight"),
        )
        .where(*(f.clause(spec) for f in filters))
        .subquery()
    )
    rows = session.exec(
        select(weighed.c.id, weighed.c.cpus, weighed.c.memory_mb, weighed.c.disk_gb)
        .order_by(weighed.c.weight.desc(), func.random())
        .limit(limit)
    ).all()
    return [Candidate(id=i, cpus=c, memory_mb=m, disk_gb=d) for i, c, m, d in rows]


def for_any_instance(spec: RequestSpec) -> RequestSpec:
    """``spec`` without its instance: the key under which the statements built for it
    are kept, so the requests of a burst of one flavor share them."""
    return dataclasses.replace(spec, instance_id="")


#: Statements kept per kind of request (flavor, networks, exclusions): building one and
#: deriving its cache key cost a scheduling decision more CPU than running it.
STATEMENTS_KEPT = 256


@functools.lru_cache(maxsize=STATEMENTS_KEPT)
def _shapes_statement(
    filters: tuple[NodeFilter, ...], spec: RequestSpec, limit: int
) -> Select[int, int, int]:
    return (
        sa_select(col(Node.cpus), col(Node.memory_mb), col(Node.disk_gb))
        .where(*(f.clause(spec) for f in filters if f.counts_shapes))
        .group_by(col(Node.cpus), col(Node.memory_mb), col(Node.disk_gb))
        .limit(limit + 1)
    )


def candidate_shapes(
    session: Session, spec: RequestSpec, filters: Sequence[NodeFilter], limit: int
) -> list[Candidate] | None:
    """The hardware shapes (cpus, memory, disk) among the nodes that pass every filter
    that ``counts_shapes`` (a shape may turn out to have no node passing the others),
    each as a Candidate without an id; None when there are more than ``limit``. One
    aggregate over the candidates: an estate of thousands of nodes has a few shapes."""
    statement = _shapes_statement(tuple(filters), for_any_instance(spec), limit)
    rows = session.connection().execute(statement).all()
    if len(rows) > limit:
        return None
    return [Candidate(id="", cpus=c, memory_mb=m, disk_gb=d) for c, m, d in rows]


@functools.lru_cache(maxsize=STATEMENTS_KEPT)
def _shape_nodes_statement(
    filters: tuple[NodeFilter, ...], spec: RequestSpec, shape: Candidate, after_pivot: bool
) -> Select[Any]:
    """Up to ``b_limit`` ids of nodes of ``shape`` passing the filters, in id order from
    ``b_pivot`` on (``after_pivot``) or before it."""
    pivot = bindparam("b_pivot", type_=String)
    return (
        sa_select(col(Node.id))
        .where(
            col(Node.id) >= pivot if after_pivot else col(Node.id) < pivot,
            col(Node.cpus) == shape.cpus,
            col(Node.memory_mb) == shape.memory_mb,
            col(Node.disk_gb) == shape.disk_gb,
            *(f.clause(spec) for f in filters),
        )
        .order_by(col(Node.id))
        .limit(bindparam("b_limit", type_=Integer))
    )


def nodes_of_shape(
    session: Session,
    spec: RequestSpec,
    filters: Sequence[NodeFilter],
    shape: Candidate,
    limit: int,
    pivot: str,
) -> list[Candidate]:
    """Up to ``limit`` nodes of ``shape`` that pass every filter, in id order from
    ``pivot`` on and round again from the start: a random pivot spreads schedulers that
    work at the same time over different nodes, and each query walks the primary key
    instead of sorting every candidate. (One statement for both walks, a UNION ALL, ran
    both every time: at 100k nodes 17 -> 25 ms a decision.)"""
    key = (tuple(filters), for_any_instance(spec), shape)
    connection = session.connection()
    found: list[str] = []
    for after_pivot in (True, False):
        statement = _shape_nodes_statement(*key, after_pivot)
        params = {"b_limit": limit - len(found), "b_pivot": pivot}
        found += connection.execute(statement, params).scalars()
        if len(found) >= limit:
            break
    return [
        Candidate(id=i, cpus=shape.cpus, memory_mb=shape.memory_mb, disk_gb=shape.disk_gb)
        for i in found
    ]


@dataclass(frozen=True)
class FilterCount:
    """How many nodes were left after a filter, and how many it removed."""

    name: str
    left: int
    removed: int


def count_by_filter(
    session: Session, spec: RequestSpec, filters: Sequence[NodeFilter] = DEFAULT_FILTERS
) -> tuple[int, list[FilterCount]]:
    """All nodes, and what was left after each filter applied in turn (one query)."""
    clauses = [f.clause(spec) for f in filters]
    # Column 0 counts every node, column i the nodes that pass filters 1..i.
    columns = [func.count(col(Node.id))] + [
        func.coalesce(func.sum(case((and_(*clauses[: i + 1]), 1), else_=0)), 0)
        for i in range(len(clauses))
    ]
    row = session.exec(select(*columns)).one()
    total, lefts = int(row[0]), [int(value) for value in row[1:]]
    counts = []
    before = total
    for f, left in zip(filters, lefts, strict=True):
        counts.append(FilterCount(name=f.name, left=left, removed=before - left))
        before = left
    return total, counts


def no_valid_host_reason(
    session: Session, spec: RequestSpec, filters: Sequence[NodeFilter] = DEFAULT_FILTERS
) -> str:
    """Why no node fits, naming each filter that removed nodes, e.g. "no valid host for
    flavor 'bm' (resource class 'bm'): 20 nodes; 0 left after AvailableFilter (20 removed)".
    """
    total, counts = count_by_filter(session, spec, filters)
    parts = [
        f"no valid host for flavor {spec.flavor_name!r} "
        f"(resource class {spec.resource_class!r}): {_nodes(total)}"
    ]
    parts.extend(f"{c.left} left after {c.name} ({c.removed} removed)" for c in counts if c.removed)
    return "; ".join(parts)


def _nodes(count: int) -> str:
    return f"{count} node" if count == 1 else f"{count} nodes"
