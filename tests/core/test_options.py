"""Per-call ``options`` are checked the same way for every middleware, before any network call."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

import modelwire
from modelwire import Middleware, Request, hookimpl
from modelwire.registry import build_registry
from modelwire.testing import FakeServer, Reply

ALL = ["cache", "fallback", "circuit", "retry", "ratelimit"]

BAD = [
    ({"retry": "x"}, r"options\.retry must be a dict of retry options \(max_attempts, deadline\), got str"),
    ({"retry": {"max_atempts": 1}}, r"unknown option 'options\.retry\.max_atempts' \(allowed here: deadline, max_"),
    ({"retry": {"max_attempts": "3"}}, r"option 'options\.retry\.max_attempts': Input should be a valid integer"),
    ({"retry": {"max_attempts": 0}}, r"option 'options\.retry\.max_attempts'"),
    ({"retry": {"deadline": True}}, r"option 'options\.retry\.deadline'"),
    ({"ratelimit": {"max_wait": "soon"}}, r"option 'options\.ratelimit\.max_wait'"),
    ({"ratelimit": {"max_wait": -1}}, r"option 'options\.ratelimit\.max_wait'"),
    ({"ratelimit": {"wait": 1}}, r"unknown option 'options\.ratelimit\.wait' \(allowed here: max_wait\)"),
    ({"cache": {"ttl": "long"}}, r"options\.cache\.ttl"),
    ({"cache": {"bypas": True}}, r"unknown option 'options\.cache\.bypas'"),
    ({"cache": ["bypass"]}, r"options\.cache must be a dict of cache options"),
    ({"stream": {"idle_timeout": -1}}, r"options\.stream\.idle_timeout"),
    ({"stream": {"idel_timeout": 1}}, r"options\.stream\.idel_timeout"),
    ({"stream": 5}, r"options\.stream must be a dict"),
    ({"fallback": {"targets": []}}, r"options\.fallback: middleware 'fallback' takes no per-call options"),
    ({"circuit": {}}, r"options\.circuit: middleware 'circuit' takes no per-call options"),
    ({"retyr": {}}, r"options\.retyr: no middleware is registered as 'retyr' \(did you mean 'retry'\?\)"),
    ("retry", r"options must be a dict keyed by middleware name, got str"),
]


@pytest.mark.parametrize(("options", "message"), BAD, ids=[str(o) for o, _ in BAD])
def test_bad_options_fail_before_the_network(make_client, server: FakeServer, options: Any, message: str) -> None:
    client = make_client(middleware=ALL)
    with pytest.raises(modelwire.RequestValidationError, match=message):
        client.complete("x", model="local/m", options=options)
    with pytest.raises(modelwire.RequestValidationError, match=message):
        client.stream("x", model="local/m", options=options)
    assert server.calls() == 0


def test_every_builtin_declares_its_options_model() -> None:
    reg = build_registry()
    with_options = {name for name, cls in reg.middleware.items() if cls.Options is not None}
    assert with_options == {"cache", "retry", "ratelimit", "budget"}
    for name in with_options:
        assert issubclass(reg.middleware[name].Options, BaseModel), name


def test_good_options_apply(make_client, server: FakeServer) -> None:
    client = make_client(middleware=ALL, retry={"base_delay": 0.01, "max_delay": 0.01})
    server.script(Reply.error(500), Reply.error(500))
    with pytest.raises(modelwire.ServerError):
        client.complete("x", model="local/m", options={"retry": {"max_attempts": 1}, "cache": {"bypass": True}})
    assert server.calls() == 1
    options = {"ratelimit": {"max_wait": 2}, "stream": {"idle_timeout": 5}, "cache": {"ttl": 0}}
    assert "".join(c.text for c in client.stream("y", model="local/m", options=options)) == "echo: y"


def test_options_of_a_registered_but_disabled_middleware_are_checked(make_client, server: FakeServer) -> None:
    """Code may pass cache options to a client whose config leaves the cache off; they are
    still validated (a typo is a typo), and accepted when right."""
    client = make_client(middleware=[])
    assert client.complete("x", model="local/m", options={"cache": {"bypass": True}}).text == "echo: x"
    with pytest.raises(modelwire.RequestValidationError, match=r"options\.cache\.ttl"):
        client.complete("x", model="local/m", options={"cache": {"ttl": -5}})
    assert server.calls() == 1


def test_a_plugin_options_model_is_validated_strictly(make_client, server: FakeServer) -> None:
    class TagOptions(BaseModel):  # the author forgot extra="forbid"
        tag: str = "none"

    seen: list[Any] = []

    class Tagger(Middleware):
        Options = TagOptions

        async def on_request(self, request: Request) -> Request:
            seen.append(request.option("tagger", "tag"))
            return request

    class Plugin:
        @hookimpl
        def modelwire_register_middleware(self, register: Any) -> None:
            register("tagger", Tagger)

    client = make_client(plugins=[Plugin()], middleware=["tagger"])
    client.complete("x", model="local/m", options={"tagger": {"tag": "a"}})
    assert seen == ["a"]
    unknown = r"unknown option 'options\.tagger\.tagg' \(allowed here: tag\)"
    with pytest.raises(modelwire.RequestValidationError, match=unknown):
        client.complete("x", model="local/m", options={"tagger": {"tagg": "typo"}})
    with pytest.raises(modelwire.RequestValidationError, match=r"option 'options\.tagger\.tag'"):
        client.complete("x", model="local/m", options={"tagger": {"tag": 5}})
    assert server.calls() == 1
