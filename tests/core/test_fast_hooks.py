"""Hooks on the request path are called through FastHook (resolved once per plugin change, not per
call): it must call what pluggy calls, in pluggy's order, with pluggy's results, and notice a
plugin registered or unregistered at any time."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pluggy
import pytest

import modelwire
from modelwire.registry import FastHook, PluginManager
from modelwire.testing import FakeServer

MakeClient = Callable[..., modelwire.Client]

spec = pluggy.HookspecMarker("fasttest")
impl = pluggy.HookimplMarker("fasttest")


class Specs:
    @spec
    def collect(self, value: int) -> list[Any]: ...  # type: ignore[empty-body]

    @spec(firstresult=True)
    def first(self, value: int) -> Any: ...


def tagged(tag: str, **opts: Any) -> object:
    class Plugin:
        @impl(**opts)
        def collect(self, value: int) -> Any:
            return None if tag == "none" else (tag, value)

        @impl(**opts)
        def first(self, value: int) -> Any:
            return None if tag == "none" else tag

    return Plugin()


@pytest.fixture
def pm() -> PluginManager:
    manager = PluginManager("fasttest")
    manager.add_hookspecs(Specs)
    return manager


def test_same_results_and_order_as_pluggy(pm: PluginManager) -> None:
    for tag, opts in [("a", {}), ("late", {"trylast": True}), ("none", {}), ("b", {}), ("early", {"tryfirst": True})]:
        pm.register(tagged(tag, **opts), name=tag)
    fast = FastHook(pm, "collect")
    assert fast(value=1) == pm.hook.collect(value=1) == [("early", 1), ("b", 1), ("a", 1), ("late", 1)]
    assert FastHook(pm, "first")(value=1) == pm.hook.first(value=1) == "early"


def test_plugins_registered_or_removed_later_are_seen(pm: PluginManager) -> None:
    fast = FastHook(pm, "collect")
    first = FastHook(pm, "first")
    assert fast(value=1) == [] and first(value=1) is None
    pm.register(tagged("a"), name="a")
    assert fast(value=2) == [("a", 2)] and first(value=2) == "a"
    pm.register(tagged("b"), name="b")
    assert fast(value=3) == [("b", 3), ("a", 3)] and first(value=3) == "b"
    pm.unregister(name="b")
    assert fast(value=4) == [("a", 4)] and first(value=4) == "a"


def test_wrappers_and_monitoring_go_through_pluggy(pm: PluginManager) -> None:
    class Wrapper:
        @impl(wrapper=True)
        def collect(self, value: int) -> Iterator[None]:
            result = yield
            return [*result, ("wrapped", value)]

    pm.register(tagged("a"), name="a")
    fast = FastHook(pm, "collect")
    assert fast(value=1) == [("a", 1)]
    pm.register(Wrapper(), name="wrapper")
    assert fast(value=2) == [("a", 2), ("wrapped", 2)]
    pm.unregister(name="wrapper")
    seen: list[str] = []
    undo = pm.add_hookcall_monitoring(lambda name, impls, kwargs: seen.append(name), lambda *args: None)
    assert fast(value=3) == [("a", 3)] and seen == ["collect"]
    undo()
    assert fast(value=4) == [("a", 4)] and seen == ["collect"]


def test_errors_propagate_and_missing_arguments_are_named(pm: PluginManager) -> None:
    class Broken:
        @impl
        def collect(self, value: int) -> Any:
            raise LookupError("from the plugin")

    pm.register(tagged("a"), name="a")
    pm.register(Broken(), name="broken")
    fast = FastHook(pm, "collect")
    with pytest.raises(LookupError, match="from the plugin"):
        fast(value=1)
    with pytest.raises(pluggy.HookCallError, match="'value'"):
        fast(other=1)


async def test_client_sees_a_plugin_registered_after_it_was_built(make_client: MakeClient,
                                                                 server: FakeServer) -> None:
    client = make_client(middleware=["cache"])
    await client.acomplete("hi", model="openai/gpt-4o")  # hooks resolved once
    prepared: list[str] = []

    class Late:
        @modelwire.hookimpl
        def modelwire_request_prepare(self, request: modelwire.Request) -> None:
            prepared.append(request.messages[0]["content"])

        @modelwire.hookimpl
        def modelwire_cache_key(self, request: modelwire.Request) -> str:
            return "one-key-for-all"

    client.registry.pm.register(Late(), name="late")
    first = await client.acomplete("hello", model="openai/gpt-4o")
    second = await client.acomplete("something else", model="openai/gpt-4o")
    assert prepared == ["hello", "something else"]
    assert not first.cached and second.cached and server.calls() == 2  # the late key plugin decided
    client.registry.pm.unregister(name="late")
    third = await client.acomplete("another", model="openai/gpt-4o")
    assert not third.cached and prepared == ["hello", "something else"] and server.calls() == 3
