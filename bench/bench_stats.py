"""What the default-on ``stats`` and ``cost`` plugins cost per request, side by side with them off.

Two paths, variants interleaved call by call in one run (``common.measure``): a miss on the
in-process provider (no network: modelwire's own work per call, where a plugin's share is
largest after the hit) and a cache hit (memory backend). Turning them off is
``disable_plugins = ["modelwire.plugins.stats", "modelwire.plugins.cost"]``.

    .venv/bin/python bench/bench_stats.py [N]
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from common import InstantPlugin, measure

import modelwire

OFF = {
    "off": ["modelwire.plugins.stats", "modelwire.plugins.cost"],
    "stats": ["modelwire.plugins.cost"],
    "stats + cost (default)": [],
}


def clients(middleware: list[str]) -> dict[str, Any]:
    return {
        label: modelwire.Client(
            config={"middleware": middleware, "providers": {"instant": {"kind": "instant"}},
                    "cache": {"backend": "memory"}, "prices": {"instant/*": {"input": 1.0, "output": 2.0}},
                    "disable_plugins": disabled},
            plugins=(InstantPlugin(),),
        )
        for label, disabled in OFF.items()
    }


def calls(by_label: dict[str, Any], fresh: bool) -> dict[str, Callable[[], Awaitable[Any]]]:
    counter = iter(range(10**9))

    def make(client: Any) -> Callable[[], Awaitable[Any]]:
        async def call() -> Any:
            prompt = f"What is the capital of France? #{next(counter)}" if fresh else "What is the capital of France?"
            return await client.acomplete(prompt, model="instant/m")

        return call

    return {label: make(client) for label, client in by_label.items()}


def ratios(title: str, times: dict[str, list[float]]) -> None:
    off = statistics.median(times["off"])
    print(f"  {title}: p50 ratio to off")
    for label, t in times.items():
        p50 = statistics.median(t)
        print(f"    {label:<24} {p50 / off:6.3f}x   (+{(p50 - off) * 1e6:6.1f} us per call, p50 {p50 * 1e6:7.1f} us)")


async def main(n: int) -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    logging.getLogger("modelwire").setLevel(logging.WARNING)
    print(f"miss, in-process provider, {n} calls per variant")
    ratios("miss", await measure(calls(clients([]), fresh=True), n))
    print(f"cache hit (memory), {n} calls per variant")
    hits = calls(clients(["cache"]), fresh=False)
    for call in hits.values():
        await call()  # store the answer: every timed call is a hit
    ratios("cache hit", await measure(hits, n))


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 3000))
