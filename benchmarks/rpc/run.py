"""Run the RPC benchmarks of kombu, oslo.messaging, nameko and tetsu on one RabbitMQ.

For every framework: a fresh topic (and, when ``rabbitmqctl`` works, a temporary vhost
that is deleted afterwards, so no queue, exchange or message is left behind), start
its server, wait for READY, run call c=1, call c=8, cast c=1 and cast c=8 clients,
stop the server, then print one table (and optionally append it to a Markdown file).

oslo.messaging and nameko run from isolated venvs under benchmarks/.venvs/ that are
created on first use; kombu and tetsu run with this interpreter.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib
import json
import os
import platform
import queue
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

HERE = Path(__file__).resolve().parent
VENVS = HERE.parent / ".venvs"
DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/"
CASES: tuple[tuple[str, int], ...] = (("call", 1), ("call", 8), ("cast", 1), ("cast", 8))
READY_TIMEOUT = 90.0
STOP_TIMEOUT = 15.0
DRAIN_TIMEOUT = 60.0
AIM_CALLS_VS_OSLO = 2.0
AIM_P50_VS_KOMBU = 1.3
AIM_CASTS_PER_S = 2500.0


@dataclass(frozen=True)
class Framework:
    key: str
    script: str
    venv: str | None = None  # name under benchmarks/.venvs, None = this interpreter
    requirement: str | None = None  # pip requirement for the venv
    distribution: str | None = None  # its distribution name, to check what is installed


FRAMEWORKS: dict[str, Framework] = {
    f.key: f
    for f in (
        Framework("kombu", "bench_kombu.py"),
        Framework("oslo", "bench_oslo.py", "oslo", "oslo.messaging==18.3.1", "oslo.messaging"),
        Framework("nameko", "bench_nameko.py", "nameko", "nameko==2.14.1", "nameko"),
        Framework("tetsu", "bench_tetsu.py"),
    )
}


@dataclass
class Outcome:
    """Everything measured (or gone wrong) for one framework."""

    framework: Framework
    results: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    skipped: str | None = None

    def get(self, mode: str, concurrency: int, key: str) -> Any:
        return self.results.get((mode, concurrency), {}).get(key)

    @property
    def name(self) -> str:
        first = next(iter(self.results.values()), None)
        return str(first["framework"]) if first else self.framework.key

    @property
    def version(self) -> str:
        first = next(iter(self.results.values()), None)
        return str(first["version"]) if first else "-"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- environment ------------------------------------------------------------------------


def installed_version(python: Path, distribution: str) -> str | None:
    probe = f"import importlib.metadata as m; print(m.version({distribution!r}))"
    done = subprocess.run([str(python), "-c", probe], check=False, capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else None


def ensure_venv(fw: Framework) -> Path:
    """Return the interpreter for ``fw``, creating and filling its venv if needed."""
    if fw.venv is None:
        return Path(sys.executable)
    assert fw.requirement and fw.distribution
    venv = VENVS / fw.venv
    python = venv / "bin" / "python"
    wanted = fw.requirement.split("==")[1]
    if python.exists() and installed_version(python, fw.distribution) == wanted:
        return python
    log(f"[{fw.key}] creating {venv} with {fw.requirement} (first run only)")
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", fw.requirement],
        check=False,
        capture_output=True,
        text=True,
    )
    if pip.returncode != 0 or installed_version(python, fw.distribution) != wanted:
        raise RuntimeError(f"pip install {fw.requirement} failed:\n{pip.stderr[-2000:]}")
    return python


def rabbitmqctl(*args: str, timeout: float = 60.0) -> str | None:
    """Run ``rabbitmqctl -q ARGS``; None when it is missing or fails."""
    if shutil.which("rabbitmqctl") is None:
        return None
    try:
        done = subprocess.run(
            ["rabbitmqctl", "-q", *args],
            check=False,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return None
    return done.stdout if done.returncode == 0 else None


@contextlib.contextmanager
def isolated_vhost(url: str, key: str, notes: list[str]) -> Iterator[tuple[str, str | None]]:
    """Yield (url, vhost) on a temporary vhost, deleted on exit; else the url unchanged."""
    parts = urlsplit(url)
    vhost = f"tetsu-bench-{key}-{uuid.uuid4().hex[:8]}"
    user = parts.username or "guest"
    if (
        rabbitmqctl("add_vhost", vhost) is None
        or rabbitmqctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*") is None
    ):
        rabbitmqctl("delete_vhost", vhost)
        notes.append("rabbitmqctl unusable: ran in the URL's vhost, queues were left behind")
        yield url, None
        return
    try:
        yield urlunsplit(parts._replace(path="/" + quote(vhost, safe=""))), vhost
    finally:
        if rabbitmqctl("delete_vhost", vhost) is None:
            notes.append(f"could not delete temporary vhost {vhost}")


def queued_messages(vhost: str) -> int | None:
    out = rabbitmqctl("list_queues", "-p", vhost, "--no-table-headers", "messages")
    if out is None:
        return None
    return sum(int(n) for n in out.split() if n.isdigit())


def wait_drained(vhost: str | None, timeout: float) -> bool:
    """Wait until the server consumed every queued message (so runs do not overlap)."""
    if vhost is None:
        time.sleep(2.0)
        return True
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if queued_messages(vhost) == 0:
            return True
        time.sleep(0.5)
    return False


# --- one framework ----------------------------------------------------------------------


class Server:
    """A bench server subprocess: started, awaited until READY, stopped by SIGTERM."""

    def __init__(self, python: Path, script: Path, url: str, topic: str, workers: int) -> None:
        # Kept open for the server's lifetime, closed by stop().
        self._stderr = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115
        command = [str(python), str(script), "server", "--url", url, "--topic", topic]
        self._proc = subprocess.Popen(
            [*command, "--workers", str(workers)],
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            cwd=HERE,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        self.stats: dict[str, int] | None = None
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            self._lines.put(line.strip())
        self._lines.put(None)

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._lines.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                raise RuntimeError(f"server exited before READY:\n{self.stderr_tail()}")
            if line == "READY":
                return
        raise RuntimeError(f"server not READY after {timeout:.0f} s:\n{self.stderr_tail()}")

    def stop(self) -> str | None:
        """SIGTERM, then kill; return a problem description or None."""
        problem = None
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
                problem = f"server ignored SIGTERM for {STOP_TIMEOUT:.0f} s and was killed"
        if problem is None and self._proc.returncode != 0:
            problem = f"server exited with {self._proc.returncode}: {self.stderr_tail(3)}"
        while True:
            try:
                line = self._lines.get(timeout=2.0)
            except queue.Empty:
                break
            if line is None:
                break
            if line.startswith("STATS "):
                self.stats = json.loads(line[len("STATS ") :])
        self._stderr.close()
        return problem

    def stderr_tail(self, lines: int = 15) -> str:
        self._stderr.seek(0)
        return "\n".join(self._stderr.read().splitlines()[-lines:])


def run_client(
    python: Path, script: Path, url: str, topic: str, mode: str, concurrency: int, args: Any
) -> dict[str, Any]:
    command = [str(python), str(script), "client", "--url", url, "--topic", topic]
    command += ["--mode", mode, "--concurrency", str(concurrency)]
    command += ["--duration", str(args.duration), "--warmup", str(args.warmup)]
    done = subprocess.run(
        command,
        check=False,
        capture_output=True,
        text=True,
        cwd=HERE,
        timeout=args.duration + args.warmup + 120,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = "\n".join(done.stderr.splitlines()[-15:])
        raise RuntimeError(f"client {mode} c={concurrency} failed ({done.returncode}):\n{tail}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def bench_framework(fw: Framework, args: argparse.Namespace) -> Outcome:
    outcome = Outcome(fw)
    script = HERE / fw.script
    if not script.exists():
        outcome.skipped = f"{script.relative_to(HERE.parent.parent)} not found, skipped"
        return outcome
    try:
        python = ensure_venv(fw)
    except (RuntimeError, subprocess.CalledProcessError) as exc:
        fail(outcome, f"venv setup: {exc}")
        return outcome
    topic = f"bench_{fw.key}_{uuid.uuid4().hex[:8]}"
    with isolated_vhost(args.url, fw.key, outcome.notes) as (url, vhost):
        log(f"[{fw.key}] topic {topic}" + (f", vhost {vhost}" if vhost else ""))
        server = Server(python, script, url, topic, args.workers)
        try:
            server.wait_ready(READY_TIMEOUT)
            for mode, concurrency in CASES:
                log(f"[{fw.key}] {mode} c={concurrency} ...")
                result = run_client(python, script, url, topic, mode, concurrency, args)
                outcome.results[(mode, concurrency)] = result
                log(f"[{fw.key}]   {result['per_s']:.0f}/s p50 {result['p50_ms']} ms")
                if mode == "cast" and not wait_drained(vhost, DRAIN_TIMEOUT):
                    outcome.notes.append(f"queue not drained {DRAIN_TIMEOUT:.0f} s after casts")
            time.sleep(0.5)  # let handlers that already took a message finish
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            fail(outcome, str(exc))
        finally:
            problem = server.stop()
            if problem:
                outcome.notes.append(problem)
    check_server_counts(outcome, server.stats)
    for result in outcome.results.values():
        note = result.get("note")
        if note and note not in outcome.notes:
            outcome.notes.append(note)
    return outcome


def merge_rounds(rounds: list[Outcome]) -> Outcome:
    """One framework's rounds as one outcome: the median of each figure, every note once."""
    merged = Outcome(rounds[0].framework, skipped=rounds[0].skipped)
    for outcome in rounds:
        merged.notes += [note for note in outcome.notes if note not in merged.notes]
    for case in CASES:
        runs = [o.results[case] for o in rounds if case in o.results]
        if not runs:
            continue
        result = dict(runs[0])
        for key in ("per_s", "p50_ms", "p99_ms"):
            values = [r[key] for r in runs if r.get(key) is not None]
            result[key] = statistics.median(values) if values else None
        result["rounds"] = len(runs)
        merged.results[case] = result
    return merged


