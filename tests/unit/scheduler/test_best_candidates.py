"""The database ranks the candidates exactly as the weighers do in Python, and hands back
only the best ones, equally good ones in random order."""

from __future__ import annotations

import pytest

from services.scheduler.filters import DEFAULT_FILTERS, best_candidates, find_candidates
from services.scheduler.request import RequestSpec
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
