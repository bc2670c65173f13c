"""Admission: concurrency slots, arrival-order queues, rate and token permits, cooldowns, and
the policy for a failing backend.

One request goes through, in this order (each step counts against the caller's ``max_wait``):

1. a concurrency slot of its bucket (FIFO ``asyncio.Semaphore``, per event loop);
2. the bucket's arrival queue (FIFO ``asyncio.Lock``): only the head talks to the backend, so
   callers are admitted in the order they arrived;
3. as the head: the shared cooldown, then the token reservation, then the request permit
   (tokens first so the request permit, whose windows are short, is taken closest to sending).
   When the backend knows the wait is longer than the deadline allows, the request fails at
   once with :class:`RateLimitExceeded` carrying that wait.

After the call, :meth:`Engine.finish` releases the slot and settles tokens and cooldowns.
"""

from __future__ import annotations

import asyncio
import math
import time
import weakref
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pyrate_limiter import Rate

from modelwire.errors import (
    ModelwireError,
    PayloadTooLargeError,
    RateLimitError,
    RateLimiterUnavailableError,
    RateLimitExceeded,
)
from modelwire.forks import reset_after_fork
from modelwire.log import logger
from modelwire.types import LimitSpec, Request, Usage

from .backends import Backend, BackendUnavailable, MemoryBackend
from .config import RateLimitConfig, exhausted_for, request_rates, token_rates, token_unit
from .stores import make_backend

__all__ = ["Engine", "Permit", "Plan", "Stats"]


@dataclass
class Plan:
    """What a bucket key means: its pyrate buckets, token unit and concurrency."""

    key: str
    spec: LimitSpec
    req_rates: list[Rate]
    tok_rates: list[Rate]
    unit: int
    concurrency: int | None
    #: seconds between requests at the tightest request rate (queue-time estimates only)
    spacing: float
    #: the provider of this bucket reports the moment of sending (learned from its first signal)
    signals: bool = False
    #: admitted in this process and not yet sent: ticket -> monotonic admission time
    unsent: dict[str, float] = field(default_factory=dict)

    @property
    def hold(self) -> float:
        """How long an unsent request may hold up the next admission check: half the shortest
        window, so that its admission stamp never leaves a window before it is moved."""
        return min((r.interval for r in self.req_rates), default=0) / 2000

    @property
    def req_id(self) -> str:
        return f"{self.key}|req"

    @property
    def tok_id(self) -> str:
        return f"{self.key}|tok"


@dataclass
class Permit:
    """An admitted request: what it holds until :meth:`Engine.finish`."""

    plan: Plan
    backend: Backend
    ticket: str
    units: int
    prompt_units: int
    waited: float
    semaphore: asyncio.Semaphore | None
    #: the limiter made it wait (queued behind others or slept for a window); ``waited`` alone
    #: cannot tell, a busy CPU also makes an immediate admission take milliseconds
    delayed: bool = False
    #: monotonic time of admission, and whether the provider has said the request is being sent
    admitted_at: float = 0.0
    sent: bool = False
    sent_at: float = 0.0
    #: the shared store's update moving the reservation to the send time (awaited by finish)
    restamp: asyncio.Task[None] | None = None


@dataclass
class Stats:
    """Counters shown by ``modelwire plugins`` and ``modelwire limits``."""

    admitted: int = 0
    waits: int = 0
    wait_seconds: float = 0.0
    rejections: int = 0
    too_large: int = 0
    cooldowns: int = 0
    backend_errors: int = 0
    fallback_admissions: int = 0
    queued: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    in_flight: dict[str, int] = field(default_factory=lambda: defaultdict(int))


class _LoopState:
    """asyncio primitives belong to one event loop; the sync API and an app's own loop each get theirs."""

    def __init__(self) -> None:
        self.locks: dict[str, asyncio.Lock] = {}
        self.semaphores: dict[str, asyncio.Semaphore] = {}
        self.head_eta: dict[str, float] = {}


