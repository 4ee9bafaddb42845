"""`python -m monitoring [--config FILE] [--out DIR] [--check]`: generate or check.

Without --config the committed files (every key at its default) are generated into the
repository; with it, a deployment's own dashboards, rules, Prometheus config and Grafana alerts.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from exporter.config import ConfigError
from monitoring import ROOT, drift, write
from monitoring.settings import Settings


def main(argv: list[str] | None = None) -> int:
    """Write the generated files (exit 0); with --check exit 1 when a file differs."""
    parser = argparse.ArgumentParser(prog="python -m monitoring")
    parser.add_argument("--config", "-c", type=Path, help="config file (default: defaults)")
    parser.add_argument("--out", type=Path, default=ROOT, help="root directory to write into")
    parser.add_argument("--check", action="store_true", help="only report files that differ")
    args = parser.parse_args(argv)
    try:
        settings = Settings.load(args.config) if args.config else Settings.defaults()
    except ConfigError as exc:
        print("config error:", file=sys.stderr)
        for problem in getattr(exc, "problems", None) or [str(exc)]:
            print(f"  {problem}", file=sys.stderr)
        return 1
    if args.check:
        stale = drift(args.out, settings)
        for rel in stale:
            print(f"{args.out / rel} differs from the generator", file=sys.stderr)
        return 1 if stale else 0
    for path in write(args.out, settings):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
