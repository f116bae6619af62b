"""``dsen2cr weights``: download a published model (converted to the project's weights file), describe weights
files, calibrate a model's sigma on held-out patches."""

from __future__ import annotations

import argparse

from dsen2cr.cli.options import (
    SubParsers,
    add_command,
    add_device,
    add_no_progress,
    add_overwrite,
    check_loader_options,
    cloud_score,
    file_list_split,
)


def register(subparsers: SubParsers) -> None:
    """Add ``weights`` and its subcommands ``download``, ``info`` and ``calibrate-sigma``."""
    weights = add_command(
        subparsers,
        "weights",
        help="weights files: download the published models, describe any weights file, calibrate a model's sigma",
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
    _register_calibrate_sigma(commands)


def _register_calibrate_sigma(commands: SubParsers) -> None:
    """Add ``weights calibrate-sigma``."""
    calibrate = add_command(
        commands,
        "calibrate-sigma",
        help="fit one factor per band to a model's sigma on held-out patches (by the likelihood that trained it), "
        "measure each band's multiple of it that holds 68.3, 90, 95 and 99 %% of the values there, and write the "
        "weights with both: sigma whose intervals hold what they say",
    )
    calibrate.add_argument(
        "--weights",
        required=True,
        nargs="+",
        help="weights of a model with sigma: .safetensors (dsen2cr export) or .ckpt; several files, or an ensemble "
        "file: an ensemble, whose combined sigma (aleatoric and epistemic alike) is calibrated into an ensemble file",
    )
    calibrate.add_argument("--data-root", required=True, help="dataset root folder")
    calibrate.add_argument("--file-list", required=True, help="DSen2-CR file list (with --split)")
    calibrate.add_argument(
        "--split",
        default="val",
        choices=["val", "test"],
        help="held-out patches to fit on (default: %(default)s; the training patches would make sigma too small "
        "elsewhere; evaluate on another split than the one fitted on)",
    )
    calibrate.add_argument(
        "--region",
        default="all",
        choices=["all", "cloudy"],
        help="the values to fit on: all of them (default), or those under cloud and shadow (the paper mask at "
        "--cloud-threshold): where remove-clouds --keep-clear uses the prediction and its sigma",
    )
    calibrate.add_argument(
        "--cloud-threshold",
        type=cloud_score,
        help="with --region cloudy: the paper mask's threshold (default 0.2, as evaluate's and remove-clouds'); give "
        "the one your --keep-clear runs take",
    )
    calibrate.add_argument(
        "--out",
        required=True,
        help="safetensors weights file to write; for an ensemble, an ensemble file (NAME.json: its members and the "
        "factors, run by --weights NAME.json)",
    )
    add_overwrite(calibrate, "replace an existing output file (never the input)")
    add_device(calibrate)
    calibrate.add_argument("--batch-size", type=int, default=4, help="patches per batch (default: %(default)s)")
    calibrate.add_argument(
        "--num-workers", type=int, default=0, metavar="N", help="processes that read the patches (default: 0)"
    )
    add_no_progress(calibrate, "no progress bar (patches)")
    calibrate.set_defaults(handler=run_calibrate_sigma)


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


def run_calibrate_sigma(args: argparse.Namespace) -> int:
    """Run ``weights calibrate-sigma``."""
    from pathlib import Path

    from dsen2cr.choices import DEFAULT_CLOUD_THRESHOLD
    from dsen2cr.data.layout import check_data_root
    from dsen2cr.ensemble_file import is_ensemble_file
    from dsen2cr.errors import DSen2CRError
    from dsen2cr.outputs.files import check_distinct_outputs, check_output_file
    from dsen2cr.predictor import is_onnx
    from dsen2cr.sigma_calibration import calibrate_ensemble, calibrate_weights, fit_table
    from dsen2cr.sigma_statistics import HeldOutData

    if args.cloud_threshold is not None and args.region != "cloudy":
        raise DSen2CRError(
            "--cloud-threshold: the paper mask's threshold of --region cloudy; without it every value is fitted"
        )
    several = len(args.weights) > 1 or is_ensemble_file(args.weights[0])
    if several and not is_ensemble_file(args.out):
        raise DSen2CRError(
            f"{args.out}: an ensemble's factors go into an ensemble file that names its members: --out NAME.json "
            "(run by --weights NAME.json)"
        )
    if not several and is_ensemble_file(args.out):
        raise DSen2CRError(
            f"{args.out}: one model's factors go into its weights: --out NAME.safetensors (an ensemble file is for "
            "several --weights)"
        )
    if not several and is_onnx(args.weights[0]):
        raise DSen2CRError(
            f"{args.weights[0]}: an ONNX file's graph cannot take a sigma scale; calibrate the weights it was exported "
            "from, then export-onnx the calibrated file"
        )
    check_loader_options(args)
    inputs = [("weights", Path(w)) for w in args.weights]
    check_distinct_outputs([("ensemble file" if several else "weights", Path(args.out))], inputs)
    check_output_file(args.out, overwrite=args.overwrite, kind="json" if several else "safetensors")
    check_data_root(args.data_root, "--data-root")
    triplets, data, beside = file_list_split(args.data_root, args.file_list, args.split)
    calibrate = calibrate_ensemble if several else calibrate_weights
    fit = calibrate(
        args.weights if several else args.weights[0],
        triplets,
        args.out,
        data=HeldOutData(data, beside),
        region=args.region,
        cloud_threshold=DEFAULT_CLOUD_THRESHOLD if args.cloud_threshold is None else args.cloud_threshold,
        device=args.device,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        progress=not args.no_progress,
    )
    print(fit_table(fit))
    print(f"wrote {args.out}")
    return 0
