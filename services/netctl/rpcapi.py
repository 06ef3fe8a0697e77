"""The caller's side of the network controller: synchronous calls, so the conductor knows
the switch is programmed before it powers a node on.

Versions: 1.0 - bind_port, provision_port, unbind_port.
"""

from __future__ import annotations

from typing import Any

from libs.errors import RPC_ERRORS
from libs.rpc import RequestContext, RPCClient, Target, Transport

TOPIC = "netctl"


class NetworkAPI:
    RPC_API_VERSION = "1.0"

    def __init__(self, transport: Transport, *, timeout: float = 30.0) -> None:
        self.client = RPCClient(
            transport,
            Target(TOPIC, version=self.RPC_API_VERSION),
            timeout=timeout,
            allowed_errors=RPC_ERRORS,
        )

    def bind_port(self, ctxt: RequestContext, port_id: str, network_id: str) -> dict[str, Any]:
        """Wire the port into a tenant network (only that network's traffic reaches it)."""
        result: dict[str, Any] = self.client.call(
            ctxt, "bind_port", port_id=port_id, network_id=network_id
        )
        return result

    def provision_port(self, ctxt: RequestContext, port_id: str) -> dict[str, Any]:
        """Wire the port into the provisioning network (DHCP, TFTP, HTTP of the conductors)."""
        result: dict[str, Any] = self.client.call(ctxt, "provision_port", port_id=port_id)
        return result

    def unbind_port(self, ctxt: RequestContext, port_id: str) -> dict[str, Any]:
        """Isolate the port: no network at all."""
        result: dict[str, Any] = self.client.call(ctxt, "unbind_port", port_id=port_id)
        return result
