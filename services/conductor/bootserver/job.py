"""The deploy ramdisk's job (``/jobs/<node_id>``): what it must do and where to report.

Plain ``key=value`` lines (docs/baremetal.md). The ramdisk is a busybox shell script, so
values are kept to characters that need no quoting: no spaces, quotes, ``$``, backquotes
or backslashes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Literal

After = Literal["poweroff", "reboot", "none"]
Wipe = Literal["quick", "full"]

_KEY = re.compile(r"^[a-z][a-z0-9_]*$")
_VALUE = re.compile(r"^[^\s'\"`$\\]+$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def render(fields: Mapping[str, str | int]) -> str:
    """The job file's text for ``fields``, in their order. ValueError naming the key of a
    value the ramdisk could not read (never the value: it may be the token)."""
    lines = []
    for key, value in fields.items():
        if not _KEY.match(key):
            raise ValueError(f"job key {key!r} is not a plain name")
        text = str(value)
        if not _VALUE.match(text):
            raise ValueError(f"job value of {key} is empty or holds spaces, quotes, $ or \\")
        lines.append(f"{key}={text}\n")
    return "".join(lines)


def deploy_job(
    *,
    node_id: str,
    callback_url: str,
    token: str,
    image_url: str,
    image_size: int,
    image_sha256: str,
    after: After = "poweroff",
) -> str:
    """Write the image at ``image_url`` (``image_size`` bytes, ``image_sha256``) to the
    first disk, check it, report to ``callback_url``."""
    if image_size < 0:
        raise ValueError("image_size must be >= 0")
    if not _SHA256.match(image_sha256):
        raise ValueError("image_sha256 must be 64 lower-case hex digits")
    return render(
        {
            "action": "deploy",
            "node_id": node_id,
            "callback_url": callback_url,
            "token": token,
            "image_url": image_url,
            "image_size": image_size,
            "image_sha256": image_sha256,
            "after": after,
        }
    )


def clean_job(
    *, node_id: str, callback_url: str, token: str, wipe: Wipe, after: After = "poweroff"
) -> str:
    """Wipe the node's disks (``quick`` or ``full``), report to ``callback_url``."""
    return render(
        {
            "action": "clean",
            "node_id": node_id,
            "callback_url": callback_url,
            "token": token,
            "wipe": wipe,
            "after": after,
        }
    )
