"""The values that travel through the pipeline: Request in, Completion, Chunks or Embeddings out."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from .tools import ToolCall

if TYPE_CHECKING:
    from .validate import Encoded

__all__ = [
    "Chunk", "Completion", "Embeddings", "LimitSpec", "Operation", "Request", "ToolCall", "ToolCallDelta", "Usage",
]

#: What a request asks for: a chat completion (whole or streamed) or embeddings of texts.
Operation = Literal["chat", "embeddings"]


@dataclass(slots=True)
class Usage:
    """Token counts as the provider reported them.

    ``cached_prompt_tokens`` (part of ``prompt_tokens`` served from the provider's prompt cache,
    OpenAI's ``prompt_tokens_details.cached_tokens``) and ``reasoning_tokens`` (part of
    ``completion_tokens``, ``completion_tokens_details.reasoning_tokens``) are None when the
    provider did not say, never a guessed 0.

    >>> Usage.from_dict({"prompt_tokens": 9, "completion_tokens": 2,
    ...                  "prompt_tokens_details": {"cached_tokens": 4}}).cached_prompt_tokens
    4
    """

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cached_prompt_tokens: int | None = None
    reasoning_tokens: int | None = None

    @classmethod
    def from_dict(cls, data: Any) -> Usage | None:
        """Read OpenAI's ``usage`` object (as :meth:`to_dict` writes it); None for a non-dict."""
        if not isinstance(data, dict):
            return None
        prompt = int(data.get("prompt_tokens") or 0)
        completion = int(data.get("completion_tokens") or 0)
        return cls(
            prompt,
            completion,
            int(data.get("total_tokens") or prompt + completion),
            _detail(data, "prompt_tokens_details", "cached_tokens"),
            _detail(data, "completion_tokens_details", "reasoning_tokens"),
        )

    def to_dict(self) -> dict[str, Any]:
        """OpenAI's ``usage`` shape; the details objects only for the counts that are known."""
        out: dict[str, Any] = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        }
        if self.cached_prompt_tokens is not None:
            out["prompt_tokens_details"] = {"cached_tokens": self.cached_prompt_tokens}
        if self.reasoning_tokens is not None:
            out["completion_tokens_details"] = {"reasoning_tokens": self.reasoning_tokens}
        return out


def _detail(data: dict[str, Any], section: str, key: str) -> int | None:
    """``data[section][key]`` as an int, None when the provider did not send it."""
    details = data.get(section)
    value = details.get(key) if isinstance(details, dict) else None
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


@dataclass(slots=True)
class Request:
    """One logical completion request.

    ``provider`` is the configured provider instance name (``openai``, ``azure``, ``local``...),
    ``model`` the model or Azure deployment behind it. ``params`` are the sampling, tool and
    provider-specific parameters sent to the provider. ``options`` are per-call settings for
    middleware, keyed by middleware name (``{"cache": {"ttl": 60}}``); they never reach the
    provider. ``state`` is scratch space middleware may share during one request; by
    convention ``state["log"]`` holds extra fields for the log events and
    ``state["served_by"]`` the ``(provider, model)`` that actually answered when a middleware
    (fallback) sent the request elsewhere.

    ``operation`` is ``"chat"`` (``messages`` hold the conversation) or ``"embeddings"``
    (``messages`` is empty and ``params["input"]`` holds the list of texts; the chain answers
    with :class:`Embeddings`). See docs/embeddings.md.
    """

    provider: str
    model: str
    messages: list[dict[str, Any]]
    params: dict[str, Any] = field(default_factory=dict)
    stream: bool = False
    options: dict[str, Any] = field(default_factory=dict)
    attempt: int = 1
    state: dict[str, Any] = field(default_factory=dict)
    operation: Operation = "chat"
    #: The JSON the client checked the request with, reused by the cache key while the messages
    #: are unchanged (internal; a request from :meth:`replace` starts without it).
    encoded: Encoded | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def target(self) -> str:
        """``provider/model``, the address the caller used."""
        return f"{self.provider}/{self.model}"

    def option(self, middleware: str, key: str, default: Any = None) -> Any:
        """The per-call option ``key`` for ``middleware``, or ``default``."""
        values = self.options.get(middleware)
        return values.get(key, default) if values else default

    def replace(self, **changes: Any) -> Request:
        """A new Request with ``changes`` applied: the way a middleware rewrites a request.

        The caller's request is left as it was: ``messages``, ``params`` and ``options`` not
        given in ``changes`` are copied (one level deep, so build new message dicts rather than
        editing the old ones in place). ``state`` is shared on purpose: it is the scratch space
        of the whole logical request (log fields, ``served_by``), and middleware further out
        must see what the inner ones wrote. ``attempt`` is kept.

        >>> r = Request("local", "m", [{"role": "user", "content": "hi"}])
        >>> masked = r.replace(messages=[{"role": "user", "content": "***"}])
        >>> r.messages[0]["content"], masked.messages[0]["content"], masked.state is r.state
        ('hi', '***', True)

        :raises TypeError: for a name that is not a field of Request.
        """
        unknown = set(changes) - {f.name for f in dataclasses.fields(self) if f.init}
        if unknown:
            raise TypeError(f"Request has no field(s) {', '.join(sorted(unknown))}")
        changes.setdefault("messages", list(self.messages))
        changes.setdefault("params", dict(self.params))
        changes.setdefault("options", dict(self.options))
        changes.setdefault("state", self.state)
        return dataclasses.replace(self, **changes)


