"""`python -m exporter.dashboards [--check] [DIR]`: write the dashboards, or check for drift."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from exporter.dashboards import DEFAULT_DIR, drift, write


def main(argv: list[str] | None = None) -> int:
    """Write dashboards/*.json (exit 0), or with --check exit 1 when a file differs."""
    parser = argparse.ArgumentParser(prog="python -m exporter.dashboards")
    parser.add_argument("directory", nargs="?", type=Path, default=DEFAULT_DIR)
    parser.add_argument("--check", action="store_true", help="only report files that differ")
    args = parser.parse_args(argv)
    if args.check:
        stale = drift(args.directory)
        for name in stale:
            print(f"{args.directory / name} differs from the generator", file=sys.stderr)
        return 1 if stale else 0
    for path in write(args.directory):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
