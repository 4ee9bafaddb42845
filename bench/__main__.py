"""Run every benchmark and print one Markdown table: `python -m bench [--quick | --full]`.

Each `bench/bench_*.py` module that has `run(executions, *, quick=False) -> list[Figure]`
(every other parameter with a default) is run once per scale, each time in its own
process, so that memory and stray state do not leak from one to the next. Modules without
such a `run` are skipped with a note. The table goes to stdout and, with the raw figures
as JSON, to bench/results/.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import inspect
import json
import os
import subprocess
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.common import RESULTS, Figure, machine, markdown

HERE = Path(__file__).parent
SCALES = (100_000, 1_000_000)
FULL_SCALE = 10_000_000
QUICK_SCALE = 2_000
ORDER = ("ingest", "backfill", "freshness", "scrape", "api", "export", "backends")


def modules() -> list[str]:
    """Benchmark module names (`ingest` for bench/bench_ingest.py), in reporting order."""
    names = sorted(p.stem.removeprefix("bench_") for p in HERE.glob("bench_*.py"))
    return sorted(names, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n))


def unfit(fn: Any) -> str | None:
    """Why `fn` cannot be called as run(executions, quick=...), or None when it can."""
    if not callable(fn):
        return "has no run()"
    params = list(inspect.signature(fn).parameters.values())
    if not params or params[0].name != "executions":
        return "run() does not take `executions` first"
    missing = [
        p.name
        for p in params[1:]
        if p.default is inspect.Parameter.empty
        and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    if missing:
        return f"run() needs {', '.join(missing)} without defaults"
    return None


def run_one(name: str, executions: int, quick: bool) -> dict[str, Any]:
    """Import bench_<name> and run it here: {"figures": [...]} or {"skipped"/"error": text}."""
    try:
        module = importlib.import_module(f"bench.bench_{name}")
    except Exception as exc:
        return {"error": f"import failed: {exc!r}"}
    fn = getattr(module, "run", None)
    reason = unfit(fn)
    if reason:
        return {"skipped": reason}
    kwargs: dict[str, Any] = {}
    if "quick" in inspect.signature(fn).parameters:
        kwargs["quick"] = quick
    try:
        figures = fn(executions, **kwargs)
    except SystemExit as exc:
        return {"skipped": str(exc)}
    except Exception:
        return {"error": traceback.format_exc(limit=8)}
    return {"figures": [dataclasses.asdict(f) for f in figures]}


def run_isolated(name: str, executions: int, quick: bool, timeout: float | None) -> dict:
    """`run_one` in a child process."""
    cmd = [sys.executable, "-m", "bench", "--child", name, "--executions", str(executions)]
    if quick:
        cmd.append("--quick")
    try:
        proc = subprocess.run(
            cmd, stdout=subprocess.PIPE, stderr=None, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        return {"error": f"exit {proc.returncode}"}
    return json.loads(lines[-1])


BUSY_LOAD = 1.5
"""Above this load average before the run, other work shared the machine."""


def load_line(load: float) -> str:
    """The load average before the run, and whether it makes the figures suspect."""
    line = f"Load average (1 min) before the run: {load:.2f}"
    if load > BUSY_LOAD:
        return line + f", above {BUSY_LOAD}: other work shared the machine; figures pessimistic."
    return line + " (the machine was otherwise idle)."


def report(
    figures: list[Figure], notes: list[str], took: float, scales: list[int], load: float
) -> str:
    """The Markdown report: machine, load, table (grouped by benchmark, then scale), notes."""

    def rank(f: Figure) -> int:
        word = f.benchmark.split()[0] if f.benchmark else ""
        return ORDER.index(word) if word in ORDER else len(ORDER)

    figures = sorted(figures, key=rank)
    done = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"Machine: {machine()}; {done}; scales {', '.join(f'{s:,}' for s in scales)} "
        f"executions; {took / 60:.1f} min.",
        load_line(load),
        "",
        markdown(figures),
    ]
    if notes:
        lines += ["", *(f"- {n}" for n in notes)]
    return "\n".join(lines) + "\n"


def save(
    out: Path, text: str, figures: list[Figure], notes: list[str], scales: list[int]
) -> None:
    """Write the report and the raw figures (JSON beside it); rewritten after every run."""
    out.write_text(text)
    out.with_suffix(".json").write_text(
        json.dumps(
            {"machine": machine(), "scales": scales, "notes": notes,
             "figures": [dataclasses.asdict(f) for f in figures]},
            indent=1,
        )
    )


def main(argv: list[str] | None = None) -> int:
    """Command line."""
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help=f"{QUICK_SCALE:,} executions only")
    mode.add_argument("--full", action="store_true", help=f"add {FULL_SCALE:,} executions")
    p.add_argument("--executions", type=int, nargs="+", help="scales to run instead")
    p.add_argument("--only", nargs="+", metavar="NAME", help="benchmarks to run (e.g. ingest)")
    p.add_argument("--timeout", type=float, default=None, help="seconds per benchmark run")
    p.add_argument(
        "--out", type=Path, default=None, help="report file or directory (default bench/results)"
    )
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.child:
        scale = args.executions[0] if args.executions else QUICK_SCALE
        print(json.dumps(run_one(args.child, scale, args.quick)), flush=True)
        return 0

    if args.executions:
        scales = args.executions
    elif args.quick:
        scales = [QUICK_SCALE]
    else:
        scales = [*SCALES, *([FULL_SCALE] if args.full else [])]
    names = modules()
    if args.only:
        unknown = sorted(set(args.only) - set(names))
        if unknown:
            p.error(f"unknown benchmarks: {', '.join(unknown)} (have {', '.join(names)})")
        names = [n for n in names if n in args.only]

    out = args.out or RESULTS
    if out.is_dir() or args.out is None:
        out.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        out = out / f"bench-{'quick-' if args.quick else ''}{stamp}.md"
    started = time.monotonic()
    load = os.getloadavg()[0]
    figures: list[Figure] = []
    notes: list[str] = []
    failed = False
    for scale in scales:
        for name in names:
            print(f"bench: {name} at {scale:,} executions ...", file=sys.stderr, flush=True)
            t = time.monotonic()
            res = run_isolated(name, scale, args.quick, args.timeout)
            took = time.monotonic() - t
            if "figures" in res:
                figures += [Figure(**f) for f in res["figures"]]
                print(f"bench: {name} done in {took:.0f} s", file=sys.stderr, flush=True)
            elif "skipped" in res:
                note = f"{name}: skipped ({res['skipped']})"
                if note not in notes:
                    notes.append(note)
            else:
                failed = True
                last = res["error"].strip().splitlines()[-1]
                notes.append(f"{name} at {scale:,}: failed: {last}")
                print(f"bench: {name} failed:\n{res['error']}", file=sys.stderr, flush=True)
            save(out, report(figures, notes, time.monotonic() - started, scales, load), figures,
                 notes, scales)
    text = report(figures, notes, time.monotonic() - started, scales, load)
    save(out, text, figures, notes, scales)
    print(text)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
