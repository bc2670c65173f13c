"""Project fixtures on top of modelwire's pytest plugin: the suite's sentinel key, its fixture
names (``server``, ``make_client``), a Redis of one's own and a clean logging state per test."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import structlog

import modelwire
from modelwire.testing import FakeServer, RedisServer
from modelwire.testing.pytest_plugin import start_redis

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

#: The key every test client uses; tests grep logs and errors for it (it must never appear).
SENTINEL_KEY = "sk-SENTINEL-0123456789abcdefghij"


def pytest_configure(config: pytest.Config) -> None:
    if not config.pluginmanager.has_plugin("modelwire"):
        raise pytest.UsageError(
            "modelwire's pytest plugin (entry point pytest11) is not installed: run pip install -e '.[dev]'"
        )


# The plugin (modelwire.testing.pytest_plugin) provides fake_server, modelwire_config,
# modelwire_client and redis_server; the names below are the ones this suite was written with.


@pytest.fixture
def modelwire_api_key() -> str:
    return SENTINEL_KEY


@pytest.fixture
def server(fake_server: FakeServer) -> FakeServer:
    return fake_server


@pytest.fixture
def make_client(modelwire_config: dict[str, Any]) -> Callable[..., modelwire.Client]:
    """Build a Client from ``modelwire_config`` (providers ``openai``, ``azure`` and ``local`` on
    ``server``, keys = SENTINEL_KEY).

    Keyword arguments replace top-level config keys (``middleware=[...]``, ``cache={...}``);
    ``plugins=`` is passed to the Client.
    """

    def make(plugins: tuple[object, ...] = (), **config: Any) -> modelwire.Client:
        return modelwire.Client(config={**modelwire_config, **config}, plugins=plugins)

    return make


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
