"""modelwire: one call to OpenAI, Azure OpenAI and local OpenAI-compatible servers, with
caching, rate limiting, retry and fallbacks as plugins.

>>> import modelwire
>>> modelwire.complete("Say hi", model="openai/gpt-4o")  # doctest: +SKIP
'Hi!'

``import modelwire`` is light: litellm is imported on the first real call, and the client
machinery on first use of :class:`Client`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from .errors import *  # noqa: F403
from .errors import __all__ as _errors_all
from .hookspecs import hookimpl
from .lazy import lazy_attributes
from .types import Chunk, Completion, Embeddings, LimitSpec, Request, ToolCall, ToolCallDelta, Usage

if TYPE_CHECKING:
    from .client import Client
    from .middleware import Middleware, MiddlewareContext
    from .provider import CheckResult, Provider, ProviderConfig
    from .stream import AsyncStream, SyncStream

__all__ = [
    "AsyncStream",
    "CheckResult",
    "Chunk",
    "Client",
    "Completion",
    "Embeddings",
    "LimitSpec",
    "Middleware",
    "MiddlewareContext",
    "Provider",
    "ProviderConfig",
    "Request",
    "SyncStream",
    "ToolCall",
    "ToolCallDelta",
    "Usage",
    "complete",
    "default_client",
    "embed",
    "hookimpl",
    "stream_complete",
    *_errors_all,
]

__getattr__ = lazy_attributes(__name__, {
    "Client": ".client",
    "Middleware": ".middleware",
    "MiddlewareContext": ".middleware",
    "Provider": ".provider",
    "ProviderConfig": ".provider",
    "CheckResult": ".provider",
    "AsyncStream": ".stream",
    "SyncStream": ".stream",
})


_default: Client | None = None
_default_lock = threading.Lock()


def default_client() -> Client:
    """The client behind :func:`complete` and :func:`stream_complete`, built on first use
    from ``MODELWIRE_CONFIG`` / ``./modelwire.toml`` / defaults."""
    global _default
    if _default is None:
        with _default_lock:
            if _default is None:
                from .client import Client

                _default = Client()
    return _default


def complete(prompt: Any, **options: Any) -> str:
    """Complete ``prompt`` on the default client and return the text.

    :param options: ``model=...`` and any parameter :meth:`Client.complete` takes.
    """
    return default_client().complete(prompt, **options).text


def embed(texts: Any, **options: Any) -> list[list[float]]:
    """Embed ``texts`` on the default client and return the vectors, in input order.

    :param options: ``model=...`` (default ``openai/text-embedding-3-small``) and any parameter
        :meth:`Client.embed` takes.
    """
    return default_client().embed(texts, **options).vectors


def stream_complete(prompt: Any, **options: Any) -> Iterator[str]:
    """Stream ``prompt`` on the default client, yielding text pieces as they arrive."""
    with default_client().stream(prompt, **options) as stream:
        for chunk in stream:
            if chunk.text:
                yield chunk.text
