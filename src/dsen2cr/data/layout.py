"""Where SEN12MS-CR triplets live on disk: the official nested release, the DSen2-CR flat layout, file lists.

Official release (docs/design.md §3.7)::

    ROOT/ROIs1158_spring_s1/s1_1/ROIs1158_spring_s1_1_p30.tif
    ROOT/ROIs1158_spring_s2/s2_1/ROIs1158_spring_s2_1_p30.tif
    ROOT/ROIs1158_spring_s2_cloudy/s2_cloudy_1/ROIs1158_spring_s2_cloudy_1_p30.tif

DSen2-CR flat layout: three folders under one root holding files of the same name, listed in a CSV whose rows
are ``split, s1_folder, s2_folder, s2_cloudy_folder, filename`` (split 1 train, 2 val, 3 test), separated by
tabs or commas. A file list written for the nested release (``dsen2cr data index``) names the S1 file; the
S2 names follow from it by the release's naming rule.

A region of interest (ROI) is a season and a scene number, written ``ROIs1158_spring/1``. Splits by ROI match
that pair exactly: ROI 1 never claims ROI 106.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from dsen2cr.errors import DSen2CRError
from dsen2cr.outputs.files import check_input_file

if TYPE_CHECKING:
    from dsen2cr.config import DataSection

log = logging.getLogger(__name__)

#: The release's four seasons: the name ``data download --seasons`` takes, and the folders' prefix.
SEASONS = {
    "spring": "ROIs1158_spring",
    "summer": "ROIs1868_summer",
    "fall": "ROIs1970_fall",
    "winter": "ROIs2017_winter",
}
SPLITS = {"train": 1, "val": 2, "test": 3}
SPLIT_NAMES = {number: name for name, number in SPLITS.items()}
#: Folder suffixes of the three sensors in the official release.
SENSORS = ("s1", "s2", "s2_cloudy")

_SEASON = r"ROIs\d+_[A-Za-z0-9]+"
# e.g. ROIs1158_spring_s1_1_p30.tif (release) or ROIs1158_spring_101_0.tif (DSen2-CR flat layout)
_PATCH_FILE = re.compile(
    rf"^(?P<season>{_SEASON})_(?:(?P<sensor>s1|s2_cloudy|s2)_)?(?P<roi>\d+)_p?(?P<patch>\d+)\.tiff?$"
)
#: A season folder of one sensor in the official release, e.g. ROIs1158_spring_s2_cloudy.
_SENSOR_FOLDER = re.compile(rf"(?P<season>{_SEASON})_(?P<sensor>s1|s2_cloudy|s2)")
_ROI_ID = re.compile(rf"^(?P<season>{_SEASON}?)(?:_s1|_s2|_s2_cloudy)?[/_ ]+(?:s1_|s2_|s2_cloudy_)?(?P<roi>\d+)$")


@dataclass(frozen=True)
class Triplet:
    """The three files of one patch, and where it belongs."""

    patch_id: str
    roi: str
    s1: Path
    s2: Path
    s2_cloudy: Path
    split: int = 0

    def paths(self) -> dict[str, Path]:
        """The three files by role."""
        return {"s1": self.s1, "s2": self.s2, "s2_cloudy": self.s2_cloudy}


def release_triplet(root: str | Path, season: str, roi: int, patch: int, split: int = 0) -> Triplet:
    """The triplet of patch ``patch`` of ROI ``roi`` of ``season`` in an official-layout tree under ``root``,
    by the release's naming rule (paths only; nothing is read or written)."""
    paths = {s: Path(root) / f"{season}_{s}" / f"{s}_{roi}" / f"{season}_{s}_{roi}_p{patch}.tif" for s in SENSORS}
    return Triplet(f"{season}_{roi}_p{patch}", f"{season}/{roi}", paths["s1"], paths["s2"], paths["s2_cloudy"], split)


def is_sensor_folder(name: str) -> bool:
    """Whether ``name`` is a season folder of one sensor in the official release (``ROIs1158_spring_s1``)."""
    return _SENSOR_FOLDER.fullmatch(name) is not None


def parse_patch_name(name: str) -> tuple[str, str, str] | None:
    """Return (season, roi number, patch number) of a SEN12MS-CR file name, or None if it is not one."""
    match = _PATCH_FILE.match(name)
    if match is None:
        return None
    return match["season"], str(int(match["roi"])), str(int(match["patch"]))


