"""A ROI's folders of ``data patches``: the file names a run may write or replace there, the check that they are
free (or an earlier run's, with ``--overwrite``), and which patches of an earlier run a run keeps
(``--skip-existing``)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from rasterio.windows import Window
from rasterio.windows import transform as window_transform

from dsen2cr.data.layout import SENSORS, parse_patch_name, release_triplet
from dsen2cr.errors import DSen2CRError
from dsen2cr.inputs.readers import Grid
from dsen2cr.outputs.files import check_output_folder
from dsen2cr.rasters import open_raster


def roi_outputs(
    out: str | Path, season: str, roi: int, numbers: Iterable[int]
) -> tuple[list[Path], dict[str, set[str]]]:
    """A ROI's three folders under ``out`` (s1, s2, s2_cloudy) and, by sensor, the file names a run that cuts the
    patches of ``numbers`` may write or replace in them."""
    folders = [release_triplet(out, season, roi, 0).paths()[sensor].parent for sensor in SENSORS]
    numbers = list(numbers)
    pairs = zip(SENSORS, folders, strict=True)
    names = {sensor: _patch_names(folder, season, sensor, roi, numbers) for sensor, folder in pairs}
    return folders, names


def check_roi_outputs(
    folders: list[Path], names: dict[str, set[str]], roi: int, *, overwrite: bool, keep_earlier: bool = False
) -> None:
    """Without changing anything: a ROI's folders (:func:`roi_outputs`) are free, or hold only its patches of an
    earlier run and ``overwrite`` (or ``keep_earlier``) is given; all three are checked before any is replaced."""
    what = f"the patches of ROI {roi}"
    for folder, sensor in zip(folders, SENSORS, strict=True):
        check_output_folder(folder, owned=names[sensor], overwrite=overwrite, what=what, keep_earlier=keep_earlier)


def keeps_earlier_patches(
    folders: list[Path],
    names: dict[str, set[str]],
    recorded: dict[str, dict[str, str]],
    grid: Grid,
    windows: list[tuple[int, Window]],
    roi: int,
    *,
    overwrite: bool,
) -> bool:
    """For ``--skip-existing``: whether the patches an earlier run left in a ROI's folders are kept: every one is a
    window of the same scenes, read and chosen alike (``recorded``: by sensor, the tags this run's files record:
    the scenes' file names, offsets removed, resampling, S1's units, the target's cloud limit; a tag an earlier
    version did not write is not compared)
    and lies where this run's patch of its number lies (its georeferencing: the same ground and size). Patches cut
    otherwise are refused in one line, or with ``overwrite`` replaced (False)."""
    window_of = dict(windows)
    for folder, sensor in zip(folders, SENSORS, strict=True):
        for path in sorted(folder / name for name in names[sensor] if (folder / name).is_file()):
            parsed = parse_patch_name(path.name)
            window = window_of.get(int(parsed[2])) if parsed is not None else None
            differs = _cut_otherwise(path, recorded[sensor], grid, window)
            if differs and not overwrite:
                raise DSen2CRError(
                    f"{differs}: --skip-existing keeps only the patches this run would cut; pass --overwrite to cut "
                    f"ROI {roi} again"
                )
            if differs:
                return False
    return True


def _cut_otherwise(path: Path, expected: dict[str, str], grid: Grid, window: Window | None) -> str | None:
    """How a patch file was cut otherwise than as ``window`` of ``grid`` (None: no window of this run has its
    number), or read otherwise than its ``expected`` tags say (``DSEN2CR_SOURCE``: the scenes' names), in words, or
    None."""
    try:
        with open_raster(path, what="patch") as patch:
            tags, transform = patch.tags(), patch.transform
            shape = (patch.width, patch.height)
    except DSen2CRError as error:
        return str(error)
    source, recorded = expected["DSEN2CR_SOURCE"], tags.get("DSEN2CR_SOURCE")
    if recorded != source:
        return f"{path}: cut from {recorded or 'scenes it does not record'}, this run cuts from {source}"
    for key, value in expected.items():
        if key in tags and tags[key] != value:
            return f"{path}: recorded {key} {tags[key]!r}, this run's is {value!r}"
    if window is None:
        return f"{path}: this run cuts no patch of its number (a smaller scene or part, or patches of another size)"
    if shape != (window.width, window.height):
        return f"{path}: {shape[0]}x{shape[1]} px, this run cuts {window.width} px patches"
    if not transform.almost_equals(window_transform(window, grid.transform)):
        return f"{path}: lies at {transform.c:.1f}, {transform.f:.1f}, where this run's patch of its number does not"
    return None


def _patch_names(folder: Path, season: str, sensor: str, roi: int, numbers: list[int]) -> set[str]:
    """The file names a run may write into a ROI's folder or replace there: its own patches' and those of an
    earlier run of the ROI (of another ``--size``, so of other numbers; anything else there is not ours), named
    by the release's rule (:func:`~dsen2cr.data.layout.release_triplet`)."""

    def name(number: int) -> str:
        return release_triplet(folder, season, roi, number).paths()[sensor].name

    earlier = set()
    for entry in folder.iterdir() if folder.is_dir() else ():
        parsed = parse_patch_name(entry.name)
        if parsed is not None and entry.name == name(int(parsed[2])):
            earlier.add(entry.name)
    return earlier | {name(number) for number in numbers}
