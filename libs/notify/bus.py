"""Where notifications travel live: the topic exchange ``tetsu.notifications`` on
RabbitMQ, or an in-process bus beside a :class:`~libs.rpc.MemoryTransport`.

Publishing never blocks and never raises: the stored event row is the record, the bus
only tells live listeners sooner. Over RabbitMQ a publisher thread takes messages from a
bounded queue; while the broker is unreachable it drops them, with one warning per
outage. A subscriber gets every notification published while it is connected (an
exclusive, auto-delete queue bound with ``#``); what it missed while disconnected is in
the database.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
import weakref
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import amqp

from libs.rpc import AMQPTransport, MemoryTransport, Transport
from libs.rpc.transports.amqp import backoff_delay

LOG = logging.getLogger(__name__)

#: The topic exchange every notification is published on, by its event type.
EXCHANGE = "tetsu.notifications"

#: Notifications waiting for the publisher thread; beyond this they are dropped.
QUEUE_LIMIT = 10_000

Deliver = Callable[[bytes], None]


class Subscription(ABC):
    @abstractmethod
    def close(self) -> None:
        """Stop delivering; returns once no delivery runs any more."""

    def wait_ready(self, timeout: float) -> bool:
        """Wait until what is published from now on is delivered (the broker's queue is
        bound), for ``timeout`` seconds at most; returns whether it is."""
        return True


class NotificationBus(ABC):
    @abstractmethod
    def publish(self, routing_key: str, body: bytes) -> None:
        """Hand ``body`` over for delivery; never blocks, never raises."""

    @abstractmethod
    def subscribe(self, deliver: Deliver) -> Subscription:
        """Call ``deliver(body)`` for every notification from now on (from a thread of the
        bus: it must be quick and must not raise)."""

    @abstractmethod
    def close(self) -> None:
        """Stop the publisher (what is queued is sent first, for up to a second)."""


class MemoryNotificationBus(NotificationBus):
    """Delivers synchronously, in the publisher's thread, to every subscriber."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subscribers: list[_MemorySubscription] = []

    def publish(self, routing_key: str, body: bytes) -> None:
        with self._lock:
            subscribers = list(self._subscribers)
        for subscriber in subscribers:
            subscriber.deliver(body)

    def subscribe(self, deliver: Deliver) -> Subscription:
        subscription = _MemorySubscription(self, deliver)
        with self._lock:
            self._subscribers.append(subscription)
        return subscription

    def close(self) -> None:
        """Nothing to release: subscribers close on their own."""

    def _remove(self, subscription: _MemorySubscription) -> None:
        with self._lock:
            if subscription in self._subscribers:
                self._subscribers.remove(subscription)


class _MemorySubscription(Subscription):
    def __init__(self, bus: MemoryNotificationBus, deliver: Deliver) -> None:
        self._bus = bus
        self._deliver = deliver

    def deliver(self, body: bytes) -> None:
        try:
            self._deliver(body)
        except Exception:
            LOG.exception("a notification subscriber failed")

    def close(self) -> None:
        self._bus._remove(self)


