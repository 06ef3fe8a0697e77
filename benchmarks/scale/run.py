"""tetsu at scale, side by side with Ironic: the burst (burst.py) for each number of nodes
and conductors, the same burst on Ironic (ironic.py), and the scheduler's decision time
(scheduler.py); prints the tables, and with ``--markdown FILE`` appends them to FILE as a
dated section.

    .venv/bin/python benchmarks/scale/run.py --markdown docs/benchmarks.md

Each piece runs in a process of its own (a fresh database, vhost and services each time),
one after the other. Needs the real RabbitMQ and PostgreSQL; Ironic's virtual environment
is made on first use (pip, a few minutes).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks.scale.common import (  # noqa: E402
    fmt,
    load_average,
    log,
    machine_facts,
    markdown_table,
    text_table,
)

HERE = Path(__file__).resolve().parent
PIECES = ("burst", "ironic", "scheduler")
AIM_ACTIVE_S = 60.0  # 1,000 instances ACTIVE
AIM_P99_MS = 250.0  # API p99 during the burst
AIM_VS_IRONIC = 3.0  # Ironic's end-to-end time / tetsu's
AIM_DECISION_MS = 20.0  # one scheduling decision at 10k nodes


def run_piece(
    script: str, *args: str, timeout: float, labels: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """Run ``script`` with this interpreter; its JSON lines, or one {"error": ...} (with
    ``labels``, e.g. the system and size, so the tables can still name the run)."""
    command = [sys.executable, str(HERE / script), *args]
    log(f"$ {' '.join(command[1:])}")
    try:
        done = subprocess.run(
            command, stdout=subprocess.PIPE, stderr=None, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        return [
            {**(labels or {}), "error": f"{script} {' '.join(args)}: no result in {timeout:.0f} s"}
        ]
    results = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not results:
        failure = f"{script} {' '.join(args)} failed (rc {done.returncode}), see its log"
        return [{**(labels or {}), "error": failure}]
    return results


def ms_pair(summary: dict[str, Any] | None) -> str:
    if not summary:
        return "-"
    return f"{fmt(summary.get('p50_ms'))} / {fmt(summary.get('p99_ms'))}"


def api_p99(result: dict[str, Any]) -> float | None:
    """The worst p99 of the burst's requests (creations, deletions, the probe's reads)."""
    values = [
        result.get(key, {}).get("p99_ms")
        for key in ("create_latency", "delete_latency", "create_probe", "delete_probe")
    ]
    present = [v for v in values if v is not None]
    return max(present) if present else None


BURST_COLUMNS = (
    "system",
    "N",
    "conductors",
    "API processes / workers' nice",
    "in flight",
    "enroll s",
    "create -> all ACTIVE s",
    "delete -> all available s",
    "create p50 / p99 ms",
    "delete p50 / p99 ms",
    "GET during burst p50 / p99 ms",
    "failed requests",
)


def burst_rows(results: list[dict[str, Any]]) -> list[list[str]]:
    rows = []
    for r in results:
        if "error" in r or "skipped" in r:
            why = r.get("error") or r.get("skipped")
            rows.append(
                [r.get("system", "?"), fmt(r.get("nodes")), fmt(r.get("conductors")), "-", "-"]
                + [str(why)[:80]]
                + ["-"] * 6
            )
            continue
        failed = sum(
            r[key]["failed"]
            for key in ("create_latency", "delete_latency", "create_probe", "delete_probe")
        )
        rows.append(
            [
                r["system"] + (f" {r['version']}" if r.get("version") else ""),
                fmt(r["nodes"]),
                fmt(r.get("conductors", "1 (all-in-one)")),
                f"{r['api_workers']} / {r['worker_nice']}" if "api_workers" in r else "-",
                fmt(r.get("concurrency")),
                fmt(r["enroll_s"]),
                fmt(r["active_s"]),
                fmt(r["available_s"]),
                ms_pair(r["create_latency"]),
                ms_pair(r["delete_latency"]),
                f"{ms_pair(r['create_probe'])}, {ms_pair(r['delete_probe'])}",
                fmt(failed),
            ]
        )
    return rows


RSS_COLUMNS = ("run", "process", "peak RSS MiB", "CPU s")


def rss_rows(results: list[dict[str, Any]]) -> list[list[str]]:
    rows = []
    for r in results:
        processes = r.get("processes") or {}
        if not processes:
            continue
        label = f"{r['system']} N={r['nodes']}" + (
            f", {r['conductors']} conductor(s)" if "conductors" in r else ""
        )
        label += f", {r['concurrency']} in flight" if r.get("concurrency") else ""
        for name, figures in processes.items():
            rows.append([label, name, fmt(figures["peak_rss_mib"]), fmt(figures["cpu_s"])])
        if processes:
            total = sum(f["peak_rss_mib"] or 0 for f in processes.values())
            cpu = sum(f["cpu_s"] or 0 for f in processes.values())
            rows.append([label, "all", fmt(round(total, 1)), fmt(round(cpu, 1))])
    return rows


CPU_COLUMNS = (
    "run",
    "requests",
    "answered in s",
    "API",
    "scheduler",
    "conductors",
    "netctl",
    "PostgreSQL",
    "RabbitMQ",
    "client",
    "all",
    "cores busy",
)
#: The parties of a burst's CPU windows (burst.cpu_parties), in the table's order; the
#: conductors are summed.
CPU_PARTIES = ("api", "scheduler", "conductor", "netctl", "postgresql", "rabbitmq")


def cpu_rows(results: list[dict[str, Any]], cores: int) -> list[list[str]]:
    """Where the machine's cores went while each burst's requests were answered, in CPU
    seconds per party: which process the requests wait for when the cores are all busy."""
    rows = []
    for r in results:
        label = f"{r.get('system')} N={r.get('nodes')}, {r.get('conductors')} conductor(s)"
        label += f", {r.get('concurrency')} in flight"
        for requests, key in (("creations", "create_cpu"), ("deletions", "delete_cpu")):
            window = r.get(key)
            if not window:
                continue
            used = window["cpu_s"]

            def party(prefix: str, used: dict[str, float] = used) -> float | None:
                found = [v for name, v in used.items() if name.startswith(prefix)]
                return round(sum(found), 2) if found else None

            everything = sum(used.values())
            busy = everything / (window["seconds"] * cores) if window["seconds"] else 0.0
            rows.append(
                [label, requests, fmt(window["seconds"])]
                + [fmt(party(name)) for name in CPU_PARTIES]
                + [fmt(used.get("benchmark client")), fmt(round(everything, 2)), f"{busy:.0%}"]
            )
    return rows


SIDE_COLUMNS = (
    "N",
    "in flight (tetsu / Ironic)",
    "tetsu ACTIVE s",
    "tetsu available s",
    "tetsu total s",
    "Ironic active s",
    "Ironic available s",
    "Ironic total s",
    "Ironic / tetsu",
)


def side_rows(tetsu: list[dict[str, Any]], ironic: list[dict[str, Any]]) -> list[list[str]]:
    """Each Ironic run beside every one-conductor tetsu run of its size (the one with as
    many requests in flight as Ironic's first)."""
    rows = []
    for i in ironic:
        if "total_s" not in i:
            continue
        same = [
            t
            for t in tetsu
            if t.get("nodes") == i["nodes"] and t.get("conductors") == 1 and "total_s" in t
        ]
        same.sort(key=lambda t: t.get("concurrency") != i.get("concurrency"))
        for t in same:
            rows.append(
                [
                    fmt(i["nodes"]),
                    f"{fmt(t.get('concurrency'))} / {fmt(i.get('concurrency'))}"
                    + (" (tetsu: 1 API process, nice 0)" if t.get("api_workers") == 1 else ""),
                    fmt(t["active_s"]),
                    fmt(t["available_s"]),
                    fmt(t["total_s"]),
                    fmt(i["active_s"]),
                    fmt(i["available_s"]),
                    fmt(i["total_s"]),
                    f"{i['total_s'] / t['total_s']:.1f}x" if t["total_s"] else "-",
                ]
            )
    return rows


SCHEDULER_COLUMNS = (
    "nodes",
    "busy",
    "decisions",
    "filter + weigh p50 ms",
    "claim p50 ms",
    "decision p50 ms",
    "decision p99 ms",
)


def scheduler_rows(results: list[dict[str, Any]]) -> list[list[str]]:
    rows = []
    for r in results:
        if "error" in r:
            rows.append(["-", "-", "-", r["error"][:80], "-", "-", "-"])
            continue
        rows.append(
            [
                fmt(r["nodes"]),
                f"{r['busy']:.0%}",
                fmt(r["decisions"]),
                fmt(r["filter_weigh_p50_ms"]),
                fmt(r["claim_p50_ms"]),
                fmt(r["total_p50_ms"]),
                fmt(r["total_p99_ms"]),
            ]
        )
    return rows


def aim_lines(
    tetsu: list[dict[str, Any]], ironic: list[dict[str, Any]], scheduler: list[dict[str, Any]]
) -> list[str]:
    def verdict(ok: bool) -> str:
        return "OK" if ok else "NOT MET"

    lines = []
    for t in tetsu:
        if "active_s" not in t:
            continue
        label = f"N={t['nodes']}, {t['conductors']} conductor(s), {t['concurrency']} in flight"
        if "api_workers" in t:
            label += f", {t['api_workers']} API process(es), workers' nice {t['worker_nice']}"
        p99 = api_p99(t)
        if t["nodes"] >= 1000:
            lines.append(
                f"tetsu {label}: all ACTIVE in {t['active_s']} s "
                f"(aim < {AIM_ACTIVE_S:g} s: {verdict(t['active_s'] < AIM_ACTIVE_S)})"
            )
        if p99 is not None:
            lines.append(
                f"tetsu {label}: API p99 during the bursts {p99} ms "
                f"(aim < {AIM_P99_MS:g} ms: {verdict(p99 < AIM_P99_MS)})"
            )
    for row in side_rows(tetsu, ironic):
        ratio = float(row[-1].rstrip("x")) if row[-1] != "-" else 0.0
        lines.append(
            f"N={row[0]}, in flight (tetsu / Ironic) {row[1]}: Ironic {row[7]} s / tetsu "
            f"{row[4]} s end to end = {row[-1]} "
            f"(aim >= {AIM_VS_IRONIC:g}x: {verdict(ratio >= AIM_VS_IRONIC)})"
        )
    for s in scheduler:
        if s.get("nodes") == 10_000 and s.get("total_p50_ms") is not None:
            lines.append(
                f"scheduler at 10,000 nodes: {s['total_p50_ms']} ms per decision (p50) "
                f"(aim < {AIM_DECISION_MS:g} ms: {verdict(s['total_p50_ms'] < AIM_DECISION_MS)})"
            )
    return lines


def notes(ironic: list[dict[str, Any]], args: argparse.Namespace) -> list[str]:
    lines = [
        f"tetsu: the services as separate processes on RabbitMQ and PostgreSQL, nodes "
        f"enrolled over REST (node, port, manage, provide) with the fake drivers and "
        f"fake_delay 0; each instance joins one network (netctl binds a port per deploy); "
        f"{args.concurrency} requests in flight, and at Ironic's sizes also "
        f"{args.ironic_concurrency} (as many as Ironic's); the services' default timers "
        f"(heartbeat 10 s, checks 5 s); as deploy/compose.yaml runs them, the API in two "
        f"processes and the workers at niceness 10 unless the row says otherwise; end "
        f"times are the rows' own updated_at.",
        f"Ironic: one process (`ironic`, rpc_transport = none), SQLite, noauth, fake-hardware "
        f"with fake interfaces, automated cleaning off, noop network (no port work); "
        f"{args.ironic_concurrency} requests in flight (its API server, cheroot with 10 "
        f"threads, reset connections at 50); end times are the nodes' provision_updated_at.",
        "GET during burst: one reader fetching an instance (Ironic: a node) every 0.1 s "
        "while the creations and then the deletions run.",
    ]
    lines += [f"Ironic skipped: {i['skipped']}" for i in ironic if "skipped" in i]
    return lines


def print_section(title: str, columns: tuple[str, ...], rows: list[list[str]]) -> None:
    if rows:
        print(f"\n{title}\n")
        print(text_table(columns, rows))


def write_markdown(
    path: Path,
    sections: list[tuple[str, tuple[str, ...], list[list[str]]]],
    lines: list[str],
    command: str,
    load_before: str,
) -> None:
    facts = machine_facts()
    facts["load average at start"] = load_before
    facts["at end"] = load_average()
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        f"## Scale: bursts side by side with Ironic, {when}",
        "",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in facts.items()) + ".",
        "",
        f"Command: `{command}`",
        "",
    ]
    for title, columns, rows in sections:
        if rows:
            parts += [f"{title}:", "", markdown_table(columns, rows), ""]
    parts += [f"- {line}" for line in lines] + [""]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as handle:
        if path.exists() and path.stat().st_size > 0:
            handle.write("\n")
        handle.write("\n".join(parts))


