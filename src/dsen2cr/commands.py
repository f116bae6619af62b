"""Subcommand definitions of the ``dsen2cr`` command line (parsers here; the work is imported lazily)."""

from __future__ import annotations

import argparse
import sys

SubParsers = argparse._SubParsersAction


def _add_data(subparsers: SubParsers) -> None:
    """Register ``dsen2cr data {index,synth,sample}``."""
    data = subparsers.add_parser("data", help="index, synthesise or copy SEN12MS-CR-layout data")
    data_commands = data.add_subparsers(dest="data_command", metavar="DATA_COMMAND", required=True)

    index = data_commands.add_parser(
        "index",
        help="scan a dataset root, check every triplet and write a DSen2-CR file list",
        description="Scan an official SEN12MS-CR tree (or a DSen2-CR flat layout), check that each patch has "
        "its three files with matching bands, size, CRS and transform, and write the usable ones as a "
        "file list. Skipped patches are listed with the reason in OUT.skipped.tsv.",
    )
    index.add_argument("root", help="dataset root folder")
    index.add_argument("--out", required=True, help="file list to write (CSV, DSen2-CR format)")
    index.add_argument("--val-rois", help="ROI list (one id per line, e.g. ROIs1158_spring/1) for split 2")
    index.add_argument("--test-rois", help="ROI list for split 3; every other ROI goes to split 1 (train)")
    index.add_argument("--threads", type=int, default=16, help="files checked in parallel (default: %(default)s)")
    index.set_defaults(handler=_run_data_index)

    synth = data_commands.add_parser(
        "synth", help="write a synthetic SEN12MS-CR-like tree of real GeoTIFFs with synthetic clouds"
    )
    synth.add_argument("--out", required=True, help="output folder")
    synth.add_argument("--count", type=int, required=True, help="number of triplets")
    synth.add_argument("--size", type=int, default=256, help="patch size in pixels (default: %(default)s)")
    synth.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    synth.set_defaults(handler=_run_data_synth)

    sample = data_commands.add_parser("sample", help="copy the bundled real sample data to a folder")
    sample.add_argument("--out", required=True, help="output folder (must not exist or be empty)")
    sample.set_defaults(handler=_run_data_sample)


def _run_data_index(args: argparse.Namespace) -> int:
    """Run ``data index``."""
    from dsen2cr.data.index import index_dataset
    from dsen2cr.data.layout import read_roi_list

    report = index_dataset(
        args.root,
        args.out,
        val_rois=read_roi_list(args.val_rois) if args.val_rois else None,
        test_rois=read_roi_list(args.test_rois) if args.test_rois else None,
        threads=args.threads,
    )
    counts = ", ".join(f"{name} {n}" for name, n in report.split_counts().items())
    print(f"indexed {len(report.triplets)} triplets ({counts}) -> {args.out}")
    if report.skipped:
        for path, reason in report.skipped[:10]:
            print(f"skipped {path}: {reason}", file=sys.stderr)
        more = len(report.skipped) - 10
        tail = f" ({more} more)" if more > 0 else ""
        print(f"skipped {len(report.skipped)} patches{tail}, all listed in {args.out}.skipped.tsv", file=sys.stderr)
    return 0


def _run_data_synth(args: argparse.Namespace) -> int:
    """Run ``data synth``."""
    from dsen2cr.data.synth import write_synthetic_dataset

    _, file_list = write_synthetic_dataset(args.out, args.count, size=args.size, seed=args.seed)
    print(f"wrote {args.count} synthetic triplets under {args.out}; file list {file_list}")
    return 0


def _run_data_sample(args: argparse.Namespace) -> int:
    """Run ``data sample``."""
    from dsen2cr.data.sample import copy_sample

    out = copy_sample(args.out)
    print(f"copied the bundled sample data to {out} (see {out / 'NOTICE'})")
    return 0


