"""Many scene pairs in one run of ``data patches`` (``--manifest``): a CSV whose rows each name a cloudy scene, a
cloud-free one on its grid, Sentinel-1 and the ROI number their patches get (``s2_cloudy,s2,s1,roi``, optionally
``s2_cloudy_offset,s2_offset`` for GeoTIFF exports and ``bounds,bounds_crs`` for the row's part of its scenes).
Every row is checked before the first patch is written (its files, grids and levels, its ROI's folders), then each
is cut into its ROI as one ``data patches`` run would."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rasterio.windows import transform as window_transform
from rasterio.windows import union

from dsen2cr.bounds import Bounds
from dsen2cr.choices import DEFAULT_MAX_TARGET_CLOUD
from dsen2cr.data.patch_folders import check_roi_outputs, keeps_earlier_patches, roi_outputs
from dsen2cr.data.patches import (
    PatchReport,
    SceneTriplet,
    check_numbers,
    cut_patches,
    open_scenes,
    recorded_tags,
    scene_windows,
    season_of,
)
from dsen2cr.errors import DSen2CRError
from dsen2cr.inputs.manifest import manifest_input, read_manifest_rows, row_bounds
from dsen2cr.rasters import Footprint, gdal_block_cache

log = logging.getLogger(__name__)

#: Every column a ``data patches`` manifest may have.
PATCH_MANIFEST_COLUMNS = ("s2_cloudy", "s2", "s1", "roi", "s2_cloudy_offset", "s2_offset", "bounds", "bounds_crs")
_REQUIRED = ("s2_cloudy", "s2", "s1", "roi")


@dataclass(frozen=True)
class PatchOptions:
    """How every row is cut (:func:`~dsen2cr.data.patches.cut_patches`' options): the collection's name, the
    patch size, the target's cloud limit, and whether an earlier run's patches of a ROI are replaced, or kept to
    go on where it stopped."""

    collection: str = "own"
    size: int = 256
    max_target_cloud: float = DEFAULT_MAX_TARGET_CLOUD
    overwrite: bool = False
    skip_existing: bool = False


@dataclass(frozen=True)
class PatchJob:
    """One scene pair: its scenes, its ROI number and, for a manifest's row, the manifest and the row's line."""

    scenes: SceneTriplet
    roi: int
    manifest: str | None = None
    line: int = 0

    @property
    def where(self) -> str | None:
        """The row as messages name it (``pairs.csv:3``); None for a pair given by options."""
        return f"{self.manifest}:{self.line}" if self.manifest is not None else None

    def named(self, error: DSen2CRError) -> str:
        """An error's message, after the row's place when it has one."""
        return f"{self.where}: {error}" if self.where else str(error)


def read_patch_manifest(
    path: str | Path, *, s1_linear: bool = False, resampling: str = "nearest", bounds: Bounds | None = None
) -> list[PatchJob]:
    """The rows of a ``data patches`` manifest (:data:`PATCH_MANIFEST_COLUMNS`; paths relative to its folder), read
    with ``s1_linear`` and ``resampling`` as the run's options say; a row's part of its scenes is its ``bounds``
    (in ``bounds_crs``), else ``bounds`` (``--bounds``). Refused in one line naming the row: an empty required
    field, a ROI or offset that is not a whole number, a ROI of two rows, bounds that are not four numbers."""
    rows = read_manifest_rows(path, PATCH_MANIFEST_COLUMNS, _REQUIRED, header="s2_cloudy,s2,s1,roi")
    jobs: list[PatchJob] = []
    first_of: dict[int, str] = {}
    for row in rows:
        where = f"{path}:{row.line}"
        if empty := [column for column in _REQUIRED if not row.text(column)]:
            raise DSen2CRError(f"{where}: {', '.join(empty)} must not be empty")
        roi = int(_whole_number(row.text("roi"), where, "roi") or 0)  # (not empty: checked above)
        if roi in first_of:
            raise DSen2CRError(f"{where}: ROI {roi} is also {first_of[roi]}'s: each row is a ROI of its own")
        first_of[roi] = where
        scenes = SceneTriplet(
            manifest_input(row.text("s2_cloudy"), path),
            manifest_input(row.text("s2"), path),
            manifest_input(row.text("s1"), path, pair=True),
            s2_cloudy_offset=_whole_number(row.text("s2_cloudy_offset"), where, "s2_cloudy_offset"),
            s2_offset=_whole_number(row.text("s2_offset"), where, "s2_offset"),
            s1_linear=s1_linear,
            resampling=resampling,
            bounds=row_bounds(row, where, name_row=False) or bounds,  # (the job names its row: PatchJob.named)
        )
        jobs.append(PatchJob(scenes, roi, str(path), row.line))
    return jobs


def _whole_number(text: str, where: str, column: str) -> int | None:
    """A field's whole number (None for an empty optional field)."""
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        raise DSen2CRError(f"{where}: {column} must be a whole number, got {text!r}") from None


def check_patch_jobs(jobs: list[PatchJob], out: str | Path, options: PatchOptions) -> list[list[PatchJob]]:
    """Check every row as :func:`~dsen2cr.data.patches.cut_patches` would before its first patch, without writing
    anything: the numbers, the three scenes (readable, one grid, one level, S1 warped onto it), a scene of at least
    one patch, the ROI's folders free (or an earlier run's with ``options.overwrite``). A refusal names the row. Returns
    the groups of rows whose patches cover overlapping ground (on one CRS): their ROIs belong in one split (rows of
    one scene pair with parts apart from each other are not a group: the way to split a scene by area)."""
    season = season_of(options.collection)
    footprints = []
    for job in jobs:
        try:
            check_numbers(job.roi, options.size, options.max_target_cloud)
            with gdal_block_cache(), contextlib.ExitStack() as opened:
                sources = open_scenes(job.scenes)
                for source in sources:
                    opened.callback(source.close)
                grid = sources[0].grid
                _, windows = scene_windows(job.scenes, grid, options.size, warn=False)  # (warned when cut)
                tags = recorded_tags(job.scenes, *sources, options.max_target_cloud)
            folders, names = roi_outputs(out, season, job.roi, [number for number, _ in windows])
            keep = options.skip_existing and keeps_earlier_patches(
                folders, names, tags, grid, windows, job.roi, overwrite=options.overwrite
            )
            check_roi_outputs(folders, names, job.roi, overwrite=options.overwrite, keep_earlier=keep)
        except DSen2CRError as error:
            raise DSen2CRError(job.named(error)) from None
        cut = union(*(window for _, window in windows))  # the ground of the patches (a part's, with bounds)
        footprints.append(Footprint.of(grid.crs, window_transform(cut, grid.transform), cut.width, cut.height))
    return _overlapping_groups(jobs, footprints)


def _overlapping_groups(jobs: list[PatchJob], footprints: list[Footprint]) -> list[list[PatchJob]]:
    """The groups (two rows or more) of rows joined by overlapping footprints, in the manifest's order."""
    group_of = list(range(len(jobs)))  # each row's group: the first row of it

    def root(index: int) -> int:
        while group_of[index] != index:
            index = group_of[index]
        return index

    for later in range(len(jobs)):
        for earlier in range(later):
            if footprints[later].overlaps(footprints[earlier]):
                group_of[root(later)] = root(earlier)
    groups: dict[int, list[PatchJob]] = {}
    for index, job in enumerate(jobs):
        groups.setdefault(root(index), []).append(job)
    return [group for group in groups.values() if len(group) > 1]


def warn_overlaps(groups: list[list[PatchJob]]) -> None:
    """Warn once per group of rows whose scenes overlap: ROIs of one place in two splits score a model on ground
    it trained on."""
    for group in groups:
        log.warning(
            "%s: rows %s (ROIs %s) cover overlapping ground: give their ROIs one split (data index --val-rois, "
            "--test-rois), or a model is scored on ground it trained on",
            group[0].manifest,
            ", ".join(str(job.line) for job in group),
            ", ".join(str(job.roi) for job in group),
        )


def cut_patch_jobs(
    jobs: list[PatchJob],
    out: str | Path,
    options: PatchOptions,
    *,
    progress: bool = True,
    on_written: Callable[[PatchJob, PatchReport], None] | None = None,
) -> list[PatchReport]:
    """Cut every row into its ROI (:func:`~dsen2cr.data.patches.cut_patches` with ``options``), in the
    manifest's order, calling ``on_written`` after each. An error stops the run naming its row: the rows before it
    stay written (each ROI whole), the failing row's ROI leaves nothing, the rows after it are not begun."""
    reports = []
    for done, job in enumerate(jobs):
        try:
            report = cut_patches(job.scenes, out, roi=job.roi, progress=progress, **dataclasses.asdict(options))
        except DSen2CRError as error:
            rois = ", ".join(str(earlier.roi) for earlier in jobs[:done])
            rows = (
                f"the rows before it stay written (ROIs {rois})"
                if done > 1
                else f"the row before it stays written (ROI {rois})"
            )
            written = f"; {rows}"
            raise DSen2CRError(job.named(error) + (written if done else "")) from None
        if on_written is not None:
            on_written(job, report)
        reports.append(report)
    return reports
