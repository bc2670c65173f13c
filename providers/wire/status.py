"""Errors from what an HTTP answer says: its status, body and headers.

Both routes end here. The direct route calls :func:`error_for_status` with the response it read;
the litellm route (:func:`modelwire.providers.errors.map_exception`) first digs the same three
things out of litellm's exception chain. The class, message, ``retryable``, ``retry_after`` and
``request_id`` of an error therefore cannot differ between the routes for the same answer.

Every error carries provider, model, status, request id, ``retry_after`` when the provider said
how long to wait, a body excerpt, ``retryable`` and ``request_sent``.
"""

from __future__ import annotations

import email.utils
import math
import re
import time
from collections.abc import Mapping
from typing import Any

from modelwire import errors as e

__all__ = [
    "build_error",
    "classify",
    "error_for_status",
    "error_in_200",
    "no_choices_error",
    "not_json_200",
    "parse_duration",
    "parse_retry_after",
    "rate_limit_hint",
    "request_id",
]

_CONTEXT = re.compile(
    r"context_length_exceeded|maximum context length|context window|exceed_context_size|"
    r"exceeds the available context|context size has been exceeded",
    re.IGNORECASE,
)
_CONTENT_FILTER = re.compile(r"content_filter|content management policy|ResponsibleAIPolicyViolation", re.I)
_QUOTA = re.compile(r"insufficient_quota|credit_balance_exhausted|exceeded your current quota|Request too large", re.I)
_TRY_AGAIN = re.compile(r"try again in (\d+(?:\.\d+)?(?:ms|s|m|h)(?:\d+(?:\.\d+)?(?:ms|s))?)", re.I)
_GO_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|us|µs|ns|h|m|s)")
_MAX_SANE_SECONDS = 10 * 365 * 86400.0


# -- Retry-After and friends ---------------------------------------------------------------------


def parse_retry_after(headers: Mapping[str, str] | None, now: float | None = None) -> float | None:
    """Seconds to wait according to ``retry-after-ms``, then ``retry-after`` (seconds or an
    HTTP date). Malformed, negative, infinite or absurd values give None, never an exception.

    >>> parse_retry_after({"retry-after-ms": "1500", "retry-after": "2"})
    1.5
    """
    if not headers:
        return None
    lower = _lower(headers)
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


def parse_duration(raw: str | None) -> float | None:
    """A Go-style duration (``6m0s``, ``1s``, ``12ms``, ``1.2s``, ``1h2m``) in seconds, or None.

    >>> parse_duration("6m0s"), parse_duration("12ms"), parse_duration("soon")
    (360.0, 0.012, None)
    """
    if not raw or not isinstance(raw, str):
        return None
    text = raw.strip()
    if text in ("0", "-1") or text.startswith("-"):
        return None  # Azure's "-1"/"0" sentinels mean "unknown", not "now"
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
    total, pos = 0.0, 0
    for match in _GO_DURATION.finditer(text):
        if match.start() != pos:
            return None
        total += float(match.group(1)) * units[match.group(2)]
        pos = match.end()
    if pos != len(text) or pos == 0 or not math.isfinite(total) or total > _MAX_SANE_SECONDS:
        return None
    return total


def rate_limit_hint(headers: Mapping[str, str] | None, text: str = "", limit_type: str | None = None) -> float | None:
    """A softer hint than Retry-After: ``x-ratelimit-reset-requests/tokens`` for the exhausted
    limit, else OpenAI's "Please try again in 644ms". These say when the window is full again,
    which over-estimates the wait, so the retry policy never fails fast because of them."""
    lower = _lower(headers) if headers else {}
    resets: dict[str, float] = {}
    for kind in ("requests", "tokens"):
        value = parse_duration(lower.get(f"x-ratelimit-reset-{kind}"))
        if value is not None and value > 0:
            resets[kind] = value
    if resets:
        exhausted = [k for k in resets if _number(lower.get(f"x-ratelimit-remaining-{k}")) == 0]
        if limit_type in resets:
            return resets[limit_type]
        return max(resets[k] for k in exhausted) if exhausted else min(resets.values())
    match = _TRY_AGAIN.search(text)
    return parse_duration(match.group(1)) if match else None


