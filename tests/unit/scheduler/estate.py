"""Rows and fakes the scheduler's unit and integration tests share: a small estate of
flavors, nodes with ports, instances, and a conductor that records what it is asked."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from libs import rpc
from libs.db import (
    Conductor,
    Database,
    Flavor,
    Image,
    ImageStatus,
    Instance,
    Network,
    Node,
    Port,
    Project,
    utcnow,
)

_macs = itertools.count(1)


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll ``condition`` until it holds; fail the test if it does not within ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(0.01)


@dataclass
class Estate:
    """Makes rows in ``db`` with sensible defaults."""

    db: Database
    project_id: str = ""
    image_id: str = ""

    def __post_init__(self) -> None:
        with self.db.session() as session:
            project = Project(name=f"project-{next(_macs)}")
            image = Image(name="image", project_id=project.id, status=ImageStatus.ACTIVE)
            session.add(project)
            session.flush()  # no ORM relationships: the unit of work would not order them
            session.add(image)
        self.project_id, self.image_id = project.id, image.id

    def flavor(
        self,
        name: str = "baremetal",
        resource_class: str = "baremetal",
        cpus: int = 4,
        memory_mb: int = 8192,
        disk_gb: int = 100,
    ) -> Flavor:
        flavor = Flavor(
            name=name,
            resource_class=resource_class,
            cpus=cpus,
            memory_mb=memory_mb,
            disk_gb=disk_gb,
        )
        with self.db.session() as session:
            session.add(flavor)
        return flavor

    def node(
        self,
        name: str,
        *,
        cpus: int = 4,
        memory_mb: int = 8192,
        disk_gb: int = 100,
        resource_class: str = "baremetal",
        provision_state: str = "available",
        ports: int = 1,
        **fields: Any,
    ) -> Node:
        node = Node(
            name=name,
            resource_class=resource_class,
            cpus=cpus,
            memory_mb=memory_mb,
            disk_gb=disk_gb,
            provision_state=provision_state,
            **fields,
        )
        with self.db.session() as session:
            session.add(node)
            session.flush()
            for _ in range(ports):
                session.add(Port(address=_mac(), node_id=node.id))
        return node

    def network(self, segmentation_id: int) -> Network:
        network = Network(
            name=f"net-{segmentation_id}",
            project_id=self.project_id,
            segmentation_id=segmentation_id,
        )
        with self.db.session() as session:
            session.add(network)
        return network

    def instance(self, flavor: Flavor, name: str = "web", **fields: Any) -> Instance:
        instance = Instance(
            name=name,
            project_id=self.project_id,
            flavor_id=flavor.id,
            image_id=self.image_id,
            **fields,
        )
        with self.db.session() as session:
            session.add(instance)
        return instance

    def get_instance(self, instance_id: str) -> Instance:
        with self.db.session() as session:
            instance = session.get(Instance, instance_id)
        assert instance is not None
        return instance

    def get_node(self, node_id: str) -> Node:
        with self.db.session() as session:
            node = session.get(Node, node_id)
        assert node is not None
        return node

    def live_conductor(self, hostname: str) -> None:
        with self.db.session() as session:
            session.merge(Conductor(hostname=hostname, online=True, updated_at=utcnow()))


def _mac() -> str:
    value = next(_macs)
    return ":".join(f"{b:02x}" for b in (0x52, 0x54, *value.to_bytes(4, "big")))


@dataclass
class RecordingConductor:
    """Stands in for a conductor: records each deploy it is asked for."""

    RPC_API_VERSION = "1.0"
    deploys: list[tuple[str, str]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @rpc.expose
    def deploy_node(self, ctxt: rpc.RequestContext, node_id: str, instance_id: str) -> None:
        with self._lock:
            self.deploys.append((node_id, instance_id))


@contextmanager
def running_conductor(
    transport: rpc.Transport, estate: Estate, hostname: str = "cond-1"
) -> Iterator[RecordingConductor]:
    """A recording conductor that serves ``hostname`` and heartbeats in the database."""
    conductor = RecordingConductor()
    estate.live_conductor(hostname)
    server = rpc.RPCServer(transport, rpc.Target("conductor", server=hostname), [conductor])
    with server:
        yield conductor
