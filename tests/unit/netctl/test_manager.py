"""The network controller wires ports on the switch and records where each one is wired."""

from __future__ import annotations

import threading

import pytest

from libs import rpc
from libs.db import Database, Network, Node, Port, PortBinding, Project
from libs.errors import NotFound
from services.netctl.backends import (
    FakeSwitch,
    SwitchPort,
    UnknownBackend,
    make_backend,
)
from services.netctl.manager import NetworkManager
from services.netctl.rpcapi import NetworkAPI
from services.netctl.service import NetctlService
from services.netctl.settings import NetctlSettings

CTXT = rpc.RequestContext(request_id="req-test")


@pytest.fixture
def settings() -> NetctlSettings:
    return NetctlSettings(hostname="netctl-1", provisioning_segmentation_id=4000, workers=2)


@pytest.fixture
def rows(db):
    """A node with two ports (one cabled to a switch port) and two tenant networks."""
    with db.session() as session:
        project = Project(name="p")
        node = Node(name="n1", resource_class="baremetal")
        session.add_all([project, node])
        session.flush()
        cabled = Port(
            address="52:54:00:00:00:01", node_id=node.id, switch_id="0x1", switch_port="eth7"
        )
        uncabled = Port(address="52:54:00:00:00:02", node_id=node.id)
        blue = Network(name="blue", project_id=project.id, segmentation_id=101)
        red = Network(name="red", project_id=project.id, segmentation_id=102)
        session.add_all([cabled, uncabled, blue, red])
    return {"cabled": cabled, "uncabled": uncabled, "blue": blue, "red": red}


@pytest.fixture
def switch() -> FakeSwitch:
    return FakeSwitch()


@pytest.fixture
def manager(settings, db, switch) -> NetworkManager:
    return NetworkManager(settings, db, switch)


def stored(db: Database, port_id: str) -> Port:
    with db.session() as session:
        port = session.get(Port, port_id)
    assert port is not None
    return port


def test_bind_wires_the_port_into_the_networks_segment(db, rows, switch, manager):
    port, blue = rows["cabled"], rows["blue"]

    result = manager.bind_port(CTXT, port.id, blue.id)

    assert result == {
        "id": port.id,
        "address": "52:54:00:00:00:01",
        "binding": "tenant",
        "network_id": blue.id,
        "segmentation_id": 101,
    }
    assert switch.wiring() == {SwitchPort("0x1", "eth7"): 101}
    after = stored(db, port.id)
    assert (after.binding, after.network_id) == (PortBinding.TENANT, blue.id)


def test_provision_wires_the_port_into_the_provisioning_segment(db, rows, switch, manager):
    port = rows["uncabled"]
    manager.bind_port(CTXT, port.id, rows["red"].id)

    result = manager.provision_port(CTXT, port.id)

    assert (result["binding"], result["network_id"], result["segmentation_id"]) == (
        "provisioning",
        None,
        4000,
    )
    assert switch.segment_of(port) == 4000
    after = stored(db, port.id)
    assert (after.binding, after.network_id) == (PortBinding.PROVISIONING, None)


def test_unbind_isolates_the_port(db, rows, switch, manager):
    port = rows["cabled"]
    manager.bind_port(CTXT, port.id, rows["blue"].id)

    result = manager.unbind_port(CTXT, port.id)

    assert (result["binding"], result["network_id"], result["segmentation_id"]) == (
        "none",
        None,
        None,
    )
    assert switch.segment_of(port) is None
    assert switch.wiring() == {}
    assert stored(db, port.id).binding == PortBinding.NONE


def test_repeating_a_call_changes_nothing(db, rows, switch, manager):
    port, blue = rows["cabled"], rows["blue"]

    first = manager.bind_port(CTXT, port.id, blue.id)
    again = manager.bind_port(CTXT, port.id, blue.id)
    assert again == first
    assert switch.wiring() == {SwitchPort("0x1", "eth7"): 101}

    manager.unbind_port(CTXT, port.id)
    assert manager.unbind_port(CTXT, port.id)["binding"] == "none"
    assert switch.wiring() == {}


def test_moving_a_port_between_networks_leaves_it_in_the_new_one_only(rows, switch, manager):
    port = rows["cabled"]

    manager.bind_port(CTXT, port.id, rows["blue"].id)
    manager.bind_port(CTXT, port.id, rows["red"].id)

    assert switch.wiring() == {SwitchPort("0x1", "eth7"): 102}


def test_ports_are_wired_independently(rows, switch, manager):
    manager.bind_port(CTXT, rows["cabled"].id, rows["blue"].id)
    manager.provision_port(CTXT, rows["uncabled"].id)

    assert switch.segment_of(rows["cabled"]) == 101
    assert switch.segment_of(rows["uncabled"]) == 4000


