"""The database ranks the candidates exactly as the weighers do in Python, and hands back
only the best ones, equally good ones in random order; with few hardware shapes the
scheduler weighs the shapes and reads the nodes of the best ones."""

from __future__ import annotations

import random

import pytest

from libs.rpc import MemoryTransport
from services.scheduler import manager as manager_module
from services.scheduler.filters import (
    DEFAULT_FILTERS,
    Candidate,
    best_candidates,
    find_candidates,
    nodes_of_shape,
)
from services.scheduler.manager import SchedulerManager
from services.scheduler.request import RequestSpec
from services.scheduler.settings import SchedulerSettings
from services.scheduler.weighers import BestFitWeigher
from tests.unit.scheduler.estate import Estate

SPEC = RequestSpec(
    instance_id="i-1",
    flavor_name="baremetal",
    resource_class="baremetal",
    cpus=4,
    memory_mb=8192,
    disk_gb=100,
    port_count=1,
)

SIZES = {
    "exact": (4, 8192, 100),
    "more-disk": (4, 8192, 400),
    "medium": (8, 16384, 200),
    "more-cpus": (32, 8192, 100),
    "huge": (64, 524288, 8000),
}


@pytest.fixture
def estate(db):
    estate = Estate(db)
    for name, (cpus, memory_mb, disk_gb) in SIZES.items():
        estate.node(name, cpus=cpus, memory_mb=memory_mb, disk_gb=disk_gb)
    estate.node("too-small", cpus=2)
    estate.node("busy", provision_state="active")
    return estate


def ranked(estate: Estate, limit: int) -> list[str]:
    weigher = BestFitWeigher()
    with estate.db.session() as session:
        best = best_candidates(session, SPEC, DEFAULT_FILTERS, [weigher.sql_weight(SPEC)], limit)
    return [estate.get_node(c.id).name for c in best]


def test_the_database_orders_the_candidates_by_the_python_weights(estate):
    with estate.db.session() as session:
        candidates = find_candidates(session, SPEC)
    weights = BestFitWeigher().weights(candidates, SPEC)
    by_name = {estate.get_node(c.id).name: w for c, w in zip(candidates, weights, strict=True)}
    expected = sorted(by_name, key=lambda name: -by_name[name])

    assert ranked(estate, limit=50) == expected
    assert expected[0] == "exact" and expected[-1] == "huge"


def test_only_the_best_few_come_back(estate):
    assert ranked(estate, limit=2) == ["exact", "more-disk"]


def test_equally_good_nodes_come_in_random_order(db):
    estate = Estate(db)
    for i in range(8):
        estate.node(f"twin-{i}")
    firsts = {ranked(estate, limit=1)[0] for _ in range(40)}
    assert len(firsts) > 1


def test_ranking_by_shape_gives_the_nodes_of_the_best_shapes_first(db, monkeypatch):
    """With a few hardware shapes the scheduler weighs the shapes, then reads nodes of the
    best shapes by id from a random pivot: the same order of shapes as ranking every node,
    and the ids wrap around past the pivot."""
    estate = Estate(db)
    flavor = estate.flavor(cpus=4, memory_mb=8192, disk_gb=100)
    sizes = {"snug": (4, 8192, 100), "mid": (8, 16384, 200), "big": (64, 262144, 4000)}
    for name, (cpus, memory_mb, disk_gb) in sizes.items():
        for i in range(3):
            estate.node(f"{name}-{i}", cpus=cpus, memory_mb=memory_mb, disk_gb=disk_gb)
    estate.node("too-small", cpus=2)
    spec = RequestSpec.for_instance(estate.instance(flavor), flavor)
    manager = SchedulerManager(
        SchedulerSettings(hostname="s"), db, MemoryTransport(), rng=random.Random(3)
    )

    by_shape = manager.ranked_candidates(spec)
    monkeypatch.setattr(manager_module, "MAX_SHAPES", 1)  # too many shapes: node by node
    by_node = manager.ranked_candidates(spec)

    def shapes(candidates: list[Candidate]) -> list[tuple[int, int, int]]:
        return [(c.cpus, c.memory_mb, c.disk_gb) for c in candidates]

    assert (
        shapes(by_shape)
        == shapes(by_node)
        == [sizes["snug"]] * 3 + [sizes["mid"]] * 3 + [sizes["big"]] * 3
    )
    assert len({c.id for c in by_shape}) == 9


def test_nodes_of_a_shape_start_at_the_pivot_and_wrap_around(db):
    estate = Estate(db)
    flavor = estate.flavor(cpus=1, memory_mb=1, disk_gb=1)
    ids = sorted(estate.node(f"n{i}").id for i in range(5))
    spec = RequestSpec.for_instance(estate.instance(flavor), flavor)
    shape = Candidate(id="", cpus=4, memory_mb=8192, disk_gb=100)
    with db.session() as session:
        found = nodes_of_shape(session, spec, DEFAULT_FILTERS, shape, 4, ids[3])
    assert [c.id for c in found] == [ids[3], ids[4], ids[0], ids[1]]
