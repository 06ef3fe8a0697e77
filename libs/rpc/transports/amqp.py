"""The RabbitMQ transport, on kombu (py-amqp underneath).

Topology, for exchange name ``E`` (default ``"tetsu"``), topic ``T`` and server ``S``:

=====================  =========================================  ===========================
what                   queue                                      kind
=====================  =========================================  ===========================
cast to T              ``E.T``                                    durable, dead-letters
cast to T, server S    ``E.T@S``                                  durable, dead-letters
call to T              ``E.T:call``                               durable, auto-delete
call to T, server S    ``E.T@S:call``                             durable, auto-delete
fanout cast to T       exchange ``E.T:fanout`` -> ``E.T@S:fanout``  exclusive, one per server
rejected casts         exchange ``E.dead`` -> ``E.dead``          durable, last 10,000
=====================  =========================================  ===========================

Every queue but the fanout ones is bound to the durable direct exchange ``E`` by its own name.

Guarantees. Casts are persistent messages on durable queues, published with ``mandatory`` and
waited for until the broker confirms them; a connection failure or a nack republishes with
backoff until ``publish_retry_timeout``: a cast is never lost, and may arrive twice. Servers
acknowledge a message only after its handler returned, so delivery is at least once and
handlers must be idempotent. Calls are not persistent: a call queue lives only while a server
consumes it, so a call nobody listens to comes back at once (:class:`NoConsumer`), and it
carries a per-message TTL equal to its timeout so a late server never runs a call whose
caller gave up. Replies use RabbitMQ direct reply-to: no reply queue is declared.

Threads. Each calling thread has its own connection (a call is one publish and one read on
it, nothing shared, no lock). A server's connection is read by its worker threads in turn
(leader/followers): the leader waits in ``select`` outside any lock, reads the frames that
arrived under the connection's lock, passes the leadership on and runs the handler itself;
then it takes the lock again to publish the reply and acknowledge. No message is handed from
one thread to another on its way to or from the handler.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import logging
import os
import random
import select
import socket
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import amqp
import kombu
from amqp.exceptions import MessageNacked

from ..errors import NoConsumer, Timeout, TransportError
from ..target import Target
from .base import Incoming, Listener, QueueNames, Transport

LOG = logging.getLogger(__name__)

DIRECT_REPLY_TO = "amq.rabbitmq.reply-to"
CONTENT_TYPE = "application/json"
DEAD_LETTER_LIMIT = 10_000
#: A broker that neither confirms nor fails a publish within this is treated as lost.
CONFIRM_TIMEOUT = 30.0


def safe_url(url: str) -> str:
    """The URL with its password masked: the only form of it ever logged or shown."""
    return str(kombu.Connection(url).as_uri())


def backoff_delay(attempt: int, *, base: float = 0.1, cap: float = 2.0) -> float:
    """Exponential backoff with jitter: ~0.1 s, 0.2 s, 0.4 s ... up to ``cap``."""
    return min(cap, base * 2.0**attempt) * (0.5 + random.random() / 2)  # noqa: S311


@dataclass(frozen=True, slots=True)
class _Names:
    exchange: str
    cast: str  # the cast queue, also its routing key
    call: str
    fanout_exchange: str
    fanout_queue: str | None
    dead: str

    @classmethod
    @functools.lru_cache(maxsize=1024)
    def of(cls, exchange: str, target: Target) -> _Names:
        queues = QueueNames.of(target, prefix=f"{exchange}.")
        return cls(
            exchange=exchange,
            cast=queues.cast,
            call=queues.call,
            fanout_exchange=queues.fanout_exchange,
            fanout_queue=queues.fanout_queue,
            dead=f"{exchange}.dead",
        )


def _declare_exchanges(channel: Any, names: _Names) -> None:
    channel.exchange_declare(names.exchange, "direct", durable=True, auto_delete=False)
    channel.exchange_declare(names.dead, "fanout", durable=True, auto_delete=False)
    channel.queue_declare(
        names.dead, durable=True, auto_delete=False, arguments={"x-max-length": DEAD_LETTER_LIMIT}
    )
    channel.queue_bind(names.dead, names.dead, "")


def _declare_cast_queue(channel: Any, names: _Names, name: str) -> None:
    # Servers and clients both declare these: the arguments must stay identical.
    channel.queue_declare(
        name, durable=True, auto_delete=False, arguments={"x-dead-letter-exchange": names.dead}
    )
    channel.queue_bind(name, names.exchange, name)


def _declare_fanout_exchange(channel: Any, names: _Names) -> None:
    channel.exchange_declare(names.fanout_exchange, "fanout", durable=True, auto_delete=False)


class AMQPTransport(Transport):
    """RPC over RabbitMQ. One instance per process; safe to use from many threads."""

    def __init__(
        self,
        url: str = "amqp://guest:guest@127.0.0.1:5672//",
        *,
        exchange: str = "tetsu",
        heartbeat: float = 30.0,
        connect_timeout: float = 5.0,
        publish_retry_timeout: float = 120.0,
    ) -> None:
        self._url = url
        self.exchange = exchange
        self.heartbeat = heartbeat
        self.connect_timeout = connect_timeout
        self.publish_retry_timeout = publish_retry_timeout
        self._local = threading.local()
        self._sessions: weakref.WeakSet[_Session] = weakref.WeakSet()
        self._listeners: weakref.WeakSet[_AMQPListener] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._closed = False
        probe = kombu.Connection(url)
        self.safe_url = safe_url(url)
        self.recoverable_errors: tuple[type[BaseException], ...] = (
            *probe.recoverable_connection_errors,
            *probe.recoverable_channel_errors,
            OSError,
            MessageNacked,
            amqp.exceptions.ConnectionForced,
        )

    def connect(self, *, heartbeat: float = 0) -> kombu.Connection:
        """A new connected kombu connection (raises one of ``recoverable_errors``)."""
        conn = kombu.Connection(
            self._url, heartbeat=heartbeat, connect_timeout=self.connect_timeout
        )
        conn.connect()
        return conn

    # -- client side -------------------------------------------------------------------

    def _session(self) -> _Session:
        if self._closed:
            raise TransportError("transport is closed")
        session: _Session | None = getattr(self._local, "session", None)
        if session is None:
            session = _Session(self)
            self._local.session = session
            with self._lock:
                self._sessions.add(session)
        return session

    def _drop_session(self) -> None:
        session: _Session | None = getattr(self._local, "session", None)
        self._local.session = None
        if session is not None:
            session.close()

    def send(self, target: Target, body: bytes, *, msg_id: str) -> None:
        deadline = time.monotonic() + self.publish_retry_timeout
        attempt = 0
        while True:
            try:
                self._session().cast(target, body, msg_id)
                return
            except self.recoverable_errors as exc:
                self._drop_session()
                if time.monotonic() >= deadline:
                    raise TransportError(
                        f"cast {msg_id} not confirmed by {self.safe_url}: {exc!r}"
                    ) from exc
                LOG.warning("cast %s to %s not confirmed (%s), retrying", msg_id, target.topic, exc)
                time.sleep(backoff_delay(attempt))
                attempt += 1

    def request(self, target: Target, body: bytes, *, msg_id: str, timeout: float) -> bytes:
        if target.fanout:
            raise ValueError("a call cannot go to a fanout target")
        deadline = time.monotonic() + timeout
        attempt = 0
        while True:  # nothing was sent yet: safe to retry until the call's own deadline
            try:
                session = self._session()
                session.publish_call(target, body, msg_id, timeout)
                break
            except self.recoverable_errors as exc:
                self._drop_session()
                if time.monotonic() >= deadline:
                    raise TransportError(f"cannot reach {self.safe_url}: {exc!r}") from exc
                time.sleep(min(backoff_delay(attempt), max(0.0, deadline - time.monotonic())))
                attempt += 1
        try:
            return session.wait_reply(msg_id, deadline, timeout)
        except self.recoverable_errors as exc:
            self._drop_session()
            raise TransportError(
                f"connection lost while waiting for the reply to {msg_id}"
            ) from exc

    # -- server side -------------------------------------------------------------------

    def listen(self, target: Target, *, prefetch: int) -> Listener:
        if target.server is None or target.fanout:
            raise ValueError("a server listens on a target naming its topic and server")
        listener = _AMQPListener(self, target, prefetch)
        self._listeners.add(listener)
        return listener

    def close(self) -> None:
        self._closed = True
        with self._lock:
            sessions = list(self._sessions)
        for session in sessions:
            session.close()
        for listener in list(self._listeners):
            listener.close()


class _Session:
    """One thread's connection: a channel for calls (direct reply-to) and one for casts."""

    def __init__(self, transport: AMQPTransport) -> None:
        self._transport = transport
        self._awaiting: str | None = None
        self._reply: bytes | None = None
        self._returned: set[str] = set()
        self._declared: set[str] = set()
        self._conn = transport.connect()
        try:
            self._call_channel = self._conn.channel()
            self._cast_channel = self._conn.channel()
            self._call_channel.basic_consume(DIRECT_REPLY_TO, no_ack=True, callback=self._on_reply)
            for channel in (self._call_channel, self._cast_channel):
                channel.events["basic_return"].add(self._on_return)
            self._cast_channel.confirm_select()
            self._cast_channel._confirm_selected = True
        except BaseException:
            self.close()
            raise

    def _on_reply(self, message: amqp.Message) -> None:
        if message.properties.get("correlation_id") == self._awaiting:
            self._reply = message.body
        # else: the late reply of a call that already timed out; drop it.

    def _on_return(self, exc: Exception, exchange: str, routing_key: str, message: Any) -> None:
        msg_id = message.properties.get("message_id")
        if msg_id:
            self._returned.add(msg_id)

    def _ensure_exchanges(self, names: _Names) -> None:
        if names.exchange not in self._declared:
            _declare_exchanges(self._cast_channel, names)
            self._declared.add(names.exchange)

    def _ensure_declared(self, target: Target, names: _Names) -> None:
        key = names.fanout_exchange if target.fanout else names.cast
        if key in self._declared:
            return
        channel = self._cast_channel
        self._ensure_exchanges(names)
        if target.fanout:
            _declare_fanout_exchange(channel, names)
        elif target.server is None:
            # A cast to a topic waits for a server even when none has started yet.
            _declare_cast_queue(channel, names, names.cast)
        self._declared.add(key)

    def cast(self, target: Target, body: bytes, msg_id: str) -> None:
        names = _Names.of(self._transport.exchange, target)
        self._ensure_declared(target, names)
        message = amqp.Message(body, content_type=CONTENT_TYPE, delivery_mode=2, message_id=msg_id)
        if target.fanout:
            exchange, key, mandatory = names.fanout_exchange, "", False
        else:
            exchange, key, mandatory = names.exchange, names.cast, True
        self._returned.discard(msg_id)
        self._cast_channel.basic_publish_confirm(
            message,
            exchange=exchange,
            routing_key=key,
            mandatory=mandatory,
            confirm_timeout=CONFIRM_TIMEOUT,
        )
        if msg_id in self._returned:
            self._returned.discard(msg_id)
            raise NoConsumer(f"no server {target.server!r} on topic {target.topic!r}")

    def publish_call(self, target: Target, body: bytes, msg_id: str, timeout: float) -> None:
        names = _Names.of(self._transport.exchange, target)
        self._ensure_exchanges(names)  # else a call before any server closes the channel
        message = amqp.Message(
            body,
            content_type=CONTENT_TYPE,
            delivery_mode=1,
            message_id=msg_id,
            correlation_id=msg_id,
            reply_to=DIRECT_REPLY_TO,
            expiration=str(max(1, int(timeout * 1000))),
        )
        self._awaiting, self._reply = msg_id, None
        self._returned.clear()
        self._call_channel.basic_publish(
            message, exchange=names.exchange, routing_key=names.call, mandatory=True
        )

    def wait_reply(self, msg_id: str, deadline: float, timeout: float) -> bytes:
        try:
            while self._reply is None:
                if msg_id in self._returned:
                    raise NoConsumer(f"no server listens for calls on this target ({msg_id})")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise Timeout(f"no reply to {msg_id} within {timeout:g} s")
                try:
                    self._conn.drain_events(timeout=remaining)
                except TimeoutError:
                    continue
            return self._reply
        finally:
            self._awaiting, self._reply = None, None

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._conn.release()


