"""Fan-out of live events to the API's stream clients, on the API's event loop.

One bus subscription per API process feeds every connected client, and only while some
client streams (and ``LINGER`` seconds after the last left, for one that reconnects):
a burst publishes thousands of events, and receiving each in every API process for
nobody cost the API a seventh of its CPU. Each client has a bounded queue and a filter
(its project scope and its query): a client that falls behind by a full queue is dropped
(its stream ends; it reconnects with Last-Event-ID), so one slow reader never holds
memory or slows the others. Nothing here holds a thread or a database connection per
client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from pydantic import ValidationError

from .bus import NotificationBus, Subscription
from .notifier import EventMessage

LOG = logging.getLogger(__name__)

EventFilter = Callable[[EventMessage], bool]

#: Seconds the subscription is kept after the last stream left.
LINGER = 30.0

#: Seconds a new stream waits for the subscription to be bound to the bus (then it
#: goes on without: the stored events are still sent, and live ones once it is bound).
READY_TIMEOUT = 5.0


class StreamClient:
    """One connected stream: what its filter lets through, in arrival order."""

    def __init__(self, wants: EventFilter, queue_size: int) -> None:
        self.wants = wants
        self.queue: asyncio.Queue[EventMessage | None] = asyncio.Queue(queue_size)
        #: Set when the client fell a whole queue behind, or the API stops: its stream ends.
        self.dropped = False

    async def next(self, timeout: float) -> EventMessage | None:
        """The next event, or None when none came within ``timeout`` seconds (or the
        stream was just dropped)."""
        try:
            return await asyncio.wait_for(self.queue.get(), timeout)
        except TimeoutError:
            return None

    def drop(self) -> None:
        self.dropped = True
        with contextlib.suppress(asyncio.QueueFull):
            self.queue.put_nowait(None)  # wakes the stream now (a full one wakes anyway)


class EventHub:
    """Subscribes to ``bus`` while clients stream (see the module's docstring) and hands
    each event to the clients that want it. Start and stop it on the event loop that
    serves the clients, and open and close streams on that loop too."""

    def __init__(
        self, bus: NotificationBus, *, queue_size: int = 1000, linger: float = LINGER
    ) -> None:
        self.bus = bus
        self.queue_size = queue_size
        self.linger = linger
        self._clients: set[StreamClient] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._subscription: Subscription | None = None
        self._unsubscribe: asyncio.TimerHandle | None = None

    @property
    def clients(self) -> int:
        return len(self._clients)

    @property
    def subscribed(self) -> bool:
        return self._subscription is not None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()

    async def stop(self) -> None:
        self._cancel_unsubscribe()
        subscription, self._subscription = self._subscription, None
        if subscription is not None:
            # Closing waits for the subscriber's thread: not on the event loop.
            await asyncio.to_thread(subscription.close)
        self._loop = None
        self._clients.clear()

    def close_streams(self) -> None:
        """End every stream (from any thread), e.g. when the API stops: an open stream
        would otherwise hold the server's graceful shutdown until its timeout."""
        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed: so are the streams
            loop.call_soon_threadsafe(self._drop_all)

    def _drop_all(self) -> None:
        for client in list(self._clients):
            client.drop()
        self._clients.clear()
        self._maybe_unsubscribe_later()

    async def open(self, wants: EventFilter) -> StreamClient:
        """A new stream, given every event published from now on that ``wants`` lets
        through: subscribed to the bus first (waiting up to ``READY_TIMEOUT`` for it), so
        stored events read after this and live ones leave no gap between them."""
        self._cancel_unsubscribe()
        subscription = self._subscription
        if subscription is None:
            subscription = self._subscription = self.bus.subscribe(self._from_bus)
        try:
            ready = await asyncio.to_thread(subscription.wait_ready, READY_TIMEOUT)
        except BaseException:  # the client left meanwhile
            self._maybe_unsubscribe_later()
            raise
        if not ready:
            LOG.warning("event stream opened before the bus answered: live events may lag")
        return self.connect(wants)

    def connect(self, wants: EventFilter) -> StreamClient:
        """A client handed the events the hub receives (:meth:`open` subscribes first)."""
        client = StreamClient(wants, self.queue_size)
        self._clients.add(client)
        return client

    def disconnect(self, client: StreamClient) -> None:
        self._clients.discard(client)
        self._maybe_unsubscribe_later()

    def _maybe_unsubscribe_later(self) -> None:
        if self._clients or self._subscription is None or self._loop is None:
            return
        self._cancel_unsubscribe()
        self._unsubscribe = self._loop.call_later(self.linger, self._unsubscribe_if_idle)

    def _cancel_unsubscribe(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe.cancel()
            self._unsubscribe = None

    def _unsubscribe_if_idle(self) -> None:
        self._unsubscribe = None
        subscription = self._subscription
        if self._clients or subscription is None or self._loop is None:
            return
        self._subscription = None
        # Closing joins the subscriber's thread: on a pool thread, not the event loop.
        self._loop.run_in_executor(None, subscription.close)

    def _from_bus(self, body: bytes) -> None:
        """From the bus's thread (or, in memory, the publisher's)."""
        if not self._clients:
            # Nobody streams: not parsed, and the event loop not woken, for each of the
            # thousands of events of a burst. A stream connecting now reads the stored
            # events after it connected, so it misses none of these.
            return
        try:
            message = EventMessage.model_validate_json(body)
        except ValidationError:
            LOG.warning("dropped a notification that is no event (%d bytes)", len(body))
            return
        loop = self._loop
        if loop is None:
            return
        # A closed loop (the API stopping) has nobody listening any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self.dispatch, message)

    def dispatch(self, message: EventMessage) -> None:
        """Queue ``message`` for every client that wants it (on the event loop)."""
        for client in list(self._clients):
            if client.dropped or not client.wants(message):
                continue
            try:
                client.queue.put_nowait(message)
            except asyncio.QueueFull:
                client.drop()
                self.disconnect(client)
                LOG.warning("dropped an event stream %d events behind", self.queue_size)
