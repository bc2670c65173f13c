"""A 1,000-text embeddings call, 90% of it cached, through modelwire next to bare
``litellm.aembedding`` on the same texts, against the same loopback FakeServer in one run.

Each round embeds 900 texts seen before (interleaved with) 100 new ones, so modelwire's cache
answers 900 and sends 100 upstream in one request, while bare litellm sends all 1,000. A third
variant runs modelwire with the cache off (all 1,000 upstream, as 4 batches of 256 sent with
concurrency 4). Figures: p50 and mean per call after a warm-up, and the ratios.

    .venv/bin/python bench/bench_embeddings.py [ROUNDS]
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import statistics
import sys
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import structlog
from common import measure

import modelwire
from modelwire.testing import FakeServer

SEEN = [f"a document seen before, number {i}, with a few more words in it" for i in range(900)]
_fresh = itertools.count()


def batch() -> list[str]:
    """1,000 texts: the 900 seen ones with 100 never-seen ones spread among them."""
    out: list[str] = []
    for i, text in enumerate(SEEN):
        out.append(text)
        if i % 9 == 8:
            out.append(f"a new document, number {next(_fresh)}, never embedded before")
    return out


async def main(rounds: int) -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    import litellm

    with FakeServer() as server:
        os.environ["MODELWIRE_BENCH_KEY"] = "sk-bench-0000000000"
        providers = {"openai": {"api_base": server.openai_url, "api_key_env": "MODELWIRE_BENCH_KEY"}}
        cached = modelwire.Client(config={"middleware": ["cache", "retry", "ratelimit"], "providers": providers})
        uncached = modelwire.Client(config={"middleware": ["retry", "ratelimit"], "providers": providers})
        await cached.aembed(SEEN, model="openai/text-embedding-3-small")  # the 90% seen before
        model = "text-embedding-3-small"

        async def via_modelwire_cached() -> Any:
            result = await cached.aembed(batch(), model=f"openai/{model}")
            assert sum(result.from_cache) == 900 and len(result.vectors) == 1000
            return result

        async def via_modelwire_no_cache() -> Any:
            return await uncached.aembed(batch(), model=f"openai/{model}")

        async def via_litellm() -> Any:
            return await litellm.aembedding(
                model=f"openai/{model}", input=batch(), api_base=server.openai_url, api_key="sk-bench",
                num_retries=0, max_retries=0,
            )

        print(f"{rounds} sequential calls of 1,000 texts each (900 cached for modelwire), loopback FakeServer\n")
        server.reset()
        times = await measure(
            {
                "modelwire, cache on (90% hits)": via_modelwire_cached,
                "modelwire, cache off": via_modelwire_no_cache,
                "bare litellm.aembedding": via_litellm,
            },
            rounds,
        )
        p50 = {label: statistics.median(t) for label, t in times.items()}
        bare = p50["bare litellm.aembedding"]
        print()
        for label in ("modelwire, cache on (90% hits)", "modelwire, cache off"):
            print(f"  {label:<34} p50 ratio to bare litellm: {p50[label] / bare:.2f}")
        texts_up = [len(r.json["input"]) for r in server.requests if r.route == "embeddings"]
        print(f"\n  upstream requests during the timed run: {len(texts_up)}, texts sent: {sum(texts_up)}")
        await cached.aclose()
        await uncached.aclose()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 30))
