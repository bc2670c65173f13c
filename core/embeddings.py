"""``client.embed`` / ``aembed``: texts in, one vector per text out, in input order.

An embeddings call is checked whole before any network call and becomes one :class:`Request`
with ``operation = "embeddings"`` and its texts in ``params["input"]``: the
``modelwire_request_prepare`` hooks see it once, and the observers see its one answer. In the
chain (middleware that declare ``"embeddings"`` in ``applies_to``) it is split into batches of at
most the provider's ``embed_batch_size`` texts just above the first middleware that works per
upstream call (``embed_scope = "batch"``: retry, ratelimit, circuit, fallback), so the cache,
listed first, sees the whole call and sends on only the texts it lacks. Each batch is then one
request through the rest of the chain: at most one upstream call per attempt, one request permit,
retried and failed over on its own. At most ``embed_concurrency`` batches are in flight; the first
batch that fails for good cancels the others and its error is raised. See docs/embeddings.md.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .errors import PayloadTooLargeError, RequestValidationError
from .middleware import EMBEDDINGS, CallNextEmbed, check_options
from .provider import Provider
from .types import Embeddings, Request, Usage
from .validate import check_serializable

if TYPE_CHECKING:
    from .client import Client

__all__ = ["DEFAULT_MODEL", "batch_size", "check_texts", "estimate_input_tokens", "merge", "prepare", "split"]

#: The model ``embed()`` uses when none is given.
DEFAULT_MODEL = "openai/text-embedding-3-small"

# Parameters that would change what comes back or where the texts go: the texts are the call's
# first argument, and vectors are returned as floats.
_RESERVED = ("input", "messages", "stream")


def check_texts(texts: Any) -> list[str]:
    """The texts as a list, or a :class:`RequestValidationError` naming what is wrong.

    >>> check_texts(["a", ""])
    Traceback (most recent call last):
    ...
    modelwire.errors.RequestValidationError: texts[1] is an empty string (the provider would reject it)
    """
    if isinstance(texts, (str, bytes)):
        raise RequestValidationError(
            f"texts must be a list of strings, got a single {type(texts).__name__}: embed([text]) for one vector"
        )
    if not isinstance(texts, Sequence):
        raise RequestValidationError(f"texts must be a list of strings, got {type(texts).__name__}")
    if not texts:
        raise RequestValidationError("texts is empty: give at least one text to embed")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise RequestValidationError(f"texts[{i}] must be a str, got {type(text).__name__}")
        if not text:
            raise RequestValidationError(f"texts[{i}] is an empty string (the provider would reject it)")
    return list(texts)


def _check_params(params: dict[str, Any]) -> None:
    for key in _RESERVED:
        if key in params:
            what = "the texts are embed()'s first argument" if key == "input" else "embeddings take no " + key
            raise RequestValidationError(f"parameter {key!r} is not allowed here: {what}")
    fmt = params.get("encoding_format")
    if fmt is not None and fmt != "float":
        raise RequestValidationError(f"encoding_format must be 'float' (vectors are lists of floats), got {fmt!r}")
    dims = params.get("dimensions")
    if dims is not None and (isinstance(dims, bool) or not isinstance(dims, int) or dims < 1):
        raise RequestValidationError(f"dimensions must be a positive int, got {dims!r}")


def batch_size(provider: Provider) -> int:
    """Texts per request for ``provider``: its config's ``embed_batch_size`` or its kind's default."""
    return provider.config.embed_batch_size or provider.default_embed_batch_size


def prepare(
    client: Client, texts: Any, model: str | None, options: dict[str, Any] | None, params: dict[str, Any]
) -> Request:
    """Check everything and build the prepared Request of the whole call; no I/O.

    :raises RequestValidationError: bad texts, parameters or options; a provider without embeddings;
        a batch above ``max_request_bytes``.
    """
    items = check_texts(texts)
    provider, model_name = client.resolve(model or DEFAULT_MODEL)
    if not provider.supports_embeddings():
        raise RequestValidationError(
            f"provider '{provider.name}' ({type(provider).__name__}) does not support embeddings",
            provider=provider.name,
            model=model_name,
        )
    _check_params(params)
    check_options(options, client.registry.middleware, provider.config)
    size = batch_size(provider)
    for start in range(0, len(items), size):  # every batch that may be sent must fit
        part = items[start : start + size]
        nbytes = check_serializable([], {**params, "input": part})
        if nbytes > client.config.max_request_bytes:
            raise PayloadTooLargeError(
                f"a batch of {len(part)} texts is {nbytes} bytes, above max_request_bytes = "
                f"{client.config.max_request_bytes}: lower providers.{provider.name}.embed_batch_size",
                provider=provider.name,
                model=model_name,
            )
    payload = {**params, "input": items}
    request = Request(provider.name, model_name, [], payload, options=dict(options or {}), operation="embeddings")
    request.state["log"] = {"operation": EMBEDDINGS, "texts": len(items)}
    provider_prepare = getattr(provider, "prepare", None)
    if provider_prepare is not None:
        provider_prepare(request)
    client.hook.modelwire_request_prepare(request=request)
    return request


async def split(client: Client, request: Request, call_next: CallNextEmbed) -> Embeddings:
    """The rest of the chain for ``request`` in batches of ``embed_batch_size`` texts, at most
    ``embed_concurrency`` at once; the answers merged in input order."""
    provider = client.provider(request.provider)
    texts: list[str] = request.params["input"]
    size = batch_size(provider)
    if len(texts) <= size:
        return await call_next(request)
    log = request.state.setdefault("log", {})
    log["batches"] = -(-len(texts) // size)
    gate = asyncio.Semaphore(provider.config.embed_concurrency)
    batches = [
        # own state: a batch's limiter permit and send signal are its own; log fields start from the call's
        request.replace(params={**request.params, "input": texts[i : i + size]}, state={"log": dict(log)})
        for i in range(0, len(texts), size)
    ]

    sent: set[int] = set()
    failed = False

    async def one(n: int, batch: Request) -> Embeddings:
        nonlocal failed
        async with gate:
            if failed:  # a batch failed for good: send no more
                raise asyncio.CancelledError
            sent.add(n)
            try:
                return await call_next(batch)
            except BaseException:
                failed = True
                raise

    tasks = [asyncio.ensure_future(one(n, b)) for n, b in enumerate(batches)]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in tasks:
            error = task.exception() if task.done() and not task.cancelled() else None
            if error is not None:
                # batches not sent yet are dropped; those in flight finish (cancelling litellm
                # mid-call leaves its coroutine never awaited, and the request is out anyway)
                for n, other in enumerate(tasks):
                    if n not in sent:
                        other.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                raise error
        return merge([task.result() for task in tasks])
    finally:
        for task in tasks:
            task.cancel()  # our caller's cancellation stops every batch
        await asyncio.gather(*tasks, return_exceptions=True)
        request.attempt = max(b.attempt for b in batches)


def merge(parts: list[Embeddings]) -> Embeddings:
    """One answer from the batches' answers, in order; usage summed over what was sent upstream."""
    first = parts[0]
    if len(parts) == 1:
        return first
    usages = [p.usage for p in parts if p.usage is not None]
    usage = (
        Usage(sum(u.prompt_tokens for u in usages), 0, sum(u.total_tokens for u in usages)) if usages else None
    )
    from_cache = [flag for p in parts for flag in p.from_cache]
    costs = [p.cost for p in parts]
    return Embeddings(
        vectors=[v for p in parts for v in p.vectors],
        model=first.model,
        provider=first.provider,
        usage=usage,
        from_cache=from_cache,
        cached=all(p.cached for p in parts),
        cost=None if any(c is None for c in costs) else sum(c for c in costs if c is not None),
    )


def estimate_input_tokens(request: Request) -> int:
    """Tokens an embeddings request will be charged: about 4 characters per token, at least one
    per text. The limiter reserves this and settles with the reported usage afterwards."""
    texts = request.params.get("input") or []
    return sum(max(1, math.ceil(len(t) / 4)) for t in texts if isinstance(t, str))
