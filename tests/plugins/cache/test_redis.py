"""The Redis backend against a real redis-server: JSON values, native expiry, failure handling
(matrix C12-C15) and dedup across processes (X05)."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis

import modelwire
from modelwire.plugins.cache import cache_of
from modelwire.testing import FakeServer, RedisServer, Reply, capture_events
from modelwire.testing.redis import free_port

MakeClient = Callable[..., modelwire.Client]
MODEL = "openai/gpt-4o"


class DelayProxy:
    """A loopback TCP proxy in its own thread that delays every server->client write by
    ``delay`` seconds (a slow or frozen Redis, without touching the real one)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.delay = 0.0
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.server = self.loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", self.port))
            ready.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        ready.wait(5)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delayed: bool) -> None:
        try:
            while data := await reader.read(65536):
                if delayed and self.delay:
                    await asyncio.sleep(self.delay)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        await asyncio.gather(self._pump(reader, up_writer, False), self._pump(up_reader, writer, True),
                             return_exceptions=True)

    def close(self) -> None:
        async def stop() -> None:
            self.server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def redis_cache(url: str, **extra: Any) -> dict[str, Any]:
    # a 5 s backend timeout unless a test is about timeouts: a busy machine may take longer than
    # the default 0.2 s for a loopback call, and a timed-out call is a miss
    return {"backend": "redis", "url": url, "key_prefix": f"t{time.time_ns()}:", "timeout": 5.0, **extra}


async def comes_back(client: modelwire.Client, prompt: str, within: float = 30.0) -> None:
    """Ask until ``prompt`` is a cache hit: the cache recovers by itself. A test with a short
    backend timeout may see a call time out on a busy machine; it then asks again."""
    deadline = time.monotonic() + within
    while not (await client.acomplete(prompt, model=MODEL)).cached:
        assert time.monotonic() < deadline, f"the cache did not come back within {within} s"
        await asyncio.sleep(0.2)


async def test_redis_hit_json_values_native_expiry(make_client: MakeClient, server: FakeServer,
                                                   redis_server: RedisServer) -> None:
    client = make_client(middleware=["cache"], cache=redis_cache(redis_server.url, ttl=60))
    await client.acomplete("q", model=MODEL)
    hit = await client.acomplete("q", model=MODEL)
    stream = client.astream("q", model=MODEL)
    text = "".join([c.text async for c in stream])
    assert hit.cached and stream.cached and text == "echo: q" and server.calls() == 1
    cache = cache_of(client)
    r = redis.Redis.from_url(redis_server.url)
    keys = [k for k in r.keys(cache.config.key_prefix + "*") if b"stats" not in k]
    assert len(keys) == 1
    assert json.loads(r.get(keys[0]))["text"] == "echo: q"  # JSON, never pickle
    assert 0 < r.pttl(keys[0]) <= 60_000
    await client.aclose()


async def test_c12_redis_down_at_startup(make_client: MakeClient, server: FakeServer) -> None:
    port = free_port()
    client = make_client(middleware=["cache"], cache=redis_cache(f"redis://127.0.0.1:{port}/0", timeout=0.1,
                                                                 circuit_reset=0.5))
    cache = cache_of(client)
    with capture_events() as logs:
        for _ in range(5):
            assert (await client.acomplete("q", model=MODEL)).text == "echo: q"
    assert server.calls() == 5
    warnings = [e for e in logs if e["event"] == "cache.backend_error"]
    assert warnings and all(e["log_level"] == "warning" for e in warnings)
    assert cache.metrics.errors >= 3 and cache.metrics.circuit_skips >= 1 and cache.store.circuit_open
    # Redis comes up: the cache comes back by itself once the circuit's pause is over
    with RedisServer(port=port):
        await asyncio.sleep(0.6)
        await comes_back(client, "q")
        assert not cache.store.circuit_open
        await client.aclose()


async def test_c13_redis_pauses_mid_run_then_recovers(make_client: MakeClient, server: FakeServer,
                                                      own_redis: RedisServer) -> None:
    client = make_client(middleware=["cache"], cache=redis_cache(own_redis.url, timeout=0.1, circuit_failures=3,
                                                                 circuit_reset=0.5))
    cache = cache_of(client)
    await comes_back(client, "warm")
    own_redis.pause()
    try:
        for i in range(6):
            # a frozen Redis never answers: without the cache timeout this would wait forever;
            # with it a request takes two ops of 0.1 s plus the upstream call (20 s: any load)
            response = await asyncio.wait_for(client.acomplete(f"during {i}", model=MODEL), 20)
            assert response.text == f"echo: during {i}"
        assert cache.metrics.errors >= 3 and cache.metrics.timeouts >= 3
        assert cache.store.circuit_open and cache.metrics.circuit_skips >= 1
    finally:
        own_redis.resume()
    await asyncio.sleep(0.6)
    await comes_back(client, "warm")
    assert not cache.store.circuit_open
    await client.aclose()


