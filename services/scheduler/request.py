"""What the scheduler looks for: one instance's needs, read from its flavor and networks."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from libs.db import Flavor, Instance


@dataclass(frozen=True)
class RequestSpec:
    """The node an instance needs; filters and weighers read nothing else."""

    instance_id: str
    flavor_name: str
    resource_class: str
    cpus: int
    memory_mb: int
    disk_gb: int
    # One port per network the instance joins (port i goes to network_ids[i]).
    port_count: int
    # Nodes a deploy of this instance already failed on.
    excluded_node_ids: frozenset[str] = frozenset()

    @classmethod
    def for_instance(
        cls, instance: Instance, flavor: Flavor, *, also_excluded: Iterable[str] = ()
    ) -> RequestSpec:
        return cls(
            instance_id=instance.id,
            flavor_name=flavor.name,
            resource_class=flavor.resource_class,
            cpus=flavor.cpus,
            memory_mb=flavor.memory_mb,
            disk_gb=flavor.disk_gb,
            port_count=len(instance.network_ids),
            excluded_node_ids=frozenset(instance.failed_node_ids).union(also_excluded),
        )
