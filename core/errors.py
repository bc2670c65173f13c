"""The one exception hierarchy of modelwire.

Every failure a caller can see is a :class:`ModelwireError`. Provider failures carry where they
happened (provider instance, model, HTTP status, the provider's request id, attempts made) and a
short body excerpt, never the API key: messages are scrubbed of anything that looks like a key
before the exception is built.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

__all__ = [
    "AuthenticationError",
    "BadRequestError",
    "BudgetExceededError",
    "BudgetUnavailableError",
    "CircuitOpenError",
    "ConfigurationError",
    "ContentFilterError",
    "ContextWindowExceededError",
    "EmptyStreamError",
    "InvalidResponseError",
    "MissingAPIKeyError",
    "ModelwireError",
    "NotFoundError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "PluginError",
    "ProviderConnectionError",
    "ProviderError",
    "ProviderTimeoutError",
    "QuotaExceededError",
    "RateLimitError",
    "RateLimitExceeded",
    "RateLimiterUnavailableError",
    "RequestValidationError",
    "ServerError",
    "ServiceUnavailableError",
    "StreamDurationExceededError",
    "StreamIdleTimeoutError",
    "StreamInterruptedError",
    "StreamProtocolError",
    "StreamRepetitionError",
    "StructuredOutputError",
    "SyncCallError",
    "ToolArgumentsError",
    "UnknownProviderError",
    "is_secret_name",
    "redact",
    "redact_mapping",
]

# Bearer tokens, OpenAI-style keys and `key=`/`api-key:` pairs in URLs or echoed headers.
_SECRET = re.compile(
    r"(sk-[A-Za-z0-9_\-]{8,})|(Bearer\s+[A-Za-z0-9_\-\.]{8,})|((?:api[-_]?key|key)[=:]\s*[^\s&'\",]{6,})",
    re.IGNORECASE,
)
# The password in URLs such as redis://user:password@host (config values, connection errors). The
# password runs to the last "@" before the path: an unescaped "@" in it must not leave a tail shown.
_URL_PASSWORD = re.compile(r"(?<=://)([^/\s:@\"']*):[^\s\"'/]*@")
# Credential headers and fields, as "name: value", "name=value" or JSON ("name": "value").
_NAMES = (
    r"(?:proxy-)?authorization|ocp-apim-subscription-key|x-api-key|api[-_]?key|x-[a-z0-9-]*(?:key|token|secret)|cookie"
)
_HEADER = re.compile(
    rf"""(?P<name>\b(?:{_NAMES}))(?P<sep>["']?\s*[:=]\s*)"""
    r"""(?:(?P<q>["'])(?P<quoted>[^"'\n]*)(?P=q)|(?P<bare>(?:(?:bearer|basic|token)\s+)?[^\s"',&}]+))""",
    re.IGNORECASE,
)
_SECRET_NAMES = frozenset(
    {"authorization", "proxy-authorization", "api-key", "x-api-key", "ocp-apim-subscription-key", "cookie",
     "set-cookie", "password", "secret", "client-secret", "access-token", "refresh-token"}
)
_secrets: set[str] = set()


def redact(text: str) -> str:
    """Remove API keys (the configured ones and anything key-shaped), credential headers and URL
    passwords from ``text``.

    >>> redact('{"api-key": "abc123", "url": "redis://u:p@ss@host:6379/0"}')
    '{"api-key": "***", "url": "redis://u:***@host:6379/0"}'
    """
    for secret in _secrets:
        text = text.replace(secret, "***")
    text = _HEADER.sub(_mask_header, text)
    return _URL_PASSWORD.sub(r"\1:***@", _SECRET.sub("***", text))


def _mask_header(match: re.Match[str]) -> str:
    value = match.group("quoted") if match.group("q") else match.group("bare")
    if value.startswith("***") or value == "(unset)":  # already masked (modelwire config's own marks)
        return match.group(0)
    quote = match.group("q") or ""
    return f"{match.group('name')}{match.group('sep')}{quote}***{quote}"


def is_secret_name(name: str) -> bool:
    """Whether a header or field called ``name`` holds a credential (``api-key``, ``Authorization``,
    ``Ocp-Apim-Subscription-Key``, ``x-...-token``...); ``*_env`` names hold a variable name."""
    key = name.strip().lower().replace("_", "-")
    if key.endswith("-env"):
        return False
    return key in _SECRET_NAMES or key.endswith(("-key", "-token", "-secret", "-password"))


def redact_mapping(value: Any) -> Any:
    """A copy of ``value`` (dicts and lists, recursively) with credential-named entries masked and
    every string passed through :func:`redact`."""
    if isinstance(value, dict):
        return {
            k: "***" if isinstance(k, str) and is_secret_name(k) and _maskable(v) else redact_mapping(v)
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [redact_mapping(v) for v in value]
    return redact(value) if isinstance(value, str) else value


def _maskable(value: Any) -> bool:
    return value is not None and not (isinstance(value, str) and (value.startswith("***") or value == "(unset)"))


def remember_secret(secret: str) -> None:
    """Record a configured key so that :func:`redact` removes it even when it is not key-shaped."""
    if len(secret) >= 6:
        _secrets.add(secret)


class ModelwireError(Exception):
    """Root of every error modelwire raises.

    :ivar retryable: whether trying the same request again can succeed.
    """

    retryable: bool = False
    #: False when the request surely never reached the server (refused, connect timeout), so a
    #: retry cannot bill twice; True or None (unknown) otherwise.
    request_sent: bool | None = None
    #: Where ``retry_after`` came from: ``"header"`` (Retry-After, authoritative) or ``"hint"``
    #: (x-ratelimit-reset-*, "try again in ..."), None when unknown.
    retry_after_source: str | None = None
    #: After fallbacks: every (target, error) tried, in order, this error's own last.
    tried: tuple[tuple[str, ModelwireError], ...] = ()

    def __init__(
        self,
        message: str,
        *,
        provider: str | None = None,
        model: str | None = None,
        status: int | None = None,
        request_id: str | None = None,
        attempts: int = 0,
        retry_after: float | None = None,
        body: str | None = None,
        retryable: bool | None = None,
    ) -> None:
        self.message = redact(message)
        self.provider = provider
        self.model = model
        self.status = status
        self.request_id = request_id
        self.attempts = attempts
        self.retry_after = retry_after
        self.body = redact(body[:500]) if body else None
        if retryable is not None:
            self.retryable = retryable
        super().__init__(self.message)

    def __str__(self) -> str:
        where = [f"{k}={v}" for k, v in self._context().items() if v is not None]
        return f"{self.message} ({', '.join(where)})" if where else self.message

    def _context(self) -> dict[str, Any]:
        target = f"{self.provider}/{self.model}" if self.provider and self.model else self.provider
        return {
            "target": target,
            "status": self.status,
            "request_id": self.request_id,
            "attempts": self.attempts or None,
            "retry_after": self.retry_after,
        }


class ConfigurationError(ModelwireError):
    """The configuration is invalid; raised at load time or before any network call."""


class MissingAPIKeyError(ConfigurationError):
    """The environment variable that should hold a provider's API key is unset or empty."""


class UnknownProviderError(ConfigurationError):
    """A model names a provider that is neither configured nor registered."""


class PluginError(ConfigurationError):
    """A plugin failed to import or register, or registered something malformed."""


class RequestValidationError(ModelwireError):
    """The request is malformed (messages, parameters); raised before any network call."""


class PayloadTooLargeError(RequestValidationError):
    """The request is larger than the configured limit or the rate-limit budget."""


class SyncCallError(ModelwireError):
    """A blocking call (``complete``, ``stream``, ``close``) made where it cannot run: from a hook or
    middleware on modelwire's own event loop (use the async API there)."""


class ToolArgumentsError(ModelwireError):
    """A tool call's arguments are not a JSON object (``ToolCall.arguments_json()``), or the call
    was cut short by an interrupted stream.

    :ivar call: the :class:`~modelwire.tools.ToolCall` (id, name, raw arguments).
    """

    def __init__(self, message: str, *, call: Any = None, **kw: Any) -> None:
        self.call = call
        super().__init__(message, **kw)


class StructuredOutputError(ModelwireError):
    """The answer to a ``response_format`` request is not valid JSON or does not match the schema.
    Never cached; the answer was billed.

    :ivar text: the raw text the model produced.
    :ivar errors: the validation errors (pydantic's ``errors()`` shape: ``type``, ``loc``, ``msg``).
    """

    def __init__(self, message: str, *, text: str = "", errors: list[dict[str, Any]] | None = None,
                 **kw: Any) -> None:
        self.text = text
        self.errors = list(errors or [])
        super().__init__(message, **kw)


class ProviderError(ModelwireError):
    """The provider (or the transport to it) failed.

    When the failure ended a stream, the stream fills in what the caller had received:

    :ivar partial_text: text of choice 0 received before the failure ("" when none).
    :ivar chunks: chunks the caller received.
    :ivar usage_known: whether the provider reported usage before the failure.
    :ivar partial_tool_calls: the :class:`~modelwire.tools.ToolCall` objects assembled so far,
        each with ``complete=False``; never execute them.
    """

    partial_text: str = ""
    chunks: int = 0
    usage_known: bool = False
    partial_tool_calls: tuple[Any, ...] = ()


class AuthenticationError(ProviderError):
    """401: the key was rejected."""


class PermissionDeniedError(ProviderError):
    """403: the key may not use this model or resource."""


class NotFoundError(ProviderError):
    """404: unknown model, deployment or endpoint (on Azure often a wrong api_version)."""


class BadRequestError(ProviderError):
    """400/422: the provider rejected the request itself."""


class ContextWindowExceededError(BadRequestError):
    """The prompt plus completion does not fit the model's context window."""


class ContentFilterError(BadRequestError):
    """The provider's content filter refused the prompt or the answer (billed; never retried)."""


class RateLimitError(ProviderError):
    """429 from the provider.

    :ivar limit_type: ``"requests"``, ``"tokens"`` or None when the provider did not say.
    """

    retryable = True

    def __init__(self, message: str, *, limit_type: str | None = None, **kw: Any) -> None:
        self.limit_type = limit_type
        super().__init__(message, **kw)


class QuotaExceededError(RateLimitError):
    """429 that waiting cannot fix: quota or credit exhausted, or a request above the whole limit."""

    retryable = False


class CircuitOpenError(ProviderError):
    """modelwire's circuit breaker refused the call: the provider failed too often recently.

    ``retry_after`` is the time left until a probe request is let through.
    """


class ServerError(ProviderError):
    """5xx from the provider."""

    retryable = True


class ServiceUnavailableError(ServerError):
    """503 / overloaded."""


class ProviderTimeoutError(ProviderError):
    """No answer in time (connect, read or the total deadline)."""

    retryable = True


class ProviderConnectionError(ProviderError):
    """The connection failed or broke (refused, reset, body cut short)."""

    retryable = True


class InvalidResponseError(ProviderError):
    """The provider answered 200 with something that is not a completion."""


class StreamInterruptedError(ProviderError):
    """A stream ended without a finish_reason or [DONE], or broke mid-way.

    :ivar partial_text: the text received before the interruption.
    :ivar chunks: how many chunks were received.
    :ivar usage_known: whether the provider reported usage before the interruption.
    """

    retryable = True

    def __init__(
        self,
        message: str,
        *,
        partial_text: str = "",
        chunks: int = 0,
        usage_known: bool = False,
        **kw: Any,
    ) -> None:
        self.partial_text = partial_text
        self.chunks = chunks
        self.usage_known = usage_known
        super().__init__(message, **kw)


class EmptyStreamError(StreamInterruptedError):
    """The server answered 200 with a stream that carried no text, tool call or finish_reason
    (nothing at all, or only ``[DONE]``/usage). Retryable like any interruption; some local servers
    answer a prompt over their context size this way, so bound the retries (docs/streaming.md)."""


class StreamIdleTimeoutError(StreamInterruptedError):
    """No data event arrived within the idle (or first-token) timeout."""


class StreamProtocolError(StreamInterruptedError):
    """The stream carried bytes that are not valid SSE/JSON/UTF-8."""

    retryable = False


class StreamDurationExceededError(StreamInterruptedError):
    """The stream ran longer than its ``max_stream_duration`` cap (slow but steady output)."""

    retryable = False


class StreamRepetitionError(StreamInterruptedError):
    """The model repeated the same delta more times than ``stream_repeat_limit`` allows."""


class RateLimitExceeded(ModelwireError):
    """modelwire's own limiter could not admit the request within the allowed wait.

    Distinct from :class:`RateLimitError`, which is the provider's 429.

    :ivar needed: seconds the request would have had to wait.
    """

    def __init__(self, message: str, *, needed: float | None = None, **kw: Any) -> None:
        self.needed = needed
        super().__init__(message, **kw)


class RateLimiterUnavailableError(ModelwireError):
    """The rate limiter's shared backend (Redis, SQLite) failed and the ``ratelimit`` section
    says ``on_backend_error = "closed"``: the request is refused rather than sent unlimited."""


class BudgetExceededError(ModelwireError):
    """The ``budget`` middleware refused the request before any network call: its estimated cost
    (or tokens) would take a limit past its cap for the current period. Never retryable; retry,
    circuit breakers and fallbacks do not count it (waiting does not help until ``resets_at``).

    :ivar resets_at: when the period ends and the limit starts from zero (UTC, timezone-aware).
    :ivar limit: the cap (USD or tokens, see ``unit``).
    :ivar spent: settled spend in this period, plus what calls in flight have reserved.
    :ivar needed: this request's estimate.
    :ivar unit: ``"usd"`` or ``"tokens"``.
    :ivar period: ``"minute"``, ``"hour"``, ``"day"`` or ``"month"``.
    :ivar scope: ``"global"``, ``"model:<provider/model>"`` or ``"namespace:<tenant>"``.
    :ivar match: the limit's ``match`` pattern.
    """

    request_sent = False

    def __init__(
        self,
        message: str,
        *,
        resets_at: datetime,
        limit: float,
        spent: float,
        needed: float,
        unit: str,
        period: str,
        scope: str,
        match: str,
        **kw: Any,
    ) -> None:
        self.resets_at = resets_at
        self.limit = limit
        self.spent = spent
        self.needed = needed
        self.unit = unit
        self.period = period
        self.scope = scope
        self.match = match
        super().__init__(message, **kw)


class BudgetUnavailableError(ModelwireError):
    """The budget's shared store (SQLite, Redis) failed and ``[budget] on_backend_error`` is
    ``"closed"`` (the default): the request is refused, before any network call, rather than
    sent without a cap."""

    request_sent = False
