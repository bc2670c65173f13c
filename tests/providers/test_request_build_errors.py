"""Issue 9 item 6: a request litellm cannot even build is the caller's mistake, not an outage.

litellm reports a failure while building the request (content parts like ``["hi"]``, ``[5]``,
``[None]``; ``logit_bias={1234: -100}``; ``response_format=5``) as a retryable
``APIConnectionError``, although nothing was sent. Such inputs are refused by validation before
any network call; whatever still slips through (here: a plugin that rewrites the request after
validation) is mapped to a non-retryable :class:`RequestValidationError` with
``request_sent=False``, which neither retry, the circuit breaker nor fallback counts.
"""

from __future__ import annotations

from typing import Any

import pytest

import modelwire
from modelwire.testing import FakeServer

BAD_PARTS: list[Any] = [["hi"], [5], [None]]


class Rewrite:
    """A plugin that changes the request after validation, so the bad value reaches litellm."""

    def __init__(self, content: Any = None, **params: Any) -> None:
        self.content = content
        self.params = params

    @modelwire.hookimpl
    def modelwire_request_prepare(self, request: modelwire.Request) -> None:
        if self.content is not None:
            request.messages = [{"role": "user", "content": self.content}]
        request.params.update(self.params)


def guarded(make_client: Any, plugin: Rewrite) -> modelwire.Client:
    client: modelwire.Client = make_client(
        plugins=(plugin,),
        middleware=["fallback", "circuit", "retry"],
        retry={"max_attempts": 3, "base_delay": 0},
        circuit={"failure_threshold": 2},
        fallback={"chains": {"openai/gpt-4o": ["local/backup"]}},
    )
    return client


@pytest.mark.parametrize(
    "rewrite",
    [*({"content": parts} for parts in BAD_PARTS), {"logit_bias": {1234: -100}}, {"response_format": 5}],
    ids=["parts-str", "parts-int", "parts-none", "logit-bias-int-keys", "response-format-int"],
)
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
async def test_build_failure_is_a_validation_error_nobody_counts(
    make_client: Any, server: FakeServer, rewrite: dict[str, Any], stream: bool, transport: str
) -> None:
    plugin = Rewrite(**rewrite)
    client = guarded(make_client, plugin)
    if transport == "direct" and "logit_bias" in rewrite:
        # JSON carries token ids as strings anyway: the direct route sends what validation would
        await client.acomplete("hello", model="openai/gpt-4o")
        assert server.requests[0].json["logit_bias"] == {"1234": -100}
        return
    for _ in range(4):  # more than the circuit's failure_threshold
        with pytest.raises(modelwire.RequestValidationError) as info:
            if stream:
                async for _chunk in client.astream("hello", model="openai/gpt-4o"):
                    pass
            else:
                await client.acomplete("hello", model="openai/gpt-4o")
        error = info.value
        assert not isinstance(error, modelwire.ProviderError)
        assert not error.retryable and error.request_sent is False
        assert "could not be built, nothing was sent" in error.message
        assert error.tried == ()  # fallback did not move on
    assert server.calls() == 0  # no attempt reached the server, none went to the fallback target
    # the circuit stayed closed: a good request from the same client goes through
    plugin.content, plugin.params = None, {}
    assert (await client.acomplete("fine", model="openai/gpt-4o")).text == "echo: fine"
    assert server.calls() == 1


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (["hi"], "messages[0].content[0] must be a dict"),
        ([5], "messages[0].content[0] must be a dict"),
        ([None], "messages[0].content[0] must be a dict"),
        ([{"text": "x"}], "messages[0].content[0] has no 'type'"),
        ([{"type": "text"}], "messages[0].content[0] is a 'text' part without 'text'"),
        ([{"type": "text", "text": 5}], "messages[0].content[0].text must be a string"),
        ([{"type": "image_url"}], "without 'image_url'"),
        ([], "messages[0].content is an empty list of parts"),
        ([{"type": "text", "text": "  "}], "messages[0].content (user) has only blank text parts"),
    ],
)
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_content_parts_are_validated_before_the_network(
    make_client: Any, server: FakeServer, content: Any, says: str, stream: bool
) -> None:
    client = guarded(make_client, Rewrite())
    messages = [{"role": "user", "content": content}]
    with pytest.raises(modelwire.RequestValidationError) as info:
        if stream:
            client.stream(messages, model="openai/gpt-4o")
        else:
            client.complete(messages, model="openai/gpt-4o")
    assert says in str(info.value)
    assert server.calls() == 0


def test_good_content_parts_pass(make_client: Any, server: FakeServer) -> None:
    image = {"url": "data:image/png;base64,AA=="}
    parts = [{"type": "text", "text": "look"}, {"type": "image_url", "image_url": image}]
    client = make_client()
    assert client.complete([{"role": "user", "content": parts}], model="local/m").text.startswith("echo: ")
    assert server.requests[0].json["messages"][0]["content"] == parts


def test_logit_bias_int_keys_are_sent_as_token_id_strings(make_client: Any, server: FakeServer) -> None:
    make_client().complete("hi", model="local/m", logit_bias={1234: -100, "42": 5})
    assert server.requests[0].json["logit_bias"] == {"1234": -100, "42": 5}
