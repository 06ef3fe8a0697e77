"""Raw kombu RPC benchmark: the floor that every RPC layer is measured against.

Server: ``--workers`` threads, each with its own connection, consume one durable queue
named after the topic. A call (transient message with ``reply_to`` and
``correlation_id``) is answered on the default exchange; a cast (``note``) is counted
and acked.

Client, call mode: one connection per caller thread, RabbitMQ direct reply-to
(``amq.rabbitmq.reply-to`` consumed with no_ack on the same channel it publishes on).
Client, cast mode: persistent messages (delivery_mode=2) to the durable queue, each
publish blocks until the broker confirms it (transport option ``confirm_publish``).

Run ``python bench_kombu.py --help``.
"""

from __future__ import annotations

import sys
import threading
import uuid
from importlib.metadata import version
from typing import Any

from common import (
    VALUE,
    Counter,
    announce_ready,
    build_parser,
    emit_result,
    report_server_stats,
    run_load,
    wait_for_stop_signal,
)
from kombu import Connection, Consumer, Producer, Queue
from kombu.message import Message

REPLY_TO = "amq.rabbitmq.reply-to"
REPLY_TIMEOUT = 30.0
TRANSIENT, PERSISTENT = 1, 2


def request_queue(topic: str) -> Queue:
    """The durable queue that carries both calls and casts for ``topic``."""
    return Queue(topic, durable=True, auto_delete=False)


# --- server -----------------------------------------------------------------------------


class ServerWorker(threading.Thread):
    """One consumer connection: answers echo() calls, counts note() casts."""

    def __init__(
        self, url: str, topic: str, stop: threading.Event, calls: Counter, notes: Counter
    ) -> None:
        super().__init__(name=f"kombu-server-{topic}", daemon=True)
        self._url, self._topic, self._stop_event = url, topic, stop
        self._calls, self._notes = calls, notes
        self.consuming = threading.Event()
        self.error: BaseException | None = None
        self._producer: Producer | None = None

    def run(self) -> None:
        try:
            with Connection(self._url) as conn:
                channel = conn.channel()
                channel.basic_qos(prefetch_size=0, prefetch_count=4, a_global=False)
                self._producer = Producer(channel, serializer="json")
                consumer = Consumer(
                    channel,
                    queues=[request_queue(self._topic)],
                    callbacks=[self._on_request],
                    accept=["json"],
                )
                with consumer:
                    self.consuming.set()
                    while not self._stop_event.is_set():
                        try:
                            conn.drain_events(timeout=0.5)
                        except TimeoutError:
                            continue
        except BaseException as exc:
            self.error = exc
            self.consuming.set()

    def _on_request(self, body: dict[str, Any], message: Message) -> None:
        method = body.get("method")
        if method == "echo":
            assert self._producer is not None
            self._producer.publish(
                {"result": body["args"]["value"]},
                routing_key=message.properties["reply_to"],
                correlation_id=message.properties["correlation_id"],
                delivery_mode=TRANSIENT,
            )
            self._calls.add()
        elif method == "note":
            self._notes.add()
        message.ack()


def serve(url: str, topic: str, workers: int) -> int:
    stop = threading.Event()
    calls, notes = Counter(), Counter()
    threads = [ServerWorker(url, topic, stop, calls, notes) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.consuming.wait(timeout=30)
    failed = [t.error for t in threads if t.error is not None or not t.consuming.is_set()]
    if failed:
        stop.set()
        print(f"server failed to start: {failed[0]!r}", file=sys.stderr)
        return 1
    announce_ready()
    wait_for_stop_signal()
    stop.set()
    for thread in threads:
        thread.join(timeout=5)
    report_server_stats(calls.value, notes.value)
    return 0


# --- client -----------------------------------------------------------------------------


class CallCaller:
    """echo() over direct reply-to, one connection and one channel per caller."""

    def __init__(self, url: str, topic: str) -> None:
        self._topic = topic
        self._conn = Connection(url)
        self._conn.connect()
        channel = self._conn.channel()
        self._producer = Producer(channel, serializer="json")
        self._consumer = Consumer(
            channel,
            queues=[Queue(REPLY_TO, no_ack=True, no_declare=True)],
            callbacks=[self._on_reply],
            accept=["json"],
            no_ack=True,
            auto_declare=False,
        )
        self._consumer.consume()
        self._expected = ""
        self._replies: dict[str, Any] = {}

    def _on_reply(self, body: dict[str, Any], message: Message) -> None:
        correlation_id = message.properties.get("correlation_id")
        if correlation_id == self._expected:  # drop late replies to abandoned calls
            self._replies[correlation_id] = body["result"]

    def __call__(self) -> None:
        self._expected = correlation_id = uuid.uuid4().hex
        self._producer.publish(
            {"method": "echo", "args": {"value": VALUE}},
            routing_key=self._topic,
            reply_to=REPLY_TO,
            correlation_id=correlation_id,
            delivery_mode=TRANSIENT,
        )
        while correlation_id not in self._replies:
            self._conn.drain_events(timeout=REPLY_TIMEOUT)
        result = self._replies.pop(correlation_id)
        if result != VALUE:
            raise RuntimeError(f"echo returned {result!r}")

    def close(self) -> None:
        self._conn.release()


class CastCaller:
    """note() as a persistent, broker-confirmed message to the durable queue."""

    def __init__(self, url: str, topic: str) -> None:
        self._topic = topic
        self._conn = Connection(url, transport_options={"confirm_publish": True})
        self._conn.connect()
        channel = self._conn.channel()
        request_queue(topic)(channel).declare()
        self._producer = Producer(channel, serializer="json")

    def __call__(self) -> None:
        # With confirm_publish, py-amqp waits for basic.ack (raises on nack).
        self._producer.publish(
            {"method": "note", "args": {"value": VALUE}},
            routing_key=self._topic,
            delivery_mode=PERSISTENT,
        )

    def close(self) -> None:
        self._conn.release()


def main() -> int:
    args = build_parser(__doc__.splitlines()[0]).parse_args()
    if args.role == "server":
        return serve(args.url, args.topic, args.workers)
    caller_cls = CallCaller if args.mode == "call" else CastCaller
    result = run_load(
        lambda: caller_cls(args.url, args.topic), args.concurrency, args.duration, args.warmup
    )
    emit_result(
        framework="kombu",
        version=version("kombu"),
        mode=args.mode,
        concurrency=args.concurrency,
        result=result,
        confirms=args.mode == "cast",
        note=(
            "calls: transient request, direct reply-to, no confirms"
            if args.mode == "call"
            else "casts: persistent, publisher confirms, durable queue"
        ),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
