"""Plugin registration, enabling by config, middleware order, broken plugins, observers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

import modelwire
from modelwire import Chunk, Completion, Middleware, Request, hookimpl
from modelwire.errors import PluginError
from modelwire.registry import build_registry
from modelwire.testing import FakeServer, capture_events


def recorder(name: str, log: list[str]) -> type[Middleware]:
    class Recorder(Middleware):
        async def ahandle(self, request: Request, call_next: Any) -> Completion:
            log.append(f"{name}>")
            response: Completion = await call_next(request)
            log.append(f"<{name}")
            return response

        async def ahandle_stream(self, request: Request, call_next: Any) -> AsyncIterator[Chunk]:
            log.append(f"{name}>")
            async for chunk in call_next(request):
                yield chunk
            log.append(f"<{name}")

    return Recorder


class OrderPlugin:
    def __init__(self) -> None:
        self.log: list[str] = []

    @hookimpl
    def modelwire_register_middleware(self, register: Any) -> None:
        for name in ("a", "b", "c"):
            register(name, recorder(name, self.log))


def test_middleware_runs_in_config_order(make_client, server: FakeServer) -> None:
    plugin = OrderPlugin()
    client = make_client(plugins=[plugin], middleware=["b", "c", "a"])
    client.complete("x", model="local/m")
    assert plugin.log == ["b>", "c>", "a>", "<a", "<c", "<b"]
    plugin.log.clear()
    list(client.stream("x", model="local/m"))
    assert plugin.log == ["b>", "c>", "a>", "<a", "<c", "<b"]


def test_registered_is_not_enabled(make_client, server: FakeServer) -> None:
    plugin = OrderPlugin()
    client = make_client(plugins=[plugin], middleware=["c"])
    client.complete("x", model="local/m")
    assert plugin.log == ["c>", "<c"]
    assert set(client.registry.middleware) >= {"a", "b", "c"}


def test_middleware_can_answer_without_provider(make_client, server: FakeServer) -> None:
    class Canned(Middleware):
        applies_to = ("whole",)

        async def ahandle(self, request: Request, call_next: Any) -> Completion:
            return Completion("canned", "stop", request.model, request.provider, cached=True)

    class Plugin:
        @hookimpl
        def modelwire_register_middleware(self, register: Any) -> None:
            register("canned", Canned)

    assert make_client(plugins=[Plugin()], middleware=["canned"]).complete("x", model="local/m").text == "canned"
    assert server.calls() == 0


def test_sync_middleware_twin(make_client, server: FakeServer) -> None:
    """A middleware written with the blocking ``handle`` runs in a worker thread."""

    class Upper(Middleware):
        applies_to = ("whole",)

        def handle(self, request: Request, call_next: Any) -> Completion:
            response: Completion = call_next(request)
            response.text = response.text.upper()
            return response

    class Plugin:
        @hookimpl
        def modelwire_register_middleware(self, register: Any) -> None:
            register("upper", Upper)

    client = make_client(plugins=[Plugin()], middleware=["upper"])
    assert client.complete("hi", model="local/m").text == "ECHO: HI"


def test_middleware_config_section_validated(make_client) -> None:
    from pydantic import BaseModel, ConfigDict, Field

    class Conf(BaseModel):
        model_config = ConfigDict(extra="forbid")
        limit: int = Field(1, gt=0)

    seen: list[Any] = []

    class Configured(Middleware):
        Config = Conf

        def __init__(self, config: Any, context: Any) -> None:
            super().__init__(config, context)
            seen.append(config)

    class Plugin:
        @hookimpl
        def modelwire_register_middleware(self, register: Any) -> None:
            register("conf", Configured)

    make_client(plugins=[Plugin()], middleware=["conf"], conf={"limit": 3})
    assert seen[-1].limit == 3
    with pytest.raises(modelwire.ConfigurationError, match="config key 'conf.limit'"):
        make_client(plugins=[Plugin()], middleware=["conf"], conf={"limit": 0})
    with pytest.raises(modelwire.ConfigurationError, match="unknown config key 'conf.limt'"):
        make_client(plugins=[Plugin()], conf={"limt": 2})  # checked even when not enabled


def test_broken_plugins_reported_by_name(make_client, server: FakeServer) -> None:
    """A broken plugin does not stop the others from loading, and no client runs without it
    silently: construction fails naming each one, until the config disables it."""

    class Broken:
        @hookimpl
        def modelwire_register_middleware(self, register: Any) -> None:
            raise RuntimeError("boom at registration")

    broken = Broken()
    reg = build_registry([broken, "no_such_plugin_module_xyz"])
    assert "no_such_plugin_module_xyz" in reg.failures
    assert any("boom at registration" in e for e in reg.failures.values())
    assert {"cache", "retry", "ratelimit"} <= set(reg.middleware)  # the others loaded
    with pytest.raises(PluginError, match="no_such_plugin_module_xyz") as err:
        make_client(plugins=[broken, "no_such_plugin_module_xyz"])
    assert "boom at registration" in str(err.value) and "disable_plugins" in str(err.value)
    broken_name = next(n for n in reg.failures if n.endswith("Broken"))
    client = make_client(plugins=[broken, "no_such_plugin_module_xyz"],
                         disable_plugins=["no_such_plugin_module_xyz", broken_name])
    assert client.complete("still works", model="local/m").text == "echo: still works"


def test_duplicate_provider_kind_is_an_error(make_client) -> None:
    class Dup:
        @hookimpl
        def modelwire_register_providers(self, register: Any) -> None:
            register("openai", modelwire.Provider)

    with pytest.raises(PluginError, match="'openai' registered twice"):
        make_client(plugins=[Dup()])


def test_disable_plugins_blocks_a_builtin(make_client, server: FakeServer) -> None:
    client = make_client(disable_plugins=["modelwire.plugins.logging"])
    with capture_events() as logs:
        client.complete("x", model="local/m")
    assert logs == []
    assert client.registry.pm.is_blocked("modelwire.plugins.logging")


def test_one_log_event_per_attempt(make_client, server: FakeServer) -> None:
    from modelwire.testing import Reply

    client = make_client()
    with capture_events() as logs:
        client.complete("x", model="local/m")
        server.script(Reply.error(500))
        with pytest.raises(modelwire.ServerError):
            client.complete("y", model="local/m")
        list(client.stream("z", model="local/m"))
    assert [e["event"] for e in logs] == ["llm.response", "llm.attempt_failed", "llm.response"]
    ok, failed, streamed = logs
    assert ok["provider"] == "local" and ok["model"] == "m" and ok["attempt"] == 1 and ok["status"] == 200
    assert ok["latency_ms"] > 0 and ok["cached"] is False
    assert failed["status"] == 500 and failed["error_class"] == "ServerError" and failed["log_level"] == "warning"
    assert streamed["stream"] is True and streamed["completion_tokens"] is not None


def test_raising_observer_does_not_fail_the_call(make_client, server: FakeServer) -> None:
    class Bad:
        @hookimpl
        def modelwire_response_received(self) -> None:
            raise ValueError("observer bug")

        @hookimpl
        def modelwire_stream_chunk(self) -> None:
            raise ValueError("chunk observer bug")

    client = make_client(plugins=[Bad()])
    with capture_events() as logs:
        assert client.complete("x", model="local/m").text == "echo: x"
        assert "".join(c.text for c in client.stream("y", model="local/m")) == "echo: y"
    assert any(e["event"] == "observer_failed" for e in logs)


def test_prepare_hook_can_refuse_and_modify(make_client, server: FakeServer) -> None:
    class Guard:
        @hookimpl
        def modelwire_request_prepare(self, request: Request) -> None:
            if "forbidden" in request.messages[-1]["content"]:
                raise modelwire.RequestValidationError("forbidden word")
            request.params.setdefault("max_tokens", 5)

    client = make_client(plugins=[Guard()])
    with pytest.raises(modelwire.RequestValidationError):
        client.complete("a forbidden thing", model="local/m")
    client.complete("fine", model="local/m")
    assert server.calls() == 1 and server.requests[0].json["max_tokens"] == 5


def test_raw_exception_from_a_plugin_is_wrapped(make_client, server: FakeServer) -> None:
    class Buggy(Middleware):
        applies_to = ("whole",)

        async def ahandle(self, request: Request, call_next: Any) -> Completion:
            raise KeyError("oops")

    class Plugin:
        @hookimpl
        def modelwire_register_middleware(self, register: Any) -> None:
            register("buggy", Buggy)

    with pytest.raises(modelwire.ModelwireError, match="unexpected KeyError"):
        make_client(plugins=[Plugin()], middleware=["buggy"]).complete("x", model="local/m")
