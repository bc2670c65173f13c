"""The rate-limit middleware: waits for request, token and concurrency permits before each
attempt (the plugin's hooks are in the package's ``__init__``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from modelwire.embeddings import estimate_input_tokens
from modelwire.errors import RateLimitExceeded, RequestValidationError
from modelwire.middleware import CallNext, CallNextStream, Middleware, MiddlewareContext, aclose_stream
from modelwire.types import Chunk, Completion, LimitSpec, Request, Usage

from .config import RateLimitConfig, RateLimitOptions, estimate_tokens, match_rule
from .engine import Engine, Permit

__all__ = ["ON_ADMITTED", "ON_QUEUED", "ON_SEND", "RESPONSE_HEADERS", "RateLimitMiddleware"]

#: ``request.state`` keys shared with the provider and the retry middleware (docs/ratelimit.md):
#: a provider whose class sets ``reports_send = True`` calls ``state[ON_SEND]()`` just before the
#: request goes on the wire (the permit counts from then); a stream provider puts its response
#: headers in ``state[RESPONSE_HEADERS]``; retry puts callbacks in ``state[ON_QUEUED]``, called
#: when a limited attempt starts waiting for its permits, and ``state[ON_ADMITTED]``, called
#: when the limiter lets it go (retry's attempt_timeout does not count the time between).
ON_SEND = "on_send"
RESPONSE_HEADERS = "response_headers"
ON_QUEUED = "on_queued"
ON_ADMITTED = "on_admitted"


class RateLimitMiddleware(Middleware):
    """Waits for request, token and concurrency permits before each attempt.

    :param config: the validated ``[ratelimit]`` section.
    :param context: hook relay and providers of the client.
    """

    Config = RateLimitConfig
    Options = RateLimitOptions
    #: an embeddings batch takes one request permit and its input tokens (docs/embeddings.md)
    applies_to = ("whole", "stream", "embeddings")

    def __init__(self, config: RateLimitConfig | None, context: MiddlewareContext) -> None:
        super().__init__(config or RateLimitConfig(), context)
        self.config: RateLimitConfig = self.config
        self.engine = Engine(self.config)
        hook = getattr(context.hook, "modelwire_limit_spec", None)
        self._spec_hook = hook if hook is not None and hook.get_hookimpls() else None
        delayed = getattr(context.hook, "modelwire_limit_delayed", None)
        self._delayed_hook = delayed if delayed is not None and delayed.get_hookimpls() else None
        self._matches: dict[str, LimitSpec | None] = {}
        self._warm: set[str] = set()

    # -- per request ---------------------------------------------------------------------------

    def spec(self, request: Request) -> LimitSpec | None:
        """The bucket of ``request``: a ``modelwire_limit_spec`` hook's answer, else the first
        configured rule that matches (None: not limited)."""
        if self._spec_hook is not None:
            spec: LimitSpec | None = self._spec_hook(request=request)
            if spec is not None:
                return spec
        target = request.target
        if target in self._matches:
            return self._matches[target]
        found = match_rule(self.config, request)
        if len(self._matches) > 4096:
            self._matches.clear()
        self._matches[target] = found
        return found

    def _max_wait(self, request: Request) -> float:
        value = request.option("ratelimit", "max_wait", None)
        if value is None:
            return self.config.max_wait
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
            raise RequestValidationError(f"options.ratelimit.max_wait must be a number >= 0, got {value!r}")
        return float(value)

    async def _provider(self, request: Request) -> Any:
        """The request's provider, warmed up: admission and sending must be close together, so
        the first call's litellm import (seconds) happens before a permit is taken, not after."""
        try:
            provider = self.context.provider(request.provider)
        except Exception:  # unknown provider: the provider stage reports it, with its own error
            return None
        if request.provider not in self._warm:
            warm = getattr(provider, "awarmup", None)
            if warm is not None:
                await warm()
            self._warm.add(request.provider)
        return provider

    async def _acquire(self, request: Request) -> Permit | None:
        spec = self.spec(request)
        if spec is None:
            return None
        _signal(request, ON_QUEUED)  # from here until admitted: the queue's time, not the provider's
        provider = await self._provider(request)
        plan = self.engine.plan(spec)
        if getattr(provider, "reports_send", False):
            plan.signals = True
        tokens = prompt = 0
        if plan.tok_rates and request.operation == "embeddings":  # input tokens only, nothing generated
            tokens = prompt = spec.tokens if spec.tokens is not None else estimate_input_tokens(request)
        elif plan.tok_rates:
            tokens = spec.tokens if spec.tokens is not None else estimate_tokens(request, self.config)
            completion = request.params.get("max_tokens") or request.params.get("max_completion_tokens")
            prompt = max(0, tokens - int(completion or self.config.default_max_tokens))
        try:
            permit = await self.engine.acquire(request, plan, tokens, prompt, self._max_wait(request))
        except RateLimitExceeded as exc:
            try:
                self.context.hook.modelwire_limit_rejected(request=request, error=exc)
            except Exception:  # an observer must not change the error the caller gets
                pass
            raise
        request.state.setdefault("log", {})["limiter_wait_ms"] = round(permit.waited * 1000, 2)
        request.state[ON_SEND] = _on_send(self.engine, permit)
        _signal(request, ON_ADMITTED)  # retry's attempt_timeout starts now
        if permit.delayed and self._delayed_hook is not None:
            try:
                self._delayed_hook(request=request, delay=permit.waited)
            except Exception:  # an observer must not fail the request
                pass
        return permit

    async def ahandle(self, request: Request, call_next: CallNext) -> Completion:
        permit = await self._acquire(request)
        if permit is None:
            return await call_next(request)
        try:
            response = await call_next(request)
        except BaseException as exc:
            await _shielded(self.engine.finish(permit, error=exc))
            raise
        finally:
            request.state.pop(ON_SEND, None)
        await self.engine.finish(permit, usage=response.usage, headers=_headers(response))
        return response

    async def ahandle_stream(self, request: Request, call_next: CallNextStream) -> AsyncIterator[Chunk]:
        permit = await self._acquire(request)
        if permit is None:
            async for chunk in call_next(request):
                yield chunk
            return
        usage: Usage | None = None
        error: BaseException | None = None
        request.state.pop(RESPONSE_HEADERS, None)  # an earlier attempt's headers say nothing of this one
        upstream = call_next(request)
        try:
            async for chunk in upstream:
                if chunk.usage is not None:
                    usage = chunk.usage
                yield chunk
        except BaseException as exc:  # includes GeneratorExit when the consumer stops early
            error = exc
            raise
        finally:
            request.state.pop(ON_SEND, None)
            await aclose_stream(upstream)
            headers = request.state.get(RESPONSE_HEADERS) if error is None else None
            await _shielded(self.engine.finish(
                permit, usage=usage if error is None else None, error=error,
                headers=headers if isinstance(headers, Mapping) else None,
            ))

    # -- lifecycle and introspection -------------------------------------------------------------

    async def aclose(self) -> None:
        await self.engine.aclose()

    def describe(self) -> dict[str, Any]:
        """Configuration and counters for ``modelwire plugins``."""
        s = self.engine.stats
        return {
            "backend": self.config.backend,
            "limits": [rule.model_dump(exclude_none=True, exclude_defaults=True) for rule in self.config.limits],
            "admitted": s.admitted,
            "waits": s.waits,
            "wait_seconds": round(s.wait_seconds, 3),
            "rejections": s.rejections,
            "too_large": s.too_large,
            "cooldowns": s.cooldowns,
            "backend_errors": s.backend_errors,
            "fallback_admissions": s.fallback_admissions,
            "queue_depth": {k: v for k, v in s.queued.items() if v},
            "in_flight": {k: v for k, v in s.in_flight.items() if v},
        }


def _signal(request: Request, key: str) -> None:
    callback = request.state.get(key)
    if callable(callback):
        callback()


def _on_send(engine: Engine, permit: Permit) -> Callable[[], None]:
    """The send signal for ``permit``; a provider may call it from a worker thread too."""
    loop = asyncio.get_running_loop()

    def signal() -> None:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            engine.sending(permit)
        else:  # later than the real send: the permit then counts from a little later, never earlier
            loop.call_soon_threadsafe(engine.sending, permit)

    return signal


async def _shielded(settle: Any) -> None:
    """Run bookkeeping even when the request's task is being cancelled."""
    try:
        await asyncio.shield(settle)
    except asyncio.CancelledError:
        pass


def _headers(response: Completion) -> dict[str, Any] | None:
    hidden = getattr(response.raw, "_hidden_params", None)
    headers = hidden.get("headers") if isinstance(hidden, dict) else None
    return headers if isinstance(headers, dict) else None
