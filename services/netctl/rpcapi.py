"""The caller's side of the network controller: synchronous calls, so the conductor knows
the switch is programmed before it powers a node on.

A call that the bus lost (RabbitMQ restarting, no netctl listening for a moment) is sent
again for up to ``retry_for`` seconds: each call states the port's wiring whole, so a
repeat programs the same thing again, and a deploy does not fail for a broker blip.

Versions: 1.0 - bind_port, provision_port, unbind_port.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from libs.errors import RPC_ERRORS
from libs.rpc import NoConsumer, RequestContext, RPCClient, Target, Transport, TransportError

LOG = logging.getLogger(__name__)

TOPIC = "netctl"

#: Seconds a call keeps being sent again while the bus cannot deliver it or its reply.
RETRY_FOR = 60.0

#: The bus errors after which the call is sent again: the connection was lost (the call
#: may have run, which is harmless), or nobody listens yet (netctl or the broker restarts).
#: Not Timeout: netctl got the call and is slow, and the caller already waited.
RETRIED_ERRORS = (TransportError, NoConsumer)


class NetworkAPI:
    RPC_API_VERSION = "1.0"

    def __init__(
        self, transport: Transport, *, timeout: float = 30.0, retry_for: float = RETRY_FOR
    ) -> None:
        self.retry_for = retry_for
        self.client = RPCClient(
            transport,
            Target(TOPIC, version=self.RPC_API_VERSION),
            timeout=timeout,
            allowed_errors=RPC_ERRORS,
        )

    def bind_port(self, ctxt: RequestContext, port_id: str, network_id: str) -> dict[str, Any]:
        """Wire the port into a tenant network (only that network's traffic reaches it)."""
        return self._call(ctxt, "bind_port", port_id=port_id, network_id=network_id)

    def provision_port(self, ctxt: RequestContext, port_id: str) -> dict[str, Any]:
        """Wire the port into the provisioning network (DHCP, TFTP, HTTP of the conductors)."""
        return self._call(ctxt, "provision_port", port_id=port_id)

    def unbind_port(self, ctxt: RequestContext, port_id: str) -> dict[str, Any]:
        """Isolate the port: no network at all."""
        return self._call(ctxt, "unbind_port", port_id=port_id)

    def _call(self, ctxt: RequestContext, method: str, **kwargs: Any) -> dict[str, Any]:
        deadline = time.monotonic() + self.retry_for
        attempt = 0
        while True:
            try:
                result: dict[str, Any] = self.client.call(ctxt, method, **kwargs)
                return result
            except RETRIED_ERRORS as exc:
                if time.monotonic() >= deadline:
                    raise
                LOG.warning(
                    "%s of port %s: %s: %s; sending it again",
                    method,
                    kwargs.get("port_id"),
                    type(exc).__name__,
                    exc,
                )
            time.sleep(min(2.0, 0.1 * 2**attempt))
            attempt += 1
