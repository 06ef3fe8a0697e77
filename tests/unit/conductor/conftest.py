"""A conductor on the memory transport and a fresh database, with recording stand-ins for
the network controller and the scheduler, and helpers to make nodes and instances."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pytest
from sqlmodel import col, select

from libs import rpc
from libs.db import (
    Conductor,
    Database,
    Flavor,
    Image,
    Instance,
    InstanceStatus,
    Network,
    Node,
    Port,
    PortBinding,
    Project,
    TaskState,
    utcnow,
)
from libs.rpc import MemoryTransport, RequestContext
from services.conductor.hashring import HashRing
from services.conductor.rpcapi import ConductorAPI
from services.conductor.service import ConductorService
from services.conductor.settings import ConductorSettings

HOST = "c1"
FAST_DELAY = 0.05  # the fake ramdisk's run time in these tests

_names = itertools.count()


def wait_for(condition: Callable[[], Any], timeout: float = 5.0, what: str = "condition") -> Any:
    """Poll ``condition`` until it returns something true; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


def make_settings(**overrides: Any) -> ConductorSettings:
    values: dict[str, Any] = {
        "hostname": HOST,
        "database_url": "sqlite://",
        "transport_url": "memory://",
        "workers": 4,
        "heartbeat_interval": 0.2,
        "power_sync_interval": 3600.0,
        "callback_timeout": 3600.0,
        "check_interval": 0.1,
        "conductor_heartbeat_timeout": 5.0,
    }
    values.update(overrides)
    return ConductorSettings(**values)


class FakeNetctl:
    """Stands in for the network controller: records calls and sets ports' bindings."""

    RPC_API_VERSION = "1.0"

    def __init__(self, db: Database) -> None:
        self.db = db
        self.calls: list[tuple[str, str, str | None]] = []

    def _set(self, port_id: str, binding: PortBinding, network_id: str | None) -> dict[str, Any]:
        with self.db.session() as session:
            port = session.get(Port, port_id)
            assert port is not None
            port.binding = binding
            port.network_id = network_id
            session.add(port)
        return {"port_id": port_id, "binding": binding.value, "network_id": network_id}

    @rpc.expose
    def bind_port(self, ctxt: RequestContext, *, port_id: str, network_id: str) -> dict[str, Any]:
        self.calls.append(("bind_port", port_id, network_id))
        return self._set(port_id, PortBinding.TENANT, network_id)

    @rpc.expose
    def provision_port(self, ctxt: RequestContext, *, port_id: str) -> dict[str, Any]:
        self.calls.append(("provision_port", port_id, None))
        return self._set(port_id, PortBinding.PROVISIONING, None)

    @rpc.expose
    def unbind_port(self, ctxt: RequestContext, *, port_id: str) -> dict[str, Any]:
        self.calls.append(("unbind_port", port_id, None))
        return self._set(port_id, PortBinding.NONE, None)


class FakeScheduler:
    """Stands in for the scheduler: records the reschedule requests."""

    RPC_API_VERSION = "1.0"

    def __init__(self) -> None:
        self.reschedules: list[dict[str, str]] = []

    @rpc.expose
    def schedule_instance(self, ctxt: RequestContext, *, instance_id: str) -> None:
        pass

    @rpc.expose
    def reschedule_instance(
        self, ctxt: RequestContext, *, instance_id: str, failed_node_id: str, reason: str
    ) -> None:
        self.reschedules.append(
            {"instance_id": instance_id, "failed_node_id": failed_node_id, "reason": reason}
        )


