"""The API's worker processes share the clients that keep their connections alive evenly.

The kernel hands a new connection to whichever worker accepts first, and a client that
keeps its connection alive stays with that worker for as long as it runs. Fifty
connections opened at once were split 29 / 21 or 30 / 20 between two workers; both
workers answered about as many requests a second, so the one with more clients answered
each of them later (measured, 1,000 creations with 50 in flight: p50 189 ms on 29
connections, 133 ms on 21; deletions 185 / 107 ms on 30 / 20).

Each worker keeps the number of requests it is answering in a slot of a small shared
array. When an answer starts on a worker that is answering more than its even share of
all the workers' requests (plus :data:`SLACK`), the answer carries ``Connection: close``,
at most once every :data:`SHED_INTERVAL` seconds per worker. The client opens a new
connection for its next request (HTTP/1.1 clients do this on their own), which the
kernel hands to a worker again; repeated, the shares even out and the closing stops.
Requests, not connections, are counted: a client that keeps a connection open and idle
(a pool's spare, a dashboard between refreshes) costs a worker nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, MutableSequence

#: Requests a worker may answer above its even share before it closes a connection.
SLACK = 2

#: Seconds between two connections one worker closes: a client that was asked to close
#: has not opened its new connection yet, so the counts lag behind for a moment.
SHED_INTERVAL = 0.05


class WorkerShares:
    """One worker's side of the shared counts: ``counts`` has one slot per worker, this
    worker's is ``index``. Used from the worker's event loop only."""

    def __init__(
        self,
        counts: MutableSequence[int],
        index: int,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._counts = counts
        self._index = index
        self._clock = clock
        self._last_shed = float("-inf")
        counts[index] = 0  # a worker started again in a dead one's place starts with none

    def started(self) -> None:
        """A request arrived."""
        self._counts[self._index] += 1

    def finished(self) -> None:
        """A request was answered (or failed)."""
        self._counts[self._index] -= 1

    def close_this_one(self) -> bool:
        """Called as an answer starts: whether it should ask its client to close the
        connection, as this worker answers more than its share of the requests."""
        counts = self._counts
        mine = counts[self._index]
        share = -(-sum(counts) // len(counts))  # rounded up
        if mine <= share + SLACK:
            return False
        now = self._clock()
        if now - self._last_shed < SHED_INTERVAL:
            return False
        self._last_shed = now
        return True
