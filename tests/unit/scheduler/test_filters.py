"""Each filter keeps the nodes that can take the instance, and "no valid host" says why."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from libs.db import Node
from services.scheduler.filters import (
    AvailableFilter,
    ExcludeFailedFilter,
    NodeFilter,
    PortsFilter,
    PropertiesFilter,
    ResourceClassFilter,
    count_by_filter,
    find_candidates,
    no_valid_host_reason,
)
from services.scheduler.request import RequestSpec
from tests.unit.scheduler.estate import Estate


@pytest.fixture
def estate(db):
    return Estate(db)


BASE = RequestSpec(
    instance_id="i-1",
    flavor_name="baremetal",
    resource_class="baremetal",
    cpus=4,
    memory_mb=8192,
    disk_gb=100,
    port_count=1,
)


def spec(**changes: Any) -> RequestSpec:
    return dataclasses.replace(BASE, **changes)


def passing(estate: Estate, request: RequestSpec, node_filter: NodeFilter) -> set[str]:
    with estate.db.session() as session:
        candidates = find_candidates(session, request, [node_filter])
    return {estate.get_node(c.id).name for c in candidates}


def test_resource_class_filter_keeps_the_flavors_kind_of_hardware(estate):
    estate.node("bm-1")
    estate.node("gpu-1", resource_class="gpu")

    assert passing(estate, spec(resource_class="gpu"), ResourceClassFilter()) == {"gpu-1"}


def test_properties_filter_needs_every_resource_at_least_the_flavors(estate):
    estate.node("exact")
    estate.node("bigger", cpus=64, memory_mb=262144, disk_gb=4000)
    estate.node("few-cpus", cpus=2)
    estate.node("little-memory", memory_mb=4096)
    estate.node("small-disk", disk_gb=50)

    assert passing(estate, spec(), PropertiesFilter()) == {"exact", "bigger"}


def test_available_filter_keeps_free_available_nodes_only(estate):
    estate.node("free")
    estate.node("manageable", provision_state="manageable")
    estate.node("active", provision_state="active")
    estate.node("in-maintenance", maintenance=True)
    estate.node("claimed", instance_id="someone-else")
    estate.node("locked", reservation="cond-1")  # a conductor busy with it for a moment

    assert passing(estate, spec(), AvailableFilter()) == {"free", "locked"}


def test_ports_filter_needs_a_port_per_network(estate):
    estate.node("no-port", ports=0)
    estate.node("one-port", ports=1)
    estate.node("two-ports", ports=2)

    assert passing(estate, spec(port_count=2), PortsFilter()) == {"two-ports"}
    assert passing(estate, spec(port_count=0), PortsFilter()) == {
        "no-port",
        "one-port",
        "two-ports",
    }


def test_exclude_failed_filter_skips_nodes_a_deploy_failed_on(estate):
    failed = estate.node("failed-before")
    estate.node("fresh")

    request = spec(excluded_node_ids=frozenset({failed.id}))
    assert passing(estate, request, ExcludeFailedFilter()) == {"fresh"}
    assert passing(estate, spec(), ExcludeFailedFilter()) == {"failed-before", "fresh"}


def test_candidates_pass_all_filters_with_their_sizes(estate):
    good = estate.node("good", cpus=8)
    estate.node("busy", instance_id="other")
    estate.node("tiny", cpus=1)

    with estate.db.session() as session:
        candidates = find_candidates(session, spec())

    assert [(c.id, c.cpus, c.memory_mb, c.disk_gb) for c in candidates] == [(good.id, 8, 8192, 100)]


def test_reason_names_the_filter_that_removed_every_node(estate):
    for i in range(20):
        estate.node(f"busy-{i}", provision_state="active")

    with estate.db.session() as session:
        reason = no_valid_host_reason(session, spec())

    assert reason == (
        "no valid host for flavor 'baremetal' (resource class 'baremetal'): "
        "20 nodes; 0 left after AvailableFilter (20 removed)"
    )


def test_reason_counts_what_each_filter_removed_in_turn(estate):
    estate.node("gpu", resource_class="gpu")
    estate.node("small", cpus=1)
    estate.node("no-port", ports=0)
    failed = estate.node("failed")
    estate.node("busy", instance_id="other")

    request = spec(excluded_node_ids=frozenset({failed.id}))
    with estate.db.session() as session:
        total, counts = count_by_filter(session, request)
        reason = no_valid_host_reason(session, request)

    assert total == 5
    assert [(c.name, c.left, c.removed) for c in counts] == [
        ("ResourceClassFilter", 4, 1),
        ("PropertiesFilter", 3, 1),
        ("AvailableFilter", 2, 1),
        ("PortsFilter", 1, 1),
        ("ExcludeFailedFilter", 0, 1),
    ]
    assert reason.endswith(
        ": 5 nodes; 4 left after ResourceClassFilter (1 removed); "
        "3 left after PropertiesFilter (1 removed); 2 left after AvailableFilter (1 removed); "
        "1 left after PortsFilter (1 removed); 0 left after ExcludeFailedFilter (1 removed)"
    )


def test_reason_with_no_nodes_at_all(estate):
    with estate.db.session() as session:
        reason = no_valid_host_reason(session, spec(flavor_name="big", resource_class="xl"))

    assert reason == "no valid host for flavor 'big' (resource class 'xl'): 0 nodes"


def test_the_one_free_node_among_thousands_is_found(estate):
    with estate.db.session() as session:
        session.add_all(
            Node(
                name=f"n{i}",
                resource_class="baremetal",
                cpus=4 + i % 3,
                memory_mb=8192,
                disk_gb=100,
                provision_state="active",
            )
            for i in range(3000)
        )
    free = estate.node("the-free-one")

    with estate.db.session() as session:
        candidates = find_candidates(session, spec(port_count=0))
        reason = no_valid_host_reason(session, spec(port_count=0))

    assert [c.id for c in candidates] == [free.id]
    assert reason.endswith(": 3001 nodes; 1 left after AvailableFilter (3000 removed)")
