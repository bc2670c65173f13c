"""What the rate limiter costs and how close it runs to its limit.

Run: ``.venv/bin/python bench/bench_ratelimit.py`` (about a minute). Prints:

1. overhead on a call that does not wait: the same client chain with the limiter off and on,
   real litellm calls to the loopback FakeServer, interleaved rounds, median per call; and the
   limiter's own time per call (its ``ahandle`` around a call that returns at once);
2. the prompt-token estimators: chars/4 against ``litellm.token_counter``;
3. achieved throughput against a configured 200 rps limit: the limiter alone, and end to end
   through litellm to the loopback server (arrival timestamps on the server).
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import statistics
import time
from typing import Any

import structlog

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("OPENAI_API_KEY", "sk-bench-not-a-real-key-0000")

import modelwire  # noqa: E402
from modelwire.testing import FakeServer  # noqa: E402
from modelwire.types import Completion, Request, Usage  # noqa: E402

MODEL = "openai/gpt-4o"
UNLIMITED = {"match": "openai/*", "rps": 1_000_000, "tpm": 1_000_000_000, "concurrency": 10_000}


def client(server: FakeServer, middleware: list[str], limits: list[dict[str, Any]]) -> modelwire.Client:
    return modelwire.Client(config={
        "middleware": middleware,
        "providers": {"openai": {"api_base": server.openai_url}},
        "ratelimit": {"limits": limits},
    })


async def per_call(c: modelwire.Client, n: int) -> list[float]:
    out = []
    for _ in range(n):
        start = time.perf_counter()
        await c.acomplete("How fast is this?", model=MODEL, max_tokens=50)
        out.append(time.perf_counter() - start)
    return out


async def overhead(server: FakeServer) -> None:
    off = client(server, [], [UNLIMITED])
    on = client(server, ["ratelimit"], [UNLIMITED])
    await per_call(off, 30)
    await per_call(on, 30)
    samples: dict[str, list[float]] = {"off": [], "on": []}
    for _ in range(1000):  # alternating call by call, so that machine load hits both alike
        samples["off"] += await per_call(off, 1)
        samples["on"] += await per_call(on, 1)
    m_off, m_on = statistics.median(samples["off"]), statistics.median(samples["on"])
    print("1. overhead on a call that does not wait (real litellm call to the loopback server)")
    print(f"   limiter off: median {m_off * 1000:.3f} ms/call   on: {m_on * 1000:.3f} ms/call   "
          f"difference {100 * (m_on - m_off) / m_off:+.1f} %  (n={len(samples['on'])} each; noise is a few %)")
    mw = on.middleware[0]
    request = on.request("How fast is this?", model=MODEL, max_tokens=50)
    done = Completion("ok", "stop", "gpt-4o", "openai", usage=Usage(20, 30, 50))

    async def call_next(req: Request) -> Completion:
        return done

    for _ in range(1000):
        await mw.ahandle(request, call_next)
    n = 5000  # below the 10 000 TPM bucket entries a minute
    start = time.perf_counter()
    for _ in range(n):
        await mw.ahandle(request, call_next)
    own = (time.perf_counter() - start) / n
    print(f"   the limiter's own time (rps + tpm + concurrency permits, reconcile): {own * 1e6:.1f} us/call "
          f"= {100 * own / m_off:.2f} % of the median call with the limiter off")
    off.close()
    on.close()


def estimators() -> None:
    from modelwire.plugins.ratelimit.config import RateLimitConfig, estimate_tokens
    from modelwire.providers.litellm_base import litellm

    request = Request("openai", "gpt-4o", [{"role": "user", "content": "hello world " * 100}])
    results = {}
    for name in ("chars", "litellm"):
        config = RateLimitConfig(estimator=name)
        start = time.perf_counter()
        estimate_tokens(request, config)
        first = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(500):
            value = estimate_tokens(request, config)
        results[name] = (first, (time.perf_counter() - start) / 500, value)
    actual = litellm().token_counter(model="gpt-4o", messages=request.messages)
    print("2. prompt-token estimate for a ~200-token prompt (the reservation adds max_tokens either way)")
    for name, (first, each, value) in results.items():
        print(f"   {name:<8} first call {first * 1000:8.2f} ms, then {each * 1e6:8.1f} us/call, estimate {value} "
              f"(token_counter says {actual} + max_tokens)")


async def limiter_alone(rps: int, n: int, smooth: bool, buffer_ms: int = 40) -> tuple[float, float]:
    with FakeServer() as server:
        c = client(server, ["ratelimit"], [{"match": "openai/*", "rps": rps, "smooth": smooth}])
        if buffer_ms != 40:
            c = modelwire.Client(config={
                "middleware": ["ratelimit"], "providers": {"openai": {"api_base": server.openai_url}},
                "ratelimit": {"buffer_ms": buffer_ms, "limits": [{"match": "openai/*", "rps": rps, "smooth": smooth}]}})
        mw = c.middleware[0]
        done = Completion("ok", "stop", "gpt-4o", "openai")
        stamps: list[float] = []

        async def call_next(req: Request) -> Completion:
            stamps.append(time.monotonic())
            return done

        requests = [c.request("x", model=MODEL) for _ in range(n)]
        await asyncio.gather(*(mw.ahandle(r, call_next) for r in requests))
        c.close()
    return _rates(stamps, rps)


def _rates(stamps: list[float], rps: int) -> tuple[float, float]:
    """(most in any 1 s window, sustained rate): the sustained rate leaves out the initial burst
    (what went within 20 ms of the first: a whole window windowed, a few when smooth), since the
    limit allows that burst once and then paces."""
    stamps.sort()
    best, j = 0, 0
    for i, t in enumerate(stamps):
        while t - stamps[j] > 1.0:
            j += 1
        best = max(best, i - j + 1)
    burst = sum(1 for t in stamps if t - stamps[0] <= 0.02)
    sustained = (len(stamps) - burst) / (stamps[-1] - stamps[0]) if len(stamps) > burst else float("nan")
    return float(best), sustained


def _serve(ports: Any, times: Any, stop: Any) -> None:
    """The loopback server in its own process: its timestamps are not delayed by the client's GIL."""
    with FakeServer() as server:
        ports.put(server.port)
        stop.wait()
        times.put([r.time for r in server.requests if r.route == "chat" and r.json.get("model") == "gpt-4o"])


