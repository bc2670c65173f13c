"""Streaming through litellm without believing what litellm reports about a broken stream.

Decision (see docs/streaming.md, "How a stream is read"): litellm makes the request (URL, auth,
Azure routing, its pooled aiohttp transport, HTTP error mapping before the first byte), and
modelwire reads the body of the response litellm opened, with its own strict SSE decoder
(:mod:`modelwire.providers.wire.sse`) and event parser (:mod:`modelwire.providers.wire.stream_parse`),
instead of iterating litellm's ``CustomStreamWrapper``. Measured on litellm 1.110.2 against the
loopback server, the wrapper:

- fabricates ``finish_reason="stop"`` for a body that ends cleanly before any chunk;
- turns a vLLM ``{"object": "error"}`` event into an empty chunk and then reports only "Stream
  ended before a finish_reason", losing the server's message;
- reports invalid UTF-8, malformed JSON, resets and error events all as one
  ``APIConnectionError`` inside ``MidStreamFallbackError`` (no way to tell a protocol fault from
  a network fault, nor to keep the error's type/code);
- keeps every chunk it yields in ``self.chunks`` (memory grows with the stream, litellm#8620) and
  costs tens of microseconds of pydantic work per chunk;
- drops Azure's ``prompt_filter_results``.

Reading the raw body keeps the transport in litellm while seeing every byte. When a provider's
litellm route does not expose the body (a non-OpenAI-SDK route), :func:`stream_chunks` falls
back to iterating the wrapper with the same timeouts and end checks.

The stream guards (timeouts, end checks) are the ones the direct route uses
(:mod:`modelwire.providers.wire.guard`). Whatever ends the stream, the body iterator and the
response are closed, which releases or closes the pooled connection.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any

from modelwire.errors import ModelwireError
from modelwire.provider import StreamSettings
from modelwire.types import Chunk, Request

from .errors import detached, map_exception, request_id
from .transport import send
from .wire.guard import Clock, Expired, Progress, before, body_bytes, finish_attempt, guarded
from .wire.stream_parse import EventParser

if TYPE_CHECKING:
    from .litellm_base import LiteLLMProvider

__all__ = ["stream_chunks"]


async def stream_chunks(provider: LiteLLMProvider, request: Request) -> AsyncIterator[Chunk]:
    """The chunks of one stream attempt; raises a :class:`~modelwire.ModelwireError` for any fault.

    :param provider: the provider instance (config, credentials, litellm route).
    :param request: the request; ``options["stream"]`` may override the provider's stream settings.
    """
    settings = StreamSettings.resolve(provider.config, request.options)
    from .litellm_base import litellm

    litellm()  # the first call imports litellm (seconds, blocking): not the server's time to first token
    clock = Clock(settings)
    args = provider.call_args(request)
    args["stream"] = True
    if provider.config.stream_usage and "stream_options" not in args:
        args["stream_options"] = {"include_usage": True}
    wrapper: Any = None
    body: Any = None
    failure: ModelwireError | None = None
    clean = False
    try:
        wrapper = await _open(provider, request, args, clock)
        response = getattr(getattr(wrapper, "completion_stream", None), "response", None)
        headers: Mapping[str, str] = getattr(response, "headers", None) or {}
        request.state["response_headers"] = headers  # the rate limiter's use_headers (x-ratelimit-*)
        parser = EventParser(provider.name, request.model, headers, request_id(headers))
        progress = Progress(parser, settings)
        if response is None or not hasattr(response, "aiter_bytes"):
            async for chunk in _from_wrapper(wrapper, clock, progress):
                yield chunk
            if progress.filtered:
                raise progress.filtered_error()
            clean = True
            return
        body = body_bytes(response)
        reader = guarded(body, clock, progress)
        try:
            async for chunk in reader:
                yield chunk
        finally:
            await reader.aclose()
        clean = True
    except ModelwireError as exc:
        failure = exc
    finally:
        await finish_attempt(clean, lambda: provider.end_attempt(request, clean=False), lambda: _close(body, wrapper))
    if failure is not None:
        raise detached(failure)


async def _open(provider: LiteLLMProvider, request: Request, args: dict[str, Any], clock: Clock) -> Any:
    """Send the request through litellm; the first-token and total clocks already run."""
    from .litellm_base import litellm

    deadline, kind = clock.deadline(False, 0.0)
    try:
        return await before(send(lambda: litellm().acompletion(**args), "client" in args), deadline)
    except Expired:
        error: ModelwireError = clock.error(kind, EventParser(provider.name, request.model, {}, None))
    except Exception as exc:
        error = map_exception(exc, provider=provider.name, model=request.model)
    raise error  # outside the handler: litellm's exception (it holds the key) stays unreachable


async def _close(body: Any, wrapper: Any) -> None:
    """Close the body iterator (closes the aiohttp response: an unfinished one drops its
    connection) and litellm's wrapper (closes the SDK stream and restores litellm's context)."""
    for closer in (getattr(body, "aclose", None), getattr(wrapper, "aclose", None)):
        if closer is None:
            continue
        try:
            await closer()
        except Exception:  # cleanup must not hide the error that ended the stream
            pass


async def _from_wrapper(wrapper: Any, clock: Clock, progress: Progress) -> AsyncIterator[Chunk]:
    """Fallback for litellm routes without a raw body: iterate the wrapper with the same checks.

    Weaker than the raw path: litellm may hide faults here (see the module docstring).
    """
    parser = progress.parser
    iterator = wrapper.__aiter__()
    anchor = clock.loop.time()
    while True:
        deadline, kind = clock.deadline(progress.content, anchor)
        try:
            raw = await before(iterator.__anext__(), deadline)
        except StopAsyncIteration:
            if progress.complete:
                return
            raise progress.end_error() from None
        except Expired:
            if progress.complete:
                return
            raise clock.error(kind, parser) from None
        except Exception as exc:
            original = getattr(exc, "original_exception", None) or exc  # MidStreamFallbackError wraps it
            if progress.complete:
                return
            raise map_exception(original, provider=parser.provider, model=parser.model) from None
        dump = raw.model_dump() if hasattr(raw, "model_dump") else raw
        for chunk in parser.chunks(dump) if isinstance(dump, dict) else ():
            progress.check(chunk)
            yield chunk
        anchor = clock.loop.time()
