"""Row B10: the API key never appears in a log event, an exception or its message.

Requests run with the conftest sentinel key through errors of every kind (with retry, circuit and
fallback enabled, so their messages and log fields are covered too), including providers that echo
the key back in their error bodies. Every captured structlog event, every exception (str, repr,
body, the errors it lists, its formatted traceback) and everything printed to stdout/stderr is
searched for the key.
"""

from __future__ import annotations

import socket
import traceback
from typing import Any

import pytest

import modelwire
from modelwire.testing import FakeServer, Reply, capture_events

from ..conftest import SENTINEL_KEY

ECHO = f"Incorrect API key provided: {SENTINEL_KEY}. You can find your API key at https://x/account/api-keys."


def replies() -> list[tuple[str, list[Reply]]]:
    """(model, replies) pairs: each runs one request through the whole pipeline."""
    return [
        ("openai/gpt-4o", [Reply.error(401, ECHO, type="invalid_request_error", code="invalid_api_key")]),
        ("openai/gpt-4o", [Reply.error(403, f"key {SENTINEL_KEY} may not use this model")]),
        ("openai/gpt-4o", [Reply.error(500, f"upstream failed for Bearer {SENTINEL_KEY}")] * 6),
        ("openai/gpt-4o", [Reply(502, f"<html><body>502 for api-key: {SENTINEL_KEY}</body></html>")] * 6),
        ("openai/gpt-4o", [Reply.error(429, f"slow down {SENTINEL_KEY}", headers={"retry-after": "86400"})] * 3),
        ("openai/gpt-4o", [Reply.error(429, f"You exceeded your current quota ({SENTINEL_KEY})",
                                       type="insufficient_quota", code="insufficient_quota")] * 3),
        ("openai/gpt-4o", [Reply.error(400, f"context_length_exceeded for {SENTINEL_KEY}",
                                       code="context_length_exceeded")]),
        ("openai/gpt-4o", [Reply(200, f"not json, but a key: {SENTINEL_KEY}")] * 6),
        ("openai/gpt-4o", [Reply(200, {"error": {"message": f"bad key {SENTINEL_KEY}", "type": "server_error"}})] * 6),
        ("openai/gpt-4o", [Reply(200, {"object": "error", "message": SENTINEL_KEY, "code": 500})] * 6),
        ("openai/gpt-4o", [Reply(body=Reply.completion(SENTINEL_KEY).body, content_length=9000)] * 6),
        ("openai/gpt-4o", [Reply(body={"late": True}, delay=1.0)] * 6),
        ("azure/dep", [Reply(404, {"error": {"code": "DeploymentNotFound", "message": f"no {SENTINEL_KEY}"}})] * 3),
        ("azure/dep", [Reply(404, {"error": {"code": "404", "message": "Resource not found"}})] * 3),
        ("azure/dep", [Reply(400, {"error": {"code": "content_filter", "message": f"filtered {SENTINEL_KEY}"}})]),
    ]


def stream_replies() -> list[list[Reply]]:
    return [
        [Reply.error(401, ECHO)] * 3,
        [Reply(events=[{"error": {"message": f"mid-stream failure {SENTINEL_KEY}", "type": "server_error"}}],
               ending="eof")] * 3,
        [Reply.stream(["partial ", "text"], finish_reason=None, usage=False, ending="abort")],
        [Reply(events=[b"data: {\"choices\": [\xff\xfe " + SENTINEL_KEY.encode() + b"\n\n"], ending="eof")] * 3,
    ]


def leaks(exc: BaseException) -> list[str]:
    texts = [str(exc), repr(exc), "".join(traceback.format_exception(exc))]
    for attr in ("body", "message", "partial_text"):
        value = getattr(exc, attr, None)
        if value:
            texts.append(str(value))
    for _target, err in getattr(exc, "tried", ()):
        texts += [str(err), repr(err), str(getattr(err, "body", ""))]
    return [t for t in texts if SENTINEL_KEY in t]


