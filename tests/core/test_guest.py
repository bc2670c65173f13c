"""modelwire as a guest in a host process (issue 10 sections 2-4): no cold-start stall, no leaked
descriptors, nothing printed that the host did not ask for. Every test runs a fresh process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from modelwire.testing import FakeServer, Pause, Reply

from ..conftest import SENTINEL_KEY

_TIMEOUT = 180  # a fresh process imports litellm: 3-25 s on a busy 2-core machine


def _run(source: str, server: FakeServer | None, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "OPENAI_API_KEY": SENTINEL_KEY,
        "AZURE_OPENAI_API_KEY": SENTINEL_KEY,
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        **env,
    }
    if server is not None:
        environ["MW_URL"] = server.url
    cmd = [sys.executable, *args] if not source else [sys.executable, "-c", textwrap.dedent(source)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=_TIMEOUT, env=environ)


_SETUP = """
import asyncio, json, os, sys
import modelwire
URL = os.environ["MW_URL"]
CONFIG = {
    "middleware": [],
    "providers": {
        "openai": {"api_base": URL + "/v1"},
        "azure": {"api_base": URL, "api_version": "2024-10-21"},
        "local": {"kind": "openai_compatible", "api_base": URL + "/v1"},
    },
}
"""


def test_first_call_does_not_stall_the_event_loop(server: FakeServer, tmp_path: Path) -> None:
    """While one task makes the first call (litellm imported then), a ticker on the same loop
    keeps running. The import used to run on the loop: one gap as long as the whole first call
    (7-37 s here). Off the loop, the importing thread still holds the GIL in stretches of C code
    (0.2-0.8 s measured on a loaded 2-core machine, more under heavier load), so the bound is
    relative: no gap above a quarter of the first call, and the ticker kept ticking."""
    out = tmp_path / "out.json"
    proc = _run(
        _SETUP
        + f"""
import time
assert "litellm" not in sys.modules
async def main():
    client = modelwire.Client(config=CONFIG)
    gaps = []
    done = asyncio.Event()
    async def ticker():
        last = time.perf_counter()
        while not done.is_set():
            await asyncio.sleep(0.01)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now
    tick = asyncio.create_task(ticker())
    start = time.perf_counter()
    text = (await client.acomplete("hi", model="openai/m")).text
    first = time.perf_counter() - start
    done.set()
    await tick
    await client.aclose()
    json.dump({{"text": text, "first": first, "max_gap": max(gaps), "ticks": len(gaps)}}, open({str(out)!r}, "w"))
asyncio.run(main())
""",
        server,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert result["text"] == "echo: hi"
    assert result["first"] > 1.0, result  # the cold import did happen during the call
    assert result["max_gap"] < result["first"] / 4, result
    assert result["ticks"] >= 10, result


def test_after_warmup_the_first_calls_import_nothing(server: FakeServer, tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    proc = _run(
        _SETUP
        + f"""
client = modelwire.Client(config=CONFIG)
client.warmup()
client.warmup()  # idempotent
before = set(sys.modules)
texts = []
for model in ("openai/m", "azure/m", "local/m"):
    texts.append(client.complete("whole", model=model).text)
    with client.stream("streamed", model=model) as s:
        texts.append("".join(c.text for c in s))
async def main():
    texts.append((await client.acomplete("async", model="openai/m")).text)
    await client.aclose()
asyncio.run(main())
json.dump({{"texts": texts, "new": sorted(set(sys.modules) - before)}}, open({str(out)!r}, "w"))
""",
        server,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert result["texts"] == ["echo: whole", "echo: streamed"] * 3 + ["echo: async"]
    assert not result["new"], result["new"]


def test_after_warmup_priced_models_load_no_tokenizer(server: FakeServer, tmp_path: Path) -> None:
    """litellm counts a stream's tokens with tiktoken for a model it prices; loading the gpt-4o
    family's encoding (o200k_base) took 0.8-3 s on the event loop, right after the first stream
    ended. ``warmup()`` loads it, so no call loads an encoding afterwards."""
    out = tmp_path / "out.json"
    proc = _run(
        _SETUP
        + f"""
client = modelwire.Client(config=CONFIG)
client.warmup()
import tiktoken.registry
before = sorted(tiktoken.registry.ENCODINGS)
texts = []
for model in ("openai/gpt-4o", "openai/gpt-4o-mini", "openai/gpt-3.5-turbo", "azure/gpt-4o"):
    with client.stream("streamed", model=model) as s:
        texts.append("".join(c.text for c in s))
    texts.append(client.complete("whole", model=model).text)
client.close()
json.dump({{"texts": texts, "before": before, "after": sorted(tiktoken.registry.ENCODINGS)}}, open({str(out)!r}, "w"))
""",
        server,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert result["texts"] == ["echo: streamed", "echo: whole"] * 4
    assert result["after"] == result["before"], result


def test_preload_imports_in_the_background(server: FakeServer, tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    proc = _run(
        _SETUP
        + f"""
import threading, time
client = modelwire.Client(config={{**CONFIG, "preload": True}})
names = [t.name for t in threading.enumerate()]
deadline = time.monotonic() + 120
while "modelwire-preload" in [t.name for t in threading.enumerate()] and time.monotonic() < deadline:
    time.sleep(0.05)
