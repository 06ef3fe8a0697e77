"""Reading what the CLI printed regardless of how rich framed and wrapped it."""

from __future__ import annotations

import re

_FRAME = re.compile(r"[│╭╮╰╯─┃━┏┓┗┛┡┩└┘┌┐├┤┼┬┴═║]")


def flat(text: str) -> str:
    """``text`` without box drawing, every run of whitespace made one space."""
    return " ".join(_FRAME.sub(" ", text).split())
