"""The ``circuit`` middleware: stop hammering a provider instance that keeps failing.

One breaker per provider instance (``openai``, ``azure``, ``local``...). It opens after
``failure_threshold`` consecutive failures (or, when ``failure_ratio`` is set, when that share of
at least ``min_requests`` calls in the last ``window`` seconds failed). While open, calls fail at
once with :class:`~modelwire.CircuitOpenError` (not retryable, so the ``fallback`` middleware moves
on to the next target). After ``cooldown`` seconds one probe request is let through (half-open):
success closes the circuit, failure opens it for another cooldown.

Place it just inside ``retry`` so that each attempt is counted and an open circuit ends the retry
loop at once: ``middleware = ["cache", "fallback", "retry", "circuit", "ratelimit"]``.

What counts as a failure: 5xx, timeouts, broken or refused connections, invalid 200 bodies and
streams that broke before their first chunk. A 4xx other than 429 proves the provider is up and
counts as a success; 429s are left to the rate limiter (its shared cooldown) and count as neither,
unless ``count_rate_limits = true``.

State is shown by ``modelwire plugins``.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt

from modelwire.errors import (
    CircuitOpenError,
    InvalidResponseError,
    ModelwireError,
    ProviderConnectionError,
    ProviderError,
    ProviderTimeoutError,
    RateLimitError,
    ServerError,
    StreamInterruptedError,
)
from modelwire.hookspecs import hookimpl
from modelwire.middleware import CallNext, CallNextStream, Middleware, MiddlewareContext, aclose_stream
from modelwire.types import Chunk, Completion, Request

__all__ = ["Breaker", "CircuitConfig", "CircuitMiddleware"]

_FAILURES = (ServerError, ProviderTimeoutError, ProviderConnectionError, InvalidResponseError, StreamInterruptedError)


class CircuitConfig(BaseModel):
    """The ``[circuit]`` section."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    #: consecutive failures that open the circuit.
    failure_threshold: StrictInt = Field(5, ge=1)
    #: optional: open when this share of recent calls failed (0 < ratio <= 1).
    failure_ratio: float | None = Field(None, gt=0, le=1)
    #: the ratio is judged only over at least this many calls.
    min_requests: StrictInt = Field(10, ge=1)
    #: seconds of history the ratio looks at.
    window: float = Field(60.0, gt=0)
    #: seconds an open circuit refuses calls before letting one probe through.
    cooldown: float = Field(30.0, gt=0)
    #: count 429s as failures too (router-style cooldown of a saturated deployment, so that
    #: ``fallback`` skips it); off by default because pacing 429s is the rate limiter's job.
    count_rate_limits: bool = False


class Breaker:
    """The state of one provider instance's circuit: ``closed``, ``open`` or ``half_open``."""

    def __init__(self, config: CircuitConfig) -> None:
        self.config = config
        self.state = "closed"
        self.consecutive = 0
        self.opened_at = 0.0
        self.probe_since: float | None = None
        self.opens = 0
        self.rejected = 0
        self.last_error = ""
        self.recent: deque[tuple[float, bool]] = deque()

    def admit(self, now: float) -> float | None:
        """None when a call may go through, else the seconds until a probe will be allowed."""
        if self.state == "closed":
            return None
        if self.state == "open":
            left = self.opened_at + self.config.cooldown - now
            if left > 0:
                self.rejected += 1
                return left
            self.state = "half_open"
        # half-open: one probe at a time; a probe that never reported back is replaced after a cooldown
        if self.probe_since is None or now - self.probe_since >= self.config.cooldown:
            self.probe_since = now
            return None
        self.rejected += 1
        return max(self.probe_since + self.config.cooldown - now, 0.0)

    def success(self, now: float) -> None:
        self.state, self.consecutive, self.probe_since = "closed", 0, None
        self._remember(now, True)

    def failure(self, now: float, error: BaseException) -> None:
        self.consecutive += 1
        self.last_error = f"{type(error).__name__}: {str(error)[:160]}"
        self._remember(now, False)
        if self.state == "half_open" or (self.state == "closed" and self._tripped()):
            self.state, self.opened_at, self.probe_since = "open", now, None
            self.opens += 1

    def release(self) -> None:
        """A call ended without telling anything about health (cancelled, 429): free the probe slot."""
        self.probe_since = None

    def _remember(self, now: float, ok: bool) -> None:
        if self.config.failure_ratio is None:
            return
        self.recent.append((now, ok))
        while self.recent and self.recent[0][0] < now - self.config.window:
            self.recent.popleft()

    def _tripped(self) -> bool:
        if self.consecutive >= self.config.failure_threshold:
            return True
        ratio = self.config.failure_ratio
        if ratio is None or len(self.recent) < self.config.min_requests:
            return False
        failed = sum(1 for _, ok in self.recent if not ok)
        return failed / len(self.recent) >= ratio

    def describe(self, now: float) -> dict[str, Any]:
        info: dict[str, Any] = {"state": self.state, "consecutive_failures": self.consecutive, "opened": self.opens,
                                "rejected": self.rejected}
        if self.state == "open":
            info["probe_in"] = round(max(self.opened_at + self.config.cooldown - now, 0.0), 2)
        if self.last_error:
            info["last_error"] = self.last_error
        return info


