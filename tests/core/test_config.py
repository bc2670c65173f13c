"""Configuration: loading and validation errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

import modelwire
from modelwire.config import load_config
from modelwire.errors import ConfigurationError, UnknownProviderError


def bad(config: object, *fragments: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        modelwire.Client(config=config)  # type: ignore[arg-type]
    for fragment in fragments:
        assert fragment in str(info.value), str(info.value)


def test_unknown_top_level_key() -> None:
    bad({"middlewares": ["cache"]}, "unknown config key 'middlewares'", "middleware")


def test_wrong_type_names_key() -> None:
    bad({"middleware": "cache"}, "'middleware'")


def test_bad_values_name_key() -> None:
    bad(
        {"providers": {"local": {"kind": "openai_compatible", "api_base": "http://x/v1", "timeout": 0}}},
        "providers.local.timeout",
        "greater than 0",
    )
    bad({"max_request_bytes": -5}, "max_request_bytes")


def test_unknown_provider_key() -> None:
    bad({"providers": {"openai": {"api_kee_env": "X"}}}, "unknown config key 'providers.openai.api_kee_env'")


def test_unknown_provider_kind() -> None:
    with pytest.raises(UnknownProviderError, match="kind 'bedrock' is not registered"):
        modelwire.Client(config={"providers": {"x": {"kind": "bedrock"}}})
    with pytest.raises(UnknownProviderError, match="has no 'kind'"):
        modelwire.Client(config={"providers": {"my-vllm": {"api_base": "http://x/v1"}}})


def test_unknown_middleware_name() -> None:
    bad({"middleware": ["cash"]}, "'cash' is not a registered middleware")


def test_middleware_listed_twice() -> None:
    class Twice(modelwire.Middleware):
        pass

    class Plugin:
        @modelwire.hookimpl
        def modelwire_register_middleware(self, register):  # type: ignore[no-untyped-def]
            register("twice", Twice)

    with pytest.raises(ConfigurationError, match="listed twice"):
        modelwire.Client(config={"middleware": ["twice", "twice"]}, plugins=[Plugin()])


def test_azure_needs_endpoint_and_version() -> None:
    bad({"providers": {"azure": {}}}, "providers.azure.api_base", "providers.azure.api_version")
    bad(
        {"providers": {"azure": {"api_base": "https://r.openai.azure.com/openai/deployments/d", "api_version": "v"}}},
        "resource endpoint",
    )


def test_openai_compatible_needs_api_base() -> None:
    bad({"providers": {"local": {"kind": "openai_compatible"}}}, "providers.local.api_base")


def test_toml_file_and_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "conf.toml"
    path.write_text('middleware = []\ndefault_model = "local/x"\n')
    assert load_config(path).default_model == "local/x"
    monkeypatch.setenv("MODELWIRE_CONFIG", str(path))
    assert load_config().source == str(path)
    monkeypatch.delenv("MODELWIRE_CONFIG")
    monkeypatch.chdir(tmp_path)
    assert load_config().source == "defaults"
    (tmp_path / "modelwire.toml").write_text("default_model = 'openai/gpt-4o'\n")
    assert load_config().default_model == "openai/gpt-4o"


def test_invalid_toml_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("middleware = [\n")
    with pytest.raises(ConfigurationError, match="not valid TOML"):
        load_config(path)
    with pytest.raises(ConfigurationError, match="not found"):
        load_config(tmp_path / "missing.toml")


def test_section_must_be_a_table() -> None:
    bad({"cache": 3}, "config key 'cache'")
    bad({"providers": {"openai": "gpt"}}, "providers")
