"""``modelwire cache stats|clear`` and the cache step of ``modelwire demo``."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

__all__ = ["demo_step", "run_command", "setup_command"]


def setup_command(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="cache_command", required=True)
    sub.add_parser("stats", help="hits, misses, stores, skipped stores, errors, bytes, entries")
    clear = sub.add_parser("clear", help="delete cached entries (all, or one namespace)")
    clear.add_argument("--namespace", help="only this namespace (e.g. 'openai-1a2b3c4d5e6f7a8b' or your own)")


def run_command(client: Any, args: argparse.Namespace) -> int:
    from modelwire import portal

    from . import cache_of

    cache = cache_of(client)
    standalone = cache not in client.middleware
    try:
        if args.cache_command == "stats":
            stats = cache.stats()
            print(json.dumps(stats, indent=2))
            if stats["backend"] == "memory":
                print("(memory backend: counters are per process; use backend = \"file\" or \"redis\" "
                      "to see every process's counters here)")
            return 0
        count = cache.clear(args.namespace)
        where = f"namespace {args.namespace!r}" if args.namespace else "all namespaces"
        print(f"deleted {count} entries ({where}) from the {cache.config.backend} cache")
        return 0
    finally:
        if standalone:
            portal.run(cache.aclose())
        client.close()


def demo_step(client: Any, server: Any, echo: Callable[[str], None]) -> None:
    """Ask the same question twice: the second answer comes from the cache."""
    from modelwire.client import Client
    from modelwire.demo import demo_config

    from . import cache_of

    own = "cache" not in client.config.middleware
    if own:
        client = Client(config={**demo_config(server, middleware=["cache"]), "cache": {"backend": "memory"}})
    cache = cache_of(client)
    prompt = "What is the capital of France?"
    before = server.calls()
    timings = []
    for _ in range(2):
        start = time.perf_counter()
        response = client.complete(prompt, model="local/llama3", temperature=0)
        timings.append((time.perf_counter() - start) * 1000)
        echo(f"   {'cache hit ' if response.cached else 'from server'} {timings[-1]:8.3f} ms  -> {response.text!r}")
    saved = timings[0] - timings[1]
    echo(f"   upstream calls: {server.calls() - before}; the repeat saved {saved:.1f} ms "
         f"({timings[0] / max(timings[1], 1e-6):.0f}x faster)")
    echo(f"   cache stats: hits={cache.metrics.hits} misses={cache.metrics.misses} stores={cache.metrics.stores}")
    if own:
        client.close()
