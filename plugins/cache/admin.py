"""What an operator does with a cache: delete one entry, clear a namespace, read the counters.

A mixin of :class:`~.middleware.CacheMiddleware` (it uses the middleware's store, config,
counters and keys); the async methods have blocking twins for scripts and the CLI.
"""

from __future__ import annotations

from typing import Any

from modelwire import portal
from modelwire.errors import ModelwireError
from modelwire.types import Request

from .config import CacheConfig, CacheOptions, check_namespace
from .store import CacheMetrics, Store

__all__ = ["CacheAdmin", "CacheError"]


class CacheError(ModelwireError):
    """An explicit cache operation (clear, invalidate, stats) could not reach the backend."""


class CacheAdmin:
    """Invalidation and statistics; see docs/cache.md, "Metrics and invalidation"."""

    store: Store
    config: CacheConfig
    metrics: CacheMetrics

    # provided by the middleware (declared here so that the mixin type-checks on its own)
    def options(self, request: Request) -> CacheOptions:
        raise NotImplementedError

    def key_for(self, request: Request, options: CacheOptions = ...) -> str:
        raise NotImplementedError

    async def ainvalidate(self, request: Request) -> bool:
        """Delete the entry ``request`` would hit (build it with ``client.request(...)``)."""
        key = self.key_for(request, self.options(request))
        if self.store.failed(await self.store.call("delete", self.store.backend.delete, key, timeout=5.0)):
            raise CacheError(f"could not delete the cache entry from the {self.store.backend.name} backend")
        return True

    async def aclear(self, namespace: str | None = None) -> int:
        """Delete every entry, or every entry of ``namespace``; returns how many."""
        if namespace is not None:
            check_namespace(namespace)
        result = await self.store.call("clear", self.store.backend.clear, namespace, timeout=30.0)
        if self.store.failed(result):
            raise CacheError(f"could not clear the {self.store.backend.name} cache backend")
        count: int = result
        return count

    async def astats(self) -> dict[str, Any]:
        """This process's counters, plus the entry count and (file, redis) every process's counters."""
        circuit = "open" if self.store.circuit_open else "closed"
        out: dict[str, Any] = {"backend": self.config.backend, "circuit": circuit}
        entries = await self.store.call("count", self.store.backend.count, timeout=10.0)
        out["entries"] = None if self.store.failed(entries) else entries
        shared = await self.store.call("stats", self.store.backend.read_stats, timeout=10.0)
        if not self.store.failed(shared) and shared:
            out["all_processes"] = shared
        out["process"] = self.metrics.as_dict()
        return out

    def invalidate(self, request: Request) -> bool:
        """Blocking :meth:`ainvalidate`."""
        return portal.run(self.ainvalidate(request))

    def clear(self, namespace: str | None = None) -> int:
        """Blocking :meth:`aclear`."""
        return portal.run(self.aclear(namespace))

    def stats(self) -> dict[str, Any]:
        """Blocking :meth:`astats`."""
        return portal.run(self.astats())

    def describe(self) -> dict[str, Any]:
        return {"backend": self.config.backend, "circuit": "open" if self.store.circuit_open else "closed",
                **self.metrics.as_dict()}
