"""``dsen2cr config NAME``: print a bundled training config to copy and edit."""

from __future__ import annotations

import argparse

from dsen2cr.choices import bundled_config_names, bundled_config_path
from dsen2cr.cli.options import SubParsers, add_command


def register(subparsers: SubParsers) -> None:
    """Add ``config``."""
    names = ", ".join(bundled_config_names())
    parser = add_command(subparsers, "config", help=f"print a bundled config (to copy and edit): {names}")
    parser.add_argument("name", help=f"bundled config name, one of: {names}")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Run ``config``."""
    from dsen2cr.errors import DSen2CRError

    path = bundled_config_path(args.name)
    if path is None:
        names = ", ".join(bundled_config_names())
        raise DSen2CRError(f"config {args.name!r}: not a bundled config; choose one of {names}")
    print(path.read_text(encoding="utf-8"), end="")
    return 0