class Engine:
    """The limiter behind the ``ratelimit`` middleware.

    :param config: the validated ``[ratelimit]`` section.
    """

    def __init__(self, config: RateLimitConfig) -> None:
        self.config = config
        self.backend: Backend = make_backend(
            config.backend, path=config.path, url=config.url, prefix=config.key_prefix, timeout=config.backend_timeout
        )
        # Fallback when a shared backend fails (policy "local"), and the local cooldown mirror.
        self.local: MemoryBackend = self.backend if isinstance(self.backend, MemoryBackend) else MemoryBackend()
        self.stats = Stats()
        self.plans: dict[str, Plan] = {}
        self._down_until = 0.0
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopState] = weakref.WeakKeyDictionary()
        reset_after_fork(self, Engine.after_fork)

    def after_fork(self) -> None:
        """Called in a forked child (gunicorn --preload, multiprocessing fork): the parent's
        requests in flight, queues and counters are not this process's, and its backend's
        worker thread does not exist here."""
        self.stats = Stats()
        self._down_until = 0.0
        self._loops = weakref.WeakKeyDictionary()
        for plan in self.plans.values():
            plan.unsent.clear()  # the parent's unsent requests would hold up admissions forever
        self.backend.after_fork()
        if self.local is not self.backend:
            self.local.after_fork()

    # -- planning --------------------------------------------------------------------------------

    def plan(self, spec: LimitSpec) -> Plan:
        """The plan of ``spec.key``; the first spec seen for a key fixes its limits."""
        plan = self.plans.get(spec.key)
        if plan is None:
            req, tok = request_rates(spec, self.config.buffer_ms), token_rates(spec, self.config.buffer_ms)
            spacing = max((r.interval / r.limit / 1000 for r in req), default=0.0)
            unit = token_unit(spec.tpm) if spec.tpm else 1
            plan = self.plans.setdefault(spec.key, Plan(spec.key, spec, req, tok, unit, spec.concurrency, spacing))
        return plan

    def _state(self) -> _LoopState:
        loop = asyncio.get_running_loop()
        state = self._loops.get(loop)
        if state is None:
            state = self._loops[loop] = _LoopState()
        return state

    # -- admission -------------------------------------------------------------------------------

    async def acquire(self, request: Request, plan: Plan, tokens: int, prompt_tokens: int, max_wait: float) -> Permit:
        """Wait for every permit ``plan`` requires, in arrival order, for at most ``max_wait`` s.

        :raises PayloadTooLargeError: the token estimate exceeds the whole TPM budget.
        :raises RateLimitExceeded: not admitted within ``max_wait`` (``needed`` = estimated wait).
        :raises RateLimiterUnavailableError: the shared backend failed and the policy is "closed".
        """
        start = time.monotonic()
        deadline = start + max_wait
        units = math.ceil(tokens / plan.unit) if plan.tok_rates else 0
        if plan.tok_rates and units > plan.tok_rates[0].limit:
            self.stats.too_large += 1
            raise PayloadTooLargeError(
                f"the request needs about {tokens} tokens (prompt + max_tokens), more than the whole tpm = "
                f"{plan.spec.tpm} budget of rate-limit bucket {plan.key!r}: it could never be admitted",
                provider=request.provider,
                model=request.model,
            )
        state = self._state()
        semaphore: asyncio.Semaphore | None = None
        delayed = False
        if plan.concurrency:
            semaphore = state.semaphores.get(plan.key)
            if semaphore is None:
                semaphore = state.semaphores[plan.key] = asyncio.Semaphore(plan.concurrency)
            delayed = await self._queue(semaphore, plan, deadline, start, request, "a concurrency slot")
        try:
            lock = state.locks.get(plan.key)
            if lock is None:
                lock = state.locks[plan.key] = asyncio.Lock()
            delayed |= await self._queue(lock, plan, deadline, start, request, "its turn in the queue", state)
            try:
                backend, ticket, held, slept = await self._admit(request, plan, units, start, deadline, state)
            finally:
                lock.release()
        except BaseException:
            if semaphore is not None:
                semaphore.release()
            raise
        waited = time.monotonic() - start
        delayed |= slept
        self.stats.admitted += 1
        self.stats.in_flight[plan.key] += 1
        if delayed:
            self.stats.waits += 1
            self.stats.wait_seconds += waited
        prompt_units = min(held, math.ceil(prompt_tokens / plan.unit)) if held else 0
        if plan.req_rates:
            plan.unsent[ticket] = time.monotonic()
        return Permit(plan, backend, ticket, held, prompt_units, waited, semaphore, delayed, time.monotonic())

    def _unsent_wait(self, plan: Plan) -> float:
        """Seconds to wait for an earlier request of this process that was admitted long ago
        and is still not sent (litellm importing, a saturated CPU): its reservation must be
        moved to its send time before it can leave a window and let another request in."""
        if not plan.signals or not plan.unsent:
            return 0.0
        oldest = min(plan.unsent.values())
        return 0.005 if time.monotonic() - oldest >= plan.hold else 0.0

    def sending(self, permit: Permit) -> None:
        """The provider is sending the request now: its request permit counts from this moment.

        Called on the event loop from the provider's send signal (several calls are harmless).
        """
        if permit.sent:
            return
        permit.sent, permit.sent_at = True, time.monotonic()
        plan = permit.plan
        plan.signals = True
        if not plan.req_rates:
            return
        try:
            update = permit.backend.restamp_now(plan.req_id, permit.ticket)
        except Exception as exc:  # a failed move leaves the admission stamp: the old behaviour
            logger.warning("ratelimit.settle_failed", backend=permit.backend.name, error=str(exc))
            update = None
        finally:
            plan.unsent.pop(permit.ticket, None)
        if update is not None:
            permit.restamp = asyncio.get_running_loop().create_task(_quiet(update()))

    async def _queue(
        self,
        primitive: asyncio.Lock | asyncio.Semaphore,
        plan: Plan,
        deadline: float,
        start: float,
        request: Request,
        what: str,
        state: _LoopState | None = None,
    ) -> bool:
        """Wait for a FIFO primitive until ``deadline``; whether it had to wait."""
        if not primitive.locked():
            await primitive.acquire()  # free and nobody waiting: taken without yielding
            return False
        ahead = self.stats.queued[plan.key]
        self.stats.queued[plan.key] += 1
        try:
            await asyncio.wait_for(primitive.acquire(), max(0.0, deadline - time.monotonic()))
            return True
        except asyncio.TimeoutError:
            now = time.monotonic()
            needed: float | None = None
            if state is not None:
                # Estimate: until the head gets in, then one spacing per caller ahead of us.
                needed = max(now, state.head_eta.get(plan.key, now)) - start + ahead * plan.spacing
            raise self._exceeded(request, plan, f"waited {now - start:.2f} s for {what}", needed) from None
        finally:
            self.stats.queued[plan.key] -= 1

    def _exceeded(self, request: Request, plan: Plan, why: str, needed: float | None) -> RateLimitExceeded:
        self.stats.rejections += 1
        hint = f"; it would have needed about {needed:.2f} s" if needed is not None and math.isfinite(needed) else ""
        return RateLimitExceeded(
            f"rate limit bucket {plan.key!r}: not admitted within max_wait ({why}){hint}",
            needed=needed,
            provider=request.provider,
            model=request.model,
        )

    def _pick(self) -> Backend:
        if self.backend is self.local or time.monotonic() >= self._down_until:
            return self.backend
        if self.config.on_backend_error == "closed":
            raise RateLimiterUnavailableError(
                f"the {self.backend.name} rate-limit backend is unavailable (on_backend_error = \"closed\"); "
                f"next try in {self._down_until - time.monotonic():.1f} s"
            )
        return self.local

    def backend_failed(self, exc: BaseException) -> None:
        """Apply ``on_backend_error``: raise (closed) or switch to the local limiter (local)."""
        self.stats.backend_errors += 1
        first = time.monotonic() >= self._down_until
        self._down_until = time.monotonic() + self.config.backend_retry
        if first:
            logger.warning(
                "ratelimit.backend_unavailable",
                backend=self.backend.name,
                error=str(exc),
                policy=self.config.on_backend_error,
                retry_in=self.config.backend_retry,
            )
        if self.config.on_backend_error == "closed":
            raise RateLimiterUnavailableError(
                f"the {self.backend.name} rate-limit backend failed ({exc}); on_backend_error = \"closed\" refuses "
                "requests rather than sending them unlimited"
            ) from None

    async def _admit(
        self, request: Request, plan: Plan, units: int, start: float, deadline: float, state: _LoopState
    ) -> tuple[Backend, str, int, bool]:
        """Admission on the configured backend, or on the local one by policy: (backend, ticket,
        token units held, whether it slept for a window or a cooldown)."""
        backend = self._pick()
        recovering = backend is not self.local and self._down_until > 0
        try:
            result = await self._admit_on(backend, request, plan, units, start, deadline, state)
        except BackendUnavailable as exc:
            self.backend_failed(exc)
            self.stats.fallback_admissions += 1
            return await self._admit_on(self.local, request, plan, units, start, deadline, state)
        if recovering:
            self._down_until = 0.0
            logger.warning("ratelimit.backend_recovered", backend=backend.name)
        if backend is self.local and self.backend is not self.local:
            self.stats.fallback_admissions += 1
        return result

    async def _admit_on(
        self,
        backend: Backend,
        request: Request,
        plan: Plan,
        units: int,
        start: float,
        deadline: float,
        state: _LoopState,
    ) -> tuple[Backend, str, int, bool]:
        if plan.req_rates and not backend.has(plan.req_id):
            await backend.ensure(plan.req_id, plan.req_rates, True)  # tracked: moved to the send time
        if plan.tok_rates and not backend.has(plan.tok_id):
            await backend.ensure(plan.tok_id, plan.tok_rates, True)
        ticket = backend.ticket()
        held = 0
        slept = False
        try:
            while True:
                wait = self.local.cooldown_now(plan.key)
                if backend is not self.local:
                    wait = max(wait, await backend.cooldown(plan.key))
                if wait <= 0 and units and not held:
                    wait = await backend.acquire(plan.tok_id, ticket, units)
                    held = units if wait <= 0 else 0
                if wait <= 0 and plan.req_rates:
                    wait = self._unsent_wait(plan)
                if wait <= 0 and plan.req_rates:
                    wait = await backend.acquire(plan.req_id, ticket, 1)
                if wait <= 0:
                    return backend, ticket, held, slept
                now = time.monotonic()
                if now + wait > deadline:
                    raise self._exceeded(request, plan, f"the limiter needs {wait:.2f} s more", now - start + wait)
                state.head_eta[plan.key] = now + wait
                slept = True
                await asyncio.sleep(wait)
        except BaseException:
            if held:
                try:
                    await backend.refund(plan.tok_id, ticket, held)
                except BackendUnavailable:
                    pass
            raise

    # -- after the call ----------------------------------------------------------------------------

    async def finish(
        self,
        permit: Permit,
        *,
        usage: Usage | None = None,
        error: BaseException | None = None,
        headers: Mapping[str, Any] | None = None,
    ) -> None:
        """Release the concurrency slot, reconcile tokens, apply provider feedback.

        :param usage: the provider's usage (None when unknown: the reservation stands).
        :param error: the failure, if the call failed. A provider 429 starts the shared cooldown
            and frees the whole reservation (the provider did not count it); another provider
            error frees the completion part (nothing was generated); a cancellation keeps it all.
        :param headers: response headers; ``x-ratelimit-remaining-* = 0`` pauses until the reset.
        """
        plan = permit.plan
        plan.unsent.pop(permit.ticket, None)
        if permit.semaphore is not None:
            permit.semaphore.release()
        self.stats.in_flight[plan.key] -= 1
        if permit.restamp is not None:
            await permit.restamp
        if plan.req_rates:
            await self._settle_stamp(permit)
        try:
            pause: float | None = None
            free = 0
            if isinstance(error, RateLimitError):
                hint = error.retry_after if error.retry_after is not None else self.config.default_cooldown
                pause = min(hint, self.config.max_cooldown)
                free = permit.units
            elif isinstance(error, ModelwireError):
                free = permit.units - permit.prompt_units
            elif error is None and usage is not None and permit.units:
                free = permit.units - math.ceil(usage.total_tokens / plan.unit)
            if error is None and headers and self.config.use_headers:
                exhausted = exhausted_for(headers)
                if exhausted:
                    pause = min(exhausted, self.config.max_cooldown)
            if free > 0:
                await permit.backend.refund(plan.tok_id, permit.ticket, free)
            elif free < 0:
                await permit.backend.charge(plan.tok_id, permit.ticket, -free)
            if pause:
                await self.cool_down(plan.key, pause)
        except BackendUnavailable as exc:
            self.stats.backend_errors += 1
            logger.warning("ratelimit.settle_failed", backend=permit.backend.name, error=str(exc))

    async def _settle_stamp(self, permit: Permit) -> None:
        """Count the request from the moment it surely reached the server: its answer came
        back, which is never before its arrival. Capped at ``send_margin`` after the send
        signal (admission when the provider gives none), so a slow answer costs at most that."""
        since = permit.sent_at if permit.sent else permit.admitted_at
        ago = max(0.0, time.monotonic() - since - self.config.send_margin)
        try:
            update = permit.backend.restamp_now(permit.plan.req_id, permit.ticket, ago)
            if update is not None:
                await update()
        except BackendUnavailable as exc:
            self.stats.backend_errors += 1
            logger.warning("ratelimit.settle_failed", backend=permit.backend.name, error=str(exc))

    async def cool_down(self, key: str, seconds: float) -> None:
        """Pause bucket ``key`` for every caller (and, on a shared backend, every process)."""
        self.stats.cooldowns += 1
        await self.local.set_cooldown(key, seconds)
        if self.backend is not self.local and time.monotonic() >= self._down_until:
            try:
                await self.backend.set_cooldown(key, seconds)
            except BackendUnavailable as exc:
                self.stats.backend_errors += 1
                logger.warning("ratelimit.settle_failed", backend=self.backend.name, error=str(exc))

    async def aclose(self) -> None:
        await self.backend.aclose()


async def _quiet(update: Any) -> None:
    """A store update after the send signal; a failure keeps the (earlier) admission stamp."""
    try:
        await update
    except BackendUnavailable as exc:
        logger.warning("ratelimit.settle_failed", error=str(exc))
