"""Usage details and cost (issue 12): real HTTP to the loopback server, litellm's bundled map."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import modelwire
from modelwire.testing import FakeServer, Reply, capture_events

DETAILED = {
    "prompt_tokens": 1000,
    "completion_tokens": 200,
    "total_tokens": 1200,
    "prompt_tokens_details": {"cached_tokens": 400},
    "completion_tokens_details": {"reasoning_tokens": 50},
}


def litellm_rates(model: str) -> tuple[float, float, float]:
    """(input, output, cached input) USD per token from litellm's bundled map, read here by hand."""
    import litellm

    entry = litellm.model_cost[model]
    return entry["input_cost_per_token"], entry["output_cost_per_token"], entry["cache_read_input_token_cost"]


def expected_cost(usage: dict[str, Any], model: str) -> float:
    inp, out, cached_rate = litellm_rates(model)
    cached = usage.get("prompt_tokens_details", {}).get("cached_tokens", 0)
    return (usage["prompt_tokens"] - cached) * inp + cached * cached_rate + usage["completion_tokens"] * out


# -- usage in full ---------------------------------------------------------------------------------


async def test_usage_details_from_a_whole_answer(make_client: Callable[..., modelwire.Client],
                                                 server: FakeServer) -> None:
    server.script(Reply.completion("hi", usage=DETAILED), Reply.completion("plain"))
    client = make_client()
    with capture_events() as logs:
        detailed = await client.acomplete("a", model="openai/gpt-4o-mini")
        plain = await client.acomplete("b", model="openai/gpt-4o-mini")
    assert detailed.usage is not None and plain.usage is not None
    assert (detailed.usage.cached_prompt_tokens, detailed.usage.reasoning_tokens) == (400, 50)
    assert (plain.usage.cached_prompt_tokens, plain.usage.reasoning_tokens) == (None, None)  # not said: None
    events = [e for e in logs if e["event"] == "llm.response"]
    assert [(e["cached_prompt_tokens"], e["reasoning_tokens"]) for e in events] == [(400, 50), (None, None)]


async def test_usage_details_from_a_stream(make_client: Callable[..., modelwire.Client], server: FakeServer) -> None:
    server.script(Reply.stream(["Hel", "lo"], usage=DETAILED), Reply.stream(["x"], usage=True))
    client = make_client()
    with capture_events() as logs:
        async with client.astream("a", model="openai/gpt-4o-mini") as stream:
            assert "".join([c.text async for c in stream]) == "Hello"
        async with client.astream("b", model="openai/gpt-4o-mini") as plain:
            [c async for c in plain]
    usage = stream.get_final_completion().usage
    assert usage is not None and (usage.cached_prompt_tokens, usage.reasoning_tokens) == (400, 50)
    assert plain.usage is not None and plain.usage.cached_prompt_tokens is None and plain.usage.reasoning_tokens is None
    events = [e for e in logs if e["event"] == "llm.response"]
    assert [(e["cached_prompt_tokens"], e["reasoning_tokens"]) for e in events] == [(400, 50), (None, None)]


@pytest.mark.parametrize("stream", [False, True])
async def test_cache_hit_returns_the_usage_details(make_client: Callable[..., modelwire.Client],
                                                   server: FakeServer, stream: bool) -> None:
    reply = Reply.stream(["a", "b"], usage=DETAILED) if stream else Reply.completion("ab", usage=DETAILED)
    server.script(reply)
    client = make_client(middleware=["cache"], cache={"backend": "memory"})
    for _ in range(2):
        if stream:
            async with client.astream("same", model="openai/gpt-4o-mini") as s:
                [c async for c in s]
            response = s.get_final_completion()
        else:
            response = await client.acomplete("same", model="openai/gpt-4o-mini")
    assert response.cached and server.calls() == 1
    assert response.usage is not None
    assert (response.usage.cached_prompt_tokens, response.usage.reasoning_tokens) == (400, 50)


# -- cost -----------------------------------------------------------------------------------------------


async def test_cost_of_a_known_model_from_litellms_map(make_client: Callable[..., modelwire.Client],
                                                       server: FakeServer) -> None:
    server.script(Reply.completion("hi", usage=DETAILED), Reply.completion("hi", usage={**DETAILED,
                  "prompt_tokens_details": None}))
    client = make_client()
    with capture_events() as logs:
        response = await client.acomplete("a", model="openai/gpt-4o-mini")
        uncached = await client.acomplete("b", model="openai/gpt-4o-mini")
    assert response.cost == pytest.approx(expected_cost(DETAILED, "gpt-4o-mini"), rel=1e-9)
    inp, out, cached_rate = litellm_rates("gpt-4o-mini")
    assert cached_rate < inp  # the cached tokens made it cheaper than pricing them all as input
    assert response.cost < 1000 * inp + 200 * out
    assert uncached.cost == pytest.approx(1000 * inp + 200 * out, rel=1e-9)
    costs = [e["cost"] for e in logs if e["event"] == "llm.response"]
    assert costs == [response.cost, uncached.cost]


