"""What is stored and what is not, stream replay, expiry and bounds (matrix C05-C08, C10, C11)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest

import modelwire
from modelwire.plugins.cache import cache_of
from modelwire.plugins.cache.backends import MemBackend
from modelwire.testing import FakeServer, Reply

MakeClient = Callable[..., modelwire.Client]
MODEL = "openai/gpt-4o"


def entries(client: modelwire.Client) -> int:
    return cache_of(client).store.backend.count()


def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


# -- C05: errors are never stored -------------------------------------------------------------------


async def test_c05_upstream_error_not_stored(make_client: MakeClient, server: FakeServer) -> None:
    client = make_client(middleware=["cache"])
    server.script(Reply.error(500))
    with pytest.raises(modelwire.ServerError):
        await client.acomplete("q", model=MODEL)
    assert entries(client) == 0
    ok = await client.acomplete("q", model=MODEL)
    assert not ok.cached and ok.text == "echo: q" and server.calls() == 2


async def test_c05_error_shaped_200_not_stored(make_client: MakeClient, server: FakeServer) -> None:
    client = make_client(middleware=["cache"])
    server.script(Reply(200, {"error": {"message": "overloaded", "type": "server_error"}}))
    with pytest.raises(modelwire.ModelwireError):
        await client.acomplete("q", model=MODEL)
    assert entries(client) == 0
    assert not (await client.acomplete("q", model=MODEL)).cached
    assert server.calls() == 2


def test_c05_default_policy_refuses_error_bodies() -> None:
    from modelwire.plugins.cache import default_refusal
    from modelwire.types import Completion, Request

    request = Request("openai", "m", [{"role": "user", "content": "q"}])
    error_body = Completion("x", "stop", "m", "openai", raw={"error": {"message": "no"}})
    assert default_refusal(request, error_body) == "error_body"
    assert default_refusal(request, Completion("x", "stop", "m", "openai", raw={"choices": []})) is None


# -- C06: degraded answers are not stored -------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        (Reply.completion("cut sho", finish_reason="length"), "length"),
        (Reply.completion("", finish_reason="content_filter"), "content_filter"),
        (Reply.completion("", finish_reason="stop"), "empty"),
        (Reply.completion("   ", finish_reason="stop"), "empty"),
    ],
)
async def test_c06_degraded_whole_answers_not_stored(make_client: MakeClient, server: FakeServer,
                                                     reply: Reply, reason: str) -> None:
    client = make_client(middleware=["cache"])
    server.script(reply)
    try:
        await client.acomplete("q", model=MODEL)
        refused_by_policy = True
    except modelwire.ModelwireError:
        refused_by_policy = False  # a provider may map content_filter to an error: not stored either way
    assert entries(client) == 0
    assert not (await client.acomplete("q", model=MODEL)).cached
    assert server.calls() == 2
    if refused_by_policy:
        assert cache_of(client).metrics.skipped == {reason: 1}


@pytest.mark.parametrize(("pieces", "finish"), [(["cut", " sho"], "length"), (["bad"], "content_filter"), ([], "stop")])
async def test_c06_degraded_streams_not_stored(make_client: MakeClient, server: FakeServer,
                                               pieces: list[str], finish: str) -> None:
    client = make_client(middleware=["cache"])
    server.script(Reply.stream(pieces, finish_reason=finish))
    try:
        [c async for c in client.astream("q", model=MODEL)]
    except modelwire.ModelwireError:
        pass
    assert entries(client) == 0
    [c async for c in client.astream("q", model=MODEL)]
    assert server.calls() == 2


async def test_should_store_hook_can_override(make_client: MakeClient, server: FakeServer) -> None:
    class KeepLength:
        @modelwire.hookimpl
        def modelwire_cache_should_store(self, request: Any, response: Any) -> bool | None:
            return True if response.finish_reason == "length" else None

    class RefuseAll:
        @modelwire.hookimpl(tryfirst=True)
        def modelwire_cache_should_store(self) -> bool:
            return False

    client = make_client(plugins=(KeepLength(),), middleware=["cache"])
    server.script(Reply.completion("cut", finish_reason="length"))
    await client.acomplete("q", model=MODEL)
    assert (await client.acomplete("q", model=MODEL)).cached
    refusing = make_client(plugins=(RefuseAll(),), middleware=["cache"])
    await refusing.acomplete("q", model=MODEL)
    assert entries(refusing) == 0 and cache_of(refusing).metrics.skipped["policy"] == 1


async def test_cache_key_hook_can_override(make_client: MakeClient, server: FakeServer) -> None:
    class IgnoreTemperature:
        @modelwire.hookimpl
        def modelwire_cache_key(self, request: Any) -> str:
            return "custom:" + request.messages[-1]["content"]

    client = make_client(plugins=(IgnoreTemperature(),), middleware=["cache"])
    await client.acomplete("q", model=MODEL, temperature=0)
    assert (await client.acomplete("q", model=MODEL, temperature=1)).cached
    assert server.calls() == 1


# -- C07: no partial stream is stored ------------------------------------------------------------------


async def consume(client: modelwire.Client, prompt: str = "q") -> list[str]:
    return [c.text async for c in client.astream(prompt, model=MODEL)]


@pytest.mark.parametrize(
    "reply",
    [
        Reply.stream(["partial", " text"], finish_reason=None, usage=False, ending="eof"),  # S05
        Reply.stream(["partial", " text"], finish_reason=None, usage=False, ending="abort"),  # S06
        Reply.stream(["partial", " text"], finish_reason=None, usage=False, ending="close"),
        Reply(events=[chunk({"content": "partial"}), {"error": {"message": "boom", "type": "server_error"}}],
              ending="eof"),  # S12
    ],
    ids=["S05-eof", "S06-abort", "close", "S12-error-event"],
)
async def test_c07_interrupted_streams_not_stored(make_client: MakeClient, server: FakeServer, reply: Reply) -> None:
    client = make_client(middleware=["cache"])
    server.script(reply)
    with pytest.raises(modelwire.ModelwireError):
        await consume(client)
    assert entries(client) == 0
    assert await consume(client) == ["echo:", " q", "", ""]
    assert server.calls() == 2


async def test_c07_stalled_stream_given_up_not_stored(make_client: MakeClient, server: FakeServer) -> None:
    client = make_client(middleware=["cache"])
    server.script(Reply.stream(["partial"], finish_reason=None, usage=False, ending="stall"))  # S09
    got: list[str] = []

    async def read() -> None:
        async for chunk in client.astream("q", model=MODEL):
            got.append(chunk.text)

    task = asyncio.ensure_future(read())
    until = time.monotonic() + 30  # the first chunk came, then nothing: the caller gives up
    while "partial" not in got and time.monotonic() < until:
        await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert "partial" in got and entries(client) == 0 and not cache_of(client).flights.flights
    await consume(client)
    assert server.calls() == 2


async def test_c07_consumer_stops_early_not_stored(make_client: MakeClient, server: FakeServer) -> None:
    client = make_client(middleware=["cache"])
    server.script(Reply.stream(["a", " b", " c", " d"], event_delay=0.05))  # S25
    async with client.astream("q", model=MODEL) as stream:
        async for _ in stream:
            break
    await asyncio.sleep(0.3)
    assert entries(client) == 0 and not cache_of(client).flights.flights
    await consume(client)
    assert server.calls() == 2


async def test_c07_caller_cancelled_not_stored(make_client: MakeClient, server: FakeServer) -> None:
    client = make_client(middleware=["cache"])
    server.script(Reply.stream(["a", " b", " c", " d"], event_delay=0.1))  # S26
    got: list[str] = []

    async def reader() -> None:
        async for c in client.astream("q", model=MODEL):
            got.append(c.text)

    task = asyncio.create_task(reader())
    while not got:
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.5)
    assert entries(client) == 0 and not cache_of(client).flights.flights
    await consume(client)
    assert server.calls() == 2


# -- C08: a stored stream replays faithfully; whole and stream answer each other -----------------------

TOOL_STREAM = [
    chunk({"role": "assistant", "content": "", "reasoning_content": "2 and 2 make 4"}),
    chunk({"content": "Let me add."}),
    chunk({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                           "function": {"name": "add", "arguments": ""}}]}),
    chunk({"tool_calls": [{"index": 0, "function": {"arguments": "{\"a\": 2,"}}]}),
    chunk({"tool_calls": [{"index": 0, "function": {"arguments": " \"b\": 2}"}}]}),
    chunk({}, "tool_calls"),
    {**chunk({}), "choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 9, "total_tokens": 16}},
]


def shape(chunks: list[modelwire.Chunk]) -> list[tuple[Any, ...]]:
    return [(c.text, [(t.index, t.id, t.name, t.arguments) for t in c.tool_calls], c.finish_reason,
             c.usage and (c.usage.prompt_tokens, c.usage.completion_tokens, c.usage.total_tokens)) for c in chunks]


async def test_c08_stream_replay_fidelity(make_client: MakeClient, server: FakeServer) -> None:
    client = make_client(middleware=["cache"])
    server.script(Reply(events=TOOL_STREAM))
    live = client.astream("add", model=MODEL)
    first = [c async for c in live]
    replay_stream = client.astream("add", model=MODEL)
    replay = [c async for c in replay_stream]
    assert server.calls() == 1
    assert shape(replay) == shape(first)
    assert [{k: v for k, v in c.metadata.items() if k != "cache_hit"} for c in replay] == [c.metadata for c in first]
    assert replay[0].metadata["reasoning_content"] == "2 and 2 make 4"
    assert all(c.cached and c.metadata["cache_hit"] is True for c in replay) and replay_stream.cached
    assert not live.cached
    final = replay_stream.get_final_completion()
    assert final.finish_reason == "tool_calls" and final.cached
    assert final.tool_calls[0]["function"] == {"name": "add", "arguments": "{\"a\": 2, \"b\": 2}"}
    # a whole request is answered from the stored stream
    whole = await client.acomplete("add", model=MODEL)
    assert whole.cached and whole.text == "Let me add." and whole.tool_calls == final.tool_calls
    assert whole.usage is not None and whole.usage.total_tokens == 16 and server.calls() == 1


async def test_c08_stream_answered_from_a_stored_whole_completion(make_client: MakeClient, server: FakeServer) -> None:
    client = make_client(middleware=["cache"])
    whole = await client.acomplete("hello there", model=MODEL)
    stream = client.astream("hello there", model=MODEL)
    chunks = [c async for c in stream]
    assert server.calls() == 1 and stream.cached
    assert "".join(c.text for c in chunks) == whole.text
    final = stream.get_final_completion()
    assert final.finish_reason == "stop" and final.usage == whole.usage


# -- C10: expiry under concurrent access: regenerate once, never serve stale --------------------------


async def test_c10_expired_entry_regenerated_once_not_served_stale(make_client: MakeClient, server: FakeServer) -> None:
    # ttl 1 s: the second call is a hit even when a busy machine delays it by a good fraction of that
    client = make_client(middleware=["cache"], cache={"ttl": 1.0})
    server.script(Reply.completion("old"), Reply(body=Reply.completion("new").body, delay=0.3))
    assert (await client.acomplete("q", model=MODEL)).text == "old"
    assert (await client.acomplete("q", model=MODEL)).text == "old"
    await asyncio.sleep(1.1)
    results = await asyncio.gather(*[client.acomplete("q", model=MODEL) for _ in range(10)])
    assert {r.text for r in results} == {"new"}
    assert server.calls() == 2


# -- C11: the memory backend is bounded -----------------------------------------------------------------


def test_c11_lru_bound_with_10k_keys() -> None:
    backend = MemBackend(max_entries=500)
    for i in range(10_000):
        backend.set(f"ns:v1:{i}", b"{}", None)
        if i % 100 == 0:
            backend.get("ns:v1:0")  # read often: stays
    assert backend.count() == 500
    assert backend.get("ns:v1:0") == b"{}" and backend.get("ns:v1:9999") == b"{}"
    assert backend.get("ns:v1:5000") is None


def test_c11_memory_backend_bounded_in_bytes() -> None:
    backend = MemBackend(max_entries=10_000, max_bytes=10_000)
    for i in range(1000):
        backend.set(f"ns:v1:{i}", b"x" * 100, None)
    assert backend.count() == 100 and backend.data.size == 10_000
    backend.delete("ns:v1:999")
    backend.clear("other")
    assert backend.data.size == 9_900 and backend.clear() == 99 and backend.data.size == 0


async def test_c11_memory_cache_bounded_through_the_client(make_client: MakeClient, server: FakeServer) -> None:
    client = make_client(middleware=["cache"], cache={"max_entries": 20})
    for i in range(60):
        await client.acomplete(f"question {i}", model=MODEL)
    assert entries(client) == 20
    assert (await client.acomplete("question 59", model=MODEL)).cached
    assert not (await client.acomplete("question 0", model=MODEL)).cached
    assert server.calls() == 61


async def test_broken_hook_plugins_do_not_fail_requests(make_client: MakeClient, server: FakeServer) -> None:
    class Broken:
        @modelwire.hookimpl(tryfirst=True)
        def modelwire_cache_key(self) -> str:
            raise RuntimeError("key plugin bug")

        @modelwire.hookimpl(tryfirst=True)
        def modelwire_cache_should_store(self) -> bool:
            raise RuntimeError("policy plugin bug")

    client = make_client(plugins=(Broken(),), middleware=["cache"])
    assert (await client.acomplete("q", model=MODEL)).text == "echo: q"
    assert (await client.acomplete("q", model=MODEL)).text == "echo: q"
    assert server.calls() == 2 and cache_of(client).metrics.skipped == {"policy_error": 2}
