"""``dsen2cr data index``: scan a dataset root, check every triplet, write a DSen2-CR file list."""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import rasterio
from rasterio.warp import transform_bounds

from dsen2cr.data.layout import (
    SEASONS,
    SPLIT_NAMES,
    Triplet,
    is_sensor_folder,
    parse_patch_name,
    scan_release,
    write_file_list,
)
from dsen2cr.errors import DSen2CRError
from dsen2cr.outputs.files import atomic_path, check_output_file
from dsen2cr.preprocessing import NUM_S1_BANDS, NUM_S2_BANDS
from dsen2cr.rasters import Footprint, lattice_overlap, overlapping

_EXPECTED_BANDS = {"s1": NUM_S1_BANDS, "s2": NUM_S2_BANDS, "s2_cloudy": NUM_S2_BANDS}
#: Folder names of the DSen2-CR flat layout (the cloud-free folder has had both names in the wild).
FLAT_FOLDERS = ("s1", ("s2_cloudFree", "s2"), "s2_cloudy")

log = logging.getLogger(__name__)

#: Files checked in parallel at most (``data index --threads``).
MAX_THREADS = 256


@dataclass
class IndexReport:
    """What ``index_dataset`` found: the good triplets and the skipped files with reasons."""

    triplets: list[Triplet] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    #: By held-out split (2, 3): its patches on ground of training patches, their ROIs, those training ROIs.
    on_training_ground: dict[int, tuple[int, list[str], list[str]]] = field(default_factory=dict)

    def split_counts(self) -> dict[str, int]:
        """Number of triplets per split name."""
        counts = {name: 0 for name in SPLIT_NAMES.values()}
        for t in self.triplets:
            counts[SPLIT_NAMES[t.split]] += 1
        return counts


def scan_flat(root: Path) -> tuple[list[Triplet], list[tuple[Path, str]]]:
    """Find the triplets of a DSen2-CR flat layout (``s1/``, ``s2_cloudFree/``, ``s2_cloudy/`` under root)."""
    s2_folder = next((root / name for name in FLAT_FOLDERS[1] if (root / name).is_dir()), None)
    folders = [root / "s1", s2_folder or root / FLAT_FOLDERS[1][0], root / "s2_cloudy"]
    if s2_folder is None or not all(f.is_dir() for f in folders):
        raise DSen2CRError(
            f"{root}: no SEN12MS-CR data found (expected ROIs*_s1 season folders, or s1/, s2_cloudFree/ and "
            "s2_cloudy/ folders)"
        )
    names = [{e.name for e in os.scandir(f)} for f in folders]
    triplets, skipped = [], []
    for name in sorted(set().union(*names)):
        parsed = parse_patch_name(name)
        if parsed is None:
            continue
        present = [name in listed for listed in names]
        if not all(present):
            missing = [str(f / name) for f, here in zip(folders, present, strict=True) if not here]
            first = next(f / name for f, here in zip(folders, present, strict=True) if here)
            skipped.append((first, f"missing partner file {', '.join(missing)}"))
            continue
        season, roi, patch = parsed
        s1_file, s2_file, cloudy_file = (f / name for f in folders)
        triplets.append(Triplet(f"{season}_{roi}_p{patch}", f"{season}/{roi}", s1_file, s2_file, cloudy_file))
    return triplets, skipped


def check_triplet(triplet: Triplet) -> str | None:
    """Return why a triplet is unusable (band counts, sizes, CRS or transforms that disagree), or None."""
    problem = _problem_or_footprint(triplet)
    return problem if isinstance(problem, str) else None


def _problem_or_footprint(triplet: Triplet) -> str | Footprint:
    """Why a triplet is unusable (:func:`check_triplet`), else the ground it covers."""
    grids = {}
    for role, path in triplet.paths().items():
        try:
            with rasterio.open(path) as src:
                if src.count != _EXPECTED_BANDS[role]:
                    return f"{path}: {src.count} bands, expected {_EXPECTED_BANDS[role]}"
                grids[role] = (path, src.width, src.height, src.crs, src.transform)
        except rasterio.errors.RasterioIOError as error:
            return f"{path}: cannot read ({' '.join(str(error).split())})"
    ref_path, *ref = grids["s2_cloudy"]
    for role in ("s1", "s2"):
        path, width, height, crs, transform = grids[role]
        if (width, height) != (ref[0], ref[1]):
            return f"{path}: size {height}x{width} differs from {ref_path} ({ref[1]}x{ref[0]})"
        if crs != ref[2]:
            return f"{path}: CRS {crs} differs from {ref_path} ({ref[2]})"
        if not transform.almost_equals(ref[3], precision=1e-6):
            return f"{path}: geotransform differs from {ref_path}"
    return Footprint.of(ref[2], ref[3], ref[0], ref[1])


