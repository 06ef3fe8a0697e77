"""The benchmarks' HTTP client: one kept-alive connection per thread, opened anew after
an idle spell, and a request never sent twice."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

from benchmarks.scale import common
from benchmarks.scale.common import BurstClient


class Recorder(BaseHTTPRequestHandler):
    """Answers every request with what it saw: method, path, body, connection number."""

    protocol_version = "HTTP/1.1"  # keep-alive
    seen: ClassVar[list[tuple[str, str, int]]] = []
    connections: ClassVar[int] = 0
    lock: ClassVar[threading.Lock] = threading.Lock()

    def setup(self) -> None:
        super().setup()
        with Recorder.lock:
            Recorder.connections += 1
            self.connection_number = Recorder.connections

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        with Recorder.lock:
            Recorder.seen.append((self.command, self.path, self.connection_number))
        status = 500 if self.path.startswith("/fail") else 200
        reply = json.dumps(
            {
                "method": self.command,
                "path": self.path,
                "body": json.loads(body) if body else None,
                "authorization": self.headers.get("Authorization"),
                "connection": self.connection_number,
            }
        ).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    do_GET = do_POST = do_PUT = do_DELETE = _answer

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    Recorder.seen = []
    Recorder.connections = 0
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_requests_carry_headers_json_and_parameters(server: str) -> None:
    with BurstClient(server, {"Authorization": "Bearer t"}) as client:
        posted = client.post("/v1/things", json={"name": "a"})
        listed = client.get("/v1/things", params={"limit": 2, "marker": "x"})
        put = client.put("/v1/things/1", json={"target": "active"})
        deleted = client.delete("/v1/things/1")

    assert posted.status_code == 200
    assert posted.json() == {
        "method": "POST",
        "path": "/v1/things",
        "body": {"name": "a"},
        "authorization": "Bearer t",
        "connection": 1,
    }
    assert listed.json()["path"] == "/v1/things?limit=2&marker=x"
    assert put.json()["body"] == {"target": "active"}
    assert deleted.json()["method"] == "DELETE"
    assert posted.headers["content-type"] == "application/json"
    # All on one kept-alive connection.
    assert {number for _, _, number in Recorder.seen} == {1}


def test_each_thread_keeps_a_connection_of_its_own(server: str) -> None:
    with BurstClient(server, {}) as client:

        def twice() -> None:
            for _ in range(2):
                client.get("/").raise_for_status()

        threads = [threading.Thread(target=twice) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    by_connection: dict[int, int] = {}
    for _, _, number in Recorder.seen:
        by_connection[number] = by_connection.get(number, 0) + 1
    assert sorted(by_connection.values()) == [2, 2, 2]


def test_an_idle_connection_is_opened_anew(server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with BurstClient(server, {}) as client:
        assert client.get("/").json()["connection"] == 1
        monkeypatch.setattr(common, "IDLE_REOPEN", -1.0)  # anything counts as idle now
        assert client.get("/").json()["connection"] == 2


def test_an_error_answer_is_a_reply_and_a_dead_server_an_exception(server: str) -> None:
    with BurstClient(server, {}) as client:
        failed = client.get("/fail")
        assert failed.status_code == 500
        with pytest.raises(RuntimeError, match="GET /fail: 500"):
            failed.raise_for_status()
    with BurstClient("http://127.0.0.1:9", {}) as client, pytest.raises(ConnectionError):
        client.get("/")  # nothing listens on the discard port
    with pytest.raises(ValueError, match="plain http"):
        BurstClient("https://example.org", {})