async def end_to_end(rps: int, n: int, smooth: bool = False) -> tuple[float, float, float]:
    ctx = multiprocessing.get_context("spawn")
    ports, times, stop = ctx.Queue(), ctx.Queue(), ctx.Event()
    proc = ctx.Process(target=_serve, args=(ports, times, stop))
    proc.start()
    port = ports.get(timeout=60)
    c = modelwire.Client(config={
        "middleware": ["ratelimit"],
        "providers": {"openai": {"api_base": f"http://127.0.0.1:{port}/v1"}},
        "ratelimit": {"limits": [{"match": "openai/gpt-4o", "rps": rps, "smooth": smooth}]},
    })
    await c.acomplete("warm", model="openai/warmup")
    start = time.monotonic()
    await asyncio.gather(*(c.acomplete(f"r{i}", model=MODEL) for i in range(n)))
    elapsed = time.monotonic() - start
    stop.set()
    arrivals = times.get(timeout=60)  # CLOCK_MONOTONIC is system-wide: comparable across processes
    proc.join(10)
    c.close()
    best, sustained = _rates(arrivals, rps)
    return best, sustained, elapsed


async def main() -> None:
    # the bench is an application: keep modelwire's per-request info events out of the timings
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    with FakeServer() as server:
        await overhead(server)
    estimators()
    print("3. throughput against a configured limit of 200 rps (windows of 1 s are enforced as 1.04 s: buffer_ms=40)")
    best, sustained = await limiter_alone(200, 1200, smooth=False)
    print(f"   limiter alone, smooth = false:  max {best:.0f} in any 1 s, sustained {sustained:.1f} rps")
    best, sustained = await limiter_alone(200, 1200, smooth=False, buffer_ms=0)
    print(f"   the same, buffer_ms = 0:        max {best:.0f} in any 1 s, sustained {sustained:.1f} rps")
    best, sustained = await limiter_alone(200, 1000, smooth=True)
    print(f"   limiter alone, smooth (default): max {best:.0f} in any 1 s, sustained {sustained:.1f} rps")
    print("   end to end via litellm (the server in its own process; arrival times at the server):")
    for smooth in (False, True):
        best, sustained, elapsed = await end_to_end(200, 1000, smooth=smooth)
        label = "smooth (default)" if smooth else "smooth = false  "
        print(f"     {label}: max {best:.0f} in any 1 s at the server, sustained {sustained:.1f} rps "
              f"({elapsed:.1f} s for 1000 calls)")

if __name__ == "__main__":
    asyncio.run(main())
