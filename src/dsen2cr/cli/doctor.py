"""``dsen2cr doctor``: the install as the commands will find it (versions, GPUs and precisions, GDAL, extras)."""

from __future__ import annotations

import argparse

from dsen2cr.cli.options import SubParsers, add_command


def register(subparsers: SubParsers) -> None:
    """Add ``doctor``."""
    parser = add_command(
        subparsers,
        "doctor",
        help="check the install: versions, the GPUs PyTorch sees and the precision auto picks, GDAL, extras",
        description="Report the install as the commands will find it: dsen2cr, Python and PyTorch (a CPU or CUDA "
        "build), each device with what --precision auto picks there (and TF32, bf16), GDAL's JPEG 2000 driver and "
        "COG compressions, the optional extras, this process's cores and memory. Lines marked ! say what to fix. "
        "Paste its output into a bug report.",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Run ``doctor``: print the findings, ``!`` before those to look at; exit 0 (it is a report)."""
    from dsen2cr.doctor import findings

    found = findings()
    for finding in found:
        print(f"{'!' if not finding.ok else ' '} {finding.topic:<9} {finding.text}")
    to_fix = sum(not finding.ok for finding in found)
    print(f"{to_fix} thing{'s' if to_fix != 1 else ''} to look at" if to_fix else "nothing to fix")
    return 0