class CircuitMiddleware(Middleware):
    """Per-provider-instance circuit breakers. ``clock`` may be replaced for tests."""

    #: per batch for embeddings, as for a completion (docs/embeddings.md)
    applies_to = ("whole", "stream", "embeddings")
    Config = CircuitConfig

    def __init__(self, config: CircuitConfig, context: MiddlewareContext) -> None:
        super().__init__(config, context)
        self.config: CircuitConfig = config
        self.clock: Callable[[], float] = time.monotonic
        self.breakers: dict[str, Breaker] = {name: Breaker(config) for name in context.providers}

    def breaker(self, provider: str) -> Breaker:
        """The breaker of provider instance ``provider`` (created closed on first use)."""
        found = self.breakers.get(provider)
        if found is None:
            found = self.breakers[provider] = Breaker(self.config)
        return found

    def _admit(self, request: Request) -> Breaker:
        breaker = self.breaker(request.provider)
        wait = breaker.admit(self.clock())
        if wait is not None:
            raise CircuitOpenError(
                f"circuit open for provider '{request.provider}' after {breaker.consecutive} failures "
                f"(last: {breaker.last_error or 'unknown'}); next probe in {wait:.1f} s",
                provider=request.provider,
                model=request.model,
                retry_after=round(wait, 3),
                retryable=False,
            )
        return breaker

    def _record(self, breaker: Breaker, error: BaseException) -> None:
        if isinstance(error, _FAILURES) or (self.config.count_rate_limits and isinstance(error, RateLimitError)):
            opens = breaker.opens
            breaker.failure(self.clock(), error)
            if breaker.opens != opens:
                provider = next(name for name, b in self.breakers.items() if b is breaker)
                try:
                    self.context.hook.modelwire_circuit_opened(provider=provider, error=error)
                except Exception:  # an observer must not fail the request
                    pass
        elif isinstance(error, ProviderError) and not isinstance(error, (RateLimitError, CircuitOpenError)):
            breaker.success(self.clock())  # the provider answered; the request itself was the problem
        else:
            breaker.release()

    async def ahandle(self, request: Request, call_next: CallNext) -> Completion:
        breaker = self._admit(request)
        try:
            response = await call_next(request)
        except ModelwireError as err:
            self._record(breaker, err)
            raise
        except BaseException:
            breaker.release()
            raise
        breaker.success(self.clock())
        return response

    def ahandle_stream(self, request: Request, call_next: CallNextStream) -> AsyncIterator[Chunk]:
        return self._stream(request, call_next)

    async def _stream(self, request: Request, call_next: CallNextStream) -> AsyncIterator[Chunk]:
        breaker = self._admit(request)
        upstream = call_next(request)
        started = False
        try:
            async for chunk in upstream:
                if not started:
                    started = True
                    breaker.success(self.clock())
                yield chunk
        except ModelwireError as err:
            if not started:
                self._record(breaker, err)
            raise
        except BaseException:
            if not started:
                breaker.release()
            raise
        finally:
            await aclose_stream(upstream)
        if not started:
            breaker.success(self.clock())

    def describe(self) -> dict[str, Any]:
        now = self.clock()
        return {
            "failure_threshold": self.config.failure_threshold,
            "cooldown": self.config.cooldown,
            "circuits": {name: b.describe(now) for name, b in sorted(self.breakers.items())},
        }


@hookimpl
def modelwire_register_middleware(register: Callable[[str, type[Middleware]], None]) -> None:
    register("circuit", CircuitMiddleware)