before = set(sys.modules)
text = client.complete("hi", model="openai/m").text
json.dump({{"names": names, "text": text, "new": sorted(set(sys.modules) - before)}}, open({str(out)!r}, "w"))
""",
        server,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert "modelwire-preload" in result["names"]
    assert result["text"] == "echo: hi"
    assert not result["new"], result["new"]


def test_unconfigured_host_sees_nothing_and_descriptors_stay_flat(server: FakeServer, tmp_path: Path) -> None:
    """Ten asyncio.run rounds (one call each, a failing call and a first-token timeout among
    them): the descriptor count stays flat, and stdout/stderr stay empty, exit included (no
    litellm banner, no "Task was destroyed", no "coroutine ... was never awaited")."""
    server.script(Reply.error(500), match="failing")
    server.script(Reply(events=[Pause(3.0)], ending="eof"), match="slow")
    out = tmp_path / "out.json"
    proc = _run(
        _SETUP
        + f"""
import gc
client = modelwire.Client(config=CONFIG)
def fds():
    return len(os.listdir("/proc/self/fd"))
async def one_round(i):
    if i == 3:
        try:
            await client.acomplete("x", model="openai/failing")
        except modelwire.ServerError:
            return "failed"
    if i == 5:
        try:
            opts = {{"stream": {{"first_token_timeout": 0.3}}}}
            async with client.astream("x", model="openai/slow", options=opts) as s:
                async for _ in s:
                    pass
        except modelwire.StreamIdleTimeoutError:
            return "timeout"
    model = ("openai/m", "azure/m", "local/m")[i % 3]
    return (await client.acomplete(f"r{{i}}", model=model)).text
counts, results = [], []
for i in range(10):
    results.append(asyncio.run(one_round(i)))
    gc.collect()
    counts.append(fds())
client.close()
json.dump({{"counts": counts, "results": results}}, open({str(out)!r}, "w"))
""",
        server,
        "-W",
        "default",  # make RuntimeWarnings visible if there are any
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    assert proc.stderr == ""
    result = json.loads(out.read_text())
    assert result["results"][3] == "failed" and result["results"][5] == "timeout"
    counts = result["counts"]
    # the first rounds may open process-wide files once (imports); from then on nothing grows
    assert max(counts[2:]) - min(counts[2:]) <= 1, counts


def test_cancelled_calls_leave_no_coroutine_unawaited(server: FakeServer, tmp_path: Path) -> None:
    """Callers cancelled at every point of a call (most of them while litellm builds the request in
    its worker thread, some while the request is on the wire): no "coroutine ... was never
    awaited", no request sent after its caller left, and the next call works."""
    server.script(*[Reply(body=Reply.completion("late").body, delay=1.0)] * 60, match="slow")
    out = tmp_path / "out.json"
    proc = _run(
        _SETUP
        + f"""
import gc
client = modelwire.Client(config=CONFIG)
async def main():
    await client.awarmup()
    cancelled = 0
    for i in range(60):
        task = asyncio.ensure_future(
            client.acomplete(f"c{{i}}", model=("openai/slow", "azure/slow", "local/slow")[i % 3])
            if i % 4 else client.aembed(["e"], model="openai/emb")
        )
        for _ in range(i % 5):
            await asyncio.sleep(0)
        await asyncio.sleep((0.0, 0.001, 0.3)[i % 3])
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            cancelled += 1
    await asyncio.sleep(1.0)  # abandoned calls reach the transport and end there
    text = (await client.acomplete("after", model="openai/m")).text
    await client.aclose()
    return cancelled, text
cancelled, text = asyncio.run(main())
gc.collect()
json.dump({{"cancelled": cancelled, "text": text}}, open({str(out)!r}, "w"))
""",
        server,
        "-W",
        "default",
    )
    assert proc.returncode == 0, proc.stderr
    assert "never awaited" not in proc.stderr, proc.stderr
    result = json.loads(out.read_text())
    assert result["text"] == "echo: after" and result["cancelled"] >= 55  # 5 embeddings may end in 0.3 s


def test_host_at_info_sees_no_litellm_line(server: FakeServer) -> None:
    server.script(Reply.error(500), match="failing")
    proc = _run(
        """
import logging
logging.basicConfig(level=logging.INFO, format="HOST %(name)s %(levelname)s %(message)s")
"""
        + _SETUP
        + """
client = modelwire.Client(config=CONFIG)
client.complete("a", model="openai/m")
with client.stream("b", model="local/m") as s:
    list(s)
try:
    client.complete("c", model="openai/failing")
except modelwire.ServerError:
    pass
client.close()
""",
        server,
    )
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    assert lines, "modelwire's own events should show at INFO"
    assert all(line.startswith("HOST modelwire") for line in lines), lines
    assert "LiteLLM" not in proc.stdout + proc.stderr
    assert "Give Feedback" not in proc.stdout + proc.stderr


def _cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    code = f"import sys; from modelwire.cli import main; sys.exit(main({list(args)!r}))"
    return _run("", None, "-X", "importtime", "-c", code, **env)


def _imported_litellm(stderr: str) -> bool:
    lines = stderr.splitlines()
    return any(line.startswith("import time:") and line.split("|")[-1].strip() == "litellm" for line in lines)


@pytest.mark.parametrize(
    "args",
    [
        ["complete", "x", "--model", "gpt-4o"],  # no provider prefix
        ["complete", "x", "--model", "nosuch/gpt-4o"],  # unknown provider
        ["complete", "", "--model", "openai/gpt-4o"],  # empty prompt
    ],
)
def test_cli_rejects_bad_input_without_importing_litellm(args: list[str]) -> None:
    proc = _cli(*args)
    assert proc.returncode == 2, proc.stderr
    assert "error:" in proc.stderr
    assert "import time:" in proc.stderr  # the check below can see imports
    assert not _imported_litellm(proc.stderr)


def test_cli_missing_key_fails_without_importing_litellm() -> None:
    proc = _cli("complete", "x", "--model", "openai/gpt-4o", OPENAI_API_KEY="")
    assert proc.returncode == 2, proc.stderr
    assert "OPENAI_API_KEY" in proc.stderr
    assert not _imported_litellm(proc.stderr)
