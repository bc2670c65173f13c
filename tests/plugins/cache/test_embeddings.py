"""The cache for embeddings: one entry per text, only new texts upstream (in one request),
order kept, keys apart from chat keys, failures never stored; memory, file and a real redis-server."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis

import modelwire
from modelwire.errors import ModelwireError
from modelwire.plugins.cache import cache_of
from modelwire.testing import FakeServer, RedisServer, Reply, capture_events
from modelwire.testing.server import fake_vector

MakeClient = Callable[..., modelwire.Client]
MODEL = "local/text-embedding-3-small"


def sent_inputs(server: FakeServer) -> list[list[str]]:
    return [r.json["input"] for r in server.requests if r.route == "embeddings"]


@pytest.fixture(params=["memory", "file", "redis"])
def cache_section(request: pytest.FixtureRequest, tmp_path: Any) -> dict[str, Any]:
    if request.param == "memory":
        return {"backend": "memory"}
    # a generous backend timeout: a busy machine must not turn these reads into misses
    if request.param == "file":
        return {"backend": "file", "path": str(tmp_path / "cache"), "timeout": 10}
    server: RedisServer = request.getfixturevalue("redis_server")
    return {"backend": "redis", "url": server.url, "key_prefix": f"t{time.time_ns()}:", "timeout": 10}


def test_partly_cached_batch_sends_only_new_texts_in_one_request(
    make_client: MakeClient, server: FakeServer, cache_section: dict[str, Any]
) -> None:
    client = make_client(middleware=["cache"], cache=cache_section)
    texts = [f"sentence {i}" for i in range(100)]
    seen = [t for i, t in enumerate(texts) if i not in (3, 50, 99)]
    assert client.embed(seen, model=MODEL).vectors == [fake_vector(t) for t in seen]
    server.reset()
    result = client.embed(texts, model=MODEL)
    assert sent_inputs(server) == [["sentence 3", "sentence 50", "sentence 99"]]  # one request, new texts only
    assert result.vectors == [fake_vector(t) for t in texts]  # all 100, in input order
    assert result.from_cache == [i not in (3, 50, 99) for i in range(100)]
    assert result.cached is False
    assert result.usage is not None and result.usage.prompt_tokens == 6  # only what was sent: 3 x 2 words
    server.reset()
    again = client.embed(list(reversed(texts)), model=MODEL)
    assert server.requests == [] and again.cached is True
    assert again.vectors == [fake_vector(t) for t in reversed(texts)]
    client.close()


def test_entries_are_per_params_and_apart_from_chat(make_client: MakeClient, server: FakeServer) -> None:
    client = make_client(middleware=["cache"])
    client.complete("hello", model=MODEL)
    client.embed(["hello"], model=MODEL)  # the chat entry for "hello" is not an embedding
    client.embed(["hello"], model=MODEL, dimensions=4)  # another vector size: another entry
    client.embed(["hello"], model="local/other-model")
    assert [r.route for r in server.requests] == ["chat", "embeddings", "embeddings", "embeddings"]
    client.embed(["hello"], model=MODEL, dimensions=4, timeout=30, user="u1")  # transport params: same entry
    client.complete("hello", model=MODEL)
    assert len(server.requests) == 4
    cache = cache_of(client)
    assert cache.metrics.hits == 2
    client.close()


def test_failures_are_not_stored(make_client: MakeClient, server: FakeServer) -> None:
    client = make_client(middleware=["cache"])
    server.script(Reply.error(500), match="/embeddings")
    with pytest.raises(ModelwireError):
        client.embed(["a", "b"], model=MODEL)
    result = client.embed(["a", "b"], model=MODEL)
    assert result.from_cache == [False, False]
    assert sent_inputs(server) == [["a", "b"], ["a", "b"]]
    assert client.embed(["b", "a"], model=MODEL).cached is True
    assert len(sent_inputs(server)) == 2
    client.close()


def test_per_call_options(make_client: MakeClient, server: FakeServer) -> None:
    client = make_client(middleware=["cache"])
    client.embed(["a"], model=MODEL, options={"cache": {"no_store": True}})
    client.embed(["a"], model=MODEL, options={"cache": {"bypass": True}})
    client.embed(["a"], model=MODEL)  # stored now
    client.embed(["a"], model=MODEL, options={"cache": {"refresh": True}})  # read skipped
    assert len(sent_inputs(server)) == 4
    assert client.embed(["a"], model=MODEL).cached is True
    assert client.embed(["a"], model=MODEL, options={"cache": {"namespace": "tenant-b"}}).cached is False
    assert len(sent_inputs(server)) == 5
    client.close()


def test_values_are_json_with_versioned_keys(make_client: MakeClient, server: FakeServer,
                                             redis_server: RedisServer) -> None:
    prefix = f"t{time.time_ns()}:"
    section = {"backend": "redis", "url": redis_server.url, "key_prefix": prefix, "timeout": 10}
    client = make_client(middleware=["cache"], cache=section)
    client.embed(["some text"], model=MODEL)
    r = redis.Redis.from_url(redis_server.url)
    keys = [k.decode() for k in r.scan_iter(match=f"{prefix}*") if b"__modelwire_cache_stats__" not in k]
    assert len(keys) == 1 and ":emb-v1:" in keys[0]
    doc = json.loads(r.get(keys[0]) or b"")
    assert doc["kind"] == "embedding" and doc["v"] == "emb-v1" and doc["vector"] == fake_vector("some text")
    client.close()


def test_observers_see_the_outcome(make_client: MakeClient, server: FakeServer) -> None:
    client = make_client(middleware=["cache"])
    client.embed(["a", "b"], model=MODEL)
    with capture_events() as logs:
        client.embed(["a", "c"], model=MODEL)
        client.embed(["c", "a"], model=MODEL)
    responses = [e for e in logs if e["event"] == "llm.response"]
    assert [(e["cache"], e["cache_hits"], e["cached"]) for e in responses] == [("partial", 1, False), ("hit", 2, True)]
    stats = client.stats()["total"]
    assert stats["responses"] == 3
    client.close()
