"""Where the CLI finds the API and its token, strongest first: ``--endpoint``/``--token``,
``TETSU_ENDPOINT``/``TETSU_TOKEN``, the TOML file ``~/.config/tetsu/cli.toml``, defaults."""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx

DEFAULT_ENDPOINT = "http://127.0.0.1:8000"
ENDPOINT_ENV = "TETSU_ENDPOINT"
TOKEN_ENV = "TETSU_TOKEN"  # noqa: S105 - the name of a variable, not a secret
CONFIG_PATH_ENV = "TETSU_CLI_CONFIG"
KEYS = ("endpoint", "token")


class CLIConfigError(Exception):
    """The CLI's settings are unusable: an unreadable file or a malformed endpoint."""


@dataclass(frozen=True)
class CLIConfig:
    endpoint: str = DEFAULT_ENDPOINT
    token: str | None = field(default=None, repr=False)  # a secret: kept out of reprs
    path: Path | None = None  # the config file (whether it exists or not)


def config_path(environ: Mapping[str, str]) -> Path:
    """``TETSU_CLI_CONFIG``, else ``cli.toml`` in the XDG config folder of tetsu."""
    if explicit := environ.get(CONFIG_PATH_ENV):
        return Path(explicit).expanduser()
    base = environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "tetsu" / "cli.toml"


def read_config_file(path: Path) -> dict[str, str]:
    """The file's settings; none when it does not exist."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise CLIConfigError(f"cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise CLIConfigError(f"{path} is not valid TOML: {exc}") from None
    values: dict[str, str] = {}
    for key, value in data.items():
        if key not in KEYS:
            known = ", ".join(KEYS)
            raise CLIConfigError(f"{path}: unknown setting {key!r} (known: {known})")
        if not isinstance(value, str):
            raise CLIConfigError(f"{path}: {key} must be a string")
        values[key] = value
    return values


def load_config(
    *,
    endpoint: str | None = None,
    token: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> CLIConfig:
    """The settings in force: the arguments (the command's options) win over the
    environment, which wins over the file, which wins over the defaults."""
    environ = os.environ if environ is None else environ
    path = config_path(environ)
    file_values: dict[str, str] | None = None

    def pick(option: str | None, env_name: str, key: str) -> tuple[str | None, str]:
        nonlocal file_values
        if option:
            return option, f"--{key}"
        if environ.get(env_name):
            return environ[env_name], env_name
        if file_values is None:  # read only when it matters: a broken file may not
            file_values = read_config_file(path)
        if file_values.get(key):
            return file_values[key], str(path)
        return None, "default"

    chosen_endpoint, source = pick(endpoint, ENDPOINT_ENV, "endpoint")
    chosen_token, _ = pick(token, TOKEN_ENV, "token")
    chosen_endpoint = (chosen_endpoint or DEFAULT_ENDPOINT).strip()
    _check_endpoint(chosen_endpoint, source)
    return CLIConfig(endpoint=chosen_endpoint, token=chosen_token, path=path)


def _check_endpoint(endpoint: str, source: str) -> None:
    try:
        url = httpx.URL(endpoint)
    except httpx.InvalidURL as exc:
        raise CLIConfigError(f"endpoint {endpoint!r} (from {source}) is not a URL: {exc}") from None
    if url.scheme not in {"http", "https"} or not url.host:
        raise CLIConfigError(
            f"endpoint {endpoint!r} (from {source}) is not an http:// or https:// URL"
        )


def save_config(path: Path, **values: str) -> None:
    """Set ``values`` in the file at ``path``, keeping its other settings.

    The file holds a token, so it is written readable by its owner only.
    """
    unknown = set(values) - set(KEYS)
    if unknown:
        raise CLIConfigError(f"unknown settings: {', '.join(sorted(unknown))}")
    merged = {**read_config_file(path), **values}
    # A JSON string without ASCII escaping is also a valid TOML basic string.
    text = "".join(f"{key} = {json.dumps(merged[key], ensure_ascii=False)}\n" for key in merged)
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        staging = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(text)
        os.replace(staging, path)  # readers never see half a file
    except OSError as exc:
        raise CLIConfigError(f"cannot write {path}: {exc.strerror}") from None
