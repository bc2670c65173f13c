"""The ``budget`` middleware: reserve an estimate before the call, settle the real spend after.

Per request: every limit whose ``match`` covers the target gets a charge (the estimate, in USD
or tokens) on the record of its scope subject and period; all are reserved in one atomic store
call or the request is refused with :class:`~modelwire.BudgetExceededError` before anything is
sent. After the call the reservation is released and the real spend added:

* an answer with usage: its tokens, or its cost priced like ``Completion.cost`` (the cost
  plugin's :class:`~modelwire.plugins.cost.CostObserver`, at the model that answered);
* an answer without usage (a stream whose provider sends none): the estimate;
* a cache hit (budget placed before the cache, or a replayed chunk): nothing;
* every failed attempt the provider may have billed (timeouts, broken connections and streams,
  cancellations after sending, content-filter refusals): the estimate, since its usage is
  unknown; attempts refused before sending or answered with an HTTP error cost nothing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from modelwire.errors import (
    BudgetExceededError,
    BudgetUnavailableError,
    ConfigurationError,
    ContentFilterError,
    ModelwireError,
    StreamInterruptedError,
)
from modelwire.log import logger
from modelwire.middleware import CallNext, CallNextStream, Middleware, MiddlewareContext, aclose_stream
from modelwire.plugins.cost import Price, cost_of
from modelwire.plugins.ratelimit.config import RateLimitConfig, estimate_tokens
from modelwire.types import Chunk, Completion, Request, Usage

from .config import BudgetConfig, BudgetLimit, BudgetOptions, matching, window
from .store import Charge, Store, make_store

__all__ = ["FAILED", "BudgetMiddleware", "maybe_billed"]

#: ``request.state`` key: failed attempts of a budgeted request that the provider may have
#: billed (counted by the plugin's ``modelwire_request_failed`` hook, settled by the middleware).
FAILED = "budget.failed"


def maybe_billed(error: BaseException) -> bool:
    """Whether the provider may have run (and billed) the attempt that failed with ``error``."""
    if isinstance(error, ModelwireError):
        if error.request_sent is False:
            return False
        if error.status is not None and not isinstance(error, (ContentFilterError, StreamInterruptedError)):
            return False  # an HTTP error answer: providers do not bill it
    return True


@dataclass(slots=True)
class _Held:
    """A request's reservation: its charges (one per limit) and what the estimate assumed."""

    charges: list[Charge]
    rules: list[BudgetLimit]
    estimate: Usage


