"""`tetsu login`: a password in, a token out (printed, or saved for later commands)."""

from __future__ import annotations

import json

from libs.cli.config import load_config


def test_login_prints_only_the_token_on_stdout(tetsu, api):
    api.passwords["alice"] = "s3cret"

    result = tetsu("login", "alice", input="s3cret\n")

    assert result.exit_code == 0, result.output
    # For export TETSU_TOKEN=$(tetsu login alice). (CliRunner's stand-in for getpass echoes
    # a blank line on stdout; the real one writes to the terminal.)
    assert result.stdout.strip() == "token-of-alice"
    assert "Password" in result.stderr and "s3cret" not in result.output
    sent = api.calls("POST", "/v1/tokens")[0]
    assert json.loads(sent.content) == {"name": "alice", "password": "s3cret"}
    assert "Authorization" not in sent.headers  # the admin token of the env is not sent


def test_login_save_writes_the_token_for_the_next_commands(tetsu, api, monkeypatch):
    api.passwords["alice"] = "s3cret"
    monkeypatch.delenv("TETSU_TOKEN")

    result = tetsu("login", "alice", "--save", "--password-stdin", input="s3cret\n")
    listed = tetsu("image", "list")

    assert result.exit_code == 0, result.output
    assert "token saved to" in result.stdout and "token-of-alice" not in result.output
    assert load_config().token == "token-of-alice"
    assert listed.exit_code == 0, listed.output
    assert api.calls("GET", "/v1/images")[0].headers["Authorization"] == "Bearer token-of-alice"


def test_a_wrong_password_is_refused_cleanly(tetsu, api):
    api.passwords["alice"] = "s3cret"

    result = tetsu("login", "alice", "--password-stdin", input="guess\n")

    assert result.exit_code == 1
    assert result.stderr.startswith("error: wrong user name or password (unauthorized, req-")
    assert result.stdout == ""


def test_user_create_asks_the_password_twice(tetsu, api):
    project = api.add("projects", name="research")

    result = tetsu("user", "create", "bob", "--project", "research", input="pw\npw\n")

    assert result.exit_code == 0, result.output
    assert json.loads(api.calls("POST", "/v1/users")[0].content) == {
        "name": "bob",
        "password": "pw",
        "project_id": project["id"],
        "role": "member",
    }
