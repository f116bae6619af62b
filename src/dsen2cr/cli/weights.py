"""``dsen2cr weights download``: a published model, converted to the project's weights file."""

from __future__ import annotations

import argparse

from dsen2cr.cli.options import SubParsers, add_command, add_no_progress, add_overwrite


def register(subparsers: SubParsers) -> None:
    """Add ``weights`` and its subcommands ``download`` and ``info``."""
    weights = add_command(
        subparsers, "weights", help="weights files: download the published models, describe any weights file"
    )
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
    info = add_command(
        commands,
        "info",
        help="what a weights file holds and what made it: kind, SHA-256, model, parameters, source, version, "
        "training record and its data (any file --weights takes: safetensors, checkpoint, Keras HDF5, ONNX)",
    )
    info.add_argument("files", nargs="+", metavar="FILE", help="weights files")
    info.add_argument("--json", action="store_true", help="print one JSON list of the files' descriptions")
    info.set_defaults(handler=run_info)


def run_download(args: argparse.Namespace) -> int:
    """Run ``weights download``."""
    from dsen2cr.published import download_published

    out = download_published(args.name, args.out, url=args.url, overwrite=args.overwrite, progress=not args.no_progress)
    print(f"wrote {out}")
    return 0


def run_info(args: argparse.Namespace) -> int:
    """Run ``weights info``: every file described before any is printed (a bad file prints nothing)."""
    import json

    from dsen2cr.weights_info import info_lines, weights_info

    described = [weights_info(path) for path in args.files]
    if args.json:
        print(json.dumps([info.to_dict() for info in described], indent=2))
    else:
        print("\n".join(line for info in described for line in info_lines(info)))
    return 0
