"""The HTTP connections modelwire makes litellm use: owned per event loop, closed, kept healthy.

What litellm 1.110 does on its own (read in ``litellm/llms/openai/openai.py``,
``litellm/llms/openai/common_utils.py`` and ``litellm/main.py``): the ``openai`` route (which
our ``openai`` and ``openai_compatible`` kinds use) and the ``azure`` route build an
``AsyncOpenAI`` / ``AsyncAzureOpenAI`` SDK client over an ``httpx.AsyncClient`` whose transport
is litellm's aiohttp transport, and cache that SDK client process-wide in
``litellm.in_memory_llm_clients_cache``. ``acompletion(shared_session=...)`` only changes the
aiohttp session of a *newly built* client on the openai route; the cache key ignores it, so a
later loop gets the client of the first one; the azure route ignores it altogether. Nothing is
closed when an event loop ends, which is why every ``asyncio.run`` round leaked sockets.

So modelwire builds the SDK client itself, per event loop and provider instance, over an
``httpx.AsyncClient`` it owns, and passes it as ``client=``: litellm neither caches nor owns it.
The httpx client is closed by ``Client.aclose()`` or when the loop's work is done: a parked async
generator per loop is finalized by ``loop.shutdown_asyncgens()``, which ``asyncio.run`` (and the
portal at exit) call before closing the loop (:func:`modelwire.loops.close_at_loop_end`).

The pool under that httpx client is aiohttp's (:mod:`.aiohttp_pool`, one session per loop), not
httpcore's: at 50 concurrent calls httpcore's pool bookkeeping cost modelwire a third of bare
litellm's throughput (bench row 3c).

Connection health (issue 9 item 5): aiohttp drops an idle pooled connection whose server closed
it before reusing it. A stream that did not end normally is discarded
(:meth:`_GuardedTransport.discard`), so its connection never goes back to the pool even when its
body ended cleanly on the wire: a stream attempt's connection is held (:class:`~.aiohttp_pool.Held`)
until the attempt's verdict, because the pool takes a connection back as soon as a body ends,
before modelwire has judged the stream. A request that failed while connecting, or while being
written (so the server cannot have received a whole request), is resent once on another
connection; that resend is transparent and is not counted as a retry attempt.

Cancellation (:func:`send`): ``litellm.acompletion`` and ``aembedding`` build the request in a
worker thread (``loop.run_in_executor``), which returns the coroutine that sends it. A
cancellation (a timeout, a client that went away) landing while that thread runs drops the
coroutine unawaited, and Python prints "RuntimeWarning: coroutine
'OpenAIChatCompletion.acompletion' was never awaited" at some later garbage collection. So a call
cancelled before its request reached this transport is abandoned instead: the caller gets its
CancelledError at once, the call goes on in the background until it reaches the transport, which
ends it there without sending a byte.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import hashlib
import itertools
import os
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import httpx

from modelwire.loops import close_at_loop_end

from .aiohttp_pool import Held, Pool
from .litellm_worker import keep_litellm_worker

__all__ = ["ATTEMPT_HEADER", "LoopTransport", "Transports", "send"]

T = TypeVar("T")

#: Carries an attempt's token from the provider to the transport, which removes it before sending.
ATTEMPT_HEADER = "x-modelwire-attempt"
_tokens = itertools.count(1)

# Sent before any byte could make a whole request at the server: safe to send again once.
_NOT_DELIVERED = (httpx.ConnectError, httpx.ConnectTimeout, httpx.WriteError)


class _Call:
    """One :func:`send`: whether its request reached the transport, whether it was abandoned."""

    __slots__ = ("abandoned", "reached")

    def __init__(self) -> None:
        self.reached = False
        self.abandoned = False


_call: contextvars.ContextVar[_Call | None] = contextvars.ContextVar("modelwire_call", default=None)


async def send(call: Callable[[], Awaitable[T]], owned: bool) -> T:
    """Await ``call()``, a litellm call, so that a cancellation never drops litellm's request
    coroutine unawaited (see the module docstring). ``owned``: the call goes through this module's
    transport (litellm's ``client=`` is ours); any other call is simply awaited."""
    keep_litellm_worker()  # before litellm, on another loop than its worker's, drops that task
    if not owned:
        return await call()
    state = _Call()
    token = _call.set(state)
    try:
        task = asyncio.ensure_future(call())  # the task runs in a copy of this context: it sees state
    finally:
        _call.reset(token)
    # What asyncio.shield does, minus its result copy and cancel callback: bench row 3c measured
    # shield at 7-9 % of 50-concurrent throughput over awaiting litellm directly, this at 3-6 %.
    waiter = task.get_loop().create_future()
    task.add_done_callback(functools.partial(_wake, waiter))
    try:
        await waiter
        return task.result()
    except asyncio.CancelledError:
        if state.reached or task.done():
            task.cancel()
            await asyncio.wait({task})  # its connection is closed before the caller goes on
        else:
            state.abandoned = True
        task.add_done_callback(_settle)
        raise


def _wake(waiter: asyncio.Future[None], _task: asyncio.Future[Any]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _settle(task: asyncio.Future[Any]) -> None:
    """Retrieve an abandoned call's outcome: nobody awaits it any more."""
    if not task.cancelled():
        task.exception()


class _GuardedTransport(httpx.AsyncBaseTransport):
    """The pool (:class:`~.aiohttp_pool.Pool`), plus one resend of undelivered requests and
    per-attempt hold, release and discard."""

    def __init__(self) -> None:
        self._pool = Pool(LoopTransport.pool_size())
        self._open: dict[str, Held] = {}
        self.resends = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        call = _call.get()
        if call is not None:
            if call.abandoned:
                raise asyncio.CancelledError  # the caller left while litellm built the request
            call.reached = True
        token = request.headers.pop(ATTEMPT_HEADER, None)
        try:
            response, held = await self._pool.send(request, hold=token is not None)
        except _NOT_DELIVERED:
            self.resends += 1
            response, held = await self._pool.send(request, hold=token is not None)
        if token is not None and held is not None:
            self._open[token] = held
        return response

    async def forget(self, token: str) -> None:
        """Attempt ``token`` ended normally: its connection goes back to the pool."""
        held = self._open.pop(token, None)
        if held is not None:
            held.release()

    async def discard(self, token: str) -> None:
        """Close attempt ``token``'s connection, even if its body ended: it was held since the
        response arrived, so no other request can have been given it."""
        held = self._open.pop(token, None)
        if held is not None:
            held.close()

    async def aclose(self) -> None:
        self._open.clear()
        await self._pool.aclose()


class LoopTransport:
    """One event loop's HTTP client and the SDK clients built over it."""

    def __init__(self) -> None:
        self.transport = _GuardedTransport()
        self.http = httpx.AsyncClient(transport=self.transport, timeout=None, follow_redirects=True)
        self.sdk_clients: dict[str, Any] = {}
        self.closed = False
        self._finalizer: AsyncIterator[None] | None = None

    @staticmethod
    def pool_size() -> int:
        """Most connections open at once: litellm's documented knob
        ``AIOHTTP_CONNECTOR_LIMIT_PER_HOST`` keeps working (its own pool is not used for our
        calls); 100 otherwise (httpx's default). Every idle connection is kept alive (httpx kept
        20: with 50 concurrent calls, 30 connections were closed and reopened per round)."""
        return int(os.environ.get("AIOHTTP_CONNECTOR_LIMIT_PER_HOST") or 100)

    def start(self) -> None:
        """Close this client when its loop ends (call from a coroutine on that loop)."""
        self._finalizer = close_at_loop_end(self.aclose)

    def sdk_client(self, kind: str, key: str, **params: Any) -> Any:
        """The cached ``AsyncOpenAI`` (``kind="openai"``) or ``AsyncAzureOpenAI`` client."""
        cache_key = hashlib.sha256(f"{kind}\0{key}\0{sorted(params.items())}".encode()).hexdigest()
        client = self.sdk_clients.get(cache_key)
        if client is None:
            import openai

            # The SDK is typed against its httpx fork (httpx2) but duck-types the client, as it
            # does for the httpx.AsyncClient litellm itself passes.
            cls: Any = openai.AsyncAzureOpenAI if kind == "azure" else openai.AsyncOpenAI
            client = cls(api_key=key, http_client=self.http, max_retries=0, **params)
            self.sdk_clients[cache_key] = client
        return client

    async def aclose(self) -> None:
        self.closed = True
        self.sdk_clients.clear()
        await self.http.aclose()


class Transports:
    """The :class:`LoopTransport` of each event loop, for one provider instance."""

    def __init__(self) -> None:
        self._by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopTransport] = (
            weakref.WeakKeyDictionary()
        )

    def current(self) -> LoopTransport:
        """The running loop's transport, created on first use (call from a coroutine)."""
        loop = asyncio.get_running_loop()
        owner = self._by_loop.get(loop)
        if owner is None or owner.closed:
            owner = LoopTransport()
            self._by_loop[loop] = owner
            owner.start()
        return owner

    def discard(self, token: str) -> Any:
        """Coroutine closing the connection of stream attempt ``token`` (see :meth:`current`)."""
        return self.current().transport.discard(token)

    def forget(self, token: str) -> Any:
        """Coroutine releasing the connection of stream attempt ``token`` to the pool."""
        return self.current().transport.forget(token)

    @staticmethod
    def new_token() -> str:
        return f"a{next(_tokens)}"

    async def aclose(self) -> None:
        """Close this loop's client; other loops' clients close when their loop ends."""
        loop = asyncio.get_running_loop()
        owner = self._by_loop.pop(loop, None)
        if owner is not None:
            await owner.aclose()