def fail(outcome: Outcome, message: str) -> None:
    """Log the whole failure; keep its first and last line as the report's note."""
    log(f"[{outcome.framework.key}] FAILED: {message}")
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    summary = lines[0] if lines else "unknown error"
    if len(lines) > 1:
        summary += f" ... {lines[-1]}"
    outcome.notes.append(f"FAILED: {summary}")


def check_server_counts(outcome: Outcome, stats: dict[str, int] | None) -> None:
    """Compare what the clients got through with what the server reports it handled."""
    if not outcome.results:
        return
    if stats is None:
        outcome.notes.append("server printed no STATS line")
        return
    sent = {
        mode: sum(int(r.get("sent", 0)) for (m, _), r in outcome.results.items() if m == mode)
        for mode in ("call", "cast")
    }
    outcome.notes.append(
        f"server handled {stats['calls']} calls of {sent['call']} answered, "
        f"{stats['notes']} casts of {sent['cast']} confirmed/sent (warmup included)"
    )


# --- report -----------------------------------------------------------------------------

COLUMNS = (
    "framework",
    "version",
    "call p50 ms",
    "call p99 ms",
    "calls/s c=1",
    "calls/s c=8",
    "casts/s c=1",
    "casts/s c=8",
    "cast confirms",
)


def fmt(value: Any, digits: int = 0) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float | int):
        return f"{value:,.{digits}f}"
    return str(value)


