"""The ``modelwire`` command line, run as a user would (a subprocess), against the fake server."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from modelwire.testing import FakeServer

from ..conftest import SENTINEL_KEY


def cli(*args: str, config: Path | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OPENAI_API_KEY": SENTINEL_KEY, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    env.pop("MODELWIRE_CONFIG", None)
    if config is not None:
        env["MODELWIRE_CONFIG"] = str(config)
    return subprocess.run(
        [sys.executable, "-m", "modelwire.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        check=check,
        timeout=120,
    )


@pytest.fixture
def config(server: FakeServer, tmp_path: Path) -> Path:
    path = tmp_path / "modelwire.toml"
    path.write_text(
        'default_model = "local/llama3"\nmiddleware = []\n'
        f'[providers.local]\nkind = "openai_compatible"\napi_base = "{server.openai_url}"\n'
        f'[providers.openai]\napi_base = "{server.openai_url}"\n'
    )
    return path


def test_complete_and_stream(config: Path, server: FakeServer) -> None:
    assert cli("complete", "hello cli", config=config).stdout == "echo: hello cli\n"
    assert cli("complete", "--stream", "-m", "openai/gpt-4o", "streamed words", config=config).stdout == (
        "echo: streamed words\n"
    )
    assert server.requests[-1].json["stream"] is True


def test_errors_are_one_line_and_keyless(config: Path, server: FakeServer) -> None:
    from modelwire.testing import Reply

    server.script(Reply.error(401, f"Incorrect API key provided: {SENTINEL_KEY}", type="invalid_request_error"))
    result = cli("complete", "x", "-m", "openai/gpt-4o", config=config, check=False)
    assert result.returncode == 2
    assert "AuthenticationError" in result.stderr
    assert SENTINEL_KEY not in result.stderr + result.stdout


def test_check(config: Path, server: FakeServer) -> None:
    result = cli("check", config=config)
    assert result.stdout.count("ok  ") == 2
    server.api_key = "sk-another-key-0000000000"
    failed = cli("check", "openai", config=config, check=False)
    assert failed.returncode == 1 and "rejected (401)" in failed.stdout


def test_config_masks_secrets(config: Path) -> None:
    out = cli("config", config=config).stdout
    assert '"api_key": "***set***"' in out and "OPENAI_API_KEY" in out
    assert SENTINEL_KEY not in out


def test_config_masks_url_passwords(config: Path) -> None:
    text = config.read_text().replace("middleware = []", 'middleware = ["cache"]')
    config.write_text(text + '[cache]\nbackend = "redis"\nurl = "redis://:hunter2-password@127.0.0.1:1/0"\n')
    out = cli("config", config=config).stdout
    assert "hunter2-password" not in out and "redis://:***@127.0.0.1:1/0" in out


def test_plugins_shows_order(config: Path) -> None:
    out = cli("plugins", config=config).stdout
    assert "openai_compatible" in out and "middleware order (outermost first): provider" in out


def test_bad_config_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("middleware = 5\n")
    result = cli("plugins", config=path, check=False)
    assert result.returncode == 2 and "config key 'middleware'" in result.stderr


def test_demo_runs_without_key_or_server() -> None:
    env_free = cli("demo")
    assert "1. A completion from each provider kind" in env_free.stdout
    assert "echo: Hello from azure" in env_free.stdout
    assert "api-version=2024-10-21" in env_free.stdout


_BUILTIN_COMMANDS = ["complete", "check", "plugins", "config", "demo", "cache", "limits", "budget", "stats"]


def test_command_plugins_are_the_builtins_that_add_commands() -> None:
    """The CLI's parser loads only ``COMMAND_PLUGINS`` of the built-ins: the list must name every
    built-in that adds a subcommand, or its command would vanish from the CLI."""
    from modelwire.registry import COMMAND_PLUGINS, DEFAULT_PLUGINS, build_registry

    impls = build_registry().pm.hook.modelwire_register_commands.get_hookimpls()
    assert sorted(i.plugin_name for i in impls if i.plugin_name in DEFAULT_PLUGINS) == sorted(COMMAND_PLUGINS)


#: What ``modelwire --help`` must not import (issue 14 row 1b, budget 1/20 of ``import litellm``): the
#: transport and the libraries behind the middleware and config models, loaded when a command runs.
_NOT_FOR_HELP = {"litellm", "httpx", "pydantic", "pydantic_core", "pyrate_limiter", "dogpile", "structlog"}


def test_help_lists_every_command_without_loading_the_providers() -> None:
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "modelwire.cli", "--help"],
        capture_output=True, text=True, timeout=120, check=True,
    )
    assert all(name in proc.stdout for name in _BUILTIN_COMMANDS), proc.stdout
    imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "modelwire.providers.litellm_base" not in imported
    assert sorted(_NOT_FOR_HELP & {name.split(".")[0] for name in imported}) == []


def test_a_third_party_command_from_an_entry_point(tmp_path: Path, config: Path) -> None:
    """A plugin package adding ``modelwire hello``: listed by ``--help``, run with the configured client."""
    (tmp_path / "mw_hello.py").write_text(
        "from modelwire import hookimpl\n"
        "def setup(parser):\n    parser.add_argument('--name', default='world')\n"
        "def run(client, args):\n    print(f'hello {args.name}, default model {client.config.default_model}')\n"
        "    return 0\n"
        "@hookimpl\ndef modelwire_register_commands(register):\n"
        "    register('hello', 'say hello from a plugin', setup, run)\n"
    )
    info = tmp_path / "mw_hello-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mw-hello\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text("[modelwire]\nhello = mw_hello\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "MODELWIRE_CONFIG": str(config), "OPENAI_API_KEY": SENTINEL_KEY}
    helped = subprocess.run([sys.executable, "-m", "modelwire.cli", "--help"], capture_output=True, text=True, env=env)
    assert helped.returncode == 0 and "say hello from a plugin" in helped.stdout, helped.stderr
    ran = subprocess.run(
        [sys.executable, "-m", "modelwire.cli", "hello", "--name", "mw"], capture_output=True, text=True, env=env
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout == "hello mw, default model local/llama3\n"
