"""Fixtures for the CLI's tests: a fake API behind httpx.MockTransport and a runner that
hands the CLI a client on it (and a clock that moves only when the CLI sleeps)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
import pytest
from typer.testing import CliRunner, Result

from libs.cli.client import APIClient
from libs.cli.config import CLIConfig
from libs.cli.main import app
from libs.cli.session import Runtime, say_retrying

from .fakeapi import ADMIN_TOKEN, FakeAPI


@dataclass
class FakeClock:
    now: float = 1000.0
    slept: list[float] = field(default_factory=list)

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


@dataclass
class CLI:
    """Runs ``tetsu ARGS...`` in this process against the fake API."""

    api: FakeAPI
    clock: FakeClock
    configs: list[CLIConfig] = field(default_factory=list)  # what each client was made with

    def make_client(self, config: CLIConfig) -> APIClient:
        self.configs.append(config)
        return APIClient(
            config.endpoint,
            config.token,
            transport=httpx.MockTransport(self.api.handler),
            sleep=self.clock.sleep,
            on_retry=say_retrying,
        )

    def __call__(self, *args: str, input: str | None = None) -> Result:
        runtime = Runtime(
            make_client=self.make_client, clock=self.clock.time, sleep=self.clock.sleep
        )
        return CliRunner().invoke(app, list(args), obj=runtime, input=input)


@pytest.fixture(autouse=True)
def isolated_environment(tmp_path, monkeypatch):
    """No user's config file or variables; output as if piped (no terminal width)."""
    monkeypatch.setenv("TETSU_CLI_CONFIG", str(tmp_path / "cli.toml"))
    for name in ("TETSU_ENDPOINT", "TETSU_TOKEN", "COLUMNS", "XDG_CONFIG_HOME"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def api() -> FakeAPI:
    return FakeAPI()


@pytest.fixture
def tetsu(api, monkeypatch) -> Callable[..., Result]:
    """``tetsu("node", "list")``: the CLI as the admin against ``api``."""
    monkeypatch.setenv("TETSU_TOKEN", ADMIN_TOKEN)
    return CLI(api, FakeClock())
