"""Start-up cost: importing modelwire, building a client and --help never import litellm."""

from __future__ import annotations

import subprocess
import sys


def run(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()


def test_import_does_not_import_litellm() -> None:
    assert run("import sys, modelwire; print('litellm' in sys.modules)") == "False"


def test_client_construction_does_not_import_litellm() -> None:
    code = (
        "import sys, modelwire; modelwire.Client(config={'providers': {'local': "
        "{'kind': 'openai_compatible', 'api_base': 'http://127.0.0.1:9/v1'}}}); print('litellm' in sys.modules)"
    )
    assert run(code) == "False"


def test_cli_help_does_not_import_litellm() -> None:
    code = (
        "import sys\nfrom modelwire.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print('LITELLM', 'litellm' in sys.modules)"
    )
    assert run(code).splitlines()[-1] == "LITELLM False"


def test_import_touches_no_global_logging_config() -> None:
    code = "import logging, modelwire; print(len(logging.getLogger().handlers), logging.getLogger().level)"
    assert run(code) == run("import logging; print(len(logging.getLogger().handlers), logging.getLogger().level)")