def request_id(headers: Mapping[str, str] | None) -> str | None:
    """The provider's request id (OpenAI ``x-request-id``, Azure ``apim-request-id``)."""
    if not headers:
        return None
    lower = _lower(headers)
    for name in ("x-request-id", "apim-request-id", "request-id"):
        value = lower.get(name)
        if value:
            return str(value)
    return None


def _lower(headers: Mapping[str, str]) -> dict[str, str]:
    try:
        return {str(k).lower(): str(v) for k, v in headers.items()}
    except Exception:  # a header object that cannot be iterated must not mask the real error
        return {}


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


def _set_retry_after(error: e.ModelwireError, headers: Mapping[str, str] | None, text: str) -> None:
    exact = parse_retry_after(headers)
    if exact is not None and exact > 0:
        error.retry_after, error.retry_after_source = exact, "header"
    elif isinstance(error, e.RateLimitError):
        hint = rate_limit_hint(headers, text, error.limit_type)
        if hint is not None:
            error.retry_after, error.retry_after_source = hint, "hint"


def classify(status: int | None, text: str, type_name: str) -> type[e.ProviderError]:
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
    if status == 408:
        return e.ProviderTimeoutError
    if status == 429 or type_name == "RateLimitError":
        return e.QuotaExceededError if _QUOTA.search(text) else e.RateLimitError
    if status == 503 or type_name == "ServiceUnavailableError":
        return e.ServiceUnavailableError
    if (status is not None and status >= 500) or status == 409:
        if _CONTEXT.search(text):  # llama.cpp has reported context overflow as a 500
            return e.ContextWindowExceededError
        return e.ServerError
    if status is not None and 400 <= status < 500:
        return e.BadRequestError
    if _CONTEXT.search(text):
        return e.ContextWindowExceededError
    if _CONTENT_FILTER.search(text):
        return e.ContentFilterError
    return e.ProviderError


def _describe(
    kind: type[e.ProviderError], status: int | None, text: str, body: str | None, provider: str, model: str, raw: str
) -> str:
    """A message a person can act on, for the cases where the provider's own is cryptic."""
    if status is not None and text.startswith("Error code:") and body:
        excerpt = re.sub(r"<[^>]+>", " ", body)
        excerpt = re.sub(r"\s+", " ", excerpt).strip()[:200]
        text = f"HTTP {status} with a non-JSON body: {excerpt or body[:200]}"
    if kind is e.NotFoundError:
        blob = f"{raw} {body or ''}"
        if "DeploymentNotFound" in blob:
            text = (
                f"Azure deployment '{model}' does not exist on provider '{provider}' (DeploymentNotFound): "
                f"check the deployment name (models are addressed as '{provider}/<deployment>'); "
                "a deployment created in the last 5 minutes may not be ready yet"
            )
        elif "Resource not found" in blob:
            text = (
                f"'{provider}' answered 404 Resource not found: on Azure this means a missing or unsupported "
                f"api-version or an api_base that is not the resource endpoint; check providers.{provider}.api_version "
                f"and providers.{provider}.api_base"
            )
    return text


def _limit_type(text: str) -> str | None:
    low = text.lower()
    if "tokens per min" in low or '"type": "tokens"' in low or "(tpm)" in low:
        return "tokens"
    if "requests per min" in low or '"type": "requests"' in low or "(rpm)" in low:
        return "requests"
    return None


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


# -- building the error ------------------------------------------------------------------------


