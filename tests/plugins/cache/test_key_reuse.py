"""The request is JSON-encoded once (issue 14): Client.request checks it in the cache key's own form
and the key reuses the messages' text, while the key stays what it always was and follows any
change a hook or middleware makes to the request after the check."""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import modelwire
from modelwire.plugins.cache import cache_of
from modelwire.plugins.cache.keys import IGNORED_PARAMS, KEY_VERSION, _normal
from modelwire.types import Request

MakeClient = Callable[..., modelwire.Client]


def reference_key(client: modelwire.Client, request: Request) -> str:
    """The key as modelwire computed it before the rework: one canonical JSON of the whole
    document, through the full _normal walk, built from what the request holds now."""
    cache = cache_of(client)
    provider = client.providers.get(request.provider)
    config = getattr(provider, "config", None)
    params = {**(getattr(config, "params", None) or {}), **request.params}
    for name in IGNORED_PARAMS.intersection(params):
        del params[name]
    payload = {
        "v": KEY_VERSION, "ns": cache.namespace_for(request), "provider": request.provider,
        "kind": getattr(config, "kind", None), "api_base": getattr(config, "api_base", None),
        "api_version": getattr(config, "api_version", None), "model": request.model,
        "messages": request.messages, "params": params,
    }
    text = json.dumps(_normal(payload, ""), sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=repr)
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{cache.namespace_for(request)}:{KEY_VERSION}:{digest}"


def _reused(request: Request) -> bool:
    """Whether the key can take the messages' text from the client's check."""
    return request.encoded is not None and request.encoded.messages_json(request.messages) is not None


def _params_reused(request: Request) -> bool:
    """Whether the key can take the params' text from the client's check (plain values only)."""
    return request.encoded is not None and request.encoded.params_json(request.params) is not None


# Long texts (the system prompt below) are written by validate._long_string when they hold no
# escaped character or one kind only ("new\nline", 'say "hi"'), by the C escaper otherwise.
_TEXTS = ["hi", "é ✓ 漢字", 'quote " and \\ backslash', "tab\tnew\nline\x01\x1f", "del \x7f", "v1.0,", "1.0]", "",
          "emoji 🎉", "\u2028 sep", "new\nline", 'say "hi"', "bell \x07"]


def _random_request(rng: random.Random) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    system = rng.choice(_TEXTS) + "be brief"
    if rng.random() < 0.25:  # long enough for the ASCII encoder to be considered
        system = system * 3000 + rng.choice(_TEXTS)
    messages: list[dict[str, Any]] = [{"role": "system", "content": system}]
    for _ in range(rng.randint(1, 3)):
        message: dict[str, Any] = {"role": "user", "content": rng.choice(_TEXTS) + "x"}
        if rng.random() < 0.3:
            message["name"] = rng.choice(["bob", "é"])
        if rng.random() < 0.2:
            message["content"] = [{"type": "text", "text": rng.choice(_TEXTS) + "y"}]
        messages.append(message)
    params: dict[str, Any] = {}
    for key, values in {
        "temperature": [0, 0.5, 1.0, 2], "max_tokens": [16, 1000], "seed": [7], "stop": ["\n", ["é", "x"]],
        "top_p": [0.25, 1.0], "logit_bias": [{50256: -100}, {"1": 2.0}], "timeout": [30],
        "extra_body": [{"num_ctx": 2048, "mirostat": 2.0}], "user": ["u-é"],
    }.items():
        if rng.random() < 0.35:
            params[key] = rng.choice(values)
    return messages, params


def test_key_from_the_checked_encoding_is_the_reference_key(make_client: MakeClient) -> None:
    client = make_client(middleware=["cache"])
    rng = random.Random(1414)
    reused = params_reused = 0
    for i in range(400):
        messages, params = _random_request(rng)
        model = rng.choice(["openai/gpt-4o", "local/llama3", "azure/dep"])
        request = client.request(messages, model=model, stream=i % 2 == 0, **params)
        reused += _reused(request)
        params_reused += _params_reused(request)
        assert cache_of(client).key_for(request) == reference_key(client, request), (messages, params)
    assert reused > 50 and params_reused > 50  # the reuse is exercised, not only the fallback


