"""libs/rpc benchmark: tetsu's own RPC layer, same CLI and output as the other bench scripts.

Server: an RPCServer with ``--workers`` handler threads (one connection, prefetch = workers).
Client: one shared RPCClient; libs/rpc gives every calling thread its own connection.
Calls use direct reply-to; casts are persistent, mandatory and broker-confirmed, which is
libs/rpc's only way to cast.

Also ``python bench_tetsu.py memory --duration S``: the in-memory transport, server and
client in this process (no broker), for the latency of the one-process mode.

Run ``python bench_tetsu.py --help``.
"""

from __future__ import annotations

import argparse
import sys
from importlib.metadata import version

from common import (
    VALUE,
    Counter,
    announce_ready,
    build_parser,
    emit_result,
    report_server_stats,
    run_load,
    wait_for_stop_signal,
)

from libs import rpc

CTX = rpc.RequestContext(request_id="req-bench")
EXCHANGE = "tetsu-bench"


class BenchManager:
    RPC_API_VERSION = "1.0"

    def __init__(self) -> None:
        self.calls = Counter()
        self.notes = Counter()

    @rpc.expose
    def echo(self, ctxt: rpc.RequestContext, value: str) -> str:
        self.calls.add()
        return value

    @rpc.expose
    def note(self, ctxt: rpc.RequestContext, value: str) -> None:
        self.notes.add()


class Caller:
    def __init__(self, client: rpc.RPCClient, mode: str) -> None:
        self._client = client
        self._mode = mode

    def __call__(self) -> None:
        if self._mode == "call":
            if self._client.call(CTX, "echo", value=VALUE) != VALUE:
                raise RuntimeError("echo returned something else")
        else:
            self._client.cast(CTX, "note", value=VALUE)

    def close(self) -> None:
        pass


def serve(url: str, topic: str, workers: int) -> int:
    transport = rpc.AMQPTransport(url, exchange=EXCHANGE)
    manager = BenchManager()
    server = rpc.RPCServer(transport, rpc.Target(topic, server="bench"), [manager], workers=workers)
    server.start()
    announce_ready()
    wait_for_stop_signal()
    server.stop()
    transport.close()
    report_server_stats(manager.calls.value, manager.notes.value)
    return 0


def client(
    url: str, topic: str, mode: str, concurrency: int, duration: float, warmup: float
) -> int:
    transport = rpc.AMQPTransport(url, exchange=EXCHANGE)
    rpc_client = rpc.RPCClient(transport, rpc.Target(topic), timeout=30)
    result = run_load(lambda: Caller(rpc_client, mode), concurrency, duration, warmup)
    transport.close()
    emit_result(
        framework="tetsu",
        version=version("tetsu"),
        mode=mode,
        concurrency=concurrency,
        result=result,
        confirms=(mode == "cast"),
    )
    return 0


def memory(duration: float, warmup: float) -> int:
    transport = rpc.MemoryTransport()
    server = rpc.RPCServer(transport, rpc.Target("bench", server="bench"), [BenchManager()])
    server.start()
    rpc_client = rpc.RPCClient(transport, rpc.Target("bench"), timeout=30)
    result = run_load(lambda: Caller(rpc_client, "call"), 1, duration, warmup)
    server.stop()
    emit_result(
        framework="tetsu-memory",
        version=version("tetsu"),
        mode="call",
        concurrency=1,
        result=result,
        confirms=False,
        note="in-memory transport, one process, no broker",
    )
    return 0


def main() -> int:
    if sys.argv[1:2] == ["memory"]:
        parser = argparse.ArgumentParser(
            prog="bench_tetsu.py memory",
            description="libs/rpc calls over the in-memory transport, in this process.",
        )
        parser.add_argument("--duration", type=float, default=3.0, help="measured seconds")
        args = parser.parse_args(sys.argv[2:])
        return memory(args.duration, warmup=0.5)
    args = build_parser(__doc__.splitlines()[0]).parse_args()
    if args.role == "server":
        return serve(args.url, args.topic, args.workers)
    return client(args.url, args.topic, args.mode, args.concurrency, args.duration, args.warmup)


if __name__ == "__main__":
    sys.exit(main())