async def test_stream_end_carries_the_cost(make_client: Callable[..., modelwire.Client], server: FakeServer) -> None:
    server.script(Reply.stream(["a", "b"], usage=DETAILED))
    client = make_client()
    async with client.astream("a", model="openai/gpt-4o-mini") as stream:
        [c async for c in stream]
    assert stream.get_final_completion().cost == pytest.approx(expected_cost(DETAILED, "gpt-4o-mini"), rel=1e-9)


async def test_configured_price_for_a_local_model(make_client: Callable[..., modelwire.Client],
                                                  server: FakeServer) -> None:
    server.script(Reply.completion("hi", usage=DETAILED), Reply.completion("hi", usage=DETAILED))
    client = make_client(prices={"local/llama3": {"input": 2.0, "output": 8.0, "cached_input": 0.5},
                                 "local/*": {"input": 0.0, "output": 0.0}})
    priced = await client.acomplete("a", model="local/llama3")
    free = await client.acomplete("b", model="local/other")
    assert priced.cost == pytest.approx((600 * 2.0 + 400 * 0.5 + 200 * 8.0) / 1e6, rel=1e-9)
    assert free.cost == 0.0


async def test_unknown_price_is_none_and_local_servers_are_not_priced_as_openai(
    make_client: Callable[..., modelwire.Client], server: FakeServer
) -> None:
    server.script(Reply.completion("hi", usage=DETAILED), Reply.completion("hi", usage=DETAILED))
    client = make_client()
    assert (await client.acomplete("a", model="openai/no-such-model-xyz")).cost is None
    # an OpenAI-compatible server running a model named like OpenAI's is not billed by OpenAI
    assert (await client.acomplete("b", model="local/gpt-4o-mini")).cost is None


async def test_cache_hit_costs_nothing_and_reports_what_it_saved(make_client: Callable[..., modelwire.Client],
                                                                 server: FakeServer) -> None:
    server.script(Reply.completion("hi", usage=DETAILED))
    client = make_client(middleware=["cache"], cache={"backend": "memory"})
    with capture_events() as logs:
        first = await client.acomplete("same", model="openai/gpt-4o-mini")
        hit = await client.acomplete("same", model="openai/gpt-4o-mini")
    assert hit.cached and hit.cost == 0.0 and first.cost is not None and first.cost > 0
    events = [e for e in logs if e["event"] == "llm.response"]
    assert "saved_cost" not in events[0] and events[1]["saved_cost"] == pytest.approx(first.cost, rel=1e-9)
    assert client.stats()["total"]["cache"]["saved_cost"] == pytest.approx(first.cost, rel=1e-9)


@pytest.mark.parametrize(
    ("prices", "problem"),
    [
        ({"local/llama3": {"input": -1.0, "output": 0.0}}, "prices.local/llama3.input"),
        ({"local/llama3": {"input": 1.0}}, "prices.local/llama3.output"),
        ({"local/llama3": {"input": 1.0, "output": 1.0, "cache_input": 1.0}}, "prices.local/llama3.cache_input"),
    ],
)
def test_bad_price_config_fails_at_construction_naming_the_key(
    make_client: Callable[..., modelwire.Client], server: FakeServer, prices: dict[str, Any], problem: str
) -> None:
    with pytest.raises(modelwire.ConfigurationError) as info:
        make_client(prices=prices)
    assert problem in str(info.value)
    assert server.calls() == 0


def test_cost_map_is_read_without_importing_litellm(tmp_path: Path) -> None:
    """A cache hit in a process that never called a provider must not import litellm (it would
    block the event loop for seconds): the bundled JSON is read instead, with the same prices."""
    import subprocess
    import sys

    code = (
        "import sys, json\n"
        "from modelwire.plugins.cost import litellm_price\n"
        "p = litellm_price('openai', 'gpt-4o-mini')\n"
        "print(json.dumps([p.input, p.output, p.cached_input, 'litellm' in sys.modules]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    inp, outp, cached, imported = json.loads(out.stdout)
    assert (inp, outp, cached) == pytest.approx(litellm_rates("gpt-4o-mini"))
    assert imported is False
