"""The flows computed for a switch, judged by where they send packets: a small model of an
OpenFlow 1.3 pipeline runs each packet through them."""

from __future__ import annotations

import pytest

from services.netctl.openflow.flows import (
    BASE_COOKIE,
    CLASSIFY_TABLE,
    COOKIE_PREFIX,
    COOKIE_PREFIX_MASK,
    PRIORITY_CLASSIFY,
    Drop,
    Flow,
    FlowKey,
    InvalidDatapathId,
    Member,
    Output,
    SetSegment,
    changes,
    match_of,
    parse_datapath_id,
    parse_switch_port,
    segment_cookie,
    switch_flows,
)
from services.netctl.settings import NetctlSettings

BROADCAST = "ff:ff:ff:ff:ff:ff"
MAC = {port: f"52:54:00:00:00:{port:02x}" for port in range(1, 10)}


def deliver(flows: dict[FlowKey, Flow], in_port: int, eth_dst: str) -> set[int]:
    """The ports a packet entering at ``in_port`` for ``eth_dst`` leaves by."""
    fields: dict[str, int | str] = {"in_port": in_port, "eth_dst": eth_dst.lower()}
    table = CLASSIFY_TABLE
    while True:
        candidates = [
            flow
            for flow in flows.values()
            if flow.table == table and all(fields.get(k) == v for k, v in flow.match)
        ]
        assert candidates, f"no flow in table {table} (not even a drop flow)"
        best = max(candidates, key=lambda flow: flow.priority)
        assert sum(1 for flow in candidates if flow.priority == best.priority) == 1, "ambiguous"
        match best.instructions:
            case Drop():
                return set()
            case SetSegment(segment):
                fields["metadata"] = segment
                table += 1
            case Output(ports):
                return set(ports) - {in_port}  # never back out of the ingress port


def tenants() -> list[Member]:
    """Ports 1, 2 in segment 101; 3, 4 in 102; 5 in provisioning (4000); 6 bound to nothing."""
    return [
        Member(1, 101, (MAC[1],)),
        Member(2, 101, (MAC[2],)),
        Member(3, 102, (MAC[3],)),
        Member(4, 102, (MAC[4],)),
        Member(5, 4000),
    ]


def test_unicast_reaches_the_addressed_port_of_the_same_network_only():
    flows = switch_flows(tenants())

    assert deliver(flows, 1, MAC[2]) == {2}
    assert deliver(flows, 3, MAC[4]) == {4}
    # Another network's machine is never reached, even by its MAC address: the frame is
    # unknown in this network, so only this network's ports see it.
    assert deliver(flows, 1, MAC[3]) == {2}
    assert deliver(flows, 4, MAC[1]) == {3}


def test_broadcast_and_unknown_unicast_are_flooded_within_the_network():
    flows = switch_flows([*tenants(), Member(7, 101, (MAC[7],))])

    assert deliver(flows, 1, BROADCAST) == {2, 7}  # ARP requests, DHCP discovers
    assert deliver(flows, 1, "33:33:ff:00:00:02") == {2, 7}  # IPv6 neighbour solicitation
    assert deliver(flows, 3, BROADCAST) == {4}
    assert deliver(flows, 1, "52:54:00:ab:cd:ef") == {2, 7}  # unknown: flooded, in 101 only


def test_a_port_bound_to_nothing_or_unknown_is_dropped_both_ways():
    flows = switch_flows(tenants())

    assert deliver(flows, 6, BROADCAST) == set()
    assert deliver(flows, 6, MAC[1]) == set()
    assert all(6 not in deliver(flows, port, BROADCAST) for port in range(1, 6))


def test_no_ports_means_only_the_drop_flows():
    flows = switch_flows([])

    assert [flow.instructions for flow in flows.values()] == [Drop(), Drop()]
    assert deliver(flows, 1, BROADCAST) == set()


