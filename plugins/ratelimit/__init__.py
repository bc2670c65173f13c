"""The ``ratelimit`` middleware: keep each provider, model or key inside its quota, so that the
application sees waiting instead of 429s.

Configure limits in ``[ratelimit]`` (see docs/ratelimit.md)::

    middleware = ["cache", "retry", "ratelimit"]
    [ratelimit]
    backend = "memory"
    limits = [{ match = "openai/*", rps = 10, rpm = 500, tpm = 200000, concurrency = 50 }]

Per call, ``options={"ratelimit": {"max_wait": 2.0}}`` shortens (or lengthens) the queue
deadline. The middleware sits inside retry (every attempt takes a permit) and inside the cache
(a hit takes none).
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from modelwire.hookspecs import hookimpl
from modelwire.lazy import lazy_attributes
from modelwire.types import Request

if TYPE_CHECKING:
    from modelwire.middleware import Middleware

    from .config import RateLimitConfig
    from .middleware import ON_ADMITTED, ON_QUEUED, ON_SEND, RESPONSE_HEADERS, RateLimitMiddleware

__all__ = ["ON_ADMITTED", "ON_QUEUED", "ON_SEND", "RESPONSE_HEADERS", "RateLimitConfig", "RateLimitMiddleware"]

# The middleware and its config import pydantic and pyrate-limiter: loaded when a client registers
# the middleware (or a user imports them), not when ``modelwire --help`` loads the plugin.
__getattr__ = lazy_attributes(__name__, {
    "RateLimitConfig": ".config", "RateLimitMiddleware": ".middleware", "ON_ADMITTED": ".middleware",
    "ON_QUEUED": ".middleware", "ON_SEND": ".middleware", "RESPONSE_HEADERS": ".middleware",
})


# -- plugin hooks ------------------------------------------------------------------------------


@hookimpl
def modelwire_register_middleware(register: Callable[[str, type[Middleware]], None]) -> None:
    from .middleware import RateLimitMiddleware

    register("ratelimit", RateLimitMiddleware)


@hookimpl
def modelwire_register_commands(register: Callable[..., None]) -> None:
    register("limits", "configured rate limits and their current usage", _setup_limits, _run_limits)


@hookimpl
def modelwire_register_demo_steps(register: Callable[[str, Callable[..., Any]], None]) -> None:
    register("Rate limiting: a burst of 8 requests paced to 4 per second", _demo_step)


def _setup_limits(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _run_limits(client: Any, args: argparse.Namespace) -> int:
    from .cli import show_limits

    return show_limits(client, args)


def _demo_step(client: Any, server: Any, echo: Callable[[str], None]) -> None:
    from modelwire import portal
    from modelwire.client import Client
    from modelwire.demo import demo_config

    config = demo_config(server, middleware=["ratelimit"])
    config["ratelimit"] = {"limits": [{"match": "local/llama3", "rps": 4}]}
    waits: dict[str, float] = {}

    class WaitRecorder:
        @hookimpl
        def modelwire_response_received(self, request: Request) -> None:
            waits[request.messages[-1]["content"]] = request.state.get("log", {}).get("limiter_wait_ms", 0.0)

    limited = Client(config=config, plugins=[WaitRecorder()])
    limited.complete("warm up", model="local/warmup")  # not limited: litellm's first-call cost stays out
    seen = len(server.requests)

    async def burst() -> None:
        await asyncio.gather(*(limited.acomplete(f"burst request {i}", model="local/llama3") for i in range(1, 9)))

    portal.run(burst())
    arrivals = [r for r in server.requests[seen:] if r.route == "chat"]
    for r in arrivals:
        prompt = r.json["messages"][-1]["content"]
        at = r.time - arrivals[0].time
        echo(f"   {prompt}: waited {waits[prompt]:6.0f} ms, reached the server at +{at:.2f} s")
    stats = limited.middleware[0].describe()
    summary = f"{stats['waits']} of 8 waited ({stats['wait_seconds']:.1f} s in all)"
    echo(f"   {summary}: 8 calls at once, at most 4 per second reached the server")
    limited.close()
