"""The ``[ratelimit]`` section, and turning limits into pyrate-limiter rates and token weights.

Everything here is pure (no I/O): validation, pattern matching, rate lists, the token estimate
and parsing of the provider's ``x-ratelimit-*`` headers.
"""

from __future__ import annotations

import fnmatch
import math
import re
import string
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, model_validator
from pyrate_limiter import Rate

from modelwire.errors import ConfigurationError
from modelwire.types import LimitSpec, Request

__all__ = [
    "TOKEN_UNITS",
    "LimitRule",
    "RateLimitConfig",
    "RateLimitOptions",
    "estimate_tokens",
    "exhausted_for",
    "match_rule",
    "nominal_interval",
    "parse_reset",
    "request_rates",
    "token_rates",
    "token_unit",
]

#: A TPM bucket is counted in units of ``ceil(tpm / TOKEN_UNITS)`` tokens, so a window holds at
#: most about this many entries whatever the TPM (pyrate-limiter stores one entry per unit).
TOKEN_UNITS = 10_000

_KEY_FIELDS = {"provider", "model", "target"}
_SMOOTH_MS = 100


class LimitRule(BaseModel):
    """One entry of ``limits``: which requests it covers and their limits.

    :param match: ``fnmatch`` pattern on ``provider/model`` (``openai/*``, ``azure/gpt-4o*``).
    :param key: bucket name; rules with the same key share one bucket. May use ``{provider}``,
        ``{model}`` and ``{target}`` (e.g. ``"{target}"`` gives every model its own bucket).
        Default: the ``match`` pattern itself (all matching models share one bucket).
    :param rps: requests per second (may be fractional: 0.5 = one every 2 s).
    :param rpm: requests per minute.
    :param tpm: tokens per minute (reserved before the call, reconciled with the usage after).
    :param concurrency: requests in flight at once (per process).
    :param smooth: space requests evenly (default; at high rates a few per 50 ms) like providers
        that enforce a per-minute quota over short windows; false allows a burst of a whole
        window's allowance at once.
    """

    model_config = ConfigDict(extra="forbid")

    match: str = "*"
    key: str | None = None
    rps: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    rpm: int | None = Field(default=None, gt=0)
    tpm: int | None = Field(default=None, gt=0)
    concurrency: int | None = Field(default=None, gt=0)
    smooth: bool = True

    @model_validator(mode="after")
    def _check(self) -> LimitRule:
        if self.key is not None:
            names = {name for _, name, _, _ in string.Formatter().parse(self.key) if name is not None}
            if not names <= _KEY_FIELDS:
                raise ValueError(f"key {self.key!r} may only use {{provider}}, {{model}}, {{target}}")
        return self


class RateLimitOptions(BaseModel):
    """Per-call ``options={"ratelimit": {...}}``."""

    model_config = ConfigDict(extra="forbid")

    #: Seconds this request may queue for a permit (instead of the section's ``max_wait``).
    max_wait: StrictFloat | None = Field(default=None, ge=0, allow_inf_nan=False)


class RateLimitConfig(BaseModel):
    """The ``[ratelimit]`` section; see docs/ratelimit.md for every key."""

    model_config = ConfigDict(extra="forbid")

    backend: Literal["memory", "sqlite", "redis"] = "memory"
    path: str | None = None
    url: str | None = None
    key_prefix: str = "modelwire:rl:"
    workers: int = Field(default=1, ge=1)
    max_wait: float = Field(default=60.0, ge=0, allow_inf_nan=False)
    buffer_ms: int = Field(default=40, ge=0, le=1000)
    send_margin: float = Field(default=1.0, ge=0, le=60, allow_inf_nan=False)
    on_backend_error: Literal["local", "closed"] = "local"
    backend_timeout: float = Field(default=0.5, gt=0, allow_inf_nan=False)
    backend_retry: float = Field(default=5.0, gt=0, allow_inf_nan=False)
    default_max_tokens: int = Field(default=1024, gt=0)
    estimator: Literal["chars", "litellm"] = "chars"
    default_cooldown: float = Field(default=1.0, ge=0, allow_inf_nan=False)
    max_cooldown: float = Field(default=60.0, gt=0, allow_inf_nan=False)
    use_headers: bool = True
    limits: list[LimitRule] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check(self) -> RateLimitConfig:
        # ConfigurationError (not ValueError) so the message names the key exactly as written here.
        if self.backend == "memory" and self.workers > 1:
            raise ConfigurationError(
                f"config key 'ratelimit.workers' = {self.workers} with 'ratelimit.backend' = \"memory\": an in-memory "
                "limiter counts per process, so the workers together would send workers x the limit; "
                'use backend = "sqlite" (one host) or "redis" (several hosts)'
            )
        if self.backend == "sqlite" and not self.path:
            raise ConfigurationError(
                "config key 'ratelimit.path' is required with backend = \"sqlite\" (the database file every "
                "process shares, e.g. path = \"/var/tmp/modelwire-limits.sqlite\")"
            )
        if self.backend == "redis" and not self.url:
            raise ConfigurationError(
                "config key 'ratelimit.url' is required with backend = \"redis\" (e.g. url = \"redis://host:6379/0\")"
            )
        for i, rule in enumerate(self.limits):
            if rule.rps is None and rule.rpm is None and rule.tpm is None and rule.concurrency is None:
                raise ConfigurationError(
                    f"config key 'ratelimit.limits.{i}' (match {rule.match!r}) sets no limit: "
                    "give at least one of rps, rpm, tpm, concurrency"
                )
        return self


