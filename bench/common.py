"""Pieces the benchmarks share: interleaved timing and an in-process provider."""

from __future__ import annotations

import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import modelwire

__all__ = ["Instant", "InstantPlugin", "measure"]


async def measure(variants: dict[str, Callable[[], Awaitable[Any]]], n: int) -> dict[str, list[float]]:
    """Interleave the variants call by call, so that load changes on the machine hit all alike;
    print p50 and mean of each after 20 warm-up rounds."""
    times: dict[str, list[float]] = {label: [] for label in variants}
    for i in range(n + 20):
        for label, call in variants.items():
            start = time.perf_counter()
            await call()
            if i >= 20:
                times[label].append(time.perf_counter() - start)
    for label, t in times.items():
        print(f"  {label:<34} p50 {statistics.median(t) * 1e3:8.3f} ms   mean {statistics.fmean(t) * 1e3:8.3f} ms")
    return times


class Instant(modelwire.Provider):
    """Answers in-process, so that what is timed is modelwire's own per-call work."""

    async def acomplete(self, request: modelwire.Request) -> modelwire.Completion:
        return modelwire.Completion("hi", "stop", request.model, self.name)


class InstantPlugin:
    """Registers :class:`Instant` as the provider kind ``instant``."""

    @modelwire.hookimpl
    def modelwire_register_providers(self, register: Any) -> None:
        register("instant", Instant)
