"""Map whatever litellm, the openai SDK, httpx or aiohttp raised to modelwire's hierarchy.

The HTTP status decides first (it is the most reliable signal across OpenAI, Azure and local
servers); the body text refines it (context window, content filter, quota); the exception's
type decides only when there is no status (timeouts, broken connections).
"""

from __future__ import annotations

import asyncio
import email.utils
import math
import re
import time
from collections.abc import Mapping
from typing import Any

from modelwire import errors as e

__all__ = ["map_exception", "parse_retry_after", "request_id"]

_CONTEXT = re.compile(
    r"context_length_exceeded|maximum context length|context window|exceed_context_size|"
    r"exceeds the available context|context size has been exceeded",
    re.IGNORECASE,
)
_CONTENT_FILTER = re.compile(r"content_filter|content management policy|ResponsibleAIPolicyViolation", re.I)
_QUOTA = re.compile(r"insufficient_quota|credit_balance_exhausted|exceeded your current quota|Request too large", re.I)
_MAX_SANE_SECONDS = 10 * 365 * 86400.0


def parse_retry_after(headers: Mapping[str, str] | None, now: float | None = None) -> float | None:
    """Seconds to wait according to ``retry-after-ms``, then ``retry-after`` (seconds or an
    HTTP date). Malformed, negative, infinite or absurd values give None, never an exception.
    """
    if not headers:
        return None
    lower = {k.lower(): v for k, v in headers.items()}
    ms = _number(lower.get("retry-after-ms"))
    if ms is not None:
        return ms / 1000.0
    raw = lower.get("retry-after")
    if raw is None:
        return None
    seconds = _number(raw)
    if seconds is not None:
        return seconds
    try:
        parsed = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if parsed is None or parsed.tzinfo is None:
        return None
    delta = parsed.timestamp() - (time.time() if now is None else now)
    return delta if 0 <= delta <= _MAX_SANE_SECONDS else None


def _number(raw: str | None) -> float | None:
    if raw is None:
        return None
    try:
        value = float(raw)
    except (TypeError, ValueError, OverflowError):
        return None
    if math.isnan(value) or value < 0 or value > _MAX_SANE_SECONDS:
        return None
    return value


def request_id(headers: Mapping[str, str] | None) -> str | None:
    """The provider's request id (OpenAI ``x-request-id``, Azure ``apim-request-id``)."""
    if not headers:
        return None
    for name in ("x-request-id", "apim-request-id", "request-id"):
        value = headers.get(name)
        if value:
            return str(value)
    return None


def _headers_of(exc: BaseException) -> Mapping[str, str] | None:
    headers = getattr(exc, "litellm_response_headers", None)
    if headers is None:
        response = getattr(exc, "response", None)
        headers = getattr(response, "headers", None)
    return headers if isinstance(headers, Mapping) or hasattr(headers, "get") else None


def _status_of(exc: BaseException) -> int | None:
    status = getattr(exc, "status_code", None)
    if isinstance(status, int) and 100 <= status < 600:
        return status
    return None


def map_exception(exc: BaseException, *, provider: str, model: str) -> e.ModelwireError:
    """Turn ``exc`` into the matching :class:`~modelwire.ModelwireError` subclass."""
    if isinstance(exc, e.ModelwireError):
        return exc
    headers = _headers_of(exc)
    status = _status_of(exc)
    text = str(getattr(exc, "message", None) or exc) or type(exc).__name__
    kw: dict[str, Any] = {
        "provider": provider,
        "model": model,
        "status": status,
        "request_id": request_id(headers),
        "retry_after": parse_retry_after(headers),
        "body": text,
    }
    kind = _class_for(status, text, type(exc).__name__)
    if status is None and kind is e.ProviderError:
        kind = _class_for_transport(exc)
    if issubclass(kind, e.ProviderError) and headers is not None:
        should = str(headers.get("x-should-retry", "")).lower()
        if should in ("true", "false") and kind not in (e.QuotaExceededError, e.ContentFilterError):
            kw["retryable"] = should == "true"
    return kind(_short(text), **kw)


def _class_for(status: int | None, text: str, type_name: str) -> type[e.ProviderError]:
    if status == 400 or status == 422 or "BadRequest" in type_name or "UnprocessableEntity" in type_name:
        if _CONTEXT.search(text) or "ContextWindow" in type_name:
            return e.ContextWindowExceededError
        if _CONTENT_FILTER.search(text) or "ContentPolicy" in type_name:
            return e.ContentFilterError
        return e.BadRequestError
    if status == 401 or type_name == "AuthenticationError":
        return e.AuthenticationError
    if status == 403 or type_name == "PermissionDeniedError":
        return e.PermissionDeniedError
    if status == 404 or type_name == "NotFoundError":
        return e.NotFoundError
    if status == 408 or type_name == "Timeout":
        return e.ProviderTimeoutError
    if status == 429 or type_name == "RateLimitError":
        return e.QuotaExceededError if _QUOTA.search(text) else e.RateLimitError
    if status == 503 or type_name == "ServiceUnavailableError":
        return e.ServiceUnavailableError
    if (status is not None and status >= 500) or status == 409:
        if _CONTEXT.search(text):  # llama.cpp has reported context overflow as a 500
            return e.ContextWindowExceededError
        return e.ServerError
    if status is None and _CONTEXT.search(text):
        return e.ContextWindowExceededError
    return e.ProviderError


def _class_for_transport(exc: BaseException) -> type[e.ProviderError]:
    """Classify by exception type when no HTTP status exists; walks the cause chain."""
    seen: BaseException | None = exc
    while seen is not None:
        name = type(seen).__name__
        if isinstance(seen, (asyncio.TimeoutError, TimeoutError)) or "Timeout" in name:
            return e.ProviderTimeoutError
        if isinstance(seen, (ConnectionError, OSError)) or any(
            s in name for s in ("Connect", "Connection", "Protocol", "Payload", "Disconnected")
        ):
            return e.ProviderConnectionError
        seen = seen.__cause__ or seen.__context__
    return e.ProviderError


def _short(text: str) -> str:
    """Drop litellm's class-name prefixes and keep the first lines of the provider's message."""
    text = re.sub(r"^(litellm\.\w+: )?(\w+: )?(\w+Exception - )?", "", text.strip())
    return text[:400] if text else "provider error"