@pytest.mark.parametrize("transport", ["litellm", "direct"])
async def test_b10_sentinel_key_never_leaks(make_client: Any, server: FakeServer, modelwire_config: dict[str, Any],
                                            capfd: pytest.CaptureFixture[str], transport: str) -> None:
    providers = {name: {**section, "transport": transport} for name, section in modelwire_config["providers"].items()}
    client = make_client(
        providers=providers,
        middleware=["fallback", "retry", "circuit"],
        retry={"max_attempts": 2, "base_delay": 0.01, "attempt_timeout": 0.3},
        circuit={"failure_threshold": 1000},
        fallback={"chains": {"openai/gpt-4o": ["azure/dep", "local/llama"]}},
    )
    found: list[str] = []
    errors = 0
    with capture_events() as logs:
        for model, scripted in replies():
            server.reset()
            server.script(*scripted, *[Reply.error(503, f"fallbacks fail too {SENTINEL_KEY}")] * 8)
            try:
                await client.acomplete("hi", model=model)
            except modelwire.ModelwireError as exc:
                errors += 1
                found += leaks(exc)
        for scripted in stream_replies():
            server.reset()
            server.script(*scripted, *[Reply.error(503, f"fallbacks fail too {SENTINEL_KEY}")] * 8)
            try:
                async for _chunk in client.astream("hi", model="openai/gpt-4o"):
                    pass
            except modelwire.ModelwireError as exc:
                errors += 1
                found += leaks(exc)
        # a provider that is not listening at all
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        sock.close()
        dead = make_client(middleware=["retry"], retry={"max_attempts": 2, "base_delay": 0.01},
                           providers={"openai": {"api_base": f"http://127.0.0.1:{port}/v1", "transport": transport}})
        with pytest.raises(modelwire.ProviderConnectionError) as info:
            await dead.acomplete("hi", model="openai/gpt-4o")
        found += leaks(info.value)
    assert errors == len(replies()) + len(stream_replies())
    # the key really was in use: the server saw it in the auth headers
    assert any(SENTINEL_KEY in (r.headers.get("authorization", "") + r.headers.get("api-key", ""))
               for r in server.requests)
    assert len(logs) > 20
    assert any("***" in repr(event) for event in logs)  # echoed keys were there, and were scrubbed
    found += [repr(event) for event in logs if SENTINEL_KEY in repr(event)]
    printed = capfd.readouterr()
    found += [line for line in (printed.out + printed.err).splitlines() if SENTINEL_KEY in line]
    assert found == []


# -- issue 9 item 8: `modelwire config` ("secrets masked") and log text ----------------------------

HEADER_SECRETS = {
    "api-key": "hdr-secret-api-key-111",
    "x-api-key": "hdr-secret-x-api-key-222",
    "Ocp-Apim-Subscription-Key": "hdr-secret-apim-333",
    "Authorization": "Basic hdr-secret-basic-444",
}
REDIS_PASSWORD = "p@ss@w0rd-555"


def test_config_command_masks_header_credentials_and_url_passwords(server: FakeServer, tmp_path: Any) -> None:
    import json
    import os
    import subprocess
    import sys

    headers = ", ".join(f'"{k}" = "{v}"' for k, v in HEADER_SECRETS.items())
    config = tmp_path / "modelwire.toml"
    config.write_text(
        'middleware = ["cache"]\n'
        f'[providers.local]\nkind = "openai_compatible"\napi_base = "{server.openai_url}"\n'
        f'params = {{ extra_headers = {{ {headers}, "X-Trace" = "visible-trace" }} }}\n'
        f'[cache]\nbackend = "redis"\nurl = "redis://default:{REDIS_PASSWORD}@127.0.0.1:6390/0"\n'
    )
    env = {**os.environ, "OPENAI_API_KEY": SENTINEL_KEY, "MODELWIRE_CONFIG": str(config)}
    done = subprocess.run([sys.executable, "-m", "modelwire.cli", "config"], capture_output=True, text=True,
                          env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    out = done.stdout + done.stderr
    secrets = [*HEADER_SECRETS.values(), "hdr-secret-basic-444", REDIS_PASSWORD, "p@ss", "w0rd-555", SENTINEL_KEY]
    assert [s for s in secrets if s in out] == []
    shown = json.loads(done.stdout)
    sent = shown["providers"]["local"]["params"]["extra_headers"]
    assert sent == {**dict.fromkeys(HEADER_SECRETS, "***"), "X-Trace": "visible-trace"}
    assert shown["cache"]["url"] == "redis://default:***@127.0.0.1:6390/0"  # the host stays readable


def test_configured_header_credentials_are_masked_in_errors_and_logs(make_client: Any, server: FakeServer) -> None:
    client = make_client(providers={"local": {"kind": "openai_compatible", "api_base": server.openai_url,
                                              "params": {"extra_headers": HEADER_SECRETS}}})
    echo = " ".join(HEADER_SECRETS.values())
    server.script(Reply.error(400, f"gateway rejected headers: {echo}", type="invalid_request_error"))
    with capture_events() as logs, pytest.raises(modelwire.BadRequestError) as info:
        client.complete("hi", model="local/m")
    assert server.requests[0].headers["ocp-apim-subscription-key"] == "hdr-secret-apim-333"  # really sent
    texts = leaks_of(info.value, HEADER_SECRETS.values()) + [repr(e) for e in logs if "hdr-secret" in repr(e)]
    assert texts == []
    assert "***" in info.value.message


def leaks_of(exc: BaseException, secrets: Any) -> list[str]:
    texts = [str(exc), repr(exc), str(getattr(exc, "body", "")), "".join(traceback.format_exception(exc))]
    return [t for t in texts for s in secrets if s in t]
