"""The caller's side of the scheduler (any scheduler process may take a request).

Versions: 1.0 - schedule_instance, reschedule_instance.
"""

from __future__ import annotations

from libs.errors import RPC_ERRORS
from libs.rpc import RequestContext, RPCClient, Target, Transport

TOPIC = "scheduler"


class SchedulerAPI:
    RPC_API_VERSION = "1.0"

    def __init__(self, transport: Transport, *, timeout: float = 60.0) -> None:
        self.client = RPCClient(
            transport,
            Target(TOPIC, version=self.RPC_API_VERSION),
            timeout=timeout,
            allowed_errors=RPC_ERRORS,
        )

    def schedule_instance(self, ctxt: RequestContext, instance_id: str) -> None:
        """Pick and claim a node for a BUILD instance and ask its conductor to deploy."""
        self.client.cast(ctxt, "schedule_instance", instance_id=instance_id)

    def reschedule_instance(
        self, ctxt: RequestContext, instance_id: str, failed_node_id: str, reason: str
    ) -> None:
        """A deploy on ``failed_node_id`` failed: try another node, or give up with ERROR."""
        self.client.cast(
            ctxt,
            "reschedule_instance",
            instance_id=instance_id,
            failed_node_id=failed_node_id,
            reason=reason,
        )
