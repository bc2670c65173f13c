"""The logger modelwire writes its events to: structlog's API, stdlib logging underneath.

Events are written as ``logger.info("llm.response", provider=..., model=...)`` and land on the
stdlib logger ``modelwire`` (which has a ``NullHandler``), so the host decides what is shown:

- a host that configures nothing sees nothing;
- ``logging.basicConfig(level=logging.INFO)`` shows one line per event in the host's format
  (``INFO:modelwire:llm.response provider=local model=llama3 ...``);
- a host that routes stdlib logging through ``structlog.stdlib.ProcessorFormatter`` receives the
  event dict with its fields intact (the record is built the way ``wrap_for_formatter`` builds it).

modelwire never configures logging or structlog globally (only its CLI, an application, does).
An event below the logger's effective level costs one ``isEnabledFor`` call, and a failing
handler or filter never fails a request: logging is best effort.
"""

from __future__ import annotations

import logging
from typing import Any

import structlog

__all__ = ["Event", "logger"]


_NOT_SHOWN = frozenset({"event", "level"})


class Event(dict):  # type: ignore[type-arg]
    """The event dict as a record's ``msg``: structlog's ProcessorFormatter takes it as a dict;
    a plain stdlib formatter prints ``event key=value ...``."""

    def __str__(self) -> str:
        fields = " ".join(f"{k}={v!r}" if isinstance(v, str) and " " in v else f"{k}={v}"
                          for k, v in self.items() if k not in _NOT_SHOWN)
        return f"{self.get('event', '')} {fields}".rstrip()


class _StdlibBound(structlog.stdlib.BoundLogger):
    """structlog's stdlib BoundLogger that checks the level before building the event and never
    lets a failing handler, filter or formatter reach the caller."""

    def _proxy_to_logger(self, method_name: str, event: str | None = None, *args: Any, **kw: Any) -> Any:
        if not self._logger.isEnabledFor(_LEVELS.get(method_name, logging.CRITICAL)):
            return None
        try:
            return super()._proxy_to_logger(method_name, event, *args, **kw)
        except Exception:  # a broken sink must not fail or alter the request
            return None


_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "warn": logging.WARNING,
           "error": logging.ERROR, "exception": logging.ERROR, "critical": logging.CRITICAL}


def _to_record(logger: Any, method_name: str, event_dict: Any) -> Any:
    """Last processor: the record carries the event dict as structlog's ``wrap_for_formatter`` does."""
    return (Event(event_dict),), {"extra": {"_logger": logger, "_name": method_name}}


_std = logging.getLogger("modelwire")
_std.addHandler(logging.NullHandler())

#: The event API inside modelwire: ``logger.info("event.name", key=value)``; ``logger.bind(...)``.
#: Built directly rather than through ``structlog.wrap_logger``: its lazy proxy assembles a new
#: bound logger on every method call (``isEnabledFor`` included), about 10 us each on the hit
#: path, and every setting it would read from structlog's global config is given here anyway.
logger: Any = _StdlibBound(_std, processors=[structlog.stdlib.add_log_level, _to_record], context={})
