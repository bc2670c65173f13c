"""What the ``budget`` middleware costs per request on the miss path, side by side with it off.

Each variant is a client with the same in-process provider (no network: the figure is
modelwire's own work) and a cap far above what the run spends; variants are interleaved call by
call in one run (``common.measure``). The SQLite and Redis stores reserve and settle in a worker
thread (two thread hops and two store round trips per request); Redis is a real redis-server
started for the run. A cache hit never reaches the budget (it sits after the cache), so the hit
path is not measured here: see bench_cache.py.

    .venv/bin/python bench/bench_budget.py [N]
"""

from __future__ import annotations

import asyncio
import logging
import os
import statistics
import sys
import tempfile
from collections.abc import Awaitable, Callable
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import structlog
from common import InstantPlugin, measure

import modelwire
from modelwire.testing import RedisServer

MESSAGES = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
TOKENS = [{"match": "instant/*", "tokens": 10**12, "period": "day"}]
USD = [{"match": "instant/*", "usd": 10.0**9, "period": "month"}]


def clients(tmp: str, redis_url: str | None) -> dict[str, modelwire.Client]:
    base: dict[str, Any] = {"providers": {"instant": {"kind": "instant"}},
                            "prices": {"instant/*": {"input": 1.0, "output": 2.0}}}
    shapes: dict[str, dict[str, Any] | None] = {
        "off": None,
        "memory, tokens": {"limits": TOKENS},
        "memory, usd": {"limits": USD},
        "memory, usd + tokens/ns": {"limits": [*USD, {**TOKENS[0], "scope": "namespace"}]},
        "sqlite, usd": {"backend": "sqlite", "path": os.path.join(tmp, "budget.sqlite"), "limits": USD},
    }
    if redis_url is not None:
        shapes["redis, usd"] = {"backend": "redis", "url": redis_url, "key_prefix": "bench:budget:", "limits": USD}
    made = {}
    for label, section in shapes.items():
        config = {**base, "middleware": [] if section is None else ["budget"]}
        if section is not None:
            config["budget"] = section
        made[label] = modelwire.Client(config=config, plugins=(InstantPlugin(),))
    return made


def calls(made: dict[str, modelwire.Client]) -> dict[str, Callable[[], Awaitable[Any]]]:
    def make(client: modelwire.Client) -> Callable[[], Awaitable[Any]]:
        async def call() -> Any:
            return await client.acomplete(MESSAGES, model="instant/m", max_tokens=16)

        return call

    return {label: make(client) for label, client in made.items()}


async def main(n: int) -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    logging.getLogger("modelwire").setLevel(logging.WARNING)
    try:
        redis: RedisServer | None = RedisServer().start()
    except FileNotFoundError:
        redis = None
    try:
        with tempfile.TemporaryDirectory() as tmp:
            print(f"miss, in-process provider, {n} calls per variant")
            times = await measure(calls(clients(tmp, redis.url if redis else None)), n)
            off = statistics.median(times["off"])
            print("  p50 ratio to off")
            for label, t in times.items():
                p50 = statistics.median(t)
                print(f"    {label:<26} {p50 / off:6.2f}x   (+{(p50 - off) * 1e6:7.1f} us per call)")
    finally:
        if redis is not None:
            redis.stop()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 2000))
