"""The API's ceiling: the burst's creations with every worker paused, so that only the
API, PostgreSQL and RabbitMQ run. How many creations a second this machine's API takes
at most, what each costs the API in CPU, and their latency at each number in flight; the
burst (burst.py) cannot do better while the workers deploy beside it.

With a fixed number of requests in flight the latency follows from the rate (Little's
law: the mean is in flight / rate), so this tells which latency a number in flight can
have on this machine at all.

    .venv/bin/python benchmarks/scale/ceiling.py --in-flight 10,50

The services run as in burst.py (a fresh database and vhost, the API in two processes);
the scheduler, conductor and netctl are stopped with SIGSTOP after the cloud is set up,
so the instances stay in BUILD, and resumed before the stack is removed. Prints a table,
and one JSON object per number in flight on stdout with ``--json``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks.scale.burst import (  # noqa: E402
    API_WORKERS,
    FLAVOR,
    cpu_parties,
    expect,
    prepare_cloud,
    tetsu_stack,
)
from benchmarks.scale.common import (  # noqa: E402
    BurstClient,
    CpuMeter,
    Latencies,
    burst,
    fmt,
    log,
    machine_facts,
    text_table,
)
from tests.integration.stack import Stack  # noqa: E402

WORKERS = ("scheduler", "conductor", "netctl")
COLUMNS = (
    "in flight",
    "creations",
    "per second",
    "API CPU ms each",
    "p50 ms",
    "p99 ms",
    "in flight / rate ms",
    "API / PostgreSQL / RabbitMQ / client CPU s",
)


@contextmanager
def workers_paused(stack: Stack) -> Iterator[None]:
    """Every service but the API stopped (SIGSTOP) inside the block, resumed after."""
    paused = [p.popen.pid for name, p in stack.processes.items() if name.startswith(WORKERS)]
    for pid in paused:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in paused:
            os.kill(pid, signal.SIGCONT)


def measure(
    stack: Stack, cloud: dict[str, str], meter: CpuMeter, requests: int, in_flight: int
) -> dict[str, Any]:
    """``requests`` creations, ``in_flight`` at a time; their rate, latency and CPU."""
    body = {"flavor": FLAVOR, "image": cloud["image"], "networks": [cloud["network"]]}
    latencies = Latencies()
    with BurstClient(stack.endpoint, {"Authorization": f"Bearer {cloud['token']}"}) as client:

        def create(i: int) -> None:
            expect(client.post("/v1/instances", json={"name": f"ceiling-{i}", **body}), 202)

        meter.start()
        started = time.perf_counter()
        burst(range(requests), create, concurrency=in_flight, latencies=latencies)
        seconds = time.perf_counter() - started
        window = meter.stop()
    summary = latencies.summary()
    if summary["failed"]:
        raise RuntimeError(f"{summary['failed']} creations failed: {summary['first_failures']}")
    rate = requests / seconds
    return {
        "in_flight": in_flight,
        "requests": requests,
        "per_second": round(rate, 1),
        "api_cpu_ms_each": round(window["cpu_s"].get("api", 0.0) / requests * 1000, 2),
        "p50_ms": summary["p50_ms"],
        "p99_ms": summary["p99_ms"],
        "littles_law_ms": round(in_flight / rate * 1000, 1),
        "cpu_s": window["cpu_s"],
    }


def row(result: dict[str, Any]) -> list[str]:
    cpu = result["cpu_s"]
    parties = ("api", "postgresql", "rabbitmq", "benchmark client")
    return [
        fmt(result["in_flight"]),
        fmt(result["requests"]),
        fmt(result["per_second"]),
        fmt(result["api_cpu_ms_each"]),
        fmt(result["p50_ms"]),
        fmt(result["p99_ms"]),
        fmt(result["littles_law_ms"]),
        " / ".join(fmt(cpu.get(name)) for name in parties),
    ]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="The API's ceiling: creations a second with every worker paused.",
    )
    parser.add_argument(
        "--in-flight", default="10,50", help="requests at once, comma-separated (10,50)"
    )
    parser.add_argument(
        "--requests", type=int, default=2000, help="creations per number in flight (2000)"
    )
    parser.add_argument(
        "--api-workers", type=int, default=API_WORKERS, help="API processes (2, as compose)"
    )
    parser.add_argument("--json", action="store_true", help="also print each result as JSON")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    in_flight = [int(x) for x in args.in_flight.split(",") if x.strip()]
    results = []
    facts = ", ".join(f"{k} {v}" for k, v in machine_facts().items())
    with tetsu_stack(1, api_workers=args.api_workers) as stack:
        with stack.client() as admin:
            cloud = prepare_cloud(admin, stack)
        parties = cpu_parties(stack)
        meter = CpuMeter({k: v for k, v in parties.items() if not k.startswith(WORKERS)})
        with workers_paused(stack):
            measure(stack, cloud, meter, min(200, args.requests), in_flight[0])  # warm up
            for count in in_flight:
                log(f"[ceiling] {args.requests} creations, {count} at a time, workers paused")
                results.append(measure(stack, cloud, meter, args.requests, count))
    print(f"The API alone ({args.api_workers} process(es)), workers paused. Machine: {facts}")
    print(text_table(COLUMNS, [row(r) for r in results]))
    if args.json:
        for result in results:
            print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