def index_dataset(
    root: str | Path,
    out_csv: str | Path,
    *,
    val_rois: set[str] | None = None,
    test_rois: set[str] | None = None,
    threads: int = 16,
    overwrite: bool = False,
) -> IndexReport:
    """Scan ``root`` (official nested release or DSen2-CR flat layout), check every triplet, and write the
    usable ones to ``out_csv`` (DSen2-CR format; ROIs in ``val_rois``/``test_rois`` get splits 2/3, the rest 1).

    Unusable patches are listed with their reason in ``OUT.skipped.tsv``.
    """
    root = Path(root)
    if not root.is_dir():
        raise DSen2CRError(f"{root}: dataset root is not a folder")
    if not 1 <= threads <= MAX_THREADS:
        raise DSen2CRError(f"threads: must be in [1, {MAX_THREADS}], got {threads}")
    out_csv = Path(out_csv)
    skipped_path = Path(f"{out_csv}.skipped.tsv")
    for path in (out_csv, skipped_path):
        if parse_patch_name(path.name) is not None:
            raise DSen2CRError(f"{path}: is named like a SEN12MS-CR patch file; the file list must not replace one")
        check_output_file(path, overwrite=overwrite, kind="text")
    is_release = any(e.is_dir() and is_sensor_folder(e.name) for e in os.scandir(root))
    triplets, skipped = scan_release(root) if is_release else scan_flat(root)
    if not triplets and not skipped:
        raise DSen2CRError(f"{root}: no SEN12MS-CR patch files found")
    val_rois, test_rois = val_rois or set(), test_rois or set()
    overlap = val_rois & test_rois
    if overlap:
        raise DSen2CRError(f"ROI lists: {sorted(overlap)[0]} is in both the validation and the test list")
    present = {t.roi for t in triplets}
    # a ROI of a release season the tree does not hold is expected to be absent (the common split names all four)
    expected = set(SEASONS.values()) - {roi.split("/")[0] for roi in present}
    for name, listed in (("validation", val_rois), ("test", test_rois)):
        absent = sorted(roi for roi in listed - present if roi.split("/")[0] not in expected)
        if absent:
            log.warning(
                "%d ROI(s) of the %s list match no patch under %s (e.g. %s): check the ids or the root",
                len(absent),
                name,
                root,
                absent[0],
            )
    report = IndexReport(skipped=list(skipped))
    footprints = []
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for triplet, footprint in zip(triplets, pool.map(_problem_or_footprint, triplets), strict=True):
            if isinstance(footprint, str):
                report.skipped.append((triplet.s1, footprint))
                continue
            split = 2 if triplet.roi in val_rois else 3 if triplet.roi in test_rois else 1
            report.triplets.append(replace(triplet, split=split))
            footprints.append(footprint)
    if not report.triplets:
        raise DSen2CRError(f"{root}: {_none_usable(report.skipped)}")
    report.on_training_ground = held_out_on_training_ground(report.triplets, footprints)
    for split, (count, rois, training_rois) in report.on_training_ground.items():
        log.warning(
            "%d of the %d %s patches (%s) lie on ground that training patches cover (%s): a model would be scored "
            "there on ground it trained on; give ROIs of one place one split (--val-rois, --test-rois)",
            count,
            report.split_counts()[SPLIT_NAMES[split]],
            {2: "validation", 3: "test"}[split],
            _some(rois),
            _some(training_rois),
        )
    write_file_list(report.triplets, out_csv, root)
    if report.skipped:
        with atomic_path(skipped_path) as tmp:
            tmp.write_text("".join(f"{path}\t{reason}\n" for path, reason in report.skipped), encoding="utf-8")
    elif overwrite:
        skipped_path.unlink(missing_ok=True)  # an earlier run's list of skipped patches no longer applies
    return report


