"""``data index`` at scale: a release-layout tree of many small (32x32) triplets, indexed with 16 threads.

The per-triplet time (scan + open three files + compare grids) extrapolates to the 122,218 triplets of
SEN12MS-CR. Also the check of held-out ground at the release's scale (footprints made up, no files): 122,218
patches in 169 ROIs, 20 of them held out, once as distinct places (the boxes around ROIs part them at once), once
with every ROI's box over every other's and no patch shared (each held-out ROI compared patch by patch with
every training ROI: the most work the check can do). Run: ``python -m benchmarks.index [--count 5000]``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from rasterio.crs import CRS
from rasterio.transform import from_origin

from benchmarks.common import report
from dsen2cr.data.index import held_out_on_training_ground, index_dataset
from dsen2cr.data.layout import Triplet, release_triplet
from dsen2cr.outputs.geotiff import write_geotiff
from dsen2cr.rasters import Footprint

RELEASE_TRIPLETS = 122_218
RELEASE_ROIS = 169


def held_out_check_seconds(*, distinct: bool, zones: int = 1) -> float:
    """Seconds of :func:`held_out_on_training_ground` over the release's count of patches: ROIs of 2560 m patches
    on a 27-wide lattice, 100 km apart (``distinct``) or 10 m apart (every box over every other, patches of
    different ROIs interleaved without sharing ground: each 5 m wide here, so none overlaps another); the ROIs
    spread over ``zones`` UTM zones of the northern hemisphere in turn (as the release's are: held-out ROIs are
    then compared across CRSs, their boxes first in longitude and latitude)."""
    per_roi = RELEASE_TRIPLETS // RELEASE_ROIS + 1
    triplets, footprints = [], []
    for index in range(RELEASE_TRIPLETS):
        roi, patch = divmod(index, per_roi)
        split = 3 if roi < 10 else 2 if roi < 20 else 1
        row, column = divmod(patch, 27)
        west, south = (roi * 100_000.0 if distinct else roi * 10.0) + column * 2560.0, row * 2560.0
        triplets.append(Triplet(f"p{index}", f"ROIs1158_spring/{roi}", Path("s1"), Path("s2"), Path("c"), split))
        crs = "EPSG:32632"
        if zones > 1:  # at 45 degrees north, up to three places a zone 100 km apart
            crs = f"EPSG:{32601 + roi % zones}"
            west, south = 200_000.0 + roi // zones * 100_000.0 + column * 2560.0, 5_000_000.0 + row * 2560.0
        footprints.append(Footprint(crs, (west, south, west + (2560.0 if distinct else 5.0), south + 5.0)))
    start = time.perf_counter()
    found = held_out_on_training_ground(triplets, footprints)
    seconds = time.perf_counter() - start
    assert not found
    return seconds


def main() -> None:
    """Measure and report."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=5000)
    args = parser.parse_args()
    crs, transform = CRS.from_epsg(32632), from_origin(400000, 5000000, 10, 10)
    s1 = np.full((2, 32, 32), -12.0, np.float32)
    s2 = np.full((13, 32, 32), 1000, np.uint16)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for i in range(args.count):
            roi, patch = i // 100 + 1, i % 100
            for path, array in zip(
                release_triplet(root, "ROIs1158_spring", roi, patch).paths().values(), (s1, s2, s2), strict=True
            ):
                path.parent.mkdir(parents=True, exist_ok=True)
                write_geotiff(path, array, crs=crs, transform=transform)
        start = time.perf_counter()
        result = index_dataset(root, root / "files.csv")
        seconds = time.perf_counter() - start
    assert len(result.triplets) == args.count
    per = seconds / args.count
    report(
        "index",
        [
            {
                "triplets": args.count,
                "seconds": seconds,
                "ms_per_triplet": 1000 * per,
                "minutes_for_release": per * RELEASE_TRIPLETS / 60,
                "held_out_check_s_release_distinct_rois": held_out_check_seconds(distinct=True),
                "held_out_check_s_release_worst_case": held_out_check_seconds(distinct=False),
                "held_out_check_s_release_60_zones": held_out_check_seconds(distinct=True, zones=60),
            }
        ],
    )


if __name__ == "__main__":
    main()
