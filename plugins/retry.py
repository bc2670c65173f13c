"""The ``retry`` middleware: try a failed request again, the right number of times, at the right pace.

Config section ``[retry]`` (every key optional)::

    [retry]
    max_attempts = 3          # attempts in total, the first one included (openai-python: 1 + 2 retries)
    base_delay = 0.5          # seconds; backoff before retry n is U(0, min(max_delay, base_delay * 2**n))
    max_delay = 8.0
    jitter = "full"           # "full" (AWS full jitter) or "openai" (min(cap, base*2**n) * U(0.75, 1])
    deadline = 60.0           # total seconds for all attempts and sleeps; wins over max_attempts
    attempt_timeout = 20.0    # seconds per attempt (stream: until the first chunk)
    max_retry_after = 60.0    # a Retry-After above this is not slept: the RateLimitError is raised at once
    retry_on_timeout = true   # false: a timeout after the request was sent is not retried (no double charge)
    invalid_response_retries = 1   # a 200 that is not JSON is retried at most this often

What is retried is decided per error: ``error.retryable`` (408, 409, 429 except quota and
"request too large", 5xx, connection errors, timeouts, ``x-should-retry: true``), overridden by
the first plugin that answers the ``modelwire_error_retryable`` hook. A stream is retried only
until its first chunk reached the caller; after that a failure is raised, never a silent restart.

Per call: ``options={"retry": {"max_attempts": 1, "deadline": 5}}``.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, model_validator

from modelwire.errors import (
    InvalidResponseError,
    ModelwireError,
    ProviderConnectionError,
    ProviderTimeoutError,
    RequestValidationError,
)
from modelwire.hookspecs import hookimpl
from modelwire.log import logger
from modelwire.middleware import CallNext, CallNextStream, Middleware, MiddlewareContext, aclose_stream
from modelwire.types import Chunk, Completion, Request

__all__ = ["RetryConfig", "RetryMiddleware", "RetryOptions", "backoff_delay"]

_timeout: Any = getattr(asyncio, "timeout", None)  # Python >= 3.11: a timeout in the same task


class RetryConfig(BaseModel):
    """The ``[retry]`` section; see the module docstring for the meaning of each key."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    max_attempts: StrictInt = Field(3, ge=1, le=100)
    base_delay: float = Field(0.5, ge=0, le=600)
    max_delay: float = Field(8.0, ge=0, le=3600)
    jitter: Literal["full", "openai"] = "full"
    deadline: float | None = Field(None, gt=0)
    attempt_timeout: float | None = Field(None, gt=0)
    max_retry_after: float = Field(60.0, ge=0)
    retry_on_timeout: bool = True
    invalid_response_retries: StrictInt = Field(1, ge=0)

    @model_validator(mode="after")
    def _delays_ordered(self) -> RetryConfig:
        if self.max_delay < self.base_delay:
            raise ValueError(f"retry.max_delay ({self.max_delay}) must be >= retry.base_delay ({self.base_delay})")
        return self


