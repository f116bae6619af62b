"""``dsen2cr export``, ``convert-keras`` and ``export-onnx``: weights in, one weights file out."""

from __future__ import annotations

import argparse
from pathlib import Path

from dsen2cr.cli.options import SubParsers, add_command, add_output_file, add_weights, require_extra

#: ``--calibration-patches`` at most: activation ranges settle after a few hundred crops.
MAX_CALIBRATION_PATCHES = 4096


def register(subparsers: SubParsers) -> None:
    """Add ``export``, ``convert-keras`` and ``export-onnx``."""
    parser = add_command(
        subparsers,
        "export",
        help="write a plain safetensors weights file (with the model configuration) from a checkpoint",
    )
    parser.add_argument("source", nargs="?", metavar="checkpoint", help="Lightning checkpoint (.ckpt) or Keras .h5")
    parser.add_argument(
        "--weights", dest="source_option", metavar="CHECKPOINT", help="the checkpoint, as the other commands name it"
    )
    add_output_file(parser, "weights file to write (.safetensors)")
    parser.set_defaults(handler=run_export)

    parser = add_command(
        subparsers,
        "convert-keras",
        help="convert a published DSen2-CR Keras checkpoint (.h5) to the project's weights file",
        description="Read the convolutions of a Keras 2 HDF5 file (full model, weights only, or saved through the "
        "multi-GPU wrapper) in the file's layer order; the variant (SAR, blocks, features) is read from the file.",
    )
    parser.add_argument("source", metavar="keras_file", help="Keras HDF5 file (.h5)")
    add_output_file(parser, "weights file to write (.safetensors)")
    parser.set_defaults(handler=run_export)

    parser = add_command(subparsers, "export-onnx", help="export weights to ONNX (dynamic batch, height, width)")
    add_weights(parser)
    add_output_file(parser, "ONNX file to write")
    parser.add_argument(
        "--int8",
        action="store_true",
        help="quantise to int8 (onnxruntime static quantisation, calibrated on --calibration-list patches)",
    )
    parser.add_argument(
        "--calibration-list", help="DSen2-CR CSV of calibration patches (default: the bundled sample's train split)"
    )
    parser.add_argument("--calibration-root", help="dataset root that --calibration-list refers to")
    parser.add_argument(
        "--calibration-split",
        default="train",
        choices=["train", "val", "test"],
        help="split of --calibration-list to use (default: %(default)s)",
    )
    parser.add_argument(
        "--calibration-patches", type=int, default=16, help="calibration inputs, 128x128 crops (default: %(default)s)"
    )
    parser.add_argument(
        "--calibration-method",
        default="minmax",
        choices=["minmax", "percentile", "entropy"],
        help="how activation ranges are set (default: %(default)s); percentile clips the 0.001%% tails but holds "
        "all calibration activations in memory (about 1 GB per crop with the paper's model)",
    )
    parser.set_defaults(handler=run_export_onnx)


def run_export(args: argparse.Namespace) -> int:
    """Run ``export`` and ``convert-keras``: any weights file in, safetensors weights out."""
    from dsen2cr.models import family_of
    from dsen2cr.outputs.files import check_distinct_outputs, check_output_file
    from dsen2cr.weights import load_model_with_provenance, save_weights

    check_distinct_outputs([("weights", Path(args.out))], [("source", Path(args.source))])
    check_output_file(args.out, overwrite=args.overwrite, kind="safetensors")
    model, provenance = load_model_with_provenance(args.source)
    save_weights(model, args.out, provenance=provenance)
    params = sum(p.numel() for p in model.parameters())
    print(f"wrote {args.out} ({family_of(model.config).name} {model.config.describe()}, {params:,} parameters)")
    return 0


def run_export_onnx(args: argparse.Namespace) -> int:
    """Run ``export-onnx`` (fp32, or int8 calibrated on patches)."""
    require_extra("onnx", "dsen2cr export-onnx")
    from dsen2cr.errors import DSen2CRError
    from dsen2cr.onnx_export import export_onnx, export_onnx_int8
    from dsen2cr.outputs.files import check_distinct_outputs, check_output_file
    from dsen2cr.weights import load_model_with_provenance

    inputs = [("weights", Path(args.weights))]
    if args.calibration_list:
        inputs.append(("calibration list", Path(args.calibration_list)))
    check_distinct_outputs([("ONNX file", Path(args.out))], inputs)
    check_output_file(args.out, overwrite=args.overwrite, kind="onnx")
    if args.int8 and not 1 <= args.calibration_patches <= MAX_CALIBRATION_PATCHES:
        raise DSen2CRError(
            f"--calibration-patches: must be in [1, {MAX_CALIBRATION_PATCHES}], got {args.calibration_patches}"
        )
    model, provenance = load_model_with_provenance(args.weights)
    if not args.int8:
        export_onnx(model, args.out, provenance=provenance)
        print(f"wrote {args.out}")
        return 0
    from dsen2cr.config import DataSection
    from dsen2cr.data.layout import resolve_split

    if args.calibration_list and not args.calibration_root:
        raise DSen2CRError("--calibration-root: needed with --calibration-list (the folder its paths refer to)")
    data = DataSection(root=args.calibration_root, file_list=args.calibration_list)
    triplets = resolve_split(data, args.calibration_split)
    listed = Path(args.calibration_list).name if args.calibration_list else "the bundled sample"
    export_onnx_int8(
        model,
        args.out,
        triplets,
        args.calibration_patches,
        method=args.calibration_method,
        provenance=provenance,
        data=f"{listed}, {args.calibration_split}",
    )
    print(
        f"wrote {args.out} (int8, {args.calibration_method} calibration on {args.calibration_patches} crops of "
        f"{len(triplets)} patches)"
    )
    return 0
