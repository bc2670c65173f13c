"""The ``otel`` middleware: OpenTelemetry GenAI spans and metrics for every logical request.

Turn it on with one line, listing it first so that its span covers the cache, every retry and
the limiter (``pip install 'modelwire[otel]'``)::

    middleware = ["otel", "cache", "retry", "ratelimit"]
    [otel]
    capture_content = false   # true: record prompts and answers (gen_ai.input/output.messages)

It uses the host's providers (``opentelemetry.trace.get_tracer_provider()`` and
``opentelemetry.metrics.get_meter_provider()``) or the ones given in a dict config
(``{"otel": {"tracer_provider": tp, "meter_provider": mp}}``); it never installs one globally.
Until the host configures OpenTelemetry those are no-ops, and so is this middleware.

Per request: one CLIENT span ``{gen_ai.operation.name} {gen_ai.request.model}`` (``chat gpt-4o``)
with the GenAI attributes, and events on it for each attempt (``modelwire.attempt``), the cache
hit (``modelwire.cache_hit``), each limiter wait (``modelwire.ratelimit.wait``) and each retry
delay (``modelwire.retry``). Metrics: ``gen_ai.client.operation.duration``,
``gen_ai.client.token.usage`` (by ``gen_ai.token.type``; not for cache hits, which consumed no
tokens) and ``gen_ai.client.operation.time_to_first_chunk`` (streams). opentelemetry is imported
when the middleware is built, never at ``import modelwire``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator

from modelwire.errors import ConfigurationError
from modelwire.hookspecs import hookimpl
from modelwire.middleware import Middleware, MiddlewareContext
from modelwire.types import Request

from ..observer import ObservingMiddleware, Outcome, error_type
from . import semconv

__all__ = ["OtelConfig", "OtelMiddleware"]

#: ``request.state`` key holding the request's span while it runs (read by the hooks below).
SPAN = "otel.span"


def _has(value: Any, method: str) -> Any:
    if value is not None and not callable(getattr(value, method, None)):
        raise ValueError(f"expected an object with a {method}() method, got {type(value).__name__}")
    return value


class OtelConfig(BaseModel):
    """The ``[otel]`` section."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    #: Record message content (``gen_ai.input.messages``, ``gen_ai.output.messages``). Off by
    #: default: prompts and answers often hold personal data.
    capture_content: bool = False
    #: A TracerProvider to use instead of the global one (dict config only).
    tracer_provider: Any = None
    #: A MeterProvider to use instead of the global one (dict config only).
    meter_provider: Any = None

    @field_validator("tracer_provider")
    @classmethod
    def _tracer(cls, value: Any) -> Any:
        return _has(value, "get_tracer")

    @field_validator("meter_provider")
    @classmethod
    def _meter(cls, value: Any) -> Any:
        return _has(value, "get_meter")