class AMQPNotificationBus(NotificationBus):
    """Notifications on RabbitMQ, over connections of its own from ``transport``."""

    def __init__(self, transport: AMQPTransport, *, exchange: str = EXCHANGE) -> None:
        self._transport = transport
        self.exchange = exchange
        self._queue: queue.Queue[tuple[str, bytes] | None] = queue.Queue(QUEUE_LIMIT)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._full_warned = False

    def publish(self, routing_key: str, body: bytes) -> None:
        with self._lock:
            if self._closed:
                return
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._publish_loop, name="notify-publisher", daemon=True
                )
                self._thread.start()
        try:
            self._queue.put_nowait((routing_key, body))
            self._full_warned = False
        except queue.Full:
            if not self._full_warned:
                self._full_warned = True
                LOG.warning("notification queue full (%d): dropping notifications", QUEUE_LIMIT)

    def subscribe(self, deliver: Deliver) -> Subscription:
        return _AMQPSubscription(self._transport, self.exchange, deliver)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            thread = self._thread
        if thread is not None:
            with contextlib.suppress(queue.Full):
                self._queue.put(None, timeout=1.0)
            thread.join(timeout=2.0)

    def _publish_loop(self) -> None:
        connection: Any = None
        channel: Any = None
        retry_at = 0.0
        attempt = 0
        down = False
        while True:
            item = self._queue.get()
            if item is None:
                break
            routing_key, body = item
            if channel is None and time.monotonic() < retry_at:
                continue  # the broker was unreachable a moment ago: dropped
            try:
                if channel is None:
                    connection = self._transport.connect()
                    channel = connection.channel()
                    channel.exchange_declare(
                        self.exchange, "topic", durable=True, auto_delete=False
                    )
                channel.basic_publish(
                    amqp.Message(body, content_type="application/json", delivery_mode=1),
                    exchange=self.exchange,
                    routing_key=routing_key,
                )
                if down:
                    LOG.info("notifications reach %s again", self._transport.safe_url)
                down, attempt = False, 0
            except Exception as exc:
                if not down:
                    LOG.warning(
                        "notification %s dropped: %s unreachable (%r); the event is stored, "
                        "and notifications are dropped until it is back",
                        routing_key,
                        self._transport.safe_url,
                        exc,
                    )
                down = True
                _release(connection)
                connection = channel = None
                retry_at = time.monotonic() + backoff_delay(attempt, base=0.5, cap=10.0)
                attempt += 1
        _release(connection)


class _AMQPSubscription(Subscription):
    """A thread consuming an exclusive queue bound to every notification."""

    def __init__(self, transport: AMQPTransport, exchange: str, deliver: Deliver) -> None:
        self._transport = transport
        self._exchange = exchange
        self._deliver = deliver
        self._stop = threading.Event()
        #: Set while the queue is bound (tests wait for it before publishing).
        self.consuming = threading.Event()
        self._thread = threading.Thread(target=self._run, name="notify-subscriber", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)

    def wait_ready(self, timeout: float) -> bool:
        return self.consuming.wait(timeout)

    def _run(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            connection: Any = None
            try:
                connection = self._transport.connect(heartbeat=self._transport.heartbeat)
                channel = connection.channel()
                channel.exchange_declare(self._exchange, "topic", durable=True, auto_delete=False)
                name, _, _ = channel.queue_declare("", exclusive=True, auto_delete=True)
                channel.queue_bind(name, self._exchange, "#")
                channel.basic_consume(name, callback=self._on_message, no_ack=True)
                if attempt:
                    LOG.info("notification subscriber reconnected")
                attempt = 0
                self.consuming.set()
                while not self._stop.is_set():
                    with contextlib.suppress(TimeoutError):
                        connection.drain_events(timeout=1.0)
                    connection.heartbeat_check()
            except Exception as exc:
                self.consuming.clear()
                if self._stop.is_set():
                    break
                LOG.warning("notification subscriber lost the bus (%r); reconnecting", exc)
                self._stop.wait(backoff_delay(attempt, base=0.5, cap=10.0))
                attempt += 1
            finally:
                _release(connection)
        self.consuming.clear()

    def _on_message(self, message: amqp.Message) -> None:
        body = message.body if isinstance(message.body, bytes) else bytes(message.body)
        try:
            self._deliver(body)
        except Exception:
            LOG.exception("a notification subscriber failed")


def _release(connection: Any) -> None:
    if connection is not None:
        with contextlib.suppress(Exception):
            connection.release()


_MEMORY_BUSES: weakref.WeakKeyDictionary[MemoryTransport, MemoryNotificationBus] = (
    weakref.WeakKeyDictionary()
)
_MEMORY_LOCK = threading.Lock()


def bus_for(transport: Transport) -> NotificationBus:
    """The notification bus beside ``transport``: over RabbitMQ a new one (close it with
    the service), in memory the one every service on that transport shares."""
    if isinstance(transport, AMQPTransport):
        return AMQPNotificationBus(transport)
    if isinstance(transport, MemoryTransport):
        with _MEMORY_LOCK:
            bus = _MEMORY_BUSES.get(transport)
            if bus is None:
                bus = _MEMORY_BUSES[transport] = MemoryNotificationBus()
            return bus
    raise TypeError(f"no notification bus for {type(transport).__name__}")
