"""``dsen2cr demo``: the whole workflow on the bundled sample data."""

from __future__ import annotations

import argparse

from dsen2cr.cli.options import (
    SubParsers,
    add_command,
    add_device,
    add_no_progress,
    add_overwrite,
    quiet_lightning,
    require_extra,
)


def register(subparsers: SubParsers) -> None:
    """Add ``demo``."""
    parser = add_command(subparsers, "demo", help="run the whole workflow on the bundled sample data")
    parser.add_argument("--out", default="demo-output", help="output folder (default: %(default)s)")
    parser.add_argument("--config", help="training config file or bundled name (default: small-cpu)")
    parser.add_argument("overrides", nargs="*", metavar="SECTION.KEY=VALUE", help="config overrides for both models")
    add_overwrite(parser, "replace an earlier demo in the output folder (a folder holding other files is refused)")
    add_device(parser)
    add_no_progress(parser, "accepted like every command's: the demo prints one line per stage, no bars")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Run the demo."""
    require_extra("train", "dsen2cr demo")
    from dsen2cr.demo import run_demo

    quiet_lightning()
    report = run_demo(
        args.out, config_path=args.config, overrides=args.overrides, overwrite=args.overwrite, device=args.device
    )
    print(f"demo report: {report}")
    return 0
