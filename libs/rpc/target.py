"""Where a message goes: a topic, optionally one server of it, or all of them."""

from __future__ import annotations

import re
from dataclasses import dataclass

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}$")
_VERSION = re.compile(r"^(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)$")


def parse_version(version: str) -> tuple[int, int]:
    """``"1.4"`` -> ``(1, 4)``; anything else is a ``ValueError``."""
    match = _VERSION.match(version) if isinstance(version, str) else None
    if match is None:
        raise ValueError(f"RPC version must look like 'X.Y', got {version!r}")
    return int(match.group(1)), int(match.group(2))


def version_is_compatible(available: str, requested: str) -> bool:
    """True when an endpoint at ``available`` can serve a request for ``requested``.

    Same major version, and the endpoint's minor is at least the requested one.
    """
    have_major, have_minor = parse_version(available)
    want_major, want_minor = parse_version(requested)
    return have_major == want_major and have_minor >= want_minor


@dataclass(frozen=True, slots=True)
class Target:
    """The destination of a message and the API version the sender speaks.

    - ``Target("conductor")``: any one server of the topic (competing consumers).
    - ``Target("conductor", server="c1")``: that server only.
    - ``Target("conductor", fanout=True)``: every server of the topic (casts only).

    A server listens with a target that names both its topic and its server name.
    """

    topic: str
    server: str | None = None
    fanout: bool = False
    version: str = "1.0"

    def __post_init__(self) -> None:
        if not isinstance(self.topic, str) or not _NAME.match(self.topic):
            raise ValueError(f"invalid topic {self.topic!r}: letters, digits, '_', '.', '-'")
        if self.server is not None and not _NAME.match(self.server):
            raise ValueError(f"invalid server {self.server!r}: letters, digits, '_', '.', '-'")
        if self.fanout and self.server is not None:
            raise ValueError("a fanout target addresses every server: do not name one")
        parse_version(self.version)
