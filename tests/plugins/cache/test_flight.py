"""Single-flight followers against the loopback server: they get the leader's answer itself, their
own copy of a shared error, their cancellation is never swallowed, and a stream that cannot be
stored stops being buffered (issue 9: items 2, 3, 12 and the shared-error P2 item)."""

from __future__ import annotations

import asyncio
import time
import traceback
from collections.abc import Callable
from typing import Any

import pytest

import modelwire
from modelwire.plugins.cache import cache_of
from modelwire.testing import FakeServer, Reply
from modelwire.types import Completion, Request

from .conftest import Gate, GatePlugin, joined, open_gate

MakeClient = Callable[..., modelwire.Client]
MODEL = "openai/gpt-4o"


async def until_in_flight(client: modelwire.Client) -> None:
    """Wait (no fixed sleep: the machine may be busy) until a flight has started."""
    while not cache_of(client).flights.flights:
        await asyncio.sleep(0.005)


class SlowObserver:
    """An observer that holds the event loop 100 ms per response: longer than the entry's ttl."""

    @modelwire.hookimpl
    def modelwire_response_received(self, request: Request, response: Completion) -> None:
        time.sleep(0.1)


# -- item 2: followers get the leader's answer, never a re-read of an entry that may have expired ------


async def test_followers_get_the_answer_after_the_entry_expired(make_client: MakeClient, server: FakeServer,
                                                              gate: type[Gate]) -> None:
    client = make_client(plugins=(SlowObserver(), GatePlugin()), middleware=["cache", "gate"])
    server.script(Reply.completion("the answer"))
    short = {"cache": {"ttl": 0.05}}  # expires while each caller's observer holds the loop

    async def whole() -> tuple[str, str | None, bool]:
        r = await client.acomplete("same", model=MODEL, options=short)
        return r.text, r.finish_reason, r.cached

    async def streamed() -> tuple[str, str | None, bool]:
        stream = client.astream("same", model=MODEL, options=short)
        text = "".join([c.text async for c in stream])
        return text, stream.get_final_completion().finish_reason, stream.cached

    leader = asyncio.create_task(whole())
    await until_in_flight(client)
    joining = [asyncio.create_task(c) for c in [*[whole() for _ in range(4)], *[streamed() for _ in range(3)]]]
    await joined(cache_of(client).flights, 8)
    open_gate(gate)
    followers = await asyncio.gather(*joining)
    assert await leader == ("the answer", "stop", False)
    assert followers == [("the answer", "stop", True)] * 7
    assert server.calls() == 1 and cache_of(client).metrics.coalesced == 7


async def test_whole_followers_of_a_stream_get_its_text(make_client: MakeClient, server: FakeServer,
                                                      gate: type[Gate]) -> None:
    client = make_client(plugins=(SlowObserver(), GatePlugin()), middleware=["cache", "gate"])
    server.script(Reply.stream(["one", " two", " three"]))
    short = {"cache": {"ttl": 0.05}}
    stream = client.astream("same", model=MODEL, options=short)
    leader = asyncio.create_task(_text(stream))
    await until_in_flight(client)
    joining = [asyncio.create_task(client.acomplete("same", model=MODEL, options=short)) for _ in range(4)]
    await joined(cache_of(client).flights, 5)
    open_gate(gate)
    followers = await asyncio.gather(*joining)
    assert await leader == "one two three"
    assert [(r.text, r.finish_reason, r.cached) for r in followers] == [("one two three", "stop", True)] * 4
    assert server.calls() == 1


async def _text(stream: modelwire.AsyncStream) -> str:
    return "".join([c.text async for c in stream])


# -- shared error: each follower its own copy, tracebacks stay bounded ---------------------------------


@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "stream"])
async def test_followers_of_a_failed_call_get_their_own_error(make_client: MakeClient, server: FakeServer,
                                                              streamed: bool) -> None:
    client = make_client(middleware=["cache"])
    server.script(Reply(500, Reply.error(500).body, delay=0.3))

    async def call() -> object:
        if streamed:
            return await _text(client.astream("same", model=MODEL))
        return await client.acomplete("same", model=MODEL)

    results = await asyncio.gather(*[call() for _ in range(200)], return_exceptions=True)
    assert server.calls() == 1
    assert all(isinstance(r, modelwire.ServerError) for r in results), results[:3]
    errors: list[BaseException] = [r for r in results if isinstance(r, BaseException)]
    assert len({id(e) for e in errors}) == 200, "every caller gets its own exception object"
    assert len({str(e) for e in errors}) == 1 and len({type(e) for e in errors}) == 1
    frames = max(len(traceback.extract_tb(e.__traceback__)) for e in errors)
    assert frames < 60, f"a traceback grew to {frames} frames"


