"""The cache in the full pipeline: outermost, in front of retry, with the stream timeouts
(matrix X02 with a retry cycle, C07 with S09's idle timeout)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import modelwire
from modelwire.plugins.cache import cache_of
from modelwire.testing import FakeServer, Reply

MakeClient = Callable[..., modelwire.Client]
MODEL = "openai/gpt-4o"
RETRY = {"max_attempts": 3, "base_delay": 0.01, "max_delay": 0.02}


async def test_x02_one_retry_cycle_for_all_callers(make_client: MakeClient, server: FakeServer) -> None:
    client = make_client(middleware=["cache", "retry"], retry=RETRY)
    server.script(Reply(500, Reply.error(500).body, delay=0.2), Reply.error(500), Reply.completion("third time"))
    results = await asyncio.gather(*[client.acomplete("same", model=MODEL) for _ in range(50)])
    assert {r.text for r in results} == {"third time"}
    assert server.calls() == 3, "one retry cycle (3 attempts) shared by every caller"
    assert (await client.acomplete("same", model=MODEL)).cached and server.calls() == 3


async def test_x02_retries_exhausted_same_error_for_all_then_fresh(make_client: MakeClient,
                                                                    server: FakeServer) -> None:
    client = make_client(middleware=["cache", "retry"], retry=RETRY)
    server.script(Reply(500, Reply.error(500).body, delay=0.2), Reply.error(500), Reply.error(500))
    results = await asyncio.gather(*[client.acomplete("same", model=MODEL) for _ in range(50)],
                                   return_exceptions=True)
    assert server.calls() == 3
    assert all(isinstance(r, modelwire.ServerError) for r in results)
    assert len({str(r) for r in results}) == 1
    assert cache_of(client).store.backend.count() == 0
    assert (await client.acomplete("same", model=MODEL)).text == "echo: same" and server.calls() == 4


async def test_c07_idle_timeout_stream_not_stored(make_client: MakeClient, server: FakeServer) -> None:
    client = make_client(middleware=["cache"])
    server.script(Reply.stream(["partial", " words"], finish_reason=None, usage=False, ending="stall"))  # S09
    stream = client.astream("q", model=MODEL, options={"stream": {"idle_timeout": 0.3}})
    try:
        [c async for c in stream]
        raise AssertionError("a stalled stream must not end as a success")
    except modelwire.StreamIdleTimeoutError:
        pass
    assert cache_of(client).store.backend.count() == 0
    fresh = client.astream("q", model=MODEL)
    assert "".join([c.text async for c in fresh]) == "echo: q" and not fresh.cached
    assert server.calls() == 2
