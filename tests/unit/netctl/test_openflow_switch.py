"""The OpenFlow backend's bookkeeping against a switch double that applies the flow
messages it is sent (os-ken's real OpenFlow 1.3 message classes, no network): what a
switch holds after connecting, binding, unbinding and renumbering, judged by where it
would send packets."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace
from typing import Any

import pytest
from os_ken.ofproto import ofproto_v1_3, ofproto_v1_3_parser

from libs.db import Port
from libs.errors import BadRequest
from services.netctl.backends import make_backend
from services.netctl.openflow.controller import port_numbers
from services.netctl.openflow.flows import (
    COOKIE_PREFIX,
    Drop,
    Flow,
    FlowKey,
    Output,
    SetSegment,
    match_of,
    segment_cookie,
)
from services.netctl.openflow.switch import Attachment, OpenFlowSwitch
from services.netctl.settings import NetctlSettings
from tests.unit.netctl.test_flows import BROADCAST, deliver

DPID = 0x7E75_0000_0001
PROVISIONING = 4000


class SwitchDouble:
    """Looks like os-ken's Datapath to the backend; keeps the flows it is sent."""

    ofproto = ofproto_v1_3
    ofproto_parser = ofproto_v1_3_parser

    def __init__(self, ports: dict[str, int], datapath_id: int = DPID) -> None:
        self.id = datapath_id
        self.ports: dict[int, Any] = {}
        self.xid = 0
        self.flows: dict[FlowKey, Flow] = {}
        self.barriers: list[int] = []
        self.requests: list[Any] = []
        self.on_barrier: Any = None
        for name, number in ports.items():
            self.plug(name, number)

    def plug(self, name: str, number: int) -> None:
        self.ports = {n: p for n, p in self.ports.items() if p.name != name.encode()}
        self.ports[number] = ofproto_v1_3_parser.OFPPort(
            number, "00:00:00:00:00:01", name.encode(), 0, 0, 0, 0, 0, 0, 0, 0
        )

    def set_xid(self, msg: Any) -> int:
        self.xid += 1
        msg.set_xid(self.xid)
        return self.xid

    def send_msg(self, msg: Any) -> None:
        if msg.xid is None:
            self.set_xid(msg)
        if isinstance(msg, ofproto_v1_3_parser.OFPFlowMod):
            flow = _as_flow(msg)
            if msg.command == ofproto_v1_3.OFPFC_ADD:
                self.flows[flow.key] = flow
            elif (
                msg.command == ofproto_v1_3.OFPFC_DELETE_STRICT
                and self.flows.get(flow.key, flow).cookie == msg.cookie
            ):
                self.flows.pop(flow.key, None)
        elif isinstance(msg, ofproto_v1_3_parser.OFPBarrierRequest):
            self.barriers.append(msg.xid)
            if self.on_barrier:
                self.on_barrier(msg.xid)
        else:
            self.requests.append(msg)

    def listing(self) -> list[Any]:
        """The switch's answer to a flow listing (its flows as FlowStats)."""
        return [
            SimpleNamespace(
                table_id=f.table,
                priority=f.priority,
                cookie=f.cookie,
                match=ofproto_v1_3_parser.OFPMatch(**dict(f.match)),
            )
            for f in self.flows.values()
            if f.cookie & COOKIE_PREFIX == COOKIE_PREFIX
        ]


def _as_flow(msg: Any) -> Flow:
    match = match_of(**dict(msg.match.items()))
    instructions: Any = Drop()
    for instruction in msg.instructions:
        if isinstance(instruction, ofproto_v1_3_parser.OFPInstructionWriteMetadata):
            instructions = SetSegment(instruction.metadata)
        elif isinstance(instruction, ofproto_v1_3_parser.OFPInstructionActions):
            instructions = Output(tuple(action.port for action in instruction.actions))
    return Flow(msg.table_id, msg.priority, match, msg.cookie, instructions)


def port(name: str, mac: str, switch_id: str = "00007e7500000001") -> Port:
    return Port(id=f"port-{name}", address=mac, node_id="n", switch_id=switch_id, switch_port=name)


A1, A2, B1 = (
    port("vnet1", "52:54:00:00:00:a1"),
    port("vnet2", "52:54:00:00:00:a2"),
    port("vnet3", "52:54:00:00:00:b1"),
)


@pytest.fixture
def backend() -> OpenFlowSwitch:
    settings = NetctlSettings(
        backend="openflow",
        openflow_listen_port=0,
        provisioning_segmentation_id=PROVISIONING,
        provisioning_ports=[f"{DPID:016x}:boot0"],
    )
    switch = make_backend(settings)
    assert isinstance(switch, OpenFlowSwitch)
    return switch