def test_unknown_port_or_network_is_not_found_and_touches_nothing(db, rows, switch, manager):
    port = rows["cabled"]

    with pytest.raises(NotFound):
        manager.bind_port(CTXT, "no-such-port", rows["blue"].id)
    with pytest.raises(NotFound):
        manager.bind_port(CTXT, port.id, "no-such-network")
    with pytest.raises(NotFound):
        manager.provision_port(CTXT, "no-such-port")
    with pytest.raises(NotFound):
        manager.unbind_port(CTXT, "no-such-port")

    assert switch.wiring() == {}
    assert stored(db, port.id).binding == PortBinding.NONE


def test_a_switch_that_fails_leaves_the_recorded_wiring_as_it_was(db, rows, switch, manager):
    port = rows["cabled"]
    manager.bind_port(CTXT, port.id, rows["blue"].id)

    def broken(*_args: object) -> None:
        raise RuntimeError("switch unreachable")

    switch.bind = broken
    switch.unbind = broken
    with pytest.raises(RuntimeError, match="unreachable"):
        manager.bind_port(CTXT, port.id, rows["red"].id)
    with pytest.raises(RuntimeError, match="unreachable"):
        manager.provision_port(CTXT, port.id)
    with pytest.raises(RuntimeError, match="unreachable"):
        manager.unbind_port(CTXT, port.id)

    # The database still says what the switch still does.
    assert (stored(db, port.id).binding, stored(db, port.id).network_id) == (
        PortBinding.TENANT,
        rows["blue"].id,
    )


def test_the_service_answers_the_conductors_calls(settings, db, rows, memory_transport):
    service = NetctlService(settings, db, memory_transport)
    api = NetworkAPI(memory_transport, timeout=5)
    service.start()
    try:
        result = api.bind_port(CTXT, rows["cabled"].id, rows["blue"].id)
        with pytest.raises(NotFound):
            api.provision_port(CTXT, "no-such-port")
    finally:
        service.stop()

    assert result["segmentation_id"] == 101
    assert isinstance(service.backend, FakeSwitch)
    assert service.backend.segment_of(rows["cabled"]) == 101


def test_an_unknown_backend_name_is_refused_at_start(settings, db, memory_transport):
    settings = settings.model_copy(update={"backend": "openflow-typo"})

    with pytest.raises(UnknownBackend, match="openflow-typo"):
        make_backend(settings)
    with pytest.raises(UnknownBackend):
        NetctlService(settings, db, memory_transport)


def test_concurrent_calls_on_one_port_leave_switch_and_database_agreeing(db, rows, switch, manager):
    port = rows["cabled"]
    segments = {rows["blue"].id: 101, rows["red"].id: 102}
    networks = list(segments) * 10

    def bind(network_id: str) -> None:
        manager.bind_port(CTXT, port.id, network_id)

    threads = [threading.Thread(target=bind, args=(n,)) for n in networks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)

    after = stored(db, port.id)
    assert after.network_id is not None
    assert switch.segment_of(port) == segments[after.network_id]


def test_a_call_nobody_answers_yet_is_sent_again_until_netctl_is_there(
    settings, db, rows, memory_transport
):
    """A broker or netctl restarting must not fail the conductor's deploy step."""
    service = NetctlService(settings, db, memory_transport)
    api = NetworkAPI(memory_transport, timeout=5, retry_for=30)
    starter = threading.Timer(0.5, service.start)  # netctl comes up half a second late
    starter.start()
    try:
        result = api.provision_port(CTXT, rows["cabled"].id)
    finally:
        starter.join()
        service.stop()

    assert result["segmentation_id"] == settings.provisioning_segmentation_id
    assert stored(db, rows["cabled"].id).binding == PortBinding.PROVISIONING


def test_a_call_nobody_answers_fails_once_its_retry_time_is_over(rows, memory_transport):
    api = NetworkAPI(memory_transport, timeout=5, retry_for=0.3)

    with pytest.raises(rpc.NoConsumer):
        api.unbind_port(CTXT, rows["cabled"].id)


def test_a_starting_netctl_programs_the_switch_with_what_the_database_records(
    settings, db, rows, manager, memory_transport
):
    """netctl restarted: its new backend starts from the recorded wiring, not from empty."""
    manager.bind_port(CTXT, rows["cabled"].id, rows["blue"].id)
    manager.provision_port(CTXT, rows["uncabled"].id)

    service = NetctlService(settings, db, memory_transport)
    service.start()
    service.stop()

    assert isinstance(service.backend, FakeSwitch)
    assert service.backend.segment_of(rows["cabled"]) == 101
    assert service.backend.segment_of(rows["uncabled"]) == 4000
    assert len(service.backend.wiring()) == 2
