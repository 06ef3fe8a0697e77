"""Fan-out of live events to the API's stream clients, on the API's event loop.

One bus subscription per API process feeds every connected client. Each client has a
bounded queue and a filter (its project scope and its query): a client that falls
behind by a full queue is dropped (its stream ends; it reconnects with Last-Event-ID),
so one slow reader never holds memory or slows the others. Nothing here holds a thread
or a database connection per client.
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
    """Subscribes to ``bus`` while started and hands each event to the clients that want
    it. Start and stop it on the event loop that serves the clients."""

    def __init__(self, bus: NotificationBus, *, queue_size: int = 1000) -> None:
        self.bus = bus
        self.queue_size = queue_size
        self._clients: set[StreamClient] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._subscription: Subscription | None = None

    @property
    def clients(self) -> int:
        return len(self._clients)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._subscription = self.bus.subscribe(self._from_bus)

    async def stop(self) -> None:
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

    def connect(self, wants: EventFilter) -> StreamClient:
        client = StreamClient(wants, self.queue_size)
        self._clients.add(client)
        return client

    def disconnect(self, client: StreamClient) -> None:
        self._clients.discard(client)

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
                self._clients.discard(client)
                LOG.warning("dropped an event stream %d events behind", self.queue_size)
