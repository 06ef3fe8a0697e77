"""The OpenFlow switch backend: which switch port is wired into which segment, kept in
memory (loaded from the database at start, then changed by each call), and pushed to every
connected switch as flows.

A switch port is named by its switch (datapath id) and port name, as cabled at enrollment;
its OpenFlow port number is looked up on the switch and followed through port-status
events, since it changes (libvirt re-creates a guest's port at every power on). When a
switch connects, it gets its full flow set: flows of tetsu's it holds but should not are
deleted, the wanted ones added (an identical flow is replaced in place, so traffic that
flows already keeps flowing). Afterwards only differences are sent.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

from libs.db import Port
from libs.errors import BadRequest

from ..backends import SwitchBackend
from ..settings import NetctlSettings
from .controller import (
    Datapath,
    OpenFlowListener,
    listed_flow,
    port_numbers,
    request_flows,
    send_flow_changes,
)
from .flows import (
    Flow,
    FlowKey,
    InvalidDatapathId,
    Member,
    changes,
    parse_datapath_id,
    parse_switch_port,
    switch_flows,
)

LOG = logging.getLogger(__name__)

#: Seconds a call waits for the switch to confirm its flows (a barrier) before it returns
#: anyway; the wanted state is kept and pushed again when the switch reconnects.
CONFIRM_TIMEOUT = 5.0


class Attachment(NamedTuple):
    """A switch port: the switch's datapath id and the port's name on it."""

    datapath_id: int
    port_name: str


class Wiring(NamedTuple):
    segment: int
    mac: str | None  # the MAC behind the port, for unicast forwarding


@dataclass
class _Switch:
    """A connected switch and what netctl knows it holds."""

    datapath: Datapath
    installed: dict[FlowKey, Flow] | None = None  # None: not read back from it yet
    listing_xid: int | None = None
    listed: list[Flow] = field(default_factory=list)


def parse_attachment(switch_id: str, port_name: str) -> Attachment:
    try:
        return Attachment(parse_datapath_id(switch_id), port_name)
    except InvalidDatapathId as exc:
        raise BadRequest(str(exc)) from None


class OpenFlowSwitch(SwitchBackend):
    """Programs Open vSwitch (or any OpenFlow 1.3 switch) that connects to netctl."""

    def __init__(self, settings: NetctlSettings) -> None:
        self._lock = threading.Lock()
        self._wired: dict[Attachment, Wiring] = {}
        # The boot server's ports: always in the provisioning network, whatever else says.
        provisioning = Wiring(settings.provisioning_segmentation_id, None)
        self._fixed = {
            Attachment(*parse_switch_port(text)): provisioning
            for text in settings.provisioning_ports
        }
        self._switches: dict[int, _Switch] = {}
        self._confirmations: dict[tuple[int, int], threading.Event] = {}
        self.listener = OpenFlowListener(
            settings.openflow_listen_host, settings.openflow_listen_port, self
        )

    # -- SwitchBackend ----------------------------------------------------------------------

    def start(self, wiring: Iterable[tuple[Port, int]] = ()) -> None:
        with self._lock:
            for port, segment in wiring:
                try:
                    self._wired[self.attachment_of(port)] = Wiring(segment, port.address)
                except BadRequest as exc:  # enrolled without cabling: nothing to program
                    LOG.warning("%s", exc.reason)
        self.listener.start()

    def stop(self) -> None:
        self.listener.stop()

    def bind(self, port: Port, segmentation_id: int) -> None:
        self._set(self.attachment_of(port), Wiring(segmentation_id, port.address))

    def unbind(self, port: Port) -> None:
        self._set(self.attachment_of(port), None)

    @staticmethod
    def attachment_of(port: Port) -> Attachment:
        if not (port.switch_id and port.switch_port):
            raise BadRequest(
                f"port {port.id} ({port.address}) has no switch attachment: "
                "set its switch_id and switch_port"
            )
        return parse_attachment(port.switch_id, port.switch_port)

    def wiring(self) -> dict[Attachment, int]:
        """Each wired switch port's segment (the boot server's included)."""
        with self._lock:
            return {key: wiring.segment for key, wiring in self._wanted().items()}

    def connected(self) -> list[int]:
        """Datapath ids of the switches connected now."""
        with self._lock:
            return sorted(self._switches)

    def _set(self, attachment: Attachment, wiring: Wiring | None) -> None:
        with self._lock:
            if wiring is None:
                self._wired.pop(attachment, None)
            else:
                self._wired[attachment] = wiring
            switch = self._switches.get(attachment.datapath_id)
            confirmation = self._program(switch) if switch is not None else None
        if confirmation is not None and not confirmation.wait(CONFIRM_TIMEOUT):
            LOG.warning(
                "switch %016x did not confirm its flows within %.0f s; they are sent "
                "again when it reconnects",
                attachment.datapath_id,
                CONFIRM_TIMEOUT,
            )

    # -- what each switch should hold (lock held) ------------------------------------------

    def _wanted(self) -> dict[Attachment, Wiring]:
        return {**self._wired, **self._fixed}

    def _members(self, datapath: Datapath) -> list[Member]:
        numbers = port_numbers(datapath)
        members = []
        for attachment, wiring in self._wanted().items():
            number = numbers.get(attachment.port_name)
            if attachment.datapath_id == datapath.id and number is not None:
                macs = (wiring.mac,) if wiring.mac else ()
                members.append(Member(number, wiring.segment, macs))
        return members

    def _program(self, switch: _Switch) -> threading.Event | None:
        """Send the switch what changed since it was last programmed; the event is set
        when it confirms. Nothing before its flows were read back (that sync sends all)."""
        if switch.installed is None:
            return None
        wanted = switch_flows(self._members(switch.datapath))
        add, delete = changes(switch.installed, wanted)
        if not add and not delete:
            return None
        xid = send_flow_changes(switch.datapath, delete, add)
        switch.installed = wanted
        LOG.info(
            "switch %016x: %d flows added or changed, %d removed",
            switch.datapath.id,
            len(add),
            len(delete),
        )
        return self._expect(switch.datapath.id, xid)

    def _expect(self, datapath_id: int, xid: int) -> threading.Event:
        event = threading.Event()
        self._confirmations[(datapath_id, xid)] = event
        return event

    # -- SwitchEvents (os-ken's event thread) ----------------------------------------------

    def switch_ready(self, datapath: Datapath) -> None:
        with self._lock:
            switch = _Switch(datapath)
            self._switches[datapath.id] = switch  # a reconnection replaces the old one
            switch.listing_xid = request_flows(datapath)
        LOG.info("switch %016x connected; reading its flows back", datapath.id)

    def flows_listed(self, datapath: Datapath, xid: int, flows: list[object], more: bool) -> None:
        with self._lock:
            switch = self._switches.get(datapath.id)
            if switch is None or switch.datapath is not datapath or xid != switch.listing_xid:
                return
            switch.listed.extend(listed_flow(stats) for stats in flows)
            if more:
                return
            wanted = switch_flows(self._members(datapath))
            stale = [flow for flow in switch.listed if flow.key not in wanted]
            send_flow_changes(datapath, stale, wanted.values())
            switch.installed, switch.listing_xid, switch.listed = wanted, None, []
        LOG.info(
            "switch %016x programmed: %d flows, %d stale ones removed",
            datapath.id,
            len(wanted),
            len(stale),
        )

    def ports_changed(self, datapath: Datapath) -> None:
        with self._lock:
            switch = self._switches.get(datapath.id)
            if switch is not None and switch.datapath is datapath:
                self._program(switch)

    def switch_gone(self, datapath: Datapath) -> None:
        with self._lock:
            switch = self._switches.get(datapath.id)
            if switch is None or switch.datapath is not datapath:
                return  # an older connection of a switch that has reconnected
            del self._switches[datapath.id]
            waiting = [key for key in self._confirmations if key[0] == datapath.id]
            for key in waiting:
                self._confirmations.pop(key).set()
        LOG.warning(
            "switch %016x disconnected; it gets its flows again when it reconnects", datapath.id
        )

    def barrier_reached(self, datapath: Datapath, xid: int) -> None:
        with self._lock:
            event = self._confirmations.pop((datapath.id, xid), None)
        if event is not None:
            event.set()
