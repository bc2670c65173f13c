"""Row B04 for [retry]: every bad numeric value is a ConfigurationError naming the key, before any call."""

from __future__ import annotations

from typing import Any

import pytest

import modelwire
from modelwire.testing import FakeServer

BAD = [
    ({"max_attempts": -1}, "retry.max_attempts"),
    ({"max_attempts": 0}, "retry.max_attempts"),
    ({"max_attempts": None}, "retry.max_attempts"),
    ({"max_attempts": "3"}, "retry.max_attempts"),
    ({"max_attempts": True}, "retry.max_attempts"),
    ({"max_attempts": 2.5}, "retry.max_attempts"),
    ({"base_delay": -0.1}, "retry.base_delay"),
    ({"base_delay": float("nan")}, "retry.base_delay"),
    ({"max_delay": float("inf")}, "retry.max_delay"),
    ({"base_delay": 5, "max_delay": 1}, "max_delay"),
    ({"deadline": 0}, "retry.deadline"),
    ({"deadline": -5}, "retry.deadline"),
    ({"attempt_timeout": 0}, "retry.attempt_timeout"),
    ({"max_retry_after": -1}, "retry.max_retry_after"),
    ({"jitter": "random"}, "retry.jitter"),
    ({"invalid_response_retries": -1}, "retry.invalid_response_retries"),
    ({"max_retries": 2}, "retry.max_retries"),  # openai's name: unknown here, the message lists the allowed keys
]


@pytest.mark.parametrize(("section", "key"), BAD, ids=[str(b[0]) for b in BAD])
def test_b04_bad_retry_config(make_client: Any, server: FakeServer, section: dict[str, Any], key: str) -> None:
    with pytest.raises(modelwire.ConfigurationError) as info:
        make_client(middleware=["retry"], retry=section)
    assert key in str(info.value)
    assert server.calls() == 0


def test_unknown_key_lists_allowed(make_client: Any) -> None:
    with pytest.raises(modelwire.ConfigurationError, match="max_attempts"):
        make_client(middleware=["retry"], retry={"retries": 3})


def test_defaults(make_client: Any) -> None:
    client = make_client(middleware=["retry"])
    config = client.middleware[0].config
    assert (config.max_attempts, config.base_delay, config.max_delay, config.max_retry_after) == (3, 0.5, 8.0, 60.0)
    assert config.jitter == "full" and config.deadline is None and config.retry_on_timeout is True
