"""client.stats() and modelwire stats (issue 12): exact counts after a scripted mix over real HTTP,
and counters added up across real processes through a SQLite file and a real redis-server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import modelwire
from modelwire.plugins.cost import Price, cost_of, litellm_price
from modelwire.plugins.stats import flush
from modelwire.plugins.stats.metrics import bucket_of, percentile
from modelwire.testing import FakeServer, RedisServer, Reply
from modelwire.types import Usage

U = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
DETAILED = {"prompt_tokens": 1000, "completion_tokens": 200, "total_tokens": 1200,
            "prompt_tokens_details": {"cached_tokens": 400}, "completion_tokens_details": {"reasoning_tokens": 50}}
MODELWIRE = str(Path(sys.executable).with_name("modelwire"))  # the console script beside this Python
LOCAL_PRICE = {"input": 1.0, "output": 2.0}  # USD per million tokens


def mix_client(make_client: Callable[..., modelwire.Client], **extra: Any) -> modelwire.Client:
    return make_client(
        middleware=["cache", "fallback", "retry", "ratelimit"],
        cache={"backend": "memory"},
        fallback={"chains": {"openai/gpt-4o-mini": ["local/llama3"]}},
        retry={"max_attempts": 2, "base_delay": 0.01, "max_delay": 0.02},
        ratelimit={"limits": [{"match": "local/slow", "rps": 0.5}]},
        prices={"local/*": LOCAL_PRICE},
        **extra,
    )


async def test_stats_after_a_scripted_mix(make_client: Callable[..., modelwire.Client], server: FakeServer) -> None:
    client = mix_client(make_client)
    # one queue, in the order the upstream calls happen
    server.script(
        Reply.completion("ok", usage=DETAILED),                  # 1 success (then 2: its cache hit)
        Reply.error(503), Reply.completion("ok", usage=U),       # 3 a retry
        Reply.completion("ok", usage=U),                         # 4 limiter: first permit
        Reply.completion("ok", usage=U),                         # 6 limiter: waited (5 was rejected)
        Reply.stream(["par", "tial"], finish_reason=None, usage=False, ending="eof"),  # 7 interrupted
        Reply.error(503), Reply.error(503), Reply.completion("ok", usage=U),  # 8 fallback to local/llama3
    )
    first = await client.acomplete("one", model="openai/gpt-4o-mini")
    hit = await client.acomplete("one", model="openai/gpt-4o-mini")
    retried = await client.acomplete("two", model="openai/gpt-4o-mini")
    await client.acomplete("three", model="local/slow")
    with pytest.raises(modelwire.RateLimitExceeded):
        await client.acomplete("four", model="local/slow", options={"ratelimit": {"max_wait": 0}})
    await client.acomplete("five", model="local/slow")
    with pytest.raises(modelwire.StreamInterruptedError):
        async with client.astream("six", model="openai/gpt-4o-mini") as stream:
            [c async for c in stream]
    fell = await client.acomplete("seven", model="openai/gpt-4o-mini")
    assert hit.cached and fell.provider == "local" and server.calls() == 9

    stats = client.stats()
    total = stats["total"]
    assert total["requests"] == 8
    assert total["responses"] == 6
    assert total["errors"] == {"ServiceUnavailableError": 3, "StreamInterruptedError": 1}
    assert total["retries"] == 2 and total["fallbacks"] == 1 and total["circuit_opens"] == 0
    assert total["streams"] == {"interrupted": 1}
    assert total["cache"]["hits"] == 1 and total["cache"]["misses"] == 5 and total["cache"]["shared"] == 0
    assert total["cache"]["saved_cost"] == pytest.approx(first.cost)
    limiter = total["limiter"]
    assert limiter["waits"] == 1 and limiter["rejections"] == 1
    # the waited request queued for most of the 2 s spacing; the p95 of one sample is that sample
    assert 0.5 < limiter["wait_total"] <= 2.5
    assert limiter["wait_p95"] == pytest.approx(limiter["wait_total"], rel=0.1)
    assert total["tokens"] == {"prompt": 1000 + 4 * 10, "completion": 200 + 4 * 5, "cached_prompt": 400,
                               "reasoning": 50}
    mini = litellm_price("openai", "gpt-4o-mini")
    assert mini is not None
    local = cost_of(Usage(10, 5, 15), Price(1e-6, 2e-6))
    expected = cost_of(Usage(1000, 200, 1200, 400, 50), mini) + cost_of(Usage(10, 5, 15), mini) + 3 * local
    assert first.cost is not None and retried.cost is not None
    assert total["cost"] == pytest.approx(expected, rel=1e-9) and total["cost_unknown"] == 0
    assert total["latency"]["count"] == 5 and total["ttft"]["count"] == 1
    assert 0 < total["latency"]["p50"] <= total["latency"]["p95"]

    by_model = stats["by_model"]
    assert set(by_model) == {"openai/gpt-4o-mini", "local/slow", "local/llama3"}
    assert by_model["openai/gpt-4o-mini"]["requests"] == 5 and by_model["openai/gpt-4o-mini"]["fallbacks"] == 1
    assert by_model["local/slow"]["limiter"]["rejections"] == 1 and by_model["local/slow"]["limiter"]["waits"] == 1
    assert by_model["local/slow"]["responses"] == 2 and by_model["local/llama3"]["responses"] == 1
    assert by_model["local/llama3"]["requests"] == 0  # a fallback target serves, the caller asked for gpt-4o-mini
    assert stats["by_provider"]["local"]["responses"] == 3 and stats["by_provider"]["openai"]["responses"] == 3


async def test_circuit_opens_are_counted(make_client: Callable[..., modelwire.Client], server: FakeServer) -> None:
    client = make_client(middleware=["circuit"], circuit={"failure_threshold": 2, "cooldown": 60})
    server.script(Reply.error(500), Reply.error(500))
    for _ in range(3):
        with pytest.raises(modelwire.ModelwireError):
            await client.acomplete("x", model="openai/gpt-4o-mini")
    stats = client.stats()
    assert server.calls() == 2  # the third was refused by the open circuit
    assert stats["total"]["circuit_opens"] == 1 and stats["by_provider"]["openai"]["circuit_opens"] == 1
    assert stats["total"]["errors"] == {"ServerError": 2}


def test_clients_keep_their_own_stats(make_client: Callable[..., modelwire.Client], server: FakeServer) -> None:
    one, two = make_client(), make_client()
    one.complete("x", model="local/a")
    assert one.stats()["total"]["requests"] == 1 and two.stats()["total"]["requests"] == 0


def test_disabled_stats_plugin_says_so(make_client: Callable[..., modelwire.Client]) -> None:
    client = make_client(disable_plugins=["modelwire.plugins.stats"])
    with pytest.raises(modelwire.ConfigurationError, match="stats"):
        client.stats()


@pytest.mark.parametrize(
    ("section", "problem"),
    [({"backend": "sqlite"}, "path is required"), ({"backend": "redis"}, "url is required"),
     ({"backend": "file"}, "stats.backend"), ({"flush_interval": 0}, "stats.flush_interval"),
     ({"flush": 1}, "stats.flush")],
)
def test_bad_stats_config_fails_at_construction(make_client: Callable[..., modelwire.Client], server: FakeServer,
                                                section: dict[str, Any], problem: str) -> None:
    with pytest.raises(modelwire.ConfigurationError, match=problem):
        make_client(stats=section)
    assert server.calls() == 0


def test_percentiles_come_from_bounded_buckets() -> None:
    buckets: dict[int, float] = {}
    for i in range(1, 1001):  # 1 ms .. 1 s, uniformly
        index = bucket_of(i / 1000)
        buckets[index] = buckets.get(index, 0) + 1
    assert len(buckets) < 60  # 1000 samples, a few dozen counters
    p50, p95 = percentile(buckets, 0.5), percentile(buckets, 0.95)
    assert p50 is not None and p95 is not None
    assert 0.45 < p50 < 0.55 and 0.855 < p95 < 1.045  # within the 10 % a bucket allows
    assert percentile({}, 0.5) is None


# -- across processes --------------------------------------------------------------------------------

WORKER = """
import json, os, sys
import modelwire
from modelwire.plugins.stats import flush
config = json.loads(sys.argv[1])
client = modelwire.Client(config=config)
for i in range(int(sys.argv[2])):
    client.complete(f"q{os.getpid()}-{i}", model="local/llama3")