def _quiet_lightning() -> None:
    """Keep Lightning's informational banners and tips off the console."""
    import logging
    import warnings

    import lightning  # noqa: F401  (configures its loggers on import; set their levels after that)

    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    logging.getLogger("lightning.fabric").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\).*")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")


def _add_train(subparsers: SubParsers) -> None:
    """Register ``dsen2cr train``."""
    parser = subparsers.add_parser(
        "train",
        help="train (or resume) a DSen2-CR model with PyTorch Lightning",
        description="Train with the settings of a YAML config (a file, or a bundled one by name: paper, small-cpu), "
        "overridden by section.key=value arguments. Checkpoints every epoch in OUT_DIR/checkpoints, logs "
        "(CSV, TensorBoard) in OUT_DIR/logs, the resolved config in OUT_DIR/config.yaml.",
    )
    parser.add_argument(
        "--config", help="YAML config file, or a bundled one: paper, small-cpu (default: paper's settings)"
    )
    parser.add_argument("overrides", nargs="*", metavar="SECTION.KEY=VALUE", help="config overrides")
    parser.add_argument("--resume", metavar="CKPT", help="continue the run of this checkpoint exactly")
    parser.add_argument("--overwrite", action="store_true", help="replace a run already in the output folder")
    parser.add_argument("--out-dir", help="shortcut for trainer.out_dir=...")
    parser.add_argument("--devices", help="shortcut for trainer.devices=... (e.g. 4, or auto)")
    parser.add_argument("--num-nodes", type=int, help="shortcut for trainer.num_nodes=...")
    parser.add_argument("--strategy", help="shortcut for trainer.strategy=... (e.g. ddp)")
    parser.add_argument("--accelerator", help="shortcut for trainer.accelerator=... (cpu, gpu, auto)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (one line per epoch)")
    parser.set_defaults(handler=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    """Run ``train``."""
    from dsen2cr.config import load_config

    overrides = list(args.overrides)
    for option, key in (
        ("out_dir", "out_dir"),
        ("devices", "devices"),
        ("num_nodes", "num_nodes"),
        ("strategy", "strategy"),
        ("accelerator", "accelerator"),
    ):
        value = getattr(args, option)
        if value is not None:
            overrides.append(f"trainer.{key}={value}")
    config = load_config(args.config, overrides)
    _quiet_lightning()
    from dsen2cr.training.train import run_training

    last = run_training(config, resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress)
    print(f"last checkpoint: {last}")
    return 0


def _add_config(subparsers: SubParsers) -> None:
    """Register ``dsen2cr config``."""
    parser = subparsers.add_parser("config", help="print a bundled config (to copy and edit): paper, small-cpu")
    parser.add_argument("name", help="bundled config name")
    parser.set_defaults(handler=_run_config)


def _run_config(args: argparse.Namespace) -> int:
    """Run ``config``."""
    from dsen2cr.config import bundled_config_names, bundled_config_path
    from dsen2cr.errors import DSen2CRError

    path = bundled_config_path(args.name)
    if path is None:
        raise DSen2CRError(f"config {args.name!r}: not a bundled config; choose one of {bundled_config_names()}")
    print(path.read_text(encoding="utf-8"), end="")
    return 0


def _add_weights_argument(parser: argparse.ArgumentParser) -> None:
    """The ``--weights`` option shared by the inference commands."""
    parser.add_argument(
        "--weights",
        required=True,
        help="weights: .safetensors (dsen2cr export), .ckpt (dsen2cr train), Keras .h5; evaluate and remove-clouds "
        "also take .onnx (dsen2cr export-onnx, fp32 or int8)",
    )


def _add_evaluate(subparsers: SubParsers) -> None:
    """Register ``dsen2cr evaluate``."""
    parser = subparsers.add_parser(
        "evaluate",
        help="paper metrics of a model and of the identity baseline on a split, with predictions and previews",
    )
    _add_weights_argument(parser)
    parser.add_argument("--data-root", required=True, help="dataset root folder")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--file-list", help="DSen2-CR file list (with --split)")
    group.add_argument("--rois", help="ROI list (one id per line) over a release tree")
    parser.add_argument("--split", default="test", choices=["train", "val", "test"], help="default: %(default)s")
    parser.add_argument("--out", required=True, help="report folder")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty report folder")
    parser.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=4, help="default: %(default)s")
    parser.add_argument("--cloud-threshold", type=float, default=0.2, help="default: %(default)s")
    parser.add_argument("--no-images", action="store_true", help="metrics only: no GeoTIFFs, no PNG previews")
    parser.set_defaults(handler=_run_evaluate)


