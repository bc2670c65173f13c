"""Provider feedback: a 429 pauses the bucket for every caller (L10), also across clients on a
shared backend; x-ratelimit-remaining-* = 0 pauses until the reset; smoothing keeps a server
with Azure-style short windows from answering 429 (L09)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest

import modelwire
from modelwire.errors import RateLimitError
from modelwire.testing import FakeServer, RedisServer, Reply
from tests.plugins.ratelimit.test_middleware import MODEL, burst, chat_times


@pytest.fixture(autouse=True)
def warm_litellm(make_client: Callable[..., modelwire.Client], server: FakeServer) -> None:
    """litellm's first call costs seconds; keep it out of the arrival timestamps."""
    make_client().complete("warm up", model="local/warmup")
    server.reset()


def _429(seconds: str) -> Reply:
    message = "Rate limit reached for requests"
    return Reply.error(429, message, type="rate_limit_error", headers={"retry-after": seconds})


async def test_L10_a_429_with_retry_after_pauses_every_caller(
    make_client: Callable[..., modelwire.Client], server: FakeServer
) -> None:
    client = make_client(middleware=["ratelimit"], ratelimit={"limits": [{"match": "openai/*", "rps": 100}]})
    server.script(_429("3"))
    with pytest.raises(RateLimitError):
        await client.acomplete("gets the 429", model=MODEL)
    rejected_at = server.requests[-1].time
    results = await burst(client, 4)
    assert all(isinstance(r, modelwire.Completion) for r in results), results
    later = chat_times(server)[1:]
    assert len(later) == 4 and min(later) - rejected_at >= 3.0 - 0.1
    assert client.middleware[0].describe()["cooldowns"] == 1


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_the_cooldown_is_shared_through_the_backend(
    make_client: Callable[..., modelwire.Client], server: FakeServer, tmp_path: Any, backend: str,
    redis_server: RedisServer,
) -> None:
    section: dict[str, Any] = {"backend": backend, "limits": [{"match": "openai/*", "rps": 100}]}
    if backend == "sqlite":
        section["path"] = str(tmp_path / "limits.sqlite")
    else:
        section.update(url=redis_server.url, key_prefix=f"cool-{time.time()}:")
    first, second = (make_client(middleware=["ratelimit"], ratelimit=section) for _ in range(2))
    server.script(_429("1.5"))
    with pytest.raises(RateLimitError):
        first.complete("429", model=MODEL)
    start = time.monotonic()
    second.complete("another client, same backend", model=MODEL)  # its own engine: only the store tells it
    assert time.monotonic() - start >= 1.2
    first.close()
    second.close()


@pytest.mark.parametrize("use_headers", [True, False])
def test_remaining_zero_pauses_until_the_reset(
    make_client: Callable[..., modelwire.Client], server: FakeServer, use_headers: bool
) -> None:
    client = make_client(middleware=["ratelimit"], ratelimit={
        "use_headers": use_headers, "limits": [{"match": "openai/*", "rps": 100}]})
    headers = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "1.5s"}
    server.script(Reply.completion("last one this window", headers=headers))
    client.complete("a", model=MODEL)
    start = time.monotonic()
    client.complete("b", model=MODEL)
    if use_headers:
        assert time.monotonic() - start >= 1.3  # a lower bound: holds however busy the machine
    assert client.middleware[0].describe()["cooldowns"] == (1 if use_headers else 0)


@pytest.mark.parametrize("use_headers", [True, False])
def test_remaining_zero_on_a_stream_pauses_until_the_reset(
    make_client: Callable[..., modelwire.Client], server: FakeServer, use_headers: bool
) -> None:
    """The same headers on a streamed answer (issue 9, P2: streams used to ignore them)."""
    client = make_client(middleware=["ratelimit"], ratelimit={
        "use_headers": use_headers, "limits": [{"match": "openai/*", "rps": 100}]})
    reply = Reply.stream(["last one", " this window"])
    reply.headers = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "1.5s"}
    server.script(reply)
    assert "".join(chunk.text for chunk in client.stream("a", model=MODEL)) == "last one this window"
    start = time.monotonic()
    client.complete("b", model=MODEL)
    if use_headers:
        assert time.monotonic() - start >= 1.3  # a lower bound: holds however busy the machine
    assert client.middleware[0].describe()["cooldowns"] == (1 if use_headers else 0)


async def test_L09_smoothing_keeps_a_short_window_server_from_answering_429(
    make_client: Callable[..., modelwire.Client], server: FakeServer
) -> None:
    # like Azure, whose per-second limit is enforced per 100 ms: 1 per 50 ms here, and smoothing at
    # 4 rps spaces requests 250 ms apart, leaving 200 ms for a loaded machine's send jitter
    server.rate_limit = (1, 0.05)
    limits = [{"match": "openai/*", "rps": 4, "smooth": True}]
    client = make_client(middleware=["ratelimit"], ratelimit={"limits": limits})
    results = await burst(client, 10)
    assert all(isinstance(r, modelwire.Completion) for r in results), results
    assert server.rate_limited == 0


async def test_L09_control_without_smoothing_the_burst_gets_429s(
    make_client: Callable[..., modelwire.Client], server: FakeServer
) -> None:
    server.rate_limit = (1, 1.0)  # a burst of 8 lands within 1 s however loaded the machine is
    limits = [{"match": "openai/*", "rps": 8, "smooth": False}]
    client = make_client(middleware=["ratelimit"], ratelimit={"limits": limits})
    results = await burst(client, 8)
    assert server.rate_limited > 0
    assert any(isinstance(r, RateLimitError) for r in results)
    await asyncio.sleep(0)


# -- with the other middleware (default order cache -> retry -> ratelimit) -----------------------


def test_R09_every_retry_attempt_takes_a_permit(
    make_client: Callable[..., modelwire.Client], server: FakeServer
) -> None:
    client = make_client(
        middleware=["retry", "ratelimit"],
        retry={"max_attempts": 3, "base_delay": 0, "max_delay": 0},
        ratelimit={"limits": [{"match": "openai/*", "rps": 1}]},
    )
    server.script(Reply.error(500), Reply.error(500), Reply.completion("third time"))
    assert client.complete("retry me", model=MODEL).text == "third time"
    times = chat_times(server)
    # 1 s apart at the limiter; a request may reach the server up to 0.2 s later than the one before
    assert len(times) == 3 and min(b - a for a, b in zip(times, times[1:], strict=False)) >= 0.8
    assert client.middleware[1].describe()["admitted"] == 3


def test_a_cache_hit_takes_no_permit(make_client: Callable[..., modelwire.Client], server: FakeServer) -> None:
    client = make_client(
        middleware=["cache", "ratelimit"],
        cache={"backend": "memory"},
        ratelimit={"max_wait": 0, "limits": [{"match": "openai/*", "rps": 1}]},
    )
    client.complete("same question", model=MODEL)
    for _ in range(3):  # rps 1 and no waiting allowed: only hits can pass
        assert client.complete("same question", model=MODEL).cached
    assert server.calls() == 1
    assert client.middleware[1].describe()["admitted"] == 1
