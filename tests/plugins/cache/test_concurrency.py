"""Single-flight: identical concurrent requests make one upstream call (matrix X01-X03, X06, C16)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import modelwire
from modelwire.plugins.cache import cache_of
from modelwire.testing import FakeServer, RedisServer, Reply

from .conftest import Gate, GatePlugin, joined, open_gate

MakeClient = Callable[..., modelwire.Client]
MODEL = "openai/gpt-4o"


async def test_x01_hundred_identical_requests_one_upstream_call(make_client: MakeClient, server: FakeServer) -> None:
    client = make_client(middleware=["cache"])
    server.script(Reply(body=Reply.completion("the one answer").body, delay=0.3))
    results = await asyncio.gather(*[client.acomplete("same", model=MODEL) for _ in range(100)])
    assert server.calls() == 1
    assert {r.text for r in results} == {"the one answer"} and len(results) == 100
    assert len({id(r) for r in results}) == 100  # each caller its own object
    followers = [r for r in results if r.cached]
    assert len(followers) == 99 and all(isinstance(r.raw, dict) for r in followers)
    followers[0].raw["choices"][0]["message"]["content"] = "changed by one caller"
    assert {r.raw["choices"][0]["message"]["content"] for r in followers[1:]} == {"the one answer"}
    metrics = cache_of(client).metrics
    assert metrics.stores == 1 and metrics.misses == 1 and metrics.coalesced == 99
    assert (await client.acomplete("same", model=MODEL)).cached and server.calls() == 1


async def test_x01_mixed_whole_and_stream_callers_share_one_call(make_client: MakeClient, server: FakeServer) -> None:
    client = make_client(middleware=["cache"])
    server.script(Reply.stream(["one", " shared", " answer"], event_delay=0.05))

    async def stream_text() -> str:
        return "".join([c.text async for c in client.astream("same", model=MODEL)])

    async def whole_text() -> str:
        return (await client.acomplete("same", model=MODEL)).text

    results = await asyncio.gather(stream_text(), *[whole_text() for _ in range(5)], *[stream_text() for _ in range(5)])
    assert set(results) == {"one shared answer"} and server.calls() == 1


async def test_x02_same_typed_error_for_all_then_fresh(make_client: MakeClient, server: FakeServer) -> None:
    client = make_client(middleware=["cache"])
    server.script(Reply(500, Reply.error(500).body, delay=0.3))
    results = await asyncio.gather(*[client.acomplete("same", model=MODEL) for _ in range(100)], return_exceptions=True)
    assert server.calls() == 1
    assert all(isinstance(r, modelwire.ServerError) for r in results)
    assert len({type(r) for r in results}) == 1 and len({str(r) for r in results}) == 1
    assert cache_of(client).store.backend.count() == 0
    fresh = await client.acomplete("same", model=MODEL)
    assert fresh.text == "echo: same" and not fresh.cached and server.calls() == 2


async def test_x03_hundred_streams_one_upstream_follower_cancel_does_not_hurt(
    make_client: MakeClient, server: FakeServer, gate: type[Gate]
) -> None:
    # the gate holds the shared stream after its first chunk until everyone joined, whatever the load
    client = make_client(plugins=(GatePlugin(),), middleware=["cache", "gate"])
    words = [f" w{i}" for i in range(10)]
    server.script(Reply.stream(words, event_delay=0.01))
    started = asyncio.Event()
    reading = asyncio.Event()

    async def reader(cancel_after: int | None, signal: asyncio.Event = started) -> str:
        pieces = []
        async for c in client.astream("same", model=MODEL):
            pieces.append(c.text)
            signal.set()
            if cancel_after is not None and len(pieces) >= cancel_after:
                raise asyncio.CancelledError
        return "".join(pieces)

    leader = asyncio.create_task(reader(None))
    await started.wait()  # the leader is streaming: everyone after joins its flight
    cancelled = asyncio.create_task(reader(None, reading))
    await reading.wait()  # it reads the shared stream and waits for more: cancel it there
    cancelled.cancel()
    followers = [asyncio.create_task(reader(None)) for _ in range(97)]
    quitter = asyncio.create_task(reader(2))
    await joined(cache_of(client).flights, 99)  # the leader, 97 followers and the quitter
    open_gate(gate)
    done = await asyncio.gather(leader, *followers, return_exceptions=True)
    assert set(done) == {"".join(words)}
    for task in (quitter, cancelled):
        with pytest.raises(asyncio.CancelledError):
            await task
    assert server.calls() == 1
    replay = "".join([c.text async for c in client.astream("same", model=MODEL)])
    assert replay == "".join(words) and server.calls() == 1


async def test_x03_leader_cancel_does_not_stop_followers(make_client: MakeClient, server: FakeServer) -> None:
    client = make_client(middleware=["cache"])
    server.script(Reply.stream(["a", " b", " c", " d", " e"], event_delay=0.05))
    first = asyncio.Event()

    async def reader() -> str:
        pieces = []
        async for c in client.astream("same", model=MODEL):
            pieces.append(c.text)
            first.set()
        return "".join(pieces)

    leader = asyncio.create_task(reader())
    await first.wait()
    followers = [asyncio.create_task(reader()) for _ in range(5)]
    await asyncio.sleep(0.01)
    leader.cancel()
    assert set(await asyncio.gather(*followers)) == {"a b c d e"}
    assert server.calls() == 1 and cache_of(client).store.backend.count() == 1


async def test_x03_leader_failure_reaches_every_follower_nothing_stored(
    make_client: MakeClient, server: FakeServer
) -> None:
    client = make_client(middleware=["cache"])
    server.script(Reply.stream(["part", " ial"], finish_reason=None, usage=False, ending="abort", event_delay=0.1))

    async def reader() -> str:
        return "".join([c.text async for c in client.astream("same", model=MODEL)])

    results = await asyncio.gather(*[reader() for _ in range(20)], return_exceptions=True)
    assert server.calls() == 1
    assert all(isinstance(r, modelwire.ModelwireError) for r in results), results
    assert len({type(r) for r in results}) == 1
    assert cache_of(client).store.backend.count() == 0
    assert await reader() == "echo: same" and server.calls() == 2


async def test_x06_followers_give_up_at_their_own_deadline(make_client: MakeClient, server: FakeServer) -> None:
    client = make_client(middleware=["cache"])
    server.script(Reply(body=Reply.completion("late").body, delay=30))  # the leader hangs
    await client.awarmup()
    leader = asyncio.create_task(client.acomplete("same", model=MODEL))
    until = time.monotonic() + 30
    while server.calls() < 1 and time.monotonic() < until:  # the leader's request is at the server
        await asyncio.sleep(0.02)
    start = time.monotonic()
    results = await asyncio.gather(
        client.acomplete("same", model=MODEL, options={"cache": {"wait_timeout": 0.3}}),
        client.acomplete("same", model=MODEL, timeout=0.5),  # the caller's own timeout is its deadline
        return_exceptions=True,
    )
    waited = time.monotonic() - start
    assert all(isinstance(r, modelwire.ProviderTimeoutError) for r in results), results
    assert waited < 10, "followers must not wait for the hung leader"
    stream = client.astream("same", model=MODEL, options={"cache": {"wait_timeout": 0.3}})
    with pytest.raises(modelwire.ProviderTimeoutError):
        [c async for c in stream]
    assert not leader.done() and server.calls() == 1
    leader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leader
    await asyncio.sleep(0.05)
    assert not cache_of(client).flights.flights


@pytest.mark.parametrize("backend", ["file", "redis"])
async def test_c16_sync_backends_run_off_the_event_loop(make_client: MakeClient, server: FakeServer, tmp_path: Path,
                                                      backend: str, redis_server: RedisServer) -> None:
    """Blocking backend calls never run on the loop's thread (asserted by thread, whatever the load;
    the loop-lag figure is in bench/bench_cache.py)."""
    from .test_redis import DelayProxy

    proxy = DelayProxy(redis_server.port)
    # a 5 s backend timeout: every call must be answered even on a busy machine (a timeout is a miss)
    section = {"backend": "file", "path": str(tmp_path / "c"), "timeout": 5.0} if backend == "file" else \
        {"backend": "redis", "url": proxy.url, "key_prefix": f"c16:{time.time_ns()}:", "timeout": 5.0}
    client = make_client(middleware=["cache"], cache=section)
    backend_obj = cache_of(client).store.backend
    threads: list[int] = []

    def on_thread(method: Callable[..., object]) -> Callable[..., object]:
        def record(*args: object) -> object:  # the real backend call, on whatever thread runs it
            threads.append(threading.get_ident())
            return method(*args)

        return record

    for name in ("get", "set"):
        setattr(backend_obj, name, on_thread(getattr(backend_obj, name)))
    reads = {"now": 0, "most": 0, "count": 0}  # Redis reads: redis.asyncio on the loop, never blocking it
    if backend_obj.async_get:
        aget = backend_obj.aget

        async def overlapping(key: str) -> bytes | None:
            reads["now"] += 1
            reads["count"] += 1
            reads["most"] = max(reads["most"], reads["now"])
            try:
                return await aget(key)
            finally:
                reads["now"] -= 1

        backend_obj.aget = overlapping  # type: ignore[method-assign]
    await asyncio.gather(*[client.acomplete(f"q{i}", model=MODEL) for i in range(20)])
    calls = server.calls()
    proxy.delay = 0.05  # every Redis reply takes 50 ms: 100 of them inline would stall the loop for 5 s
    results = await asyncio.gather(*[client.acomplete(f"q{i % 20}", model=MODEL) for i in range(100)])
    proxy.close()
    assert all(r.cached for r in results) and server.calls() == calls
    assert len(threads) + reads["count"] >= 140  # 20 misses (get + set) and 100 hits
    assert threading.get_ident() not in threads, "a backend call ran on the event loop's thread"
    if backend == "redis":  # a read blocking the loop would hold the others back: one at a time
        assert reads["count"] >= 120 and reads["most"] > 1, reads
