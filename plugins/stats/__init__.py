"""In-process metrics behind ``client.stats()`` and ``modelwire stats``; on by default.

One :class:`Recorder` per client observes the hooks (no middleware, nothing to list) and keeps
flat counters per total, provider and ``provider/model``; latencies, time to first token and
limiter waits go into log-bucket histograms (O(1) memory, percentiles within 10 %). Turn it off
with ``disable_plugins = ["modelwire.plugins.stats"]``. With ``[stats] backend = "sqlite"`` or
``"redis"`` each process also adds its counters to the shared store, so ``modelwire stats``
shows the total of every process (docs/observability.md).

>>> client.stats()["total"]["cache"]  # doctest: +SKIP
{'hits': 1, 'misses': 3, 'shared': 0, 'saved_cost': 2.1e-05}
"""

from __future__ import annotations

import asyncio
import atexit
import os
import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from modelwire.errors import ConfigurationError
from modelwire.hookspecs import hookimpl
from modelwire.lazy import lazy_attributes
from modelwire.types import Completion, Request, Usage

from .metrics import bucket_of, render
from .shared import Store, make_store

if TYPE_CHECKING:
    from .config import StatsConfig

__all__ = ["Recorder", "StatsConfig", "flush", "recorder_of"]


# A pydantic model, imported on first use: ``modelwire --help`` loads this plugin for its command.
__getattr__ = lazy_attributes(__name__, {"StatsConfig": ".config"})


class Recorder:
    """Counters of one client; every hook method is O(1) and takes one uncontended lock."""

    def __init__(self, config: StatsConfig) -> None:
        self.config = config
        self.store: Store | None = make_store(config)
        self._values: dict[tuple[str, str | None, str], float] = {}
        self._flushed: dict[str, float] = {}
        self._names: dict[tuple[str, str | None, str], tuple[str, ...]] = {}
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        _live.add(self)
        if self.store is not None:
            self._start()

    # -- counting --------------------------------------------------------------------------------

    def _keys(self, provider: str, model: str | None, name: str) -> tuple[str, ...]:
        """The flat keys counter ``name`` adds to: the total, the provider and (unless ``model``
        is None) the model; memoised, several counters are expanded per snapshot or flush."""
        found = self._names.get((provider, model, name))
        if found is None:
            found = (f"total|{name}", f"provider:{provider}|{name}")
            if model is not None:
                found += (f"model:{provider}/{model}|{name}",)
            if len(self._names) < 65536:  # a bound even if callers invent model names
                self._names[(provider, model, name)] = found
        return found

    # Counters are kept per (provider, model, name) and expanded into the total, provider and
    # model groups only when read (snapshot, flush): a response updates a third as many.

    def add(self, provider: str, model: str | None, amounts: dict[str, float]) -> None:
        """Add ``amounts`` (``{"name": n}``) to the total, the provider and the model."""
        values = self._values
        with self._lock:
            for name, amount in amounts.items():
                key = (provider, model, name)
                values[key] = values.get(key, 0) + amount

    def add_one(self, provider: str, model: str | None, name: str) -> None:
        """Add 1 to counter ``name`` (the common case, without building a dict)."""
        key = (provider, model, name)
        values = self._values
        with self._lock:
            values[key] = values.get(key, 0) + 1

    def flat(self) -> dict[str, float]:
        """Every counter as ``group|name`` (``total``, ``provider:<p>``, ``model:<p>/<m>``)."""
        with self._lock:
            items = list(self._values.items())
        out: dict[str, float] = {}
        for (provider, model, name), value in items:
            for key in self._keys(provider, model, name):
                out[key] = out.get(key, 0) + value
        return out

    def snapshot(self) -> dict[str, Any]:
        return render(self.flat())

    # -- hooks -----------------------------------------------------------------------------------

    @hookimpl
    def modelwire_stats_snapshot(self) -> dict[str, Any]:
        return self.snapshot()

    @hookimpl
    def modelwire_request_prepare(self, request: Request) -> None:
        self.add_one(request.provider, request.model, "requests")

    @hookimpl
    def modelwire_response_received(self, request: Request, response: Completion, latency: float) -> None:
        amounts: dict[str, float] = {"responses": 1}
        outcome = request.state.get("log", {}).get("cache")
        if outcome in _CACHE_OUTCOMES:
            amounts[_CACHE_OUTCOMES[outcome]] = 1
        if response.cached:
            saved = request.state.get("saved_cost")
            if saved:
                amounts["cache.saved_cost"] = saved
        else:  # tokens, cost and latency of what the provider served (a hit costs nothing)
            _count_usage(amounts, response.usage)
            if response.cost is not None:
                amounts["cost"] = response.cost
            else:
                amounts["cost_unknown"] = 1
            amounts[f"h.latency.{bucket_of(latency)}"] = 1
        self.add(response.provider, response.model, amounts)

    @hookimpl
    def modelwire_request_failed(self, request: Request, error: BaseException) -> None:
        name = "cancelled" if isinstance(error, asyncio.CancelledError) else f"errors.{type(error).__name__}"
        self.add_one(request.provider, request.model, name)

    @hookimpl
    def modelwire_retry_scheduled(self, request: Request) -> None:
        self.add_one(request.provider, request.model, "retries")

    @hookimpl
    def modelwire_fallback_taken(self, request: Request) -> None:
        self.add_one(request.provider, request.model, "fallbacks")

    @hookimpl
    def modelwire_circuit_opened(self, provider: str) -> None:
        self.add_one(provider, None, "circuit_opens")  # a provider's, no model's

    @hookimpl
    def modelwire_limit_delayed(self, request: Request, delay: float) -> None:
        self.add(request.provider, request.model, {
            "limiter.waits": 1, "limiter.wait_total": delay, f"h.limiter_wait.{bucket_of(delay)}": 1,
        })

    @hookimpl
    def modelwire_limit_rejected(self, request: Request) -> None:
        self.add_one(request.provider, request.model, "limiter.rejections")

    @hookimpl
    def modelwire_stream_end(self, request: Request, reason: str, first_token_latency: float | None,
                             cached: bool) -> None:
        amounts: dict[str, float] = {f"streams.{reason}": 1}
        if first_token_latency is not None and not cached:
            amounts[f"h.ttft.{bucket_of(first_token_latency)}"] = 1
        provider, model = request.state.get("served_by", (request.provider, request.model))
        self.add(provider, model, amounts)

    # -- the shared store --------------------------------------------------------------------------

    def flush(self) -> bool:
        """Add what changed since the last flush to the shared store; False if that failed
        (the deltas are kept for the next flush). A no-op without a store."""
        if self.store is None:
            return True
        with self._flush_lock:
            current = self.flat()
            flushed = self._flushed
            deltas = {k: v - flushed.get(k, 0) for k, v in current.items() if v != flushed.get(k, 0)}
            if not deltas:
                return True
            try:
                self.store.add(deltas)
            except Exception as exc:  # the store is down: keep counting, try again later
                from modelwire.log import logger  # structlog: not for ``modelwire --help``

                logger.warning("stats.flush_failed", backend=self.store.name, error=f"{type(exc).__name__}: {exc}")
                return False
            self._flushed = current
            return True

    def _start(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="modelwire-stats-flush", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.config.flush_interval):
            self.flush()

    def close(self) -> None:
        """Stop the flusher after a last flush."""
        self._stop.set()
        self.flush()
        _live.discard(self)

    def _after_fork(self) -> None:
        # The child starts from zero: the parent's counts are the parent's to flush.
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._values, self._flushed = {}, {}
        if self.store is not None:
            self._start()


