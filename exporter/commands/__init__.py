"""Subcommands of `wfa`, one module per concern; each exposes `register(subparsers)`."""
