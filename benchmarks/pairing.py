"""What ``dsen2cr pair`` costs: each S1 candidate's data mask read once, decimated, and every scene's lattice looked
up in it, against looking each scene's lattice points up in the S1 files themselves (a read of the blocks they fall
in, for every scene).

Synthetic inputs on one UTM grid: ``--scenes`` S2 GeoTIFFs (13 bands, uint16, no overviews, as exports come) and
``--candidates`` S1 GeoTIFFs (VV, VH float32 dB, deflate, 512 px blocks, no overviews, as RTC files come), all
``--size`` px a side, S1 with no data in a band along one edge. Each way is timed over all scene-candidate pairs,
after a warm-up that reads every file once (so both read from the page cache); the two must find the same cover to
within a lattice step.

Run: ``python -m benchmarks.pairing [--size 5490] [--scenes 3] [--candidates 4]``
(writes benchmarks/results/pairing.json and .md).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
from rasterio.warp import transform as transform_points

from benchmarks.common import report, tiled_geotiff
from dsen2cr.inputs.pairing import LATTICE_SIZE, S1Footprint, pair_scenes, scene_lattice
from dsen2cr.inputs.readers import S2Source
from dsen2cr.inputs.s1_time import s1_sensing_time


def write_inputs(folder: Path, size: int, scenes: int, candidates: int) -> tuple[list[str], list[str]]:
    """The scenes and the S1 candidates (named with their sensing times, a day apart)."""
    profile = {**tiled_geotiff(), "width": size, "height": size}
    rng = np.random.default_rng(0)
    s2_paths, s1_paths = [], []
    for index in range(scenes):
        path = folder / f"T32TPT_202306{10 + index:02d}T101559_10m.tif"
        with rasterio.open(path, "w", count=13, dtype="uint16", **profile) as dataset:
            for row in range(0, size, 1024):
                height = min(1024, size - row)
                block = rng.integers(200, 3000, size=(13, height, size), dtype=np.uint16)
                block[10] = 20  # B10 of a clear sky
                dataset.write(block, window=rasterio.windows.Window(0, row, size, height))
        s2_paths.append(str(path))
    for index in range(candidates):
        path = folder / f"S1A_IW_202306{1 + index:02d}T051234_DVP_RTC10_G_gpuned_5F3A.tif"
        with rasterio.open(path, "w", count=2, dtype="float32", nodata=np.nan, **profile) as dataset:
            for row in range(0, size, 1024):
                height = min(1024, size - row)
                block = rng.uniform(-25, -5, size=(2, height, size)).astype(np.float32)
                block[:, :, : size // (index + 3)] = np.nan  # no data along the west edge, wider for later ones
                dataset.write(block, window=rasterio.windows.Window(0, row, size, height))
        s1_paths.append(str(path))
    return s2_paths, s1_paths


def point_lookup_cover(s1: str, crs: object, xs: np.ndarray, ys: np.ndarray) -> float:
    """The baseline: the lattice's points looked up in the S1 file itself (``DatasetReader.sample``)."""
    with rasterio.open(s1) as dataset:
        s1_xs, s1_ys = transform_points(crs, dataset.crs, xs.tolist(), ys.tolist())
        rows, cols = rasterio.transform.rowcol(dataset.transform, s1_xs, s1_ys)
        inside = [
            (x, y)
            for x, y, r, c in zip(s1_xs, s1_ys, rows, cols, strict=True)
            if 0 <= r < dataset.height and 0 <= c < dataset.width
        ]
        values = np.array(list(dataset.sample(inside)), np.float64).reshape(-1, 2)
    return float(np.all(np.isfinite(values), axis=1).sum()) / len(xs)


def main() -> None:
    """Measure and report."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=5490, help="side of every file in pixels (default: a quarter tile)")
    parser.add_argument("--scenes", type=int, default=3)
    parser.add_argument("--candidates", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        s2_paths, s1_paths = write_inputs(Path(folder), args.size, args.scenes, args.candidates)
        for path in s2_paths + s1_paths:  # warm-up: every file in the page cache
            Path(path).read_bytes()
        lattices = []
        start = time.perf_counter()
        for s2_path in s2_paths:
            s2 = S2Source(s2_path)
            lattices.append((s2.grid.crs, *scene_lattice(s2)))
            s2.close()
        lattice_seconds = time.perf_counter() - start
        start = time.perf_counter()
        [s1_sensing_time(path) for path in s1_paths]
        dates_seconds = time.perf_counter() - start
        start = time.perf_counter()
        footprints = [S1Footprint.read(path) for path in s1_paths]
        tool = [[float(footprint.held(*lattice).mean()) for footprint in footprints] for lattice in lattices]
        tool_seconds = time.perf_counter() - start
        start = time.perf_counter()
        lookup = [[point_lookup_cover(path, *lattice) for path in s1_paths] for lattice in lattices]
        lookup_seconds = time.perf_counter() - start
        start = time.perf_counter()
        pair_scenes(s2_paths, s1_paths, min_cover=0.1)
        whole_seconds = time.perf_counter() - start
    difference = float(np.max(np.abs(np.array(tool) - np.array(lookup))))
    assert difference <= 2 / LATTICE_SIZE, difference
    pairs = args.scenes * args.candidates
    common = {
        "size": args.size,
        "scenes": args.scenes,
        "candidates": args.candidates,
        "max cover difference": difference,
    }
    rows = [
        {"what": "scenes' lattices (S2 read decimated)", "seconds": lattice_seconds, **common},
        {"what": "S1 dates (tags and names)", "seconds": dates_seconds, **common},
        {"what": "cover: S1 mask read once, decimated (the tool)", "seconds": tool_seconds, **common},
        {"what": "cover: lattice points looked up per scene", "seconds": lookup_seconds, **common},
        {"what": "pair_scenes, whole", "seconds": whole_seconds, **common},
    ]
    for row in rows:
        row["seconds per scene-candidate pair"] = float(row["seconds"]) / pairs  # type: ignore[arg-type]
    report("pairing", rows)


if __name__ == "__main__":
    main()
