"""Stream objects returned by ``Client.astream`` and ``Client.stream``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from time import perf_counter
from typing import TYPE_CHECKING, Any

from . import portal
from .errors import ModelwireError, ProviderError
from .types import Chunk, Completion, Request, Usage

if TYPE_CHECKING:
    from .client import Client

__all__ = ["AsyncStream", "SyncStream"]


class AsyncStream:
    """An async iterator of :class:`Chunk`, and a context manager that closes the upstream.

    While iterating it keeps the text (``stream.text``), the finish reason, the usage and the
    assembled tool calls; after the end, :meth:`get_final_completion` returns them as a
    :class:`Completion`.

    >>> async with client.astream("Tell a story", model="local/llama3") as stream:  # doctest: +SKIP
    ...     async for chunk in stream:
    ...         print(chunk.text, end="")
    """

    def __init__(self, client: Client, request: Request, chunks: AsyncIterator[Chunk]) -> None:
        self.request = request
        self._client = client
        self._chunks = chunks
        self._pieces: list[str] = []
        self._tool_calls: dict[int, dict[str, Any]] = {}
        self._start = perf_counter()
        self._observe = bool(client.hook.modelwire_stream_chunk.get_hookimpls())
        self.finish_reason: str | None = None
        self.usage: Usage | None = None
        self.cached = False
        self.chunks = 0
        self._final: Completion | None = None

    def __aiter__(self) -> AsyncStream:
        return self

    async def __anext__(self) -> Chunk:
        try:
            chunk = await self._chunks.__anext__()
        except StopAsyncIteration:
            self._finish()
            raise
        except ModelwireError:
            raise
        except Exception as exc:
            raise ProviderError(
                f"unexpected {type(exc).__name__} in the stream pipeline: {exc}",
                provider=self.request.provider,
                model=self.request.model,
            ) from exc
        self.chunks += 1
        if chunk.index == 0:
            if chunk.text:
                self._pieces.append(chunk.text)
            for delta in chunk.tool_calls:
                call = self._tool_calls.setdefault(delta.index, {"id": None, "name": None, "arguments": ""})
                call["id"] = delta.id or call["id"]
                call["name"] = delta.name or call["name"]
                call["arguments"] += delta.arguments
        if chunk.finish_reason is not None and chunk.index == 0:
            self.finish_reason = chunk.finish_reason
        if chunk.usage is not None:
            self.usage = chunk.usage
        self.cached = self.cached or chunk.cached
        if self._observe:
            self._client.notify(self._client.hook.modelwire_stream_chunk, request=self.request, chunk=chunk)
        return chunk

    @property
    def text(self) -> str:
        """The text of choice 0 received so far."""
        return "".join(self._pieces)

    def _finish(self) -> None:
        if self._final is not None:
            return
        tool_calls = [
            {"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
            for _, c in sorted(self._tool_calls.items())
        ]
        self._final = Completion(
            text=self.text,
            finish_reason=self.finish_reason,
            model=self.request.model,
            provider=self.request.provider,
            usage=self.usage,
            tool_calls=tool_calls,
            cached=self.cached,
        )
        self._client.notify(
            self._client.hook.modelwire_response_received,
            request=self.request,
            response=self._final,
            latency=perf_counter() - self._start,
        )

    def get_final_completion(self) -> Completion:
        """The whole completion; only after the stream has ended successfully."""
        if self._final is None:
            raise ModelwireError("the stream has not finished yet: iterate it to the end first")
        return self._final

    async def aclose(self) -> None:
        """Stop early: closes the upstream response and frees its connection."""
        aclose = getattr(self._chunks, "aclose", None)
        if aclose is not None:
            await aclose()

    async def __aenter__(self) -> AsyncStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class SyncStream:
    """The blocking twin of :class:`AsyncStream`: each ``next()`` pulls one chunk."""

    def __init__(self, stream: AsyncStream) -> None:
        self._stream = stream

    def __iter__(self) -> SyncStream:
        return self

    def __next__(self) -> Chunk:
        try:
            return portal.run(self._stream.__anext__())
        except StopAsyncIteration:
            raise StopIteration from None

    @property
    def text(self) -> str:
        return self._stream.text

    @property
    def request(self) -> Request:
        return self._stream.request

    def get_final_completion(self) -> Completion:
        return self._stream.get_final_completion()

    def close(self) -> None:
        portal.run(self._stream.aclose())

    def __enter__(self) -> SyncStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
