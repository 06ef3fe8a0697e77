"""The one-time token a ramdisk presents when it calls back: made per ramdisk run, kept
only as its sha256 in ``driver_internal_info``, checked by whoever receives the callback.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Mapping
from typing import Any

from libs.db import Node

TOKEN_HASH_KEY = "callback_token_sha256"  # noqa: S105 - a key name, not a secret


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def issue(node: Node) -> str:
    """A fresh token for ``node``'s next ramdisk run (replaces any earlier one)."""
    token = secrets.token_urlsafe(32)
    node.driver_internal_info[TOKEN_HASH_KEY] = _digest(token)
    return token


def revoke(node: Node) -> None:
    """No callback is expected any more: every token of the node stops working."""
    node.driver_internal_info.pop(TOKEN_HASH_KEY, None)


def matches(driver_internal_info: Mapping[str, Any], token: str) -> bool:
    """Whether ``token`` is the node's current callback token (constant-time compare)."""
    expected = driver_internal_info.get(TOKEN_HASH_KEY)
    return isinstance(expected, str) and hmac.compare_digest(expected, _digest(token))
