"""``data index`` at scale: a release-layout tree of many small (32x32) triplets, indexed with 16 threads.

The per-triplet time (scan + open three files + compare grids) extrapolates to the 122,218 triplets of
SEN12MS-CR. Run: ``python -m benchmarks.index [--count 5000]``.
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
from dsen2cr.data.index import index_dataset
from dsen2cr.data.layout import release_triplet
from dsen2cr.outputs.geotiff import write_geotiff

RELEASE_TRIPLETS = 122_218


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
            }
        ],
    )


if __name__ == "__main__":
    main()
