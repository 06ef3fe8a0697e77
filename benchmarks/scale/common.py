"""What the scale benchmarks share: latency statistics, a bounded-concurrency burst of
HTTP requests that times each one, the HTTP client the bursts use, peak RSS of processes,
and facts about the machine."""

from __future__ import annotations

import contextlib
import datetime as dt
import http.client
import json
import os
import platform
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, TypeVar
from urllib.parse import urlencode, urlsplit

ROOT = Path(__file__).resolve().parents[2]

T = TypeVar("T")
R = TypeVar("R")


def timestamp(value: str) -> float:
    """Seconds since the epoch of an ISO 8601 time as the APIs write them."""
    parsed = dt.datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed.timestamp()


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0..100) by linear interpolation; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass
class Latencies:
    """Wall-clock seconds of requests, and the ones that failed (status or exception)."""

    seconds: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, seconds: float, failure: str | None = None) -> None:
        with self._lock:
            self.seconds.append(seconds)
            if failure is not None:
                self.failures.append(failure)

    def extend(self, other: Latencies) -> None:
        with self._lock:
            self.seconds.extend(other.seconds)
            self.failures.extend(other.failures)

    def brief(self) -> str:
        """p50 and p99 for a progress line."""
        summary = self.summary()
        return f"p50 {summary['p50_ms']} ms, p99 {summary['p99_ms']} ms"

    def summary(self) -> dict[str, Any]:
        p50, p99 = percentile(self.seconds, 50), percentile(self.seconds, 99)
        return {
            "requests": len(self.seconds),
            "failed": len(self.failures),
            "p50_ms": None if p50 is None else round(p50 * 1000, 1),
            "p99_ms": None if p99 is None else round(p99 * 1000, 1),
            "max_ms": round(max(self.seconds) * 1000, 1) if self.seconds else None,
            "first_failures": self.failures[:3],
        }


def burst(
    items: Iterable[T], request: Callable[[T], R], *, concurrency: int, latencies: Latencies
) -> list[R | None]:
    """Run ``request(item)`` for every item, ``concurrency`` at a time, timing each into
    ``latencies``; a request that raises counts as failed and gives None."""

    def timed(item: T) -> R | None:
        started = time.perf_counter()
        try:
            result = request(item)
        except Exception as exc:
            latencies.add(time.perf_counter() - started, f"{type(exc).__name__}: {exc}"[:300])
            return None
        latencies.add(time.perf_counter() - started)
        return result

    with ThreadPoolExecutor(concurrency, thread_name_prefix="burst") as pool:
        return list(pool.map(timed, items))


class Reply(NamedTuple):
    """An answer of :class:`BurstClient`."""

    method: str
    path: str
    status_code: int
    headers: dict[str, str]  # names in lower case
    content: bytes

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.content)

    def raise_for_status(self) -> None:
        if self.status_code >= 400:
            raise RuntimeError(f"{self.method} {self.path}: {self.status_code} {self.text[:300]}")


#: Seconds a :class:`BurstClient` connection may sit unused before it is opened anew.
IDLE_REOPEN = 2.0


class BurstClient:
    """The client of the timed bursts, for tetsu and Ironic alike: one kept-alive
    connection per thread, on the standard library's http.client. It shares the machine
    with the services it measures, so it should cost them as little CPU as it can: httpx
    spent ~0.8 ms of CPU per request here (its connection pool, request and response
    models), this ~0.3 ms; and each thread's connection stays open for the whole burst,
    where a pool shared by the threads closed and reopened connections beyond its
    keep-alive limit."""

    def __init__(self, base_url: str, headers: dict[str, str], timeout: float = 120.0) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "http" or parts.hostname is None:
            raise ValueError(f"BurstClient speaks plain http to a host: {base_url!r}")
        self._host, self._port = parts.hostname, parts.port
        self._headers = {**headers, "Accept": "application/json"}
        self._timeout = timeout
        self._local = threading.local()
        self._connections: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    def _connection(self) -> http.client.HTTPConnection:
        """This thread's connection; a new one after IDLE_REOPEN seconds unused, before the
        server's keep-alive timeout closes it (uvicorn's is 5 s), so that no request is
        written to a connection the server is closing."""
        connection: http.client.HTTPConnection | None = getattr(self._local, "connection", None)
        now = time.monotonic()
        if connection is None:
            connection = http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)
            self._local.connection = connection
            with self._lock:
                self._connections.append(connection)
        elif now - self._local.used > IDLE_REOPEN:
            connection.close()  # http.client connects it again for the request
        self._local.used = now
        return connection

    def request(
        self, method: str, path: str, *, json_body: Any = None, params: dict[str, Any] | None = None
    ) -> Reply:
        """One request on this thread's connection (never sent twice)."""
        target = f"{path}?{urlencode(params)}" if params else path
        headers = dict(self._headers)
        body = None
        if json_body is not None:
            body = json.dumps(json_body).encode()
            headers["Content-Type"] = "application/json"
        connection = self._connection()
        try:
            connection.request(method, target, body=body, headers=headers)
            response = connection.getresponse()
            content = response.read()
        except BaseException:
            connection.close()  # http.client connects it again for the next request
            raise
        self._local.used = time.monotonic()
        received = {name.lower(): value for name, value in response.getheaders()}
        return Reply(method, path, response.status, received, content)

    def get(self, path: str, params: dict[str, Any] | None = None) -> Reply:
        return self.request("GET", path, params=params)

    def post(self, path: str, json: Any = None) -> Reply:
        return self.request("POST", path, json_body=json)

    def put(self, path: str, json: Any = None) -> Reply:
        return self.request("PUT", path, json_body=json)

    def delete(self, path: str) -> Reply:
        return self.request("DELETE", path)

    def close(self) -> None:
        with self._lock:
            connections, self._connections = self._connections, []
        for connection in connections:
            connection.close()

    def __enter__(self) -> BurstClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Prober:
    """One thread that times a cheap read every ``interval`` seconds while a burst runs, so
    the figures say how the API answers a user who just looks while others write."""

    def __init__(self, probe: Callable[[], object], interval: float = 0.1) -> None:
        self.probe = probe
        self.interval = interval
        self.latencies = Latencies()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="prober", daemon=True)

    def __enter__(self) -> Prober:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            started = time.perf_counter()
            try:
                self.probe()
            except Exception as exc:
                failure = f"{type(exc).__name__}: {exc}"[:300]
                self.latencies.add(time.perf_counter() - started, failure)
                continue
            self.latencies.add(time.perf_counter() - started)


