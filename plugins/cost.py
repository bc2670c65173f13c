"""What each response cost, in USD: ``Completion.cost``.

Prices come from, first match wins:

1. the config's ``[prices."provider/model"]`` tables (USD per million tokens; the key may be a
   glob such as ``"local/*"``), for local or custom models and negotiated prices::

       [prices."local/llama3"]
       input = 0.0
       output = 0.0
       cached_input = 0.0     # optional; cached prompt tokens are priced as ``input`` without it

2. litellm's bundled cost map (never fetched from the network), for provider kinds that bill by
   it: ``openai`` (``gpt-4o-mini`` or ``openai/gpt-4o-mini``), ``azure`` (``azure/<deployment>``:
   priced when the deployment is named like the model) and third-party kinds (``<kind>/<model>``).
   ``openai_compatible`` servers are never priced from the map: a local model named like an
   OpenAI one does not cost what OpenAI charges.

Cached prompt tokens (``Usage.cached_prompt_tokens``) are priced at the cached-input price,
reasoning tokens as the output tokens they are part of. No price or no usage: ``cost`` is None.
A cache hit costs ``0.0``; what it saved (the stored answer's cost, or its usage at today's
prices) is ``saved_cost`` in the ``llm.response`` event and in ``client.stats()``. A successful
stream's final completion (``stream.get_final_completion().cost``) is priced the same way.

The map is read from litellm once litellm is imported (a provider call imported it); a cache hit
in a process that has not called a provider yet reads litellm's bundled JSON file instead of
importing litellm, which must not happen on the event loop.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import json
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from modelwire.config import validate_section
from modelwire.hookspecs import hookimpl
from modelwire.types import Completion, Request, Usage

__all__ = ["Price", "PriceConfig", "cost_of", "litellm_price"]

_PER_MILLION = 1_000_000


class PriceConfig(BaseModel):
    """One ``[prices."provider/model"]`` table, USD per million tokens."""

    input: float = Field(ge=0, allow_inf_nan=False)
    output: float = Field(ge=0, allow_inf_nan=False)
    cached_input: float | None = Field(default=None, ge=0, allow_inf_nan=False)


@dataclass(frozen=True, slots=True)
class Price:
    """USD per token; ``cached_input`` None prices cached prompt tokens as ``input``."""

    input: float
    output: float
    cached_input: float | None = None


def cost_of(usage: Usage, price: Price) -> float:
    """USD for ``usage`` at ``price``.

    >>> cost_of(Usage(1000, 100, 1100, cached_prompt_tokens=400), Price(1e-6, 4e-6, 5e-7))
    0.001
    """
    cached = min(usage.cached_prompt_tokens or 0, usage.prompt_tokens)
    cached_rate = price.input if price.cached_input is None else price.cached_input
    return (
        (usage.prompt_tokens - cached) * price.input
        + cached * cached_rate
        + usage.completion_tokens * price.output
    )


# -- litellm's bundled map ------------------------------------------------------------------------

_map_lock = threading.Lock()
_bundled: dict[str, Any] | None = None


def _cost_map() -> dict[str, Any]:
    litellm = sys.modules.get("litellm")
    model_cost = getattr(litellm, "model_cost", None) if litellm is not None else None
    if isinstance(model_cost, dict):
        return model_cost
    global _bundled
    with _map_lock:
        if _bundled is None:
            _bundled = _read_bundled()
        return _bundled


def _read_bundled() -> dict[str, Any]:
    """litellm's ``model_prices_and_context_window_backup.json``, found without importing litellm."""
    spec = importlib.util.find_spec("litellm")
    if spec is None or spec.origin is None:
        return {}
    try:
        data = json.loads((Path(spec.origin).parent / "model_prices_and_context_window_backup.json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def litellm_price(kind: str, model: str) -> Price | None:
    """The per-token price of ``model`` served by provider kind ``kind`` in litellm's map."""
    if kind == "openai_compatible":
        return None
    cost_map = _cost_map()
    for key in (f"{kind}/{model}", model) if kind == "openai" else (f"{kind}/{model}",):
        entry = cost_map.get(key)
        if isinstance(entry, dict):
            inp, out = entry.get("input_cost_per_token"), entry.get("output_cost_per_token")
            if isinstance(inp, (int, float)) and isinstance(out, (int, float)):
                cached = entry.get("cache_read_input_token_cost")
                return Price(float(inp), float(out), float(cached) if isinstance(cached, (int, float)) else None)
    return None


# -- the per-client observer ------------------------------------------------------------------------

_UNSET = object()


class CostObserver:
    """Prices responses for one client (its ``[prices]`` and its providers' kinds)."""

    def __init__(self, client: Any) -> None:
        self._provider = client.provider
        self._configured: list[tuple[str, Price]] = []
        for key, raw in client.config.prices.items():
            table: PriceConfig = validate_section(PriceConfig, raw, f"prices.{key}")
            per_token = Price(
                table.input / _PER_MILLION,
                table.output / _PER_MILLION,
                None if table.cached_input is None else table.cached_input / _PER_MILLION,
            )
            self._configured.append((key, per_token))
        self._prices: dict[str, Price | None] = {}

    def price(self, provider: str, model: str) -> Price | None:
        """The per-token price of ``provider/model`` (config first, then litellm's map), memoised."""
        target = f"{provider}/{model}"
        found = self._prices.get(target, _UNSET)
        if found is not _UNSET:
            return found  # type: ignore[return-value]
        price = next((p for pattern, p in self._configured if fnmatch.fnmatchcase(target, pattern)), None)
        if price is None:
            try:
                kind = self._provider(provider).config.kind or provider
            except Exception:  # a provider name this client does not know: no price
                kind = None
            price = litellm_price(kind, model) if kind else None
        if len(self._prices) < 4096:  # models in use are few; never grow without bound
            self._prices[target] = price
        return price

    @hookimpl(tryfirst=True)  # before the observers that report the cost (logging, stats)
    def modelwire_response_received(self, request: Request, response: Completion) -> None:
        usage = response.usage
        price = self.price(response.provider, response.model) if usage is not None else None
        full = cost_of(usage, price) if usage is not None and price is not None else None
        log = request.state.setdefault("log", {})
        if response.cached:
            saved = response.cost if response.cost is not None else full
            response.cost = 0.0
            request.state["saved_cost"] = saved
            log["saved_cost"] = saved
        else:
            response.cost = full
        log["cost"] = response.cost


@hookimpl
def modelwire_client_created(client: Any) -> None:
    client.registry.pm.register(CostObserver(client), name=f"modelwire.plugins.cost@{id(client):x}")
