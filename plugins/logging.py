"""One structlog event per attempt and per finished stream, on the ``modelwire`` logger.

Events: ``llm.response`` (info) for a successful attempt, a cache hit or a finished stream;
``llm.attempt_failed`` (warning) for a failed attempt. Middleware add their own fields through
``request.state["log"]`` (cache hit, limiter wait, retry delay...). Never per chunk.
"""

from __future__ import annotations

from typing import Any

from modelwire.hookspecs import hookimpl
from modelwire.log import logger
from modelwire.types import Completion, Request

__all__: list[str] = []


@hookimpl
def modelwire_response_received(request: Request, response: Completion, latency: float) -> None:
    usage = response.usage
    logger.info(
        "llm.response",
        provider=response.provider,
        model=response.model,
        attempt=request.attempt,
        status=200,
        latency_ms=round(latency * 1000, 2),
        cached=response.cached,
        stream=request.stream,
        finish_reason=response.finish_reason,
        prompt_tokens=usage.prompt_tokens if usage else None,
        completion_tokens=usage.completion_tokens if usage else None,
        **request.state.get("log", {}),
    )


@hookimpl
def modelwire_request_failed(request: Request, error: BaseException, attempt: int, latency: float) -> None:
    fields: dict[str, Any] = dict(request.state.get("log", {}))
    logger.warning(
        "llm.attempt_failed",
        provider=request.provider,
        model=request.model,
        attempt=attempt,
        status=getattr(error, "status", None),
        latency_ms=round(latency * 1000, 2),
        stream=request.stream,
        error_class=type(error).__name__,
        error=str(error),
        **fields,
    )
