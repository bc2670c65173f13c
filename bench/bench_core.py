"""Per-call cost of modelwire's core (no middleware) next to bare litellm and the openai SDK.

All three talk to the same loopback FakeServer in one run; the figures are per-call latencies
(p50 and mean over N sequential calls after a warm-up) and modelwire's ratio to each.

    .venv/bin/python bench/bench_core.py [N]
"""

from __future__ import annotations

import asyncio
import logging
import os
import statistics
import sys
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import structlog
from common import InstantPlugin, measure

import modelwire
from modelwire.testing import FakeServer

MESSAGES = [{"role": "user", "content": "Say hi in five words."}]


async def main(n: int) -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    import litellm
    import openai

    with FakeServer() as server:
        client = modelwire.Client(
            config={
                "middleware": [],
                "providers": {"local": {"kind": "openai_compatible", "api_base": server.openai_url}},
            }
        )
        sdk = openai.AsyncOpenAI(base_url=server.openai_url, api_key="sk-bench", max_retries=0)

        async def via_modelwire() -> Any:
            return await client.acomplete(MESSAGES, model="local/m")

        async def via_litellm() -> Any:
            return await litellm.acompletion(
                model="openai/m",
                messages=MESSAGES,
                api_base=server.openai_url,
                api_key="sk-bench",
                num_retries=0,
                max_retries=0,
            )

        async def via_sdk() -> Any:
            return await sdk.chat.completions.create(model="m", messages=MESSAGES)  # type: ignore[arg-type]

        print(f"{n} sequential calls each, loopback FakeServer\n")
        times = await measure(
            {
                "modelwire Client.acomplete": via_modelwire,
                "bare litellm.acompletion": via_litellm,
                "openai SDK (AsyncOpenAI)": via_sdk,
            },
            n,
        )
        mw, ll, oa = times.values()
        p50 = statistics.median
        print(
            f"\nmodelwire / litellm   p50 ratio {p50(mw) / p50(ll):.3f}  (overhead {1e3 * (p50(mw) - p50(ll)):+.3f} ms)"
        )
        print(f"modelwire / openai    p50 ratio {p50(mw) / p50(oa):.3f}")
        print(f"litellm   / openai    p50 ratio {p50(ll) / p50(oa):.3f}")
    await pipeline_only(n * 10)


async def pipeline_only(n: int) -> None:
    client = modelwire.Client(
        config={"middleware": [], "providers": {"x": {"kind": "instant"}}}, plugins=[InstantPlugin()]
    )
    times = await measure({"core pipeline, no network": lambda: client.acomplete(MESSAGES, model="x/m")}, n)
    p50 = statistics.median(next(iter(times.values())))
    print(f"modelwire's own per-call work: {p50 * 1e6:.1f} us p50 (validation, hooks, chain, logging event)")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 300))
