"""Training patches from your own scenes (``dsen2cr data patches``): a cloudy and a cloud-free Sentinel-2
acquisition on one grid, and Sentinel-1 warped onto it, cut into SEN12MS-CR triplets of one ROI in the release's
nested layout (docs/design.md §3.7), which ``dsen2cr data index`` then lists with the splits of your ROI lists.

The inputs are read as ``remove-clouds`` reads them (GeoTIFFs, ``.SAFE`` folders and zips, STAC items; offsets
removed, 20 m and 60 m bands resampled onto the 10 m grid, Level-2A's B10 filled), so a model trained on the
patches sees what it will see on those scenes. A patch with no data in any of its three images is left out:
SEN12MS-CR's patches are complete, and a filled one would teach the fill.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections import Counter, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rasterio.windows import Window
from rasterio.windows import transform as window_transform
from tqdm import tqdm

from dsen2cr.bounds import Bounds
from dsen2cr.choices import DEFAULT_CLOUD_THRESHOLD, DEFAULT_MAX_TARGET_CLOUD
from dsen2cr.cloud_detection import cloud_score
from dsen2cr.data.layout import SENSORS, release_triplet
from dsen2cr.data.patch_folders import check_roi_outputs, keeps_earlier_patches, roi_outputs
from dsen2cr.errors import DSen2CRError
from dsen2cr.inputs import map_s1_files
from dsen2cr.inputs.area import WHOLE_SCENE, area_text, area_window
from dsen2cr.inputs.provenance import s1_units_tags, s2_read_tags
from dsen2cr.inputs.readers import Grid, S2Source
from dsen2cr.inputs.s1 import S1Source
from dsen2cr.inputs.s1_time import GAP_WARNING_DAYS, S1_TRACK_TAG, gap_text, s1_gap_days
from dsen2cr.machine import cores
from dsen2cr.outputs.files import output_folder
from dsen2cr.outputs.geotiff import write_geotiff
from dsen2cr.outputs.locks import output_locks
from dsen2cr.preprocessing import S1_BANDS, S2_BANDS
from dsen2cr.rasters import gdal_block_cache
from dsen2cr.version import __version__

log = logging.getLogger(__name__)

#: The release's season token is ``ROIs<number>_<word>``; your patches' is ``ROIs0_<collection>``.
SEASON_NUMBER = "ROIs0"
_COLLECTION = re.compile(r"[A-Za-z0-9]+")
#: The smallest patch: the training crops and SSIM's window need room.
MIN_PATCH_SIZE = 16
MAX_ROI = 10**6


@dataclass
class PatchReport:
    """What a run of :func:`cut_patches` wrote: the patches, those left out by reason, the ROI id and folders, and
    the part of the scenes they were cut from (``--bounds``; in words, :func:`~dsen2cr.inputs.area.area_text`)."""

    roi_id: str
    folders: list[Path]
    written: int = 0
    kept: int = 0  # patches an earlier run wrote, kept (--skip-existing)
    left_out: Counter[str] = field(default_factory=Counter)
    input_cloud: list[float] = field(default_factory=list)  # the cloud fraction of each kept patch's input
    area: str = WHOLE_SCENE


def patch_windows(height: int, width: int, size: int) -> list[tuple[int, Window]]:
    """Non-overlapping ``size`` x ``size`` windows from the scene's top-left corner, numbered row by row (the
    strips at the right and bottom edges narrower than a patch are left out)."""
    columns = width // size
    return [
        (row * columns + column, Window(column * size, row * size, size, size))
        for row in range(height // size)
        for column in range(columns)
    ]


def scene_windows(
    scenes: SceneTriplet, grid: Grid, size: int, *, warn: bool = True
) -> tuple[Window, list[tuple[int, Window]]]:
    """The part of the scenes on ``grid`` to cut (:func:`~dsen2cr.inputs.area.area_window` of ``scenes.bounds``:
    all of it without; ``warn``: bounds beyond the scene are said to be clipped) and its :func:`patch_windows`
    (numbered and placed on the whole scene's patch grid, whatever the part), those wholly inside it. A one-line
    error naming ``--s2-cloudy`` when the scene, or the part, holds no patch."""
    windows = patch_windows(grid.height, grid.width, size)
    name = scenes.s2_cloudy
    if not windows:
        raise DSen2CRError(f"{name}: the scene is {grid.width}x{grid.height} px, smaller than one {size} px patch")
    area = area_window(grid, scenes.bounds, name, warn=warn)
    if scenes.bounds is None:
        return area, windows
    windows = [(number, window) for number, window in windows if _within(window, area)]
    if not windows:
        raise DSen2CRError(
            f"{name}: {scenes.bounds.label} {scenes.bounds.text()} hold no whole {size} px patch "
            f"({area_text(area, grid)}; patches lie every {size} px from the scene's top-left corner, as without "
            "bounds)"
        )
    return area, windows


def _within(window: Window, area: Window) -> bool:
    """Whether every pixel of ``window`` lies in ``area``."""
    (top, bottom), (left, right) = window.toranges()
    (area_top, area_bottom), (area_left, area_right) = area.toranges()
    return area_top <= top and bottom <= area_bottom and area_left <= left and right <= area_right


def season_of(collection: str) -> str:
    """The season token of your patches' folders and files (``ROIs0_own``)."""
    if not _COLLECTION.fullmatch(collection):
        raise DSen2CRError(
            f"--collection: letters and digits only (it becomes part of every file name), got {collection!r}"
        )
    return f"{SEASON_NUMBER}_{collection}"


def check_numbers(roi: int, size: int, max_target_cloud: float) -> None:
    """The ROI number, the patch size and the target's cloud limit: in range."""
    if not 0 <= roi <= MAX_ROI:
        raise DSen2CRError(f"--roi: must be in [0, {MAX_ROI}], got {roi}")
    if size < MIN_PATCH_SIZE:
        raise DSen2CRError(f"--size: must be at least {MIN_PATCH_SIZE} px, got {size}")
    if not 0.0 <= max_target_cloud <= 1.0:
        raise DSen2CRError(f"--max-target-cloud: a share in [0, 1], got {max_target_cloud}")


def cloud_fraction(s2_dn: np.ndarray) -> float:
    """The share of a (13, H, W) DN patch that the paper's detector calls cloud (score at least its threshold)."""
    return float((cloud_score(s2_dn) >= DEFAULT_CLOUD_THRESHOLD).mean())


@dataclass(frozen=True)
class SceneTriplet:
    """The three scenes a ROI's patches are cut from, as ``--s2-cloudy``, ``--s2`` and ``--s1`` name them, how
    to read them (the two S2 GeoTIFFs' ``--s2-cloudy-offset``/``--s2-offset``, S1 in linear power, the resampling
    of 20 m and 60 m bands), and the part of them to cut (``--bounds``; None: the whole scene)."""

    s2_cloudy: str
    s2: str
    s1: str
    s2_cloudy_offset: int | None = None
    s2_offset: int | None = None
    s1_linear: bool = False
    resampling: str = "nearest"
    bounds: Bounds | None = None  # the part to cut (--bounds, a manifest's bounds column): its whole patches


def open_scenes(scenes: SceneTriplet) -> tuple[S2Source, S2Source, S1Source]:
    """The three inputs, the cloud-free S2 on the cloudy one's grid and of its processing level, S1 warped onto
    that grid (closed again when refused)."""
    s2 = scenes.s2
    with contextlib.suppress(OSError):  # (a missing file is the reader's to name)
        if Path(s2).samefile(scenes.s2_cloudy):
            raise DSen2CRError(
                f"{s2}: is --s2-cloudy too; the target is another, cloud-free acquisition of the scene (a pair of one "
                "image teaches the model to copy its input)"
            )
    with contextlib.ExitStack() as opened:
        threads = writer_threads()  # a product's band files decoded side by side
        cloudy = S2Source(
            scenes.s2_cloudy, offset=scenes.s2_cloudy_offset, resampling=scenes.resampling, band_threads=threads
        )
        opened.callback(cloudy.close)
        clear = S2Source(s2, offset=scenes.s2_offset, resampling=scenes.resampling, band_threads=threads)
        opened.callback(clear.close)
        if clear.grid != cloudy.grid:
            raise DSen2CRError(
                f"{s2}: its grid ({_grid_text(clear)}) is not --s2-cloudy's ({_grid_text(cloudy)}): the two "
                "acquisitions must lie on one grid, pixel for pixel (products of one MGRS tile do; warp one onto the "
                "other with gdalwarp -t_srs, -tr 10 10 and -te)"
            )
        if clear.level != cloudy.level:
            raise DSen2CRError(
                f"{s2}: Level-{clear.level[1:]}, but --s2-cloudy is Level-{cloudy.level[1:]}: a model learns the "
                "target's radiometry from the input's; give two products of one level"
            )
        sar = S1Source(scenes.s1, cloudy.grid, linear=scenes.s1_linear)
        opened.pop_all()
    return cloudy, clear, sar


def _grid_text(source: S2Source) -> str:
    """A grid in words: size, CRS and origin."""
    grid = source.grid
    origin = f"{grid.transform.c:.1f}, {grid.transform.f:.1f}"
    return f"{grid.width}x{grid.height} px, {grid.crs.to_string()}, origin {origin}"


def cut_patches(
    scenes: SceneTriplet,
    out: str | Path,
    *,
    roi: int,
    collection: str = "own",
    size: int = 256,
    max_target_cloud: float = DEFAULT_MAX_TARGET_CLOUD,
    overwrite: bool = False,
    skip_existing: bool = False,
    progress: bool = True,
) -> PatchReport:
    """Cut the cloudy S2 scene, its cloud-free partner and the SAR scene of ``scenes`` into ``size`` px
    triplets of ROI ``roi`` under ``out`` (``ROIs0_<collection>_s1/s1_<roi>/…_p<n>.tif``, the release's
    naming), leaving out those with no data, or whose target is cloudier than ``max_target_cloud``
    (:func:`cloud_fraction`). A ROI folder that already holds patches is refused unless ``overwrite`` (then
    replaced; one holding other files is refused even so), or ``skip_existing`` and they are an earlier run's of
    these scenes and size (``keeps_earlier_patches``): the patches whose three files are there are kept, the
    others cut (a stopped run goes on)."""
    check_numbers(roi, size, max_target_cloud)
    season = season_of(collection)
    s2_cloudy = scenes.s2_cloudy
    with contextlib.ExitStack() as stack:
        stack.enter_context(gdal_block_cache())  # GDAL's cache, decoding threads and remote reads, as remove-clouds
        cloudy, clear, sar = open_scenes(scenes)
        for source in (cloudy, clear, sar):
            stack.callback(source.close)
        _warn_s1_gap(scenes.s1, cloudy, clear, sar)
        grid = cloudy.grid
        area, windows = scene_windows(scenes, grid, size)
        folders, names = roi_outputs(out, season, roi, [number for number, _ in windows])
        for folder in (Path(out), *(folder.parent for folder in folders)):
            if not folder.is_dir():
                folder.mkdir(parents=True)
                stack.callback(_remove_if_empty, folder)  # a failed run leaves no empty folder (season, root)
        stack.enter_context(output_locks(folders))
        tags = recorded_tags(scenes, cloudy, clear, sar, max_target_cloud)
        keep = skip_existing and keeps_earlier_patches(folders, names, tags, grid, windows, roi, overwrite=overwrite)
        check_roi_outputs(folders, names, roi, overwrite=overwrite, keep_earlier=keep)
        what = f"the patches of ROI {roi}"
        for folder, sensor in zip(folders, SENSORS, strict=True):
            owned = names[sensor]
            stack.enter_context(output_folder(folder, owned=owned, overwrite=overwrite, what=what, keep_earlier=keep))
        report = PatchReport(f"{season}/{roi}", folders, area=area_text(area, grid))
        # the files are written on threads (deflate is most of the time: 89 % on one thread; benchmarks.patches),
        # at most twice as many patches in flight as writers; on an error the queued writes are cancelled
        workers = writer_threads()
        writers = ThreadPoolExecutor(workers, thread_name_prefix="dsen2cr-patches")
        stack.callback(writers.shutdown, wait=True, cancel_futures=True)
        pending: deque[Future[None]] = deque()
        for number, window in tqdm(windows, unit="patch", desc="patches", disable=not progress, dynamic_ncols=True):
            arrays = {"s2_cloudy": cloudy.read(window), "s2": clear.read(window), "s1": sar.read(window)}
            reason = _left_out_because(arrays, cloudy, clear, max_target_cloud)
            if reason is not None:
                report.left_out[reason] += 1
                continue
            paths = release_triplet(out, season, roi, number).paths()
            report.input_cloud.append(cloud_fraction(arrays["s2_cloudy"]))
            if keep and all(path.is_file() for path in paths.values()):
                report.kept += 1
                continue
            pending.append(writers.submit(_write_triplet, paths, arrays, grid, window, tags))
            report.written += 1
            while len(pending) > 2 * workers:
                pending.popleft().result()
        for future in pending:
            future.result()
        if not report.written + report.kept:
            reasons = ", ".join(f"{reason} ({count})" for reason, count in report.left_out.most_common())
            raise DSen2CRError(f"{s2_cloudy}: no {size} px patch to keep: {reasons}")
        return report


def _warn_s1_gap(s1: str, cloudy: S2Source, clear: S2Source, sar: S1Source) -> None:
    """Warn when S1 was sensed more than :data:`GAP_WARNING_DAYS` from both S2 scenes (its ground need be neither's:
    the model would learn to distrust S1); silent where a date is unknown."""
    to_target = s1_gap_days(clear.product.sensing_time, sar.sensing_time)
    to_input = s1_gap_days(cloudy.product.sensing_time, sar.sensing_time)
    if to_target is None or to_input is None or min(abs(to_target), abs(to_input)) <= GAP_WARNING_DAYS:
        return
    log.warning(
        "%s: S1 sensed %s and %s: beyond %d days of both, the ground it shows need be neither's, and the model learns "
        "to take less from S1 (data triplets chooses S1 near the target)",
        s1,
        gap_text(to_target, "the target"),
        gap_text(to_input, "the input"),
        GAP_WARNING_DAYS,
    )


def _remove_if_empty(folder: Path) -> None:
    """Remove a folder this run created if nothing is in it (a failed run's)."""
    with contextlib.suppress(OSError):
        folder.rmdir()


def _left_out_because(
    arrays: dict[str, np.ndarray], cloudy: S2Source, clear: S2Source, max_target_cloud: float
) -> str | None:
    """Why a patch is left out (no data in one of its images, a target that is the input's pixels, a target with
    clouds), or None."""
    if not cloudy.valid(arrays["s2_cloudy"]).all():
        return "no data in --s2-cloudy"
    if not clear.valid(arrays["s2"]).all():
        return "no data in --s2"
    if not np.isfinite(arrays["s1"]).all():
        return "no data in --s1"
    if np.array_equal(arrays["s2"], arrays["s2_cloudy"]):  # one acquisition under two names (a zip and its SAFE)
        return "--s2 the same pixels as --s2-cloudy"
    if max_target_cloud < 1.0 and cloud_fraction(arrays["s2"]) > max_target_cloud:
        return f"--s2 cloudier than {max_target_cloud:.0%}"
    return None


def recorded_tags(
    scenes: SceneTriplet, cloudy: S2Source, clear: S2Source, sar: S1Source, max_target_cloud: float
) -> dict[str, dict[str, str]]:
    """What each sensor's patch files record of how they were read and chosen (but their window): the scenes' file
    names (``DSEN2CR_SOURCE``), the S2 values' meaning and the products' level, baseline, offsets removed and
    resampling (:func:`~dsen2cr.inputs.provenance.s2_read_tags`), when each scene was sensed, S1's units, and on the
    target's the cloud limit it passed (``--max-target-cloud``); compared by ``--skip-existing``."""
    radiometry = {"DSEN2CR_RADIOMETRY": "offset-free reflectance x 10000"}
    return {
        "s2_cloudy": {"DSEN2CR_SOURCE": Path(scenes.s2_cloudy).name, **radiometry, **s2_read_tags(cloudy)},
        "s2": {
            "DSEN2CR_SOURCE": Path(scenes.s2).name,
            **radiometry,
            **s2_read_tags(clear),
            "DSEN2CR_MAX_TARGET_CLOUD": f"{max_target_cloud:g}",
        },
        "s1": {
            "DSEN2CR_SOURCE": map_s1_files(scenes.s1, lambda part: Path(part).name),
            **s1_units_tags(scenes.s1_linear),
            "DSEN2CR_SENSING_TIME": sar.sensing_time or "unknown",
            "DSEN2CR_S1_ORBIT_DIRECTION": sar.orbit_direction or "unknown",
            S1_TRACK_TAG: "unknown" if sar.relative_orbit is None else str(sar.relative_orbit),
        },
    }


def writer_threads() -> int:
    """Threads that write a run's patch files: this process's cores (:func:`dsen2cr.machine.cores`), at most 16."""
    return max(1, min(16, cores()))


def _write_triplet(
    paths: dict[str, Path], arrays: dict[str, np.ndarray], grid: Grid, window: Window, tags: dict[str, dict[str, str]]
) -> None:
    """Write one patch's three files (on a writer thread: in GDAL's settings of its own): S2 as uint16 DN (13
    bands), S1 as float32 dB (VV, VH), with the window's georeferencing and tags saying how they were read
    (``tags`` by sensor: :func:`recorded_tags`), the window they were cut from and the version."""
    with gdal_block_cache():
        _write_files(paths, arrays, grid, window, tags)


def _write_files(
    paths: dict[str, Path], arrays: dict[str, np.ndarray], grid: Grid, window: Window, tags: dict[str, dict[str, str]]
) -> None:
    """:func:`_write_triplet`'s files."""
    transform = window_transform(window, grid.transform)
    where = f"column {window.col_off}, row {window.row_off}, {window.width}x{window.height} px"
    for sensor, path in paths.items():
        array = arrays[sensor]
        if sensor != "s1" and array.dtype != np.uint16:
            array = np.clip(np.rint(array), 0, np.iinfo(np.uint16).max).astype(np.uint16)
        written = {**tags[sensor], "DSEN2CR_WINDOW": where, "DSEN2CR_VERSION": __version__}

        def describe(dataset: object, written: dict[str, str] = written) -> None:
            dataset.update_tags(**written)  # type: ignore[attr-defined]

        bands = S1_BANDS if sensor == "s1" else S2_BANDS
        write_geotiff(path, array, crs=grid.crs, transform=transform, band_names=bands, describe=describe)