@dataclass(slots=True)
class ToolCallDelta:
    """A piece of a tool call in a stream; pieces with the same ``index`` belong together."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass(slots=True)
class Chunk:
    """One piece of a streamed completion.

    ``metadata`` holds provider extras such as Azure content-filter annotations.
    """

    text: str = ""
    tool_calls: list[ToolCallDelta] = field(default_factory=list)
    finish_reason: str | None = None
    usage: Usage | None = None
    index: int = 0
    cached: bool = False
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Completion:
    """A whole completion.

    >>> Completion(text="hi", finish_reason="stop", model="gpt-4o", provider="openai").text
    'hi'
    """

    text: str
    finish_reason: str | None
    model: str
    provider: str
    usage: Usage | None = None
    #: The tool calls the model asked for (``finish_reason == "tool_calls"``); see docs/tools.md.
    tool_calls: list[ToolCall] = field(default_factory=list)
    cached: bool = False
    #: What the provider returned: litellm's ModelResponse for the built-ins, its JSON form (a
    #: dict) on cache hits, None for streams.
    raw: Any = None
    #: USD, set by the ``cost`` plugin when the response is received: None when the price is
    #: unknown, 0.0 for a cache hit (what the hit saved goes to ``client.stats()`` and the log
    #: event as ``saved_cost``). See docs/observability.md.
    cost: float | None = None
    #: With ``response_format=`` (a pydantic model class or a JSON schema dict): the validated
    #: answer, an instance of that class or a dict (docs/tools.md). None otherwise.
    parsed: Any = None


@dataclass(slots=True)
class Embeddings:
    """The answer to ``client.embed(texts)``: one vector per text, in input order.

    ``usage`` counts what the provider was asked for in this call (texts served from the cache
    cost nothing and are not in it); ``from_cache[i]`` says whether ``vectors[i]`` came from the
    cache, and ``cached`` is True when every vector did (no upstream call at all), the same
    meaning as :attr:`Completion.cached` for the observers (cost, stats, logging).

    >>> e = Embeddings([[0.1, 0.2]], model="text-embedding-3-small", provider="openai")
    >>> len(e), e.vectors[0]
    (1, [0.1, 0.2])
    """

    vectors: list[list[float]]
    model: str
    provider: str
    usage: Usage | None = None
    from_cache: list[bool] = field(default_factory=list)
    cached: bool = False
    #: litellm's EmbeddingResponse for one upstream call; None when the answer was put together
    #: from several calls or from the cache.
    raw: Any = None
    #: USD, set by the ``cost`` plugin like :attr:`Completion.cost`.
    cost: float | None = None

    def __len__(self) -> int:
        return len(self.vectors)


@dataclass(frozen=True, slots=True)
class LimitSpec:
    """Which rate-limit bucket a request draws from, what limits that bucket has and what the
    request weighs; returned by ``modelwire_limit_spec`` hooks.

    Requests with the same ``key`` share one bucket (the limits of the first request that
    created it apply). ``tokens`` is the TPM reservation; None lets the limiter estimate it.

    >>> LimitSpec("tenant-42", rpm=60, tpm=40_000)
    LimitSpec(key='tenant-42', rps=None, rpm=60, tpm=40000, concurrency=None, tokens=None, smooth=True)
    """

    key: str
    rps: float | None = None
    rpm: int | None = None
    tpm: int | None = None
    concurrency: int | None = None
    tokens: int | None = None
    smooth: bool = True
