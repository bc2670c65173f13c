"""``modelwire stats``: the counters of this configuration's shared store, or how to get them."""

from __future__ import annotations

import argparse
import json
from typing import Any

from .metrics import render

__all__ = ["format_stats", "run_command", "setup_command"]


def setup_command(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the whole snapshot as JSON")
    parser.add_argument("--reset", action="store_true", help="clear the shared counters (after printing them)")


def run_command(client: Any, args: argparse.Namespace) -> int:
    from . import recorder_of

    recorder = recorder_of(client)
    try:
        if recorder.store is None:
            print('stats are kept per process (backend = "memory"): call client.stats() in the process that '
                  'made the requests, or set [stats] backend = "sqlite" (path = ...) or "redis" (url = ...) '
                  "to add up every process here")
            return 0
        snapshot = render(recorder.store.read())
        print(json.dumps(snapshot, indent=2) if args.json else format_stats(snapshot))
        if args.reset:
            recorder.store.clear()
            print(f"cleared the shared counters ({recorder.store.name})")
        return 0
    finally:
        recorder.close()
        client.close()


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f} ms"


def _line(label: str, group: dict[str, Any]) -> list[str]:
    cache, limiter, tokens = group["cache"], group["limiter"], group["tokens"]
    errors = ", ".join(f"{k} {v}" for k, v in sorted(group["errors"].items())) or "none"
    return [
        f"{label}",
        f"  requests {group['requests']}  responses {group['responses']}  retries {group['retries']}  "
        f"fallbacks {group['fallbacks']}  circuit opens {group['circuit_opens']}  cancelled {group['cancelled']}",
        f"  errors: {errors}",
        f"  cache: hits {cache['hits']}  shared {cache['shared']}  misses {cache['misses']}  "
        f"saved ${cache['saved_cost']:.6f}",
        f"  limiter: waits {limiter['waits']} (total {limiter['wait_total']:.3f} s, p95 {_ms(limiter['wait_p95'])})  "
        f"rejections {limiter['rejections']}",
        f"  tokens: in {tokens['prompt']} (cached {tokens['cached_prompt']})  out {tokens['completion']} "
        f"(reasoning {tokens['reasoning']})  cost ${group['cost']:.6f}"
        + (f" ({group['cost_unknown']} responses without a price)" if group["cost_unknown"] else ""),
        f"  latency p50 {_ms(group['latency']['p50'])} p95 {_ms(group['latency']['p95'])}  "
        f"first token p50 {_ms(group['ttft']['p50'])} p95 {_ms(group['ttft']['p95'])}",
    ]


def format_stats(snapshot: dict[str, Any]) -> str:
    """The snapshot as text: the total, then one block per provider/model."""
    lines = _line("total", snapshot["total"])
    for target, group in snapshot["by_model"].items():
        lines += _line(target, group)
    return "\n".join(lines)
