"""Embeddings through ``litellm.aembedding``: one upstream call per batch, with the same key,
transport (modelwire's per-loop SDK client), ``num_retries=0``/``max_retries=0`` and error
mapping as completions.

litellm 1.110's openai route turns ``max_retries=0`` into its default of 2 for embeddings
(``max_retries or litellm.DEFAULT_MAX_RETRIES`` in ``OpenAIChatCompletion.embedding``) and writes
that onto the SDK client it is given, so one 503 became three upstream calls and the shared
client of the chat calls was changed under them. Embeddings therefore get their own copy of the
loop's SDK client (same connection pool) whose ``max_retries`` stays 0 whatever is written to it.

Only the transport entries of a provider's configured ``params`` (headers, query) are sent with
embeddings: the rest are chat sampling settings (temperature, max_tokens...) that an embeddings
endpoint rejects.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

from modelwire.types import Embeddings, Request

from .errors import map_exception
from .litellm_base import alitellm
from .transport import send
from .wire.answer import embeddings_from

if TYPE_CHECKING:
    from .litellm_base import LiteLLMProvider

__all__ = ["aembed", "embed_args"]

#: Configured ``params`` that also apply to embeddings requests.
_TRANSPORT_PARAMS = ("extra_headers", "headers", "extra_query")


def embed_args(provider: LiteLLMProvider, request: Request) -> dict[str, Any]:
    """Keyword arguments of ``litellm.aembedding`` for ``request`` (texts in ``params["input"]``)."""
    config = provider.config
    args: dict[str, Any] = {k: v for k, v in config.params.items() if k in _TRANSPORT_PARAMS}
    args.update(request.params)
    args.update(
        model=f"{provider.prefix}/{request.model}",
        api_key=provider.api_key(),
        timeout=args.get("timeout", config.timeout),
        num_retries=0,
        max_retries=0,
    )
    if config.api_base:
        args["api_base"] = config.api_base
    if config.api_version:
        args["api_version"] = config.api_version
    provider._own_transport(request, args)
    if "client" in args:
        args["client"] = _no_retry_copy(args["client"])
    return args


_pinned_classes: dict[type, type] = {}
_copies: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


def _no_retry_copy(client: Any) -> Any:
    """``client`` (an SDK client) copied once, sharing its HTTP pool, with ``max_retries`` pinned to 0."""
    copy = _copies.get(client)
    if copy is None:
        cls = type(client)
        pinned = _pinned_classes.get(cls)
        if pinned is None:
            # A data descriptor wins over the instance attribute the SDK sets and litellm overwrites.
            pinned = type(f"NoRetry{cls.__name__}", (cls,), {"max_retries": property(lambda _: 0, lambda _, __: None)})
            _pinned_classes[cls] = pinned
        copy = client.with_options(max_retries=0)
        copy.__class__ = pinned
        _copies[client] = copy
    return copy


async def aembed(provider: LiteLLMProvider, request: Request) -> Embeddings:
    """One upstream embeddings call; a failure is raised as a mapped :class:`ModelwireError`."""
    module = await alitellm()  # a cold import never runs on the event loop thread
    args = embed_args(provider, request)
    on_send = request.state.get("on_send")
    try:
        if callable(on_send):
            on_send()  # litellm's embedding path never calls logger_fn; the request leaves now
        response = await send(lambda: module.aembedding(**args), "client" in args)
    except Exception as exc:
        error = map_exception(exc, provider=provider.name, model=request.model)
        error.attempts = request.attempt
    else:
        return embeddings_from(provider.name, request, getattr(response, "data", None),
                               getattr(response, "usage", None), response)
    raise error  # outside the handler: litellm's exception (it can hold the key) stays unreachable
