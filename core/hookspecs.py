"""Every hook modelwire calls, in one place.

Hooks are synchronous and do no I/O: they register things, decide, and observe. Work that waits
on the network lives in :class:`~modelwire.Provider` and :class:`~modelwire.Middleware` objects,
which plugins register through the two ``register`` hooks. Implement a hook with the
:data:`hookimpl` marker; an implementation may accept any subset of a spec's parameters::

    from modelwire import hookimpl

    @hookimpl
    def modelwire_response_received(response):
        print(response.usage)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from .config import Config
    from .middleware import Middleware
    from .provider import Provider
    from .types import Chunk, Completion, LimitSpec, Request, Usage

__all__ = ["hookimpl", "hookspec"]

hookspec = pluggy.HookspecMarker("modelwire")
hookimpl = pluggy.HookimplMarker("modelwire")


# -- setup -------------------------------------------------------------------------------------


@hookspec
def modelwire_register_providers(register: Callable[[str, type[Provider]], None]) -> None:
    """Register provider kinds.

    :param register: call ``register("kind", ProviderClass)``; a config entry with
        ``kind = "kind"`` (or named ``kind``) is then served by ``ProviderClass``.

    Contract: called once per client. A kind registered twice is a :class:`PluginError`.
    """


@hookspec
def modelwire_register_middleware(register: Callable[[str, type[Middleware]], None]) -> None:
    """Register middleware by name.

    :param register: call ``register("name", MiddlewareClass)``.

    Contract: registering is not enabling. A middleware runs only when its name is in the
    config's ``middleware`` list, at that position (first = outermost). Its config section is
    the top-level key of the same name, validated with ``MiddlewareClass.Config``; its per-call
    options with ``MiddlewareClass.Options``. It must act on both paths (``on_request``, or
    ``ahandle``/``handle`` and ``ahandle_stream``) or declare ``applies_to``; otherwise building
    the client fails naming it.
    """


@hookspec
def modelwire_register_demo_steps(register: Callable[[str, Callable[..., Any]], None]) -> None:
    """Register a step for ``modelwire demo``.

    :param register: call ``register("title", step)``; ``step(client, server, echo)`` gets the
        demo client, the running :class:`~modelwire.testing.FakeServer` and a print function.

    Contract: a step runs only when the middleware or plugin it shows is enabled; the step checks.
    """


@hookspec
def modelwire_register_commands(register: Callable[..., None]) -> None:
    """Add a ``modelwire`` CLI subcommand.

    :param register: call ``register(name, help, setup, run)``: ``setup(parser)`` adds arguments
        to an ``argparse`` subparser, ``run(client, args) -> int`` runs the command.

    Contract: keep module-level imports light; ``modelwire --help`` loads every plugin.
    """


@hookspec(historic=True)
def modelwire_configure(config: Config) -> None:
    """Observe the validated configuration of a client being built.

    :param config: the effective :class:`~modelwire.config.Config`.

    Contract: historic, so plugins registered later still see it. Do not mutate ``config``.
    """


# -- request stage ------------------------------------------------------------------------------


@hookspec
def modelwire_request_prepare(request: Request) -> None:
    """Validate or fill defaults on a request before any middleware runs.

    :param request: the request; may be modified in place.

    Contract: no I/O. Raise :class:`~modelwire.RequestValidationError` to refuse the request;
    nothing reaches the network then.
    """


# -- cache stage --------------------------------------------------------------------------------


@hookspec(firstresult=True)
def modelwire_cache_key(request: Request) -> str | None:
    """Return the cache key for ``request``, or None to defer to the next implementation.

    :param request: the prepared request.

    Contract: firstresult; the built-in implementation is ``trylast``. The key must cover
    everything that can change the answer.
    """


@hookspec(firstresult=True)
def modelwire_cache_should_store(request: Request, response: Completion) -> bool | None:
    """Decide whether ``response`` may be stored; None defers to the next implementation.

    :param request: the request that produced it.
    :param response: a complete response (whole, or the assembled stream).

    Contract: firstresult; the built-in refuses errors, ``length``/``content_filter`` results
    and empty answers.
    """


# -- limit stage --------------------------------------------------------------------------------


@hookspec(firstresult=True)
def modelwire_limit_spec(request: Request) -> LimitSpec | None:
    """Return the rate-limit bucket and weight for ``request``, or None to defer.

    :param request: the prepared request.

    Contract: firstresult. When every implementation returns None the ``ratelimit`` middleware
    uses its configured ``limits`` (first ``match`` wins); a request matching none is not limited.
    """


@hookspec
def modelwire_limit_delayed(request: Request, delay: float) -> None:
    """Observe a request that waited ``delay`` seconds for the limiter (queue, rate, cooldown),
    called once per attempt that waited, just before it goes on to the provider."""


# -- response stage -----------------------------------------------------------------------------


@hookspec
def modelwire_response_received(request: Request, response: Completion, latency: float) -> None:
    """Observe a response: once per successful provider attempt, per cache hit, per finished stream.

    :param request: the request (``request.attempt`` is the attempt number).
    :param response: the completion; ``response.cached`` tells a cache hit.
    :param latency: seconds from the start of this attempt to the response (stream: to its end).

    Contract: observers only; an exception here is logged and does not fail the request.
    """


@hookspec
def modelwire_request_failed(
    request: Request, error: BaseException, attempt: int, latency: float
) -> None:
    """Observe a failed attempt (before any retry decision).

    :param error: the mapped :class:`~modelwire.ModelwireError` (or CancelledError).
    :param attempt: the attempt number, starting at 1.
    :param latency: seconds the attempt took.
    """


@hookspec(firstresult=True)
def modelwire_error_retryable(request: Request, error: BaseException) -> bool | None:
    """Classify ``error`` as retryable (True) or not (False); None defers to ``error.retryable``.

    Contract: firstresult, lets a provider plugin classify its own errors.
    """


@hookspec
def modelwire_stream_chunk(request: Request, chunk: Chunk) -> None:
    """Observe each chunk of a stream as it reaches the caller. Must stay cheap."""


@hookspec
def modelwire_stream_end(
    request: Request,
    reason: str,
    chunks: int,
    first_token_latency: float | None,
    latency: float,
    usage: Usage | None,
    cached: bool,
    error: BaseException | None,
) -> None:
    """Observe the end of a stream, exactly once per stream the caller opened and iterated.

    :param request: the request.
    :param reason: the finish reason (``stop``, ``length``, ``tool_calls``...), ``done`` ([DONE]
        without one), ``interrupted``, ``content_filter``, ``error``, ``cancelled`` (task
        cancelled) or ``cancelled_by_consumer`` (closed, left or dropped early).
    :param chunks: chunks the caller received.
    :param first_token_latency: seconds to the first text or tool call, None if none came.
    :param latency: seconds from the first read to the end.
    :param usage: the provider's usage, None when unknown (``usage_known`` is ``usage is not None``).
    :param cached: whether the chunks came from the cache.
    :param error: the error that ended the stream, None otherwise.

    Contract: observers only, no I/O; may be called from a garbage-collection finalizer.
    """


@hookspec
def modelwire_retry_scheduled(request: Request, error: BaseException, attempt: int, delay: float) -> None:
    """Observe a retry decision: attempt ``attempt`` failed with ``error`` and the retry
    middleware will try again after ``delay`` seconds.

    :param request: the request (``request.attempt`` is still the failed attempt's number).
    :param error: the mapped :class:`~modelwire.ModelwireError` that caused the retry.
    :param attempt: the number of the attempt that failed, starting at 1.
    :param delay: seconds the middleware sleeps before the next attempt.

    Contract: observer (count or log retries); an exception here is logged and ignored.
    """


# -- observability ------------------------------------------------------------------------------


@hookspec
def modelwire_client_created(client: Any) -> None:
    """A :class:`~modelwire.Client` finished building; keep per-client state here.

    :param client: the new client. A plugin that needs state of its own per client (prices,
        counters) registers a plugin object for this client only:
        ``client.registry.pm.register(obj, name=...)``; its hooks then see this client's requests.

    Contract: setup, no I/O beyond starting a background thread. An exception fails building the
    client (use it for a :class:`~modelwire.ConfigurationError` naming a bad config key).
    """


@hookspec(firstresult=True)
def modelwire_stats_snapshot() -> dict[str, Any] | None:
    """Return the in-process metrics that ``client.stats()`` shows, or None to defer.

    Contract: firstresult; the built-in ``stats`` plugin answers (docs/observability.md has the
    shape). Cheap: it is called on demand, never per request.
    """


@hookspec
def modelwire_fallback_taken(request: Request, error: BaseException, target: str) -> None:
    """Observe the ``fallback`` middleware sending ``request`` on to ``target`` (``provider/model``)
    after ``error`` ended the previous target's attempts. Observer, no I/O."""


@hookspec
def modelwire_circuit_opened(provider: str, error: BaseException) -> None:
    """Observe the circuit of provider instance ``provider`` opening (closed or half-open to open)
    after ``error``. Observer, no I/O."""


@hookspec
def modelwire_limit_rejected(request: Request, error: BaseException) -> None:
    """Observe the ``ratelimit`` middleware refusing ``request`` with
    :class:`~modelwire.RateLimitExceeded` (no permit within its wait limit). Observer, no I/O."""
