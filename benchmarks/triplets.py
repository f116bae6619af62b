"""What ``dsen2cr data triplets`` costs: each S2 scene read once at most 512 px a side (its cloud share and valid
pixels), from GeoTIFFs without overviews (GDAL decodes the whole file to decimate it) and with them (as COGs and a
product's JPEG 2000 bands come), and the whole choice of triplets over a collection.

Synthetic inputs on one UTM grid: ``--scenes`` S2 GeoTIFFs (13 bands, uint16, deflate, 512 px blocks), a day apart,
every other one with an opaque cloud over its western half, and two S1 GeoTIFFs (VV, VH float32 dB) over them, all
``--size`` px a side. Files are read once before timing (so every read comes from the page cache).

Run: ``python -m benchmarks.triplets [--size 5490] [--scenes 4]`` (writes benchmarks/results/triplets.json and .md).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.windows import Window

from benchmarks.common import report, tiled_geotiff
from dsen2cr.data.triplets import SCENE_READ_SIZE, S2Scene, choose_triplets

PROFILE = tiled_geotiff()


def write_scenes(folder: Path, size: int, scenes: int, overviews: bool) -> list[str]:
    """The S2 scenes (named with their sensing times, a day apart; the even ones cloudy), with or without
    internal overviews."""
    rng = np.random.default_rng(0)
    paths = []
    for index in range(scenes):
        path = folder / f"T32TPT_202306{10 + index:02d}T101559_10m.tif"
        with rasterio.open(path, "w", count=13, dtype="uint16", width=size, height=size, **PROFILE) as dataset:
            for row in range(0, size, 1024):
                height = min(1024, size - row)
                block = rng.integers(500, 520, size=(13, height, size), dtype=np.uint16)
                block[10] = 20  # B10 of a clear sky
                if index % 2 == 0:
                    block[:, :, : size // 2] = 6000  # an opaque cloud over the western half
                    block[10, :, : size // 2] = 300
                dataset.write(block, window=Window(0, row, size, height))
            if overviews:
                dataset.build_overviews([2, 4, 8, 16], Resampling.nearest)
        paths.append(str(path))
    return paths


def write_s1(folder: Path, size: int) -> list[str]:
    """Two S1 acquisitions over the scenes, named with their sensing times."""
    rng = np.random.default_rng(1)
    paths = []
    for day in (9, 12):
        path = folder / f"S1A_IW_202306{day:02d}T051234_DVP_RTC10_G_gpuned_5F3A.tif"
        with rasterio.open(path, "w", count=2, dtype="float32", width=size, height=size, **PROFILE) as dataset:
            for row in range(0, size, 1024):
                height = min(1024, size - row)
                block = rng.uniform(-25, -5, size=(2, height, size)).astype(np.float32)
                dataset.write(block, window=Window(0, row, size, height))
        paths.append(str(path))
    return paths


def main() -> None:
    """Measure and report."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=5490, help="side of every file in pixels (default: a quarter tile)")
    parser.add_argument("--scenes", type=int, default=4)
    args = parser.parse_args()
    rows = []
    for overviews in (False, True):
        with tempfile.TemporaryDirectory() as folder:
            s2_paths = write_scenes(Path(folder), args.size, args.scenes, overviews)
            s1_paths = write_s1(Path(folder), args.size)
            for path in s2_paths + s1_paths:  # every file in the page cache
                Path(path).read_bytes()
            start = time.perf_counter()
            clouds = [S2Scene.read(path).cloud for path in s2_paths]
            read_seconds = time.perf_counter() - start
            start = time.perf_counter()
            choice = choose_triplets(s2_paths, s1_paths)
            whole_seconds = time.perf_counter() - start
        common = {
            "size": args.size,
            "scenes": args.scenes,
            "overviews": overviews,
            "triplets": len(choice.triplets),
            "cloud shares": [round(cloud, 4) for cloud in clouds],
            "read size": SCENE_READ_SIZE,
        }
        rows += [
            {"what": "each scene read (cloud share, valid pixels)", "seconds per scene": read_seconds / args.scenes},
            {"what": "choose_triplets, whole", "seconds per scene": whole_seconds / args.scenes},
        ]
        for row in rows[-2:]:
            row.update(common)
    report("triplets", rows)


if __name__ == "__main__":
    main()
