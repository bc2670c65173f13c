"""The fault table behind model names (``local/fail-500``...), through the real client: each name
raises the error its description promises, for whole and streamed requests."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

import modelwire
from modelwire.testing import FakeServer
from modelwire.testing.faults import FAULTS

ERRORS: dict[str, type[modelwire.ModelwireError]] = {
    "fail-400": modelwire.BadRequestError,
    "fail-401": modelwire.AuthenticationError,
    "fail-403": modelwire.PermissionDeniedError,
    "fail-404": modelwire.NotFoundError,
    "fail-429": modelwire.RateLimitError,
    "quota": modelwire.QuotaExceededError,
    "fail-500": modelwire.ServerError,
    "fail-503": modelwire.ServiceUnavailableError,
    "context-window": modelwire.ContextWindowExceededError,
}


@pytest.mark.parametrize("name", sorted(ERRORS))
@pytest.mark.parametrize("target", ["local", "azure"])
async def test_error_faults(make_client: Callable[..., modelwire.Client], server: FakeServer, name: str,
                            target: str) -> None:
    assert name in FAULTS
    client = make_client()
    with pytest.raises(modelwire.ModelwireError) as whole:
        await client.acomplete("x", model=f"{target}/{name}")
    assert type(whole.value) is ERRORS[name]
    with pytest.raises(modelwire.ModelwireError) as streamed:
        async for _ in client.astream("x", model=f"{target}/{name}"):
            pass
    assert type(streamed.value) is ERRORS[name]
    assert server.calls() == 2  # no middleware, so no retry
    if name == "fail-429":
        assert whole.value.retry_after == 1.0


async def test_other_names_echo_and_flaky_alternates(make_client: Callable[..., modelwire.Client]) -> None:
    client = make_client()
    assert (await client.acomplete("hi", model="local/fail-5000")).text == "echo: hi"
    outcomes = []
    for _ in range(4):
        try:
            outcomes.append((await client.acomplete("hi", model="local/flaky")).text)
        except modelwire.ServerError:
            outcomes.append("500")
    assert outcomes == ["500", "echo: hi", "500", "echo: hi"]


async def test_answers_that_are_not_errors(make_client: Callable[..., modelwire.Client]) -> None:
    client = make_client()
    assert (await client.acomplete("x", model="local/length")).finish_reason == "length"
    call = (await client.acomplete("x", model="openai/tool-call")).tool_calls[0]
    assert call["function"]["name"] == "get_weather"
    async with client.astream("x", model="local/tool-call") as stream:
        chunks = [c async for c in stream]
    assert any(c.tool_calls for c in chunks)
    final = stream.get_final_completion()
    assert final.finish_reason == "tool_calls"
    assert json.loads(final.tool_calls[0]["function"]["arguments"]) == {"city": "Paris"}


async def test_stream_cut_and_stall(make_client: Callable[..., modelwire.Client], server: FakeServer) -> None:
    client = make_client()
    with pytest.raises(modelwire.StreamInterruptedError) as cut:
        async for _ in client.astream("x", model="local/stream-cut"):
            pass
    assert cut.value.partial_text.startswith("This answer")
    with pytest.raises(modelwire.ProviderConnectionError):
        await client.acomplete("x", model="local/stream-cut")
    with pytest.raises(modelwire.StreamIdleTimeoutError) as stalled:
        async for _ in client.astream("x", model="local/stall", options={"stream": {"idle_timeout": 0.3}}):
            pass
    assert stalled.value.partial_text == "This"
