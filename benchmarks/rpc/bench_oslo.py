"""oslo.messaging RPC benchmark (rabbit driver), for the venv benchmarks/.venvs/oslo.

Server: ``oslo_messaging.get_rpc_server`` with the (default) threading executor and
``executor_thread_pool_size = --workers``, endpoint methods ``echo`` and ``note``.
Client: one shared transport, one ``RPCClient`` per caller thread; ``call`` waits for
the reply, ``cast`` returns once published.

The rabbit driver opens every kombu connection with ``confirm_publish=True`` and
publishes persistent messages, so each call, reply and cast waits for a broker
confirm. ``amqp_durable_queues`` is set so the topic queue is durable, as required for
the cast measurement (calls then travel through that durable queue too).

oslo.messaging 18.3 registers some options (tracing) only on the global ``cfg.CONF``,
so this script configures the global object rather than a private ``ConfigOpts``.
Run ``python bench_oslo.py --help``.
"""

# mypy: disable-error-code="import-not-found,import-untyped"
# (oslo.messaging lives in benchmarks/.venvs/oslo, not in the project's environment)

from __future__ import annotations

import sys
from importlib.metadata import version
from typing import Any

import oslo_messaging
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
from oslo_config import cfg
from oslo_messaging import opts as oslo_opts

DESCRIPTION = "oslo.messaging RPC benchmark (rabbit driver)"
SERVER_NAME = "bench-server"
CALL_TIMEOUT = 30


def rabbit_url(url: str) -> str:
    """oslo picks the driver from the URL scheme: ``amqp://`` would mean AMQP 1.0."""
    scheme, sep, rest = url.partition("://")
    return f"rabbit{sep}{rest}" if scheme in ("amqp", "pyamqp") else url


def configure(workers: int = 8) -> cfg.ConfigOpts:
    """Register oslo.messaging's options on the global CONF and set the benchmark's."""
    conf = cfg.CONF
    for group, opts in oslo_opts.list_opts():
        conf.register_opts(opts, group=None if group == "DEFAULT" else group)
    conf([], project="tetsu-bench", default_config_files=[], default_config_dirs=[])
    conf.set_override("executor_thread_pool_size", workers)
    conf.set_override("rpc_response_timeout", CALL_TIMEOUT)
    conf.set_override("amqp_durable_queues", True, group="oslo_messaging_rabbit")
    return conf


class Endpoint:
    """The served methods; oslo passes the request context first."""

    def __init__(self) -> None:
        self.calls, self.notes = Counter(), Counter()

    def echo(self, ctxt: dict[str, Any], value: Any) -> Any:
        self.calls.add()
        return value

    def note(self, ctxt: dict[str, Any], value: Any) -> None:
        self.notes.add()


def serve(url: str, topic: str, workers: int) -> int:
    conf = configure(workers)
    transport = oslo_messaging.get_rpc_transport(conf, url=rabbit_url(url))
    endpoint = Endpoint()
    server = oslo_messaging.get_rpc_server(
        transport,
        oslo_messaging.Target(topic=topic, server=SERVER_NAME),
        [endpoint],
    )
    # Passing executor="threading" is deprecated in 18.x; it is the default unless
    # eventlet has monkey-patched threading. Check rather than assume.
    if server.executor_type != "threading":
        print(f"unexpected executor {server.executor_type!r}", file=sys.stderr)
        return 1
    server.start()
    announce_ready()
    wait_for_stop_signal()
    server.stop()
    server.wait()
    transport.cleanup()
    report_server_stats(endpoint.calls.value, endpoint.notes.value)
    return 0


class OsloCaller:
    """One caller thread's RPCClient over the process-wide transport."""

    def __init__(self, transport: oslo_messaging.Transport, topic: str, mode: str) -> None:
        self._client = oslo_messaging.get_rpc_client(
            transport, oslo_messaging.Target(topic=topic), timeout=CALL_TIMEOUT
        )
        self._mode = mode

    def __call__(self) -> None:
        if self._mode == "cast":
            self._client.cast({}, "note", value=VALUE)
            return
        result = self._client.call({}, "echo", value=VALUE)
        if result != VALUE:
            raise RuntimeError(f"echo returned {result!r}")

    def close(self) -> None:
        """The transport is shared; it is cleaned up once at the end."""


def main() -> int:
    args = build_parser(DESCRIPTION).parse_args()
    if args.role == "server":
        return serve(args.url, args.topic, args.workers)
    conf = configure()
    transport = oslo_messaging.get_rpc_transport(conf, url=rabbit_url(args.url))
    try:
        result = run_load(
            lambda: OsloCaller(transport, args.topic, args.mode),
            args.concurrency,
            args.duration,
            args.warmup,
        )
    finally:
        transport.cleanup()
    emit_result(
        framework="oslo.messaging",
        version=version("oslo.messaging"),
        mode=args.mode,
        concurrency=args.concurrency,
        result=result,
        confirms=True,
        note=(
            "rabbit driver: every publish (request, reply, cast) is persistent and "
            "broker-confirmed; amqp_durable_queues=True; kombu " + version("kombu")
        ),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
