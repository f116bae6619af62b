"""``dsen2cr weights download``: a published model, converted to the project's weights file."""

from __future__ import annotations

import argparse

from dsen2cr.cli.options import SubParsers, add_command, add_no_progress, add_overwrite


def register(subparsers: SubParsers) -> None:
    """Add ``weights`` and its subcommand ``download``."""
    weights = add_command(subparsers, "weights", help="the published DSen2-CR models")
    commands = weights.add_subparsers(dest="weights_command", metavar="WEIGHTS_COMMAND", required=True)
    download = add_command(
        commands,
        "download",
        help="download a published model (Keras, Google Drive), convert it to safetensors with its SHA-256",
    )
    download.add_argument("name", help="carl-sar (the paper's final model), l1-sar, carl-nosar or l1-nosar")
    download.add_argument("--out", required=True, help="safetensors file to write")
    download.add_argument("--url", help="the Keras file's URL instead of the original Google Drive link (a mirror)")
    add_overwrite(download, "replace an existing output file")
    add_no_progress(download)
    download.set_defaults(handler=run_download)


def run_download(args: argparse.Namespace) -> int:
    """Run ``weights download``."""
    from dsen2cr.published import download_published

    out = download_published(args.name, args.out, url=args.url, overwrite=args.overwrite, progress=not args.no_progress)
    print(f"wrote {out}")
    return 0
