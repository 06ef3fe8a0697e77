"""Nodes are tried best fit first, equal ones in random order."""

from __future__ import annotations

import random

from services.scheduler.filters import Candidate
from services.scheduler.request import RequestSpec
from services.scheduler.weighers import BestFitWeigher, Weigher, rank

SPEC = RequestSpec(
    instance_id="i-1",
    flavor_name="baremetal",
    resource_class="baremetal",
    cpus=4,
    memory_mb=8192,
    disk_gb=100,
    port_count=1,
)


def node(name: str, cpus: int = 4, memory_mb: int = 8192, disk_gb: int = 100) -> Candidate:
    return Candidate(id=name, cpus=cpus, memory_mb=memory_mb, disk_gb=disk_gb)


def names(candidates: list[Candidate]) -> list[str]:
    return [c.id for c in candidates]


def test_the_smallest_node_that_fits_comes_first():
    candidates = [
        node("huge", cpus=64, memory_mb=524288, disk_gb=8000),
        node("exact"),
        node("medium", cpus=8, memory_mb=16384, disk_gb=200),
    ]

    assert names(rank(candidates, SPEC, rng=random.Random(1))) == ["exact", "medium", "huge"]


def test_surplus_is_compared_relative_to_the_largest_surplus_of_each_resource():
    # In raw numbers 1024 MB of spare memory dwarfs 2 spare cpus, but measured against the
    # largest surplus of each resource the 2 cpus are half of everything spare.
    candidates = [
        node("two-spare-cpus", cpus=6),
        node("a-little-spare-memory", memory_mb=8192 + 1024),
        node("everything-spare", cpus=8, memory_mb=8192 + 65536, disk_gb=300),
    ]

    assert names(rank(candidates, SPEC, rng=random.Random(1))) == [
        "a-little-spare-memory",
        "two-spare-cpus",
        "everything-spare",
    ]


def test_best_fit_weights_range_from_minus_one_to_zero():
    candidates = [node("exact"), node("biggest", cpus=8, memory_mb=16384, disk_gb=200)]

    assert BestFitWeigher().weights(candidates, SPEC) == [0.0, -1.0]
    assert BestFitWeigher().weights([], SPEC) == []


def test_equal_nodes_come_in_random_order_so_schedulers_spread_out():
    candidates = [node(f"twin-{i}") for i in range(5)]

    firsts = {rank(candidates, SPEC, rng=random.Random(seed))[0].id for seed in range(30)}

    assert len(firsts) > 1
    assert sorted(names(rank(candidates, SPEC))) == sorted(names(candidates))


def test_equal_nodes_still_come_after_better_fits():
    candidates = [node("big-1", cpus=8), node("exact"), node("big-2", cpus=8)]

    for seed in range(10):
        assert rank(candidates, SPEC, rng=random.Random(seed))[0].id == "exact"


def test_weights_of_several_weighers_add_up():
    class PreferNamed(Weigher):
        def weights(self, candidates, spec):
            return [2.0 if c.id == "favourite" else 0.0 for c in candidates]

    candidates = [node("exact"), node("favourite", cpus=64)]

    ranked = rank(candidates, SPEC, [BestFitWeigher(), PreferNamed()], random.Random(1))

    assert names(ranked) == ["favourite", "exact"]
