"""Public names of the plugin packages, imported on first use (``modelwire.lazy``): loading a plugin
for its command (``modelwire --help``) imports no pydantic, and every public name still imports."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

from modelwire.registry import COMMAND_PLUGINS

# In a fresh process: load the plugins as the CLI's parser does, then import every public name.
_SCRIPT = """
import importlib, sys
heavy = ("pydantic", "pyrate_limiter", "dogpile", "structlog", "litellm", "httpx")
packages = [importlib.import_module(name) for name in sys.argv[1:]]
print(sorted({m.split(".")[0] for m in sys.modules} & set(heavy)))
for package in packages:
    for name in package.__all__:
        value = getattr(package, name)
        assert value is not None, (package.__name__, name)
print(sorted({m.split(".")[0] for m in sys.modules} & {"pydantic", "pyrate_limiter", "dogpile"}))
"""


def test_plugin_packages_import_nothing_heavy_until_a_public_name_is_used() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _SCRIPT, *COMMAND_PLUGINS], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    loaded, after = proc.stdout.splitlines()
    assert loaded == "[]"
    assert after == "['dogpile', 'pydantic', 'pyrate_limiter']"  # the names are the real, heavy ones


@pytest.mark.parametrize("package", COMMAND_PLUGINS)
def test_every_public_name_is_the_one_its_module_defines(package: str) -> None:
    module = importlib.import_module(package)
    for name in module.__all__:
        value = getattr(module, name)
        home = sys.modules[getattr(value, "__module__", package)]  # a str constant: the package's
        assert home.__name__.startswith(package) and getattr(home, name) is value, (name, home.__name__)
    with pytest.raises(AttributeError, match=f"module '{package}' has no attribute 'NoSuchName'"):
        module.NoSuchName  # noqa: B018


def test_the_cache_store_policy_hook_answers_as_the_policy() -> None:
    """``modelwire_cache_should_store`` imports the policy when first called: a cut answer is
    refused, a whole one stored, and the package's public ``default_refusal`` is the policy."""
    import modelwire.plugins.cache as cache
    from modelwire.plugins.cache.middleware import default_refusal as policy
    from modelwire.types import Completion, Request

    request = Request("openai", "m", [{"role": "user", "content": "q"}])
    cut = Completion("x", "length", "m", "openai")
    assert cache.default_refusal is policy and policy(request, cut) == "length"
    assert cache.modelwire_cache_should_store(request, cut) is False
    assert cache.modelwire_cache_should_store(request, Completion("x", "stop", "m", "openai")) is True
