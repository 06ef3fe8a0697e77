"""The scheduler's decision time with 1k, 10k and 100k nodes in PostgreSQL.

For each size: a fresh database, the nodes (four hardware sizes, a tenth of another
resource class, half of them busy with an instance) and one port each inserted straight
into PostgreSQL, then many decisions, one BUILD instance each, timed in two parts with
the scheduler's own code, the way ``SchedulerManager`` makes its first round:
``ranked_candidates`` (the filters and weighers) and the atomic ``claim_node`` of the best
candidate (of the next ones if it was taken). The instance rows are made before the clock
starts.

    .venv/bin/python benchmarks/scale/scheduler.py --nodes 1000,10000,100000

prints one JSON object per size on stdout.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from sqlalchemy import insert  # noqa: E402

from benchmarks.scale.common import log, percentile  # noqa: E402
from libs.db import (  # noqa: E402
    Database,
    Flavor,
    Image,
    ImageStatus,
    Instance,
    InstanceStatus,
    Network,
    Node,
    Port,
    PowerState,
    Project,
    TaskState,
    utcnow,
)
from libs.rpc import MemoryTransport  # noqa: E402
from services.scheduler.claims import ClaimOutcome, claim_node  # noqa: E402
from services.scheduler.manager import SchedulerManager  # noqa: E402
from services.scheduler.request import RequestSpec  # noqa: E402
from services.scheduler.settings import SchedulerSettings  # noqa: E402
from tests.integration.conftest import create_database, drop_database  # noqa: E402

#: (cpus, memory_mb, disk_gb) of the estate's hardware; the flavor fits all of them.
HARDWARE = ((8, 16384, 200), (16, 32768, 500), (32, 65536, 1000), (64, 131072, 2000))
BATCH = 5000


def populate(db: Database, count: int, *, busy: float, seed: int) -> None:
    """``count`` nodes with a port each, straight into the tables, in batches."""
    rng = random.Random(seed)
    now = utcnow()
    macs = itertools.count(1)
    for start in range(0, count, BATCH):
        nodes: list[dict[str, Any]] = []
        ports: list[dict[str, Any]] = []
        for i in range(start, min(start + BATCH, count)):
            cpus, memory_mb, disk_gb = rng.choice(HARDWARE)
            node_id = str(uuid.uuid4())
            is_busy = rng.random() < busy
            nodes.append(
                {
                    "id": node_id,
                    "name": f"node-{i:07d}",
                    "resource_class": "gpu" if rng.random() < 0.1 else "baremetal",
                    "cpus": cpus,
                    "memory_mb": memory_mb,
                    "disk_gb": disk_gb,
                    "power_interface": "fake",
                    "boot_interface": "fake",
                    "deploy_interface": "fake",
                    "management_interface": "fake",
                    "driver_info": {},
                    "driver_internal_info": {},
                    "provision_state": "active" if is_busy else "available",
                    "power_state": PowerState.ON.value if is_busy else PowerState.OFF.value,
                    "maintenance": False,
                    "instance_id": str(uuid.uuid4()) if is_busy else None,
                    "created_at": now,
                    "updated_at": now,
                }
            )
            mac = next(macs)
            ports.append(
                {
                    "id": str(uuid.uuid4()),
                    "address": "52:54:"
                    + ":".join(f"{(mac >> s) & 0xFF:02x}" for s in (24, 16, 8, 0)),
                    "node_id": node_id,
                    "binding": "none",
                    "created_at": now,
                }
            )
        with db.session() as session:
            session.execute(insert(Node), nodes)
            session.execute(insert(Port), ports)
    with db.engine.connect() as connection:
        connection.exec_driver_sql("ANALYZE")
        connection.commit()


def cloud(db: Database) -> tuple[Flavor, dict[str, str]]:
    """A project, a flavor, an image and a network for the instances."""
    with db.session() as session:
        project = Project(name="bench")
        session.add(project)
        session.flush()
        flavor = Flavor(
            name="bm.bench", resource_class="baremetal", cpus=8, memory_mb=16384, disk_gb=200
        )
        image = Image(name="image", project_id=project.id, status=ImageStatus.ACTIVE)
        network = Network(name="net", project_id=project.id, segmentation_id=100)
        session.add_all([flavor, image, network])
    ids = {"project": project.id, "image": image.id, "network": network.id}
    return flavor, ids


def new_instance(db: Database, flavor: Flavor, ids: dict[str, str]) -> Instance:
    with db.session() as session:
        instance = Instance(
            name="bench",
            project_id=ids["project"],
            flavor_id=flavor.id,
            image_id=ids["image"],
            network_ids=[ids["network"]],
            status=InstanceStatus.BUILD,
            task_state=TaskState.SCHEDULING,
        )
        session.add(instance)
    return instance


def decide(manager: SchedulerManager, spec: RequestSpec) -> tuple[float, float]:
    """One decision, as the manager's first round makes it: (filter and weigh, claim) s."""
    started = time.perf_counter()
    candidates = manager.ranked_candidates(spec)
    ranked = time.perf_counter()
    for candidate in candidates:
        outcome = claim_node(manager.db, spec.instance_id, candidate.id)
        if outcome is ClaimOutcome.CLAIMED:
            return ranked - started, time.perf_counter() - ranked
        if outcome is ClaimOutcome.INSTANCE_GONE:
            break
    raise RuntimeError(f"no node claimed for {spec.instance_id}")


def run_size(count: int, *, decisions: int, busy: float, seed: int = 8) -> dict[str, Any]:
    name, url = create_database()
    db = Database(url)
    transport = MemoryTransport()
    try:
        log(f"[scheduler] inserting {count:,} nodes and ports ...")
        started = time.perf_counter()
        populate(db, count, busy=busy, seed=seed)
        flavor, ids = cloud(db)
        log(f"[scheduler] inserted in {time.perf_counter() - started:.1f} s; deciding ...")
        settings = SchedulerSettings(database_url=url, hostname="bench-scheduler")
        manager = SchedulerManager(settings, db, transport, rng=random.Random(seed))
        ranking, claiming, totals = [], [], []
        for number in range(decisions + 5):  # the first five warm the caches up
            instance = new_instance(db, flavor, ids)
            rank_s, claim_s = decide(manager, RequestSpec.for_instance(instance, flavor))
            if number >= 5:
                ranking.append(rank_s)
                claiming.append(claim_s)
                totals.append(rank_s + claim_s)

        def ms(values: list[float], q: float) -> float | None:
            value = percentile(values, q)
            return None if value is None else round(value * 1000, 2)

        result = {
            "nodes": count,
            "busy": busy,
            "decisions": decisions,
            "filter_weigh_p50_ms": ms(ranking, 50),
            "claim_p50_ms": ms(claiming, 50),
            "total_p50_ms": ms(totals, 50),
            "total_p99_ms": ms(totals, 99),
        }
        log(f"[scheduler] {count:,} nodes: {result}")
        return result
    finally:
        transport.close()
        db.dispose()
        drop_database(name)


def parse_sizes(text: str) -> list[int]:
    return [int(part.replace("_", "").replace(",", "")) for part in text.split(",") if part]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--nodes", default="1000,10000,100000", help="estate sizes (1000,10000,100000)"
    )
    parser.add_argument("--decisions", type=int, default=100, help="decisions timed per size")
    parser.add_argument("--busy", type=float, default=0.5, help="share of nodes in use (0.5)")
    args = parser.parse_args(argv)
    for count in parse_sizes(args.nodes):
        print(json.dumps(run_size(count, decisions=args.decisions, busy=args.busy)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
