"""The transport interface: moves opaque message bodies between clients and servers.

Both transports route the same way, so code tested on the memory transport behaves alike on
RabbitMQ:

- a cast to a topic waits in the topic's durable queue until some server of the topic takes
  it, even when none runs yet (competing consumers);
- a cast to one server waits in that server's durable queue; if that server never existed
  the cast is returned (:class:`NoConsumer`);
- a fanout cast reaches every server of the topic running at that moment;
- a call reaches one running server (of the topic, or the named one); when none runs it
  fails at once with :class:`NoConsumer`, and it expires unread after its timeout.

Delivery is at least once: a server settles a message after its handler returns, so a
message in flight when a server or the broker dies is delivered again.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

from ..target import Target


@dataclass(frozen=True, slots=True)
class QueueNames:
    """The queues of a target, named alike on every transport (``prefix`` + topic ...)."""

    cast: str  # casts to the topic, or to the named server
    call: str  # calls, the same way
    fanout_exchange: str  # where fanout casts to the topic go
    fanout_queue: str | None  # a server's own copy of them (None for a target without server)

    @staticmethod
    @functools.lru_cache(maxsize=1024)
    def of(target: Target, prefix: str = "") -> QueueNames:
        base = f"{prefix}{target.topic}"
        own = f"{base}@{target.server}" if target.server else base
        return QueueNames(
            cast=own,
            call=f"{own}:call",
            fanout_exchange=f"{base}:fanout",
            fanout_queue=f"{own}:fanout" if target.server else None,
        )


class Incoming(ABC):
    """One received message. Settle it exactly once, from any thread."""

    body: bytes
    msg_id: str | None
    expects_reply: bool
    redelivered: bool

    @abstractmethod
    def finish(self, reply: bytes | None = None) -> None:
        """Send ``reply`` (for a call) and acknowledge: the message is done."""

    @abstractmethod
    def reject(self, reply: bytes | None = None) -> None:
        """Send ``reply`` (for a call) and drop the message for good: it will not come back."""

    @abstractmethod
    def requeue(self) -> None:
        """Put the message back in its queue, to be delivered again (to any server)."""


class Listener(ABC):
    """Receives a server's messages and runs ``deliver`` on each, from up to ``prefetch``
    threads of its own at once: ``deliver`` runs the handler to the end in that thread.
    """

    @abstractmethod
    def start(self, deliver: Callable[[Incoming], None]) -> None: ...

    @abstractmethod
    def stop(self) -> None:
        """Take no new message; messages already received are still delivered."""

    @abstractmethod
    def close(self) -> None:
        """Wait until every running ``deliver`` has returned, then release everything."""


class Transport(ABC):
    """How messages reach servers: RabbitMQ (:class:`AMQPTransport`) or in-process memory."""

    @abstractmethod
    def send(self, target: Target, body: bytes, *, msg_id: str) -> None:
        """Deliver a cast durably; returns once the message is safe (broker-confirmed)."""

    @abstractmethod
    def request(self, target: Target, body: bytes, *, msg_id: str, timeout: float) -> bytes:
        """Deliver a call and return the reply body (raises Timeout, NoConsumer)."""

    @abstractmethod
    def listen(self, target: Target, *, prefetch: int) -> Listener:
        """A listener on the target's topic queue, its server queue and its fanout."""

    @abstractmethod
    def close(self) -> None: ...
