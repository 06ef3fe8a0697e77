"""Weighers: in which order to try the nodes that passed the filters.

Each weigher gives every candidate a weight (higher: try sooner); the weights of all
weighers are added up. Candidates are shuffled before the (stable) sort, so equal nodes
come in a random order and schedulers working at the same time go for different nodes.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, Float, case, cast, func
from sqlmodel import col

from libs.db import Node

from .filters import Candidate
from .request import RequestSpec


class Weigher(ABC):
    @abstractmethod
    def weights(self, candidates: Sequence[Candidate], spec: RequestSpec) -> list[float]:
        """One weight per candidate, in the candidates' order; higher is better."""

    def sql_weight(self, spec: RequestSpec) -> ColumnElement[Any] | None:
        """The same weight as an SQL expression on ``node`` among the filtered nodes (window
        functions over them stand for "the candidates"), so the database can rank a large
        estate and hand back only the best nodes; None: this weigher ranks in Python only."""
        return None

    #: The weight depends on a node's cpus, memory and disk (and the candidates') only:
    #: nodes of one shape weigh the same, so the scheduler may weigh the shapes instead.
    by_shape: bool = False


class BestFitWeigher(Weigher):
    """The node with the least to spare first, so big nodes stay free for big flavors.

    A node's surplus of each resource (cpus, memory, disk) over the flavor is divided by
    the largest surplus of that resource among the candidates, so each resource counts
    alike whatever its unit; the weight is minus the mean of the three, in [-1, 0].
    """

    by_shape = True

    def weights(self, candidates: Sequence[Candidate], spec: RequestSpec) -> list[float]:
        surpluses = [
            (c.cpus - spec.cpus, c.memory_mb - spec.memory_mb, c.disk_gb - spec.disk_gb)
            for c in candidates
        ]
        if not surpluses:
            return []
        largest = [max(column) for column in zip(*surpluses, strict=True)]
        return [
            -sum(s / top for s, top in zip(surplus, largest, strict=True) if top > 0) / 3
            for surplus in surpluses
        ]

    def sql_weight(self, spec: RequestSpec) -> ColumnElement[Any]:
        terms = []
        for column, wanted in (
            (Node.cpus, spec.cpus),
            (Node.memory_mb, spec.memory_mb),
            (Node.disk_gb, spec.disk_gb),
        ):
            surplus = cast(col(column) - wanted, Float)
            largest = cast(func.max(col(column)).over() - wanted, Float)
            terms.append(case((largest > 0, surplus / largest), else_=0.0))
        return -(terms[0] + terms[1] + terms[2]) / 3


DEFAULT_WEIGHERS: tuple[Weigher, ...] = (BestFitWeigher(),)


def rank(
    candidates: Sequence[Candidate],
    spec: RequestSpec,
    weighers: Sequence[Weigher] = DEFAULT_WEIGHERS,
    rng: random.Random | None = None,
) -> list[Candidate]:
    """The candidates best first; equally good ones in random order."""
    shuffled = list(candidates)
    (rng.shuffle if rng is not None else random.shuffle)(shuffled)
    totals = [0.0] * len(shuffled)
    for weigher in weighers:
        for index, weight in enumerate(weigher.weights(shuffled, spec)):
            totals[index] += weight
    order = sorted(range(len(shuffled)), key=lambda index: -totals[index])
    return [shuffled[index] for index in order]