@dataclass
class Cloud:
    """What a test drives: the database, the conductor's client, and the stand-ins."""

    db: Database
    transport: MemoryTransport
    api: ConductorAPI
    netctl: FakeNetctl
    scheduler: FakeScheduler
    services: list[ConductorService] = field(default_factory=list)
    project_id: str = ""
    flavor_id: str = ""
    image_id: str = ""
    ctxt: RequestContext = field(default_factory=RequestContext.admin)

    def start_conductor(self, **overrides: Any) -> ConductorService:
        service = ConductorService(make_settings(**overrides), self.db, self.transport)
        service.start()
        self.services.append(service)
        return service

    def node(self, node_id: str) -> Node:
        with self.db.session() as session:
            node = session.get(Node, node_id)
            assert node is not None
            return node

    def settled(self, node_id: str, state: str, timeout: float = 5.0) -> Node:
        """Wait until the node is in ``state`` with nobody working on it (lock released)."""
        node: Node = wait_for(
            lambda: (
                (n := self.node(node_id)).provision_state == state and n.reservation is None and n
            ),
            timeout,
            what=f"node {node_id} settled in {state!r}",
        )
        return node

    def instance(self, instance_id: str) -> Instance:
        with self.db.session() as session:
            instance = session.get(Instance, instance_id)
            assert instance is not None
            return instance

    def ports(self, node_id: str) -> list[Port]:
        with self.db.session() as session:
            return list(
                session.exec(
                    select(Port).where(col(Port.node_id) == node_id).order_by(col(Port.address))
                ).all()
            )

    def make_node(
        self,
        *,
        ports: int = 2,
        state: str = "available",
        owner: str | None = HOST,
        ring: tuple[str, ...] = (HOST,),
        driver_info: dict[str, Any] | None = None,
        **fields: Any,
    ) -> str:
        """A node (owned by ``owner`` on a ring of ``ring``) with ``ports`` ports."""
        info = {"fake_delay": FAST_DELAY, **(driver_info or {})}
        node_id = _owned_id(owner, ring)
        n = next(_names)
        with self.db.session() as session:
            session.add(
                Node(
                    id=node_id,
                    name=f"node-{n}",
                    resource_class="baremetal",
                    provision_state=state,
                    driver_info=info,
                    **fields,
                )
            )
            session.flush()
            for i in range(ports):
                session.add(Port(address=f"52:54:00:{n % 256:02x}:00:{i:02x}", node_id=node_id))
        return node_id

    def make_network(self) -> str:
        n = next(_names)
        with self.db.session() as session:
            network = Network(name=f"net-{n}", project_id=self.project_id, segmentation_id=100 + n)
            session.add(network)
            return network.id

    def make_instance(self, node_id: str | None = None, networks: int = 1) -> str:
        """A BUILD instance; with ``node_id``, claimed on that node as the scheduler does."""
        network_ids = [self.make_network() for _ in range(networks)]
        with self.db.session() as session:
            instance = Instance(
                name=f"server-{next(_names)}",
                project_id=self.project_id,
                flavor_id=self.flavor_id,
                image_id=self.image_id,
                network_ids=network_ids,
            )
            session.add(instance)
            if node_id is not None:
                node = session.get(Node, node_id)
                assert node is not None
                node.instance_id = instance.id
                instance.node_id = node_id
                instance.task_state = TaskState.DEPLOYING
                instance.attempts = 1
                session.add(node)
            return instance.id

    def delete_instance(self, instance_id: str) -> None:
        """What the API does on DELETE of an instance with a node: DELETING, then the cast."""
        with self.db.session() as session:
            instance = session.get(Instance, instance_id)
            assert instance is not None and instance.node_id is not None
            instance.status = InstanceStatus.DELETING
            instance.task_state = TaskState.DELETING
            session.add(instance)
        self.api.tear_down_node(self.ctxt, instance.node_id)

    def add_conductor(self, hostname: str, *, updated_at: datetime | None = None) -> None:
        with self.db.session() as session:
            session.add(
                Conductor(hostname=hostname, online=True, updated_at=updated_at or utcnow())
            )


def _owned_id(owner: str | None, ring: tuple[str, ...]) -> str:
    """A node id that ``owner`` owns on a ring of ``ring`` (any id when owner is None)."""
    hash_ring = HashRing(ring)
    for i in itertools.count():
        candidate = f"00000000-0000-4000-8000-{next(_names):06d}{i:06d}"
        if owner is None or hash_ring.owner(candidate) == owner:
            return candidate
    raise AssertionError("unreachable")


@pytest.fixture
def cloud(db: Database, memory_transport: MemoryTransport) -> Iterator[Cloud]:
    netctl = FakeNetctl(db)
    scheduler = FakeScheduler()
    servers = [
        rpc.RPCServer(memory_transport, rpc.Target("netctl", server="net1"), [netctl]),
        rpc.RPCServer(memory_transport, rpc.Target("scheduler", server="sched1"), [scheduler]),
    ]
    for server in servers:
        server.start()
    with db.session() as session:
        project = Project(name="demo")
        flavor = Flavor(name="small", resource_class="baremetal")
        session.add(project)
        session.add(flavor)
        session.flush()
        image = Image(name="debian", project_id=project.id)
        session.add(image)
    api = ConductorAPI(memory_transport, db, heartbeat_timeout=5.0, timeout=10.0)
    cloud = Cloud(db, memory_transport, api, netctl, scheduler)
    cloud.project_id, cloud.flavor_id, cloud.image_id = project.id, flavor.id, image.id
    yield cloud
    for service in cloud.services:
        service.stop(timeout=5.0)
    for server in servers:
        server.stop()
