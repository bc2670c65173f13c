"""Row 9: what modelwire's own per-call work costs as the prompt grows from 1 KB to 1 MB.

modelwire's figure is a memory-cache hit through the default chain with an in-process provider:
exactly validation, the size check, the cache key and the lookup, nothing else. litellm's is the
CPU time this process spends in one ``litellm.acompletion`` of the same messages to the loopback
server in its own process (its request building, encoding and response parsing). The prompt sits
in a system message and the user message is short, so the echoed answer stays small on both sides.
"""

from __future__ import annotations

import asyncio
import statistics
from typing import Any

import modelwire
from bench.common import InstantPlugin, sample
from bench.report import Budget, Row

__all__ = ["SIZES", "scaling_rows"]

#: Prompt sizes in bytes, and how many calls each (scaled down by --quick).
SIZES = [(1_000, 200), (10_000, 200), (100_000, 60), (1_000_000, 20)]


def _messages(size: int) -> list[dict[str, str]]:
    words = "The quick brown fox jumps over the lazy dog. "
    return [{"role": "system", "content": (words * (size // len(words) + 1))[:size]},
            {"role": "user", "content": "Say hi."}]


def _label(size: int) -> str:
    return f"{size // 1_000_000} MB" if size >= 1_000_000 else f"{size // 1000} KB"


async def _scaling(base: str, scale: float) -> list[Row]:
    import litellm

    from bench.rows_calls import API_KEY

    litellm.suppress_debug_info = True
    client = modelwire.Client(config={"providers": {"x": {"kind": "instant"}}}, plugins=[InstantPlugin()])
    own: dict[int, float] = {}
    rows: list[Row] = []
    try:
        for size, n in SIZES:
            n = max(5, int(n * scale))
            messages = _messages(size)
            await client.acomplete(messages, model="x/m")  # stored: every timed call is a hit

            async def hit(messages: list[dict[str, Any]] = messages) -> None:
                if not (await client.acomplete(messages, model="x/m")).cached:
                    raise AssertionError("the memory cache did not answer")

            async def bare(messages: list[dict[str, Any]] = messages) -> None:
                await litellm.acompletion(model="openai/m", messages=messages, api_base=base, api_key=API_KEY,
                                          num_retries=0, max_retries=0)

            times = await sample({"modelwire": hit, "litellm": bare}, n, warmup=3, cpu=True)
            own[size] = statistics.median(times["modelwire cpu"])
            rows.append(Row(f"9{'abcd'[len(rows)]}", f"{_label(size)} prompt: modelwire's own work per call (CPU)",
                            own[size], statistics.median(times["litellm cpu"]), "ms",
                            "litellm's CPU per acompletion", Budget("<=", 0.25), note=f"p50 of {n}"))
    finally:
        await client.aclose()
    growth = (own[1_000_000] / own[100_000]) / 10
    rows.append(Row("9e", "linearity: modelwire's cost per byte at 1 MB / at 100 KB", growth, None, "", "1 = linear",
                    Budget("<=", 1.5), ratio=growth))
    return rows


def scaling_rows(base: str, scale: float) -> list[Row]:
    return asyncio.run(_scaling(base, scale))