# -- item 3: a cancelled follower raises CancelledError --------------------------------------------------


async def test_follower_cancelled_as_a_chunk_arrives_raises_cancelled(make_client: MakeClient, server: FakeServer,
                                                                       gate: type[Gate]) -> None:
    client = make_client(plugins=(GatePlugin(),), middleware=["cache", "gate"])
    server.script(Reply.stream(["a", " b", " c", " d"]))

    async def reader(signal: asyncio.Event) -> str:
        pieces = []
        async for c in client.astream("same", model=MODEL):
            pieces.append(c.text)
            signal.set()
        return "".join(pieces)

    leader_read, follower_read = asyncio.Event(), asyncio.Event()
    leader = asyncio.create_task(reader(leader_read))
    await leader_read.wait()  # the flight holds after its first chunk
    follower = asyncio.create_task(reader(follower_read))
    await follower_read.wait()  # the follower replayed that chunk and now waits for the next one
    gate.victim = follower
    assert gate.opened is not None
    gate.opened.set()  # the second chunk wakes the follower, and the gate cancels it at once
    with pytest.raises(asyncio.CancelledError):
        await follower
    assert await leader == "a b c d" and server.calls() == 1


async def test_whole_follower_cancelled_while_waiting_raises_cancelled(make_client: MakeClient, server: FakeServer,
                                                                        gate: type[Gate]) -> None:
    client = make_client(plugins=(GatePlugin(),), middleware=["cache", "gate"])
    server.script(Reply.completion("late"))
    leader = asyncio.create_task(client.acomplete("same", model=MODEL))
    await until_in_flight(client)
    follower = asyncio.create_task(client.acomplete("same", model=MODEL))
    await joined(cache_of(client).flights, 2)
    follower.cancel()
    with pytest.raises(asyncio.CancelledError):
        await follower
    open_gate(gate)
    assert (await leader).text == "late" and server.calls() == 1


# -- item 12: a stream that cannot be stored stops buffering -------------------------------------------------

PIECES = [f" w{i:04d}" for i in range(3000)]


async def read_watching_memory(client: modelwire.Client, options: dict[str, Any] | None = None) -> tuple[str, int]:
    """Read the stream; return its text and the most chunks the cache held at once."""
    cache = cache_of(client)
    most, pieces = 0, []
    async for c in client.astream("long", model=MODEL, options=options or {}):
        pieces.append(c.text)
        most = max(most, cache.flights.held_chunks())
    return "".join(pieces), most


async def test_too_large_stream_stops_buffering(make_client: MakeClient, server: FakeServer) -> None:
    client = make_client(middleware=["cache"], cache={"max_value_bytes": 4000})
    server.script(Reply.stream(PIECES))
    text, most = await read_watching_memory(client)
    cache = cache_of(client)
    assert text == "".join(PIECES), "the caller still gets the whole stream"
    # buffering stopped once the entry was known to exceed 4000 bytes (about 40 chunks in); after
    # that only unread chunks are held, a few dozen at most, never the 3000 of the stream
    assert most <= 200, f"the cache held {most} chunks"
    assert cache.metrics.skipped == {"too_large": 1} and cache.metrics.stores == 0
    assert cache.store.backend.count() == 0 and not cache.flights.running
    assert not (await client.acomplete("long", model=MODEL)).cached  # nothing was stored


async def test_no_store_stream_buffers_nothing(make_client: MakeClient, server: FakeServer) -> None:
    client = make_client(middleware=["cache"])
    server.script(Reply.stream(PIECES))
    text, most = await read_watching_memory(client, {"cache": {"no_store": True}})
    assert text == "".join(PIECES) and most <= 100, most
    assert cache_of(client).metrics.skipped == {"no_store": 1} and cache_of(client).store.backend.count() == 0


async def test_followers_of_a_stream_that_stopped_buffering_get_every_chunk(make_client: MakeClient,
                                                                             server: FakeServer,
                                                                             gate: type[Gate]) -> None:
    client = make_client(plugins=(GatePlugin(),), middleware=["cache", "gate"], cache={"max_value_bytes": 4000})
    server.script(Reply.stream(PIECES[:600]))

    async def reader() -> str:
        return "".join([c.text async for c in client.astream("long", model=MODEL)])

    leader = asyncio.create_task(reader())
    await until_in_flight(client)
    early = [asyncio.create_task(reader()) for _ in range(3)]  # joined while the chunks were all held
    await joined(cache_of(client).flights, 4)
    open_gate(gate)
    results = await asyncio.gather(leader, *early)
    assert results == ["".join(PIECES[:600])] * 4 and server.calls() == 1
    assert cache_of(client).store.backend.count() == 0
