"""Where the CLI finds its endpoint and token: options > environment > file > defaults."""

from __future__ import annotations

import httpx
import pytest

from libs.cli.config import CLIConfigError, load_config, save_config

from .fakeapi import ADMIN_TOKEN

FILE = 'endpoint = "http://file:8000"\ntoken = "file-token"\n'


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "cli.toml"
    path.write_text(FILE)
    return path


def test_each_source_beats_the_ones_after_it(config_file):
    env = {"TETSU_CLI_CONFIG": str(config_file)}
    with_env = {**env, "TETSU_ENDPOINT": "http://env:8000", "TETSU_TOKEN": "env-token"}

    from_file = load_config(environ=env)
    from_env = load_config(environ=with_env)
    from_options = load_config(endpoint="http://option:8000", token="opt-token", environ=with_env)
    from_defaults = load_config(environ={"TETSU_CLI_CONFIG": str(config_file.parent / "none")})

    assert (from_file.endpoint, from_file.token) == ("http://file:8000", "file-token")
    assert (from_env.endpoint, from_env.token) == ("http://env:8000", "env-token")
    assert (from_options.endpoint, from_options.token) == ("http://option:8000", "opt-token")
    assert (from_defaults.endpoint, from_defaults.token) == ("http://127.0.0.1:8000", None)


def test_sources_mix_key_by_key(config_file):
    config = load_config(environ={"TETSU_CLI_CONFIG": str(config_file), "TETSU_TOKEN": "env-token"})

    assert (config.endpoint, config.token) == ("http://file:8000", "env-token")


def test_the_default_file_is_in_the_users_config_folder(tmp_path):
    path = tmp_path / "tetsu" / "cli.toml"
    path.parent.mkdir()
    path.write_text(FILE)

    config = load_config(environ={"XDG_CONFIG_HOME": str(tmp_path)})

    assert config.endpoint == "http://file:8000"
    assert config.path == path


def test_the_commands_use_options_then_env_then_file(tetsu, api, monkeypatch, config_file):
    monkeypatch.setenv("TETSU_CLI_CONFIG", str(config_file))
    monkeypatch.delenv("TETSU_TOKEN")
    api.roles.update({"file-token": "admin", "env-token": "admin", "opt-token": "admin"})

    tetsu("flavor", "list")
    monkeypatch.setenv("TETSU_ENDPOINT", "http://env:8000")
    monkeypatch.setenv("TETSU_TOKEN", "env-token")
    tetsu("flavor", "list")
    tetsu("flavor", "list", "--endpoint", "http://option:9000", "--token", "opt-token")

    seen = [(r.url.host, r.headers["Authorization"]) for r in api.requests]
    assert seen == [
        ("file", "Bearer file-token"),
        ("env", "Bearer env-token"),
        ("option", "Bearer opt-token"),
    ]


def test_a_broken_file_is_one_clear_error(tetsu, monkeypatch, tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text("endpoint = http://no-quotes\n")
    monkeypatch.setenv("TETSU_CLI_CONFIG", str(path))
    monkeypatch.delenv("TETSU_TOKEN")

    result = tetsu("flavor", "list")

    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: {path} is not valid TOML")
    assert "Traceback" not in result.output


def test_a_misspelt_setting_is_named(tmp_path):
    path = tmp_path / "cli.toml"
    path.write_text('endpont = "http://x"\n')

    with pytest.raises(CLIConfigError, match="unknown setting 'endpont'"):
        load_config(environ={"TETSU_CLI_CONFIG": str(path)})


def test_an_endpoint_that_is_not_http_says_where_it_came_from(tetsu, monkeypatch):
    monkeypatch.setenv("TETSU_ENDPOINT", "127.0.0.1:8000")

    result = tetsu("node", "list")

    assert result.exit_code == 1
    assert "error: endpoint '127.0.0.1:8000' (from TETSU_ENDPOINT) is not an http" in result.stderr


def test_save_keeps_other_settings_and_is_private(config_file):
    save_config(config_file, token='new "token"')

    config = load_config(environ={"TETSU_CLI_CONFIG": str(config_file)})
    assert (config.endpoint, config.token) == ("http://file:8000", 'new "token"')
    assert config_file.stat().st_mode & 0o777 == 0o600


def test_the_token_never_shows(tetsu, api, monkeypatch):
    config = load_config(token=ADMIN_TOKEN, environ={})
    api.handler = lambda request: httpx.Response(500, text="boom")

    result = tetsu("node", "list", "--token", ADMIN_TOKEN)

    assert ADMIN_TOKEN not in repr(config)
    assert result.exit_code == 1
    assert ADMIN_TOKEN not in result.output