def _check_output_folder(path: str, overwrite: bool) -> None:
    """Refuse a non-empty output folder unless ``overwrite``."""
    from pathlib import Path

    from dsen2cr.errors import DSen2CRError

    out = Path(path)
    if out.exists() and not out.is_dir():
        raise DSen2CRError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise DSen2CRError(f"{out}: output folder is not empty; pass --overwrite to write into it")


def _run_evaluate(args: argparse.Namespace) -> int:
    """Run ``evaluate``."""
    from dsen2cr.data.layout import read_file_list, read_roi_list, scan_release, select_rois, select_split
    from dsen2cr.errors import DSen2CRError
    from dsen2cr.evaluate import evaluate, summary_markdown
    from dsen2cr.weights import load_model

    _check_output_folder(args.out, args.overwrite)
    if args.weights.lower().endswith(".onnx"):
        from dsen2cr.onnx_export import OnnxPredictor

        model = OnnxPredictor(args.weights, device=args.device)
    else:
        model = load_model(args.weights, device=args.device)
    if args.file_list:
        triplets = select_split(read_file_list(args.file_list, args.data_root), args.split, source=args.file_list)
    else:
        triplets = select_rois(scan_release(args.data_root)[0], read_roi_list(args.rois))
        if not triplets:
            raise DSen2CRError(f"{args.rois}: none of its ROIs has patches under {args.data_root}")
    summary = evaluate(
        model,
        triplets,
        args.out,
        device=args.device,
        batch_size=args.batch_size,
        cloud_threshold=args.cloud_threshold,
        write_images=not args.no_images,
    )
    print(summary_markdown(summary, len(triplets)))
    print(f"reports in {args.out}")
    return 0


def _add_output_file_arguments(parser: argparse.ArgumentParser, help_text: str) -> None:
    """The ``out`` file and ``--overwrite`` of the commands that write one file."""
    parser.add_argument("out", help=help_text)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")


def _add_export(subparsers: SubParsers) -> None:
    """Register ``dsen2cr export``."""
    parser = subparsers.add_parser(
        "export", help="write a plain safetensors weights file (with the model configuration) from a checkpoint"
    )
    parser.add_argument("source", metavar="checkpoint", help="Lightning checkpoint (.ckpt) or Keras .h5")
    _add_output_file_arguments(parser, "weights file to write (.safetensors)")
    parser.set_defaults(handler=_run_export)


def _run_export(args: argparse.Namespace) -> int:
    """Run ``export`` and ``convert-keras``: any weights file in, safetensors weights out."""
    from dsen2cr.geotiff import check_output_file
    from dsen2cr.weights import load_model, save_weights

    check_output_file(args.out, overwrite=args.overwrite)
    model = load_model(args.source)
    save_weights(model, args.out)
    params = sum(p.numel() for p in model.parameters())
    print(
        f"wrote {args.out} ({model.config.num_blocks} blocks, {model.config.num_features} features, "
        f"SAR {'yes' if model.include_sar else 'no'}, {params:,} parameters)"
    )
    return 0