def parse_list(text: str) -> list[int]:
    return [int(p.replace("_", "")) for p in text.split(",") if p.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument("--nodes", default="100,1000", help="tetsu burst sizes (100,1000)")
    parser.add_argument("--conductors", default="1,2", help="conductor counts (1,2)")
    parser.add_argument("--concurrency", type=int, default=50, help="tetsu requests at once (50)")
    parser.add_argument(
        "--ironic-nodes",
        default="100",
        help="Ironic burst sizes (100; 1000 takes Ironic about ten minutes)",
    )
    parser.add_argument(
        "--ironic-concurrency", type=int, default=10, help="Ironic requests at once (10)"
    )
    parser.add_argument(
        "--scheduler-nodes", default="1000,10000,100000", help="estate sizes (1000,10000,100000)"
    )
    parser.add_argument("--decisions", type=int, default=100, help="decisions per size (100)")
    parser.add_argument(
        "--baseline",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also the smallest burst with one API process and every process at one priority",
    )
    parser.add_argument("--poll", type=float, default=1.0, help="seconds between looks (1)")
    parser.add_argument(
        "--only", default=",".join(PIECES), help="comma-separated subset of: " + ", ".join(PIECES)
    )
    parser.add_argument("--markdown", type=Path, metavar="FILE", help="append a dated section")
    parser.add_argument(
        "--json", type=Path, metavar="FILE", help="also write every raw result to FILE"
    )
    args = parser.parse_args(argv)
    args.only = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = set(args.only) - set(PIECES)
    if unknown:
        parser.error(f"unknown piece(s) in --only: {', '.join(sorted(unknown))}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    load_before = load_average()
    tetsu: list[dict[str, Any]] = []
    ironic: list[dict[str, Any]] = []
    scheduler: list[dict[str, Any]] = []
    poll = ["--poll", str(args.poll)]
    if "burst" in args.only:
        for nodes in parse_list(args.nodes):
            for conductors in parse_list(args.conductors):
                tetsu += run_piece(
                    "burst.py",
                    "--nodes", str(nodes),
                    "--conductors", str(conductors),
                    "--concurrency", str(args.concurrency),
                    *poll,
                    timeout=600 + nodes * 2,
                    labels={"system": "tetsu", "nodes": nodes, "conductors": conductors},
                )  # fmt: skip
        if "ironic" in args.only and args.ironic_concurrency != args.concurrency:
            # Also as many requests in flight as Ironic gets: side by side on equal terms.
            for nodes in parse_list(args.ironic_nodes):
                tetsu += run_piece(
                    "burst.py",
                    "--nodes", str(nodes),
                    "--conductors", "1",
                    "--concurrency", str(args.ironic_concurrency),
                    *poll,
                    timeout=600 + nodes * 2,
                    labels={"system": "tetsu", "nodes": nodes, "conductors": 1},
                )  # fmt: skip
        if args.baseline:
            # As the services ran before: one API process, every process at one priority.
            nodes = min(parse_list(args.ironic_nodes) or parse_list(args.nodes))
            tetsu += run_piece(
                "burst.py",
                "--nodes", str(nodes),
                "--conductors", "1",
                "--concurrency", str(args.ironic_concurrency),
                "--api-workers", "1",
                "--worker-nice", "0",
                *poll,
                timeout=600 + nodes * 2,
                labels={"system": "tetsu", "nodes": nodes, "conductors": 1},
            )  # fmt: skip
    if "ironic" in args.only:
        for nodes in parse_list(args.ironic_nodes):
            ironic += run_piece(
                "ironic.py",
                "--nodes", str(nodes),
                "--concurrency", str(args.ironic_concurrency),
                *poll,
                timeout=2400 + nodes * 6,
                labels={"system": "ironic", "nodes": nodes},
            )  # fmt: skip
    if "scheduler" in args.only:
        scheduler = run_piece(
            "scheduler.py",
            "--nodes", args.scheduler_nodes,
            "--decisions", str(args.decisions),
            timeout=3600,
        )  # fmt: skip
    if args.json:
        raw = {"tetsu": tetsu, "ironic": ironic, "scheduler": scheduler}
        args.json.write_text(json.dumps(raw, indent=1))
    sections = [
        ("Bursts (create N instances at once, then delete them all)", BURST_COLUMNS,
         burst_rows(tetsu + ironic)),
        ("Side by side, end to end (one tetsu conductor)", SIDE_COLUMNS,
         side_rows(tetsu, ironic)),
        ("Peak RSS and CPU per process", RSS_COLUMNS, rss_rows(tetsu + ironic)),
        ("CPU seconds while the requests were answered (each process with its children)",
         CPU_COLUMNS, cpu_rows(tetsu, len(os.sched_getaffinity(0)))),
        ("Scheduler: one decision (filters, weighers, claim) in PostgreSQL", SCHEDULER_COLUMNS,
         scheduler_rows(scheduler)),
    ]  # fmt: skip
    for title, columns, rows in sections:
        print_section(title, columns, rows)
    lines = aim_lines(tetsu, ironic, scheduler) + notes(ironic, args)
    print()
    for line in lines:
        print(line)
    if args.markdown:
        command = (
            "./.venv/bin/python benchmarks/scale/run.py "
            + " ".join(
                a for a in (argv if argv is not None else sys.argv[1:]) if a != str(args.markdown)
            )
            .replace("--markdown", "")
            .strip()
        )
        write_markdown(args.markdown, sections, lines, command.strip(), load_before)
        print(f"appended to {args.markdown}")
    failed = [r for r in tetsu + ironic + scheduler if "error" in r]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