def normalise_roi(text: str) -> str:
    """Canonical ROI id ``SEASON/N`` from any of ``ROIs1158_spring/1``, ``ROIs1158_spring_1``,
    ``ROIs1158_spring_s1/s1_1``; raises ``ValueError`` for anything else."""
    match = _ROI_ID.match(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a ROI id (expected e.g. ROIs1158_spring/1)")
    return f"{match['season']}/{int(match['roi'])}"


def _triplet_from_names(root: Path, folders: Sequence[str], filename: str, split: int, where: str) -> Triplet:
    """Build a triplet from a file-list row (three folders and a file name)."""
    parsed = parse_patch_name(filename)
    if parsed is None:
        raise DSen2CRError(f"{where}: {filename!r} is not a SEN12MS-CR patch file name")
    season, roi, patch = parsed
    for folder in folders:
        if Path(folder).is_absolute() or ".." in Path(folder).parts:
            raise DSen2CRError(
                f"{where}: folder {folder!r} is outside the data root; file lists name folders relative to it"
            )
    release = _is_release_name(filename)
    names = [_release_name(filename, sensor) if release else filename for sensor in SENSORS]
    s1, s2, s2_cloudy = (root / folder / name for folder, name in zip(folders, names, strict=True))
    return Triplet(f"{season}_{roi}_p{patch}", f"{season}/{roi}", s1, s2, s2_cloudy, split)


def _is_release_name(filename: str) -> bool:
    """Whether a file name carries the release's sensor token (``..._s1_1_p30.tif``)."""
    match = _PATCH_FILE.match(filename)
    return match is not None and match["sensor"] is not None


def _release_name(filename: str, sensor: str) -> str:
    """The release's file name of the same patch for another sensor."""
    match = _PATCH_FILE.match(filename)
    assert match is not None
    return f"{match['season']}_{sensor}_{match['roi']}_p{match['patch']}{Path(filename).suffix}"


def read_file_list(csv_path: str | Path, data_root: str | Path) -> list[Triplet]:
    """Read a DSen2-CR file list (tab- or comma-separated); paths are resolved under ``data_root``.

    Malformed lines raise ``DSen2CRError`` naming the file and line.
    """
    csv_path, root = check_input_file(csv_path, "file list"), Path(data_root)
    triplets = []
    text = csv_path.read_text(encoding="utf-8-sig", errors="replace")
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = [f.strip() for f in (line.split("\t") if "\t" in line else next(csv.reader(io.StringIO(line))))]
        where = f"{csv_path}:{number}"
        if len(fields) != 5:
            raise DSen2CRError(
                f"{where}: expected 5 fields (split, s1, s2, s2_cloudy folders, file name), got {len(fields)}"
            )
        if fields[0] not in {"1", "2", "3"}:
            raise DSen2CRError(f"{where}: split must be 1 (train), 2 (val) or 3 (test), got {fields[0]!r}")
        triplets.append(_triplet_from_names(root, fields[1:4], fields[4], int(fields[0]), where))
    return triplets


def write_file_list(triplets: Iterable[Triplet], csv_path: str | Path, data_root: str | Path) -> Path:
    """Write triplets as a tab-separated DSen2-CR file list, atomically; folders relative to ``data_root``."""
    from dsen2cr.outputs.files import atomic_path

    root = Path(data_root)
    lines = []
    for t in triplets:
        if t.split not in SPLIT_NAMES:
            raise ValueError(f"{t.patch_id}: split must be 1, 2 or 3 to be written to a file list, got {t.split}")
        folders = [os.path.relpath(p.parent, root) for p in (t.s1, t.s2, t.s2_cloudy)]
        lines.append("\t".join([str(t.split), *folders, t.s1.name]))
    with atomic_path(csv_path) as tmp:
        tmp.write_text("\n".join(lines) + ("\n" if lines else ""), encoding="utf-8")
    return Path(csv_path)


def scan_release(root: str | Path) -> tuple[list[Triplet], list[tuple[Path, str]]]:
    """Find the triplets of an official (nested) SEN12MS-CR tree.

    Every patch file of every sensor counts. Returns the complete triplets (split 0: unassigned), and for each
    patch that lacks a partner, its first file found with the reason naming the files it lacks.
    """
    root = Path(root)
    if not root.is_dir():
        raise DSen2CRError(f"{root}: dataset root is not a folder")
    found: dict[tuple[str, str, str], dict[str, Path]] = {}
    for season_dir in os.scandir(root):
        folder = _SENSOR_FOLDER.fullmatch(season_dir.name)
        if folder is None or not season_dir.is_dir():
            continue
        season, sensor = folder["season"], folder["sensor"]
        for roi_dir in os.scandir(season_dir.path):
            roi_match = re.fullmatch(rf"{sensor}_(\d+)", roi_dir.name)
            if roi_match is None or not roi_dir.is_dir():
                continue
            roi = roi_match[1]
            for entry in os.scandir(roi_dir.path):
                match = _PATCH_FILE.match(entry.name)
                if match is not None and (match["season"], match["sensor"], match["roi"]) == (season, sensor, roi):
                    found.setdefault((season, roi, str(int(match["patch"]))), {})[sensor] = Path(entry.path)
    triplets: list[Triplet] = []
    skipped: list[tuple[Path, str]] = []
    # the order the S1 files sort in (season, ROI folder, file name), as file lists have always been written
    for season, roi, patch in sorted(found, key=lambda key: (key[0], f"s1_{key[1]}", f"p{key[2]}.tif")):
        files = found[season, roi, patch]
        if len(files) < len(SENSORS):
            suffix = next(iter(files.values())).suffix  # the partners' names by the release's rule, .tif or .tiff
            expected = release_triplet(root, season, int(roi), int(patch)).paths()
            missing = [str(expected[sensor].with_suffix(suffix)) for sensor in SENSORS if sensor not in files]
            first = next(files[sensor] for sensor in SENSORS if sensor in files)
            skipped.append((first, f"missing partner file {', '.join(missing)}"))
            continue
        triplets.append(
            Triplet(f"{season}_{roi}_p{patch}", f"{season}/{roi}", files["s1"], files["s2"], files["s2_cloudy"])
        )
    return triplets, skipped


def read_roi_list(path: str | Path) -> set[str]:
    """Read a ROI list (one ROI id per line, ``#`` comments allowed) into canonical ids."""
    path = check_input_file(path, "ROI list")
    rois = set()
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise DSen2CRError(f"{path}: not a text file (a ROI list holds one ROI id per line)") from None
    for number, line in enumerate(text.splitlines(), start=1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        try:
            rois.add(normalise_roi(text))
        except ValueError as error:
            raise DSen2CRError(f"{path}:{number}: {error}") from None
    return rois


def select_rois(triplets: Iterable[Triplet], rois: set[str]) -> list[Triplet]:
    """The triplets whose ROI is exactly one of ``rois`` (canonical ids; no substring matching)."""
    return [t for t in triplets if t.roi in rois]


def split_number(split: str | int) -> int:
    """The number (1, 2, 3) of a split given by name (``train``, ``val`` or ``validation``, ``test``) or number."""
    text = str(split).strip().lower()
    number = SPLITS.get("val" if text == "validation" else text) or (int(text) if text in ("1", "2", "3") else None)
    if number is None:
        raise DSen2CRError(f"split: {split!r} is not a split; use train, val or test (or 1, 2, 3)")
    return number


def select_split(triplets: Iterable[Triplet], split: str | int, *, source: str = "file list") -> list[Triplet]:
    """The triplets of one split (``train``/``val``/``test`` or 1/2/3); an empty split is an error."""
    number = split_number(split)
    triplets = list(triplets)
    chosen = [t for t in triplets if t.split == number]
    if not chosen:
        held = Counter(t.split for t in triplets)
        holds = ", ".join(f"{SPLIT_NAMES.get(n, n)} {held[n]}" for n in sorted(held)) or "no patches"
        raise DSen2CRError(
            f"{source}: split {SPLIT_NAMES.get(number, number)} has no patches (it holds {holds}); data index puts "
            "the ROIs of --val-rois in val and those of --test-rois in test (the common split: dsen2cr data splits)"
        )
    return chosen


def held_out_leaks(training: Sequence[Triplet], held_out: Sequence[Triplet]) -> tuple[list[Triplet], list[Triplet]]:
    """The ``held_out`` patches (validation or test) that are ``training`` patches too, and the others that lie in a
    ROI training patches come from (neighbours of what a model trains on: splits go by ROI)."""
    patches, rois = {t.patch_id for t in training}, {t.roi for t in training}
    same = [t for t in held_out if t.patch_id in patches]
    return same, [t for t in held_out if t.roi in rois and t.patch_id not in patches]


def warn_of_leaks(training: Sequence[Triplet], held_out: Sequence[Triplet], name: str, source: str) -> int:
    """Warn of the ``name`` split's patches that :func:`held_out_leaks` finds in ``training`` (``source``: where
    the splits come from); return how many they are (training patches too, and neighbours of them)."""
    same, neighbours = held_out_leaks(training, held_out)
    _say_leaks(same, neighbours, len(held_out), name, source)
    return len(same) + len(neighbours)


def _say_leaks(same: list[Triplet], neighbours: list[Triplet], count: int, name: str, source: str) -> None:
    """Warn of the ``name`` split's (``count`` patches) ``same`` training patches and ``neighbours`` of them."""
    if same:
        log.warning(
            "%s: %d of the %d %s patches are training patches too (e.g. %s): they score a model on what it trained on",
            source,
            len(same),
            count,
            name,
            same[0].patch_id,
        )
    if neighbours:
        log.warning(
            "%s: %d of the %d %s patches lie in ROIs that training patches come from (e.g. %s): neighbours of what a "
            "model trained on; split by ROI (data index --val-rois, --test-rois)",
            source,
            len(neighbours),
            count,
            name,
            neighbours[0].roi,
        )


def check_validation_split(training: Sequence[Triplet], validation: Sequence[Triplet], source: str) -> int:
    """Refuse validation patches that are training patches too (the validation would score what the model trains
    on, and the checkpoint chosen by it means nothing); warn of those in ROIs training patches come from, and return
    how many they are."""
    same, neighbours = held_out_leaks(training, validation)
    if same:
        raise DSen2CRError(
            f"{source}: {len(same)} of the {len(validation)} validation patches are training patches too (e.g. "
            f"{same[0].patch_id}): the validation would score what the model trains on; give each patch one split"
        )
    _say_leaks(same, neighbours, len(validation), "validation", source)
    return len(neighbours)


def data_files(data: DataSection) -> str:
    """The list files a run's splits come from, by name (never a machine's folders): the file list, the train
    and val ROI lists, or the bundled sample's file list."""
    if data.root is None:
        return "the bundled sample's files.csv"
    if data.file_list is not None:
        return Path(data.file_list).name
    lists = (("train", data.train_rois), ("val", data.val_rois))
    return ", ".join(f"{split}: {Path(roi_file).name}" for split, roi_file in lists if roi_file is not None)


def resolve_split(data: DataSection, split: str) -> list[Triplet]:
    """The triplets of one split from the file list, or from a ROI list over a scanned release tree."""
    if data.root is None:
        if data.file_list is not None or any(r is not None for r in (data.train_rois, data.val_rois, data.test_rois)):
            raise DSen2CRError("data.root: not set (the dataset root folder the file list or ROI lists refer to)")
        from dsen2cr.data.sample import sample_dataset_root, sample_file_list

        sample = sample_file_list()
        return select_split(read_file_list(sample, sample_dataset_root()), split, source=str(sample))
    check_data_root(data.root, "data.root")
    if data.file_list is not None:
        if (
            not Path(data.file_list).exists()
            and Path(data.root).resolve() not in Path(data.file_list).resolve().parents
        ):
            raise DSen2CRError(  # a config's file list that the root given on the command line left behind
                f"data.file_list: {data.file_list} not found; it is not under data.root {data.root}: set it too "
                f"(e.g. data.file_list={Path(data.root) / 'files.csv'})"
            )
        return select_split(read_file_list(data.file_list, data.root), split, source=data.file_list)
    name = SPLIT_NAMES[split_number(split)]
    roi_file = {"train": data.train_rois, "val": data.val_rois, "test": data.test_rois}[name]
    if roi_file is None:
        raise DSen2CRError(f"data: give data.file_list, or data.{name}_rois with a release root")
    return triplets_of_rois(data.root, roi_file)


def check_data_root(root: str | Path, key: str) -> None:
    """Refuse a dataset root (``key``: the option or config key that gave it) that is not a folder."""
    if not Path(root).is_dir():
        raise DSen2CRError(f"{key}: {root} is not a folder (the dataset root the file list and ROI lists refer to)")


def triplets_of_rois(root: str | Path, roi_file: str | Path) -> list[Triplet]:
    """The complete triplets of the ROIs listed in ``roi_file`` under the release tree ``root``. The patches of
    those ROIs that lack a partner file are warned of (how many, and one of them); a list none of whose ROIs
    has a complete patch is refused."""
    rois = read_roi_list(roi_file)
    triplets, skipped = scan_release(root)
    chosen = select_rois(triplets, rois)
    incomplete = [(path, reason) for path, reason in skipped if _roi_of(path) in rois]
    if not chosen:
        lacking = (
            f" ({len(incomplete)} {'lacks' if len(incomplete) == 1 else 'lack'} a partner file)" if incomplete else ""
        )
        raise DSen2CRError(f"{roi_file}: none of its ROIs has a complete patch under {root}{lacking}")
    if incomplete:
        said = (
            "1 patch of its ROIs lacks a partner file and is"
            if len(incomplete) == 1
            else (f"{len(incomplete)} patches of its ROIs lack a partner file and are")
        )
        path, reason = incomplete[0]
        log.warning("%s: %s left out (e.g. %s: %s)", roi_file, said, path, reason)
    return chosen


def _roi_of(path: Path) -> str | None:
    """The ROI id of a release patch file's path (None if its name is not a patch file's)."""
    parsed = parse_patch_name(path.name)
    return None if parsed is None else f"{parsed[0]}/{parsed[1]}"
