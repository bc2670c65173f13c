"""The pytest plugin as a user's project sees it: a fresh pytest run (subprocess) in a directory
that has nothing but test files, so every fixture comes from the ``pytest11`` entry point."""

from __future__ import annotations

import os
import sys

import pytest

pytest_plugins = ["pytester"]

USER_TESTS = '''
import socket

import pytest

import modelwire
from modelwire.testing import FakeServer, Reply


def test_fake_server_is_fresh_per_test_1(fake_server):
    fake_server.script(Reply.error(500))
    assert fake_server.port > 0 and fake_server.calls() == 0


def test_fake_server_is_fresh_per_test_2(fake_server):
    assert fake_server.calls() == 0 and not fake_server._scripts


def test_client_defaults(modelwire_client, fake_server, modelwire_api_key):
    assert sorted(modelwire_client.providers) == ["azure", "local", "openai"]
    assert modelwire_client.config.middleware == []
    assert modelwire_client.complete("hi", model="openai/gpt-4o").text == "echo: hi"
    assert fake_server.requests[-1].headers["authorization"] == f"Bearer {modelwire_api_key}"
    with pytest.raises(modelwire.ServerError):
        modelwire_client.complete("hi", model="local/fail-500")
    assert fake_server.calls() == 2


@pytest.mark.modelwire_config({"middleware": ["retry"], "retry": {"max_attempts": 2, "base_delay": 0}})
def test_marker_dict(modelwire_client, fake_server):
    assert modelwire_client.config.middleware == ["retry"]
    fake_server.script(Reply.error(500), Reply.completion("second"))
    assert modelwire_client.complete("x", model="local/m").text == "second"
    assert fake_server.calls() == 2


@pytest.mark.modelwire_config(
    lambda server: {"providers": {"extra": {"kind": "openai_compatible", "api_base": server.openai_url}}}
)
def test_marker_function_adds_a_provider(modelwire_client):
    assert sorted(modelwire_client.providers) == ["azure", "extra", "local", "openai"]
    assert modelwire_client.complete("hey", model="extra/m").text == "echo: hey"


class Shout:
    @modelwire.hookimpl
    def modelwire_request_prepare(self, request):
        request.messages[-1]["content"] = request.messages[-1]["content"].upper()


@pytest.mark.modelwire_config({}, plugins=[Shout()])
def test_marker_plugins(modelwire_client):
    assert modelwire_client.complete("quiet", model="local/m").text == "echo: QUIET"


def test_redis_server(redis_server):
    with socket.create_connection(("127.0.0.1", redis_server.port), timeout=5) as sock:
        sock.sendall(b"PING\\r\\n")
        assert sock.recv(16).startswith(b"+PONG")
'''

OVERRIDE = '''
import pytest


@pytest.fixture
def modelwire_api_key():
    return "sk-my-own-sentinel-000000000"


@pytest.fixture
def modelwire_config(fake_server):
    return {"middleware": [], "providers": {"mine": {"kind": "openai_compatible", "api_base": fake_server.openai_url,
                                                     "api_key_env": "MY_KEY"}}}


def test_overridden_config(modelwire_client, fake_server, monkeypatch):
    monkeypatch.setenv("MY_KEY", "sk-mine-0000000000")
    assert list(modelwire_client.providers) == ["mine"]
    assert modelwire_client.complete("yo", model="mine/m").text == "echo: yo"
    assert fake_server.requests[-1].headers["authorization"] == "Bearer sk-mine-0000000000"
'''


def test_fixtures_and_marker(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_user=USER_TESTS, test_override=OVERRIDE)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=8)


def test_without_the_plugin_the_fixtures_are_missing(pytester: pytest.Pytester) -> None:
    """The negative control: the same file fails when the entry point is switched off."""
    pytester.makepyfile(test_user=USER_TESTS)
    result = pytester.runpytest_subprocess("-p", "no:modelwire", "-p", "no:cacheprovider")
    result.assert_outcomes(errors=7, passed=0)
    result.stdout.fnmatch_lines(["*fixture 'fake_server' not found*"])


REDIS_ONLY = '''
def test_needs_redis(redis_server):
    pass
'''


@pytest.mark.parametrize("required", [False, True])
def test_redis_missing_skips_or_fails(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch,
                                      required: bool) -> None:
    monkeypatch.setenv("PATH", os.path.dirname(sys.executable))  # no redis-server on it
    if required:
        monkeypatch.setenv("MODELWIRE_REQUIRE_REDIS", "1")
    else:
        monkeypatch.delenv("MODELWIRE_REQUIRE_REDIS", raising=False)
    pytester.makepyfile(test_redis=REDIS_ONLY)
    result = pytester.runpytest_subprocess("-rs", "-p", "no:cacheprovider")
    if required:
        result.assert_outcomes(errors=1)
        result.stdout.fnmatch_lines(["*MODELWIRE_REQUIRE_REDIS=1 but redis-server is not installed*"])
    else:
        result.assert_outcomes(skipped=1)
        result.stdout.fnmatch_lines(["SKIPPED*redis-server is not installed*"])