class Rewriter:
    """A third-party plugin that changes the request after the client checked it."""

    def __init__(self, change: Callable[[Request], None]) -> None:
        self.change = change

    @modelwire.hookimpl
    def modelwire_request_prepare(self, request: Request) -> None:
        self.change(request)


def _set_content(request: Request) -> None:
    request.messages[-1]["content"] = "rewritten by a hook"


def _append(request: Request) -> None:
    request.messages.append({"role": "user", "content": "appended by a hook"})


def _replace_list(request: Request) -> None:
    request.messages = [*request.messages[:-1], {"role": "user", "content": "a new list"}]


def _one_to_true(request: Request) -> None:
    request.messages[-1]["n"] = True  # equal to 1, written differently


def _set_temperature(request: Request) -> None:
    request.params["temperature"] = 0.75


def _add_param(request: Request) -> None:
    request.params["seed"] = 11


def _pop_key(request: Request) -> None:
    del request.messages[0]["name"]


CHANGES = [_set_content, _append, _replace_list, _one_to_true, _set_temperature, _add_param, _pop_key]


@pytest.fixture
def prompt() -> Iterator[list[dict[str, Any]]]:
    yield [{"role": "system", "content": "be brief", "name": "sys"}, {"role": "user", "content": "hi", "n": 1}]


@pytest.mark.parametrize("change", CHANGES, ids=[c.__name__.strip("_") for c in CHANGES])
def test_key_follows_a_change_made_after_the_check(make_client: MakeClient, change: Callable[[Request], None],
                                                   prompt: list[dict[str, Any]]) -> None:
    plain = make_client(middleware=["cache"])
    before = plain.request([dict(m) for m in prompt], model="local/llama3", temperature=0)
    assert _reused(before) and _params_reused(before)  # the unchanged request takes the reuse paths
    client = make_client(middleware=["cache"], plugins=[Rewriter(change)])
    request = client.request(prompt, model="local/llama3", temperature=0)
    key = cache_of(client).key_for(request)
    assert key == reference_key(client, request)
    assert key != cache_of(plain).key_for(before)


# Counts, in a fresh process, the JSON escapings of a text of a megabyte or more by the stdlib's
# string escaper, wrapped before modelwire is imported: the C encoder (built once at import for the
# request's check, or per call by json.dumps and JSONEncoder.encode) calls it for every string.
# A prompt holding newlines and quotes takes that escaper in the check; a prompt holding no escaped
# character is written by the check's own long-text path, which it does not count.
_COUNT_ENCODES = """
import asyncio, json.encoder, os, sys
real = json.encoder.encode_basestring
escaped = []

def counting(text):
    if len(text) >= 1_000_000:
        escaped.append(len(text))
    return real(text)

json.encoder.encode_basestring = counting
import modelwire

async def main():
    client = modelwire.Client(config={"middleware": ["cache"], "providers": {"local": {
        "kind": "openai_compatible", "api_base": os.environ["MW_URL"] + "/v1"}}})
    for line in ('The "quick" brown fox.\\n', "The quick brown fox. "):
        messages = [{"role": "system", "content": line * 50_000}, {"role": "user", "content": "Say hi."}]
        first = await client.acomplete(messages, model="local/llama3", temperature=0)
        before = len(escaped)
        hit = await client.acomplete(messages, model="local/llama3", temperature=0)
        assert not first.cached and hit.cached and hit.text == first.text, (first, hit)
        print(before, len(escaped) - before)
    await client.aclose()

asyncio.run(main())
"""


def test_a_hit_on_a_large_prompt_encodes_it_once(server: Any) -> None:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LITELLM_LOCAL_MODEL_COST_MAP": "True",
           "MW_URL": server.url}
    done = subprocess.run([sys.executable, "-c", _COUNT_ENCODES], capture_output=True, text=True, timeout=180,
                          env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    (escaped_first, escaped_hit), (_, plain_hit) = (map(int, line.split()) for line in done.stdout.splitlines())
    assert escaped_first >= 2  # the check, and litellm's request body: the counting works
    assert escaped_hit == 1  # the check only: the key reuses its text
    assert plain_hit == 0  # the check's long-text path, and again no second encoding for the key
    assert server.calls() == 2
