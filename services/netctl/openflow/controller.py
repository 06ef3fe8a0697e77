"""os-ken inside the netctl process: the TCP listener switches connect to, the os-ken app
that hands their OpenFlow events to a :class:`SwitchEvents` receiver, and the messages
netctl sends (flow changes, flow listings, barriers).

os-ken's own launcher is not used, on purpose: its listener and the send loop of each
switch connection run in non-daemon threads that its native hub cannot stop, so a netctl
with them would never exit on SIGTERM, and every switch that disconnected would leave a
thread behind. Here the listener and connections are ours and stop with the service;
os-ken still does the protocol (handshake, echo, port tracking, parsing).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from collections.abc import Iterable
from typing import Any, ClassVar, Protocol

# app_manager first: os-ken's controller module imports it back (a circular import).
from os_ken.base import app_manager  # isort: skip
from os_ken import cfg as osken_cfg
from os_ken.controller import controller as osken_controller
from os_ken.controller import ofp_event
from os_ken.controller.handler import DEAD_DISPATCHER, MAIN_DISPATCHER, set_ev_cls
from os_ken.controller.ofp_handler import OFPHandler
from os_ken.ofproto import ofproto_v1_3

from .flows import (
    COOKIE_PREFIX,
    COOKIE_PREFIX_MASK,
    EXACT_MASK,
    FORWARD_TABLE,
    Drop,
    Flow,
    Output,
    SetSegment,
    match_of,
)

LOG = logging.getLogger(__name__)

#: A switch's OpenFlow connection: os-ken's ``Datapath`` (``.id``, ``.ports``, ``.send_msg``).
Datapath = Any


class SwitchEvents(Protocol):
    """What the controller reports, each call from the os-ken app's one event thread."""

    def switch_ready(self, datapath: Datapath) -> None:
        """A switch finished its handshake; its ports are known (``datapath.ports``)."""

    def switch_gone(self, datapath: Datapath) -> None:
        """A switch's connection ended."""

    def ports_changed(self, datapath: Datapath) -> None:
        """A port was added, removed or changed (``datapath.ports`` is up to date)."""

    def flows_listed(self, datapath: Datapath, xid: int, flows: list[Any], more: bool) -> None:
        """A part of the answer to :func:`request_flows` (``more``: parts follow)."""

    def barrier_reached(self, datapath: Datapath, xid: int) -> None:
        """The switch has applied everything sent before the barrier ``xid``."""


class AnotherController(RuntimeError):
    """os-ken keeps its apps in process-wide registries: one controller per process."""