def connect(backend: OpenFlowSwitch, switch: SwitchDouble) -> None:
    """What os-ken reports when a switch connects and answers the flow listing."""
    backend.switch_ready(switch)
    request = switch.requests[-1]
    assert isinstance(request, ofproto_v1_3_parser.OFPFlowStatsRequest)
    assert (request.cookie, request.cookie_mask) == (COOKIE_PREFIX, 0xFFFF << 48)
    backend.flows_listed(switch, request.xid, switch.listing(), more=False)


def test_a_connecting_switch_gets_the_wiring_and_loses_stale_flows(backend):
    backend.bind(A1, 101)
    backend.bind(A2, 101)
    backend.bind(B1, 102)
    switch = SwitchDouble({"vnet1": 1, "vnet2": 2, "vnet3": 3, "boot0": 9, "vnet4": 4})
    stale = Flow(0, 100, match_of(in_port=4), segment_cookie(101), SetSegment(101))
    switch.flows[stale.key] = stale  # left from before netctl restarted

    connect(backend, switch)

    assert deliver(switch.flows, 1, BROADCAST) == {2}
    assert deliver(switch.flows, 3, BROADCAST) == set()  # alone in its network
    assert deliver(switch.flows, 4, BROADCAST) == set()  # the stale flow is gone
    assert deliver(switch.flows, 9, BROADCAST) == set()  # the boot server: nobody provisioned
    assert backend.connected() == [DPID]


def test_connecting_again_to_a_programmed_switch_changes_nothing(backend):
    backend.bind(A1, 101)
    backend.bind(A2, 101)
    switch = SwitchDouble({"vnet1": 1, "vnet2": 2})
    connect(backend, switch)
    before = dict(switch.flows)

    connect(backend, switch)

    assert switch.flows == before


def test_binding_reprograms_a_connected_switch_and_waits_for_its_confirmation(backend):
    switch = SwitchDouble({"vnet1": 1, "vnet2": 2, "vnet3": 3, "boot0": 9})
    connect(backend, switch)
    switch.on_barrier = lambda xid: threading.Timer(
        0.2, backend.barrier_reached, (switch, xid)
    ).start()

    started = time.monotonic()
    backend.bind(A1, 101)
    backend.bind(A2, 101)
    took = time.monotonic() - started

    assert 0.4 <= took < 2
    assert deliver(switch.flows, 1, A2.address) == {2}

    backend.bind(A2, PROVISIONING)  # being deployed: the boot server's network
    assert deliver(switch.flows, 9, A2.address) == {2}
    assert deliver(switch.flows, 1, BROADCAST) == set()

    backend.unbind(A2)
    assert deliver(switch.flows, 2, BROADCAST) == set()
    assert deliver(switch.flows, 9, BROADCAST) == set()
    assert backend.wiring() == {
        Attachment(DPID, "vnet1"): 101,
        Attachment(DPID, "boot0"): PROVISIONING,
    }


def test_a_port_that_reappears_with_another_number_is_followed(backend):
    backend.bind(A1, 101)
    backend.bind(A2, 101)
    switch = SwitchDouble({"vnet1": 1, "vnet2": 2})
    connect(backend, switch)

    switch.plug("vnet2", 7)  # libvirt re-created the guest's port at power on
    backend.ports_changed(switch)

    assert deliver(switch.flows, 1, BROADCAST) == {7}
    assert deliver(switch.flows, 2, BROADCAST) == set()


def test_events_of_a_replaced_connection_are_ignored(backend):
    backend.bind(A1, 101)
    old, new = SwitchDouble({"vnet1": 1}), SwitchDouble({"vnet1": 1})
    connect(backend, old)
    connect(backend, new)

    backend.switch_gone(old)  # the old connection's end, reported late

    assert backend.connected() == [DPID]
    backend.switch_gone(new)
    assert backend.connected() == []


def test_a_port_without_a_switch_attachment_cannot_be_wired(backend):
    with pytest.raises(BadRequest, match="switch attachment"):
        backend.bind(Port(id="p", address="52:54:00:00:00:01", node_id="n"), 101)
    with pytest.raises(BadRequest, match="datapath id"):
        backend.bind(port("vnet1", "52:54:00:00:00:01", switch_id="tor-7"), 101)


def test_the_controller_starts_listening_and_stops_cleanly_twice(backend):
    before = threading.active_count()
    for _ in range(2):
        backend.start([(A1, 101)])
        assert backend.listener.port > 0
        backend.stop()
    assert threading.active_count() == before
    assert backend.wiring()[Attachment(DPID, "vnet1")] == 101


def test_the_bridge_port_is_an_attachment_point_and_other_reserved_ports_are_not():
    switch = SwitchDouble({"eth1": 1, "br0": ofproto_v1_3.OFPP_LOCAL})
    switch.plug("controller", ofproto_v1_3.OFPP_CONTROLLER)
    assert port_numbers(switch) == {"eth1": 1, "br0": ofproto_v1_3.OFPP_LOCAL}
