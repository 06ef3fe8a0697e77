"""nameko RPC benchmark, for the venv benchmarks/.venvs/nameko.

Server: a service named after ``--topic`` run by ``ServiceRunner`` (``max_workers`` =
``--workers``), with ``@rpc echo(value)`` and ``@event_handler(topic, "note")``.
Client, call mode: one ``ClusterRpcProxy`` per eventlet greenthread (the standalone
proxy is not safe to share), ``proxy[topic].echo(value)``.

Client, cast mode: nameko has no RPC cast (``call_async`` still sends a reply to the
caller), so the fire-and-forget measured here is an event dispatched with
``nameko.standalone.events.event_dispatcher``: nameko's publisher sends it persistent,
with publisher confirms, to the service's durable event queue (reliable delivery).
Run ``python bench_nameko.py --help``.
"""
# ruff: noqa: E402
# eventlet must patch the standard library before anything else imports it.
# mypy: disable-error-code="import-not-found,import-untyped", allow-untyped-decorators
# (nameko lives in benchmarks/.venvs/nameko and ships no type information)

from __future__ import annotations

import eventlet

eventlet.monkey_patch()

import sys
from importlib.metadata import version
from typing import Any

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
from nameko.events import event_handler
from nameko.rpc import rpc
from nameko.runners import ServiceRunner
from nameko.standalone.events import event_dispatcher
from nameko.standalone.rpc import ClusterRpcProxy

DESCRIPTION = "nameko RPC benchmark"
NOTE_EVENT = "note"
CALL_TIMEOUT = 30
CALLS, NOTES = Counter(), Counter()


def nameko_config(url: str, workers: int = 8) -> dict[str, Any]:
    return {"AMQP_URI": url, "max_workers": workers, "serializer": "json"}


def make_service(topic: str) -> type:
    """A service class whose name (and so its queues) is the benchmark topic."""

    class BenchService:
        name = topic

        @rpc
        def echo(self, value: Any) -> Any:
            CALLS.add()
            return value

        @event_handler(topic, NOTE_EVENT)
        def note(self, value: Any) -> None:
            NOTES.add()

    return BenchService


def serve(url: str, topic: str, workers: int) -> int:
    runner = ServiceRunner(nameko_config(url, workers))
    runner.add_service(make_service(topic))
    runner.start()
    announce_ready()
    wait_for_stop_signal()
    runner.stop()
    report_server_stats(CALLS.value, NOTES.value)
    return 0


class CallCaller:
    """One greenthread's standalone RPC proxy."""

    def __init__(self, url: str, topic: str) -> None:
        self._rpc = ClusterRpcProxy(nameko_config(url), timeout=CALL_TIMEOUT)
        self._service = self._rpc.start()[topic]

    def __call__(self) -> None:
        result = self._service.echo(VALUE)
        if result != VALUE:
            raise RuntimeError(f"echo returned {result!r}")

    def close(self) -> None:
        self._rpc.stop()


class EventCaller:
    """One greenthread's event dispatcher; returns once the broker confirmed."""

    def __init__(self, url: str, topic: str) -> None:
        self._topic = topic
        self._dispatch = event_dispatcher(nameko_config(url))

    def __call__(self) -> None:
        self._dispatch(self._topic, NOTE_EVENT, VALUE)

    def close(self) -> None:
        """The dispatcher's connections come from kombu's pool; nothing to close."""


def main() -> int:
    args = build_parser(DESCRIPTION).parse_args()
    if args.role == "server":
        return serve(args.url, args.topic, args.workers)
    caller_cls = CallCaller if args.mode == "call" else EventCaller
    result = run_load(
        lambda: caller_cls(args.url, args.topic), args.concurrency, args.duration, args.warmup
    )
    emit_result(
        framework="nameko",
        version=version("nameko"),
        mode=args.mode,
        concurrency=args.concurrency,
        result=result,
        confirms=True,
        note=(
            "calls: ClusterRpcProxy per greenthread, persistent confirmed requests"
            if args.mode == "call"
            else "casts are nameko events (standalone event_dispatcher): persistent, "
            "publisher confirms, durable event queue; nameko has no RPC cast"
        )
        + f"; eventlet {version('eventlet')}, kombu {version('kombu')}",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