class OtelMiddleware(ObservingMiddleware):
    """Spans and metrics per logical request; see the module docstring."""

    Config = OtelConfig

    def __init__(self, config: OtelConfig | None, context: MiddlewareContext) -> None:
        super().__init__(config or OtelConfig(), context)
        self.config: OtelConfig = self.config
        try:
            from opentelemetry import context as otel_context
            from opentelemetry import metrics, trace
        except ImportError:
            raise ConfigurationError(
                "middleware 'otel' needs OpenTelemetry: pip install 'modelwire[otel]' "
                "(opentelemetry-api, and opentelemetry-sdk to export)"
            ) from None
        from importlib.metadata import PackageNotFoundError, version

        try:
            ours = version("modelwire")
        except PackageNotFoundError:  # pragma: no cover - running from a source tree
            ours = None
        self._trace, self._context = trace, otel_context
        self.capture_text = self.config.capture_content
        tracer_provider = self.config.tracer_provider or trace.get_tracer_provider()
        meter_provider = self.config.meter_provider or metrics.get_meter_provider()
        self.tracer = tracer_provider.get_tracer("modelwire", ours)
        meter = meter_provider.get_meter("modelwire", ours)
        self.duration = meter.create_histogram(
            "gen_ai.client.operation.duration", unit="s", description="GenAI operation duration.",
            explicit_bucket_boundaries_advisory=list(semconv.DURATION_BUCKETS),
        )
        self.tokens = meter.create_histogram(
            "gen_ai.client.token.usage", unit="{token}", description="Number of input and output tokens used.",
            explicit_bucket_boundaries_advisory=list(semconv.TOKEN_BUCKETS),
        )
        self.first_chunk_time = meter.create_histogram(
            "gen_ai.client.operation.time_to_first_chunk", unit="s",
            description="Time to receive the first chunk of a streamed response.",
            explicit_bucket_boundaries_advisory=list(semconv.DURATION_BUCKETS),
        )
        self._targets: dict[str, semconv.Target] = {}

    def _target(self, request: Request) -> semconv.Target:
        target = self._targets.get(request.provider)
        if target is None:
            try:
                provider = self.context.provider(request.provider)
            except Exception:  # an unknown provider fails below, with its own error
                provider = None
            target = self._targets[request.provider] = semconv.Target(provider)
        return target

    # -- ObservingMiddleware ---------------------------------------------------------------------

    def begin(self, request: Request) -> Any:
        attrs = semconv.request_attributes(request, self._target(request))
        if self.config.capture_content:
            attrs["gen_ai.input.messages"] = semconv.input_messages(request)
        name = f"{attrs[semconv.OPERATION]} {request.model}"
        span = self.tracer.start_span(name, kind=self._trace.SpanKind.CLIENT, attributes=attrs)
        request.state[SPAN] = span
        return span

    def enter(self, handle: Any) -> Any:
        return self._context.attach(self._trace.set_span_in_context(handle)) if handle is not None else None

    def leave(self, token: Any) -> None:
        if token is not None:
            self._context.detach(token)

    def first_chunk(self, handle: Any, request: Request, seconds: float) -> None:
        attrs = semconv.metric_attributes(request, self._target(request))
        self.first_chunk_time.record(seconds, attrs)

    def finish(self, handle: Any, outcome: Outcome) -> None:
        request = outcome.request
        request.state.pop(SPAN, None)
        attrs = semconv.metric_attributes(request, self._target(request))
        end = semconv.response_attributes(outcome)
        if semconv.RESPONSE_MODEL in end:
            attrs[semconv.RESPONSE_MODEL] = end[semconv.RESPONSE_MODEL]
        if outcome.error is not None:
            attrs[semconv.ERROR_TYPE] = end[semconv.ERROR_TYPE]
        self.duration.record(outcome.duration, attrs)
        if outcome.usage is not None and not outcome.cached and outcome.ok:
            self.tokens.record(outcome.usage.prompt_tokens, {**attrs, semconv.TOKEN_TYPE: "input"})
            self.tokens.record(outcome.usage.completion_tokens, {**attrs, semconv.TOKEN_TYPE: "output"})
        if handle is None:
            return
        if outcome.cached:
            handle.add_event("modelwire.cache_hit", {"modelwire.cache.result": _cache_result(request)})
        elif outcome.ok:
            handle.add_event("modelwire.attempt", {"modelwire.attempt": request.attempt, "modelwire.outcome": "ok"})
        if self.config.capture_content:
            output = semconv.output_messages(outcome)
            if output is not None:
                end["gen_ai.output.messages"] = output
        handle.set_attributes(end)
        if outcome.error is not None:
            # The description is the type alone: an error's message may quote the prompt.
            handle.set_status(self._trace.Status(self._trace.StatusCode.ERROR, end[semconv.ERROR_TYPE]))
        handle.end()


def _cache_result(request: Request) -> str:
    return str(request.state.get("log", {}).get("cache", "hit"))


# -- what happens inside the span, through the observer hooks ------------------------------------


@hookimpl
def modelwire_request_failed(request: Request, error: BaseException, attempt: int, latency: float) -> None:
    span = request.state.get(SPAN)
    if span is not None:
        attrs: dict[str, Any] = {"modelwire.attempt": attempt, "modelwire.outcome": "error",
                                 semconv.ERROR_TYPE: error_type(error), "modelwire.attempt.duration": latency}
        status = getattr(error, "status", None)
        if isinstance(status, int):
            attrs["modelwire.error.status"] = status
        span.add_event("modelwire.attempt", attrs)


@hookimpl
def modelwire_retry_scheduled(request: Request, error: BaseException, attempt: int, delay: float) -> None:
    span = request.state.get(SPAN)
    if span is not None:
        span.add_event("modelwire.retry", {"modelwire.attempt": attempt, "modelwire.retry.delay": delay,
                                           semconv.ERROR_TYPE: error_type(error)})


@hookimpl
def modelwire_limit_delayed(request: Request, delay: float) -> None:
    span = request.state.get(SPAN)
    if span is not None:
        span.add_event("modelwire.ratelimit.wait", {"modelwire.attempt": request.attempt,
                                                    "modelwire.ratelimit.wait": delay})


@hookimpl
def modelwire_register_middleware(register: Callable[[str, type[Middleware]], None]) -> None:
    register("otel", OtelMiddleware)
