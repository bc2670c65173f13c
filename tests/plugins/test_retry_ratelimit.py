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
