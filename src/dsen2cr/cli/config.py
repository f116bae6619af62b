"""``dsen2cr config NAME``: print a bundled training config to copy and edit."""

from __future__ import annotations

import argparse

from dsen2cr.cli.options import SubParsers, add_command


def register(subparsers: SubParsers) -> None:
    """Add ``config``."""
    parser = add_command(
        subparsers,
        "config",
        help="print a bundled config (to copy and edit): paper, paper-fast, paper-uncertainty, small-cpu",
    )
    parser.add_argument("name", help="bundled config name")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Run ``config``."""
    from dsen2cr.config import bundled_config_names, bundled_config_path
    from dsen2cr.errors import DSen2CRError

    path = bundled_config_path(args.name)
    if path is None:
        raise DSen2CRError(f"config {args.name!r}: not a bundled config; choose one of {bundled_config_names()}")
    print(path.read_text(encoding="utf-8"), end="")
    return 0
