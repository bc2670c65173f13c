"""Shared budgets: two real OS processes on one SQLite file and on a real redis-server, a
forked child, a store that is down, and ``modelwire budget`` reading what other processes spent."""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import modelwire
from modelwire.cli import main
from modelwire.errors import BudgetExceededError, BudgetUnavailableError
from modelwire.testing import FakeServer, RedisServer, capture_events
from tests.conftest import SENTINEL_KEY
from tests.forking import run_forked
from tests.plugins.budget.test_budget import ESTIMATE, MODEL, USED, tokens_budget

MakeClient = Callable[..., modelwire.Client]


def _worker(url: str, section: dict[str, Any], start: Any, results: Any) -> None:
    """One OS process: its own Client, calling until its budget refuses."""
    os.environ["OPENAI_API_KEY"] = SENTINEL_KEY
    config = {"middleware": ["budget"], "providers": {"openai": {"api_base": url}}, "budget": section}
    client = modelwire.Client(config=config)
    client.complete("warm up", model="openai/warmup")  # not matched by the limit: litellm's first-call cost
    start.wait(60)
    answered, refused = 0, None
    for _ in range(20):
        try:
            client.complete("x", model=MODEL, max_tokens=20)
            answered += 1
        except BudgetExceededError as exc:
            refused = type(exc).__name__
            break
    client.close()
    results.put((answered, refused))


def _shared(section: dict[str, Any]) -> dict[str, Any]:
    return {**section, "limits": [{"match": "openai/gpt-4o-mini", "tokens": 100, "period": "day"}]}


def _two_processes(server: FakeServer, section: dict[str, Any], make_client: MakeClient) -> None:
    ctx = multiprocessing.get_context("spawn")
    start, results = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(server.openai_url, section, start, results)) for _ in range(2)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + 120
    while sum(1 for r in server.requests if r.json["model"] == "warmup") < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    start.set()
    reports = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(10)
    # One cap for both: admitted while spent + reserved + 25 <= 100 with 12 spent per call, so the
    # one that is refused last sees every call settled: 7 calls in all, whatever the interleaving.
    assert sum(answered for answered, _ in reports) == 7
    assert [refused for _, refused in reports] == ["BudgetExceededError"] * 2
    assert sum(1 for r in server.requests if r.json["model"] == "gpt-4o-mini") == 7
    # A third client on the same store is refused too, before the network.
    client = make_client(middleware=["budget"], budget=section)
    with pytest.raises(BudgetExceededError) as refused:
        client.complete("x", model=MODEL, max_tokens=20)
    assert refused.value.spent == 7 * USED
    assert sum(1 for r in server.requests if r.json["model"] == "gpt-4o-mini") == 7


@pytest.mark.slow
def test_two_processes_share_one_sqlite_budget(server: FakeServer, tmp_path: Path, make_client: MakeClient) -> None:
    _two_processes(server, _shared({"backend": "sqlite", "path": str(tmp_path / "budget.sqlite")}), make_client)


@pytest.mark.slow
def test_two_processes_share_one_redis_budget(server: FakeServer, redis_server: RedisServer,
                                              make_client: MakeClient) -> None:
    section = {"backend": "redis", "url": redis_server.url, "key_prefix": f"two:{time.time_ns()}:"}
    _two_processes(server, _shared(section), make_client)


