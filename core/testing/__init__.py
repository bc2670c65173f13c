"""Helpers for testing code that uses modelwire: a loopback server that speaks OpenAI and Azure."""

from .logs import capture_events
from .redis import RedisServer, free_port
from .server import FakeServer, Pause, RecordedRequest, Reply

__all__ = ["FakeServer", "capture_events", "Pause", "RecordedRequest", "RedisServer", "Reply", "free_port"]