def wait_until(
    condition: Callable[[], Any], *, timeout: float, interval: float = 0.2, what: str
) -> Any:
    """Poll ``condition`` until it returns something truthy; RuntimeError after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = condition()
        if last:
            return last
        time.sleep(interval)
    raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")


def _status_kib(pid: int, key: str) -> int | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return None


def peak_rss_mib(pid: int) -> float | None:
    """The process's peak resident set size so far (VmHWM), in MiB; None once it is gone."""
    kib = _status_kib(pid, "VmHWM")
    return None if kib is None else round(kib / 1024, 1)


def process_children() -> dict[int, list[int]]:
    """Every running process's children, by the parent's pid (one read of /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = (entry / "stat").read_text()
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(entry.name))
    return children


def descendants(pid: int, children: dict[int, list[int]] | None = None) -> list[int]:
    """``pid`` and every process below it (children of children too), from ``children``
    (:func:`process_children`, read now when not given)."""
    if children is None:
        children = process_children()
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def cpu_seconds(pid: int) -> float | None:
    """User plus system CPU time the process has used so far."""
    figures = _own_and_reaped_seconds(pid)
    return None if figures is None else figures[0]


def _own_and_reaped_seconds(pid: int) -> tuple[float, float] | None:
    """A process's own CPU time (user + system) and that of its children it has reaped."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks, (
            int(fields[13]) + int(fields[14])
        ) / ticks
    return None


def tree_cpu_seconds(pid: int, children: dict[int, list[int]] | None = None) -> float | None:
    """CPU time of ``pid`` and every process below it so far (``children`` as for
    :func:`descendants`), counting those that have exited and been reaped (PostgreSQL's
    backends come and go): a difference of two of these is what the tree used in
    between."""
    root = _own_and_reaped_seconds(pid)
    if root is None:
        return None
    total = root[0] + root[1]
    for child in descendants(pid, children)[1:]:
        figures = _own_and_reaped_seconds(child)
        if figures is not None:
            total += figures[0] + figures[1]
    return total


def find_process(*words: str) -> int | None:
    """The oldest process whose command line holds every one of ``words`` (the RabbitMQ
    node on this machine, say); None if there is none or it cannot be read."""
    found: list[tuple[float, int]] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if all(word in command for word in words):
                started = float((entry / "stat").read_text().rsplit(")", 1)[1].split()[19])
                found.append((started, int(entry.name)))
    return min(found)[1] if found else None


class CpuMeter:
    """The CPU time each party (a name for a process tree) uses between :meth:`start` and
    :meth:`stop`: where a machine's cores went while a burst's requests were answered.
    A party whose process is gone or unreadable is left out."""

    def __init__(self, parties: dict[str, int]) -> None:
        self.parties = parties
        self._started: dict[str, float] = {}
        self._wall = 0.0

    def _now(self) -> dict[str, float]:
        now = {}
        children = process_children()  # one read of /proc for every party's tree
        for name, pid in self.parties.items():
            own = pid == os.getpid()  # its tree holds the services it started
            seconds = cpu_seconds(pid) if own else tree_cpu_seconds(pid, children)
            if seconds is not None:
                now[name] = seconds
        return now

    def start(self) -> None:
        self._wall = time.monotonic()
        self._started = self._now()

    def stop(self) -> dict[str, Any]:
        """The window's length and each party's CPU seconds in it."""
        wall = time.monotonic() - self._wall
        now = self._now()
        used = {
            name: round(now[name] - self._started[name], 2) for name in now if name in self._started
        }
        return {"seconds": round(wall, 2), "cpu_s": used}


def load_average() -> str:
    with contextlib.suppress(OSError):
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return "unknown"


def machine_facts() -> dict[str, str]:
    """Hostname-free facts about the machine that ran the benchmark."""
    facts: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                facts["CPU"] = line.split(":", 1)[1].strip()
                break
    facts["nproc"] = str(len(os.sched_getaffinity(0)))
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                facts["RAM"] = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
                break
    facts["kernel"] = platform.release()
    facts["Python"] = platform.python_version()
    facts["load average at start"] = load_average()
    return facts


def fmt(value: Any, unit: str = "") -> str:
    """A table cell: '-' for nothing, thousands separated, one decimal for floats."""
    if value is None:
        return "-"
    if isinstance(value, float):
        text = f"{value:,.1f}" if value < 100 else f"{value:,.0f}"
    elif isinstance(value, int):
        text = f"{value:,}"
    else:
        text = str(value)
    return text + unit


def text_table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(columns)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            cell.ljust(width) if i == 0 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        )

    return "\n".join([line(columns), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "| " + " | ".join(columns) + " |"
    rule = "|" + "|".join("---" if i == 0 else "---:" for i in range(len(columns))) + "|"
    return "\n".join([head, rule] + ["| " + " | ".join(r) + " |" for r in rows])


def mean(values: Iterable[float]) -> float | None:
    listed = list(values)
    return statistics.fmean(listed) if listed else None
