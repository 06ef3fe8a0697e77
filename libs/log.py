"""Logging set-up for every process: one line per record, tagged with the request id.

The request id comes from :data:`libs.rpc.current_context`, which the RPC server sets
while a handler runs and the API sets for each HTTP request, so one user request can be
followed through the API, the scheduler, a conductor and the network controller.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from libs.rpc import current_context

FORMAT = "%(asctime)s %(levelname)-7s %(service)s %(name)s [%(request_id)s] %(message)s"


class ContextFilter(logging.Filter):
    """Adds ``request_id`` (or ``-``) and the service name to every record."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def filter(self, record: logging.LogRecord) -> bool:
        ctxt = current_context.get()
        record.request_id = ctxt.request_id if ctxt is not None else "-"
        record.service = self.service
        return True


def setup_logging(
    service: str,
    level: str = "INFO",
    *,
    log_file: Path | None = None,
    console_level: str | None = None,
) -> None:
    """Send this process's logs to stderr in :data:`FORMAT` (idempotent).

    With ``log_file``, records at ``level`` go to that file and only those at
    ``console_level`` (default WARNING) to stderr: the all-in-one keeps its terminal for
    the user's progress display.
    """
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_tetsu", False):
            root.removeHandler(old)
            old.close()
    console = logging.StreamHandler(sys.stderr)
    handlers: list[logging.Handler] = [console]
    if log_file is not None:
        console.setLevel((console_level or "WARNING").upper())
        handlers.append(logging.FileHandler(log_file, encoding="utf-8"))
    for handler in handlers:
        handler.setFormatter(logging.Formatter(FORMAT))
        handler.addFilter(ContextFilter(service))
        handler._tetsu = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(level.upper())
    # httpx logs every request of our own clients at INFO: noise next to the access log.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    # Per-request access lines come from our own middleware, with the request id.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
