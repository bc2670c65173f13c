"""A strict, incremental Server-Sent Events decoder for chat-completion streams.

It follows the WHATWG event-stream rules (``data:`` lines joined with ``\\n``, ``:`` comments,
``event:``/``id:``/``retry:`` fields, LF / CRLF / CR line ends, one optional space after the
colon, a blank line dispatches) and differs from the openai SDK's decoder where that one hides a
fault:

- lines are split on bytes before decoding, so U+2028 inside JSON never splits an event and a
  multi-byte character cut across two reads is reassembled;
- invalid UTF-8 in a line is reported (:class:`SSEDecodeError`), not raised as a bare
  ``UnicodeDecodeError`` and never silently replaced;
- comments are counted, so a caller can tell keep-alives from data (an idle timer must not be
  reset by them).

>>> d = SSEDecoder()
>>> [e.data for e in d.feed(b"data: {}\\n\\n: ping\\n\\ndata: [DO") + d.feed(b"NE]\\n\\n")]
['{}', '[DONE]']
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SSEDecodeError", "SSEDecoder", "SSEEvent"]


class SSEDecodeError(ValueError):
    """A line of the stream is not valid UTF-8."""


@dataclass(slots=True)
class SSEEvent:
    """One dispatched event: ``event`` is None for the default ``message`` type."""

    data: str
    event: str | None = None


class SSEDecoder:
    """Feed it the body's bytes as they arrive; it returns the complete events.

    :ivar comments: keep-alive comment lines seen so far.
    :ivar error: set when a line was not valid UTF-8; the events before it are still returned
        (the caller delivers them, then reports the error), nothing after it is decoded.
    """

    def __init__(self) -> None:
        self.error: SSEDecodeError | None = None
        self._buffer = b""
        self._data: list[str] = []
        self._event: str | None = None
        self.comments = 0

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """Decode ``chunk``; an incomplete last line waits for the next call."""
        buffer = self._buffer + chunk if self._buffer else chunk
        if b"\r" in buffer:
            # A CR at the very end may be the first half of a CRLF split across reads: hold it back.
            held = buffer.endswith(b"\r")
            buffer = (buffer[:-1] if held else buffer).replace(b"\r\n", b"\n").replace(b"\r", b"\n")
            if held:
                buffer += b"\r"
        lines = buffer.split(b"\n")
        self._buffer = lines.pop()
        events: list[SSEEvent] = []
        for line in lines:
            try:
                event = self._line(line)
            except SSEDecodeError as exc:
                self.error = exc
                break
            if event is not None:
                events.append(event)
        return events

    def finish(self) -> list[SSEEvent]:
        """The body ended: decode a last unterminated line and dispatch a pending event.

        WHATWG discards an event not followed by a blank line; servers that end with
        ``data: [DONE]\\n`` (or without any newline) are common, so the pending event is handed
        over and the caller decides whether it is complete (a cut JSON fails to parse).
        """
        events: list[SSEEvent] = []
        rest, self._buffer = self._buffer.rstrip(b"\r"), b""
        if rest:
            try:
                event = self._line(rest)
            except SSEDecodeError as exc:
                self.error = exc
                return events
            if event is not None:
                events.append(event)
        if self._data:
            events.append(SSEEvent("\n".join(self._data), self._event))
            self._data, self._event = [], None
        return events

    @property
    def pending(self) -> bool:
        """Whether bytes of an undispatched event are buffered."""
        return bool(self._buffer or self._data)

    def _line(self, raw: bytes) -> SSEEvent | None:
        if not raw:
            if not self._data:
                self._event = None
                return None
            event = SSEEvent("\n".join(self._data), self._event)
            self._data, self._event = [], None
            return event
        if raw[0] == 0x3A:  # ":" starts a comment (keep-alive)
            self.comments += 1
            return None
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise SSEDecodeError(f"invalid UTF-8 at byte {exc.start} of a stream line: {raw[:80]!r}") from None
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value or None
        # id and retry matter for browser reconnection only; unknown fields are ignored by the spec.
        return None
