"""One event per attempt and per finished stream, on the ``modelwire`` logger.

Events: ``llm.response`` (info) for a successful attempt, a cache hit or a finished stream;
``llm.attempt_failed`` (warning) for a failed attempt; ``llm.cancelled`` (info) when the caller
cancelled the request (a client disconnect is not a failure). Middleware add their own fields through
``request.state["log"]`` (cache hit, limiter wait, retry delay...). Never per chunk.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from modelwire.hookspecs import hookimpl
from modelwire.log import logger
from modelwire.types import Completion, Request, Usage

__all__: list[str] = []


@hookimpl
def modelwire_response_received(request: Request, response: Completion, latency: float) -> None:
    if not logger.isEnabledFor(logging.INFO):  # nobody listens: skip building the event
        return
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
        finish_reason=getattr(response, "finish_reason", None),  # Embeddings have none
        prompt_tokens=usage.prompt_tokens if usage else None,
        completion_tokens=usage.completion_tokens if usage else None,
        cached_prompt_tokens=usage.cached_prompt_tokens if usage else None,
        reasoning_tokens=usage.reasoning_tokens if usage else None,
        **request.state.get("log", {}),
    )


@hookimpl
def modelwire_request_failed(request: Request, error: BaseException, attempt: int, latency: float) -> None:
    fields: dict[str, Any] = dict(request.state.get("log", {}))
    if isinstance(error, asyncio.CancelledError):
        logger.info(
            "llm.cancelled",
            provider=request.provider,
            model=request.model,
            attempt=attempt,
            latency_ms=round(latency * 1000, 2),
            stream=request.stream,
            **fields,
        )
        return
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


_BROKEN_ENDS = frozenset({"interrupted", "error", "content_filter"})


@hookimpl
def modelwire_stream_end(
    request: Request,
    reason: str,
    chunks: int,
    first_token_latency: float | None,
    latency: float,
    usage: Usage | None,
    cached: bool,
    error: BaseException | None,
) -> None:
    """``llm.stream_end`` for a stream that did not end successfully (a successful one was logged
    as ``llm.response``, with the stream's figures); a warning when it broke."""
    if error is None and not reason.startswith("cancelled"):
        return
    log = logger.warning if reason in _BROKEN_ENDS else logger.info
    log(
        "llm.stream_end",
        provider=request.provider,
        model=request.model,
        attempt=request.attempt,
        reason=reason,
        chunks=chunks,
        first_token_ms=round(first_token_latency * 1000, 2) if first_token_latency is not None else None,
        latency_ms=round(latency * 1000, 2),
        usage_known=usage is not None,
        prompt_tokens=usage.prompt_tokens if usage else None,
        completion_tokens=usage.completion_tokens if usage else None,
        cached=cached,
        error_class=type(error).__name__ if error is not None else None,
        **request.state.get("log", {}),
    )
