"""The flows one switch needs, computed from who is wired where: pure functions, no I/O.

Two tables (docs/netctl.md has the layout): table 0 tells which segment a packet belongs
to from the switch port it came in on, table 1 forwards it to ports of that segment only.
A port in no segment has no table-0 flow, so its packets meet the drop flow. Every flow
carries a cookie: the segment's (so one network's flows can be found and removed exactly)
or the base cookie of the two drop flows, all under a prefix that marks them as tetsu's.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import NamedTuple

CLASSIFY_TABLE = 0
FORWARD_TABLE = 1

#: High 16 bits of every cookie tetsu writes: its flows are told apart from anyone else's.
COOKIE_PREFIX = 0x7E75 << 48
COOKIE_PREFIX_MASK = 0xFFFF << 48
#: The drop flows that belong to no segment (segment 0 does not exist).
BASE_COOKIE = COOKIE_PREFIX
EXACT_MASK = 0xFFFF_FFFF_FFFF_FFFF

PRIORITY_DROP = 0
PRIORITY_CLASSIFY = 100
PRIORITY_UNICAST = 100
PRIORITY_FLOOD = 10


def segment_cookie(segment: int) -> int:
    """The cookie of every flow of ``segment`` (a network's segmentation id)."""
    return COOKIE_PREFIX | segment


class InvalidDatapathId(ValueError):
    """A switch id that is not a datapath id."""


def parse_datapath_id(text: str | int) -> int:
    """A datapath id from how operators write it: OVS's 16 hex digits
    (``0000aabbccddeeff``), ``0x``-prefixed hex, colon-separated bytes, or decimal."""
    if isinstance(text, int):
        value = text
    else:
        raw = text.strip().lower()
        try:
            if raw.startswith("0x"):
                value = int(raw, 16)
            elif ":" in raw:
                value = int(raw.replace(":", ""), 16)
            elif len(raw) == 16:
                value = int(raw, 16)  # how OVS shows datapath_id
            else:
                value = int(raw, 10)
        except ValueError:
            raise InvalidDatapathId(f"{text!r} is not a datapath id") from None
    if not 0 <= value <= EXACT_MASK:
        raise InvalidDatapathId(f"{text!r} is not a 64-bit datapath id")
    return value


def parse_switch_port(text: str) -> tuple[int, str]:
    """``"<datapath id>:<port name>"`` as (datapath id, port name)."""
    switch_id, _, name = text.rpartition(":")
    if not switch_id or not name:
        raise InvalidDatapathId(f"{text!r} is not <datapath id>:<port name>")
    return parse_datapath_id(switch_id), name


@dataclass(frozen=True)
class Drop:
    """No instructions: the packet goes nowhere."""


@dataclass(frozen=True)
class SetSegment:
    """Remember the packet's segment (OpenFlow metadata) and forward it in table 1."""

    segment: int


@dataclass(frozen=True)
class Output:
    """Send the packet out of these switch ports (never back out of the one it came in on:
    OpenFlow skips the ingress port unless told otherwise, which is what flooding wants)."""

    ports: tuple[int, ...]


Instructions = Drop | SetSegment | Output

Match = tuple[tuple[str, int | str], ...]


class FlowKey(NamedTuple):
    """What identifies a flow in a switch: two flows with the same key replace each other."""

    table: int
    priority: int
    match: Match


@dataclass(frozen=True)
class Flow:
    table: int
    priority: int
    match: Match
    cookie: int
    instructions: Instructions

    @property
    def key(self) -> FlowKey:
        return FlowKey(self.table, self.priority, self.match)


def match_of(**fields: int | str) -> Match:
    """A match in its one canonical form (fields sorted by name, MACs lower case), so a
    match read back from a switch compares equal to the one computed here."""
    canonical = {
        name: value.lower() if isinstance(value, str) else value for name, value in fields.items()
    }
    return tuple(sorted(canonical.items()))


@dataclass(frozen=True)
class Member:
    """A switch port wired into a segment: its OpenFlow port number now and the MAC
    addresses known to be behind it (for unicast; unknown ones are flooded)."""

    port_no: int
    segment: int
    macs: tuple[str, ...] = ()


def switch_flows(members: Iterable[Member]) -> dict[FlowKey, Flow]:
    """Every flow one switch needs so that each member reaches its own segment only."""
    flows = [
        Flow(CLASSIFY_TABLE, PRIORITY_DROP, (), BASE_COOKIE, Drop()),
        Flow(FORWARD_TABLE, PRIORITY_DROP, (), BASE_COOKIE, Drop()),
    ]
    by_segment: dict[int, list[Member]] = {}
    for member in members:
        by_segment.setdefault(member.segment, []).append(member)
    for segment, group in sorted(by_segment.items()):
        cookie = segment_cookie(segment)
        ports = tuple(sorted({member.port_no for member in group}))
        mac_ports: dict[str, set[int]] = {}
        for member in group:
            flows.append(
                Flow(
                    CLASSIFY_TABLE,
                    PRIORITY_CLASSIFY,
                    match_of(in_port=member.port_no),
                    cookie,
                    SetSegment(segment),
                )
            )
            for mac in member.macs:
                mac_ports.setdefault(mac.lower(), set()).add(member.port_no)
        for mac, where in sorted(mac_ports.items()):
            if len(where) == 1:  # a MAC seen behind two ports is flooded instead
                flows.append(
                    Flow(
                        FORWARD_TABLE,
                        PRIORITY_UNICAST,
                        match_of(metadata=segment, eth_dst=mac),
                        cookie,
                        Output((next(iter(where)),)),
                    )
                )
        flows.append(
            Flow(FORWARD_TABLE, PRIORITY_FLOOD, match_of(metadata=segment), cookie, Output(ports))
        )
    return {flow.key: flow for flow in flows}


class FlowChanges(NamedTuple):
    add: list[Flow]  # new, or replacing a flow with the same key
    delete: list[Flow]  # no longer wanted


def changes(current: Mapping[FlowKey, Flow], wanted: Mapping[FlowKey, Flow]) -> FlowChanges:
    """What turns ``current`` into ``wanted``; nothing when they are equal."""
    add = [flow for key, flow in wanted.items() if current.get(key) != flow]
    delete = [flow for key, flow in current.items() if key not in wanted]
    return FlowChanges(add, delete)
