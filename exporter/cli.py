"""The `wfa` command line: a thin dispatcher over the modules in `exporter.commands`."""

from __future__ import annotations

import argparse
import importlib
import logging
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
    parser.add_argument(
        "--debug",
        action="store_true",
        help="on a failure, show the traceback instead of one line saying what to do",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `wfa` console script.

    A failure the user can fix (a busy port, a bad DSN, an unreachable database, a missing
    schema) ends in one line on stderr and exit 1; `--debug` shows its traceback instead.
    """
    args = build_parser().parse_args(argv)
    if args.debug:
        logging.getLogger().setLevel(logging.DEBUG)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        sys.stderr.close()
        return 0
    except Exception as exc:
        from exporter.commands.failures import explain

        advice = explain(exc)
        if advice is None or args.debug:
            raise
        print(f"wfa {args.command}: {advice}", file=sys.stderr)
        return 1
