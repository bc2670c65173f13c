"""A third-party provider from its own package, found through the ``modelwire`` entry point."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import modelwire
from modelwire import registry

EXAMPLE = Path(__file__).parents[2] / "examples" / "modelwire-echo"


@pytest.fixture
def installed_example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Install the example package the way pip lays it out: the module plus a dist-info with
    its entry point, in a directory put on sys.path (no build tools or network needed)."""
    shutil.copy(EXAMPLE / "modelwire_echo.py", tmp_path)
    info = tmp_path / "modelwire_echo-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: modelwire-echo\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text("[modelwire]\necho = modelwire_echo\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry._entry_points.cache_clear()
    yield tmp_path
    registry._entry_points.cache_clear()
    sys.modules.pop("modelwire_echo", None)


def test_entry_point_provider(installed_example: Path) -> None:
    client = modelwire.Client(config={"providers": {"mirror": {"kind": "echo"}}})
    assert client.registry.origin["modelwire_register_providers:echo"] == "echo"
    assert client.complete("hello world", model="mirror/any").text == "dlrow olleh"
    stream = client.stream("a b c", model="mirror/any")
    assert [c.text for c in stream] == ["c", " b", " a", ""]
    assert stream.get_final_completion().finish_reason == "stop"


def test_entry_points_can_be_switched_off(installed_example: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELWIRE_DISABLE_ENTRYPOINTS", "1")
    with pytest.raises(modelwire.UnknownProviderError, match="'echo' is not registered"):
        modelwire.Client(config={"providers": {"mirror": {"kind": "echo"}}})


def test_broken_entry_point_does_not_break_others(installed_example: Path) -> None:
    (installed_example / "modelwire_echo-0.1.0.dist-info" / "entry_points.txt").write_text(
        "[modelwire]\necho = modelwire_echo\nbroken = does_not_exist_pkg\n"
    )
    registry._entry_points.cache_clear()
    reg = registry.build_registry()
    assert "broken" in reg.failures and "echo" in reg.providers  # the others still load
    with pytest.raises(modelwire.PluginError, match=r"plugin 'broken': ModuleNotFoundError.*disable_plugins"):
        modelwire.Client(config={"providers": {"mirror": {"kind": "echo"}}})
    client = modelwire.Client(config={"providers": {"mirror": {"kind": "echo"}}, "disable_plugins": ["broken"]})
    assert client.complete("ok", model="mirror/x").text == "ko"


def test_cli_lists_the_plugin(installed_example: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "modelwire.cli", "plugins"],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": str(installed_example), "PATH": "/usr/bin:/bin"},
    ).stdout
    assert "echo" in out and "from echo" in out