class _AMQPIncoming(Incoming):
    def __init__(self, listener: _AMQPListener, message: amqp.Message, generation: int) -> None:
        self._listener = listener
        self.generation = generation
        self.delivery_tag: int = message.delivery_info["delivery_tag"]
        props = message.properties
        self.reply_to: str | None = props.get("reply_to")
        self.correlation_id: str | None = props.get("correlation_id")
        self._settled = False
        self.body = message.body if isinstance(message.body, bytes) else bytes(message.body)
        self.msg_id = props.get("message_id")
        self.expects_reply = self.reply_to is not None
        self.redelivered = bool(message.delivery_info.get("redelivered"))

    def _settle(self, reply: bytes | None, ack: bool, requeue: bool = False) -> None:
        if self._settled:
            raise RuntimeError("message settled twice")
        self._settled = True
        self._listener._settle(self, reply, ack, requeue)

    def finish(self, reply: bytes | None = None) -> None:
        self._settle(reply, ack=True)

    def reject(self, reply: bytes | None = None) -> None:
        self._settle(reply, ack=False)

    def requeue(self) -> None:
        self._settle(None, ack=False, requeue=True)


class _AMQPListener(Listener):
    """One connection, read by ``prefetch`` threads in turn (leader/followers).

    The leading thread reads the socket (and reconnects when needed); when it has read
    messages it gives up the lead, wakes as many followers as it read messages (one of them
    leads next) and runs the first handler itself, so a message is never handed from one
    thread to another on its way to the handler. Threads take ``_conn_lock``
    to touch py-amqp: the leader to read frames, a finished handler's thread to publish its
    reply and acknowledge. Waiting in ``select`` happens outside that lock.
    """

    def __init__(self, transport: AMQPTransport, target: Target, prefetch: int) -> None:
        if prefetch < 1:
            raise ValueError("prefetch must be at least 1")
        self._transport = transport
        self._target = target
        self._names = _Names.of(transport.exchange, target)
        self._topic_names = _Names.of(transport.exchange, Target(target.topic))
        self._prefetch = prefetch
        self._conn_lock = threading.Lock()
        # Under _cond: messages read but not taken, handlers running, and whether a thread
        # leads (reads the socket). _cond and _conn_lock are never held together.
        self._cond = threading.Condition(threading.Lock())
        self._backlog: collections.deque[_AMQPIncoming] = collections.deque()
        self._busy = 0
        self._leading = False
        # The connection: changed by the leader under _conn_lock, read by settling threads.
        self._conn: kombu.Connection | None = None
        self._channel: Any = None
        self._tags: list[str] = []
        self._generation = 0
        self._attempt = 0
        self._next_heartbeat = 0.0
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._stopping = threading.Event()
        self._closing = threading.Event()
        self._consuming = threading.Event()
        self._cancelled = threading.Event()  # consumers cancelled: set once, under _conn_lock
        self._deliver: Callable[[Incoming], None] | None = None
        self._threads: list[threading.Thread] = []
        self._closed = False

    # The public side.

    def start(self, deliver: Callable[[Incoming], None]) -> None:
        self._deliver = deliver
        self._threads = [
            threading.Thread(target=self._work, name=f"rpc-{self._target.topic}-{n}", daemon=True)
            for n in range(self._prefetch)
        ]
        for thread in self._threads:
            thread.start()

    def wait_consuming(self, timeout: float | None) -> bool:
        return self._consuming.wait(timeout)

    def stop(self) -> None:
        """Take no new message (the broker gets back any that still arrive); messages already
        received are still handled, :meth:`close` waits for them."""
        self._stopping.set()
        self._cancel()
        self._wake()

    def close(self) -> None:
        """Wait for the handlers running now, then drop the connection."""
        self._stopping.set()
        self._wake()
        current = threading.current_thread()
        for thread in self._threads:
            if thread is not current:
                thread.join()
        self._closing.set()
        with self._conn_lock:
            self._disconnect()
        if not self._closed:
            self._closed = True
            os.close(self._wake_r)
            os.close(self._wake_w)

    # Settling, from the thread that ran the handler.

    def _settle(
        self, incoming: _AMQPIncoming, reply: bytes | None, ack: bool, requeue: bool = False
    ) -> None:
        with self._conn_lock:
            channel = self._channel
            if channel is None:
                return  # reconnecting: the broker redelivers the message; the caller retries
            try:
                if reply is not None and incoming.reply_to:
                    channel.basic_publish(
                        amqp.Message(
                            reply, content_type=CONTENT_TYPE, correlation_id=incoming.correlation_id
                        ),
                        exchange="",
                        routing_key=incoming.reply_to,
                    )
                if incoming.generation != self._generation:
                    return  # its delivery tag died with the old connection; it is redelivered
                if ack:
                    channel.basic_ack(incoming.delivery_tag)
                else:
                    channel.basic_reject(incoming.delivery_tag, requeue=requeue)
            except self._transport.recoverable_errors as exc:
                LOG.warning(
                    "could not settle %s (%r); it will be redelivered", incoming.msg_id, exc
                )
                self._wake()  # the leader finds the dead connection and reconnects

    def _wake(self) -> None:
        if not self._closed:  # after close() the descriptor number may belong to a new file
            with contextlib.suppress(OSError):
                os.write(self._wake_w, b"x")

    # The worker threads.

    def _work(self) -> None:
        assert self._deliver is not None
        while True:
            incoming = self._take()
            if incoming is None:
                return
            try:
                self._deliver(incoming)
            except Exception:
                LOG.exception("handler of %s escaped the server", incoming.msg_id)
            finally:
                with self._cond:
                    self._busy -= 1
                if self._stopping.is_set():
                    self._wake()  # the leader may be waiting for the last handler
            # Not kept while this thread waits for the next one: idle workers holding
            # their last body each would keep workers x the largest body in memory.
            del incoming

    def _take(self) -> _AMQPIncoming | None:
        """The next message for this thread, leading (reading) while there is none.

        None once the listener is stopped and no handler is left running.
        """
        while True:
            with self._cond:
                while True:
                    if self._backlog:
                        self._busy += 1
                        return self._backlog.popleft()
                    if self._stopping.is_set() and self._busy == 0 and not self._leading:
                        self._cond.notify_all()
                        return None
                    if not self._leading:
                        self._leading = True
                        break
                    self._cond.wait()
            try:
                self._lead()
            finally:
                with self._cond:
                    self._leading = False
                    # Wake a follower per message read but the one this thread takes, and
                    # one more to lead: they start in parallel, not one after the other.
                    self._cond.notify(len(self._backlog))

    def _lead(self) -> None:
        if self._stopping.is_set():
            self._cancel()
            if self._conn is None:
                self._closing.wait(0.05)  # nothing to read; handlers are finishing
                return
        elif self._conn is None:
            self._connect()
            return
        self._read()

    def _connect(self) -> None:
        try:
            conn = self._transport.connect(heartbeat=self._transport.heartbeat)
            with self._conn_lock:
                self._conn = conn
                self._channel = conn.channel()
                self._tags = self._declare_and_consume(self._channel)
                if self._cancelled.is_set():  # stop() came while connecting
                    for tag in self._tags:
                        self._channel.basic_cancel(tag, nowait=True)
            self._consuming.set()
            if self._attempt:
                LOG.info(
                    "listener on %s reconnected to %s",
                    self._target.topic,
                    self._transport.safe_url,
                )
            self._attempt = 0
        except Exception as exc:
            self._lost(exc)

    def _lost(self, exc: BaseException) -> None:
        recoverable = isinstance(exc, self._transport.recoverable_errors)
        LOG.warning(
            "listener on %s lost %s (%r), reconnecting",
            self._target.topic,
            self._transport.safe_url,
            exc,
            exc_info=not recoverable,
        )
        self._consuming.clear()
        with self._conn_lock:
            self._disconnect()
        with self._cond:
            self._backlog.clear()  # their delivery tags are dead: the broker redelivers them
        self._stopping.wait(backoff_delay(self._attempt))
        self._attempt += 1

    def _disconnect(self) -> None:
        """Under _conn_lock."""
        conn, self._conn, self._channel = self._conn, None, None
        self._generation += 1
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.release()

    def _cancel(self) -> None:
        """Cancel the consumers, from any thread (no reply awaited: nothing is read here)."""
        with self._conn_lock:
            if self._cancelled.is_set():
                return
            self._cancelled.set()
            if self._channel is not None:
                try:
                    for tag in self._tags:
                        self._channel.basic_cancel(tag, nowait=True)
                except self._transport.recoverable_errors:
                    self._disconnect()  # a dead connection consumes nothing either

    def _read(self) -> None:
        """Wait for the socket or a wake-up, then read what is there, one method at most."""
        conn = self._conn
        assert conn is not None
        if not conn.connected:
            # A reply or an acknowledgement failed on it (_settle woke this thread). Checked
            # before touching ``conn.connection``: kombu's property would quietly open a new
            # connection, with no consumers, and the listener would wait on it for nothing
            # (measured: a scheduler deaf after a broker restart that found every worker busy).
            self._lost(ConnectionError("the connection failed while settling a message"))
            return
        amqp_conn = conn.connection
        heartbeat = self._transport.heartbeat
        interval = heartbeat / 4 if heartbeat else 1.0
        try:
            sock = amqp_conn.sock
            readable, _, _ = select.select([sock, self._wake_r], [], [], interval)
            if self._wake_r in readable:
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wake_r, 4096)
            with self._conn_lock:
                if sock in readable:
                    # Up to one whole method (a delivery is three frames), then let the
                    # handlers' threads have the lock to acknowledge and reply.
                    while True:
                        complete = False
                        with contextlib.suppress(socket.timeout):
                            complete = amqp_conn.blocking_read(timeout=1.0)
                        if complete or not select.select([sock], [], [], 0)[0]:
                            break
                now = time.monotonic()
                if heartbeat and now >= self._next_heartbeat:
                    conn.heartbeat_check()
                    self._next_heartbeat = now + interval
        except Exception as exc:
            self._lost(exc)

    def _declare_and_consume(self, channel: Any) -> list[str]:
        names = self._names
        _declare_exchanges(channel, names)
        _declare_cast_queue(channel, names, self._topic_names.cast)
        _declare_cast_queue(channel, names, names.cast)
        queues = [self._topic_names.cast, names.cast]
        for call_queue in (self._topic_names.call, names.call):
            channel.queue_declare(call_queue, durable=True, auto_delete=True)
            channel.queue_bind(call_queue, names.exchange, call_queue)
            queues.append(call_queue)
        _declare_fanout_exchange(channel, names)
        assert names.fanout_queue is not None
        channel.queue_declare(names.fanout_queue, durable=False, exclusive=True, auto_delete=True)
        channel.queue_bind(names.fanout_queue, names.fanout_exchange, "")
        queues.append(names.fanout_queue)
        # global=True: the limit holds for the channel, across its five consumers.
        channel.basic_qos(0, self._prefetch, True)
        generation = self._generation

        def on_message(message: amqp.Message) -> None:  # the leader, under _conn_lock
            if self._stopping.is_set():
                channel.basic_reject(message.delivery_info["delivery_tag"], requeue=True)
                return
            self._backlog.append(_AMQPIncoming(self, message, generation))

        return [channel.basic_consume(name, callback=on_message, no_ack=False) for name in queues]
