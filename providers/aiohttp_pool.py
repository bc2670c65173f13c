"""The connection pool under modelwire's httpx client: aiohttp's, one session per event loop.

Why not httpx's own pool (httpcore): measured against the loopback server with 50 concurrent
calls (bench row 3c), httpcore's ``AsyncConnectionPool._assign_requests_to_connections`` runs on
every request and every release and rescans every pooled connection for every queued request,
each check asking the socket whether it is readable through anyio's ``extra`` attributes: about
250,000 ``is_idle`` and 12,000 ``get_extra_info`` calls for 200 requests, 1.7 s of a 6.8 s profile.
Bare litellm sends through aiohttp (``LiteLLMAiohttpTransport``) and did 1.5x the calls per second.
This is the same idea, owned by modelwire: litellm's class is not used because the direct route
must not import litellm, and because of what :class:`Pool` adds below.

What :class:`Pool` adds to a plain aiohttp-backed httpx transport:

- ``hold``: aiohttp hands a connection back to its pool the moment a body ends on the wire
  (``ClientResponse._response_eof``), before modelwire has judged a stream. A held response
  keeps its connection until :meth:`Held.release` (back to the pool) or :meth:`Held.close`
  (closed, never reused), so a discarded stream's connection (llama.cpp's empty 200, then
  close) is never handed to the next request.
- aiohttp's exceptions become httpx's, with the meaning httpcore gave them (connect failures as
  ``ConnectError``/``ConnectTimeout``, which the guarded transport resends once; a body cut short
  as ``RemoteProtocolError``), and bytes aiohttp buffered before a connection broke are handed out
  before the error (aiohttp's reads raise the stored error ahead of its buffer).

httpx stays the client above it: redirects, cookies, decompression (``auto_decompress=False``
here), timeouts per request (``request.extensions["timeout"]``) and environment proxies (httpx
mounts its own proxy transports) behave as before. TLS uses httpx's context (certifi,
``SSL_CERT_FILE``), built once, on the first https request.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import ssl
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
import httpx
from yarl import URL

__all__ = ["Held", "Pool"]

#: Keep-alive of an idle pooled connection, seconds: httpx's default, which modelwire used before
#: (below uvicorn's 5 s would be safer still, but a server closing an idle socket is noticed by
#: aiohttp's pool before reuse).
KEEPALIVE = 5.0

#: Every open session, so that none is ever part of a garbage cycle: a Client dropped without
#: ``close()`` leaves its loop's transport to the loop's async-generator finalizer
#: (:func:`~.transport._close_at_loop_end`), which closes the session a moment later. Collected
#: in the same cycle, aiohttp's ``ClientSession.__del__`` would run first (finalizers of one cycle
#: run in no set order) and print "Unclosed client session" on stderr.
_open_sessions: set[aiohttp.ClientSession] = set()

#: Most bytes handed up per read: httpcore's read size. aiohttp's ``iter_any`` hands out all it
#: buffered at once, which made the SSE decoder hold a few thousand events at a time (a 100,000-
#: chunk stream's peak memory grew 6.5 -> 8.7 MB, tests/core/test_stream_lifecycle.py S27).
_READ = 65_536

_hold_next: contextvars.ContextVar[bool] = contextvars.ContextVar("modelwire_hold_next", default=False)

# Most specific first: the first match wins.
_ERRORS: tuple[tuple[type[BaseException], type[httpx.TransportError]], ...] = (
    (aiohttp.ClientProxyConnectionError, httpx.ProxyError),
    (aiohttp.ConnectionTimeoutError, httpx.ConnectTimeout),
    (aiohttp.ClientConnectorError, httpx.ConnectError),  # refused, DNS, TLS handshake: nothing sent
    (aiohttp.SocketTimeoutError, httpx.ReadTimeout),
    (aiohttp.ServerTimeoutError, httpx.ReadTimeout),
    (aiohttp.ServerDisconnectedError, httpx.RemoteProtocolError),
    (aiohttp.ClientPayloadError, httpx.RemoteProtocolError),
    (aiohttp.ClientOSError, httpx.ReadError),
    (asyncio.TimeoutError, httpx.ReadTimeout),  # TimeoutError on Python >= 3.11
    (aiohttp.ClientError, httpx.TransportError),
)


def _mapped(exc: BaseException) -> httpx.TransportError | None:
    for source, target in _ERRORS:
        if isinstance(exc, source):
            return target(str(exc) or type(exc).__name__)
    return None


@functools.cache
def _tls() -> ssl.SSLContext:
    return httpx.create_ssl_context()


class _Response(aiohttp.ClientResponse):
    """aiohttp's response, which keeps its connection at the end of the body when it was asked to
    before it started (the body may end within ``start()``, with the headers)."""

    hold = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.hold = _hold_next.get()

    def _response_eof(self) -> None:
        if not self.hold:
            super()._response_eof()


class Held:
    """A held response's connection: :meth:`release` it to the pool or :meth:`close` it."""

    __slots__ = ("_response",)

    def __init__(self, response: _Response) -> None:
        self._response = response

    def release(self) -> None:
        """Back to the pool; aiohttp closes it instead when its body did not end or the server
        asked to close."""
        self._response.hold = False
        self._response.release()

    def close(self) -> None:
        """Close the connection, even when its body ended cleanly."""
        self._response.hold = False
        self._response.close()


