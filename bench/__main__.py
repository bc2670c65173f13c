"""``python -m bench``: every figure of issue 14 side by side in one run, as a table with budgets.

Each row is a ratio against a reference measured in the same run (bare litellm, the openai SDK, a
floor chain built here, a bare Redis GET, ...), so that it holds from machine to machine where
absolute figures do not. The table goes to stdout (Markdown), the same rows to JSON.

    .venv/bin/python -m bench                  # about 10-15 minutes on a busy 2-core machine
    .venv/bin/python -m bench --quick          # fewer iterations: a couple of minutes
    .venv/bin/python -m bench --only hit,redis --json /tmp/bench.json

The exit code is 0 even when rows fail (it is a report) unless ``--strict``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

if TYPE_CHECKING:
    from bench.report import Row

_DEFAULT_JSON = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "latest.json")


@dataclass(frozen=True)
class Plan:
    """Iteration counts of one run (``--quick`` scales them down)."""

    quick: bool

    def pick(self, full: int, quick: int) -> int:
        return quick if self.quick else full


def _import(plan: Plan, base: str) -> list[Row]:
    from bench.rows_startup import import_rows

    return import_rows(plan.pick(5, 2))


def _first_call(plan: Plan, base: str) -> list[Row]:
    from bench.rows_startup import first_call_rows

    return first_call_rows(base.removesuffix("/v1"), plan.pick(3, 1))


def _calls(plan: Plan, base: str) -> list[Row]:
    from bench.rows_calls import call_rows

    return call_rows(base, plan.pick(300, 60), plan.pick(10, 3))


def _hit(plan: Plan, base: str) -> list[Row]:
    from bench.rows_cache import hit_rows

    return hit_rows(base, plan.pick(20_000, 3_000))


def _redis(plan: Plan, base: str) -> list[Row]:
    from bench.rows_cache import redis_rows

    return redis_rows(base, plan.pick(3_000, 500))


def _stampede(plan: Plan, base: str) -> list[Row]:
    from bench.rows_cache import stampede_rows

    return stampede_rows(plan.pick(5, 2))


def _stream(plan: Plan, base: str) -> list[Row]:
    from bench.rows_stream import stream_rows

    return stream_rows(base, 100, plan.pick(3, 1))


def _rss(plan: Plan, base: str) -> list[Row]:
    from bench.rows_stream import rss_rows

    return rss_rows(base, plan.pick(100_000, 20_000))


def _limiter(plan: Plan, base: str) -> list[Row]:
    from bench.rows_calls import limiter_rows

    return limiter_rows(base, plan.pick(1000, 200), 1200)  # 600 calls (3 s) read 180-191 rps: too short


def _scaling(plan: Plan, base: str) -> list[Row]:
    from bench.rows_scaling import scaling_rows

    return scaling_rows(base, 0.3 if plan.quick else 1.0)


#: name -> (the issue's row numbers and other names that select it, what it runs)
GROUPS: dict[str, tuple[set[str], Callable[[Plan, str], list[Row]]]] = {
    "import": ({"1", "help"}, _import),
    "first-call": ({"2", "warmup"}, _first_call),
    "miss": ({"3", "direct"}, _calls),
    "hit": ({"4"}, _hit),
    "redis": ({"5"}, _redis),
    "stampede": ({"6"}, _stampede),
    "stream": ({"7"}, _stream),
    "rss": ({"7"}, _rss),
    "limiter": ({"8"}, _limiter),
    "scaling": ({"9"}, _scaling),
}


def _selected(only: str | None) -> list[str]:
    if not only:
        return list(GROUPS)
    wanted = {w.strip() for w in only.split(",") if w.strip()}
    names = [name for name, (aliases, _) in GROUPS.items() if name in wanted or aliases & wanted]
    known = set(GROUPS).union(*(aliases for aliases, _ in GROUPS.values()))
    unknown = sorted(wanted - known)
    if unknown or not names:
        raise SystemExit(f"--only: unknown row {', '.join(unknown) or only!r}; rows: {', '.join(GROUPS)} or 1-9")
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations (a couple of minutes)")
    parser.add_argument("--only", metavar="ROW[,ROW]",
                        help=f"run only these rows: {', '.join(GROUPS)} (or the issue's numbers 1-9; 'direct' = miss)")
    parser.add_argument("--json", default=_DEFAULT_JSON, help="where to write the rows as JSON (default: %(default)s)")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a row fails or errs")
    args = parser.parse_args(argv)
    names = _selected(args.only)

    from bench.report import Row, table, to_json

    # The bench is the application here: litellm's own warnings (a 1,000-stream queue for its
    # pool) are not part of any figure. modelwire's logging is left as shipped.
    logging.getLogger("LiteLLM").setLevel(logging.ERROR)
    started, load = time.time(), os.getloadavg()
    print(f"python -m bench: {', '.join(names)}{' (quick)' if args.quick else ''}; {os.cpu_count()} CPUs, "
          f"load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", flush=True)
    plan = Plan(args.quick)
    proc, base = None, ""
    if names != ["import"]:
        from bench.bench_stream import start_server

        proc, base = start_server()
    rows: list[Row] = []
    try:
        for name in names:
            t = time.perf_counter()
            try:
                got = GROUPS[name][1](plan, base)
            except Exception as exc:  # one broken row must not lose the others
                traceback.print_exc()
                got = [Row(name, f"{name}: the measurement failed", None, None, "", "", None,
                           note=f"{type(exc).__name__}: {str(exc)[:120]}", status="ERROR")]
            rows += got
            print(f"\n[{name}: {time.perf_counter() - t:.0f} s]\n{table(got)}", flush=True)
    finally:
        if proc is not None:
            proc.terminate()
    print(f"\n{table(rows)}")
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as out:
        out.write(to_json(rows, {"quick": args.quick, "only": args.only}, started, load) + "\n")
    failed = [row.id for row in rows if row.status in ("FAIL", "ERROR")]
    print(f"\n{len(rows)} rows, {len(failed)} failing{': ' + ', '.join(failed) if failed else ''}; "
          f"JSON: {args.json}; {time.time() - started:.0f} s")
    return 1 if args.strict and failed else 0


if __name__ == "__main__":
    sys.exit(main())
