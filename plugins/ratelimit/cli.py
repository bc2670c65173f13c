"""``modelwire limits``: the configured limits and what the backend counts right now."""

from __future__ import annotations

import argparse
import json
from typing import Any

from pyrate_limiter import Duration

from modelwire import portal

from .backends import BackendUnavailable
from .config import nominal_interval

__all__ = ["collect", "show_limits"]


async def collect(middleware: Any) -> dict[str, Any]:
    """Limits, buckets with their usage per window and cooldowns, and the counters."""
    engine = middleware.engine
    backend = engine.backend
    buffer = middleware.config.buffer_ms
    report: dict[str, Any] = {
        "backend": backend.name,
        "limits": [rule.model_dump(exclude_none=True) for rule in middleware.config.limits],
        "buckets": [],
        "counters": middleware.describe(),
    }
    try:
        for bucket_id in await backend.bucket_ids():
            key, _, kind = bucket_id.rpartition("|")
            usage = await backend.usage(bucket_id)
            report["buckets"].append(
                {
                    "key": key,
                    "kind": "tokens (units)" if kind == "tok" else "requests",
                    "windows": [
                        {"limit": rate.limit, "per": Duration.readable(nominal_interval(rate.interval, buffer)),
                         "used": used}
                        for rate, used in usage
                    ],
                    "cooldown_s": round(await backend.cooldown(key), 3),
                }
            )
    except BackendUnavailable as exc:
        report["error"] = str(exc)
    return report


def show_limits(client: Any, args: argparse.Namespace) -> int:
    """Print the report; exit code 1 when ratelimit is not enabled or the backend is down."""
    middleware = next((mw for mw in client.middleware if type(mw).__name__ == "RateLimitMiddleware"), None)
    if middleware is None:
        print("ratelimit is not enabled: add \"ratelimit\" to the middleware list and a [ratelimit] section")
        return 1
    report = portal.run(collect(middleware))
    if getattr(args, "json", False):
        print(json.dumps(report, indent=2, default=str))
        return 1 if "error" in report else 0
    print(f"backend: {report['backend']}")
    print("limits (first match wins):")
    for rule in report["limits"]:
        shown = ", ".join(f"{k}={v}" for k, v in rule.items() if k != "match")
        print(f"  {rule['match']:<24} {shown}")
    if not report["limits"]:
        print("  (none configured)")
    print("current usage:")
    if report["backend"] == "memory":
        print("  (memory backend: counts live in each process; this command sees only its own)")
    for bucket in report["buckets"]:
        windows = ", ".join(f"{w['used']}/{w['limit']} per {w['per']}" for w in bucket["windows"])
        cooling = f", cooling down {bucket['cooldown_s']:.1f} s" if bucket["cooldown_s"] else ""
        print(f"  {bucket['key']:<24} {bucket['kind']:<15} {windows}{cooling}")
    if "error" in report:
        print(f"  backend unavailable: {report['error']}")
        return 1
    return 0
