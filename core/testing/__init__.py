"""Helpers for testing code that uses modelwire: a loopback server that speaks OpenAI and Azure
(also ``python -m modelwire.testing``), its fault table, log capture and a throwaway Redis.

The pytest fixtures live in :mod:`modelwire.testing.pytest_plugin` (loaded by pytest on its own)
and the provider contract suite in :mod:`modelwire.testing.contract`; both import pytest, so
they are not imported here.
"""

from .faults import FAULTS, Faults
from .logs import capture_events
from .redis import RedisServer, free_port
from .server import FakeServer, Pause, RecordedRequest, Reply

__all__ = [
    "FAULTS", "FakeServer", "Faults", "Pause", "RecordedRequest", "RedisServer", "Reply", "capture_events", "free_port",
]
