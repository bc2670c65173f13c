"""The ``[budget]`` section, per-call options and calendar periods; pure (no I/O).

The backend keys have the shape of ``[ratelimit]``'s (``backend``, ``path``, ``url``,
``key_prefix``), so one SQLite file or Redis can serve both.
"""

from __future__ import annotations

import fnmatch
from datetime import datetime, timedelta, timezone
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from modelwire.errors import ConfigurationError
from modelwire.plugins.cache.config import check_namespace

__all__ = ["PERIODS", "BudgetConfig", "BudgetLimit", "BudgetOptions", "matching", "window"]

Period = Literal["minute", "hour", "day", "month"]
PERIODS: tuple[str, ...] = ("minute", "hour", "day", "month")


class BudgetLimit(BaseModel):
    """One entry of ``limits``: a cap in USD or tokens per calendar period (UTC).

    :param match: ``fnmatch`` pattern on ``provider/model`` (``openai/*``); every matching
        limit applies (a request must fit all of them).
    :param usd: cap in USD (priced like ``Completion.cost``: ``[prices]`` or litellm's map).
    :param tokens: cap in tokens (prompt + completion) instead of ``usd``.
    :param period: ``minute``, ``hour``, ``day`` or ``month``: calendar periods in UTC (a
        ``day`` limit resets at 00:00 UTC, a ``month`` one on the 1st at 00:00 UTC).
    :param scope: ``global`` (one total for everything the pattern matches), ``model`` (one
        total per ``provider/model``) or ``namespace`` (one total per tenant, from the per-call
        option ``options={"budget": {"namespace": ...}}``, else the cache's per-call
        ``namespace`` option, else ``"default"``).
    """

    model_config = ConfigDict(extra="forbid")

    match: str = "*"
    usd: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    tokens: int | None = Field(default=None, gt=0)
    period: Period
    scope: Literal["global", "model", "namespace"] = "global"

    @model_validator(mode="after")
    def _one_unit(self) -> BudgetLimit:
        if (self.usd is None) == (self.tokens is None):
            raise ValueError("give exactly one of usd or tokens")
        return self

    @property
    def unit(self) -> str:
        return "usd" if self.usd is not None else "tokens"

    @property
    def cap(self) -> float:
        return float(self.usd if self.usd is not None else self.tokens or 0)

    @property
    def rule_id(self) -> str:
        """What identifies the limit in the store: the same rule in every process shares it."""
        return f"{self.unit}:{self.period}:{self.scope}:{self.match}"


class BudgetOptions(BaseModel):
    """Per-call ``options={"budget": {...}}``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: The tenant whose ``scope = "namespace"`` limits this call counts against.
    namespace: str | None = None

    _ns = field_validator("namespace")(check_namespace)


class BudgetConfig(BaseModel):
    """The ``[budget]`` section; see docs/budget.md for every key."""

    model_config = ConfigDict(extra="forbid")

    #: memory: this process only; sqlite: the processes of one host; redis: every host.
    backend: Literal["memory", "sqlite", "redis"] = "memory"
    path: str | None = None
    url: str | None = None
    key_prefix: str = Field("modelwire:budget:", min_length=1, max_length=100)
    #: seconds a shared-store call may take before it counts as a failure.
    timeout: float = Field(default=2.0, gt=0, le=60, allow_inf_nan=False)
    #: the store failed: ``closed`` refuses the call (BudgetUnavailableError), ``open`` sends
    #: it without a cap (a ``budget.backend_error`` warning each time).
    on_backend_error: Literal["closed", "open"] = "closed"
    #: completion tokens assumed for the estimate when the call sets no ``max_tokens``.
    default_max_tokens: int = Field(default=1024, gt=0)
    #: how the prompt is counted for the estimate, as in ``[ratelimit]``.
    estimator: Literal["chars", "litellm"] = "chars"
    limits: list[BudgetLimit] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check(self) -> BudgetConfig:
        if self.backend == "sqlite" and not self.path:
            raise ConfigurationError(
                "config key 'budget.path' is required with backend = \"sqlite\" (the database file every "
                "process shares, e.g. path = \"/var/tmp/modelwire-budget.sqlite\")"
            )
        if self.backend == "redis" and not self.url:
            raise ConfigurationError(
                "config key 'budget.url' is required with backend = \"redis\" (e.g. url = \"redis://host:6379/0\")"
            )
        seen: dict[str, int] = {}
        for i, rule in enumerate(self.limits):
            if rule.rule_id in seen:
                raise ConfigurationError(
                    f"config key 'budget.limits.{i}' repeats budget.limits.{seen[rule.rule_id]} (same match, "
                    f"unit, period and scope): give it a different cap in one entry"
                )
            seen[rule.rule_id] = i
        return self


def matching(config: BudgetConfig, target: str) -> list[BudgetLimit]:
    """Every limit whose ``match`` covers ``target`` (``provider/model``), in config order."""
    return [rule for rule in config.limits if fnmatch.fnmatchcase(target, rule.match)]


def window(period: str, now: float) -> tuple[datetime, datetime]:
    """The UTC calendar period holding ``now`` (epoch seconds): ``(start, end)``.

    >>> window("month", 1706745600.0)[1].isoformat()  # 2024-02-01T00:00 is in February
    '2024-03-01T00:00:00+00:00'
    """
    at = datetime.fromtimestamp(now, timezone.utc)
    if period == "minute":
        start = at.replace(second=0, microsecond=0)
        return start, start + timedelta(minutes=1)
    if period == "hour":
        start = at.replace(minute=0, second=0, microsecond=0)
        return start, start + timedelta(hours=1)
    if period == "day":
        start = at.replace(hour=0, minute=0, second=0, microsecond=0)
        return start, start + timedelta(days=1)
    if period == "month":
        start = at.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        end = start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)
        return start, end
    raise ValueError(f"unknown period {period!r} (one of {', '.join(PERIODS)})")
