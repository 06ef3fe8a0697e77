"""The boot server's HTTP side: iPXE scripts, the ramdisk, jobs and images, read-only.

GET and HEAD of regular files under the root, streamed with ``sendfile`` (images are
hundreds of MiB), with ``Content-Length``; a path that names nothing servable is a 404,
another method a 501. There are no directory listings and no hidden (dot) files, such as
temporary files and partial downloads. Links are followed (images are links to the API's
files), but a path cannot climb out of the root. A job (``/jobs/<node_id>``) carries a
callback token and is served once: the first GET that receives all of it removes it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import socket
import socketserver
import stat
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast
from urllib.parse import unquote, urlsplit

from .tree import JOBS_DIR

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
        if path is None:
            self._not_found(with_body)
            return
        if with_body and path.parent.name == JOBS_DIR and path.parent.parent == self._root():
            self._serve_once(path)
            return
        fd = _open_regular(path)
        if fd is None:
            self._not_found(with_body)
            return
        self._send_file(path, fd, with_body=with_body)

    def _serve_once(self, path: Path) -> None:
        """Serve a job and remove it once it has all been sent. Taken out of the way
        first (renamed to a hidden name), so two requests at once cannot both have it."""
        claimed = path.with_name(f".{path.name}.{secrets.token_hex(4)}.sending")
        try:
            os.rename(path, claimed)
        except OSError:  # not there (not written yet, or fetched already)
            self._not_found(with_body=True)
            return
        fd = _open_regular(claimed)
        sent = fd is not None and self._send_file(path, fd, with_body=True)
        if not sent:
            # Not regular, or the transfer broke: the job stays for the next GET, unless
            # the conductor has written a new one meanwhile.
            with contextlib.suppress(OSError):
                os.link(claimed, path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(claimed)
        if fd is None:
            self._not_found(with_body=True)

    def _send_file(self, path: Path, fd: int, *, with_body: bool) -> bool:
        """Answer 200 with the file open as ``fd`` (closed here). Whether the body, when
        asked for, was sent in full."""
        with os.fdopen(fd, "rb") as handle:
            size = os.fstat(fd).st_size
            self.send_response(200)
            self.send_header("Content-Type", _content_type(path))
            self.send_header("Content-Length", str(size))
            self.end_headers()
            if not with_body or size == 0:
                return True
            try:
                sent: int = self.connection.sendfile(handle, 0, size)
                return sent == size
            except (BrokenPipeError, ConnectionResetError, TimeoutError) as exc:
                # The machine rebooted or gave up; nothing to answer any more.
                LOG.debug("boot server: %s aborted: %s", self._plain_path(), exc)
                self.close_connection = True
                return False

    def _local_path(self) -> Path | None:
        """The file the request names, or None if it names nothing we would serve."""
        parts = self._plain_path().split("/")
        names = [part for part in parts if part]
        # No dot names: not "." or "..", nor the hidden files being written (a job's or
        # an image's temporary file, a partial download).
        if not names or any(name.startswith(".") or "\\" in name or "\0" in name for name in names):
            return None
        return self._root().joinpath(*names)

    def _root(self) -> Path:
        return cast(_Server, self.server).root

    def _plain_path(self) -> str:
        # Only the path: a query string is never looked at, nor logged. A request too
        # malformed to parse has none.
        return unquote(urlsplit(getattr(self, "path", "") or "").path)

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
            getattr(self, "command", None) or "-",
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