class BudgetMiddleware(Middleware):
    """Caps spend in USD or tokens per calendar period (docs/budget.md).

    :param config: the validated ``[budget]`` section.
    :param context: hook relay and providers of the client.
    """

    Config = BudgetConfig
    Options = BudgetOptions

    def __init__(self, config: BudgetConfig | None, context: MiddlewareContext) -> None:
        super().__init__(config or BudgetConfig(), context)
        self.config: BudgetConfig = self.config
        self.store: Store = make_store(self.config)
        #: epoch seconds; replaceable (tests move it across a period boundary).
        self.clock: Callable[[], float] = time.time
        self._prices: Any = None  # the client's CostObserver, bound by modelwire_client_created
        self._estimating = RateLimitConfig(
            default_max_tokens=self.config.default_max_tokens, estimator=self.config.estimator
        )
        self._rules: dict[str, list[BudgetLimit]] = {}
        self._windows: dict[str, tuple[float, datetime, datetime]] = {}
        self.stats = {"reserved": 0, "refused": 0, "settled": 0, "estimated": 0, "backend_errors": 0}

    def bind_prices(self, prices: Any) -> None:
        """Price with ``prices.price(provider, model) -> Price | None`` (the cost plugin's)."""
        self._prices = prices

    # -- reserve ---------------------------------------------------------------------------------

    def _limits(self, target: str) -> list[BudgetLimit]:
        found = self._rules.get(target)
        if found is None:
            found = matching(self.config, target)
            if len(self._rules) > 4096:  # a bound even if callers invent model names
                self._rules.clear()
            self._rules[target] = found
        return found

    def _price(self, provider: str, model: str) -> Price | None:
        return self._prices.price(provider, model) if self._prices is not None else None

    def _plan(self, request: Request, rules: list[BudgetLimit], now: float) -> _Held:
        total = estimate_tokens(request, self._estimating)
        params = request.params
        most = params.get("max_tokens") or params.get("max_completion_tokens") or self.config.default_max_tokens
        completion = min(total, int(most) * int(params.get("n") or 1))
        estimate = Usage(total - completion, completion, total)
        usd: float | None = None
        charges = []
        for rule in rules:
            if rule.usd is not None and usd is None:
                price = self._price(request.provider, request.model)
                if price is None:
                    raise ConfigurationError(
                        f"budget limit {rule.match!r} caps USD but {request.target} has no known price: add "
                        f'[prices."{request.target}"] (input, output in USD per million tokens) or cap it in tokens'
                    )
                usd = cost_of(estimate, price)
            amount = usd if rule.usd is not None and usd is not None else float(total)
            start, end = self._window(rule.period, now)
            subject = self._subject(rule, request)
            charges.append(Charge(
                key=f"{self.config.key_prefix}{rule.rule_id}|{subject}|{int(start.timestamp())}",
                amount=amount,
                cap=rule.cap,
                expires=end.timestamp() + 86_400,
                meta={"match": rule.match, "unit": rule.unit, "period": rule.period, "scope": rule.scope,
                      "subject": subject, "start": start.isoformat(), "resets_at": end.isoformat()},
            ))
        return _Held(charges, rules, estimate)

    def _window(self, period: str, now: float) -> tuple[datetime, datetime]:
        """:func:`window`, remembered until its period ends (it is asked once per limit per call)."""
        known = self._windows.get(period)
        if known is not None and known[1].timestamp() <= now < known[0]:
            return known[1], known[2]
        start, end = window(period, now)
        self._windows[period] = (end.timestamp(), start, end)
        return start, end

    @staticmethod
    def _subject(rule: BudgetLimit, request: Request) -> str:
        if rule.scope == "global":
            return "*"
        if rule.scope == "model":
            return request.target
        return str(request.option("budget", "namespace") or request.option("cache", "namespace") or "default")

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self.store.name == "memory":
            return fn(*args)  # a lock held for microseconds: no thread hop
        return await asyncio.to_thread(fn, *args)

    async def _reserve(self, request: Request) -> _Held | None:
        rules = self._limits(request.target)
        if not rules:
            return None
        now = self.clock()
        held = self._plan(request, rules, now)
        try:
            refused = await self._run(self.store.reserve, held.charges, now)
        except Exception as exc:
            self.stats["backend_errors"] += 1
            error = f"{type(exc).__name__}: {exc}"
            logger.warning("budget.backend_error", backend=self.store.name, stage="reserve", error=error,
                           policy=self.config.on_backend_error)
            if self.config.on_backend_error == "open":
                return None
            raise BudgetUnavailableError(
                f"the budget store ({self.store.name}) failed, and [budget] on_backend_error = \"closed\" refuses "
                f"calls it cannot count: {error}",
                provider=request.provider, model=request.model,
            ) from None
        if refused is not None:
            self.stats["refused"] += 1
            raise self._exceeded(request, held, *refused)
        self.stats["reserved"] += 1
        request.state[FAILED] = 0
        return held

    def _exceeded(self, request: Request, held: _Held, index: int, used: float) -> BudgetExceededError:
        charge, rule = held.charges[index], held.rules[index]
        meta = charge.meta
        scope = "global" if rule.scope == "global" else f"{rule.scope}:{meta['subject']}"
        resets_at = datetime.fromisoformat(meta["resets_at"]).astimezone(timezone.utc)
        unit = "USD" if rule.unit == "usd" else "tokens"
        logger.warning("budget.exceeded", provider=request.provider, model=request.model, match=rule.match,
                       scope=scope, unit=rule.unit, period=rule.period, limit=rule.cap, spent=round(used, 9),
                       needed=round(charge.amount, 9), resets_at=meta["resets_at"])
        return BudgetExceededError(
            f"budget exceeded: limit {rule.match!r} ({scope}) allows {_fmt(rule.cap)} {unit} per {rule.period} "
            f"(UTC); {_fmt(used)} {unit} spent or reserved, this call needs about {_fmt(charge.amount)}; "
            f"resets at {resets_at.isoformat()}",
            resets_at=resets_at, limit=rule.cap, spent=used, needed=charge.amount, unit=rule.unit,
            period=rule.period, scope=scope, match=rule.match, provider=request.provider, model=request.model,
        )

    # -- settle ----------------------------------------------------------------------------------

    async def _settle(self, request: Request, held: _Held, answered: bool, usage: Usage | None,
                      served: tuple[str, str] | None, cached: bool = False) -> None:
        """Release ``held`` and add the real spend; runs to the end even if the task is cancelled."""
        failed = int(request.state.pop(FAILED, 0) or 0)
        target = served or (request.provider, request.model)
        settled = []
        for charge, rule in zip(held.charges, held.rules, strict=True):
            actual = failed * charge.amount
            if answered and not cached:
                actual += self._answer_spend(rule, charge.amount, usage, target, request)
            settled.append((charge.key, charge.amount, actual))
        if self.store.name == "memory":  # synchronous: nothing a cancellation could interrupt
            self._store_settle(settled)
            return
        await _shielded(asyncio.to_thread(self._store_settle, settled))

    def _store_settle(self, settled: list[tuple[str, float, float]]) -> None:
        try:
            self.store.settle(settled)
            self.stats["settled"] += 1
        except Exception as exc:  # the reservation stays counted: an over-count, never an under-count
            self.stats["backend_errors"] += 1
            logger.warning("budget.backend_error", backend=self.store.name, stage="settle",
                           error=f"{type(exc).__name__}: {exc}")

    def _answer_spend(self, rule: BudgetLimit, estimate: float, usage: Usage | None, served: tuple[str, str],
                      request: Request) -> float:
        if usage is None:
            self.stats["estimated"] += 1
            return estimate
        if rule.usd is None:
            return float(usage.total_tokens or usage.prompt_tokens + usage.completion_tokens)
        price = self._price(*served) or self._price(request.provider, request.model)
        return estimate if price is None else cost_of(usage, price)

    # -- the two paths ---------------------------------------------------------------------------

    async def ahandle(self, request: Request, call_next: CallNext) -> Completion:
        held = await self._reserve(request)
        if held is None:
            return await call_next(request)
        try:
            response = await call_next(request)
        except BaseException:
            await self._settle(request, held, False, None, None)
            raise
        await self._settle(request, held, True, response.usage, (response.provider, response.model),
                           cached=response.cached)
        return response

    async def ahandle_stream(self, request: Request, call_next: CallNextStream) -> AsyncIterator[Chunk]:
        held = await self._reserve(request)
        if held is None:
            async for chunk in call_next(request):
                yield chunk
            return
        usage: Usage | None = None
        cached = ended = stopped = False
        upstream = call_next(request)
        try:
            async for chunk in upstream:
                if chunk.usage is not None:
                    usage = chunk.usage
                cached = cached or chunk.cached
                yield chunk
            ended = True
        except GeneratorExit:  # the consumer stopped reading: the provider ran until we closed it
            stopped = True
            raise
        finally:
            served = request.state.get("served_by")
            try:  # settled first: closing the upstream may be interrupted by a cancellation
                await self._settle(
                    request, held, ended or stopped, usage if ended or stopped else None,
                    tuple(served) if isinstance(served, (tuple, list)) else None, cached=cached,
                )
            finally:
                await aclose_stream(upstream)

    # -- introspection ---------------------------------------------------------------------------

    async def usage(self) -> list[dict[str, Any]]:
        """Every limit's current record: what ``modelwire budget`` shows."""
        now = self.clock()
        records = await self._run(self.store.read, now)
        out = []
        for record in records:
            meta = record.meta
            if datetime.fromisoformat(meta["resets_at"]).timestamp() <= now:
                continue  # a past period, kept for a day in the store
            out.append({**meta, "limit": record.cap, "spent": record.spent, "reserved": record.reserved})
        return out

    async def aclose(self) -> None:
        self.store.close()

    def describe(self) -> dict[str, Any]:
        return {"backend": self.store.name,
                "limits": [rule.model_dump(exclude_none=True) for rule in self.config.limits], **self.stats}


def _fmt(value: float) -> str:
    return f"{value:.6g}"


async def _shielded(settle: Any) -> None:
    """Settle even when the request's task is being cancelled."""
    try:
        await asyncio.shield(settle)
    except asyncio.CancelledError:
        pass