def _add_convert_keras(subparsers: SubParsers) -> None:
    """Register ``dsen2cr convert-keras``."""
    parser = subparsers.add_parser(
        "convert-keras",
        help="convert a published DSen2-CR Keras checkpoint (.h5) to the project's weights file",
        description="Read the convolutions of a Keras 2 HDF5 file (full model, weights only, or saved through the "
        "multi-GPU wrapper) in the file's layer order; the variant (SAR, blocks, features) is read from the file.",
    )
    parser.add_argument("source", metavar="keras_file", help="Keras HDF5 file (.h5)")
    _add_output_file_arguments(parser, "weights file to write (.safetensors)")
    parser.set_defaults(handler=_run_export)


def _add_export_onnx(subparsers: SubParsers) -> None:
    """Register ``dsen2cr export-onnx``."""
    parser = subparsers.add_parser("export-onnx", help="export weights to ONNX (dynamic batch, height, width)")
    _add_weights_argument(parser)
    _add_output_file_arguments(parser, "ONNX file to write")
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
        "--calibration-split", default="train", help="split of --calibration-list to use (default: %(default)s)"
    )
    parser.add_argument(
        "--calibration-patches", type=int, default=16, help="calibration inputs, 128x128 crops (default: %(default)s)"
    )
    parser.set_defaults(handler=_run_export_onnx)


def _run_export_onnx(args: argparse.Namespace) -> int:
    """Run ``export-onnx``."""
    from dsen2cr.geotiff import check_output_file
    from dsen2cr.onnx_export import export_onnx
    from dsen2cr.weights import load_model

    check_output_file(args.out, overwrite=args.overwrite)
    if not args.int8:
        export_onnx(load_model(args.weights), args.out)
        print(f"wrote {args.out}")
        return 0
    import tempfile
    from pathlib import Path

    from dsen2cr.config import DataSection
    from dsen2cr.data.layout import resolve_split
    from dsen2cr.errors import DSen2CRError
    from dsen2cr.onnx_export import calibration_batches, quantize_onnx

    if args.calibration_patches < 1:
        raise DSen2CRError(f"--calibration-patches: must be at least 1, got {args.calibration_patches}")
    if args.calibration_list and not args.calibration_root:
        raise DSen2CRError("--calibration-root: needed with --calibration-list (the folder its paths refer to)")
    data = DataSection(root=args.calibration_root, file_list=args.calibration_list)
    triplets = resolve_split(data, args.calibration_split)
    with tempfile.TemporaryDirectory(prefix="dsen2cr-export-") as tmp:
        fp32 = export_onnx(load_model(args.weights), Path(tmp) / "fp32.onnx")
        quantize_onnx(fp32, args.out, calibration_batches(triplets, args.calibration_patches))
    print(f"wrote {args.out} (int8, calibrated on {args.calibration_patches} crops of {len(triplets)} patches)")
    return 0


