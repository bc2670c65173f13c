"""Mistakes in a plugin or its config fail at Client construction, naming the plugin and the key."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

import modelwire
from modelwire import Middleware, Provider, hookimpl
from modelwire.registry import build_registry
from modelwire.testing import FakeServer


class MisspeltProviders:
    """``modelwire_register_provider`` (no s): pluggy would accept it and never call it."""

    def __init__(self) -> None:
        self.responses: list[Any] = []

    @hookimpl
    def modelwire_register_provider(self, register: Any) -> None:
        register("acme", Provider)

    @hookimpl
    def modelwire_response_received(self, response: Any) -> None:
        self.responses.append(response)


class WrongArgument:
    @hookimpl
    def modelwire_response_received(self, reponse: Any) -> None:
        pass


PLUGIN = f"{__name__}.MisspeltProviders"


def test_misspelt_hook_fails_naming_plugin_hook_and_spec(make_client, server: FakeServer) -> None:
    plugin = MisspeltProviders()
    with pytest.raises(modelwire.PluginError) as err:
        make_client(plugins=[plugin], providers={"a": {"kind": "acme"}})
    message = str(err.value)
    assert f"plugin '{PLUGIN}'" in message
    assert "'modelwire_register_provider' matches no modelwire hook" in message
    assert "did you mean 'modelwire_register_providers'?" in message
    assert server.calls() == 0


def test_misspelt_hook_unregisters_the_whole_plugin(make_client, server: FakeServer) -> None:
    """Half a plugin is worse than none: its other hooks are not left registered."""
    plugin = MisspeltProviders()
    reg = build_registry([plugin])
    assert "matches no modelwire hook" in reg.failures[PLUGIN]
    assert not reg.pm.is_registered(plugin)
    client = make_client(plugins=[plugin], disable_plugins=[PLUGIN])  # running without it is explicit
    client.complete("x", model="local/m")
    assert plugin.responses == []


def test_hook_with_unknown_argument_fails_naming_plugin(make_client) -> None:
    with pytest.raises(modelwire.PluginError, match=rf"(?s)plugin '{__name__}.WrongArgument'.*reponse"):
        make_client(plugins=[WrongArgument()])


def test_plugin_section_unknown_key_fails_even_with_a_lax_model(make_client) -> None:
    class TaggerConfig(BaseModel):  # the author did not write extra="forbid"
        tag: str = "none"

    class Tagger(Middleware):
        Config = TaggerConfig

    class Plugin:
        @hookimpl
        def modelwire_register_middleware(self, register: Any) -> None:
            register("tagger", Tagger)

    assert make_client(plugins=[Plugin()], middleware=["tagger"], tagger={"tag": "ok"}).middleware[0].config.tag == "ok"
    with pytest.raises(modelwire.ConfigurationError, match=r"unknown config key 'tagger\.tagg' \(allowed here: tag\)"):
        make_client(plugins=[Plugin()], middleware=["tagger"], tagger={"tagg": "typo"})


def test_nested_unknown_key_lists_the_keys_of_its_own_level(make_client) -> None:
    limits = [{"match": "*", "rpm": 5}, {"match": "local/*", "rpn": 5}]
    with pytest.raises(modelwire.ConfigurationError) as err:
        make_client(middleware=["ratelimit"], ratelimit={"limits": limits})
    message = str(err.value)
    assert "unknown config key 'ratelimit.limits.1.rpn'" in message
    allowed = message.split("allowed here: ")[1]
    assert "rpm" in allowed and "match" in allowed and "backend" not in allowed


def test_section_for_a_middleware_without_config(make_client) -> None:
    class Plain(Middleware):
        pass

    class Plugin:
        @hookimpl
        def modelwire_register_middleware(self, register: Any) -> None:
            register("plain", Plain)

    with pytest.raises(modelwire.ConfigurationError, match="config key 'plain': middleware 'plain' takes no config"):
        make_client(plugins=[Plugin()], plain={"x": 1})


def test_disable_plugins_typo_fails(make_client) -> None:
    with pytest.raises(modelwire.ConfigurationError) as err:
        make_client(disable_plugins=["modelwire.plugins.loging"])
    message = str(err.value)
    assert "config key 'disable_plugins': 'modelwire.plugins.loging' matches no installed plugin" in message
    assert "did you mean 'modelwire.plugins.logging'?" in message
    with pytest.raises(modelwire.ConfigurationError, match="'acmee' matches no installed plugin"):
        make_client(disable_plugins=["acmee"])


def test_provider_section_unknown_key_fails(make_client) -> None:
    with pytest.raises(modelwire.ConfigurationError, match=r"unknown config key 'providers\.local\.api_bse'"):
        make_client(providers={"local": {"kind": "openai_compatible", "api_bse": "http://x"}})
