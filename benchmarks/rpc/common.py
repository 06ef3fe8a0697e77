"""Shared, stdlib-only helpers for the bench_*.py RPC benchmark scripts.

Every bench script has the same CLI (``server`` and ``client`` subcommands), the same
client loop (N concurrent callers, a warmup, then a timed window) and prints the same
JSON result line. This module holds those parts so the scripts only contain the
framework-specific code. It must stay importable from every benchmark venv, so it
uses the standard library only (``threading`` is monkey-patched by eventlet in the
nameko script, which turns the callers into greenthreads).
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

# The argument every benchmark echoes back or casts: small, like a typical control message.
VALUE = "tetsu-bench-0123456789abcdef"
DEFAULT_WORKERS = 8
DEFAULT_WARMUP = 1.0
SETUP_TIMEOUT = 60.0


class Caller(Protocol):
    """One concurrent caller: performs one operation per call, owns its connection."""

    def __call__(self) -> None: ...

    def close(self) -> None: ...


@dataclass
class _CallerStats:
    measured: int = 0
    sent: int = 0
    last_end: float = 0.0
    latencies: list[float] = field(default_factory=list)
    error: BaseException | None = None


@dataclass
class LoadResult:
    """Outcome of one client run."""

    ops: int
    sent: int
    seconds: float
    latencies: list[float]

    @property
    def per_s(self) -> float:
        return self.ops / self.seconds if self.seconds > 0 else 0.0


def build_parser(description: str) -> argparse.ArgumentParser:
    """Return the CLI shared by every bench script."""
    parser = argparse.ArgumentParser(description=description)
    sub = parser.add_subparsers(dest="role", required=True)

    server = sub.add_parser("server", help="serve echo(value) and the note(value) cast")
    server.add_argument("--url", required=True, help="AMQP URL of the broker")
    server.add_argument("--topic", required=True, help="topic / service name to serve")
    server.add_argument(
        "--workers", type=int, default=DEFAULT_WORKERS, help="concurrent handlers (default 8)"
    )

    client = sub.add_parser("client", help="load the server, print one JSON result line")
    client.add_argument("--url", required=True, help="AMQP URL of the broker")
    client.add_argument("--topic", required=True, help="topic / service name to call")
    client.add_argument("--mode", choices=("call", "cast"), required=True)
    client.add_argument("--concurrency", type=int, default=1, help="concurrent callers")
    client.add_argument(
        "--duration", type=float, required=True, help="measured seconds (after the warmup)"
    )
    client.add_argument(
        "--warmup", type=float, default=DEFAULT_WARMUP, help="unmeasured seconds first (1)"
    )
    return parser


def run_load(
    make_caller: Callable[[], Caller], concurrency: int, duration: float, warmup: float
) -> LoadResult:
    """Run ``concurrency`` callers in threads; measure the window after ``warmup``.

    Each thread builds its caller (connection setup is not timed), all threads start
    together, run unmeasured for ``warmup`` seconds, then every operation *started*
    inside the ``duration`` window is counted and timed. ``seconds`` runs from the
    window's start to the last counted completion. Any failed operation aborts the run.
    """
    stats = [_CallerStats() for _ in range(concurrency)]
    window: dict[str, float] = {}

    def start_window() -> None:
        now = time.perf_counter()
        window["from"] = now + warmup
        window["until"] = now + warmup + duration

    barrier = threading.Barrier(concurrency, action=start_window)

    def worker(mine: _CallerStats) -> None:
        caller: Caller | None = None
        try:
            caller = make_caller()
            barrier.wait(timeout=SETUP_TIMEOUT)
            measure_from, until = window["from"], window["until"]
            while True:
                began = time.perf_counter()
                if began >= until:
                    break
                caller()
                ended = time.perf_counter()
                mine.sent += 1
                if began >= measure_from:
                    mine.measured += 1
                    mine.latencies.append(ended - began)
                    mine.last_end = ended
        except BaseException as exc:  # reported by the main thread
            mine.error = exc
            barrier.abort()
        finally:
            if caller is not None:
                try:
                    caller.close()
                except Exception as exc:
                    print(f"warning: closing a caller failed: {exc!r}", file=sys.stderr)

    threads = [
        threading.Thread(target=worker, args=(s,), name=f"caller-{i}", daemon=True)
        for i, s in enumerate(stats)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    errors = [s.error for s in stats if s.error is not None]
    real = [e for e in errors if not isinstance(e, threading.BrokenBarrierError)]
    if errors:
        raise RuntimeError(f"{len(errors)} caller(s) failed: {(real or errors)[0]!r}")
    latencies = [lat for s in stats for lat in s.latencies]
    last_end = max(s.last_end for s in stats)
    seconds = max(last_end - window["from"], 0.0)
    return LoadResult(
        ops=sum(s.measured for s in stats),
        sent=sum(s.sent for s in stats),
        seconds=seconds,
        latencies=latencies,
    )


def percentile_ms(samples: list[float], pct: float) -> float | None:
    """Nearest-rank percentile of ``samples`` (seconds), in milliseconds."""
    if not samples:
        return None
    ordered = sorted(samples)
    rank = min(max(1, math.ceil(pct / 100.0 * len(ordered))), len(ordered))
    return round(ordered[rank - 1] * 1000.0, 3)


def emit_result(
    *,
    framework: str,
    version: str,
    mode: str,
    concurrency: int,
    result: LoadResult,
    confirms: bool,
    note: str | None = None,
) -> None:
    """Print the single JSON result line of a client run."""
    line: dict[str, Any] = {
        "framework": framework,
        "version": version,
        "mode": mode,
        "concurrency": concurrency,
        "ops": result.ops,
        "seconds": round(result.seconds, 4),
        "per_s": round(result.per_s, 1),
        "p50_ms": percentile_ms(result.latencies, 50),
        "p99_ms": percentile_ms(result.latencies, 99),
        "confirms": confirms,
        "sent": result.sent,
    }
    if note:
        line["note"] = note
    print(json.dumps(line), flush=True)


def announce_ready() -> None:
    """Tell the orchestrator the server consumes (the line it waits for)."""
    print("READY", flush=True)


def report_server_stats(calls: int, notes: int) -> None:
    """Print what the server handled, read by the orchestrator after SIGTERM."""
    print("STATS " + json.dumps({"calls": calls, "notes": notes}), flush=True)


def wait_for_stop_signal(poll: float = 0.2) -> None:
    """Block until SIGTERM or SIGINT.

    Polls a flag instead of waiting on an Event so that it also behaves under eventlet
    (the handler may run inside eventlet's hub, where switching greenlets is unsafe).
    """
    stop = {"flag": False}

    def handler(signum: int, frame: object) -> None:
        stop["flag"] = True

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    while not stop["flag"]:
        time.sleep(poll)


class Counter:
    """A thread-safe counter for the server's handlers."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.value = 0

    def add(self) -> None:
        with self._lock:
            self.value += 1
