"""Cache hit latency: modelwire's memory and Redis backends through ``Client.acomplete``, side by
side with litellm's own in-memory cache hit on the same request against the same loopback server.

Run: ``.venv/bin/python bench/bench_cache.py`` (about 20 s). Targets: memory hit p50 <= 50 us
and >= 10x faster than litellm's cache hit; Redis hit on loopback p50 <= 1 ms.

litellm's cache-hit path (litellm 1.110) imports ``litellm.proxy`` modules that need fastapi,
orjson, soundfile and numpy, which are not dependencies of modelwire (nor of litellm's base
install): without them the hit crashes with ModuleNotFoundError. The bench then says so and
measures the part of litellm's hit path it can (``litellm.cache.get_cache``: key + lookup). To
measure the whole hit path without touching the project's environment::

    .venv/bin/pip install --target /tmp/bench-extra fastapi orjson soundfile numpy cffi
    MODELWIRE_BENCH_EXTRA_PATH=/tmp/bench-extra .venv/bin/python bench/bench_cache.py
"""

from __future__ import annotations

import asyncio
import logging
import os
import statistics
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("OPENAI_API_KEY", "sk-bench-0123456789abcdef")
if os.environ.get("MODELWIRE_BENCH_EXTRA_PATH"):
    sys.path.append(os.environ["MODELWIRE_BENCH_EXTRA_PATH"])  # appended: never shadows the venv

import structlog  # noqa: E402

import modelwire  # noqa: E402
from modelwire.plugins.cache import cache_of  # noqa: E402
from modelwire.testing import FakeServer, RedisServer  # noqa: E402

# The bench is an application: it decides that info events (one per request) are not printed.
structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))

MESSAGES = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
PARAMS: dict[str, Any] = {"temperature": 0, "max_tokens": 16}


async def measure(label: str, call: Callable[[], Awaitable[Any]], n: int, warmup: int = 50) -> dict[str, float]:
    for _ in range(warmup):
        await call()
    samples = []
    for _ in range(n):
        start = time.perf_counter_ns()
        await call()
        samples.append((time.perf_counter_ns() - start) / 1000)
    samples.sort()
    out = {"p50": statistics.median(samples), "p90": samples[int(n * 0.9)], "p99": samples[int(n * 0.99)]}
    print(f"{label:<48} n={n:<6} p50 {out['p50']:9.1f} us   p90 {out['p90']:9.1f} us   p99 {out['p99']:9.1f} us")
    return out


async def main() -> int:
    results: dict[str, dict[str, float]] = {}
    with FakeServer() as server:
        providers = {"openai": {"api_base": server.openai_url}}

        # -- modelwire, memory backend -------------------------------------------------------
        client = modelwire.Client(config={"middleware": ["cache"], "providers": providers})
        first = await client.acomplete(MESSAGES, model="openai/gpt-4o", **PARAMS)
        assert not first.cached

        async def mw_hit() -> None:
            response = await client.acomplete(MESSAGES, model="openai/gpt-4o", **PARAMS)
            assert response.cached

        results["mw_memory"] = await measure("modelwire memory-cache hit (Client.acomplete)", mw_hit, 20_000, 500)
        upstream_before = server.calls()

        # -- modelwire, no cache: the full path to the loopback server through litellm --------
        plain = modelwire.Client(config={"middleware": [], "providers": providers})

        async def mw_miss() -> None:
            await plain.acomplete(MESSAGES, model="openai/gpt-4o", **PARAMS)

        results["mw_upstream"] = await measure("modelwire without cache (litellm to loopback)", mw_miss, 300, 20)

        # -- litellm: bare call and its own in-memory cache ------------------------------------
        from modelwire.providers.litellm_base import litellm

        lt = litellm()
        lt.suppress_debug_info = True
        args = {"model": "openai/gpt-4o", "messages": MESSAGES, "api_base": server.openai_url,
                "api_key": os.environ["OPENAI_API_KEY"], "num_retries": 0, "max_retries": 0, **PARAMS}

        async def lt_bare() -> None:
            await lt.acompletion(**args)

        results["litellm_bare"] = await measure("bare litellm.acompletion to loopback", lt_bare, 300, 20)

        lt.cache = lt.Cache()  # type "local": litellm's in-memory cache
        try:
            calls = server.calls()
            await lt.acompletion(**args, caching=True)
            await asyncio.sleep(0.3)  # litellm writes its cache in the background
            response = await lt.acompletion(**args, caching=True)
            if server.calls() != calls + 1 or not response._hidden_params.get("cache_hit"):
                print(f"note: litellm's cache did not answer the repeat ({server.calls() - calls} upstream calls)")

            async def lt_hit() -> None:
                await lt.acompletion(**args, caching=True)

            results["litellm_cache"] = await measure("litellm in-memory cache hit (litellm.Cache())", lt_hit, 2000, 50)
        except Exception as exc:
            print(f"litellm's cache-hit path CRASHED: {type(exc).__name__}: {exc}")
            print("  (it imports litellm.proxy modules; see this file's docstring to measure it anyway)")
            traceback.print_exc(limit=-2, file=sys.stdout)
            lookup_args = {k: v for k, v in args.items() if k not in ("num_retries", "max_retries")}

            async def lt_lookup() -> None:
                assert lt.cache.get_cache(**lookup_args) is not None

            results["litellm_lookup"] = await measure("litellm cache lookup only (get_cache, lower bound)",
                                                      lt_lookup, 5000, 50)
        finally:
            lt.cache = None

        # -- modelwire, Redis backend on loopback ------------------------------------------------
        try:
            redis_srv: RedisServer | None = RedisServer().start()
        except FileNotFoundError as exc:
            redis_srv = None
            print(f"redis: skipped ({exc})")
        if redis_srv is not None:
            try:
                rclient = modelwire.Client(config={"middleware": ["cache"], "providers": providers,
                                                   "cache": {"backend": "redis", "url": redis_srv.url}})
                await rclient.acomplete(MESSAGES, model="openai/gpt-4o", **PARAMS)

                async def redis_hit() -> None:
                    response = await rclient.acomplete(MESSAGES, model="openai/gpt-4o", **PARAMS)
                    assert response.cached

                results["mw_redis"] = await measure("modelwire redis-cache hit (loopback)", redis_hit, 3000, 100)
                assert cache_of(rclient).metrics.errors == 0
                await rclient.aclose()
            finally:
                redis_srv.stop()

        assert server.calls() >= upstream_before
    print()
    mem = results["mw_memory"]["p50"]
    print(f"memory hit p50: {mem:.1f} us (target <= 50 us): {'OK' if mem <= 50 else 'MISSED'}")
    if "litellm_cache" in results:
        ratio = results["litellm_cache"]["p50"] / mem
        print(f"litellm cache hit p50 / modelwire memory hit p50 = {ratio:.1f}x (target >= 10x): "
              f"{'OK' if ratio >= 10 else 'MISSED'}")
    if "litellm_lookup" in results:
        ratio = results["litellm_lookup"]["p50"] / mem
        print(f"litellm cache LOOKUP ONLY p50 / modelwire memory hit p50 = {ratio:.1f}x (lower bound: litellm's "
              "full hit path crashed here)")
    print(f"bare litellm call p50 / modelwire memory hit p50 = {results['litellm_bare']['p50'] / mem:.0f}x")
    if "mw_redis" in results:
        red = results["mw_redis"]["p50"]
        print(f"redis hit p50: {red / 1000:.3f} ms (target <= 1 ms): {'OK' if red <= 1000 else 'MISSED'}")
    await client.aclose()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
