"""When the database cannot be used right now: which errors say so, and logging an outage
once when it starts and once when it ends instead of a traceback per attempt.

Such an error says nothing about the request that met it: the same work succeeds once
the database is back, so callers retry it (RPC casts are requeued, periodic jobs run
again) and the API answers 503 with Retry-After.
"""

from __future__ import annotations

import logging
import math
import threading
import time

from sqlalchemy.exc import DBAPIError, DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

#: The database is down, restarting, unreachable or out of connections: PostgreSQL's
#: "connection refused", "terminating connection due to administrator command", "the
#: database system is starting up", a connection closed under a query, SQLite's
#: "database is locked", and the pool's timeout waiting for a connection.
UNAVAILABLE_ERRORS: tuple[type[Exception], ...] = (
    OperationalError,
    InterfaceError,
    DisconnectionError,
    PoolTimeout,
)


def is_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` means the database cannot be used now (retry later), rather than
    something wrong with the statement or the data."""
    if isinstance(exc, UNAVAILABLE_ERRORS):
        return True
    # Any DBAPI error on a connection the pool found dead (whatever its class).
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


class OutageLog:
    """Logs "database unavailable" when the first failure of an outage is reported and
    "available again" at the first success after it; the failures between are quiet.

    One per process (the :class:`~libs.db.Database` has it), shared by every thread.
    """

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self._log = logger or logging.getLogger(__name__)
        self._lock = threading.Lock()
        self._since: float | None = None
        self._ended_at = -math.inf

    @property
    def down(self) -> bool:
        """Whether the last report was a failure."""
        return self._since is not None

    def retry_if(self, exc: BaseException) -> bool:
        """For ``RPCServer(retry_if=...)``: a cast whose handler met the database down is
        handled again later, and the outage is reported."""
        if not is_unavailable(exc):
            return False
        self.failed(exc, "handling a request")
        return True

    def ended_within(self, seconds: float) -> bool:
        """Whether an outage is going on or ended less than ``seconds`` ago."""
        return self._since is not None or time.monotonic() - self._ended_at < seconds

    def failed(self, exc: BaseException, doing: str) -> None:
        """Report that ``doing`` failed because the database is unavailable."""
        with self._lock:
            if self._since is not None:
                return
            self._since = time.monotonic()
        # The driver's first line names the cause; the rest may quote a statement.
        cause = str(getattr(exc, "orig", None) or exc).strip().splitlines()
        self._log.warning(
            "database unavailable (%s while %s): %s; retrying until it is back",
            type(exc).__name__,
            doing,
            cause[0] if cause else "no detail",
        )

    def succeeded(self) -> None:
        """Report that the database answered."""
        if self._since is None:
            return
        with self._lock:
            since, self._since = self._since, None
            if since is not None:
                self._ended_at = time.monotonic()
        if since is not None:
            self._log.warning("database available again after %.1f s", time.monotonic() - since)
