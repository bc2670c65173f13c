"""Bad input gets a typed error naming what was wrong, before any network call (B01-B03, B05,
B06, B08): the server must see zero requests."""

from __future__ import annotations

import math

import pytest

import modelwire
from modelwire.errors import (
    MissingAPIKeyError,
    PayloadTooLargeError,
    RequestValidationError,
    UnknownProviderError,
)
from modelwire.testing import FakeServer


@pytest.mark.parametrize(
    ("messages", "fragment"),
    [
        ({"role": "user"}, "prompt string or a list"),
        ([], "empty list"),
        ("", "empty string"),
        ([{"content": "x"}], "messages[0] has no 'role'"),
        ([{"role": "wizard", "content": "x"}], "messages[0].role 'wizard'"),
        ([{"role": "user", "content": None}], "messages[0] (user) has no content"),
        ([{"role": "user", "content": 5}], "messages[0].content must be"),
        ([{"role": "user", "content": "a"}, {"role": "tool", "content": "r"}], "without a 'tool_call_id'"),
        ([{"role": "user", "content": "x", "extra": object()}], "messages[0] is not JSON-serialisable"),
        ([{"role": "user", "content": "bad \ud800 surrogate"}], "messages[0] contains invalid Unicode"),
        (["just a string"], "messages[0] must be a dict"),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
def test_malformed_messages(make_client, server: FakeServer, messages: object, fragment: str, stream: bool) -> None:
    client = make_client()
    with pytest.raises(RequestValidationError) as info:
        if stream:
            client.stream(messages, model="local/m")
        else:
            client.complete(messages, model="local/m")
    assert fragment in str(info.value)
    assert server.calls() == 0


def _circular() -> list[dict[str, object]]:
    message: dict[str, object] = {"role": "user", "content": "x"}
    message["me"] = message
    return [message]


def _deep() -> list[dict[str, object]]:
    nested: list[object] = []
    inner = nested
    for _ in range(100_000):
        inner.append([])
        inner = inner[0]  # type: ignore[assignment]
    return [{"role": "user", "content": "x", "deep": nested}]


@pytest.mark.parametrize(
    ("messages", "fragment"),
    [(_circular(), "messages[0] contains itself (a circular reference)"),
     (_deep(), "messages[0] is nested too deeply for JSON")],
    ids=["circular", "too-deep"],
)
def test_structures_json_cannot_carry(make_client, server: FakeServer, messages: object, fragment: str) -> None:
    with pytest.raises(RequestValidationError) as info:
        make_client().complete(messages, model="local/m")
    assert fragment in str(info.value)
    assert server.calls() == 0


def test_nan_parameter(make_client, server: FakeServer) -> None:
    with pytest.raises(RequestValidationError, match="temperature contains NaN"):
        make_client().complete("hi", model="local/m", temperature=math.nan)
    assert server.calls() == 0


def test_options_must_be_a_dict(make_client, server: FakeServer) -> None:
    with pytest.raises(RequestValidationError, match="options must be a dict"):
        make_client().complete("hi", model="local/m", options=["cache"])


async def test_async_paths_validate_too(make_client, server: FakeServer) -> None:
    client = make_client()
    with pytest.raises(RequestValidationError):
        await client.acomplete([], model="local/m")
    with pytest.raises(RequestValidationError):
        client.astream([], model="local/m")
    assert server.calls() == 0


def test_missing_api_key_names_the_variable(make_client, server: FakeServer, monkeypatch) -> None:
    client = make_client()
    monkeypatch.delenv("OPENAI_API_KEY")
    with pytest.raises(MissingAPIKeyError, match="OPENAI_API_KEY"):
        client.complete("hi", model="openai/gpt-4o")
    with pytest.raises(MissingAPIKeyError, match="MY_AZURE_KEY"):
        make_client(
            providers={"azure": {"api_base": server.url, "api_version": "v", "api_key_env": "MY_AZURE_KEY"}}
        ).complete("hi", model="azure/d")
    monkeypatch.setenv("OPENAI_API_KEY", "")
    with pytest.raises(MissingAPIKeyError):
        client.stream("hi", model="openai/gpt-4o")
    assert server.calls() == 0


def test_unknown_provider_and_bad_model(make_client, server: FakeServer) -> None:
    client = make_client()
    with pytest.raises(UnknownProviderError, match="unknown provider 'foo'"):
        client.complete("hi", model="foo/bar")
    with pytest.raises(UnknownProviderError, match="'provider/model'"):
        client.complete("hi", model="gpt-4o")
    with pytest.raises(UnknownProviderError, match="'provider/model'"):
        client.complete("hi", model="local/")
    with pytest.raises(RequestValidationError, match="no model given"):
        client.complete("hi")
    assert server.calls() == 0


def test_registered_kind_used_without_config(server: FakeServer, monkeypatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-x")
    client = modelwire.Client(config={})
    assert client.provider("openai").name == "openai"  # defaults: api.openai.com (no call made)
    with pytest.raises(modelwire.ConfigurationError, match="providers.azure.api_base"):
        client.complete("hi", model="azure/dep")  # Azure cannot work without an endpoint
    assert server.calls() == 0


def test_huge_payload_refused_before_network(make_client, server: FakeServer) -> None:
    with pytest.raises(PayloadTooLargeError, match="max_request_bytes"):
        make_client().complete("x" * (10 * 1024 * 1024), model="local/m")
    with pytest.raises(PayloadTooLargeError):
        make_client(max_request_bytes=1000).complete("y" * 2000, model="local/m")
    assert server.calls() == 0


# -- issue 9, P2: bad input that used to reach the server ------------------------------------------


@pytest.mark.parametrize(
    ("messages", "fragment"),
    [
        ("   \n\t", "the prompt is blank"),
        ([{"role": "user", "content": ""}], "messages[0].content (user) is an empty string"),
        ([{"role": "user", "content": "  "}], "messages[0].content (user) is blank"),
        ([{"role": "system", "content": "s"}, {"role": "user", "content": "\n"}],
         "messages[1].content (user) is blank"),
    ],
)
def test_blank_prompts_and_empty_content(make_client, server: FakeServer, messages: object, fragment: str) -> None:
    with pytest.raises(RequestValidationError) as info:
        make_client().complete(messages, model="local/m")
    assert fragment in str(info.value)
    assert server.calls() == 0


def test_empty_assistant_and_tool_turns_are_allowed(make_client, server: FakeServer) -> None:
    messages = [
        {"role": "user", "content": "call it"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": ""},
        {"role": "user", "content": "and now?"},
    ]
    assert make_client().complete(messages, model="local/m").text == "echo: and now?"


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({"max_tokens": -1}, "'max_tokens' must be >= 1"),
        ({"max_tokens": 0}, "'max_tokens' must be >= 1"),
        ({"max_tokens": "100"}, "'max_tokens' must be an integer, got str"),
        ({"max_completion_tokens": 2.5}, "'max_completion_tokens' must be an integer"),
        ({"temperature": "hot"}, "'temperature' must be a number, got str"),
        ({"temperature": True}, "'temperature' must be a number, got bool"),
        ({"temperature": -0.5}, "'temperature' must be >= 0"),
        ({"top_p": "1"}, "'top_p' must be a number"),
        ({"top_p": 1.5}, "'top_p' must be between 0 and 1"),
        ({"n": 0}, "'n' must be >= 1"),
        ({"n": "2"}, "'n' must be an integer"),
        ({"seed": 1.5}, "'seed' must be an integer"),
        ({"presence_penalty": "high"}, "'presence_penalty' must be a number"),
        ({"frequency_penalty": [1]}, "'frequency_penalty' must be a number"),
        ({"stop": 5}, "'stop' must be a string or a list of strings"),
        ({"stop": ["a", 5]}, "'stop' must be a string or a list of strings"),
        ({"logit_bias": {"hello": 1}}, "'logit_bias' key 'hello' is not a token id"),
        ({"logit_bias": {"12": "x"}}, "'logit_bias' value for token '12' must be a number"),
        ({"logit_bias": [1, 2]}, "'logit_bias' must be a dict"),
        ({"extra_headers": {"x-n": 5}}, "'extra_headers' must be a dict of strings"),
    ],
)
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_wrongly_typed_parameters(make_client, server: FakeServer, params: dict, fragment: str, stream: bool) -> None:
    # llama.cpp answered temperature="hot" with a 500, which was then retried as a server error
    client = make_client(middleware=["retry"], retry={"base_delay": 0})
    with pytest.raises(RequestValidationError) as info:
        if stream:
            client.stream("hi", model="local/m", **params)
        else:
            client.complete("hi", model="local/m", **params)
    assert fragment in str(info.value)
    assert server.calls() == 0


def test_good_parameters_pass(make_client, server: FakeServer) -> None:
    make_client().complete("hi", model="local/m", temperature=1, top_p=0.5, n=1, max_tokens=5, seed=7,
                           presence_penalty=-1.5, frequency_penalty=0.0, stop=["\n"], logit_bias={"50256": -100})
    assert server.requests[0].json["temperature"] == 1 and server.requests[0].json["stop"] == ["\n"]


@pytest.mark.parametrize("api_base", ["127.0.0.1:8000/v1", "ftp://host/v1", "http://", "localhost", "http://a b/v1"])
def test_api_base_must_be_an_http_url_at_construction(make_client, server: FakeServer, api_base: str) -> None:
    with pytest.raises(modelwire.ConfigurationError) as info:
        make_client(providers={"local": {"kind": "openai_compatible", "api_base": api_base}})
    assert "providers.local.api_base" in str(info.value) and "http://" in str(info.value)
    assert server.calls() == 0