_CACHE_OUTCOMES = {"hit": "cache.hits", "shared": "cache.shared", "miss": "cache.misses", "refresh": "cache.misses"}


def _count_usage(amounts: dict[str, float], usage: Usage | None) -> None:
    if usage is None:
        return
    amounts["tokens.prompt"] = usage.prompt_tokens
    amounts["tokens.completion"] = usage.completion_tokens
    if usage.cached_prompt_tokens:
        amounts["tokens.cached_prompt"] = usage.cached_prompt_tokens
    if usage.reasoning_tokens:
        amounts["tokens.reasoning"] = usage.reasoning_tokens


# Live recorders: flushed at exit (those with a store), reset in a forked child.
_live: weakref.WeakSet[Recorder] = weakref.WeakSet()


def _flush_all() -> None:
    for recorder in list(_live):
        recorder.flush()


def _after_fork_in_child() -> None:
    for recorder in list(_live):
        recorder._after_fork()


atexit.register(_flush_all)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def recorder_of(client: Any) -> Recorder:
    """The :class:`Recorder` of ``client``.

    :raises ConfigurationError: when the stats plugin is disabled.
    """
    recorder = client.registry.pm.get_plugin(_plugin_name(client))
    if not isinstance(recorder, Recorder):
        raise ConfigurationError("no stats are collected: the 'modelwire.plugins.stats' plugin is disabled")
    return recorder


def flush(client: Any) -> bool:
    """Write ``client``'s counters to the shared store now (they also go every
    ``flush_interval`` seconds and at exit); False when the store could not be reached."""
    return recorder_of(client).flush()


def _plugin_name(client: Any) -> str:
    return f"modelwire.plugins.stats@{id(client):x}"


@hookimpl
def modelwire_client_created(client: Any) -> None:
    from modelwire.config import validate_section

    from .config import StatsConfig

    config: StatsConfig = validate_section(StatsConfig, client.config.stats, "stats")
    client.registry.pm.register(Recorder(config), name=_plugin_name(client))


@hookimpl
def modelwire_register_commands(register: Callable[..., None]) -> None:
    from .cli import run_command, setup_command

    register("stats", "requests, errors, cache, limiter, tokens, cost, latency (all processes with a shared store)",
             setup_command, run_command)
