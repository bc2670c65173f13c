"""The redactor's own tests: the fixtures come from modelwire's pytest plugin (``fake_server``,
``modelwire_client``); the middleware is found through this package's entry point."""

from __future__ import annotations

import asyncio

import pytest

import modelwire
from modelwire.testing import FakeServer

SECRET = "write to jane.doe@example.com or 555-12-3456"
REDACT = {"middleware": ["redact", "retry"]}


def sent(server: FakeServer) -> list[object]:
    return [r.json["messages"][-1]["content"] for r in server.requests if r.route == "chat"]


@pytest.mark.modelwire_config(REDACT)
def test_whole_and_streamed_requests_are_masked(modelwire_client: modelwire.Client, fake_server: FakeServer) -> None:
    assert modelwire_client.complete(SECRET, model="local/m").text == "echo: write to [redacted] or 555-12-3456"
    streamed = "".join(c.text for c in modelwire_client.stream(SECRET, model="local/m"))
    assert streamed == "echo: write to [redacted] or 555-12-3456"

    async def async_paths() -> None:
        await modelwire_client.acomplete(SECRET, model="local/m")
        async for _ in modelwire_client.astream(SECRET, model="local/m"):
            pass

    asyncio.run(async_paths())
    assert sent(fake_server) == ["write to [redacted] or 555-12-3456"] * 4
    assert not any(b"example.com" in r.body for r in fake_server.requests)


@pytest.mark.modelwire_config({**REDACT, "redact": {"mask": "#", "patterns": [r"\b\d{3}-\d{2}-\d{4}\b"]}})
def test_configured_patterns_and_content_parts(modelwire_client: modelwire.Client, fake_server: FakeServer) -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}
    parts = [{"type": "text", "text": SECRET}, image]
    modelwire_client.complete([{"role": "user", "content": parts}], model="local/m")
    text_part, image_part = sent(fake_server)[0]  # type: ignore[misc]
    assert text_part == {"type": "text", "text": "write to # or #"}
    assert image_part == parts[1]
    redact = modelwire_client.middleware[0]
    assert redact.describe() == {"masked": 2}


def test_caller_messages_are_left_alone(modelwire_config: dict, fake_server: FakeServer) -> None:
    client = modelwire.Client(config={**modelwire_config, **REDACT})
    messages = [{"role": "user", "content": SECRET}]
    client.complete(messages, model="local/m")
    assert messages == [{"role": "user", "content": SECRET}]


@pytest.mark.parametrize(
    ("section", "match"),
    [({"mask_with": "#"}, r"unknown config key 'redact\.mask_with'"), ({"patterns": ["("]}, r"redact\.patterns")],
)
def test_bad_config_fails_naming_the_key(modelwire_config: dict, section: dict, match: str) -> None:
    with pytest.raises(modelwire.ConfigurationError, match=match):
        modelwire.Client(config={**modelwire_config, **REDACT, "redact": section})