def table_rows(outcomes: list[Outcome]) -> list[list[str]]:
    rows = []
    for o in outcomes:
        if not o.results:
            continue
        confirms = o.get("cast", 1, "confirms")
        if confirms is None:
            confirms = o.get("cast", 8, "confirms")
        rows.append(
            [
                o.name,
                o.version,
                fmt(o.get("call", 1, "p50_ms"), 2),
                fmt(o.get("call", 1, "p99_ms"), 2),
                fmt(o.get("call", 1, "per_s")),
                fmt(o.get("call", 8, "per_s")),
                fmt(o.get("cast", 1, "per_s")),
                fmt(o.get("cast", 8, "per_s")),
                fmt(confirms),
            ]
        )
    return rows


def ratio_lines(outcomes: list[Outcome]) -> list[str]:
    by_key = {o.framework.key: o for o in outcomes if o.results}
    tetsu = by_key.get("tetsu")
    if tetsu is None:
        return []

    def verdict(ok: bool) -> str:
        return "OK" if ok else "MISSED"

    lines = []
    t_calls = tetsu.get("call", 1, "per_s")
    t_p50 = tetsu.get("call", 1, "p50_ms")
    for other in ("oslo", "nameko", "kombu"):
        o_calls = by_key[other].get("call", 1, "per_s") if other in by_key else None
        if t_calls and o_calls:
            ratio = t_calls / o_calls
            aim = ""
            if other == "oslo":
                aim = f" (aim >= {AIM_CALLS_VS_OSLO:g}x: {verdict(ratio >= AIM_CALLS_VS_OSLO)})"
            lines.append(f"tetsu calls/s c=1 / {other} calls/s c=1 = {ratio:.2f}x{aim}")
    k_p50 = by_key["kombu"].get("call", 1, "p50_ms") if "kombu" in by_key else None
    if t_p50 and k_p50:
        ratio = t_p50 / k_p50
        lines.append(
            f"tetsu call p50 / kombu call p50 = {ratio:.2f}x "
            f"(aim <= {AIM_P50_VS_KOMBU:g}x: {verdict(ratio <= AIM_P50_VS_KOMBU)})"
        )
    casts = [tetsu.get("cast", c, "per_s") for c in (1, 8)]
    best = max((c for c in casts if c is not None), default=None)
    if best is not None:
        confirmed = bool(tetsu.get("cast", 1, "confirms") or tetsu.get("cast", 8, "confirms"))
        verdict_text = (
            verdict(best >= AIM_CASTS_PER_S) if confirmed else "not applicable: NOT confirmed"
        )
        lines.append(
            f"tetsu casts/s with confirms = {fmt(casts[0])} (c=1), {fmt(casts[1])} (c=8) "
            f"(aim >= {AIM_CASTS_PER_S:,.0f}/s: {verdict_text})"
        )
    return lines


