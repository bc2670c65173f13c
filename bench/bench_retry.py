"""What retry, circuit and fallback cost on the success path, and what a retried call costs.

1. Success path over loopback HTTP: bare litellm, modelwire with no middleware, and modelwire with
   ``fallback, retry, circuit`` (fallback chain configured, retry with a deadline and an attempt
   timeout, so every timer is armed), interleaved call by call; p50 ratios.
2. The same three middleware around an in-process provider: their own per-call work in us.
3. A 500-then-200 retry with the backoff sleep replaced by a no-op, next to bare litellm doing the
   same two calls by hand (litellm's own error path costs ~5 ms; what is left is ours).

    .venv/bin/python bench/bench_retry.py [N]
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
from modelwire.plugins.retry import RetryMiddleware
from modelwire.testing import FakeServer, Reply

MESSAGES = [{"role": "user", "content": "Say hi in five words."}]
RELIABLE = ["fallback", "retry", "circuit"]
SECTIONS: dict[str, Any] = {
    "retry": {"max_attempts": 3, "deadline": 30, "attempt_timeout": 10},
    "circuit": {"failure_threshold": 5},
    "fallback": {"chains": {"local/m": ["backup/m"]}},
}
p50 = statistics.median


def config(server: FakeServer, middleware: list[str]) -> dict[str, Any]:
    providers = {name: {"kind": "openai_compatible", "api_base": server.openai_url} for name in ("local", "backup")}
    return {"middleware": middleware, "providers": providers, **SECTIONS}


async def http_success(n: int) -> None:
    import litellm

    with FakeServer() as server:
        bare = modelwire.Client(config=config(server, []))
        reliable = modelwire.Client(config=config(server, RELIABLE))

        async def via_litellm() -> Any:
            return await litellm.acompletion(model="openai/m", messages=MESSAGES, api_base=server.openai_url,
                                             api_key="sk-bench", num_retries=0, max_retries=0)

        print(f"1. success path, {n} sequential calls each, loopback FakeServer")
        times = await measure(
            {
                "bare litellm.acompletion": via_litellm,
                "modelwire, no middleware": lambda: bare.acomplete(MESSAGES, model="local/m"),
                "modelwire + fallback,retry,circuit": lambda: reliable.acomplete(MESSAGES, model="local/m"),
            },
            n,
        )
        ll, none, rel = times.values()
        print(f"  modelwire+reliability / litellm       p50 ratio {p50(rel) / p50(ll):.3f}")
        print(f"  modelwire+reliability / no middleware p50 ratio {p50(rel) / p50(none):.3f} "
              f"({1e3 * (p50(rel) - p50(none)):+.3f} ms)")


async def in_process(n: int) -> None:
    providers = {"local": {"kind": "instant"}, "backup": {"kind": "instant"}}
    bare = modelwire.Client(config={"middleware": [], "providers": providers}, plugins=[InstantPlugin()])
    reliable = modelwire.Client(config={"middleware": RELIABLE, "providers": providers, **SECTIONS},
                                plugins=[InstantPlugin()])
    print(f"\n2. in-process provider, {n} calls each: the middleware's own work")
    times = await measure(
        {
            "no middleware": lambda: bare.acomplete(MESSAGES, model="local/m"),
            "fallback,retry,circuit": lambda: reliable.acomplete(MESSAGES, model="local/m"),
        },
        n,
    )
    none, rel = times.values()
    print(f"  fallback+retry+circuit add {1e6 * (p50(rel) - p50(none)):.1f} us per call (p50)")


async def one_retry(n: int) -> None:
    async def no_sleep(_: float) -> None:
        return None

    with FakeServer() as server:
        client = modelwire.Client(config=config(server, ["retry"]))
        next(m for m in client.middleware if isinstance(m, RetryMiddleware)).sleep = no_sleep

        async def retried() -> Any:
            server.script(Reply.error(500), Reply.completion("ok"))
            return await client.acomplete(MESSAGES, model="local/m")

        async def bare_pair() -> Any:
            import litellm

            args: dict[str, Any] = {"model": "openai/m", "messages": MESSAGES, "api_base": server.openai_url,
                                    "api_key": "sk-bench", "num_retries": 0, "max_retries": 0}
            server.script(Reply.error(500))
            try:
                await litellm.acompletion(**args)
            except Exception:
                pass
            return await litellm.acompletion(**args)

        print(f"\n3. a 500 then a 200 (backoff sleep replaced by a no-op), {n} calls each")
        times = await measure({"modelwire retry: 500 then 200": retried, "bare litellm: 500, then 200": bare_pair}, n)
        once, bare = times.values()
        print(f"  modelwire retry / bare litellm pair  p50 ratio {p50(once) / p50(bare):.3f} "
              f"({1e3 * (p50(once) - p50(bare)):+.3f} ms: error mapping, decision, failure log)")


async def main(n: int) -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    await http_success(n)
    await in_process(n * 10)
    await one_retry(max(n // 3, 50))


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 300))
