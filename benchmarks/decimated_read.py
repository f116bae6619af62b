"""What a whole raster read decimated costs (``pair``'s and ``data triplets``' look at each scene and S1 file): GDAL's
own decimated read of a GeoTIFF without overviews against :func:`dsen2cr.rasters.read_decimated`, which reads it in
strips of its blocks, each decoded once.

A ``--size`` px 13-band uint16 GeoTIFF (deflate, 512 px tiles, pixel-interleaved, no overviews: as exports come),
read decimated to at most 512 px a side with GDAL's block cache at ``--caches`` MiB: the smaller ones than the
file's decoded size (13 x size² x 2 bytes: 3.1 GB for a full 10980² tile, against 5 % of the RAM by default) make
GDAL decode every block once per band. The file is read once before timing (from the page cache); each way is
checked to give the same pixels.

Run: ``python -m benchmarks.decimated_read [--size 5490] [--caches 256 2048]``
(writes benchmarks/results/decimated_read.json and .md).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window

from benchmarks.common import report, tiled_geotiff
from dsen2cr.rasters import decimated_shape, read_decimated


def write_scene(path: Path, size: int) -> None:
    """The scene: 13 bands of dark ground, written in strips."""
    rng = np.random.default_rng(0)
    profile = tiled_geotiff()
    with rasterio.open(path, "w", width=size, height=size, count=13, dtype="uint16", **profile) as dataset:
        for row in range(0, size, 1024):
            height = min(1024, size - row)
            dataset.write(
                rng.integers(500, 520, (13, height, size), dtype=np.uint16), window=Window(0, row, size, height)
            )


def main() -> None:
    """Measure and report."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=5490, help="side of the scene in pixels (default: a quarter tile)")
    parser.add_argument("--caches", type=int, nargs="+", default=[256, 2048], help="GDAL block cache sizes, MiB")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "scene.tif"
        write_scene(path, args.size)
        path.read_bytes()
        shape = decimated_shape(args.size, args.size, 512)
        for cache in args.caches:
            timings, results = {}, {}
            for way in ("GDAL's decimated read", "strips (the tool)"):
                with rasterio.Env(GDAL_CACHEMAX=cache * 2**20), rasterio.open(path) as dataset:
                    start = time.perf_counter()
                    if way.startswith("GDAL"):
                        results[way] = dataset.read(out_shape=(13, *shape))
                    else:
                        results[way] = read_decimated(dataset, shape)
                    timings[way] = time.perf_counter() - start
            first, second = results.values()
            assert np.array_equal(first, second)
            for way, seconds in timings.items():
                decoded_mb = 13 * args.size**2 * 2 / 2**20
                rows.append(
                    {
                        "way": way,
                        "cache MiB": cache,
                        "decoded file MiB": round(decoded_mb),
                        "seconds": seconds,
                        "size": args.size,
                        "to": list(shape),
                    }
                )
    report("decimated_read", rows)


if __name__ == "__main__":
    main()