if sys.argv[3] == "flush":
    assert flush(client)
# otherwise the counters go at exit
"""


def run_workers(config: dict[str, Any], counts: list[int], how: list[str]) -> None:
    env = {**os.environ, "MODELWIRE_DISABLE_ENTRYPOINTS": "1"}
    procs = [
        subprocess.Popen([sys.executable, "-c", WORKER, json.dumps(config), str(n), mode], env=env)
        for n, mode in zip(counts, how, strict=True)
    ]
    assert [p.wait(timeout=180) for p in procs] == [0] * len(procs)


def cli_stats(config_path: Path) -> dict[str, Any]:
    out = subprocess.run(
        [MODELWIRE, "stats", "--json"],
        capture_output=True, text=True, timeout=180, env={**os.environ, "MODELWIRE_CONFIG": str(config_path)},
    )
    assert out.returncode == 0, out.stderr
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def shared_config(modelwire_config: dict[str, Any], stats: dict[str, Any]) -> dict[str, Any]:
    return {**modelwire_config, "stats": stats, "prices": {"local/*": LOCAL_PRICE}}


def write_toml(path: Path, config: dict[str, Any]) -> Path:
    lines = [f'[providers.local]\nkind = "openai_compatible"\napi_base = "{config["providers"]["local"]["api_base"]}"']
    lines.append("[stats]")
    lines += [f"{k} = {json.dumps(v)}" for k, v in config["stats"].items()]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_two_processes_add_up_in_the_shared_store(
    backend: str, modelwire_config: dict[str, Any], server: FakeServer, tmp_path: Path, own_redis: RedisServer
) -> None:
    stats = ({"backend": "sqlite", "path": str(tmp_path / "stats.sqlite")} if backend == "sqlite"
             else {"backend": "redis", "url": own_redis.url})
    config = shared_config(modelwire_config, stats)
    run_workers(config, [3, 4], ["flush", "exit"])
    assert server.calls() == 7
    shown = cli_stats(write_toml(tmp_path / "modelwire.toml", config))
    total = shown["total"]
    assert total["requests"] == 7 and total["responses"] == 7
    assert total["latency"]["count"] == 7  # histogram buckets add up too: the percentiles are of all 7
    tokens = total["tokens"]
    assert tokens["prompt"] == 70 and tokens["completion"] >= 7  # the echo's usage: 10 in, its words out
    assert total["cost"] == pytest.approx((tokens["prompt"] * 1.0 + tokens["completion"] * 2.0) / 1e6, rel=1e-6)
    assert shown["by_model"]["local/llama3"]["requests"] == 7
    text = subprocess.run([MODELWIRE, "stats"], capture_output=True, text=True,
                          timeout=180, env={**os.environ, "MODELWIRE_CONFIG": str(tmp_path / "modelwire.toml")})
    assert "requests 7" in text.stdout and "local/llama3" in text.stdout


def test_forked_child_does_not_count_the_parents_numbers_twice(
    make_client: Callable[..., modelwire.Client], server: FakeServer, tmp_path: Path
) -> None:
    client = make_client(stats={"backend": "sqlite", "path": str(tmp_path / "s.sqlite"), "flush_interval": 60})
    client.complete("parent", model="local/llama3")
    pid = os.fork()
    if pid == 0:  # the child: starts from zero, flushes only its own request
        try:
            child_total = client.stats()["total"]["requests"]
            os._exit(0 if child_total == 0 and flush(client) else 1)
        except BaseException:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert flush(client)
    from modelwire.plugins.stats import recorder_of

    store = recorder_of(client).store
    assert store is not None
    assert store.read().get("total|requests") == 1.0
