"""Rows 3, 8 and the direct-transport rows: calls that reach the loopback server.

The server runs in its own process (``bench_stream.start_server``), so that its work neither
shares this process's GIL nor counts in its CPU time. Every variant sends prompts of the same
length, unique per call, so that the cache (on in the default chain) never answers.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import modelwire
from bench.common import sample
from bench.report import Budget, Row, na_row

__all__ = ["UNLIMITED", "call_rows", "limiter_rows", "local_client"]

#: Limits that are checked on every call and never make one wait.
UNLIMITED = {"match": "local/*", "rps": 1_000_000, "tpm": 1_000_000_000, "concurrency": 10_000}
API_KEY = "sk-bench-0123456789abcdef"


def local_client(base: str, middleware: list[str] | None = None, **provider: Any) -> modelwire.Client:
    """A client of the loopback server as provider ``local``; ``middleware`` None is the default chain."""
    config: dict[str, Any] = {
        "providers": {"local": {"kind": "openai_compatible", "api_base": base, **provider}},
        "ratelimit": {"limits": [UNLIMITED]},
    }
    if middleware is not None:
        config["middleware"] = middleware
    return modelwire.Client(config=config)


def direct_client(base: str) -> modelwire.Client | str:
    """The default chain over ``transport = "direct"``, or why it is not available."""
    try:
        return local_client(base, transport="direct")
    except modelwire.errors.ConfigurationError as exc:
        return f"not available: {type(exc).__name__}"


class Prompts:
    """Unique prompts of one length: a call never hits the cache and every variant sends as much."""

    def __init__(self) -> None:
        self.n = 0

    def __call__(self) -> list[dict[str, str]]:
        self.n += 1
        return [{"role": "user", "content": f"Say hi in five words. #{self.n:08d}"}]


def _variants(base: str, direct: modelwire.Client | None) -> tuple[dict[str, Callable[[], Awaitable[Any]]], Any]:
    import litellm
    import openai

    litellm.suppress_debug_info = True
    prompts = Prompts()
    client = local_client(base)
    sdk = openai.AsyncOpenAI(base_url=base, api_key=API_KEY, max_retries=0)
    variants: dict[str, Callable[[], Awaitable[Any]]] = {
        "modelwire": lambda: client.acomplete(prompts(), model="local/m"),
        "litellm": lambda: litellm.acompletion(model="openai/m", messages=prompts(), api_base=base, api_key=API_KEY,
                                               num_retries=0, max_retries=0),
        "sdk": lambda: sdk.chat.completions.create(model="m", messages=prompts()),  # type: ignore[arg-type]
    }
    if direct is not None:
        variants["direct"] = lambda: direct.acomplete(prompts(), model="local/m")

    async def close() -> None:
        await client.aclose()
        await sdk.close()
        if direct is not None:
            await direct.aclose()

    return variants, close


async def _concurrent(variants: dict[str, Callable[[], Awaitable[Any]]], width: int, rounds: int) -> dict[str, float]:
    """Median calls per second over ``rounds`` of ``width`` concurrent calls, variants alternating."""
    rates: dict[str, list[float]] = {label: [] for label in variants}
    for i in range(rounds + 1):
        for label, call in variants.items():
            start = time.perf_counter()
            await asyncio.gather(*(call() for _ in range(width)))
            if i:  # the first round opens the connection pools
                rates[label].append(width / (time.perf_counter() - start))
    return {label: statistics.median(r) for label, r in rates.items()}


async def _calls(base: str, n: int, rounds: int) -> list[Row]:
    direct = direct_client(base)
    variants, close = _variants(base, direct if isinstance(direct, modelwire.Client) else None)
    try:
        times = await sample(variants, n, cpu=True)
        rps = await _concurrent(variants, 50, rounds)
    finally:
        await close()
    p50 = {label: statistics.median(t) for label, t in times.items()}
    note = f"p50 of {n} interleaved calls"
    rows = [
        Row("3a", "miss path, default chain (cache, retry, ratelimit), sequential: p50 latency", p50["modelwire"],
            p50["litellm"], "ms", "bare litellm.acompletion", Budget("<=", 1.02), note=note),
        Row("3b", "miss path, default chain: CPU per call in this process", p50["modelwire cpu"], p50["litellm cpu"],
            "ms", "bare litellm.acompletion", Budget("<=", 1.02), note=note),
        Row("3c", "miss path, default chain: 50 concurrent calls, throughput", rps["modelwire"], rps["litellm"], "rps",
            "bare litellm.acompletion", Budget(">=", 1 / 1.02), note=f"median of {rounds} rounds"),
        Row("3d", "reference figures: openai SDK p50 and throughput (litellm / SDK ratio)", p50["litellm"], p50["sdk"],
            "ms", "AsyncOpenAI", None, note=f"SDK 50 concurrent: {rps['sdk']:.0f} rps"),
    ]
    what_d1 = 'miss path p50, default chain over transport = "direct"'
    what_d2 = 'transport = "direct": 50 concurrent calls, throughput'
    if isinstance(direct, str):
        rows += [na_row("D1", what_d1, direct, Budget("<=", 1.3)), na_row("D2", what_d2, direct, Budget(">=", 1.5))]
    else:
        rows += [
            Row("D1", what_d1, p50["direct"], p50["sdk"], "ms", "openai SDK AsyncOpenAI", Budget("<=", 1.3),
                note=note),
            Row("D2", what_d2, rps["direct"], rps["litellm"], "rps", "bare litellm.acompletion", Budget(">=", 1.5),
                note=f"median of {rounds} rounds"),
        ]
    return rows


def call_rows(base: str, n: int, rounds: int) -> list[Row]:
    return asyncio.run(_calls(base, n, rounds))


async def _overhead(base: str, n: int) -> Row:
    prompts = Prompts()
    off, on = local_client(base, []), local_client(base, ["ratelimit"])
    try:
        times = await sample({"off": lambda: off.acomplete(prompts(), model="local/m"),
                              "on": lambda: on.acomplete(prompts(), model="local/m")}, n)
    finally:
        await off.aclose()
        await on.aclose()
    return Row("8a", "limiter on, never waiting (rps + tpm + concurrency): p50 per call",
               statistics.median(times["on"]), statistics.median(times["off"]), "ms", "the same chain without it",
               Budget("<=", 1.05), note=f"p50 of {n} interleaved calls")


def limiter_rows(base: str, n: int, calls: int) -> list[Row]:
    """Row 8: the limiter's overhead when it never waits (real calls), and how close it runs to a
    200 rps limit as shipped (smooth). Accuracy is taken at the limiter itself (``bench_ratelimit.
    limiter_alone``: its ``ahandle`` around a call that returns at once): end to end, one client
    process tops out at litellm's own rate (row 3c), below 200 rps on a busy 2-core machine."""
    from bench.bench_ratelimit import limiter_alone

    rows = [asyncio.run(_overhead(base, n))]
    start = time.perf_counter()
    best, sustained = asyncio.run(limiter_alone(200, calls, smooth=True))
    note = f"{calls} calls in {time.perf_counter() - start:.1f} s, limiter alone, initial burst left out"
    rows += [
        Row("8b", "limit 200 rps: sustained rate achieved", sustained, 200.0, "rps", "configured",
            Budget("in", (0.95, 1.0)), note=note),
        Row("8c", "limit 200 rps: most calls let through in any 1 s window", best, 200.0, "calls", "configured",
            Budget("<=", 1.0)),
    ]
    return rows
