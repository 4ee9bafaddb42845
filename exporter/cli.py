"""The `wfa` command line: a thin dispatcher over the modules in `exporter.commands`."""

from __future__ import annotations

import argparse
import importlib
import sys

from exporter import __version__

COMMAND_MODULES = (
    "exporter.commands.core",
    "exporter.commands.api",
    "exporter.commands.tokens",
    "exporter.commands.grafana",
    "exporter.commands.simulate",
    "exporter.commands.backfill",
    "exporter.commands.reconcile",
    "exporter.commands.demo",
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every registered subcommand."""
    parser = argparse.ArgumentParser(prog="wfa", description="workflow analytics exporter")
    parser.add_argument("--version", action="version", version=f"wfa {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `wfa` console script."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        sys.stderr.close()
        return 0