def match_rule(config: RateLimitConfig, request: Request) -> LimitSpec | None:
    """The spec of the first rule whose ``match`` covers ``request.target``, or None."""
    target = request.target
    for rule in config.limits:
        if fnmatch.fnmatchcase(target, rule.match):
            key = rule.match if rule.key is None else rule.key.format(
                provider=request.provider, model=request.model, target=target
            )
            return LimitSpec(key, rule.rps, rule.rpm, rule.tpm, rule.concurrency, None, rule.smooth)
    return None


def request_rates(spec: LimitSpec, buffer_ms: int = 0) -> list[Rate]:
    """pyrate-limiter rates for the request count of ``spec`` (empty when it has none).

    Windows of a second or more are widened by ``buffer_ms``: what the provider counts is
    arrival, which lags admission here by a varying few milliseconds (event loop, network), so
    "10 per second" is enforced as 10 per 1.05 s to stay under 10 per second at the provider.
    Rates that can never bind are dropped, because pyrate-limiter requires a list with growing
    intervals, growing limits and falling density.
    """
    rates: list[Rate] = []
    if spec.rps is not None:
        if float(spec.rps).is_integer():
            rates.append(Rate(int(spec.rps), 1000))
        else:
            rates.append(Rate(1, math.ceil(1000 / spec.rps)))
    if spec.rpm is not None:
        rates.append(Rate(spec.rpm, 60_000))
    if spec.smooth and rates:
        spacing = max(rate.interval / rate.limit for rate in rates)
        # Below ~100 ms, one request per spacing would be dominated by timer and ms rounding; allow
        # the same density as a few requests per 100 ms instead (still no bursts a provider sees).
        per = max(1, round(_SMOOTH_MS / spacing))
        rates.append(Rate(per, math.ceil(spacing * per)))
    return _normalize([_widen(rate, buffer_ms) for rate in rates])


def _widen(rate: Rate, buffer_ms: int) -> Rate:
    return Rate(rate.limit, rate.interval + buffer_ms) if rate.interval >= 1000 else rate


def nominal_interval(interval: int, buffer_ms: int) -> int:
    """The configured window of a widened rate (for display)."""
    return interval - buffer_ms if interval >= 1000 + buffer_ms else interval


def token_unit(tpm: int) -> int:
    """Tokens per bucket unit for a TPM limit."""
    return max(1, math.ceil(tpm / TOKEN_UNITS))


def token_rates(spec: LimitSpec, buffer_ms: int = 0) -> list[Rate]:
    """The per-minute token rate of ``spec`` in bucket units (empty when it has no tpm)."""
    if spec.tpm is None:
        return []
    return [Rate(max(1, spec.tpm // token_unit(spec.tpm)), 60_000 + buffer_ms)]


def _normalize(rates: list[Rate]) -> list[Rate]:
    kept: list[Rate] = []
    for rate in sorted(rates, key=lambda r: (r.interval, r.limit)):
        while kept and kept[-1].limit >= rate.limit:
            kept.pop()  # a longer window with no more room makes the shorter one redundant
        if kept and rate.limit / rate.interval > kept[-1].limit / kept[-1].interval:
            continue  # the shorter, stricter window already implies this one
        kept.append(rate)
    return kept


def _text_length(content: Any) -> int:
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list):
        return sum(len(part.get("text") or "") for part in content if isinstance(part, dict))
    return 0


def estimate_tokens(request: Request, config: RateLimitConfig) -> int:
    """Tokens to reserve for ``request``: the prompt plus the most it may generate.

    The prompt is counted as characters / 4 plus 4 per message (``estimator = "chars"``, a few
    microseconds) or with ``litellm.token_counter`` (``"litellm"``: exact for OpenAI models,
    about 0.2 ms per call and 0.4 s on the first). The reservation is corrected with the
    provider's reported usage after the call, so the estimate only has to be close.
    """
    params = request.params
    completion = params.get("max_tokens") or params.get("max_completion_tokens") or config.default_max_tokens
    choices = params.get("n") or 1
    if config.estimator == "litellm":
        from modelwire.providers.litellm_base import litellm

        prompt = int(litellm().token_counter(model=request.model, messages=request.messages))
    else:
        chars = sum(_text_length(message.get("content")) for message in request.messages)
        prompt = math.ceil(chars / 4) + 4 * len(request.messages)
    return int(prompt + int(completion) * int(choices))


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def parse_reset(value: str | None) -> float | None:
    """Seconds in an OpenAI reset header (``"1s"``, ``"6m0s"``, ``"20ms"``, ``"0.5"``), or None."""
    if not value:
        return None
    text = str(value).strip()
    try:
        seconds = float(text)
    except ValueError:
        parts = _DURATION.findall(text)
        if not parts or "".join(n + u for n, u in parts) != text.replace(" ", ""):
            return None
        seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def exhausted_for(headers: Mapping[str, Any]) -> float | None:
    """Seconds to pause when ``x-ratelimit-remaining-requests`` or ``-tokens`` says 0 is left:
    the matching ``x-ratelimit-reset-*`` value; None when nothing is exhausted or unknown."""
    pause: float | None = None
    for kind in ("requests", "tokens"):
        remaining = headers.get(f"x-ratelimit-remaining-{kind}")
        if remaining is None:
            continue
        try:
            left = float(remaining)
        except (TypeError, ValueError):
            continue
        if left <= 0:
            reset = parse_reset(headers.get(f"x-ratelimit-reset-{kind}"))
            if reset is not None:
                pause = max(pause or 0.0, reset)
    return pause
