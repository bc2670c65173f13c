"""The ``prometheus`` middleware: request, latency, token, cost, cache, limiter and retry metrics
in the host's prometheus-client registry.

Turned on like ``otel``, by listing it first in ``middleware`` (``pip install
'modelwire[prometheus]'``): a middleware, not a ``[prometheus] enabled = true`` switch, because it
must sit outside the cache and retry to count logical requests, cache hits and time the whole
request, and the ``middleware`` list is the one place where order and enabling are said::

    middleware = ["prometheus", "cache", "retry", "ratelimit"]
    [prometheus]
    prefix = "modelwire"      # metric name prefix

Metrics land in ``prometheus_client.REGISTRY`` (what ``start_http_server`` and most frameworks'
``/metrics`` endpoints serve), or in the registry given in a dict config
(``{"prometheus": {"registry": my_registry}}``). Two clients with the same registry and prefix
share the metrics. Labels are few and bounded: ``provider`` and ``model`` (the configured
provider name and model that answered), ``outcome`` (``ok``, ``cache_hit``, ``error``,
``cancelled``), ``error_type`` (an error class name), ``type`` (token kind); never a prompt,
an id or an error message.

=====================================================  ==========  ==============================
metric (with the default prefix)                       type        labels
=====================================================  ==========  ==============================
``modelwire_requests_total``                           counter     provider, model, outcome
``modelwire_request_duration_seconds``                 histogram   provider, model, outcome
``modelwire_time_to_first_chunk_seconds``              histogram   provider, model
``modelwire_errors_total``                             counter     provider, model, error_type
``modelwire_retries_total``                            counter     provider, model, error_type
``modelwire_tokens_total``                             counter     provider, model, type
``modelwire_cost_usd_total``                           counter     provider, model
``modelwire_cache_saved_usd_total``                    counter     provider, model
``modelwire_cache_hits_total`` / ``_misses_total``     counter     provider, model
``modelwire_ratelimit_wait_seconds``                   histogram   provider, model
=====================================================  ==========  ==============================

Tokens and cost count what providers consumed: a cache hit adds none. prometheus_client is
imported when the middleware is built, never at ``import modelwire``.
"""

from __future__ import annotations

import re
import threading
import weakref
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator

from modelwire.errors import ConfigurationError
from modelwire.hookspecs import hookimpl
from modelwire.middleware import Middleware, MiddlewareContext
from modelwire.types import Completion, Request

from .observer import ObservingMiddleware, Outcome, error_type, served_target

__all__ = ["PrometheusConfig", "PrometheusMiddleware"]

#: ``request.state`` key holding the metrics of the request's middleware (read by the hooks).
METRICS = "prometheus.metrics"