class RetryOptions(BaseModel):
    """Per-call ``options={"retry": {...}}``: overrides of the section's values for one request."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    max_attempts: StrictInt | None = Field(None, ge=1, le=100)
    deadline: StrictFloat | None = Field(None, ge=0)


def backoff_delay(retry: int, base: float, cap: float, jitter: str, rand: float) -> float:
    """The backoff before retry number ``retry`` (1 for the first retry).

    :param rand: a number in [0, 1), drawn by the caller (injectable for tests).

    >>> backoff_delay(1, 0.5, 8.0, "full", 0.5), backoff_delay(10, 0.5, 8.0, "openai", 0.0)
    (0.25, 8.0)
    """
    ceiling = min(cap, base * 2.0 ** min(retry - 1, 60))
    if jitter == "openai":
        return ceiling * (1.0 - 0.25 * rand)
    return ceiling * rand


class _Attempts:
    """Per-request retry bookkeeping."""

    __slots__ = ("max_attempts", "deadline_at", "invalid", "number")

    def __init__(self, max_attempts: int, deadline_at: float | None) -> None:
        self.max_attempts = max_attempts
        self.deadline_at = deadline_at
        self.invalid = 0
        self.number = 0


class RetryMiddleware(Middleware):
    """Retries failed attempts with exponential backoff, full jitter and Retry-After.

    For tests and simulations, replace the instance's ``sleep`` (an async function of seconds),
    ``clock`` (monotonic seconds) or ``random`` (returns [0, 1)) attributes.
    """

    Config = RetryConfig
    Options = RetryOptions
    #: per batch for embeddings, as for a completion (docs/embeddings.md)
    applies_to = ("whole", "stream", "embeddings")

    def __init__(self, config: RetryConfig, context: MiddlewareContext) -> None:
        super().__init__(config, context)
        self.config: RetryConfig = config
        self.sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep
        self.clock: Callable[[], float] = time.monotonic
        self.random: Callable[[], float] = random.random
        self.stats = {"requests": 0, "retries": 0, "gave_up": 0, "fail_fast_retry_after": 0, "deadline_exceeded": 0}

    # -- whole completions -----------------------------------------------------------------------

    async def ahandle(self, request: Request, call_next: CallNext) -> Completion:
        state = self._start(request)
        while True:
            state.number += 1
            request.attempt = state.number
            try:
                response: Completion = await self._timed(call_next(request), request, state)
                return response
            except ModelwireError as err:
                delay = self._decide(request, err, state)
                if delay is None:
                    raise
            await self.sleep(delay)

    # -- streams -------------------------------------------------------------------------------------

    def ahandle_stream(self, request: Request, call_next: CallNextStream) -> AsyncIterator[Chunk]:
        return self._stream(request, call_next)

    async def _stream(self, request: Request, call_next: CallNextStream) -> AsyncIterator[Chunk]:
        state = self._start(request)
        while True:
            state.number += 1
            request.attempt = state.number
            upstream = call_next(request)
            try:
                first = await self._timed(upstream.__anext__(), request, state)
                break
            except StopAsyncIteration:
                await aclose_stream(upstream)
                return
            except ModelwireError as err:
                await aclose_stream(upstream)
                delay = self._decide(request, err, state)
                if delay is None:
                    raise
            except BaseException:
                await aclose_stream(upstream)
                raise
            await self.sleep(delay)
        # From here on the caller has seen content: a failure is raised, never retried.
        try:
            yield first
            async for chunk in upstream:
                yield chunk
        finally:
            await aclose_stream(upstream)

    # -- policy ----------------------------------------------------------------------------------

    def _start(self, request: Request) -> _Attempts:
        self.stats["requests"] += 1
        max_attempts = self.config.max_attempts
        deadline = self.config.deadline
        if request.options:
            max_attempts = _option(request, "max_attempts", max_attempts, int, 1)
            deadline = _option(request, "deadline", deadline, float, 0)
        return _Attempts(max_attempts, None if deadline is None else self.clock() + deadline)

    def _limit(self, state: _Attempts) -> tuple[float | None, bool]:
        """Seconds the attempt may take from now, and whether the total deadline is what bounds it."""
        limit = self.config.attempt_timeout
        if state.deadline_at is not None:
            remaining = state.deadline_at - self.clock()
            if limit is None or remaining <= limit:
                return max(remaining, 0.0), True
        return limit, False

    async def _timed(self, call: Awaitable[Any], request: Request, state: _Attempts) -> Any:
        """Await one attempt under ``attempt_timeout`` and the remaining total deadline.

        ``attempt_timeout`` is the provider's time: a rate limiter inside calls
        ``request.state["on_queued"]`` when the attempt starts waiting for permits and
        ``request.state["on_admitted"]`` when it lets the attempt go (see
        modelwire.plugins.ratelimit); in between only the total ``deadline`` runs, and the
        attempt's clock starts again at admission. The deadline counts everything.
        """
        limit, by_deadline = self._limit(state)
        if limit is None:
            return await call
        try:
            if _timeout is not None:
                async with _timeout(limit) as timer:
                    if not by_deadline:
                        loop = asyncio.get_running_loop()

                        def queued() -> None:
                            nonlocal by_deadline
                            if timer.expired():
                                return
                            by_deadline = state.deadline_at is not None
                            left = None if state.deadline_at is None else max(state.deadline_at - self.clock(), 0.0)
                            timer.reschedule(None if left is None else loop.time() + left)

                        def admitted() -> None:
                            nonlocal by_deadline
                            if timer.expired():
                                return
                            again, by_deadline = self._limit(state)
                            timer.reschedule(None if again is None else loop.time() + again)

                        request.state["on_queued"], request.state["on_admitted"] = queued, admitted
                    try:
                        return await call
                    finally:
                        request.state.pop("on_queued", None)
                        request.state.pop("on_admitted", None)
            return await asyncio.wait_for(call, limit)  # pragma: no cover - Python 3.10 counts queueing
        except (TimeoutError, asyncio.TimeoutError):
            if by_deadline:
                self.stats["deadline_exceeded"] += 1
                what = f"the total deadline of {self._deadline(request)} s (retry.deadline) passed"
            else:
                what = f"no answer within retry.attempt_timeout = {self.config.attempt_timeout} s"
            error = ProviderTimeoutError(
                f"{what} during attempt {state.number}",
                provider=request.provider,
                model=request.model,
                attempts=state.number,
                retryable=not by_deadline,
            )
            raise error from None

    def _deadline(self, request: Request) -> float | None:
        value = request.option("retry", "deadline") if request.options else None
        return value if value is not None else self.config.deadline

    def _decide(self, request: Request, error: ModelwireError, state: _Attempts) -> float | None:
        """Seconds to sleep before the next attempt, or None to give up (and raise ``error``)."""
        error.attempts = state.number
        if state.number >= state.max_attempts or not self._retryable(request, error, state):
            self.stats["gave_up"] += 1
            return None
        retry_after, source = error.retry_after, error.retry_after_source
        if retry_after is not None and source == "header" and retry_after > self.config.max_retry_after:
            self.stats["fail_fast_retry_after"] += 1  # e.g. Azure's "retry after 86400 seconds"
            return None
        if retry_after is not None and source is not None and retry_after <= self.config.max_retry_after:
            delay = retry_after
        else:
            delay = backoff_delay(state.number, self.config.base_delay, self.config.max_delay, self.config.jitter,
                                  self.random())
        if state.deadline_at is not None and self.clock() + delay >= state.deadline_at:
            self.stats["deadline_exceeded"] += 1
            return None  # sleeping past the deadline would only delay the same error
        self._scheduled(request, error, state.number, delay)
        return delay

    def _retryable(self, request: Request, error: ModelwireError, state: _Attempts) -> bool:
        verdict = self.context.hook.modelwire_error_retryable(request=request, error=error)
        if verdict is not None:
            return bool(verdict)
        if not error.retryable:
            return False
        if isinstance(error, ProviderTimeoutError) and error.request_sent is not False:
            return self.config.retry_on_timeout
        if isinstance(error, InvalidResponseError):
            state.invalid += 1
            return state.invalid <= self.config.invalid_response_retries
        return True

    def _scheduled(self, request: Request, error: ModelwireError, attempt: int, delay: float) -> None:
        self.stats["retries"] += 1
        log = request.state.setdefault("log", {})
        log["retry_delay"] = round(delay, 3)
        if isinstance(error, (ProviderTimeoutError, ProviderConnectionError)) and error.request_sent is not False:
            # The provider may have run (and billed) the failed attempt: OpenAI honours no idempotency key.
            log["possible_duplicate_charge"] = True
        try:
            self.context.hook.modelwire_retry_scheduled(request=request, error=error, attempt=attempt, delay=delay)
        except Exception as exc:
            logger.error("observer_failed", hook="modelwire_retry_scheduled", error=repr(exc))

    def describe(self) -> dict[str, Any]:
        return {**self.config.model_dump(), **self.stats}


def _option(request: Request, key: str, default: Any, kind: type, minimum: float) -> Any:
    value = request.option("retry", key, default)
    if value is default:
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < minimum:
        raise RequestValidationError(f"options['retry']['{key}'] must be a number >= {minimum}, got {value!r}")
    return kind(value)



@hookimpl
def modelwire_register_middleware(register: Callable[[str, type[Middleware]], None]) -> None:
    register("retry", RetryMiddleware)
