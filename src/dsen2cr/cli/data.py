"""``dsen2cr data {index,synth,download,splits,sample,patches}``: index a SEN12MS-CR tree, write a synthetic one,
download the release and its split, copy the bundled sample, cut your own scenes into patches."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dsen2cr.bounds import given_bounds
from dsen2cr.choices import DEFAULT_MAX_TARGET_CLOUD
from dsen2cr.cli.data_triplets import register as register_triplets
from dsen2cr.cli.options import SubParsers, add_bounds, add_command, add_no_progress, add_overwrite, add_scene_reading
from dsen2cr.errors import DSen2CRError


def register(subparsers: SubParsers) -> None:
    """Add ``data`` and its subcommands."""
    data = add_command(
        subparsers,
        "data",
        help="SEN12MS-CR-layout data: download, index, split, synthesise, copy the sample, cut your own scenes",
    )
    data_commands = data.add_subparsers(dest="data_command", metavar="DATA_COMMAND", required=True)

    index = add_command(
        data_commands,
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
    add_overwrite(index, "replace an existing file list (and its .skipped.tsv)")
    index.set_defaults(handler=run_index)

    synth = add_command(
        data_commands, "synth", help="write a synthetic SEN12MS-CR-like tree of real GeoTIFFs with synthetic clouds"
    )
    synth.add_argument("--out", required=True, help="output folder (new or empty: nothing is overwritten)")
    synth.add_argument("--count", type=int, required=True, help="number of triplets")
    synth.add_argument("--size", type=int, default=256, help="patch size in pixels (default: %(default)s)")
    synth.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    synth.set_defaults(handler=run_synth)

    download = add_command(
        data_commands,
        "download",
        help="download SEN12MS-CR (resumable, verified), unpack it and write files.csv with the common split",
    )
    download.add_argument("--out", required=True, help="dataset root to download into (a rerun resumes)")
    download.add_argument("--seasons", nargs="+", default=["spring", "summer", "fall", "winter"], help="default: all")
    download.add_argument("--modalities", nargs="+", default=["s1", "s2", "s2_cloudy"], help="default: all")
    download.add_argument("--base-url", help="a mirror: the archive name is appended (default: the TUM server)")
    download.add_argument("--keep-archives", action="store_true", help="keep the .tar.gz files after unpacking")
    download.add_argument("--jobs", type=int, default=1, help="archives fetched at once (default: %(default)s)")
    add_no_progress(download)
    download.set_defaults(handler=run_download)

    _register_patches(data_commands)
    register_triplets(data_commands)

    splits = add_command(data_commands, "splits", help="write the validation and test ROI lists of the common split")
    splits.add_argument("--out", required=True, help="folder to write val_rois.txt and test_rois.txt into")
    splits.set_defaults(handler=run_splits)

    sample = add_command(data_commands, "sample", help="copy the bundled real sample data to a folder")
    sample.add_argument("--out", required=True, help="output folder (new, empty, or an earlier copy with --overwrite)")
    add_overwrite(sample, "replace an earlier copy in the folder (a folder holding other files is refused)")
    sample.set_defaults(handler=run_sample)


def run_index(args: argparse.Namespace) -> int:
    """Run ``data index``."""
    from dsen2cr.data.index import index_dataset
    from dsen2cr.data.layout import read_roi_list

    report = index_dataset(
        args.root,
        args.out,
        val_rois=read_roi_list(args.val_rois) if args.val_rois else None,
        test_rois=read_roi_list(args.test_rois) if args.test_rois else None,
        threads=args.threads,
        overwrite=args.overwrite,
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


def run_synth(args: argparse.Namespace) -> int:
    """Run ``data synth``."""
    from dsen2cr.data.synth import write_synthetic_dataset

    _, file_list = write_synthetic_dataset(args.out, args.count, size=args.size, seed=args.seed)
    print(f"wrote {args.count} synthetic triplets under {args.out}; file list {file_list}")
    return 0


def run_download(args: argparse.Namespace) -> int:
    """Run ``data download``."""
    from dsen2cr.data.download import DEFAULT_BASE_URL, download_dataset

    file_list = download_dataset(
        args.out,
        seasons=args.seasons,
        modalities=args.modalities,
        base_url=args.base_url or DEFAULT_BASE_URL,
        keep_archives=args.keep_archives,
        progress=not args.no_progress,
        jobs=args.jobs,
    )
    if file_list is None:
        print(f"SEN12MS-CR under {args.out}; not indexed: no season has all of s1, s2 and s2_cloudy yet")
    else:
        print(f"SEN12MS-CR under {args.out}; file list {file_list}")
    return 0


def run_splits(args: argparse.Namespace) -> int:
    """Run ``data splits``."""
    from dsen2cr.data.download import write_splits

    val, test = write_splits(args.out)
    print(f"wrote {val} and {test}")
    return 0


def run_sample(args: argparse.Namespace) -> int:
    """Run ``data sample``."""
    from dsen2cr.data.sample import copy_sample

    out = copy_sample(args.out, overwrite=args.overwrite)
    print(f"copied the bundled sample data to {out} (see {out / 'NOTICE'})")
    return 0


def _register_patches(data_commands: SubParsers) -> None:
    """Add ``data patches``."""
    patches = add_command(
        data_commands,
        "patches",
        help="cut your own scenes (cloudy S2, cloud-free S2, S1) into SEN12MS-CR training patches of one ROI",
        description="Cut a cloudy Sentinel-2 scene, a cloud-free one on the same grid and Sentinel-1 (warped onto "
        "that grid) into SIZE px triplets of one ROI in the SEN12MS-CR release layout under OUT "
        "(ROIs0_COLLECTION_s1/s1_ROI/ROIs0_COLLECTION_s1_ROI_pN.tif, ...), read as remove-clouds reads scenes. "
        "Patches with no data in any of the three images are left out. Then list them, with the splits of your "
        "ROI lists, with dsen2cr data index OUT --out OUT/files.csv.",
    )
    patches.add_argument("--s2-cloudy", help="the cloudy S2 scene (the model's input): as --s2 takes")
    patches.add_argument(
        "--s2", help="the cloud-free S2 scene on the same grid (the target): GeoTIFF, .SAFE, zip, STAC"
    )
    patches.add_argument("--s1", help="S1: VV+VH GeoTIFF, VV.tif,VH.tif pair, or STAC item (in dB)")
    patches.add_argument("--roi", type=int, help="this scene's ROI number (splits go by ROI)")
    patches.add_argument(
        "--manifest",
        help="instead of the four above, a CSV of many scene pairs, a ROI each: columns s2_cloudy,s2,s1,roi "
        "[,s2_cloudy_offset,s2_offset,bounds,bounds_crs], paths relative to its folder (a row's bounds, LEFT BOTTOM "
        "RIGHT TOP apart by spaces, instead of --bounds); every row is checked before the first is cut",
    )
    patches.add_argument("--out", required=True, help="dataset root: the ROIs' folders are added to it")
    patches.add_argument(
        "--collection", default="own", help="letters and digits: the season token ROIs0_COLLECTION (default: own)"
    )
    patches.add_argument("--size", type=int, default=256, help="patch size in pixels (default: %(default)s)")
    patches.add_argument(
        "--max-target-cloud",
        type=float,
        default=DEFAULT_MAX_TARGET_CLOUD,
        help="leave out patches whose cloud-free image is cloudier than this share by the paper's detector "
        "(1: keep all; default: %(default)s)",
    )
    patches.add_argument(
        "--s2-offset", type=int, help="DN offset of the cloud-free S2 GeoTIFF (e.g. -1000; a manifest's s2_offset)"
    )
    patches.add_argument(
        "--s2-cloudy-offset",
        type=int,
        help="DN offset of the cloudy S2 GeoTIFF (e.g. -1000; a manifest's s2_cloudy_offset)",
    )
    add_bounds(
        patches,
        "the patches wholly inside it, where a run without bounds cuts them (their numbers too): two ROIs of one "
        "scene pair on ground apart",
    )
    add_scene_reading(patches)
    add_overwrite(patches, "replace the ROI's patches of an earlier run (a ROI folder holding other files is refused)")
    patches.add_argument(
        "--skip-existing",
        action="store_true",
        help="keep the patches an earlier run of these scenes and size wrote and cut the rest (a stopped run goes "
        "on); patches cut otherwise are refused (replaced with --overwrite)",
    )
    add_no_progress(patches)
    patches.set_defaults(handler=run_patches)


def run_patches(args: argparse.Namespace) -> int:
    """Run ``data patches``: one scene pair, or a manifest's."""
    from dsen2cr.data.patch_jobs import (
        PatchJob,
        PatchOptions,
        check_patch_jobs,
        cut_patch_jobs,
        read_patch_manifest,
        warn_overlaps,
    )
    from dsen2cr.data.patches import PatchReport, SceneTriplet
    from dsen2cr.inputs.area import WHOLE_SCENE

    single = {"--s2-cloudy": args.s2_cloudy, "--s2": args.s2, "--s1": args.s1, "--roi": args.roi}
    offsets = {"--s2-cloudy-offset": args.s2_cloudy_offset, "--s2-offset": args.s2_offset}
    bounds = given_bounds(args.bounds, args.bounds_crs)
    if args.manifest is not None:
        if given := [name for name, value in {**single, **offsets}.items() if value is not None]:
            raise DSen2CRError(
                f"--manifest: its rows name the scenes, ROIs and offsets (columns s2_cloudy,s2,s1,roi,"
                f"s2_cloudy_offset,s2_offset); leave out {', '.join(given)}"
            )
        jobs = read_patch_manifest(args.manifest, s1_linear=args.s1_linear, resampling=args.resampling, bounds=bounds)
    elif missing := [name for name, value in single.items() if value is None]:
        raise DSen2CRError(f"data patches: needs {', '.join(missing)} (or --manifest with a row per scene pair)")
    else:
        scenes = SceneTriplet(
            args.s2_cloudy,
            args.s2,
            args.s1,
            args.s2_cloudy_offset,
            args.s2_offset,
            args.s1_linear,
            args.resampling,
            bounds,
        )
        jobs = [PatchJob(scenes, args.roi)]
    options = PatchOptions(args.collection, args.size, args.max_target_cloud, args.overwrite, args.skip_existing)
    if len(jobs) > 1:
        warn_overlaps(check_patch_jobs(jobs, args.out, options))

    def say(job: PatchJob, report: PatchReport) -> None:
        """A ROI's line: what it wrote (of which part of the scenes), the inputs' cloud cover, what was left out
        and why."""
        left_out = sum(report.left_out.values())
        reasons = ", ".join(f"{reason} ({count})" for reason, count in report.left_out.most_common())
        cover = f"the inputs' cloud cover {100 * sum(report.input_cloud) / len(report.input_cloud):.0f} % in the mean"
        kept = f"; kept {report.kept} that an earlier run wrote" if report.kept else ""
        part = f" of {report.area}" if report.area != WHOLE_SCENE else ""
        print(
            f"wrote {report.written} patch{'es' if report.written != 1 else ''} of {args.size} px, ROI "
            f"{report.roi_id}{part}, under {args.out} ({cover}){kept}"
            + (f"; left out {left_out}: {reasons}" if left_out else ""),
            flush=True,
        )

    reports = cut_patch_jobs(jobs, args.out, options, progress=not args.no_progress, on_written=say)
    if len(reports) > 1:
        kept = sum(report.kept for report in reports)
        also = f"; kept {kept} that an earlier run wrote" if kept else ""
        written = sum(report.written for report in reports)
        print(f"wrote {written} patches of {len(reports)} ROIs under {args.out}{also}")
    print(f"next: dsen2cr data index {args.out} --out {Path(args.out) / 'files.csv'} [--val-rois …] [--test-rois …]")
    return 0