def _add_remove_clouds(subparsers: SubParsers) -> None:
    """Register ``dsen2cr remove-clouds``."""
    parser = subparsers.add_parser(
        "remove-clouds",
        help="remove the clouds of whole georeferenced scenes (tiled, seamless, bounded memory)",
        description="Write a cloud-free, georeferenced Cloud-Optimised GeoTIFF (uint16 DN, 13 bands) for each "
        "S2 scene. --s2 takes 13-band GeoTIFFs or L1C product folders (.SAFE or IMG_DATA, one JP2 per band); "
        "--s1 GeoTIFFs with VV and VH in dB, warped onto the S2 grid on the fly. Several scenes: lists after "
        "--s2/--s1 with --out a folder, or --manifest; under torchrun the ranks split the scenes.",
    )
    _add_weights_argument(parser)
    parser.add_argument("--s2", nargs="+", help="S2 L1C scene(s): 13-band GeoTIFF or product folder")
    parser.add_argument("--s1", nargs="+", help="S1 scene(s), VV and VH in dB (omit for a model without SAR)")
    parser.add_argument("--manifest", help="CSV with columns s2,s1,out[,mask_out,preview] (instead of --s2/--s1/--out)")
    parser.add_argument("--out", help="output GeoTIFF (one scene) or folder (several scenes)")
    parser.add_argument("--mask-out", help="also write the cloud/shadow map (int8 GeoTIFF; one scene)")
    parser.add_argument("--preview", help="also write an RGB quicklook PNG of input and output (one scene)")
    parser.add_argument(
        "--tile",
        type=_auto_or_int,
        default="auto",
        help="largest window in pixels; auto: large enough that overlap costs at most 15 %% more compute, smaller "
        "if --batch-size such windows would not fit in --memory (default: %(default)s)",
    )
    parser.add_argument(
        "--overlap", type=int, help="tile overlap in pixels (default: 2 x receptive-field radius, exact)"
    )
    parser.add_argument(
        "--batch-size",
        type=_auto_or_int,
        default="auto",
        help="windows per forward pass; auto: 1 on CPU (batching does not speed it up), 4 on GPU "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--memory",
        type=float,
        help="GiB of working memory for --tile auto (default: half the free GPU memory; on CPU half the available "
        "memory, at most 8)",
    )
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1 (default: %(default)s)")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="default: %(default)s")
    parser.add_argument(
        "--backend",
        choices=["auto", "eager", "compiled", "onnxruntime"],
        default="auto",
        help="auto: onnxruntime for .onnx weights; else torch.compile'd fp32 on CPU when the run is long enough to "
        "pay for compiling, bf16 on GPU (default: %(default)s)",
    )
    parser.add_argument(
        "--resampling",
        choices=["nearest", "bilinear"],
        default="nearest",
        help="for 20 m and 60 m bands of product folders (default: %(default)s, as in training)",
    )
    parser.add_argument("--s1-linear", action="store_true", help="S1 is linear power: convert it to dB")
    parser.add_argument("--cloud-threshold", type=float, default=0.2, help="for --mask-out (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(handler=_run_remove_clouds)


def _auto_or_int(value: str) -> str | int:
    """Argument type: ``auto`` or an integer (its range is checked where it is used)."""
    if value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected auto or an integer, got {value!r}") from None


def _run_remove_clouds(args: argparse.Namespace) -> int:
    """Run ``remove-clouds``."""
    from dsen2cr.inference import SceneJob, jobs_from_arguments, run_scene_jobs

    jobs: list[SceneJob] = jobs_from_arguments(
        s2=args.s2, s1=args.s1, out=args.out, manifest=args.manifest, mask_out=args.mask_out, preview=args.preview
    )
    for report in run_scene_jobs(jobs, args):
        print(
            f"wrote {report.out}: {report.megapixels:.2f} Mpx in {report.seconds:.1f} s "
            f"({report.megapixels / max(report.seconds, 1e-9):.3f} Mpx/s, {report.tiles} tiles"
            + (f", {report.skipped} without valid pixels skipped)" if report.skipped else ")")
        )
    return 0


def _add_demo(subparsers: SubParsers) -> None:
    """Register ``dsen2cr demo``."""
    parser = subparsers.add_parser("demo", help="run the whole workflow on the bundled sample data")
    parser.add_argument("--out", default="demo-output", help="output folder (default: %(default)s)")
    parser.add_argument("--config", help="training config file or bundled name (default: small-cpu)")
    parser.add_argument("overrides", nargs="*", metavar="SECTION.KEY=VALUE", help="config overrides for both models")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier demo in the output folder")
    parser.set_defaults(handler=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    """Run the demo."""
    from dsen2cr.demo import run_demo

    _quiet_lightning()
    report = run_demo(args.out, config_path=args.config, overrides=args.overrides, overwrite=args.overwrite)
    print(f"demo report: {report}")
    return 0


REGISTRARS = [
    _add_data,
    _add_config,
    _add_train,
    _add_evaluate,
    _add_export,
    _add_convert_keras,
    _add_export_onnx,
    _add_remove_clouds,
    _add_demo,
]
