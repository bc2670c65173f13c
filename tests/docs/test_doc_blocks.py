"""Every code block of the guides runs: a doc's ```python blocks are joined in order and run in one
fresh interpreter, against a live loopback server.

- ``http://127.0.0.1:8000`` in a block is replaced by the live FakeServer's address, so the docs
  can show the address ``python -m modelwire.testing --port 8000`` serves.
- ``redis://127.0.0.1:6379`` is replaced by a throwaway redis-server's address (started only for
  a doc that names it).
- A fenced block right after ``<!-- file: NAME -->`` is written to ``NAME`` in the working
  directory instead of being run (a ``modelwire.toml``, an app module...).
- A ```python block right after ``<!-- not run -->`` is shown only (say why in the text).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from modelwire.testing import FakeServer, RedisServer
from tests.conftest import start_redis

DOCS = Path(__file__).resolve().parents[2] / "docs"

#: The guides whose blocks must run.
GUIDES = ["logging.md", "writing-plugins.md", "embedding.md", "tools.md"]

_BLOCK = re.compile(r"(?:<!--\s*(file|not run):?\s*([^>]*?)\s*-->\s*\n)?```(\w+)\n(.*?)\n```", re.S)


def doc_blocks(text: str) -> tuple[str, dict[str, str]]:
    """The runnable script of a doc and the files it declares."""
    script: list[str] = []
    files: dict[str, str] = {}
    for marker, name, lang, body in _BLOCK.findall(text):
        if marker == "file":
            files[name] = body + "\n"
        elif lang == "python" and marker != "not run":
            script.append(body)
    return "\n\n".join(script), files


@pytest.mark.parametrize("guide", GUIDES)
def test_guide_blocks_run(guide: str, tmp_path: Path) -> None:
    script, files = doc_blocks((DOCS / guide).read_text())
    assert script, f"{guide} has no python block"
    needs_redis = "redis://127.0.0.1:6379" in script + "".join(files.values())
    redis: RedisServer | None = start_redis() if needs_redis else None
    try:
        with FakeServer() as server:
            live = {"http://127.0.0.1:8000": server.url.rstrip("/")}
            if redis is not None:
                live["redis://127.0.0.1:6379"] = redis.url.rsplit("/", 1)[0]

            def localize(text: str) -> str:
                for shown, real in live.items():
                    text = text.replace(shown, real)
                return text

            for name, body in files.items():
                (tmp_path / name).write_text(localize(body))
            (tmp_path / "doc_script.py").write_text(localize(script))
            env = {**os.environ, "OPENAI_API_KEY": "sk-doc-test", "AZURE_OPENAI_API_KEY": "sk-doc-test"}
            env.pop("MODELWIRE_CONFIG", None)
            done = subprocess.run(
                [sys.executable, "doc_script.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
            )
    finally:
        if redis is not None:
            redis.stop()
    assert done.returncode == 0, f"{guide} failed:\n{done.stdout}\n{done.stderr}"