class _Body(httpx.AsyncByteStream):
    __slots__ = ("_response",)

    def __init__(self, response: _Response) -> None:
        self._response = response

    async def __aiter__(self) -> AsyncIterator[bytes]:
        content = self._response.content
        failure: httpx.TransportError | None = None
        try:
            async for part in content.iter_chunked(_READ):
                yield part
        except aiohttp.ClientPayloadError as exc:
            unread = _unread(content)
            if unread:
                yield unread
            failure = _mapped(exc)
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            failure = _mapped(exc)
        if failure is not None:
            raise failure  # outside the handler: no aiohttp object in the chain

    async def aclose(self) -> None:
        """httpx closes the stream when the body ended or the caller closed the response. A held
        response waits for :class:`Held`; an unfinished one loses its connection."""
        response = self._response
        if response.hold:
            return
        if response.content.is_eof():
            response.release()
        else:
            response.close()


def _unread(content: Any) -> bytes:
    """Bytes aiohttp buffered before the connection broke but never handed out."""
    buffered = b"".join(getattr(content, "_buffer", ()))
    return buffered[getattr(content, "_buffer_offset", 0):]


class Pool(httpx.AsyncBaseTransport):
    """An httpx transport over one aiohttp session, created on the first request (on the loop
    that uses it) and closed by :meth:`aclose`.

    :param size: most connections open at once (all hosts).
    """

    def __init__(self, size: int) -> None:
        self._size = size
        self._session: aiohttp.ClientSession | None = None
        self._timeouts: dict[tuple[Any, ...], aiohttp.ClientTimeout] = {}

    def _client(self) -> aiohttp.ClientSession:
        session = self._session
        if session is None:
            connector = aiohttp.TCPConnector(limit=self._size, limit_per_host=0, keepalive_timeout=KEEPALIVE)
            session = self._session = aiohttp.ClientSession(
                connector=connector, cookie_jar=aiohttp.DummyCookieJar(), response_class=_Response,
                auto_decompress=False, trust_env=False,
            )
            _open_sessions.add(session)
        return session

    def _timeout(self, request: httpx.Request) -> aiohttp.ClientTimeout:
        given: Mapping[str, float | None] = request.extensions.get("timeout") or {}
        key = (given.get("connect"), given.get("read"), given.get("pool"))
        timeout = self._timeouts.get(key)
        if timeout is None:
            # httpx's connect = aiohttp's sock_connect, read = sock_read (per chunk), pool = waiting
            # for a connection (aiohttp's connect covers that wait and the connect)
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=key[0], sock_read=key[1], connect=key[2])
            if len(self._timeouts) < 64:
                self._timeouts[key] = timeout
        return timeout

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return (await self.send(request, hold=False))[0]

    async def send(self, request: httpx.Request, hold: bool) -> tuple[httpx.Response, Held | None]:
        """Send ``request``; with ``hold`` its connection waits for the returned :class:`Held`."""
        try:
            data: Any = request.content or None
        except httpx.RequestNotRead:
            data = request.stream
        url = request.url
        failure: httpx.TransportError | None = None
        token = _hold_next.set(hold)
        try:
            raw: _Response = await self._client().request(  # type: ignore[assignment]
                request.method, URL(str(url), encoded=True), headers=request.headers, data=data,
                allow_redirects=False, timeout=self._timeout(request),
                ssl=_tls() if url.scheme == "https" else True,
            )
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            failure = _mapped(exc)
        finally:
            _hold_next.reset(token)
        if failure is not None:
            raise failure  # outside the handler: aiohttp's exception stays out of the chain
        response = httpx.Response(
            raw.status, headers=raw.raw_headers, stream=_Body(raw), request=request,
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": (raw.reason or "").encode("ascii", "replace")},
        )
        return response, Held(raw) if hold else None

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            try:
                await session.close()
            finally:
                _open_sessions.discard(session)

