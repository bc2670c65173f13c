"""retry, fallback and circuit inside the full recommended stack with cache and ratelimit."""

from __future__ import annotations

from typing import Any

import pytest

import modelwire
from modelwire.testing import FakeServer, Reply

STACK = ["cache", "fallback", "retry", "circuit", "ratelimit"]


@pytest.fixture
def client(make_client: Any) -> modelwire.Client:
    return make_client(
        middleware=STACK,
        cache={"backend": "memory"},
        retry={"max_attempts": 2, "base_delay": 0.01},
        circuit={"failure_threshold": 3},
        ratelimit={"limits": [{"match": "*", "rps": 100}]},
        fallback={"chains": {"openai/gpt-4o": ["local/llama"]}},
    )


async def test_retried_answer_is_cached_and_errors_are_not(client: modelwire.Client, server: FakeServer) -> None:
    server.script(Reply.error(500), Reply.completion("second try"))
    first = await client.acomplete("cache me", model="openai/gpt-4o")
    again = await client.acomplete("cache me", model="openai/gpt-4o")
    assert first.text == again.text == "second try" and again.cached
    assert server.calls() == 2
    server.script(Reply.error(400, "bad", type="invalid_request_error"), Reply.completion("fresh"))
    with pytest.raises(modelwire.BadRequestError):
        await client.acomplete("not cached", model="openai/gpt-4o")
    assert (await client.acomplete("not cached", model="openai/gpt-4o")).text == "fresh"
    assert server.calls() == 4


async def test_outage_falls_back_then_circuit_skips_the_dead_target(client: modelwire.Client,
                                                                    server: FakeServer) -> None:
    server.script(*[Reply.error(503)] * 100, match="gpt-4o")
    for i in range(4):
        response = await client.acomplete(f"q{i}", model="openai/gpt-4o")
        assert response.provider == "local"
    to_openai = sum(1 for r in server.requests if r.json["model"] == "gpt-4o")
    # 2 attempts for q0, then the 3rd failure opens the circuit during q1: later requests skip openai
    assert to_openai == 3
    circuits = next(m for m in client.middleware if type(m).__name__ == "CircuitMiddleware").describe()["circuits"]
    assert circuits["openai"]["state"] == "open" and circuits["local"]["state"] == "closed"
