"""pytest fixtures for code that uses modelwire, loaded automatically once modelwire is installed
(entry point ``pytest11``: ``modelwire``; turn it off with ``-p no:modelwire``).

Fixtures:

- ``fake_server``: a started :class:`~modelwire.testing.FakeServer`, a new one per test (so no
  script, counter or open connection leaks into the next test), with the fault table of
  :mod:`modelwire.testing.faults` installed (``model="local/fail-500"``...).
- ``modelwire_api_key``: the fake key the built-in providers read in tests; override it to
  choose your own (e.g. a sentinel you then grep logs for).
- ``modelwire_config``: the config dict of ``modelwire_client``: providers ``openai``, ``azure``
  and ``local`` (``openai_compatible``) all pointed at ``fake_server``, no middleware. Override
  the fixture to start from your own config.
- ``modelwire_client``: a :class:`~modelwire.Client` built from ``modelwire_config`` merged with
  the ``modelwire_config`` marker, closed after the test.
- ``redis_server``: a real ``redis-server`` on a free port for the session; skipped when the
  binary is missing, a failure instead when ``MODELWIRE_REQUIRE_REDIS=1``.

The marker::

    @pytest.mark.modelwire_config({"middleware": ["retry"], "retry": {"max_attempts": 2}})
    def test_retries(modelwire_client, fake_server): ...

    @pytest.mark.modelwire_config(
        lambda server: {"providers": {"mine": {"kind": "mine", "api_base": server.openai_url}}},
        plugins=[my_plugin],
    )

takes a dict, or a function of the ``FakeServer`` returning one (for values that need its URL),
and an optional ``plugins`` list passed to the Client. Dicts are merged into
``modelwire_config`` recursively (so ``{"providers": {"mine": {...}}}`` adds a provider and keeps
the others); any other value, lists included, replaces what was there.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

from .faults import Faults
from .redis import RedisServer
from .server import FakeServer

if TYPE_CHECKING:
    from modelwire import Client

__all__ = [
    "fake_server",
    "merge_config",
    "modelwire_api_key",
    "modelwire_client",
    "modelwire_config",
    "redis_server",
    "start_redis",
]

#: Environment variables the built-in providers read keys from; set to ``modelwire_api_key`` in tests.
KEY_ENVS = ("OPENAI_API_KEY", "AZURE_OPENAI_API_KEY")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "modelwire_config(config, plugins=()): config dict (or function of the FakeServer returning one) "
        "merged into the modelwire_client fixture's config; plugins are passed to the Client",
    )


@pytest.fixture
def fake_server() -> Iterator[FakeServer]:
    """A started loopback server for this test, answering fault model names."""
    with FakeServer() as server:
        server.responder = Faults()
        yield server


@pytest.fixture
def modelwire_api_key() -> str:
    """The key the providers of ``modelwire_config`` send (never a real one)."""
    return "sk-modelwire-test-0000000000000000"


@pytest.fixture
def modelwire_config(
    fake_server: FakeServer, modelwire_api_key: str, monkeypatch: pytest.MonkeyPatch
) -> dict[str, Any]:
    """Providers ``openai``, ``azure`` and ``local`` on ``fake_server``, no middleware; the keys'
    variables are set to ``modelwire_api_key`` so a real key in the environment is never sent."""
    for env in KEY_ENVS:
        monkeypatch.setenv(env, modelwire_api_key)
    return {
        "middleware": [],
        "providers": {
            "openai": {"api_base": fake_server.openai_url},
            "azure": {"api_base": fake_server.url, "api_version": "2024-10-21"},
            "local": {"kind": "openai_compatible", "api_base": fake_server.openai_url},
        },
    }


@pytest.fixture
def modelwire_client(
    request: pytest.FixtureRequest, modelwire_config: dict[str, Any], fake_server: FakeServer
) -> Iterator[Client]:
    """A Client from ``modelwire_config`` and the ``modelwire_config`` marker; closed afterwards."""
    from modelwire import Client

    config, plugins = modelwire_config, ()
    marker = request.node.get_closest_marker("modelwire_config")
    if marker is not None:
        if len(marker.args) > 1 or set(marker.kwargs) - {"plugins"}:
            raise pytest.UsageError("modelwire_config marker takes one config argument and plugins=[...]")
        extra = marker.args[0] if marker.args else {}
        extra = extra(fake_server) if callable(extra) else extra
        if not isinstance(extra, dict):
            raise pytest.UsageError(f"modelwire_config marker needs a dict, got {type(extra).__name__}")
        config = merge_config(config, extra)
        plugins = tuple(marker.kwargs.get("plugins", ()))
    client = Client(config=config, plugins=plugins)
    yield client
    client.close()


def merge_config(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``extra`` merged in: dicts recursively, anything else replaced; inputs untouched."""
    merged = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_config(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def start_redis() -> RedisServer:
    """Start a throwaway redis-server; skip the test when the binary is missing, unless
    ``MODELWIRE_REQUIRE_REDIS=1`` (CI), where that is a failure."""
    try:
        return RedisServer().start()
    except FileNotFoundError as exc:
        if os.environ.get("MODELWIRE_REQUIRE_REDIS") == "1":
            pytest.fail(f"MODELWIRE_REQUIRE_REDIS=1 but {exc}")
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A real redis-server shared by the session: do not pause or stop it."""
    server = start_redis()
    try:
        yield server
    finally:
        server.stop()
