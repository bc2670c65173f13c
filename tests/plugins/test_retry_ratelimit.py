"""Row R09: retry and the rate limiter together. ``ratelimit`` sits inside ``retry``, so every attempt
takes its own permit and retries can never push the upstream rate above the limit."""

from __future__ import annotations

from typing import Any

from modelwire.testing import FakeServer, Reply


async def test_r09_every_attempt_takes_a_limiter_permit(make_client: Any, server: FakeServer) -> None:
    import asyncio

    client = make_client(
        middleware=["retry", "ratelimit"],
        retry={"max_attempts": 3, "base_delay": 0.01, "max_delay": 0.02},
        ratelimit={"limits": [{"match": "openai/*", "rps": 4, "smooth": True}], "default_cooldown": 0},
    )
    await client.acomplete("warm-up", model="local/warm")  # not limited: imports litellm before timing starts
    server.reset()
    limited = Reply.error(429, "Rate limit reached for requests", type="requests", headers={"retry-after-ms": "1"})
    server.script(*[limited] * 8)
    results = await asyncio.gather(*[client.acomplete(f"c{i}", model="openai/gpt-4o") for i in range(4)])
    assert len(results) == 4
    times = sorted(r.time for r in server.requests if r.route == "chat")
    assert len(times) == 12  # 4 callers x (2 rate-limited attempts + 1 success): retries were not skipped
    # the limiter's oracle: no 1-second window holds more than the allowed 4 (+1 for window edges)
    busiest = max(sum(1 for t in times if start <= t < start + 1.0) for start in times)
    assert busiest <= 5
    assert times[-1] - times[0] >= 1.5  # 12 calls at 4/s cannot all fit in a burst


# -- attempt_timeout is the provider's time, not the queue's (issue 9, P2) ----------------------------


async def test_attempt_timeout_does_not_count_time_queued_in_the_limiter(make_client: Any, server: FakeServer) -> None:
    """Eight callers behind a concurrency of 1, each answer 0.6 s: the last ones queue over 4 s,
    longer than attempt_timeout (2.5 s, which leaves a loaded machine time for each round trip);
    they must still be sent (once each) and succeed."""
    import asyncio

    import modelwire

    client = make_client(
        middleware=["retry", "ratelimit"],
        retry={"max_attempts": 1, "attempt_timeout": 2.5},
        ratelimit={"limits": [{"match": "openai/*", "concurrency": 1}]},
    )
    await make_client().acomplete("warm-up", model="local/warm")  # imports litellm before the clock runs
    server.reset()
    server.script(*[Reply(body=Reply.completion("slow").body, delay=0.6) for _ in range(8)])
    results = await asyncio.gather(*[client.acomplete(f"c{i}", model="openai/gpt-4o") for i in range(8)],
                                   return_exceptions=True)
    assert all(isinstance(r, modelwire.Completion) for r in results), results
    prompts = sorted(r.json["messages"][-1]["content"] for r in server.requests if r.route == "chat")
    assert prompts == [f"c{i}" for i in range(8)]  # each sent exactly once
    assert client.middleware[1].describe()["waits"] >= 3  # the later callers did queue


async def test_attempt_timeout_still_bounds_the_provider_after_admission(make_client: Any, server: FakeServer) -> None:
    import asyncio

    from modelwire.errors import ProviderTimeoutError

    client = make_client(
        middleware=["retry", "ratelimit"],
        retry={"max_attempts": 1, "attempt_timeout": 2.0},  # 2 s: room for the second's round trip
        ratelimit={"limits": [{"match": "openai/*", "concurrency": 1}]},
    )
    await make_client().acomplete("warm-up", model="local/warm")
    server.reset()
    server.script(Reply(body=Reply.completion("late").body, delay=10.0))
    first = asyncio.ensure_future(client.acomplete("stalls", model="openai/gpt-4o"))
    await asyncio.sleep(0.1)
    second = await client.acomplete("queued behind it", model="openai/gpt-4o")  # admitted once the first gives up
    assert second.text == "echo: queued behind it"
    try:
        await first
    except ProviderTimeoutError as err:
        assert "attempt_timeout" in str(err)
    else:
        raise AssertionError("the stalled attempt was not timed out")


async def test_the_total_deadline_still_counts_time_queued(make_client: Any, server: FakeServer) -> None:
    import asyncio

    import pytest

    from modelwire.errors import ProviderTimeoutError

    client = make_client(
        middleware=["retry", "ratelimit"],
        retry={"max_attempts": 3, "attempt_timeout": 5.0, "deadline": 0.8},
        ratelimit={"limits": [{"match": "openai/*", "concurrency": 1}]},
    )
    await make_client().acomplete("warm-up", model="local/warm")
    server.reset()
    server.script(Reply(body=Reply.completion("slow").body, delay=2.5))
    first = asyncio.ensure_future(client.acomplete("holds the slot", model="openai/gpt-4o",
                                                   options={"retry": {"deadline": 30}}))
    await asyncio.sleep(0.1)
    with pytest.raises(ProviderTimeoutError, match="deadline") as info:
        await client.acomplete("queued past the deadline", model="openai/gpt-4o")
    assert info.value.retryable is False
    assert (await first).text == "slow"
    prompts = [r.json["messages"][-1]["content"] for r in server.requests if r.route == "chat"]
    assert prompts == ["holds the slot"]  # the queued caller was never sent
