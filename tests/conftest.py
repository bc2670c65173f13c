"""Shared fixtures: the loopback fake server, a client factory pointing at it, a real Redis."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import structlog

import modelwire
from modelwire.testing import FakeServer, RedisServer

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

#: The key every test client uses; tests grep logs and errors for it (it must never appear).
SENTINEL_KEY = "sk-SENTINEL-0123456789abcdefghij"


@pytest.fixture
def server() -> Iterator[FakeServer]:
    with FakeServer() as srv:
        yield srv


@pytest.fixture
def make_client(server: FakeServer, monkeypatch: pytest.MonkeyPatch) -> Callable[..., modelwire.Client]:
    """Build a Client whose providers ``openai``, ``azure`` and ``local`` all point at ``server``.

    Keyword arguments are merged into the config (``middleware=[...]``, ``cache={...}``);
    ``plugins=`` is passed to the Client.
    """
    monkeypatch.setenv("OPENAI_API_KEY", SENTINEL_KEY)
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", SENTINEL_KEY)

    def make(plugins: tuple[object, ...] = (), **config: Any) -> modelwire.Client:
        base: dict[str, Any] = {
            "middleware": [],
            "providers": {
                "openai": {"api_base": server.openai_url},
                "azure": {"api_base": server.url, "api_version": "2024-10-21"},
                "local": {"kind": "openai_compatible", "api_base": server.openai_url},
            },
        }
        base.update(config)
        return modelwire.Client(config=base, plugins=plugins)

    return make


def start_redis() -> RedisServer:
    """Start a throwaway redis-server; skip when missing unless MODELWIRE_REQUIRE_REDIS=1."""
    try:
        return RedisServer().start()
    except FileNotFoundError as exc:
        if os.environ.get("MODELWIRE_REQUIRE_REDIS") == "1":
            pytest.fail(f"MODELWIRE_REQUIRE_REDIS=1 but {exc}")
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A real redis-server shared by the session: do not pause or stop it (use ``own_redis``)."""
    srv = start_redis()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A redis-server for one test, which may pause or stop it."""
    srv = start_redis()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(autouse=True)
def _default_structlog() -> Iterator[None]:
    """Tests capture events with structlog's defaults; an in-process CLI call may have
    configured structlog (the CLI is an application and does so)."""
    saved = structlog.get_config()
    structlog.reset_defaults()
    std = logging.getLogger("modelwire")
    saved_std = (list(std.handlers), std.level, std.propagate)
    yield
    structlog.configure(**saved)
    std.handlers[:], std.level, std.propagate = saved_std
