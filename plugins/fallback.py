"""The ``fallback`` middleware: when a target finally fails, run the rest of the chain for the next one.

Config section ``[fallback]``::

    [fallback]
    max_depth = 5                                   # at most this many fallback targets per request
    on = ["rate_limit", "quota", "unavailable", "auth", "not_found"]   # error kinds that use `chains`
    [fallback.chains]
    "openai/gpt-4o" = ["azure/gpt4o-deploy", "local/llama"]
    "azure/*" = ["local/llama"]                     # a provider wildcard, used when no exact key matches
    [fallback.by_error.context_window]              # per error kind: replaces `chains` for that kind
    "openai/gpt-4o" = ["openai/gpt-4.1"]            # a bigger context window
    [fallback.by_error.content_filter]              # empty: a filtered prompt never falls back

Error kinds: ``rate_limit`` (429, and modelwire's own limiter giving up), ``quota`` (insufficient
quota, request too large), ``unavailable`` (5xx, timeouts, connection errors, invalid 200 bodies,
an open circuit, a stream broken before its first chunk), ``auth`` (401/403), ``not_found``,
``context_window``, ``content_filter``, ``bad_request``. Each target is tried once per request (no
loops); the chain of a fallback target is followed too, breadth first, up to ``max_depth``.
When every target failed, the last error is raised; its message lists every attempt and
``error.tried`` holds ``(target, error)`` pairs. A stream falls back only before its first chunk.

Put it outside ``retry`` so that every target gets its own retries:
``middleware = ["cache", "fallback", "retry", "circuit", "ratelimit"]``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt

from modelwire.errors import (
    AuthenticationError,
    BadRequestError,
    CircuitOpenError,
    ConfigurationError,
    ContentFilterError,
    ContextWindowExceededError,
    InvalidResponseError,
    ModelwireError,
    NotFoundError,
    PermissionDeniedError,
    ProviderConnectionError,
    ProviderTimeoutError,
    QuotaExceededError,
    RateLimitError,
    RateLimitExceeded,
    ServerError,
    StreamInterruptedError,
)
from modelwire.hookspecs import hookimpl
from modelwire.middleware import CallNext, CallNextStream, Middleware, MiddlewareContext, aclose_stream
from modelwire.types import Chunk, Completion, Request

__all__ = ["FallbackConfig", "FallbackMiddleware", "error_kind"]

ErrorKind = Literal[
    "rate_limit", "quota", "unavailable", "auth", "not_found", "context_window", "content_filter", "bad_request"
]

_DEFAULT_ON: list[ErrorKind] = ["rate_limit", "quota", "unavailable", "auth", "not_found"]

_KINDS: tuple[tuple[type[BaseException] | tuple[type[BaseException], ...], str], ...] = (
    (ContextWindowExceededError, "context_window"),
    (ContentFilterError, "content_filter"),
    (QuotaExceededError, "quota"),
    ((RateLimitError, RateLimitExceeded), "rate_limit"),
    (
        (ServerError, ProviderTimeoutError, ProviderConnectionError, InvalidResponseError, CircuitOpenError,
         StreamInterruptedError),
        "unavailable",
    ),
    ((AuthenticationError, PermissionDeniedError), "auth"),
    (NotFoundError, "not_found"),
    (BadRequestError, "bad_request"),
)


def error_kind(error: BaseException) -> str | None:
    """The fallback kind of ``error`` (see the module docstring), None when no fallback can help."""
    for classes, kind in _KINDS:
        if isinstance(error, classes):
            return kind
    return None


class FallbackConfig(BaseModel):
    """The ``[fallback]`` section; see the module docstring."""

    model_config = ConfigDict(extra="forbid")

    chains: dict[str, list[str]] = Field(default_factory=dict)
    on: list[ErrorKind] = Field(default_factory=lambda: list(_DEFAULT_ON))
    by_error: dict[ErrorKind, dict[str, list[str]]] = Field(default_factory=dict)
    max_depth: StrictInt = Field(5, ge=0, le=50)


class FallbackMiddleware(Middleware):
    """Walks the configured fallback chains when a target fails."""

    #: per batch for embeddings, as for a completion (docs/embeddings.md)
    applies_to = ("whole", "stream", "embeddings")
    Config = FallbackConfig

    def __init__(self, config: FallbackConfig, context: MiddlewareContext) -> None:
        super().__init__(config, context)
        self.config: FallbackConfig = config
        self._check("fallback.chains", config.chains)
        for kind, table in config.by_error.items():
            self._check(f"fallback.by_error.{kind}", table)
        self._active = bool(config.chains or any(config.by_error.values())) and config.max_depth > 0
        self.stats = {"fallbacks": 0, "exhausted": 0}

    def _check(self, where: str, table: dict[str, list[str]]) -> None:
        """Every key and target must name a configured provider: fail at load time, not mid-outage."""
        configured = sorted(self.context.providers)
        for key, targets in table.items():
            for position, target in enumerate((key, *targets)):
                provider, _, model = target.partition("/")
                wildcard_ok = position == 0 and model == "*"
                if not provider or not model or ("*" in model and not wildcard_ok):
                    raise ConfigurationError(
                        f"config key '{where}.\"{key}\"': {target!r} must be 'provider/model'"
                        + (" (a 'provider/*' wildcard is allowed only as a key)" if "*" in model else "")
                    )
                if provider not in self.context.providers:
                    raise ConfigurationError(
                        f"config key '{where}.\"{key}\"': {target!r} names provider '{provider}', which is not "
                        f"configured (configured providers: {', '.join(configured) or 'none'})"
                    )

    # -- routing ---------------------------------------------------------------------------------

    def chain_for(self, kind: str, target: str) -> list[str] | None:
        """The fallback targets after ``target`` failed with an error of ``kind``; None when that
        error must not fall back at all."""
        table = self.config.by_error.get(kind)  # type: ignore[call-overload]
        if table is not None:
            found = _lookup(table, target)
            if found is not None:
                return found
        if kind in self.config.on:
            return _lookup(self.config.chains, target) or []
        return None

    def _next(
        self, request: Request, current: Request, error: ModelwireError, state: _Walk
    ) -> Request | None:
        state.tried.append((current.target, error))
        kind = error_kind(error)
        chain = self.chain_for(kind, current.target) if kind else None
        if chain is None:
            return None
        for target in chain:
            if target not in state.seen:
                state.seen.add(target)
                state.pending.append(target)
        while state.pending and state.depth < self.config.max_depth:
            target = state.pending.pop(0)
            state.depth += 1
            provider, _, model = target.partition("/")
            derived = dataclasses.replace(request, provider=provider, model=model, attempt=1)
            try:
                prepare = getattr(self.context.providers[provider], "prepare", None)
                if prepare is not None:
                    prepare(derived)  # e.g. the fallback's API key is missing
            except ModelwireError as exc:
                state.tried.append((target, exc))
                continue
            self.stats["fallbacks"] += 1
            try:
                self.context.hook.modelwire_fallback_taken(request=request, error=error, target=target)
            except Exception:  # an observer must not change which target answers
                pass
            log = request.state.setdefault("log", {})
            log.pop("retry_delay", None)  # belongs to the previous target's attempts
            log["fallback_from"] = request.target
            log["fallback_depth"] = state.depth
            return derived
        return None

    def _final(self, error: ModelwireError, state: _Walk) -> ModelwireError:
        if len(state.tried) > 1:
            self.stats["exhausted"] += 1
            summary = "; ".join(f"{target}: {_brief(err)}" for target, err in state.tried)
            error.tried = tuple(state.tried)
            error.message = f"all {len(state.tried)} targets failed: {summary}"
            error.args = (error.message,)
        return error

    # -- whole completions -----------------------------------------------------------------------

    async def ahandle(self, request: Request, call_next: CallNext) -> Completion:
        if not self._active:
            return await call_next(request)
        state = _Walk(request.target)
        current = request
        while True:
            try:
                response = await call_next(current)
            except ModelwireError as err:
                following = self._next(request, current, err, state)
                if following is None:
                    raise self._final(err, state) from None
                current = following
                continue
            if current is not request:
                request.attempt = current.attempt
            return response

    # -- streams ---------------------------------------------------------------------------------

    def ahandle_stream(self, request: Request, call_next: CallNextStream) -> AsyncIterator[Chunk]:
        return self._stream(request, call_next) if self._active else call_next(request)

    async def _stream(self, request: Request, call_next: CallNextStream) -> AsyncIterator[Chunk]:
        state = _Walk(request.target)
        current = request
        while True:
            upstream = call_next(current)
            try:
                first = await upstream.__anext__()
                break
            except StopAsyncIteration:
                await aclose_stream(upstream)
                return
            except ModelwireError as err:
                await aclose_stream(upstream)
                following = self._next(request, current, err, state)
                if following is None:
                    raise self._final(err, state) from None
                current = following
            except BaseException:
                await aclose_stream(upstream)
                raise
        if current is not request:
            request.attempt = current.attempt
            request.state["served_by"] = (current.provider, current.model)
            request.state.setdefault("log", {})["fallback_to"] = current.target
        try:  # content reached the caller: from here a failure is raised, never a switch of target
            yield first
            async for chunk in upstream:
                yield chunk
        finally:
            await aclose_stream(upstream)

    def describe(self) -> dict[str, Any]:
        return {
            "chains": self.config.chains,
            "on": self.config.on,
            "by_error": self.config.by_error,
            "max_depth": self.config.max_depth,
            **self.stats,
        }


class _Walk:
    __slots__ = ("tried", "pending", "seen", "depth")

    def __init__(self, first: str) -> None:
        self.tried: list[tuple[str, ModelwireError]] = []
        self.pending: list[str] = []
        self.seen = {first}
        self.depth = 0


def _lookup(table: dict[str, list[str]], target: str) -> list[str] | None:
    found = table.get(target)
    if found is None:
        found = table.get(target.partition("/")[0] + "/*")
    return found


def _brief(error: ModelwireError) -> str:
    status = f" {error.status}" if error.status else ""
    return f"{type(error).__name__}{status} ({error.message[:100]})"



def _demo(client: Any, server: Any, echo: Callable[[str], None]) -> None:
    """A 429 with Retry-After retried, then a 503 outage answered by the fallback."""
    from modelwire.client import Client
    from modelwire.demo import demo_config
    from modelwire.testing import Reply

    config = demo_config(server, middleware=["fallback", "retry", "circuit"])
    config["retry"] = {"max_attempts": 2, "base_delay": 0.05}
    config["fallback"] = {"chains": {"openai/gpt-4o": ["local/llama3"]}}
    demo = Client(config=config)
    limited = Reply.error(429, "Rate limit reached for gpt-4o on requests per min (RPM).", type="requests",
                          code="rate_limit_exceeded", headers={"retry-after": "0.3"})
    server.script(limited, Reply.completion("answered on attempt 2"), match="gpt-4o")
    before, start = server.calls(), time.perf_counter()
    response = demo.complete("Hi", model="openai/gpt-4o")
    echo(f"   429 with retry-after: 0.3 -> waited {time.perf_counter() - start:.2f} s, retried: {response.text!r} "
         f"({server.calls() - before} upstream calls)")
    down = Reply.error(503, "That model is currently overloaded with other requests.", type="server_error")
    server.script(down, down, match="gpt-4o")
    before = server.calls()
    response = demo.complete("Hello, whoever is up", model="openai/gpt-4o")
    echo(f"   openai/gpt-4o answered 503 twice (2 attempts) -> fallback to {response.provider}/{response.model}: "
         f"{response.text!r} ({server.calls() - before} upstream calls)")


@hookimpl
def modelwire_register_middleware(register: Callable[[str, type[Middleware]], None]) -> None:
    register("fallback", FallbackMiddleware)


@hookimpl
def modelwire_register_demo_steps(register: Callable[[str, Callable[..., Any]], None]) -> None:
    register("Retry with Retry-After, then a fallback", _demo)
