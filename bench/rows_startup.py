"""Rows 1 and 2: what a fresh process pays: ``import modelwire`` and ``modelwire --help`` next to
``import litellm``, and the first call (with and without ``awarmup()``) next to the tenth.

Every figure comes from its own fresh subprocess; the variants alternate run by run so that load
on the machine hits all alike, and the median over runs is reported.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time

from bench.bench_guest import _FIRST_CALLS, _run
from bench.report import Budget, Row

__all__ = ["first_call_rows", "import_rows"]

_IMPORT = "import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
# What `modelwire --help` runs, timed the same way as the imports (interpreter start-up left out: it
# is not modelwire's, and on a loaded machine it is noise of the size of the whole budget).
_HELP = """import sys, time
t = time.perf_counter()
from modelwire.cli import main
try:
    main(["--help"])
except SystemExit:
    pass
print(time.perf_counter() - t)"""


def _python(code: str) -> tuple[float, str]:
    """(wall seconds of the whole process, its stdout)."""
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return time.perf_counter() - start, out.stdout


def import_rows(runs: int) -> list[Row]:
    """Row 1: ``import modelwire`` and ``modelwire --help`` (what the console script runs: import
    the CLI, print the help) against ``import litellm`` (budget 1/20), each timed inside its own
    fresh process; the whole ``--help`` process's wall time goes in the note."""
    samples: dict[str, list[float]] = {"modelwire": [], "litellm": [], "help": [], "help_process": []}
    script = shutil.which("modelwire", path=os.path.dirname(sys.executable))
    for _ in range(runs):
        samples["modelwire"].append(float(_python(_IMPORT.format(module="modelwire"))[1]))
        samples["litellm"].append(float(_python(_IMPORT.format(module="litellm"))[1]))
        samples["help"].append(float(_python(_HELP)[1].strip().splitlines()[-1]))
        if script:
            start = time.perf_counter()
            subprocess.run([script, "--help"], capture_output=True, check=True)
            samples["help_process"].append(time.perf_counter() - start)
    p50 = {k: statistics.median(v) for k, v in samples.items() if v}
    budget = Budget("<=", 0.05)
    note = f"median of {runs} fresh processes"
    return [
        Row("1a", "import modelwire (in-process time)", p50["modelwire"], p50["litellm"], "ms", "import litellm",
            budget, note=note),
        Row("1b", "`modelwire --help` (in-process time)", p50["help"], p50["litellm"], "ms", "import litellm", budget,
            note=note + (f"; whole `modelwire --help` process {p50['help_process'] * 1e3:.0f} ms wall"
                         if "help_process" in p50 else "")),
    ]


def first_call_rows(url: str, runs: int) -> list[Row]:
    """Row 2: first call of a fresh process after ``awarmup()`` vs its tenth (budget 2x, issue 10),
    and without warm-up (information: it includes importing litellm, off the event loop)."""
    results: dict[str, list[dict[str, list[float]]]] = {"cold": [], "warm": []}
    for _ in range(runs):
        for variant in results:
            results[variant].append(json.loads(_run(_FIRST_CALLS, url, variant)))
    rows = []
    for variant, label, budget in (("warm", "after `await client.awarmup()`", Budget("<=", 2.0)),
                                   ("cold", "without warm-up (imports litellm)", None)):
        first = statistics.median(r["times"][0] for r in results[variant])
        tenth = statistics.median(r["times"][9] for r in results[variant])
        rows.append(Row("2a" if variant == "warm" else "2b", f"first call of a fresh process, {label}", first,
                        tenth, "ms", "tenth call, same process", budget, note=f"median of {runs} processes"))
    return rows
