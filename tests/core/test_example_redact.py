"""examples/modelwire-redact, installed the way pip lays it out, passes its own test suite."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).parents[2] / "examples" / "modelwire-redact"


def install(target: Path) -> None:
    """The module plus a dist-info with its entry point, in a directory put on the path (no
    build tools or network needed), as tests/core/test_entrypoints.py does for modelwire-echo."""
    shutil.copy(EXAMPLE / "modelwire_redact.py", target)
    info = target / "modelwire_redact-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: modelwire-redact\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text("[modelwire]\nredact = modelwire_redact\n")


def test_redact_example_passes_its_own_tests(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    install(site)
    env = {**os.environ, "PYTHONPATH": str(site)}
    env.pop("MODELWIRE_DISABLE_ENTRYPOINTS", None)
    env.pop("MODELWIRE_CONFIG", None)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(EXAMPLE), str(EXAMPLE)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert " passed" in done.stdout and "failed" not in done.stdout and "skipped" not in done.stdout
