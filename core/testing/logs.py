"""Capture modelwire's log events in tests, whatever the host's logging configuration."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["capture_events"]


class _Collector(logging.Handler):
    def __init__(self, into: list[dict[str, Any]]) -> None:
        super().__init__(logging.DEBUG)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        event = dict(record.msg) if isinstance(record.msg, dict) else {"event": record.getMessage()}
        event.pop("level", None)
        event["log_level"] = record.levelname.lower()
        self.into.append(event)


@contextmanager
def capture_events(level: int = logging.DEBUG) -> Iterator[list[dict[str, Any]]]:
    """Collect the events modelwire logs inside the block, as dicts (``event``, ``log_level`` and
    the event's fields), like ``structlog.testing.capture_logs`` does for structlog.

    >>> with capture_events() as events:
    ...     client.complete("hi", model="local/m")  # doctest: +SKIP
    >>> [e["event"] for e in events]  # doctest: +SKIP
    ['llm.response']
    """
    events: list[dict[str, Any]] = []
    handler = _Collector(events)
    std = logging.getLogger("modelwire")
    saved = std.level
    std.addHandler(handler)
    std.setLevel(level)
    try:
        yield events
    finally:
        std.removeHandler(handler)
        std.setLevel(saved)