def test_a_mac_seen_behind_two_ports_is_flooded_rather_than_sent_to_one():
    flows = switch_flows([Member(1, 101, (MAC[1],)), Member(2, 101, (MAC[1],)), Member(3, 101)])

    assert deliver(flows, 3, MAC[1]) == {1, 2}


def test_every_flow_carries_its_networks_cookie_under_tetsus_prefix():
    flows = switch_flows(tenants())

    for flow in flows.values():
        assert flow.cookie & COOKIE_PREFIX_MASK == COOKIE_PREFIX
        if isinstance(flow.instructions, Drop):
            assert flow.cookie == BASE_COOKIE
    by_cookie = {flow.cookie for flow in flows.values()}
    assert by_cookie == {
        BASE_COOKIE,
        segment_cookie(101),
        segment_cookie(102),
        segment_cookie(4000),
    }
    # Removing network 102's flows by its cookie leaves 101 working and 102's ports dropped.
    remaining = {k: f for k, f in flows.items() if f.cookie != segment_cookie(102)}
    assert deliver(remaining, 1, MAC[2]) == {2}
    assert deliver(remaining, 3, MAC[4]) == set()


def test_the_same_wiring_gives_the_same_flows_so_pushing_again_changes_nothing():
    first, again = switch_flows(tenants()), switch_flows(list(reversed(tenants())))

    assert first == again
    assert changes(first, again) == ([], [])


def test_moving_a_port_changes_only_what_it_must_and_leaves_no_way_back():
    before = switch_flows(tenants())
    moved = [Member(2, 102, (MAC[2],)) if m.port_no == 2 else m for m in tenants()]
    after = switch_flows(moved)

    add, delete = changes(before, after)
    applied = {k: f for k, f in before.items() if f not in delete} | {f.key: f for f in add}

    assert applied == after
    assert deliver(applied, 2, MAC[3]) == {3}
    assert deliver(applied, 1, MAC[2]) == set()
    assert deliver(applied, 1, BROADCAST) == set()
    # The other ports' own flows are not sent again: their traffic is not disturbed.
    touched = {flow.key for flow in add} | {flow.key for flow in delete}
    for port in (1, 3, 4, 5):
        assert FlowKey(CLASSIFY_TABLE, PRIORITY_CLASSIFY, match_of(in_port=port)) not in touched


def test_a_renumbered_port_keeps_its_network():
    before = switch_flows(tenants())
    renumbered = [Member(9, 101, (MAC[2],)) if m.port_no == 2 else m for m in tenants()]
    after = switch_flows(renumbered)

    _, delete = changes(before, after)
    assert delete  # the old number's flow goes
    assert deliver(after, 1, MAC[2]) == {9}
    assert deliver(after, 2, MAC[1]) == set()


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("0000aabbccddeeff", 0xAABBCCDDEEFF),  # how ovs-vsctl shows datapath_id
        ("0x1", 1),
        ("00:00:aa:bb:cc:dd:ee:ff", 0xAABBCCDDEEFF),
        ("42", 42),
        (7, 7),
    ],
)
def test_datapath_ids_are_read_in_every_usual_form(text, value):
    assert parse_datapath_id(text) == value


@pytest.mark.parametrize("text", ["switch-1", "0x", "", "0x1ffffffffffffffff", "-1"])
def test_anything_else_is_not_a_datapath_id(text):
    with pytest.raises(InvalidDatapathId):
        parse_datapath_id(text)


def test_provisioning_ports_name_a_switch_and_a_port():
    assert parse_switch_port("0000000000000001:boot0") == (1, "boot0")
    assert parse_switch_port("00:00:00:00:00:00:00:02:eth1") == (2, "eth1")
    settings = NetctlSettings(provisioning_ports=["0x1:boot0"])
    assert settings.provisioning_ports == ["0x1:boot0"]
    with pytest.raises(ValueError, match="boot0"):
        NetctlSettings(provisioning_ports=["boot0"])
