"""Every provider test that builds its client from ``make_client`` / ``modelwire_config`` runs
against both transports (issue 14): litellm (the default) and ``transport = "direct"``.

``MODELWIRE_TEST_TRANSPORTS=direct`` (comma-separated) runs only the ones named.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest

import modelwire

TRANSPORTS = [t.strip() for t in os.environ.get("MODELWIRE_TEST_TRANSPORTS", "litellm,direct").split(",") if t.strip()]
#: The kinds that have a direct route.
DIRECT_KINDS = ("openai", "azure", "openai_compatible")


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def with_transport(providers: dict[str, Any], transport: str) -> dict[str, Any]:
    """``providers`` with ``transport`` set on every section of a kind that has a direct route."""
    out = {}
    for name, section in providers.items():
        kind = section.get("kind") or name
        if kind in DIRECT_KINDS and "transport" not in section:
            section = {**section, "transport": transport}
        out[name] = section
    return out


@pytest.fixture
def modelwire_config(modelwire_config: dict[str, Any], transport: str) -> dict[str, Any]:
    return {**modelwire_config, "providers": with_transport(modelwire_config["providers"], transport)}


@pytest.fixture
def make_client(modelwire_config: dict[str, Any], transport: str) -> Callable[..., modelwire.Client]:
    """The suite's ``make_client``, with ``transport`` also set on providers a test replaces."""

    def make(plugins: tuple[object, ...] = (), **config: Any) -> modelwire.Client:
        merged = {**modelwire_config, **config}
        merged["providers"] = with_transport(merged["providers"], transport)
        return modelwire.Client(config=merged, plugins=plugins)

    return make