async def test_c13_redis_dies_and_restarts(make_client: MakeClient, server: FakeServer, own_redis: RedisServer) -> None:
    client = make_client(middleware=["cache"], cache=redis_cache(own_redis.url, timeout=0.1, circuit_reset=0.3))
    await client.acomplete("q", model=MODEL)
    own_redis.stop()
    for _ in range(4):
        assert not (await client.acomplete("q", model=MODEL)).cached
    assert server.calls() == 5
    with RedisServer(port=own_redis.port):
        await asyncio.sleep(0.4)
        await comes_back(client, "q")  # the restarted Redis is empty: stored anew, then a hit
        await client.aclose()


async def test_c14_slow_redis_times_out_fast_loop_keeps_running(make_client: MakeClient, server: FakeServer,
                                                                redis_server: RedisServer) -> None:
    proxy = DelayProxy(redis_server.port)
    try:
        client = make_client(middleware=["cache"], cache=redis_cache(proxy.url, timeout=0.1, circuit_failures=1000))
        proxy.delay = 60.0  # Redis answers after a minute: only the cache timeout can end the requests
        calls = asyncio.gather(*[client.acomplete(f"q{i}", model=MODEL) for i in range(10)])
        results = await asyncio.wait_for(calls, 30)  # they need ~0.2 s; 30 s holds under any load
        assert [r.text for r in results] == [f"echo: q{i}" for i in range(10)] and server.calls() == 10
        assert cache_of(client).metrics.timeouts >= 10  # loop health: test_c16 (backend calls off the loop)
    finally:
        proxy.close()


async def test_c15_cancelled_reads_do_not_poison_connections(make_client: MakeClient, server: FakeServer,
                                                             redis_server: RedisServer) -> None:
    proxy = DelayProxy(redis_server.port)
    try:
        client = make_client(middleware=["cache"], cache=redis_cache(proxy.url, timeout=1.0, circuit_failures=1000))
        prompts = [f"sentinel-{i}" for i in range(12)]
        for p in prompts:
            await client.acomplete(p, model=MODEL)
        proxy.delay = 2.0  # reads now time out mid-flight; their replies arrive later
        tasks = [asyncio.create_task(client.acomplete(p, model=MODEL)) for p in prompts[:6]]
        await asyncio.sleep(0.05)
        for t in tasks[:3]:
            t.cancel()  # cancelled callers
        await asyncio.gather(*tasks, return_exceptions=True)  # the others timed out: served upstream
        proxy.delay = 0.0
        await asyncio.sleep(2.5)  # the late replies have reached the sockets by now
        results = await asyncio.gather(*[client.acomplete(p, model=MODEL) for p in reversed(prompts)])
        assert [r.text for r in results] == [f"echo: {p}" for p in reversed(prompts)]
        assert all(r.cached for r in results[:6])
    finally:
        proxy.close()


# -- X05: two processes, one upstream call per key --------------------------------------------------


def _worker(server_url: str, redis_url: str, prefix: str, barrier: Any, prompt: str, out: Any) -> None:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    client = modelwire.Client(config={
        "middleware": ["cache"],
        "providers": {"openai": {"api_base": server_url}},
        "cache": {"backend": "redis", "url": redis_url, "key_prefix": prefix, "lock_timeout": 10, "timeout": 5.0},
    })
    from modelwire.providers.litellm_base import litellm

    litellm()  # import before the barrier so both processes ask at the same moment
    barrier.wait(60)
    response = client.complete(prompt, model=MODEL)
    out.put((response.text, response.cached))
    client.close()


async def test_x05_two_processes_one_upstream_call(server: FakeServer, redis_server: RedisServer,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.conftest import SENTINEL_KEY

    monkeypatch.setenv("OPENAI_API_KEY", SENTINEL_KEY)
    server.script(Reply(body=Reply.completion("computed once").body, delay=0.5))
    ctx = multiprocessing.get_context("spawn")
    barrier, out = ctx.Barrier(2), ctx.Queue()
    prefix = f"x05:{time.time_ns()}:"
    procs = [ctx.Process(target=_worker, args=(server.openai_url, redis_server.url, prefix, barrier, "shared", out))
             for _ in range(2)]
    for p in procs:
        p.start()
    results = [await asyncio.to_thread(out.get, True, 120) for _ in procs]
    for p in procs:
        p.join(30)
    assert server.calls() == 1, "the second process must wait for the first one's answer"
    assert sorted(results) == [("computed once", False), ("computed once", True)]


async def test_x05_crashed_lock_holder_released_after_lock_timeout(make_client: MakeClient, server: FakeServer,
                                                                   redis_server: RedisServer) -> None:
    client = make_client(middleware=["cache"], cache=redis_cache(redis_server.url, lock_timeout=1.0))
    cache = cache_of(client)
    key = cache.key_for(client.request("q", model=MODEL))
    lock_name = cache.store.backend.lock_name(key)  # type: ignore[attr-defined]
    r = redis.Redis.from_url(redis_server.url)
    r.set(lock_name, b"crashed-holder-token", px=1000)  # a holder that died without releasing
    start = time.monotonic()
    response = await client.acomplete("q", model=MODEL)
    waited = time.monotonic() - start
    assert response.text == "echo: q" and server.calls() == 1
    # it waited for the crashed holder's lock (a lower bound holds under any load) and then got it
    assert waited > 0.5, f"waited only {waited:.2f} s for a lock that expires after 1 s"
    assert not r.exists(lock_name)  # released after use
    await client.aclose()
