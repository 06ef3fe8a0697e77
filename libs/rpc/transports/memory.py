"""An in-process transport with the same routing as RabbitMQ, for tests and one-process mode.

Messages still go through JSON bytes, so what works here serialises the same way on the
wire. Hand-offs use condition variables, not polling: a call takes tens of microseconds.
"""

from __future__ import annotations

import collections
import itertools
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import NoConsumer, Timeout
from ..target import Target
from .base import Incoming, Listener, Transport


@dataclass
class _Message:
    body: bytes
    msg_id: str
    reply_slot: _ReplySlot | None = None
    redelivered: bool = False


class _ReplySlot:
    def __init__(self) -> None:
        self._event = threading.Event()
        self.body: bytes | None = None

    def put(self, body: bytes) -> None:
        self.body = body
        self._event.set()

    def wait(self, timeout: float) -> bytes | None:
        self._event.wait(timeout)
        return self.body


@dataclass
class _Queue:
    name: str
    messages: collections.deque[_Message] = field(default_factory=collections.deque)
    consumers: int = 0


class MemoryTransport(Transport):
    """All servers and clients that share one instance talk to each other."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._queues: dict[str, _Queue] = {}
        self._fanout: dict[str, set[str]] = collections.defaultdict(set)
        self._ids = itertools.count()
        #: Bodies of rejected messages, for inspection (a dead-letter queue).
        self.dead_letters: collections.deque[bytes] = collections.deque(maxlen=1000)

    # Queue names mirror the AMQP transport's.
    @staticmethod
    def _cast_queue(target: Target) -> str:
        return target.topic if target.server is None else f"{target.topic}@{target.server}"

    def _enqueue(self, name: str, message: _Message) -> None:
        self._queues[name].messages.append(message)
        self._cond.notify_all()

    def send(self, target: Target, body: bytes, *, msg_id: str) -> None:
        with self._cond:
            if target.fanout:
                for name in self._fanout.get(target.topic, ()):
                    self._enqueue(name, _Message(body, msg_id))
                return
            name = self._cast_queue(target)
            if name not in self._queues:
                if target.server is not None:
                    raise NoConsumer(f"no server {target.server!r} on topic {target.topic!r}")
                self._queues[name] = _Queue(name)
            self._enqueue(name, _Message(body, msg_id))

    def request(self, target: Target, body: bytes, *, msg_id: str, timeout: float) -> bytes:
        if target.fanout:
            raise ValueError("a call cannot go to a fanout target")
        slot = _ReplySlot()
        name = f"{self._cast_queue(target)}:call"
        with self._cond:
            queue = self._queues.get(name)
            if queue is None or queue.consumers == 0:
                raise NoConsumer(f"no server listens on {name!r}")
            self._enqueue(name, _Message(body, msg_id, reply_slot=slot))
        reply = slot.wait(timeout)
        if reply is None:
            with self._cond:  # expire it, as the broker would
                queue = self._queues.get(name)
                if queue is not None:
                    queue.messages = collections.deque(
                        m for m in queue.messages if m.reply_slot is not slot
                    )
            raise Timeout(f"no reply to {msg_id} within {timeout:g} s")
        return reply

    def listen(self, target: Target, *, prefetch: int) -> Listener:
        if target.server is None or target.fanout:
            raise ValueError("a server listens on a target naming its topic and server")
        return _MemoryListener(self, target, prefetch)

    def close(self) -> None:
        with self._cond:
            self._cond.notify_all()

    # Used by listeners, under self._cond.
    def _attach(self, names: list[str], fanout_name: str, topic: str) -> None:
        for name in [*names, fanout_name]:
            self._queues.setdefault(name, _Queue(name)).consumers += 1
        self._fanout[topic].add(fanout_name)

    def _detach(self, names: list[str], fanout_name: str, topic: str) -> None:
        for name in [*names, fanout_name]:
            queue = self._queues[name]
            queue.consumers -= 1
            if queue.consumers == 0 and (name.endswith(":call") or name == fanout_name):
                del self._queues[name]  # auto-delete queues go with their last consumer
        self._fanout[topic].discard(fanout_name)


class _MemoryIncoming(Incoming):
    def __init__(self, listener: _MemoryListener, message: _Message) -> None:
        self._listener = listener
        self._message = message
        self._settled = False
        self.body = message.body
        self.msg_id = message.msg_id
        self.expects_reply = message.reply_slot is not None
        self.redelivered = message.redelivered

    def _settle(self, reply: bytes | None) -> None:
        if self._settled:
            raise RuntimeError("message settled twice")
        self._settled = True
        if reply is not None and self._message.reply_slot is not None:
            self._message.reply_slot.put(reply)

    def finish(self, reply: bytes | None = None) -> None:
        self._settle(reply)

    def reject(self, reply: bytes | None = None) -> None:
        self._listener._transport.dead_letters.append(self._message.body)
        self._settle(reply)


class _MemoryListener(Listener):
    """``prefetch`` threads, each taking the next message when its handler is done."""

    def __init__(self, transport: MemoryTransport, target: Target, prefetch: int) -> None:
        if prefetch < 1:
            raise ValueError("prefetch must be at least 1")
        self._transport = transport
        self._topic = target.topic
        server_queue = f"{target.topic}@{target.server}"
        self._names = [target.topic, server_queue, f"{target.topic}:call", f"{server_queue}:call"]
        self._fanout_name = f"{server_queue}:fanout"
        self._prefetch = prefetch
        self._running = False
        self._threads: list[threading.Thread] = []

    def start(self, deliver: Callable[[Incoming], None]) -> None:
        with self._transport._cond:
            self._transport._attach(self._names, self._fanout_name, self._topic)
            self._running = True
        self._threads = [
            threading.Thread(
                target=self._work, args=(deliver,), name=f"rpc-{self._topic}-{n}", daemon=True
            )
            for n in range(self._prefetch)
        ]
        for thread in self._threads:
            thread.start()

    def _next(self) -> _Message | None:
        queues = self._transport._queues
        for name in (*self._names, self._fanout_name):
            queue = queues.get(name)
            if queue is not None and queue.messages:
                return queue.messages.popleft()
        return None

    def _work(self, deliver: Callable[[Incoming], None]) -> None:
        cond = self._transport._cond
        while True:
            with cond:
                message = None
                while self._running and (message := self._next()) is None:
                    cond.wait()
                if message is None:
                    return
            deliver(_MemoryIncoming(self, message))

    def stop(self) -> None:
        with self._transport._cond:
            if self._running:
                self._running = False
                self._transport._detach(self._names, self._fanout_name, self._topic)
            self._transport._cond.notify_all()

    def close(self) -> None:
        self.stop()
        current = threading.current_thread()
        for thread in self._threads:
            if thread is not current:
                thread.join()