#: Points across each side of a patch whose lattice (cells' centres) tells shared ground across CRSs: an overlap of
#: more than about a quarter of a side each way is found (by the centres alone, only one of over half).
PATCH_LATTICE = 4


def held_out_on_training_ground(
    triplets: list[Triplet], footprints: list[Footprint]
) -> dict[int, tuple[int, list[str], list[str]]]:
    """For the validation and test splits of ``triplets`` (each covering its ``footprints`` ground): how many of
    their patches share ground with a training patch, their ROIs and the training ROIs concerned. ROIs are
    compared by the box around their patches first (in longitude and latitude across CRSs), then patch by patch:
    on one CRS by their bounds (edges that only touch share nothing), across CRSs (tiles of two UTM zones) by
    whether either patch holds a point of the other's :data:`PATCH_LATTICE` (a patch's box on another CRS is
    turned a little, so boxes of patches side by side would overlap; the lattice's points lie an eighth of a side
    inside, far more than that turn moves them)."""
    places: dict[tuple[str, str], list[int]] = {}  # (ROI, CRS) -> its patches
    for index, (triplet, footprint) in enumerate(zip(triplets, footprints, strict=True)):
        places.setdefault((triplet.roi, footprint.crs), []).append(index)
    bounds = {place: np.array([footprints[i].bounds for i in indices]) for place, indices in places.items()}
    split_of = {place: triplets[indices[0]].split for place, indices in places.items()}
    box = {place: np.concatenate([b[:, :2].min(axis=0), b[:, 2:].max(axis=0)])[None] for place, b in bounds.items()}
    lonlat = {place: _lonlat_box(place[1], b[0]) for place, b in box.items()}
    found: dict[int, tuple[int, list[str], list[str]]] = {}
    for held, held_bounds in bounds.items():
        if split_of[held] == 1:
            continue
        hits, training_rois = np.zeros(len(held_bounds), dtype=bool), []
        for trained, trained_bounds in bounds.items():
            if split_of[trained] != 1:
                continue
            if trained[1] == held[1]:
                if not overlapping(box[held], box[trained])[0, 0]:
                    continue
                shared = overlapping(held_bounds, trained_bounds).any(axis=1)
            elif _near(lonlat[held], lonlat[trained]):
                shared = lattice_overlap(held_bounds, held[1], trained_bounds, trained[1], PATCH_LATTICE).any(axis=1)
            else:
                continue
            if shared.any():
                hits |= shared
                training_rois.append(trained[0])
        if hits.any():
            count, rois, trained_rois = found.get(split_of[held], (0, [], []))
            rois.append(held[0])
            trained_rois += [roi for roi in training_rois if roi not in trained_rois]
            found[split_of[held]] = (count + int(hits.sum()), rois, trained_rois)
    return found


def _lonlat_box(crs: str, box: np.ndarray) -> np.ndarray | None:
    """A box on ``crs`` as longitudes and latitudes (its edges sampled densely), or None without a CRS."""
    if not crs:
        return None
    return np.array([transform_bounds(crs, "EPSG:4326", *box, densify_pts=21)])


def _near(first: np.ndarray | None, second: np.ndarray | None, margin: float = 0.01) -> bool:
    """Whether two longitude/latitude boxes overlap, or lie within ``margin`` degrees (about 1 km) of it."""
    if first is None or second is None:
        return False
    grown = first + np.array([-margin, -margin, margin, margin])
    return bool(overlapping(grown, second)[0, 0])


def _some(rois: list[str]) -> str:
    """ROI ids for a message (``ROI a``, ``ROIs a, b``): up to three, then how many more."""
    more = f" and {len(rois) - 3} more" if len(rois) > 3 else ""
    return ("ROI " if len(rois) == 1 else "ROIs ") + ", ".join(sorted(rois)[:3]) + more


def _none_usable(skipped: list[tuple[Path, str]]) -> str:
    """Why a tree gives no file list: every patch found was skipped (the first reason as the example)."""
    path, reason = skipped[0]
    if all(why.startswith("missing partner file") for _, why in skipped):
        return f"no complete patch: all {len(skipped)} lack a partner file (e.g. {path}: {reason})"
    return f"no usable patch: all {len(skipped)} were skipped (e.g. {path}: {reason})"
