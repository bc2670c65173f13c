"""No middleware is skipped silently on streams: the request-only hook applies on both paths,
a middleware that covers one path only fails Client construction unless it says so."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest

import modelwire
from modelwire import Chunk, Completion, Middleware, Request, hookimpl
from modelwire.middleware import PATHS, check_paths
from modelwire.registry import build_registry
from modelwire.testing import FakeServer, Reply

EMAIL = re.compile(r"[\w.+-]+@[\w-]+\.[\w.]+")
SECRET_TEXT = "mail jane.doe@example.com please"


class Redact(Middleware):
    """The request-only form: one method, both paths."""

    async def on_request(self, request: Request) -> Request:
        masked = [
            {**m, "content": EMAIL.sub("[email]", m["content"])} if isinstance(m.get("content"), str) else m
            for m in request.messages
        ]
        return request.replace(messages=masked)


class WholeOnlyRedact(Middleware):
    """The mistake the issue found: redacts whole requests, streams skipped."""

    async def ahandle(self, request: Request, call_next: Any) -> Completion:
        masked = [{**m, "content": EMAIL.sub("[email]", m["content"])} for m in request.messages]
        response: Completion = await call_next(request.replace(messages=masked))
        return response


def register(name: str, cls: type[Middleware]) -> object:
    class Plugin:
        @hookimpl
        def modelwire_register_middleware(self, register: Any) -> None:
            register(name, cls)

    return Plugin()


def sent_contents(server: FakeServer) -> list[str]:
    return [r.json["messages"][-1]["content"] for r in server.requests if r.route == "chat"]


def test_on_request_applies_to_whole_and_streamed_calls(make_client, server: FakeServer) -> None:
    client = make_client(plugins=[register("redact", Redact)], middleware=["redact", "retry"])
    assert client.complete(SECRET_TEXT, model="local/m").text == "echo: mail [email] please"
    assert "".join(c.text for c in client.stream(SECRET_TEXT, model="local/m")) == "echo: mail [email] please"

    async def both_async() -> None:
        await client.acomplete(SECRET_TEXT, model="local/m")
        async for _ in client.astream(SECRET_TEXT, model="local/m"):
            pass

    asyncio.run(both_async())
    sent = sent_contents(server)
    assert sent == ["mail [email] please"] * 4
    assert not any("example.com" in r.body.decode() for r in server.requests)


def test_whole_only_middleware_fails_construction(make_client, server: FakeServer) -> None:
    with pytest.raises(modelwire.ConfigurationError) as err:
        make_client(plugins=[register("redact", WholeOnlyRedact)], middleware=["redact"])
    message = str(err.value)
    assert "'redact'" in message and "WholeOnlyRedact" in message
    assert "not ahandle_stream" in message and "on_request" in message and "applies_to" in message
    assert server.calls() == 0


def test_stream_only_middleware_fails_construction(make_client) -> None:
    class StreamOnly(Middleware):
        async def ahandle_stream(self, request: Request, call_next: Any) -> AsyncIterator[Chunk]:
            async for chunk in call_next(request):
                yield chunk

    with pytest.raises(modelwire.ConfigurationError, match=r"'tap'.*not ahandle \(or handle\): whole requests"):
        make_client(plugins=[register("tap", StreamOnly)], middleware=["tap"])


def test_sync_handle_without_stream_fails_too(make_client) -> None:
    class Blocking(Middleware):
        def handle(self, request: Request, call_next: Any) -> Completion:
            result: Completion = call_next(request)
            return result

    with pytest.raises(modelwire.ConfigurationError, match="'blocking'.*not ahandle_stream"):
        make_client(plugins=[register("blocking", Blocking)], middleware=["blocking"])


def test_declared_whole_only_passes_streams_through(make_client, server: FakeServer) -> None:
    class Declared(WholeOnlyRedact):
        applies_to = ("whole",)

    client = make_client(plugins=[register("redact", Declared)], middleware=["redact"])
    client.complete(SECRET_TEXT, model="local/m")
    list(client.stream(SECRET_TEXT, model="local/m"))
    assert sent_contents(server) == ["mail [email] please", SECRET_TEXT]  # by declaration, not by accident


def test_bad_applies_to_is_refused(make_client) -> None:
    class Wrong(Redact):
        applies_to = ("streams",)

    with pytest.raises(modelwire.ConfigurationError, match="'wrong'.*applies_to must name"):
        make_client(plugins=[register("wrong", Wrong)], middleware=["wrong"])


def test_registered_but_not_enabled_is_not_checked(make_client, server: FakeServer) -> None:
    client = make_client(plugins=[register("redact", WholeOnlyRedact)], middleware=[])
    assert client.complete("x", model="local/m").text == "echo: x"


def test_every_builtin_middleware_covers_both_paths() -> None:
    reg = build_registry()
    assert {"cache", "retry", "ratelimit", "fallback", "circuit"} <= set(reg.middleware)
    for name, cls in reg.middleware.items():
        check_paths(name, cls, reg.origin[f"modelwire_register_middleware:{name}"])
        assert set(PATHS) <= set(cls.applies_to), name  # both chat paths (and "embeddings" where declared)
        assert cls.ahandle is not Middleware.ahandle and cls.ahandle_stream is not Middleware.ahandle_stream, name


def test_on_request_must_return_a_request(make_client, server: FakeServer) -> None:
    class Forgetful(Middleware):
        async def on_request(self, request: Request) -> Request:
            request.params["temperature"] = 0  # and forgets to return it
            return None  # type: ignore[return-value]

    client = make_client(plugins=[register("forgetful", Forgetful)], middleware=["forgetful"])
    with pytest.raises(modelwire.PluginError, match="'forgetful': on_request must return a Request, got NoneType"):
        client.complete("x", model="local/m")
    with pytest.raises(modelwire.PluginError, match="on_request must return a Request"):
        list(client.stream("x", model="local/m"))
    assert server.calls() == 0


def test_on_request_can_refuse_before_the_network(make_client, server: FakeServer) -> None:
    class Refuse(Middleware):
        async def on_request(self, request: Request) -> Request:
            raise modelwire.RequestValidationError("refused by policy")

    client = make_client(plugins=[register("refuse", Refuse)], middleware=["refuse"])
    with pytest.raises(modelwire.RequestValidationError, match="refused by policy"):
        client.complete("x", model="local/m")
    with pytest.raises(modelwire.RequestValidationError, match="refused by policy"):
        list(client.stream("x", model="local/m"))
    assert server.calls() == 0


def test_rewritten_request_keeps_attempt_and_state_for_observers(make_client, server: FakeServer) -> None:
    """A retry inside a rewriting middleware counts attempts on the new request; observers,
    which get the caller's request, see the same attempt number and the shared state."""
    seen: list[tuple[int, Any]] = []

    class Observer:
        @hookimpl
        def modelwire_response_received(self, request: Request) -> None:
            seen.append((request.attempt, request.state.get("log", {}).get("retry_delay")))

    client = make_client(
        plugins=[register("redact", Redact), Observer()],
        middleware=["redact", "retry"],
        retry={"base_delay": 0.01, "max_delay": 0.01},
    )
    server.script(Reply.error(500), Reply.completion("ok"))
    assert client.complete(SECRET_TEXT, model="local/m").text == "ok"
    assert seen[-1][0] == 2 and seen[-1][1] is not None
    server.script(Reply.error(500))
    assert "".join(c.text for c in client.stream(SECRET_TEXT, model="local/m")).startswith("echo: mail [email]")
    assert seen[-1][0] == 2
    assert sent_contents(server) == ["mail [email] please"] * 4


def test_request_replace_copies_what_it_should() -> None:
    original = Request("local", "m", [{"role": "user", "content": "a"}], {"temperature": 0}, options={"x": {}})
    original.attempt = 3
    new = original.replace(model="n")
    new.params["temperature"] = 1
    new.options["y"] = {}
    new.messages.append({"role": "user", "content": "b"})
    new.state["k"] = "v"
    assert original.params == {"temperature": 0} and original.options == {"x": {}}
    assert len(original.messages) == 1 and original.model == "m"
    assert new.attempt == 3 and original.state == {"k": "v"}
    with pytest.raises(TypeError, match="no field"):
        original.replace(mesages=[])
