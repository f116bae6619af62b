"""Subcommand definitions of the ``dsen2cr`` command line (parsers only; work is imported lazily)."""

from __future__ import annotations

import argparse


def _add_demo(subparsers: argparse._SubParsersAction) -> None:
    """Register ``dsen2cr demo``."""
    parser = subparsers.add_parser("demo", help="run the whole workflow on the bundled sample data")
    parser.add_argument("--out", default="demo-output", help="output folder (default: %(default)s)")
    parser.set_defaults(handler=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    """Run the demo."""
    from dsen2cr.demo import run_demo

    run_demo(args.out)
    return 0


REGISTRARS = [_add_demo]
