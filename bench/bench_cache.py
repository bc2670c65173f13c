"""Cache hit latency: modelwire's memory and Redis backends through ``Client.acomplete``, side by
side with litellm's own in-memory cache hit on the same request against the same loopback server.

Run: ``.venv/bin/python bench/bench_cache.py`` (about 1 minute; ``--quick`` for smaller runs).
Targets: memory hit p50 <= 50 us and >= 10x faster than litellm's cache hit; Redis hit on
loopback p50 <= 1 ms. Then two figures that tests do not assert (they depend on the machine):

- event-loop lag while 200 concurrent cached requests run, memory vs file vs Redis backend
  (the file and Redis calls run in worker threads; tests assert that by thread, test_c16);
- peak RSS growth of one 100k-chunk stream with the cache on (default ``max_value_bytes``, so
  the stream is too large to store and stops being buffered) vs off, each in a fresh process.

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


def start_redis_or_none() -> RedisServer | None:
    """A throwaway redis-server, or None (said on stdout) where the binary is missing."""
    try:
        return RedisServer().start()
    except FileNotFoundError as exc:
        print(f"redis: skipped ({exc})")
        return None


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
        redis_srv = start_redis_or_none()
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


# -- loop lag with blocking backends; memory of a long stream with the cache on and off ----------------


async def loop_lag(label: str, config: dict[str, Any], base: str, n: int, rounds: int = 10) -> None:
    from bench_stream import _lag_probe

    client = modelwire.Client(config={"middleware": ["cache"], "cache": {"timeout": 5.0, **config},
                                      "providers": {"openai": {"api_base": base}}})
    prompts = [f"question {i}" for i in range(20)]
    await asyncio.gather(*[client.acomplete(p, model="openai/gpt-4o") for p in prompts])  # stored
    lags: list[float] = []
    probe = asyncio.create_task(_lag_probe(lags))
    await asyncio.sleep(0.05)
    hits = 0
    for _ in range(rounds):  # rounds of n concurrent hits: the probe gets enough ticks
        results = await asyncio.gather(*[client.acomplete(prompts[i % 20], model="openai/gpt-4o") for i in range(n)])
        hits += sum(r.cached for r in results)
    await asyncio.sleep(0.02)
    probe.cancel()
    lags.sort()
    ms = [1000 * lags[int(q * (len(lags) - 1))] for q in (0.5, 0.99, 1.0)]
    print(f"{label:<42} {rounds} x {n} concurrent hits: loop lag p50 {ms[0]:5.1f} ms  p99 {ms[1]:5.1f} ms  "
          f"max {ms[2]:5.1f} ms  (hits {hits}/{rounds * n})")
    await client.aclose()


async def _long_stream_rss(cache: bool, base: str, chunks: int) -> dict[str, Any]:
    """In a fresh process: peak RSS growth while reading one ``chunks``-chunk stream."""
    from bench_stream import _rss_mb, modelwire_stream, prompt

    client = modelwire.Client(config={"middleware": ["cache"] if cache else [], "providers": {
        "local": {"kind": "openai_compatible", "api_base": base}}})
    await modelwire_stream(client, prompt(50))  # litellm imported, pools open
    before = _rss_mb("VmRSS:")
    got = await modelwire_stream(client, prompt(chunks))
    assert got == chunks, got
    out: dict[str, Any] = {"growth_mb": _rss_mb("VmHWM:") - before}
    if cache:
        out["skipped"] = dict(cache_of(client).metrics.skipped)
    return out


def long_stream_rss(cache: bool, base: str, chunks: int) -> dict[str, Any]:
    import json
    import subprocess

    here = os.path.dirname(os.path.abspath(__file__))
    code = (f"import asyncio, json, bench_cache as b; "
            f"print(json.dumps(asyncio.run(b._long_stream_rss({cache!r}, {base!r}, {chunks}))))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")]))}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=900)
    if out.returncode:
        raise RuntimeError(out.stderr[-2000:])
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


async def figures(quick: bool) -> None:
    import tempfile

    from bench_stream import start_server

    proc, base = start_server()
    try:
        print("\nEvent-loop lag (a 10 ms ticker) during concurrent cache hits")
        n = 100 if quick else 200
        await loop_lag("memory backend", {"backend": "memory"}, base, n)
        with tempfile.TemporaryDirectory() as tmp:
            await loop_lag("file backend (worker threads)", {"backend": "file", "path": f"{tmp}/c"}, base, n)
        redis_srv = start_redis_or_none()
        if redis_srv is not None:
            try:
                await loop_lag("redis backend (worker threads, loopback)", {"backend": "redis", "url": redis_srv.url},
                               base, n)
            finally:
                redis_srv.stop()
        chunks = 20_000 if quick else 100_000
        print(f"\nOne {chunks:,}-chunk stream, peak RSS growth in a fresh process")
        off = long_stream_rss(False, base, chunks)
        on = long_stream_rss(True, base, chunks)
        print(f"   cache off : {off['growth_mb']:6.1f} MB")
        print(f"   cache on  : {on['growth_mb']:6.1f} MB  (not stored: {on['skipped']})")
    finally:
        proc.terminate()


if __name__ == "__main__":
    quick = "--quick" in sys.argv
    code = 0 if "--figures-only" in sys.argv else asyncio.run(main())
    asyncio.run(figures(quick))
    sys.exit(code)
