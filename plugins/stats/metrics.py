"""The bounded structures behind ``client.stats()``: flat counters and log-bucket histograms.

Everything is a counter, histograms included (one counter per bucket), so a process can add its
deltas to a shared store and any process can read the total of all of them back: counts, sums
and percentiles alike. Memory is O(1) per (provider, model): a fixed set of counters and
``BUCKETS`` buckets per histogram, whatever the number of requests.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["BUCKETS", "HISTOGRAMS", "bucket_of", "percentile", "render"]

#: Histograms kept per group; values are seconds.
HISTOGRAMS = ("latency", "ttft", "limiter_wait")

# Bucket i holds values in [_LOW * _GROWTH**(i-1), _LOW * _GROWTH**i); bucket 0 everything below
# _LOW (0.1 ms). Growth 1.2 puts a percentile within 10 % of the true value (the bucket's
# geometric middle is reported) and 100 buckets reach ~8 hours.
_LOW = 1e-4
_GROWTH = 1.2
_LOG_GROWTH = math.log(_GROWTH)
BUCKETS = 100


def bucket_of(seconds: float) -> int:
    """The bucket index of ``seconds``.

    >>> bucket_of(0.00005), bucket_of(0.0001), bucket_of(1.0) == bucket_of(1.05)
    (0, 1, True)
    """
    if seconds < _LOW:
        return 0
    return min(BUCKETS - 1, 1 + int(math.log(seconds / _LOW) / _LOG_GROWTH))


def _middle(index: int) -> float:
    if index == 0:
        return _LOW / 2
    return float(_LOW * _GROWTH ** (index - 0.5))


def percentile(buckets: dict[int, float], q: float) -> float | None:
    """The ``q`` (0..1) percentile of a histogram given as ``{bucket: count}``, None when empty.

    >>> percentile({bucket_of(0.010): 95, bucket_of(2.0): 5}, 0.5) < 0.011
    True
    """
    total = sum(buckets.values())
    if total <= 0:
        return None
    rank = q * total
    seen = 0.0
    for index in sorted(buckets):
        seen += buckets[index]
        if seen >= rank and seen > 0:
            return _middle(index)
    return _middle(max(buckets))


def render(flat: dict[str, float]) -> dict[str, Any]:
    """Turn flat ``group|name`` counters into the nested snapshot ``client.stats()`` returns.

    Groups are ``total``, ``provider:<name>`` and ``model:<provider/model>``; names are dotted
    (``errors.RateLimitError``) and histogram buckets are ``h.<histogram>.<index>``.
    """
    groups: dict[str, dict[str, float]] = {}
    for key, value in flat.items():
        group, _, name = key.partition("|")
        groups.setdefault(group, {})[name] = value
    out: dict[str, Any] = {"total": _group(groups.pop("total", {})), "by_provider": {}, "by_model": {}}
    for group, values in sorted(groups.items()):
        kind, _, label = group.partition(":")
        section = "by_provider" if kind == "provider" else "by_model"
        out[section][label] = _group(values)
    return out


#: Sums that stay floats when they happen to be whole (USD, seconds).
_FLOATS = frozenset({"cost", "cache.saved_cost", "limiter.wait_total"})


def _num(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value


def _group(values: dict[str, float]) -> dict[str, Any]:
    hist: dict[str, dict[int, float]] = {name: {} for name in HISTOGRAMS}
    out: dict[str, Any] = {
        "requests": 0, "responses": 0, "errors": {}, "cancelled": 0, "retries": 0, "fallbacks": 0,
        "circuit_opens": 0, "streams": {},
        "cache": {"hits": 0, "misses": 0, "shared": 0, "saved_cost": 0.0},
        "limiter": {"waits": 0, "wait_total": 0.0, "wait_p95": None, "rejections": 0},
        "tokens": {"prompt": 0, "completion": 0, "cached_prompt": 0, "reasoning": 0},
        "cost": 0.0, "cost_unknown": 0,
        "latency": {"count": 0, "p50": None, "p95": None},
        "ttft": {"count": 0, "p50": None, "p95": None},
    }
    for name, value in values.items():
        if name.startswith("h."):
            _, which, index = name.split(".")
            if which in hist and value:
                hist[which][int(index)] = value
            continue
        shown = float(value) if name in _FLOATS else _num(value)
        head, _, tail = name.partition(".")
        if tail and isinstance(out.get(head), dict):
            out[head][tail] = shown
        else:
            out[name] = shown
    out["limiter"]["wait_p95"] = percentile(hist["limiter_wait"], 0.95)
    for which in ("latency", "ttft"):
        out[which] = {
            "count": _num(sum(hist[which].values())),
            "p50": percentile(hist[which], 0.5),
            "p95": percentile(hist[which], 0.95),
        }
    return out