_DURATION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0)
_WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class PrometheusConfig(BaseModel):
    """The ``[prometheus]`` section."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    #: Prefix of every metric name.
    prefix: str = "modelwire"
    #: A ``prometheus_client.CollectorRegistry`` instead of the default ``REGISTRY`` (dict config only).
    registry: Any = None

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not re.fullmatch(r"[a-zA-Z_:][a-zA-Z0-9_:]*", value):
            raise ValueError(f"must be a Prometheus metric name prefix ([a-zA-Z_:][a-zA-Z0-9_:]*), got {value!r}")
        return value

    @field_validator("registry")
    @classmethod
    def _registry(cls, value: Any) -> Any:
        if value is not None and not callable(getattr(value, "register", None)):
            raise ValueError(f"expected a prometheus_client CollectorRegistry, got {type(value).__name__}")
        return value


class _Metrics:
    """The metric families of one (registry, prefix)."""

    def __init__(self, prefix: str, registry: Any) -> None:
        from prometheus_client import Counter, Histogram

        target = ("provider", "model")
        p, r = prefix, registry
        self.requests = Counter(f"{p}_requests", "Logical LLM requests, by outcome.", [*target, "outcome"], registry=r)
        self.duration = Histogram(f"{p}_request_duration_seconds", "Duration of logical requests (retries and "
                                  "waits included; streams to their end).", [*target, "outcome"], registry=r,
                                  buckets=_DURATION_BUCKETS)
        self.first_chunk = Histogram(f"{p}_time_to_first_chunk_seconds", "Time to the first chunk of streams.",
                                     target, registry=r, buckets=_DURATION_BUCKETS)
        self.errors = Counter(f"{p}_errors", "Logical requests that failed, by error class.",
                              [*target, "error_type"], registry=r)
        self.retries = Counter(f"{p}_retries", "Retries scheduled, by the error class that caused them.",
                               [*target, "error_type"], registry=r)
        self.tokens = Counter(f"{p}_tokens", "Tokens consumed from providers (cache hits add none).",
                              [*target, "type"], registry=r)
        self.cost = Counter(f"{p}_cost_usd", "Cost in USD of provider calls, when known.", target, registry=r)
        self.saved = Counter(f"{p}_cache_saved_usd", "Cost in USD that cache hits saved, when known.", target,
                             registry=r)
        self.hits = Counter(f"{p}_cache_hits", "Requests answered by the cache (shared flights included).",
                            target, registry=r)
        self.misses = Counter(f"{p}_cache_misses", "Cache lookups that went to the provider.", target, registry=r)
        self.wait = Histogram(f"{p}_ratelimit_wait_seconds", "Waits for the rate limiter, per attempt that waited.",
                              target, registry=r, buckets=_WAIT_BUCKETS)


_SHARED: weakref.WeakKeyDictionary[Any, dict[str, _Metrics]] = weakref.WeakKeyDictionary()
_SHARED_LOCK = threading.Lock()


def _metrics_for(prefix: str, registry: Any) -> _Metrics:
    """One set of metric families per registry and prefix: prometheus_client refuses to register
    a name twice, and two clients of one process must add to the same series."""
    with _SHARED_LOCK:
        by_prefix = _SHARED.setdefault(registry, {})
        metrics = by_prefix.get(prefix)
        if metrics is None:
            try:
                metrics = by_prefix[prefix] = _Metrics(prefix, registry)
            except ValueError as exc:  # the names are taken by collectors that are not ours
                raise ConfigurationError(f"config key 'prometheus.prefix': {exc}; choose another prefix") from None
        return metrics


def _outcome(outcome: Outcome) -> str:
    if outcome.end_reason in ("cancelled", "cancelled_by_consumer"):
        return "cancelled"
    if outcome.error is not None:
        return "error"
    return "cache_hit" if outcome.cached else "ok"


class PrometheusMiddleware(ObservingMiddleware):
    """Counts and times each logical request; see the module docstring."""

    Config = PrometheusConfig

    def __init__(self, config: PrometheusConfig | None, context: MiddlewareContext) -> None:
        super().__init__(config or PrometheusConfig(), context)
        self.config: PrometheusConfig = self.config
        try:
            import prometheus_client
        except ImportError:
            raise ConfigurationError(
                "middleware 'prometheus' needs prometheus-client: pip install 'modelwire[prometheus]'"
            ) from None
        registry = self.config.registry if self.config.registry is not None else prometheus_client.REGISTRY
        self.metrics = _metrics_for(self.config.prefix, registry)

    def begin(self, request: Request) -> Any:
        request.state[METRICS] = self.metrics
        return None

    def first_chunk(self, handle: Any, request: Request, seconds: float) -> None:
        self.metrics.first_chunk.labels(*served_target(request)).observe(seconds)

    def finish(self, handle: Any, outcome: Outcome) -> None:
        request, m = outcome.request, self.metrics
        target = served_target(request)
        label = _outcome(outcome)
        m.requests.labels(*target, label).inc()
        m.duration.labels(*target, label).observe(outcome.duration)
        if outcome.error is not None and label == "error":
            m.errors.labels(*target, error_type(outcome.error)).inc()
        cache = request.state.get("log", {}).get("cache")
        if cache in ("hit", "shared"):
            m.hits.labels(*target).inc()
        elif cache in ("miss", "refresh"):
            m.misses.labels(*target).inc()
        usage = outcome.usage
        if usage is not None and not outcome.cached:
            m.tokens.labels(*target, "input").inc(usage.prompt_tokens)
            m.tokens.labels(*target, "output").inc(usage.completion_tokens)
            for kind, name in (("cache_read", "cached_prompt_tokens"), ("reasoning", "reasoning_tokens")):
                value = getattr(usage, name, None)  # Usage details land in a parallel change
                if isinstance(value, int) and value:
                    m.tokens.labels(*target, kind).inc(value)


def _usd(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 else None


@hookimpl
def modelwire_response_received(request: Request, response: Completion) -> None:
    """Cost is known only here: the ``cost`` plugin prices the response as it is received,
    after the chain (and this middleware's :meth:`finish`) returned."""
    metrics: _Metrics | None = request.state.get(METRICS)
    if metrics is None:
        return
    target = served_target(request)
    cost = _usd(getattr(response, "cost", None))
    if cost is not None and not response.cached:
        metrics.cost.labels(*target).inc(cost)
    saved = _usd(request.state.get("saved_cost")) if response.cached else None
    if saved is not None:
        metrics.saved.labels(*target).inc(saved)


@hookimpl
def modelwire_retry_scheduled(request: Request, error: BaseException, attempt: int, delay: float) -> None:
    metrics: _Metrics | None = request.state.get(METRICS)
    if metrics is not None:
        metrics.retries.labels(request.provider, request.model, error_type(error)).inc()


@hookimpl
def modelwire_limit_delayed(request: Request, delay: float) -> None:
    metrics: _Metrics | None = request.state.get(METRICS)
    if metrics is not None:
        metrics.wait.labels(request.provider, request.model).observe(delay)


@hookimpl
def modelwire_register_middleware(register: Callable[[str, type[Middleware]], None]) -> None:
    register("prometheus", PrometheusMiddleware)
