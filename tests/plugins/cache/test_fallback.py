"""The cache in front of a fallback: an answer from the fallback target is stored under the
request the caller made, and every hit, replay and follower reports the target that answered
(``request.state["served_by"]``), never the primary (issue 9, P2)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import modelwire
from modelwire.plugins.cache import cache_of
from modelwire.testing import FakeServer, Reply

from .conftest import Gate, GatePlugin, joined, open_gate

MakeClient = Callable[..., modelwire.Client]
MODEL = "openai/gpt-4o"


def fallback_client(make_client: MakeClient, gated: bool = False) -> modelwire.Client:
    # the gate (tests' conftest) sits between the cache and the fallback: inside the shared flight
    chain = ["cache", "gate", "fallback", "retry"] if gated else ["cache", "fallback", "retry"]
    return make_client(plugins=(GatePlugin(),), middleware=chain, retry={"max_attempts": 1},
                       fallback={"chains": {MODEL: ["local/llama"]}})


async def test_stream_served_by_a_fallback_is_replayed_under_that_target(make_client: MakeClient, server: FakeServer,
                                                                         gate: type[Gate]) -> None:
    client = fallback_client(make_client, gated=True)
    server.script(Reply.error(503), match="gpt-4o")
    server.script(Reply.stream(["from", " llama"]), match="llama")

    async def read() -> modelwire.AsyncStream:
        stream = client.astream("q", model=MODEL)
        [_ async for _ in stream]
        return stream

    leader = asyncio.create_task(read())
    while not cache_of(client).flights.flights:
        await asyncio.sleep(0.005)
    follower = asyncio.create_task(read())  # joins the flight the fallback target is answering
    await joined(cache_of(client).flights, 2)
    open_gate(gate)
    live, shared = await leader, await follower
    replay = await read()  # from the stored entry
    whole = await client.acomplete("q", model=MODEL)
    for stream in (live, shared, replay):
        final = stream.get_final_completion()
        assert (final.text, final.provider, final.model) == ("from llama", "local", "llama")
    assert not live.cached and shared.cached and replay.cached
    assert (whole.text, whole.provider, whole.model, whole.cached) == ("from llama", "local", "llama", True)
    assert server.calls() == 2  # the failed primary, the fallback's one stream
    assert cache_of(client).metrics.stores == 1


async def test_whole_answer_from_a_fallback_replayed_as_a_stream(make_client: MakeClient, server: FakeServer) -> None:
    client = fallback_client(make_client)
    server.script(Reply.error(503), match="gpt-4o")
    whole = await client.acomplete("q", model=MODEL)
    assert (whole.provider, whole.model, whole.cached) == ("local", "llama", False)
    replay = client.astream("q", model=MODEL)
    text = "".join([c.text async for c in replay])
    final = replay.get_final_completion()
    assert (text, final.provider, final.model) == (whole.text, "local", "llama") and replay.cached
    assert server.calls() == 2