class _SwitchApp(app_manager.OSKenApp):  # type: ignore[misc]
    """Forwards the OpenFlow events netctl needs to its receiver (in os-ken's event thread)."""

    OFP_VERSIONS: ClassVar[list[int]] = [ofproto_v1_3.OFP_VERSION]
    LOGGER_NAME = __name__

    def __init__(self, *args: Any, receiver: SwitchEvents, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.receiver = receiver

    @set_ev_cls(ofp_event.EventOFPStateChange, [MAIN_DISPATCHER, DEAD_DISPATCHER])  # type: ignore[untyped-decorator]
    def _state_changed(self, event: Any) -> None:
        datapath = event.datapath
        if datapath.id is None:
            return  # it never finished its handshake
        if event.state == MAIN_DISPATCHER:
            self.receiver.switch_ready(datapath)
        else:
            self.receiver.switch_gone(datapath)

    @set_ev_cls(ofp_event.EventOFPPortStateChange, MAIN_DISPATCHER)  # type: ignore[untyped-decorator]
    def _port_changed(self, event: Any) -> None:
        self.receiver.ports_changed(event.datapath)

    @set_ev_cls(ofp_event.EventOFPFlowStatsReply, MAIN_DISPATCHER)  # type: ignore[untyped-decorator]
    def _flows_listed(self, event: Any) -> None:
        msg = event.msg
        more = bool(msg.flags & msg.datapath.ofproto.OFPMPF_REPLY_MORE)
        self.receiver.flows_listed(msg.datapath, msg.xid, list(msg.body), more)

    @set_ev_cls(ofp_event.EventOFPBarrierReply, MAIN_DISPATCHER)  # type: ignore[untyped-decorator]
    def _barrier_reached(self, event: Any) -> None:
        self.receiver.barrier_reached(event.msg.datapath, event.msg.xid)

    @set_ev_cls(ofp_event.EventOFPErrorMsg, MAIN_DISPATCHER)  # type: ignore[untyped-decorator]
    def _switch_error(self, event: Any) -> None:
        msg = event.msg
        LOG.warning(
            "switch %016x refused message xid %s: error type %s code %s",
            msg.datapath.id,
            msg.xid,
            msg.type,
            msg.code,
        )


class _Connection(osken_controller.Datapath):  # type: ignore[misc]
    """One switch's connection, served in a daemon thread with a daemon send loop."""

    def serve(self) -> None:
        sender = threading.Thread(
            target=self._send_loop, name=f"openflow-send-{self.address}", daemon=True
        )
        sender.start()
        self.send_msg(self.ofproto_parser.OFPHello(self))
        try:
            self._recv_loop()  # until the switch disconnects or the socket is shut
        finally:
            # Wake the send loop so it ends (os-ken's native hub cannot kill it).
            self.send(b"", close_socket=True)
            sender.join(timeout=5)
            self.is_active = False


class OpenFlowListener:
    """Accepts switch connections on ``host:port`` and reports their events to ``receiver``."""

    def __init__(self, host: str, port: int, receiver: SwitchEvents) -> None:
        self.host = host
        self.port = port
        self.receiver = receiver
        self._socket: socket.socket | None = None
        self._apps: list[Any] = []
        self._connections: dict[_Connection, threading.Thread] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._acceptor: threading.Thread | None = None

    def start(self) -> None:
        """Listen (``port`` 0: any free port, then :attr:`port` says which)."""
        if ofp_event.NAME in app_manager.SERVICE_BRICKS:
            raise AnotherController("an OpenFlow controller already runs in this process")
        # os-ken reads its options (socket timeout, echo) from its global config: defaults,
        # never this process's command line.
        osken_cfg.CONF(args=[], project="os_ken", default_config_files=[])
        manager = app_manager.AppManager.get_instance()
        try:
            self._apps = [manager.instantiate(OFPHandler)]
            app = manager.instantiate(_SwitchApp, receiver=self.receiver)
            self._apps.append(app)
            app.start()  # its event thread: our handlers run there, one event at a time
            self._socket = socket.create_server((self.host, self.port), backlog=64)
        except BaseException:
            self._stop_apps()
            raise
        self.port = self._socket.getsockname()[1]
        self._stopping.clear()
        self._acceptor = threading.Thread(
            target=self._accept_loop, name="openflow-listener", daemon=True
        )
        self._acceptor.start()
        LOG.info("OpenFlow controller listening on %s:%d", self.host, self.port)

    def stop(self) -> None:
        """Stop listening and close every switch connection (switches keep their flows)."""
        self._stopping.set()
        if self._socket is not None:
            with contextlib.suppress(OSError):
                self._socket.shutdown(socket.SHUT_RDWR)  # wakes accept()
            self._socket.close()
            self._socket = None
        if self._acceptor is not None:
            self._acceptor.join(timeout=5)
            self._acceptor = None
        with self._lock:
            connections = dict(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.socket.shutdown(socket.SHUT_RDWR)
        for thread in connections.values():
            thread.join(timeout=10)
        self._stop_apps()

    def _stop_apps(self) -> None:
        manager = app_manager.AppManager.get_instance()
        for app in reversed(self._apps):
            with contextlib.suppress(KeyError):
                manager.uninstantiate(app.name)
        self._apps = []

    def _accept_loop(self) -> None:
        listening = self._socket
        assert listening is not None
        while not self._stopping.is_set():
            try:
                sock, address = listening.accept()
            except OSError:
                if self._stopping.is_set():
                    return
                LOG.exception("OpenFlow listener: accept failed")
                continue
            thread = threading.Thread(
                target=self._serve, args=(sock, address), name=f"openflow-{address}", daemon=True
            )
            thread.start()

    def _serve(self, sock: socket.socket, address: tuple[str, int]) -> None:
        connection = _Connection(sock, address)
        with self._lock:
            self._connections[connection] = threading.current_thread()
        LOG.info("switch connected from %s:%d", *address[:2])
        try:
            connection.serve()
        except Exception:
            LOG.exception("switch connection from %s:%d failed", *address[:2])
        finally:
            connection.close()  # DEAD: the app reports switch_gone
            with self._lock:
                self._connections.pop(connection, None)


# -- messages ----------------------------------------------------------------------------


def _instructions(datapath: Datapath, flow: Flow) -> list[Any]:
    parser, ofproto = datapath.ofproto_parser, datapath.ofproto
    match flow.instructions:
        case Drop():
            return []
        case SetSegment(segment):
            return [
                parser.OFPInstructionWriteMetadata(segment, EXACT_MASK),
                parser.OFPInstructionGotoTable(FORWARD_TABLE),
            ]
        case Output(ports):
            actions = [parser.OFPActionOutput(port) for port in ports]
            return [parser.OFPInstructionActions(ofproto.OFPIT_APPLY_ACTIONS, actions)]


def send_flow_changes(datapath: Datapath, delete: Iterable[Flow], add: Iterable[Flow]) -> int:
    """Delete then add flows (deletes first: a port loses what it may no longer reach
    before it gains anything), then a barrier; returns the barrier's xid."""
    parser, ofproto = datapath.ofproto_parser, datapath.ofproto
    for flow in delete:
        datapath.send_msg(
            parser.OFPFlowMod(
                datapath,
                cookie=flow.cookie,
                cookie_mask=EXACT_MASK,
                table_id=flow.table,
                command=ofproto.OFPFC_DELETE_STRICT,
                priority=flow.priority,
                out_port=ofproto.OFPP_ANY,
                out_group=ofproto.OFPG_ANY,
                match=parser.OFPMatch(**dict(flow.match)),
            )
        )
    for flow in add:
        # ADD replaces a flow with the same table, priority and match in place: a switch
        # that has it already forwards on without a gap.
        datapath.send_msg(
            parser.OFPFlowMod(
                datapath,
                cookie=flow.cookie,
                table_id=flow.table,
                command=ofproto.OFPFC_ADD,
                priority=flow.priority,
                match=parser.OFPMatch(**dict(flow.match)),
                instructions=_instructions(datapath, flow),
            )
        )
    return barrier(datapath)


def barrier(datapath: Datapath) -> int:
    request = datapath.ofproto_parser.OFPBarrierRequest(datapath)
    datapath.set_xid(request)
    datapath.send_msg(request)
    return int(request.xid)


def request_flows(datapath: Datapath) -> int:
    """Ask for every flow carrying tetsu's cookie prefix; returns the request's xid."""
    parser, ofproto = datapath.ofproto_parser, datapath.ofproto
    request = parser.OFPFlowStatsRequest(
        datapath,
        0,
        ofproto.OFPTT_ALL,
        ofproto.OFPP_ANY,
        ofproto.OFPG_ANY,
        COOKIE_PREFIX,
        COOKIE_PREFIX_MASK,
        parser.OFPMatch(),
    )
    datapath.set_xid(request)
    datapath.send_msg(request)
    return int(request.xid)


def listed_flow(stats: Any) -> Flow:
    """A flow as the switch listed it, in the form :mod:`.flows` computes (its
    instructions are not read back: a listed flow is only ever kept or deleted)."""
    match = match_of(**dict(stats.match.items()))
    return Flow(stats.table_id, stats.priority, match, stats.cookie, Drop())


def port_numbers(datapath: Datapath) -> dict[str, int]:
    """The switch's port numbers by port name (its ports as os-ken tracks them). The
    bridge's own port (LOCAL, named like the bridge) counts: a boot server often listens
    on it. The other reserved numbers (CONTROLLER, ALL...) are no attachment points."""
    ports = dict(datapath.ports or {})  # a copy: os-ken's thread updates it
    ofproto = datapath.ofproto
    return {
        port.name.decode("utf-8", "replace"): number
        for number, port in ports.items()
        if number <= ofproto.OFPP_MAX or number == ofproto.OFPP_LOCAL
    }
