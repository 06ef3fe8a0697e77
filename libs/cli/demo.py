"""A demonstration of libs/rpc between two processes: a call and a cast over RabbitMQ.

Until the services exist, this is what the README's first command runs. ``tetsu demo``
starts ``tetsu demo-server`` as a separate process, then casts and calls it.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time

from libs import rpc
from libs.rpc.transports import safe_url

TOPIC = "demo"
SERVER = "demo-server"


class DemoManager:
    """The demo server's endpoint: one call, one cast, and a call to read what the casts did."""

    RPC_API_VERSION = "1.0"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._notes: list[str] = []

    @rpc.expose
    def hello(self, ctxt: rpc.RequestContext, name: str) -> dict[str, object]:
        return {
            "greeting": f"hello, {name}",
            "server_pid": os.getpid(),
            "request_id": ctxt.request_id,
        }

    @rpc.expose
    def record(self, ctxt: rpc.RequestContext, note: str) -> None:
        with self._lock:
            if note not in self._notes:  # casts may arrive twice: stay idempotent
                self._notes.append(note)

    @rpc.expose
    def notes(self, ctxt: rpc.RequestContext) -> list[str]:
        with self._lock:
            return list(self._notes)


def serve(url: str) -> None:
    """Run the demo server until SIGTERM or SIGINT."""
    # The demo refuses one call on purpose; its server-side warning would read like a fault.
    logging.getLogger("libs.rpc.server").setLevel(logging.ERROR)
    transport = rpc.transport_from_url(url, exchange="tetsu-demo")
    server = rpc.RPCServer(transport, rpc.Target(TOPIC, server=SERVER), [DemoManager()])
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    if not server.start(wait=10):
        print("no broker", flush=True)
        server.stop()
        raise SystemExit(1)
    print("ready", flush=True)
    stop.wait()
    server.stop()
    transport.close()


def start_server_process(url: str) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "libs.cli.main", "demo-server", "--url", url],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    if line.strip() != "ready":
        process.kill()
        raise DemoError(f"the demo server could not reach the message bus at {safe_url(url)}")
    return process


class DemoError(Exception):
    """The demo could not run; the message says why."""


def run_client(url: str, casts: int) -> list[tuple[str, str, float]]:
    """Call and cast the demo server; rows of (what, answer, milliseconds)."""
    transport = rpc.transport_from_url(url, exchange="tetsu-demo")
    client = rpc.RPCClient(transport, rpc.Target(TOPIC), timeout=10)
    ctxt = rpc.RequestContext(user_id="demo")
    rows: list[tuple[str, str, float]] = []
    try:
        started = time.perf_counter()
        answer = client.call(ctxt, "hello", name="tetsu")
        rows.append(
            (
                "call hello(name='tetsu')",
                f"{answer['greeting']} (from pid {answer['server_pid']})",
                (time.perf_counter() - started) * 1000,
            )
        )
        started = time.perf_counter()
        for number in range(casts):
            client.cast(ctxt, "record", note=f"note-{number}")
        rows.append(
            (
                f"cast record() x{casts}",
                "confirmed by the broker",
                (time.perf_counter() - started) * 1000,
            )
        )
        deadline = time.monotonic() + 10
        notes: list[str] = []
        while len(notes) < casts and time.monotonic() < deadline:
            notes = client.call(ctxt, "notes")
            time.sleep(0.05)
        rows.append(("call notes()", f"{len(notes)} of {casts} casts handled", 0.0))
        try:
            client.call(ctxt, "_private_thing")
        except rpc.NoSuchMethod as exc:
            rows.append(("call _private_thing()", f"refused: NoSuchMethod ({exc})", 0.0))
    finally:
        transport.close()
    return rows
