"""modelwire as a guest of a host that runs more than one event loop at a time."""

from __future__ import annotations

import json
from pathlib import Path

from modelwire.testing import FakeServer

from .test_guest import _SETUP, _run


def test_host_mixing_sync_and_async_calls_sees_nothing(server: FakeServer, tmp_path: Path) -> None:
    """A host alternating ``await client.acomplete()`` on its loop with ``client.complete()`` (the
    portal's loop) while both loops live: litellm moves its logging worker from loop to loop and
    drops the old task pending; nothing may print "Task was destroyed but it is pending!"."""
    out = tmp_path / "out.json"
    proc = _run(
        _SETUP
        + f"""
import gc
client = modelwire.Client(config=CONFIG)
async def main():
    texts = []
    for i in range(4):
        texts.append((await client.acomplete(f"a{{i}}", model="openai/m")).text)
        texts.append((await asyncio.to_thread(client.complete, f"s{{i}}", model="local/m")).text)
        gc.collect()
    async with client.astream("as", model="openai/m") as s:
        texts.append("".join([c.text async for c in s]))
    def sync_stream():
        with client.stream("ss", model="azure/m") as s:
            return "".join(c.text for c in s)
    texts.append(await asyncio.to_thread(sync_stream))
    gc.collect()
    return texts
texts = asyncio.run(main())
client.close()
gc.collect()
json.dump(texts, open({str(out)!r}, "w"))
""",
        server,
        "-W",
        "default",
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    assert proc.stderr == ""
    expected = [f"echo: {kind}{i}" for i in range(4) for kind in "as"] + ["echo: as", "echo: ss"]
    assert json.loads(out.read_text()) == expected
