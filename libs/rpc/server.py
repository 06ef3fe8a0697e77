"""The receiving side: an ``RPCServer`` runs a target's messages through a dispatcher.

Handlers run on ``workers`` threads of the transport's listener; at most ``workers``
messages are taken from the broker and not yet finished. A message is acknowledged after its
handler returns (at least once). A message the server refuses (not JSON, no method, unknown
method, incompatible version, wrong arguments) is logged with its msg_id, answered with the
typed error if it was a call, and rejected for good (over AMQP it lands in the dead-letter
queue). A handler's exception is returned to the caller of a call, logged for a cast, and the
message is acknowledged: it would fail again if redelivered. Except a transient failure
(``retry_if``, e.g. the database is down): that cast is put back in its queue after
``retry_delay`` and handled again, as often as it takes, so the outage loses nothing. A body
over ``max_body_bytes`` is refused unread and dropped (acknowledged, not dead-lettered), so
huge garbage piles up nowhere.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from types import TracebackType

from libs import metrics

from .context import RequestContext, current_context
from .dispatcher import Dispatcher
from .envelope import decode_request, encode_failure, encode_result, peek_msg_id
from .errors import MalformedMessage, RequestRefused, SerializationError, serialize_failure
from .target import Target
from .transports.base import Incoming, Listener, Transport

LOG = logging.getLogger(__name__)

#: The largest request body a server reads. tetsu's requests are ids and short texts (a few
#: KiB at most); anything near this is garbage, and refusing it unparsed keeps a flood of it
#: from costing CPU, memory and megabyte log lines.
MAX_BODY_BYTES = 1024 * 1024


class RPCServer:
    """Serves ``endpoints`` on ``target`` (which names the topic and this server)."""

    def __init__(
        self,
        transport: Transport,
        target: Target,
        endpoints: Sequence[object],
        *,
        workers: int = 8,
        debug: bool = False,
        max_body_bytes: int = MAX_BODY_BYTES,
        retry_if: Callable[[BaseException], bool] | None = None,
        retry_delay: float = 2.0,
    ) -> None:
        """``retry_if(exc)`` says whether a cast whose handler raised ``exc`` should be
        handled again later (requeued after ``retry_delay`` seconds) instead of dropped."""
        if target.server is None:
            raise ValueError("a server's target names the server: Target(topic, server=...)")
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self.target = target
        self.dispatcher = Dispatcher(endpoints)
        self._transport = transport
        self._workers = workers
        self._debug = debug
        self._max_body_bytes = max_body_bytes
        self._retry_if = retry_if
        self._retry_delay = retry_delay
        self._retry_wait = threading.Event()  # set at stop: requeue at once
        self._listener: Listener | None = None
        self._stopped = threading.Event()
        self._stopping = False
        self._lock = threading.Lock()

    def start(self, *, wait: float | None = 30.0) -> bool:
        """Start consuming; with ``wait``, block up to that long until the listener consumes.

        Returns whether it consumes; if not (the broker is unreachable), it keeps retrying.
        """
        with self._lock:
            if self._listener is not None:
                raise RuntimeError("server already started")
            self._listener = self._transport.listen(self.target, prefetch=self._workers)
            self._stopped.clear()
            self._retry_wait.clear()
            self._listener.start(self._handle)
        waiter = getattr(self._listener, "wait_consuming", None)
        if wait is not None and waiter is not None and not waiter(wait):
            LOG.warning("server %s not consuming after %g s; still retrying", self.target, wait)
            return False
        return True

    def stop(self) -> None:
        """Stop taking messages, let the handlers running now finish and settle, release."""
        with self._lock:
            listener = self._listener
            if listener is None or self._stopping:
                return
            self._stopping = True
        self._retry_wait.set()
        listener.stop()
        listener.close()
        with self._lock:
            self._listener, self._stopping = None, False
        self._stopped.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until :meth:`stop` has finished."""
        return self._stopped.wait(timeout)

    def __enter__(self) -> RPCServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _handle(self, incoming: Incoming) -> None:
        try:
            self._process(incoming)
        except Exception:  # never lose a worker, never leave a message unsettled
            LOG.exception("unexpected error handling message %s", incoming.msg_id)
            with contextlib.suppress(Exception):  # raises if it was settled already
                incoming.reject()

    def _process(self, incoming: Incoming) -> None:
        size = len(incoming.body)
        if size > self._max_body_bytes:
            msg_id = incoming.msg_id or "?"
            too_big = MalformedMessage(
                f"the body of {size} bytes is over the server's limit of "
                f"{self._max_body_bytes} bytes"
            )
            LOG.warning("dropped message %s: %s", msg_id, too_big)
            incoming.finish(self._failure(msg_id, too_big) if incoming.expects_reply else None)
            return
        msg_id = incoming.msg_id or peek_msg_id(incoming.body) or "?"
        try:
            request = decode_request(incoming.body)
        except RequestRefused as exc:
            self._refuse(incoming, msg_id, "-", exc)
            return
        msg_id = request.msg_id or msg_id
        token = current_context.set(request.context)
        started = time.perf_counter()
        kind = "call" if incoming.expects_reply else "cast"
        try:
            result = self.dispatcher.dispatch(
                request.context, request.method, request.args, request.version
            )
        except RequestRefused as exc:
            # Not by method: a refused method name may be any garbage.
            self._measure(kind, "-", "refused", None)
            self._refuse(incoming, msg_id, request.context.request_id, exc)
            return
        except Exception as exc:
            if not incoming.expects_reply and self._retry_if is not None and self._retry_if(exc):
                self._measure(kind, request.method, "retry", started)
                self._retry_later(incoming, msg_id, request.method, request.context, exc)
                return
            self._measure(kind, request.method, "error", started)
            code = getattr(exc, "code", None)
            metrics.ERRORS.labels(
                self.target.topic, code if isinstance(code, str) else type(exc).__name__
            ).inc()
            LOG.log(
                logging.INFO if incoming.expects_reply else logging.ERROR,
                "%s %s %s [%s] raised %s: %s",
                kind,
                msg_id,
                request.method,
                request.context.request_id,
                type(exc).__name__,
                exc,
                exc_info=self._debug or not incoming.expects_reply,
            )
            incoming.finish(self._failure(msg_id, exc) if incoming.expects_reply else None)
            return
        finally:
            current_context.reset(token)
        self._measure(kind, request.method, "ok", started)
        reply = None
        if incoming.expects_reply:
            try:
                reply = encode_result(msg_id, result)
            except SerializationError as exc:
                LOG.error(
                    "call %s (%s) returned a value that is not JSON: %s",
                    msg_id,
                    request.method,
                    exc,
                )
                reply = self._failure(msg_id, exc)
        incoming.finish(reply)

    def _measure(self, kind: str, method: str, outcome: str, started: float | None) -> None:
        metrics.RPC_CALLS.labels("server", kind, self.target.topic, method, outcome).inc()
        if started is not None:
            metrics.RPC_SECONDS.labels("server", kind, self.target.topic, method).observe(
                time.perf_counter() - started
            )

    def _retry_later(
        self,
        incoming: Incoming,
        msg_id: str,
        method: str,
        ctxt: RequestContext,
        exc: Exception,
    ) -> None:
        # One line for the first attempt; the repeats of a long outage stay quiet.
        LOG.log(
            logging.DEBUG if incoming.redelivered else logging.WARNING,
            "cast %s %s [%s] failed for now (%s: %s); handling it again in %g s",
            msg_id,
            method,
            ctxt.request_id,
            type(exc).__name__,
            str(exc).strip().split("\n", 1)[0],
            self._retry_delay,
        )
        # Waiting here, holding the message, paces the retries of a long outage; a
        # stopping server requeues at once and the next server run handles it.
        self._retry_wait.wait(self._retry_delay)
        incoming.requeue()

    def _refuse(
        self, incoming: Incoming, msg_id: str, request_id: str, exc: RequestRefused
    ) -> None:
        LOG.warning("refused message %s [%s]: %s: %s", msg_id, request_id, type(exc).__name__, exc)
        incoming.reject(self._failure(msg_id, exc) if incoming.expects_reply else None)

    def _failure(self, msg_id: str, exc: BaseException) -> bytes:
        return encode_failure(msg_id, serialize_failure(exc, with_traceback=self._debug))
