"""The boot server's HTTP side: iPXE scripts, the ramdisk, jobs and images, read-only.

GET and HEAD of regular files under the root, streamed with ``sendfile`` (images are
hundreds of MiB), with ``Content-Length``; anything else is a 404. There are no
directory listings: ``/jobs/`` holds the ramdisks' callback tokens. Links are followed
(images are links to the API's files), but a path cannot climb out of the root.
"""

from __future__ import annotations

import logging
import os
import socket
import socketserver
import stat
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast
from urllib.parse import unquote, urlsplit

LOG = logging.getLogger(__name__)

#: Seconds a client may stay silent before its connection is dropped.
CLIENT_TIMEOUT = 60.0

_CONTENT_TYPES = {".ipxe": "text/plain; charset=utf-8"}


class _Server(ThreadingHTTPServer):
    # A download in progress must not hold up the conductor's stop.
    daemon_threads = True

    def __init__(self, address: tuple[str, int], root: Path) -> None:
        self.root = root
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer's own asks the resolver for the host's full name, which can hang on a
        # provisioning host without DNS; nothing here needs that name.
        socketserver.TCPServer.server_bind(self)
        self.server_name = str(self.server_address[0])
        self.server_port = int(self.server_address[1])


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "tetsu-boot"
    timeout = CLIENT_TIMEOUT

    def version_string(self) -> str:
        return self.server_version

    def do_GET(self) -> None:
        self._serve(with_body=True)

    def do_HEAD(self) -> None:
        self._serve(with_body=False)

    def _serve(self, *, with_body: bool) -> None:
        path = self._local_path()
        fd = _open_regular(path) if path is not None else None
        if path is None or fd is None:
            self._not_found(with_body)
            return
        with os.fdopen(fd, "rb") as handle:
            size = os.fstat(fd).st_size
            self.send_response(200)
            self.send_header("Content-Type", _content_type(path))
            self.send_header("Content-Length", str(size))
            self.end_headers()
            if not with_body or size == 0:
                return
            try:
                self.connection.sendfile(handle, 0, size)
            except (BrokenPipeError, ConnectionResetError, TimeoutError) as exc:
                # The machine rebooted or gave up; nothing to answer any more.
                LOG.debug("boot server: %s aborted: %s", self._plain_path(), exc)
                self.close_connection = True

    def _local_path(self) -> Path | None:
        """The file the request names, or None if it names nothing we would serve."""
        parts = self._plain_path().split("/")
        names = [part for part in parts if part]
        if not names or any(name in (".", "..") or "\\" in name or "\0" in name for name in names):
            return None
        root = cast(_Server, self.server).root
        return root.joinpath(*names)

    def _plain_path(self) -> str:
        # Only the path: a query string is never looked at, nor logged.
        return unquote(urlsplit(self.path).path)

    def _not_found(self, with_body: bool) -> None:
        body = b"not found\n"
        self.send_response(404)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if with_body:
            self.wfile.write(body)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        LOG.debug(
            "boot server: %s %s %s from %s",
            self.command,
            self._plain_path(),
            code,
            self.client_address[0],
        )

    def log_message(self, format: str, *args: Any) -> None:
        LOG.debug("boot server: %s", format % args)


def _open_regular(path: Path) -> int | None:
    """A read descriptor of ``path`` if it is a regular file (after links), else None.

    Non-blocking open, so a FIFO someone left in the tree cannot hang the thread."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    os.set_blocking(fd, True)
    return fd


def _content_type(path: Path) -> str:
    return _CONTENT_TYPES.get(path.suffix, "application/octet-stream")


class BootHTTPServer:
    """Serves ``root`` over HTTP on ``host``:``port`` (0: any free port) from a thread."""

    def __init__(self, root: Path, host: str, port: int) -> None:
        self.root = root
        self.host = host
        self.requested_port = port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The port it listens on (the one the system chose when 0 was asked for)."""
        if self._server is None:
            raise RuntimeError("the boot HTTP server is not started")
        return int(self._server.server_address[1])

    def start(self) -> None:
        server_class = _Server6 if ":" in self.host else _Server
        self._server = server_class((self.host, self.requested_port), self.root)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.2},
            name="boot-http",
            daemon=True,
        )
        self._thread.start()
        LOG.info("boot server: HTTP on %s:%d serving %s", self.host, self.port, self.root)

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        server.shutdown()
        server.server_close()
        thread.join()
        self._server = self._thread = None
