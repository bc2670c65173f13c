"""Send the direct route's requests and read their answers.

One ``httpx.AsyncClient`` over a pooled aiohttp session per event loop and provider instance (the provider's
:class:`~modelwire.providers.transport.Transports`: closed at ``aclose`` or loop end, a request
that never reached the server resent once, a stream that did not end cleanly taking its
connection with it). There is no worker-thread stage as in litellm's calls, so a cancellation
simply propagates into httpx, which closes the connection of an unfinished request;
:func:`~modelwire.providers.transport.send` is not needed here.

Failures are mapped by :mod:`modelwire.providers.wire.status` (an HTTP answer) or
:func:`~modelwire.providers.errors.map_exception` (a transport exception); either way the error is
raised outside the ``except`` block, so no httpx object (whose request headers hold the key) is
reachable from it.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any

import httpx

from modelwire.errors import ModelwireError
from modelwire.provider import StreamSettings
from modelwire.types import Chunk, Completion, Embeddings, Request

from ..errors import detached, map_exception
from ..wire.answer import RawResponse, completion_from_json, embeddings_from, parse_body
from ..wire.guard import Clock, Expired, Progress, before, body_bytes, finish_attempt, guarded
from ..wire.status import error_for_status, request_id
from ..wire.stream_parse import EventParser
from .request import Endpoint

if TYPE_CHECKING:
    from ..litellm_base import LiteLLMProvider

__all__ = ["DirectRoute"]


class DirectRoute:
    """The direct route of one provider instance (its config, key and transports)."""

    def __init__(self, provider: LiteLLMProvider) -> None:
        self.provider = provider
        self.endpoint = Endpoint(provider)

    async def acomplete(self, request: Request) -> Completion:
        response = await self._send(request, stream=False)
        headers = response.headers
        obj, error = parse_body(response.content, headers, provider=self.provider.name, model=request.model,
                                need="choices")
        if obj is not None:
            return completion_from_json(obj, headers, self.provider.name, request)
        assert error is not None
        error.attempts = request.attempt
        raise error

    async def aembed(self, request: Request) -> Embeddings:
        response = await self._send(request, stream=False, embeddings=True)
        headers = response.headers
        obj, error = parse_body(response.content, headers, provider=self.provider.name, model=request.model,
                                need="data")
        if obj is not None:
            return embeddings_from(self.provider.name, request, obj.get("data"), obj.get("usage"),
                                   RawResponse(obj, headers))
        assert error is not None
        error.attempts = request.attempt
        raise error

    async def stream_chunks(self, request: Request) -> AsyncIterator[Chunk]:
        """The chunks of one stream attempt, checked by the shared stream guards."""
        provider = self.provider
        settings = StreamSettings.resolve(provider.config, request.options)
        clock = Clock(settings)
        response: httpx.Response | None = None
        body: Any = None
        failure: ModelwireError | None = None
        clean = False
        try:
            deadline, kind = clock.deadline(False, 0.0)
            try:
                response = await before(self._send(request, stream=True), deadline)
            except Expired:
                raise clock.error(kind, EventParser(provider.name, request.model, {}, None)) from None
            headers = response.headers
            request.state["response_headers"] = headers  # the rate limiter's use_headers (x-ratelimit-*)
            progress = Progress(EventParser(provider.name, request.model, headers, request_id(headers)), settings)
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
            await finish_attempt(
                clean, lambda: provider.end_attempt(request, clean=False),
                None if response is None else response.aclose,
            )
        if failure is not None:
            raise detached(failure)

    async def _send(self, request: Request, *, stream: bool, embeddings: bool = False) -> httpx.Response:
        """Send ``request``; an HTTP error answer or a transport failure is raised mapped."""
        provider = self.provider
        http = provider._transports.current().http
        if embeddings:
            outgoing = self.endpoint.embeddings(http, request)
        else:
            token = None
            if stream:
                token = provider._transports.new_token()
                provider._attempts[id(request)] = token
            outgoing = self.endpoint.chat(http, request, stream=stream, token=token)
        on_send = request.state.get("on_send")
        if callable(on_send):
            on_send()  # the rate limiter counts the permit from now (docs/ratelimit.md)
        try:
            response = await http.send(outgoing, stream=stream)
            if not 200 <= response.status_code < 300:
                if stream:
                    await response.aread()
                    await response.aclose()
                error: ModelwireError = _status_error(response, provider.name, request.model)
            else:
                return response
        except Exception as exc:
            error = map_exception(exc, provider=provider.name, model=request.model)
        error.attempts = request.attempt
        raise detached(error)


def _status_error(response: httpx.Response, provider: str, model: str) -> ModelwireError:
    """The error of a non-2xx answer, with the provider's own message when its body has one
    (``error.message``, or vLLM's top-level ``message``), as the openai SDK reads it."""
    status = response.status_code
    text = response.content.decode("utf-8", "replace")
    message = None
    try:
        obj = json.loads(text)
    except ValueError:
        obj = None
    if isinstance(obj, dict):
        data = obj.get("error", obj)
        if isinstance(data, dict) and isinstance(data.get("message"), str):
            message = data["message"]
    headers: Mapping[str, str] = response.headers
    return error_for_status(status, headers, message or f"Error code: {status} - {text}", text,
                            provider=provider, model=model)