def _child_calls(client: modelwire.Client) -> dict[str, Any]:
    outcomes = []
    for _ in range(3):
        try:
            client.complete("x", model=MODEL, max_tokens=20)
            outcomes.append("ok")
        except BudgetExceededError:
            outcomes.append("refused")
    client.close()
    return {"outcomes": outcomes}


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_a_forked_child_shares_the_budget(make_client: MakeClient, server: FakeServer, tmp_path: Path,
                                          redis_server: RedisServer, backend: str) -> None:
    section = {"backend": "sqlite", "path": str(tmp_path / "b.sqlite")} if backend == "sqlite" else \
        {"backend": "redis", "url": redis_server.url, "key_prefix": f"fork:{time.time_ns()}:"}
    client = make_client(middleware=["budget"], budget=tokens_budget(3 * USED + ESTIMATE - 1, **section))
    client.complete("x", model=MODEL, max_tokens=20)  # the parent's connection exists before the fork
    report = run_forked(lambda: _child_calls(client))
    # The child opened its own connection and counted on the shared store: 2 more, then refused.
    assert report == {"outcomes": ["ok", "ok", "refused"]}
    with pytest.raises(BudgetExceededError) as refused:
        client.complete("x", model=MODEL, max_tokens=20)
    assert refused.value.spent == 3 * USED and server.calls() == 3
    client.close()


def test_a_store_that_is_down(make_client: MakeClient, server: FakeServer, own_redis: RedisServer) -> None:
    url = own_redis.url
    closed = make_client(middleware=["budget"], budget=tokens_budget(1000, backend="redis", url=url, timeout=0.5))
    opened = make_client(middleware=["budget"],
                         budget=tokens_budget(1000, backend="redis", url=url, timeout=0.5, on_backend_error="open"))
    closed.complete("x", model=MODEL, max_tokens=20)
    own_redis.stop()
    with capture_events() as logs:
        with pytest.raises(BudgetUnavailableError, match=r"on_backend_error = \"closed\""):
            closed.complete("x", model=MODEL, max_tokens=20)
        assert server.calls() == 1  # refused before the network
        assert opened.complete("x", model=MODEL, max_tokens=20).text  # sent without a cap, said so
    assert server.calls() == 2
    stages = [(e["stage"], e["policy"]) for e in logs if e["event"] == "budget.backend_error"]
    assert stages == [("reserve", "closed"), ("reserve", "open")]


def test_the_budget_command_shows_every_process_spend(make_client: MakeClient, server: FakeServer,
                                                      tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                      modelwire_config: dict[str, Any]) -> None:
    section = {"backend": "sqlite", "path": str(tmp_path / "b.sqlite"),
               "limits": [{"match": "openai/*", "usd": 5.0, "period": "month"},
                          {"match": "openai/*", "tokens": 1000, "period": "day", "scope": "namespace"}]}
    client = make_client(middleware=["budget"], budget=section)
    client.complete("x", model=MODEL, max_tokens=20, options={"budget": {"namespace": "tenant-42"}})
    client.close()
    config = tmp_path / "modelwire.toml"
    config.write_text(_toml({**modelwire_config, "middleware": ["budget"], "budget": section}))
    assert main(["--config", str(config), "budget", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    rows = {(row["unit"], row["subject"]): row for row in report["usage"]}
    assert set(rows) == {("usd", "*"), ("tokens", "tenant-42")}
    assert rows[("tokens", "tenant-42")]["spent"] == USED and rows[("usd", "*")]["spent"] > 0
    assert rows[("tokens", "tenant-42")]["period"] == "day" and rows[("usd", "*")]["limit"] == 5.0
    assert main(["--config", str(config), "budget"]) == 0
    text = capsys.readouterr().out
    assert "tenant-42" in text and "12 of 1000" in text and "resets" in text and "UTC" in text


def _toml(config: dict[str, Any]) -> str:
    """Enough TOML for this config: tables of scalars, and lists of inline tables."""
    def value(v: Any) -> str:
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + " }"
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return json.dumps(v)

    lines = [f"{k} = {value(v)}" for k, v in config.items() if not isinstance(v, dict)]
    for name, table in config.items():
        if isinstance(table, dict) and name != "providers":
            lines += [f"[{name}]", *(f"{k} = {value(v)}" for k, v in table.items())]
    for name, provider in config.get("providers", {}).items():
        lines += [f"[providers.{name}]", *(f"{k} = {value(v)}" for k, v in provider.items())]
    return "\n".join(lines) + "\n"
