"""libs/metrics: RPC calls and casts counted and timed on both sides, refused garbage
counted without its method name, and the /metrics server of a service."""

from __future__ import annotations

import socket

import httpx
import pytest
from prometheus_client import REGISTRY, generate_latest

from libs import rpc
from libs.db import Database, Node
from libs.metrics import MetricsServer, ServiceRegistry


class Endpoint:
    RPC_API_VERSION = "1.0"

    @rpc.expose
    def echo(self, ctxt: rpc.RequestContext, value: int) -> int:
        return value

    @rpc.expose
    def fail(self, ctxt: rpc.RequestContext) -> None:
        raise ValueError("no")


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_calls_and_casts_are_counted_on_both_sides(memory_transport):
    target = rpc.Target("metrics-test", server="s1")
    labels = {"kind": "call", "target": "metrics-test", "method": "echo"}
    before_client = value("tetsu_rpc_calls_total", side="client", outcome="ok", **labels)
    before_server = value("tetsu_rpc_calls_total", side="server", outcome="ok", **labels)
    before_errors = value(
        "tetsu_rpc_calls_total",
        side="server",
        outcome="error",
        kind="call",
        target="metrics-test",
        method="fail",
    )
    before_refused = value(
        "tetsu_rpc_calls_total",
        side="server",
        outcome="refused",
        kind="call",
        target="metrics-test",
        method="-",
    )
    timed = value("tetsu_rpc_seconds_count", side="client", **labels)
    with rpc.RPCServer(memory_transport, target, [Endpoint()]):
        client = rpc.RPCClient(memory_transport, rpc.Target("metrics-test"))
        ctxt = rpc.RequestContext()
        assert client.call(ctxt, "echo", value=3) == 3
        with pytest.raises(rpc.RemoteError):
            client.call(ctxt, "fail")
        with pytest.raises(rpc.NoSuchMethod):
            client.call(ctxt, "x" * 100)

    assert (
        value("tetsu_rpc_calls_total", side="client", outcome="ok", **labels) == before_client + 1
    )
    assert (
        value("tetsu_rpc_calls_total", side="server", outcome="ok", **labels) == before_server + 1
    )
    assert value("tetsu_rpc_seconds_count", side="client", **labels) == timed + 1
    assert (
        value(
            "tetsu_rpc_calls_total",
            side="server",
            outcome="error",
            kind="call",
            target="metrics-test",
            method="fail",
        )
        == before_errors + 1
    )
    # Garbage is counted, but its method name never becomes a label.
    assert (
        value(
            "tetsu_rpc_calls_total",
            side="server",
            outcome="refused",
            kind="call",
            target="metrics-test",
            method="-",
        )
        == before_refused + 1
    )
    server_lines = [
        line for line in generate_latest(REGISTRY).decode().splitlines() if 'side="server"' in line
    ]
    assert not [line for line in server_lines if "x" * 100 in line]


def test_a_service_serves_its_metrics_and_the_node_count(db: Database):
    with db.session() as session:
        session.add(Node(name="a", resource_class="x", provision_state="available"))
        session.add(Node(name="b", resource_class="x", provision_state="available"))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    server = MetricsServer("127.0.0.1", port, ServiceRegistry(db))
    server.start()
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    finally:
        server.stop()
    assert 'tetsu_nodes{power_state="unknown",provision_state="available"} 2.0' in text
    assert "tetsu_rpc_calls_total" in text or "tetsu_rpc_calls" in text
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2)


def test_a_taken_port_does_not_stop_the_service(db: Database, caplog):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = int(taken.getsockname()[1])
        server = MetricsServer("127.0.0.1", port, ServiceRegistry())
        server.start()  # logs, does not raise
        server.stop()
    assert any("metrics not served" in r.getMessage() for r in caplog.records)