def plain_table(rows: list[list[str]]) -> str:
    """Align the table as text: names left, numbers right."""
    header = list(COLUMNS)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        padded = [
            cell.ljust(width) if i < 2 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(padded)

    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def print_table(rows: list[list[str]]) -> None:
    """Print with rich when this interpreter has it, else as aligned plain text."""
    try:
        console = importlib.import_module("rich.console")
        rich_table = importlib.import_module("rich.table")
    except ImportError:
        print(plain_table(rows))
        return
    table = rich_table.Table(title="RPC on one RabbitMQ")
    for i, column in enumerate(COLUMNS):
        table.add_column(column, justify="left" if i < 2 else "right")
    for row in rows:
        table.add_row(*row)
    # Off a terminal rich assumes 80 columns and would truncate the headers.
    console.Console(width=None if sys.stdout.isatty() else 160).print(table)


def markdown_table(rows: list[list[str]]) -> str:
    head = "| " + " | ".join(COLUMNS) + " |"
    rule = "|" + "|".join("---" if i < 2 else "---:" for i in range(len(COLUMNS))) + "|"
    return "\n".join([head, rule] + ["| " + " | ".join(r) + " |" for r in rows])


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
    rabbit = rabbitmqctl("version")
    facts["RabbitMQ"] = rabbit.strip() if rabbit else "unknown (rabbitmqctl unavailable)"
    return facts


def write_markdown(
    path: Path, outcomes: list[Outcome], args: argparse.Namespace, memory: str | None
) -> None:
    facts = machine_facts()
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    versions = ", ".join(f"{o.name} {o.version}" for o in outcomes if o.results)
    parts = [
        f"## RPC benchmark, {when}",
        "",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in facts.items()) + ".",
        "",
        f"Frameworks: {versions}.",
        "",
        f"Each client run: {args.warmup:g} s warmup, then {args.duration:g} s measured; "
        f"figures are the median of {args.rounds} interleaved round(s); "
        f"server workers: {args.workers}; latency columns are call c=1; "
        "casts are persistent to a durable queue.",
        "",
        markdown_table(table_rows(outcomes)),
        "",
    ]
    ratios = ratio_lines(outcomes) + ([memory] if memory else [])
    if ratios:
        parts += [f"- {line}" for line in ratios] + [""]
    for o in outcomes:
        if o.skipped:
            parts.append(f"- {o.framework.key}: {o.skipped}")
        parts += [f"- {o.name}: {note}" for note in o.notes]
    parts.append("")
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as handle:
        if path.stat().st_size > 0:
            handle.write("\n")
        handle.write("\n".join(parts))


