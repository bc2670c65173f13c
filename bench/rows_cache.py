"""Rows 4, 5 and 6: cache hits (memory, Redis) against their floors, and a stampede.

Logging stays as shipped: nothing configured by the bench, so modelwire's events reach the
``modelwire`` logger's NullHandler only (what a host that configured nothing pays).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import statistics
import time
from typing import Any

import modelwire
from bench.bench_cache import start_redis_or_none
from bench.common import percentile, sample
from bench.report import Budget, Row, na_row
from bench.rows_calls import local_client
from modelwire.testing import FakeServer

__all__ = ["FloorChain", "hit_rows", "redis_rows", "stampede_rows"]

MESSAGES = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
PARAMS: dict[str, Any] = {"temperature": 0, "max_tokens": 16}


class FloorChain:
    """The least an async cache hit costs in Python, the floor row 4 compares with: three async
    layers (cache, retry, limiter) that pass the call on, a canonical-JSON SHA-256 key and a dict.

    No validation, no hooks, no logging, no copy of the answer: what modelwire does beyond this is
    what the ratio shows.
    """

    def __init__(self) -> None:
        self.store: dict[str, modelwire.Completion] = {}

    async def acomplete(self, messages: list[dict[str, Any]], *, model: str, **params: Any) -> modelwire.Completion:
        return await self._cache({"model": model, "messages": messages, "params": params})

    async def _cache(self, request: dict[str, Any]) -> modelwire.Completion:
        text = json.dumps(request, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        key = hashlib.sha256(text.encode()).hexdigest()
        found = self.store.get(key)
        if found is not None:
            return found
        response = await self._retry(request)
        self.store[key] = response
        return response

    async def _retry(self, request: dict[str, Any]) -> modelwire.Completion:
        return await self._limit(request)

    async def _limit(self, request: dict[str, Any]) -> modelwire.Completion:
        return await self._provider(request)

    async def _provider(self, request: dict[str, Any]) -> modelwire.Completion:
        return modelwire.Completion("Paris", "stop", request["model"], "floor")


async def _hits(base: str, n: int) -> list[Row]:
    client, floor = local_client(base), FloorChain()
    first = await client.acomplete(MESSAGES, model="local/m", **PARAMS)
    assert not first.cached
    await floor.acomplete(MESSAGES, model="local/m", **PARAMS)

    async def hit() -> None:
        if not (await client.acomplete(MESSAGES, model="local/m", **PARAMS)).cached:
            raise AssertionError("the memory cache did not answer")

    try:
        times = await sample({"modelwire": hit, "floor": lambda: floor.acomplete(MESSAGES, model="local/m", **PARAMS)},
                             n, warmup=500)
    finally:
        await client.aclose()
    budget, note = Budget("<=", 2.5), f"{n} interleaved hits"
    return [
        Row("4a", "memory cache hit, default chain: p50", statistics.median(times["modelwire"]),
            statistics.median(times["floor"]), "us", "floor chain built in the bench", budget, note=note),
        Row("4b", "memory cache hit, default chain: p99", percentile(times["modelwire"], 0.99),
            percentile(times["floor"], 0.99), "us", "floor chain built in the bench", budget, note=note),
    ]


def hit_rows(base: str, n: int) -> list[Row]:
    return asyncio.run(_hits(base, n))


async def _entry_key(url: str) -> str:
    """The one Redis key holding a cache entry (the stats counters are a hash beside it)."""
    import redis.asyncio as aioredis

    r = aioredis.Redis.from_url(url)
    try:
        keys = [k async for k in r.scan_iter() if await r.type(k) == b"string"]
    finally:
        await r.aclose()
    if len(keys) != 1:
        raise RuntimeError(f"expected one cache entry in Redis, found {len(keys)}")
    return str(keys[0].decode())


async def _redis(base: str, url: str, n: int) -> list[Row]:
    import redis.asyncio as aioredis

    client = modelwire.Client(config={
        "providers": {"local": {"kind": "openai_compatible", "api_base": base}},
        "cache": {"backend": "redis", "url": url},
    })
    await client.acomplete(MESSAGES, model="local/m", **PARAMS)
    key = await _entry_key(url)
    bare = aioredis.Redis.from_url(url)

    async def hit() -> None:
        if not (await client.acomplete(MESSAGES, model="local/m", **PARAMS)).cached:
            raise AssertionError("the Redis cache did not answer")

    async def get_and_decode() -> None:
        data = await bare.get(key)
        assert data is not None
        json.loads(data)

    try:
        times = await sample({"modelwire": hit, "bare": get_and_decode}, n, warmup=100)
    finally:
        await client.aclose()
        await bare.aclose()
    return [Row("5", "Redis cache hit (loopback), default chain: p50", statistics.median(times["modelwire"]),
                statistics.median(times["bare"]), "ms", "redis.asyncio GET + json.loads of the same entry",
                Budget("<=", 2.0), note=f"{n} interleaved hits")]


def redis_rows(base: str, n: int) -> list[Row]:
    server = start_redis_or_none()
    if server is None:
        return [na_row("5", "Redis cache hit (loopback): p50", "no redis-server installed", Budget("<=", 2.0))]
    try:
        return asyncio.run(_redis(base, server.url, n))
    finally:
        server.stop()


async def _stampede(rounds: int, width: int) -> list[Row]:
    # In-process server: its request count is what the row asserts. A stampede and its floor run
    # against the same server in the same rounds, so that sharing the GIL with it hits both alike.
    with FakeServer() as server:
        client = local_client(server.openai_url)
        await client.acomplete("warm", model="local/m")
        together: list[float] = []
        one_by_one: list[float] = []
        single: list[float] = []
        upstream: list[int] = []
        for i in range(rounds):
            before = server.calls()
            start = time.perf_counter()
            await asyncio.gather(*(client.acomplete(f"stampede {i}", model="local/m") for _ in range(width)))
            together.append(time.perf_counter() - start)
            upstream.append(server.calls() - before)
            start = time.perf_counter()
            await client.acomplete(f"one by one {i}", model="local/m")
            single.append(time.perf_counter() - start)
            for _ in range(width - 1):
                await client.acomplete(f"one by one {i}", model="local/m")
            one_by_one.append(time.perf_counter() - start)
        await client.aclose()
    note = f"median of {rounds} rounds; one upstream call alone: {statistics.median(single) * 1e3:.1f} ms"
    return [
        Row("6a", f"stampede: {width} identical concurrent requests, upstream calls (max over rounds)",
            float(max(upstream)), 1.0, "calls", "", Budget("==", 1.0, on="modelwire")),
        Row("6b", f"stampede: {width} identical concurrent requests, total time", statistics.median(together),
            statistics.median(one_by_one), "ms", f"one upstream call then {width - 1} hits, one by one",
            Budget("<=", 1.5), note=note),
    ]


def stampede_rows(rounds: int, width: int = 1000) -> list[Row]:
    return asyncio.run(_stampede(rounds, width))
