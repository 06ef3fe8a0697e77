"""Every API command explains itself: `--help` of each group and command."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import typer.main
from typer.testing import CliRunner

from libs.cli.main import app

from .screen import flat

GROUPS = ("server", "image", "flavor", "network", "node", "port", "project", "user")
ROOT = typer.main.get_command(app)


def _commands() -> Iterator[tuple[tuple[str, ...], Any]]:
    commands = ROOT.commands  # type: ignore[attr-defined]
    yield ("login",), commands["login"]
    for name in GROUPS:
        group = commands[name]
        yield (name,), group
        for sub_name, command in group.commands.items():
            yield (name, sub_name), command


COMMANDS = list(_commands())


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=[" ".join(p) for p, _ in COMMANDS])
def test_help_explains_the_command_and_each_option(path, command):
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "200"})

    assert result.exit_code == 0, result.output
    summary = flat(command.help.split("\n\n")[0])
    assert summary and summary in flat(result.output)
    undocumented = [
        param.name
        for param in command.params
        if not getattr(param, "help", None) and param.name not in {"help", "ctx"}
    ]
    assert undocumented == []


def test_the_top_level_help_lists_the_groups():
    result = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "200"})

    assert result.exit_code == 0
    for name in (*GROUPS, "login"):
        assert f" {name} " in flat(result.output)