# --- main -------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "Cases per framework: call c=1, call c=8, cast c=1, cast c=8. "
            "Casts are persistent messages to a durable queue; the 'cast confirms' column "
            "says whether each was confirmed by the broker before it counted. "
            "bench_tetsu.py is included when it exists."
        ),
    )
    parser.add_argument(
        "--duration", type=float, default=5.0, help="measured seconds per client run (5)"
    )
    parser.add_argument(
        "--warmup", type=float, default=1.0, help="unmeasured seconds before each run (1)"
    )
    parser.add_argument("--url", default=DEFAULT_URL, help=f"AMQP URL ({DEFAULT_URL})")
    parser.add_argument("--workers", type=int, default=8, help="server handlers (8)")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run every framework this many times, interleaved, and report medians (1)",
    )
    parser.add_argument(
        "--only",
        default=",".join(FRAMEWORKS),
        help="comma-separated subset of: " + ", ".join(FRAMEWORKS) + " (default: all)",
    )
    parser.add_argument(
        "--markdown", type=Path, metavar="FILE", help="append a dated section to FILE"
    )
    args = parser.parse_args(argv)
    args.only = [k.strip() for k in args.only.split(",") if k.strip()]
    unknown = [k for k in args.only if k not in FRAMEWORKS]
    if unknown:
        parser.error(f"unknown framework(s) in --only: {', '.join(unknown)}")
    return args


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through the cleanup (servers, vhosts)


def memory_line(args: argparse.Namespace) -> str | None:
    """libs/rpc over its in-memory transport (one process, no broker), when tetsu runs."""
    script = HERE / "bench_tetsu.py"
    if "tetsu" not in args.only or not script.exists():
        return None
    log("[tetsu-memory] call c=1 ...")
    done = subprocess.run(
        [sys.executable, str(script), "memory", "--duration", str(args.duration)],
        capture_output=True,
        text=True,
        timeout=args.duration + 60,
        check=False,
    )
    if done.returncode != 0:
        return f"tetsu memory transport: failed ({done.stderr.strip()[-200:]})"
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return (
        f"tetsu memory transport (one process, no broker): call p50 {result['p50_ms']} ms, "
        f"p99 {result['p99_ms']} ms, {fmt(result['per_s'])} calls/s c=1"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    rounds: dict[str, list[Outcome]] = {key: [] for key in args.only}
    for number in range(args.rounds):  # interleaved, so slow spells of the machine are shared
        if args.rounds > 1:
            log(f"round {number + 1} of {args.rounds}")
        for key in args.only:
            rounds[key].append(bench_framework(FRAMEWORKS[key], args))
    outcomes = [merge_rounds(rounds[key]) for key in args.only]
    memory = memory_line(args)
    print()
    print_table(table_rows(outcomes))
    for line in ratio_lines(outcomes) + ([memory] if memory else []):
        print(line)
    for o in outcomes:
        if o.skipped:
            print(f"{o.framework.key}: {o.skipped}")
        for note in o.notes:
            print(f"{o.name}: {note}")
    if args.markdown:
        write_markdown(args.markdown, outcomes, args, memory)
        print(f"appended to {args.markdown}")
    incomplete = [o for o in outcomes if o.skipped is None and len(o.results) < len(CASES)]
    return 1 if incomplete or not any(o.results for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
