"""``dsen2cr evaluate``: the paper metrics of a model and of the identity baseline on a split."""

from __future__ import annotations

import argparse
import functools
from pathlib import Path
from typing import Any

from dsen2cr.choices import PRECISIONS
from dsen2cr.cli.options import (
    SubParsers,
    add_command,
    add_device,
    add_no_progress,
    add_overwrite,
    add_weights,
    check_loader_options,
    cloud_score,
    file_list_split,
)


def register(subparsers: SubParsers) -> None:
    """Add ``evaluate``."""
    parser = add_command(
        subparsers,
        "evaluate",
        help="paper metrics of a model and of the identity baseline on a split, with predictions and previews",
    )
    add_weights(parser, onnx=True, ensemble=True)
    parser.add_argument("--data-root", required=True, help="dataset root folder")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--file-list", help="DSen2-CR file list (with --split)")
    group.add_argument("--rois", help="ROI list (one id per line) over a release tree")
    parser.add_argument("--split", default="test", choices=["train", "val", "test"], help="default: %(default)s")
    parser.add_argument("--out", required=True, help="report folder")
    add_overwrite(parser, "replace an earlier report in the folder (a folder holding other files is refused)")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="go on from the patches that a stopped evaluation of the same patches, weights and settings scored in "
        "--out (kept there when it stopped); with none there, start (one command line for a job that may be "
        "stopped and run again)",
    )
    add_device(parser)
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="auto: IEEE fp32 on every device (metrics are exact); tf32 (GPUs), fp16 or bf16 to score a faster "
        "precision (default: %(default)s; ONNX files run the precision they were exported in)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=4, help="patches per batch (of mixed sizes: a stack per size); default: 4"
    )
    parser.add_argument("--cloud-threshold", type=cloud_score, default=0.2, help="default: %(default)s")
    parser.add_argument("--no-images", action="store_true", help="metrics only: no GeoTIFFs, no PNG previews")
    parser.add_argument(
        "--num-workers",
        type=int,
        default=0,
        metavar="N",
        help="processes that read the patches (and make their cloud maps) ahead of the model (default: 0, the main "
        "thread reads each batch before it is predicted; on a GPU 2 to 4 keep it fed)",
    )
    parser.add_argument(
        "--score-threads",
        type=int,
        metavar="N",
        help="threads that score the patches and write their images while the model predicts the next batch "
        "(default: the process's cores, at most 8; 1: each batch scored after it is predicted)",
    )
    parser.add_argument(
        "--mask",
        choices=["paper", "s2cloudless"],
        default="paper",
        help="cloud/shadow map of the region metrics: the paper's detector, or s2cloudless (clouds only; "
        "pip install 'dsen2cr[masks]') (default: %(default)s)",
    )
    parser.add_argument(
        "--protocol",
        choices=["default", "original"],
        default="default",
        help="default: reflectance clipped to [0, 1], SAM in degrees, full patch; original: the original code's "
        "eval.csv (model units unclipped, SAM in radians, its column names) on the top-left --window (default: "
        "%(default)s)",
    )
    parser.add_argument(
        "--window",
        type=int,
        help="score the top-left WINDOW x WINDOW pixels of each patch (0: the full patch; default: 128 for "
        "--protocol original, the full patch otherwise)",
    )
    add_no_progress(parser, "no progress bar (patches evaluated)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Run ``evaluate``."""
    from dsen2cr.data.layout import check_data_root, triplets_of_rois
    from dsen2cr.ensemble import ensemble
    from dsen2cr.ensemble_file import split_weights
    from dsen2cr.errors import DSen2CRError
    from dsen2cr.evaluate import evaluate
    from dsen2cr.evaluation_progress import keep_progress, scored_patches
    from dsen2cr.outputs.files import check_output_folder, output_folder
    from dsen2cr.predictor import load_exact_predictor
    from dsen2cr.said_warnings import warnings_said
    from dsen2cr.summary import summary_markdown

    check_loader_options(args)
    if args.score_threads is not None and args.score_threads < 1:
        raise DSen2CRError(f"--score-threads: must be at least 1, got {args.score_threads}")
    window = args.window if args.window is not None else (128 if args.protocol == "original" else 0)
    if window < 0:
        raise DSen2CRError(f"--window: must be 0 (full patch) or a size in pixels, got {window}")
    stopped = scored_patches(Path(args.out))  # a stopped evaluation's (scored, of all), or None
    folder = _report_folder(Path(args.out), stopped, resume=args.resume, overwrite=args.overwrite)
    check_output_folder(args.out, **folder)
    check_data_root(args.data_root, "--data-root")
    with warnings_said() as said:  # what reading the weights and the data warns of, for the report too
        files, ensemble_file = split_weights(args.weights)  # an ensemble file: its members, and its sigma scale
        # exact numbers: eager IEEE fp32 unless asked otherwise; an ONNX file (fp32 or int8) runs as exported
        members = [load_exact_predictor(w, device=args.device, precision=args.precision) for w in files]
        predictor = members[0] if len(members) == 1 else ensemble(members, ensemble_file)
        if args.file_list:
            # the count of patches beside training ones is the calibration record's; the report lists the warning
            triplets, data, _ = file_list_split(args.data_root, args.file_list, args.split)
        else:
            data = f"the ROIs of {Path(args.rois).name}"
            triplets = triplets_of_rois(args.data_root, args.rois)
        calibrations = [(member.weights, member.sigma_calibration) for member in members]
        if ensemble_file is not None:
            calibrations.append((str(ensemble_file.path), ensemble_file.calibration))
        _warn_of_calibration_data(calibrations, data)
    # a failed evaluation leaves no half report behind: only what a rerun with --resume goes on from
    scored_before = stopped[0] if args.resume and stopped is not None else 0
    keep = functools.partial(keep_progress, Path(args.out), scored_before)
    with output_folder(args.out, **folder, keep_on_failure=keep):
        summary = evaluate(
            predictor,
            triplets,
            args.out,
            batch_size=args.batch_size,
            cloud_threshold=args.cloud_threshold,
            write_images=not args.no_images,
            protocol=args.protocol,
            window=window or None,
            mask_kind=args.mask,
            progress=not args.no_progress,
            data=data,
            resume=args.resume,
            score_threads=args.score_threads,
            num_workers=args.num_workers,
            warnings=tuple(said),
        )
    print(summary_markdown(summary, len(triplets), args.protocol))
    print(f"reports in {args.out}")
    return 0


def _report_folder(out: Path, stopped: tuple[int, int] | None, *, resume: bool, overwrite: bool) -> dict[str, Any]:
    """How the command may write into the report folder ``out`` (:func:`~dsen2cr.outputs.files.output_folder`'s
    arguments): with ``resume``, keeping what a stopped evaluation left there (``stopped``: its patches scored and
    all, :func:`~dsen2cr.evaluation_progress.scored_patches`) to go on from it."""
    from dsen2cr.errors import DSen2CRError
    from dsen2cr.evaluate import REPORT_ENTRIES
    from dsen2cr.evaluation_progress import PROGRESS, read_progress

    if resume and overwrite:
        raise DSen2CRError("--resume and --overwrite: one goes on from a stopped evaluation, the other starts again")
    if resume and stopped is None and (out / PROGRESS).exists():
        read_progress(out)  # says why it cannot be gone on from
        raise DSen2CRError(f"{out / PROGRESS}: holds no evaluation's progress; --overwrite starts the evaluation again")
    if resume and stopped is None and (out / "summary.json").is_file():
        raise DSen2CRError(f"{out}: holds a complete evaluation report, nothing to resume; --overwrite replaces it")
    folder: dict[str, Any] = {"owned": REPORT_ENTRIES, "overwrite": overwrite}
    if stopped is None:
        return folder | {"what": "an evaluation report"}
    what = f"a stopped evaluation ({stopped[0]} of {stopped[1]} patches scored)"
    hint = "pass --resume to go on from it, or --overwrite to start again"
    return folder | {"what": what, "hint": hint, "keep_earlier": resume}


def _warn_of_calibration_data(calibrations: list[tuple[str | None, str | None]], data: str) -> None:
    """Warn of weights (an ensemble file, too) whose sigma was calibrated on the patches evaluated (``data``, as
    both name them), given as (name, calibration text) pairs: the calibration metrics then flatter them."""
    import logging

    from dsen2cr.said_warnings import SAID_IN_REPORT
    from dsen2cr.sigma_record import calibrated_on

    for name, calibration in calibrations:
        if calibrated_on(calibration, data):
            logging.getLogger("dsen2cr.evaluate").warning(
                "%s: its sigma was calibrated on %s, the patches evaluated here: its coverage and UCE flatter it; "
                "evaluate on a split it was not calibrated on",
                name,
                data,
                extra={SAID_IN_REPORT: True},  # the report says it in its own words (calibrated_on_these_patches)
            )
