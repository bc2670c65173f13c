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
