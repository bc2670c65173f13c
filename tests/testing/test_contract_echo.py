"""examples/modelwire-echo runs the provider contract against itself (its own pytest run, as its
author would), and the contract catches a provider that breaks it (negative control)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

ECHO = Path(__file__).parents[2] / "examples" / "modelwire-echo"


def test_echo_package_passes_the_contract() -> None:
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider"], cwd=ECHO,
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "5 passed, 17 skipped" in result.stdout  # the wire checks are skipped, by declaration
    assert "does not declare the capability wire" in result.stdout


BROKEN = '''
import modelwire
from modelwire import Chunk, Completion, Provider, hookimpl
from modelwire.testing.contract import ProviderContract


class Sloppy(Provider):
    """Forgets the finish_reason and streams text that differs from its whole answer."""

    def complete(self, request):
        return Completion(text="olleh", finish_reason=None, model=request.model, provider=self.name)

    def stream(self, request):
        yield Chunk(text="something else")
        yield Chunk(finish_reason="stop")


class Plugin:
    @hookimpl
    def modelwire_register_providers(self, register):
        register("sloppy", Sloppy)


class TestSloppy(ProviderContract):
    provider_config = {"kind": "sloppy"}
    plugins = (Plugin(),)
    capabilities = frozenset()

    def expected_text(self, prompt):
        return prompt[::-1]
'''


def test_a_broken_provider_fails_the_contract(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_sloppy=BROKEN)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed") == 4 and outcomes.get("passed") == 1, result.stdout.str()
    result.stdout.fnmatch_lines(["*a finished completion names its finish_reason*"])
