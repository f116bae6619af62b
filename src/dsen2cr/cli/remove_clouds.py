"""``dsen2cr remove-clouds``: cloud-free Cloud-Optimised GeoTIFFs of whole georeferenced scenes."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING

from dsen2cr.choices import COG_COMPRESSION_LEVELS, PRECISIONS
from dsen2cr.cli.options import (
    SubParsers,
    add_bounds,
    add_command,
    add_device,
    add_no_progress,
    add_overwrite,
    add_scene_reading,
    add_weights,
    auto_or_int,
    cloud_score,
    finite_float,
)
from dsen2cr.settings import (
    BACKEND_CHOICES,
    DEFAULT_FEATHER,
    FETCH_CHOICES,
    JOURNAL_CHOICES,
    MASK_KINDS,
    MASK_STATISTICS,
    MAX_FEATHER,
)

if TYPE_CHECKING:
    from dsen2cr.settings import SceneJob


def register(subparsers: SubParsers) -> None:
    """Add ``remove-clouds``."""
    parser = add_command(
        subparsers,
        "remove-clouds",
        help="remove the clouds of whole georeferenced scenes (tiled, seamless, bounded memory)",
        description="Write a cloud-free, georeferenced Cloud-Optimised GeoTIFF (uint16 DN = reflectance x 10000, "
        "no offset; the input's 13 L1C or 12 L2A bands) for each S2 scene. --s2 takes GeoTIFFs, product folders "
        "(.SAFE or IMG_DATA), zipped products (.SAFE.zip, read in place) and STAC items (path or URL); offsets of "
        "processing baseline 04.00+ are read from the metadata and removed. --s1 takes a 2-band GeoTIFF (VV, VH), "
        "a VV.tif,VH.tif pair or a STAC item with vv and vh assets, warped onto the S2 grid on the fly. Several "
        "scenes: lists after --s2/--s1 with --out a folder, or --manifest; under torchrun the ranks split them.",
    )
    add_weights(parser, onnx=True, ensemble=True)
    _add_inputs(parser)
    _add_compute(parser)
    _add_masks(parser)
    _add_outputs(parser)
    add_no_progress(parser)
    parser.set_defaults(handler=run, locks_own_outputs=True)  # the rows of a manifest are known later


def _add_inputs(parser: argparse.ArgumentParser) -> None:
    """The scenes and how to read them."""
    parser.add_argument(
        "--s2", nargs="+", help="S2 scene(s): GeoTIFF (13 L1C or 12 L2A bands), .SAFE folder or zip, STAC item"
    )
    parser.add_argument(
        "--s1", nargs="+", help="S1 scene(s): VV+VH GeoTIFF, VV.tif,VH.tif pair, or STAC item (omit without SAR)"
    )
    parser.add_argument(
        "--s2-offset",
        type=int,
        help="DN offset of a GeoTIFF exported from a baseline 04.00+ product (e.g. -1000); products and STAC "
        "items declare theirs",
    )
    parser.add_argument(
        "--s1-max-days",
        type=finite_float,
        metavar="DAYS",
        help="refuse a scene whose S1 was sensed more than DAYS from it, or when either date is unknown, before "
        "any work (default: beyond 12 days a warning; the outputs record S1's date and its distance from S2)",
    )
    parser.add_argument(
        "--manifest",
        help="CSV with columns s2,s1,out[,mask_out,preview,uncertainty_out,stac_item,bounds,bounds_crs] (instead of "
        "--s2/--s1/--out; a row's bounds, LEFT BOTTOM RIGHT TOP apart by spaces, instead of --bounds)",
    )
    add_bounds(
        parser,
        "the pixels it covers or touches, on the scene's own grid, read with the context the whole scene's run "
        "sees, so they equal that run's pixels",
    )
    add_scene_reading(parser)
    parser.add_argument(
        "--fetch-inputs",
        choices=FETCH_CHOICES,
        default="auto",
        help="download a scene's remote assets (STAC items' hrefs) beside the output before the network runs, "
        "removed once it is read; auto: on a CPU where their signed URLs would expire during the run "
        "(a Planetary Computer token holds about an hour; a full tile takes hours on a CPU) (default: %(default)s)",
    )


def _add_compute(parser: argparse.ArgumentParser) -> None:
    """Where and how the network runs (``auto``: decided in :mod:`dsen2cr.auto`)."""
    parser.add_argument(
        "--tile",
        type=auto_or_int,
        default="auto",
        help="largest window in pixels; auto: large enough that overlap costs at most 15 %% more compute, smaller "
        "if --batch-size such windows would not fit in --memory (default: %(default)s)",
    )
    parser.add_argument(
        "--overlap", type=int, help="tile overlap in pixels (default: 2 x receptive-field radius, exact)"
    )
    parser.add_argument(
        "--batch-size",
        type=auto_or_int,
        default="auto",
        help="windows per forward pass; auto: 1 on CPU (batching does not speed it up), 4 on GPU "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--memory",
        dest="memory_gib",
        type=finite_float,
        help="GiB of working memory for --tile auto (default: half the free GPU memory; on CPU half the available "
        "memory within a container's or job's limit, at most 8)",
    )
    add_device(parser)
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="fp32: IEEE fp32 convolutions and matmuls on every device; tf32: TF32 on NVIDIA GPUs from Ampere on "
        "(IEEE fp32 elsewhere); fp16, bf16: 16-bit feature maps, sums in fp32. Distance to float64 on the paper "
        "model, p99 / max DN: tf32 4 / 12, fp16 7 / 29, bf16 51 / 206 on a GPU; on a CPU the residual stream stays "
        "fp32: fp16 2 / 7, bf16 14 / 45 (bf16 about 5x fp32 on CPUs with AMX). auto: fp32 on a CPU, fp16 on a GPU with "
        "tensor cores (fp32 on older ones; tf32 with --backend eager or compiled, or if fp16 fails the first "
        "batch's check) (default: %(default)s). "
        "The output records it (DSEN2CR_PRECISION), its form in words (DSEN2CR_ARITHMETIC) and the first batch's "
        "measured distance to IEEE fp32 "
        "(DSEN2CR_CHECK_P99_DN, DSEN2CR_CHECK_MAX_DN)",
    )
    parser.add_argument(
        "--backend",
        choices=BACKEND_CHOICES,
        default="auto",
        help="auto: onnxruntime for .onnx weights; else torch.compile'd on a CPU when the run is long enough to pay "
        "for compiling, eager otherwise; every backend but IEEE fp32 eager is checked against it on the first "
        "batch (default: %(default)s)",
    )


def _add_masks(parser: argparse.ArgumentParser) -> None:
    """The cloud/shadow map and ``--keep-clear``."""
    parser.add_argument(
        "--cloud-threshold", type=cloud_score, default=0.2, help="of --mask paper (default: %(default)s)"
    )
    parser.add_argument(
        "--mask",
        choices=MASK_KINDS,
        default="paper",
        help="cloud/shadow map for --mask-out, --keep-clear and the preview outline: paper (the paper's detector, "
        "its statistics: --mask-statistics), product (Level-2A SCL, Level-1C MSK_CLASSI_B00, an Earth Engine "
        "export's SCL, QA60 or MSK_CLASSI bands) or s2cloudless (clouds only; pip install 'dsen2cr[masks]') "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--mask-statistics",
        choices=MASK_STATISTICS,
        default="scene",
        help="where --mask paper's shadow thresholds take their statistics: the whole scene (a --bounds part's map "
        "is the whole run's) or area: the part's own pixels, as the paper's code took each image's (reads nothing "
        "beyond the part: over HTTP, a small part's bytes) (default: %(default)s)",
    )
    parser.add_argument(
        "--keep-clear",
        action="store_true",
        help="keep clear pixels bit for bit and replace only cloud and shadow (blended over --feather px)",
    )
    parser.add_argument(
        "--feather",
        type=int,
        help=f"with --keep-clear: pixels over which input and prediction are blended at mask edges (default: "
        f"{DEFAULT_FEATHER}, the paper mask's smoothing radius; at most {MAX_FEATHER})",
    )


def _add_outputs(parser: argparse.ArgumentParser) -> None:
    """Where the results go and how the COG is compressed."""
    parser.add_argument("--out", help="output GeoTIFF (one scene) or folder (several scenes)")
    parser.add_argument(
        "--mask-out",
        help="also write the cloud/shadow map (uint8 COG: 0 clear, 1 cloud, 2 shadow, 255 no data); a folder "
        "(masks/): each scene's IMAGE_mask.tif in it",
    )
    parser.add_argument(
        "--preview",
        help="also write an RGB quicklook PNG of input and output; a folder (previews/): each scene's "
        "IMAGE_preview.png",
    )
    parser.add_argument(
        "--uncertainty-out",
        help="also write the predicted sigma per band (float32 GeoTIFF in DN, -1 = no data; weights trained with "
        "model.uncertainty=diag); a folder (sigma/): each scene's IMAGE_sigma.tif",
    )
    parser.add_argument(
        "--uncertainty-parts",
        action="store_true",
        help="an ensemble's --uncertainty-out also holds the two parts of its sigma after the total: aleatoric "
        "(from the mean of the members' predicted variances: the noise they expect) and epistemic (from the "
        "variance of their predictions: how much they disagree), total^2 = aleatoric^2 + epistemic^2",
    )
    parser.add_argument(
        "--stac-item",
        help="also write a STAC item (JSON) describing the outputs: footprint, sensing time, bands and their "
        "statistics, what made them, relative hrefs; a folder (items/): each scene's IMAGE.json",
    )
    parser.add_argument(
        "--compress",
        dest="compression",
        choices=tuple(COG_COMPRESSION_LEVELS),
        default="deflate",
        help="the lossless compression of every COG of the run (image, --mask-out, --uncertainty-out): deflate (read "
        "by every GeoTIFF reader) or zstd (faster to write; "
        "read by GDAL 2.3+, QGIS, rasterio) (default: %(default)s)",
    )
    parser.add_argument(
        "--compress-level",
        dest="compression_level",
        type=int,
        help="deflate 1-9 (default 6), zstd 1-22 (default 9): lower writes faster and larger files",
    )
    add_overwrite(parser, "replace existing outputs (never one of the inputs)")
    parser.add_argument(
        "--skip-existing",
        action="store_true",
        help="skip the scenes an earlier run finished: every output there, the image made with these weights from "
        "the same inputs, --keep-clear, --mask and cloud threshold (a stopped batch goes on); one made otherwise is "
        "refused (replaced with --overwrite)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="go on from the windows a stopped run of a scene predicted (its journal, kept beside the output), "
        "with the same inputs, weights and settings; a scene without one starts; with --overwrite, the outputs "
        "there are replaced",
    )
    parser.add_argument(
        "--journal",
        choices=JOURNAL_CHOICES,
        default="auto",
        help="keep each predicted window beside the output (.NAME.journal: 4 bytes a band and pixel, 6.3 GB for "
        "a full tile; removed once the scene is written) so that a stopped scene goes on with --resume; auto: on "
        "a CPU for a scene whose network takes more than about 10 minutes (default: %(default)s)",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="check every scene as its run would before its first window (outputs, inputs opened and sampled, S1's "
        "date, disk room) and say what it would write; a refused scene is listed and the rest checked; nothing is "
        "written, the network is not run (exit 2 if any scene would be refused)",
    )


def jobs_from_arguments(
    *,
    s2: list[str] | None,
    s1: list[str] | None,
    out: str | None,
    manifest: str | None,
    mask_out: str | None,
    preview: str | None,
    uncertainty_out: str | None = None,
    stac_item: str | None = None,
) -> list[SceneJob]:
    """Scene jobs from ``--s2/--s1/--out`` lists or a manifest CSV."""
    from dsen2cr.errors import DSen2CRError
    from dsen2cr.scene.jobs import other_output_path, output_path, read_manifest, scene_stem
    from dsen2cr.settings import SceneJob

    if manifest is not None:
        if s2 or s1 or out:
            raise DSen2CRError("--manifest: give either a manifest or --s2/--s1/--out, not both")
        if mask_out or preview or uncertainty_out or stac_item:
            raise DSen2CRError(
                "--manifest: name --mask-out/--preview/--uncertainty-out/--stac-item in its columns instead"
            )
        return read_manifest(Path(manifest))
    if not s2 or not out:
        raise DSen2CRError("remove-clouds: --s2 and --out are required (or --manifest)")
    if s1 is None:  # a model without SAR: each item of an ItemCollection is a scene (with S1: pair them first)
        from dsen2cr.inputs.stac import collection_items

        s2 = [item for text in s2 for item in collection_items(text)]
    if s1 is not None and len(s1) != len(s2):
        raise DSen2CRError(f"--s1: {len(s1)} files for {len(s2)} S2 scenes; give one S1 per S2 scene")
    asked = {"mask_out": mask_out, "preview": preview, "uncertainty_out": uncertainty_out, "stac_item": stac_item}
    given = {role: text for role, text in asked.items() if text}
    if len(s2) == 1:
        targets = [output_path(Path(out), s2[0], out)]  # "--out folder/": the scene's file in that folder
    else:
        named = [f"--{role.replace('_', '-')}" for role, text in given.items() if not text.endswith(("/", os.sep))]
        if named:
            raise DSen2CRError(
                f"{'/'.join(named)}: with several scenes, give a folder (masks/) for each scene's file named after "
                "its image, or name them per scene in a --manifest"
            )
        folder = Path(out)
        if not folder.is_dir():
            raise DSen2CRError(f"{folder}: with several scenes --out must be an existing folder")
        targets = [folder / f"{scene_stem(a)}_cloudfree.tif" for a in s2]
    partners: list[str | None] = list(s1) if s1 else [None] * len(s2)
    jobs = []
    for a, b, target in zip(s2, partners, targets, strict=True):  # "masks/": each scene's file named after its image
        others = {role: other_output_path(Path(text), role, target, text) for role, text in given.items()}
        mask, quicklook, sigma, item = (others.get(role) for role in asked)
        jobs.append(SceneJob(a, b, target, mask, quicklook, sigma, item))
    return jobs


def run(args: argparse.Namespace) -> int:
    """Run ``remove-clouds``; under SLURM, its time-limit warning (``#SBATCH --signal=SIGUSR1@90``) stops a run with
    ``--resume`` at a batch's end and requeues the job (:mod:`dsen2cr.scene.time_limit`)."""
    from dsen2cr.cli.scene_lines import dry_run, run_and_report
    from dsen2cr.scene.time_limit import TimeLimitWarning, requeue_after_warning, time_limit_warning
    from dsen2cr.settings import SceneSettings

    settings = SceneSettings.from_options(argparse.Namespace(**vars(args), progress=not args.no_progress))
    jobs = jobs_from_arguments(
        s2=args.s2,
        s1=args.s1,
        out=args.out,
        manifest=args.manifest,
        mask_out=args.mask_out,
        preview=args.preview,
        uncertainty_out=args.uncertainty_out,
        stac_item=args.stac_item,
    )
    manifest = (Path(args.manifest),) if args.manifest else ()
    if args.dry_run:
        dry_run(jobs, settings, manifest)
        return 0
    with time_limit_warning(stops=settings.resume) as slurm_job:
        try:
            run_and_report(jobs, settings, manifest)
        except TimeLimitWarning:
            return requeue_after_warning(slurm_job)
    return 0