def build_error(
    kind: type[e.ProviderError],
    text: str,
    *,
    provider: str,
    model: str,
    status: int | None,
    headers: Mapping[str, str] | None,
    body: str | None,
    sent: bool | None = True,
    retryable: bool | None = None,
    fallback_request_id: str | None = None,
) -> e.ProviderError:
    """``kind(text)`` with its context, Retry-After, limit type and the server's ``x-should-retry``."""
    kw: dict[str, Any] = {
        "provider": provider,
        "model": model,
        "status": status,
        "request_id": request_id(headers) or fallback_request_id or None,
        "body": body or text,
    }
    if issubclass(kind, e.RateLimitError):
        kw["limit_type"] = _limit_type(f"{text} {body or ''}")
    error = kind(text, **kw)
    error.request_sent = sent
    _set_retry_after(error, headers, f"{text} {body or ''}")
    should = str(_lower(headers).get("x-should-retry", "")).lower() if headers else ""
    if should in ("true", "false") and not isinstance(error, (e.QuotaExceededError, e.ContentFilterError)):
        retryable = should == "true"  # the server knows best (openai-python semantics)
    if retryable is not None:
        error.retryable = retryable
    return error


def error_for_status(
    status: int | None,
    headers: Mapping[str, str] | None,
    message: str,
    body: str | None,
    *,
    provider: str,
    model: str,
    type_name: str = "",
    raw: str | None = None,
    fallback_request_id: str | None = None,
) -> e.ProviderError:
    """The error for an HTTP error answer (or an error event inside a stream).

    :param message: the provider's own message (``error.message`` of a JSON body), or
        ``"Error code: <status> - <body>"`` when the body says nothing readable.
    :param body: the body text, for the excerpt and to refine the class (context window, quota...).
    :param type_name: the name of the SDK exception class, when there is one (litellm route).
    :param raw: the unshortened message, when it differs from ``message`` (litellm route).
    """
    kind = classify(status, f"{message} {body or ''}", type_name)
    text = _describe(kind, status, message, body, provider, model, raw if raw is not None else message)
    return build_error(
        kind, text, provider=provider, model=model, status=status, headers=headers, body=body,
        fallback_request_id=fallback_request_id,
    )


def error_in_200(
    code: Any, detail: str, headers: Mapping[str, str] | None, body: str | None, *, provider: str, model: str
) -> e.ProviderError:
    """A 200 whose body is ``{"error": {...}}``: the class the error's code or text names."""
    text = f"the provider answered 200 with an error body: {detail}"
    numeric = _int(code)
    if numeric == 422:  # litellm's stand-in when the embedded error has no code
        numeric = None
    kind = classify(numeric, f"{code} {text}", "") if numeric and numeric >= 400 else classify(None, text, "")
    if kind is e.ProviderError:
        kind = e.ServerError
    return build_error(kind, text, provider=provider, model=model, status=200, headers=headers, body=body)


def not_json_200(
    received: str, headers: Mapping[str, str] | None, body: str | None, *, provider: str, model: str
) -> e.ProviderError:
    """A 200 whose body is not JSON (a proxy's HTML page, an empty body): worth another try."""
    text = f"the provider answered 200 with a body that is not JSON: {received[:200]}"
    return build_error(
        e.InvalidResponseError, text, provider=provider, model=model, status=200, headers=headers, body=body,
        retryable=True,
    )


def no_choices_error(
    detail: str | None, headers: Mapping[str, str] | None, body: str | None, *, provider: str, model: str,
    vllm_error: bool = False,
) -> e.ProviderError:
    """A 200 without a list of choices; vLLM's top-level ``{"object": "error"}`` is a server error."""
    if vllm_error:
        text = "the provider answered 200 with a top-level error object (vLLM shape) instead of a completion"
        return build_error(
            e.ServerError, text, provider=provider, model=model, status=200, headers=headers, body=body,
            retryable=True,
        )
    text = "the provider answered 200 without a list of choices: " + detail if detail else (
        "the provider answered 200 without any choices"
    )
    return build_error(e.InvalidResponseError, text, provider=provider, model=model, status=200, headers=headers,
                       body=body)
