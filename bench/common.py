"""Pieces the benchmarks share: interleaved timing and an in-process provider."""

from __future__ import annotations

import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import modelwire

__all__ = ["Instant", "InstantPlugin", "measure", "percentile", "sample"]


async def sample(
    variants: dict[str, Callable[[], Awaitable[Any]]], n: int, warmup: int = 20, cpu: bool = False
) -> dict[str, list[float]]:
    """Interleave the variants call by call, so that load changes on the machine hit all alike;
    return the seconds of each call after ``warmup`` rounds (with ``cpu``, also ``"<label> cpu"``:
    this process's CPU seconds per call, worker threads included)."""
    times: dict[str, list[float]] = {label: [] for label in variants}
    if cpu:
        times.update({f"{label} cpu": [] for label in variants})
    for i in range(n + warmup):
        for label, call in variants.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            await call()
            if i >= warmup:
                times[label].append(time.perf_counter() - start)
                if cpu:
                    times[f"{label} cpu"].append(time.process_time() - start_cpu)
    return times


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values`` by nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def measure(variants: dict[str, Callable[[], Awaitable[Any]]], n: int) -> dict[str, list[float]]:
    """:func:`sample` with 20 warm-up rounds, then print p50 and mean of each variant."""
    times = await sample(variants, n)
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
