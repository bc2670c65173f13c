"""Every code block of the guides runs: a doc's ```python blocks are joined in order and run in one
fresh interpreter, against a live loopback server.

- ``http://127.0.0.1:8000`` in a block is replaced by the live FakeServer's address, so the docs
  can show the address ``python -m modelwire.testing --port 8000`` serves.
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

from modelwire.testing import FakeServer

DOCS = Path(__file__).resolve().parents[2] / "docs"

#: The guides whose blocks must run.
GUIDES = ["logging.md"]

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
    with FakeServer() as server:
        base = server.url.rstrip("/")
        for name, body in files.items():
            (tmp_path / name).write_text(body.replace("http://127.0.0.1:8000", base))
        (tmp_path / "doc_script.py").write_text(script.replace("http://127.0.0.1:8000", base))
        env = {**os.environ, "OPENAI_API_KEY": "sk-doc-test", "AZURE_OPENAI_API_KEY": "sk-doc-test"}
        env.pop("MODELWIRE_CONFIG", None)
        done = subprocess.run(
            [sys.executable, "doc_script.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
        )
    assert done.returncode == 0, f"{guide} failed:\n{done.stdout}\n{done.stderr}"
