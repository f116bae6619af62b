"""What S1 in two frames of one pass costs a scene run: the frames joined with ``+`` (read as one S1, window by
window, the second frame where the first has no data) against merging them into one file first (``rio merge``'s
way, rasterio.merge, written as a tiled GeoTIFF) and reading that, in the same run; and the frames read as they
are (they lie on the scene's pixel lattice: windows shifted, the tool) against warped onto its grid (as every S1
not on the scene's very grid was read before); and frames at 20 m (one lattice, not the scene's) mosaicked on it and
warped at once (the tool: as the file they were cut from) against each warped on its own (before).

Two frames on the scene's 10 m pixel lattice (as RTC frames of the scene's UTM zone are), each a file of its own
extent: the west one over 55 % of the scene's columns, the east one over the last 55 % (their overlap 10 %), read as
``remove-clouds`` reads S1 (windows of ``--window`` px).

Run: ``python -m benchmarks.s1_frames [--size 4096] [--window 1024]``
(writes benchmarks/results/s1_frames.json and .md).
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np
import rasterio
from rasterio.merge import merge
from rasterio.transform import from_origin
from rasterio.windows import Window

from benchmarks.common import report, tiled_geotiff
from dsen2cr.inputs.readers import Grid
from dsen2cr.inputs.s1 import S1Source

LEFT, TOP = 500000, 5000000


def _write(path: Path, data: np.ndarray, left: float, pixel: float = 10) -> Path:
    """A 2-band float32 dB GeoTIFF of ``pixel`` m whose left edge is ``left``, NaN its no-data value, deflate."""
    profile = {**tiled_geotiff(left, pixel), "nodata": np.nan}
    with rasterio.open(path, "w", width=data.shape[2], height=data.shape[1], count=2, dtype="float32", **profile) as f:
        f.write(data)
    return path


def _read_all(s1: str, grid: Grid, window: int) -> float:
    """Seconds to read every window of the scene from ``s1`` as a scene run does (open, checks, windows)."""
    start = time.perf_counter()
    source = S1Source(s1, grid)
    for row in range(0, grid.height, window):
        for col in range(0, grid.width, window):
            data = source.read(Window(col, row, min(window, grid.width - col), min(window, grid.height - row)))
            assert not np.isnan(data).any()
    source.close()
    return time.perf_counter() - start


def main() -> None:
    """Measure and report."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--window", type=int, default=1024)
    args = parser.parse_args()
    size = args.size
    db = np.random.default_rng(0).uniform(-25, -5, size=(2, size, size)).astype(np.float32)
    db[1] -= 6
    west_columns, east_from = int(size * 0.55), int(size * 0.45)
    grid = Grid(
        crs=rasterio.crs.CRS.from_epsg(32632), transform=from_origin(LEFT, TOP, 10, 10), width=size, height=size
    )
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        west = _write(Path(folder) / "S1A_IW_GRDH_1SDV_20230608T051234_w_db.tif", db[:, :, :west_columns], LEFT)
        east = _write(
            Path(folder) / "S1A_IW_GRDH_1SDV_20230608T051259_e_db.tif", db[:, :, east_from:], LEFT + 10 * east_from
        )
        for way, warp in (("frames joined with + (the tool)", False), ("frames joined, each warped (before)", True)):
            with mock.patch("dsen2cr.inputs.s1.grid_offset", return_value=None) if warp else contextlib.nullcontext():
                seconds = _read_all(f"{west}+{east}", grid, args.window)
            rows.append({"way": way, "merge s": 0.0, "read s": seconds, "total s": seconds, "MB written": 0.0})
        half, coarse = size // 2, db[:, ::2, ::2]  # the frames at 20 m: one lattice, not the scene's
        west20 = _write(
            Path(folder) / "S1A_IW_GRDH_1SDV_20230608T051234_w20_db.tif", coarse[:, :, : half * 55 // 100], LEFT, 20
        )
        east_col = half * 45 // 100
        east20 = _write(
            Path(folder) / "S1A_IW_GRDH_1SDV_20230608T051259_e20_db.tif",
            coarse[:, :, east_col:],
            LEFT + 20 * east_col,
            20,
        )
        for way, each in (
            ("20 m frames, mosaicked, warped at once (the tool)", False),
            ("20 m frames, each warped (before)", True),
        ):
            lattice = mock.patch("dsen2cr.inputs.s1.CommonLattice.of", return_value=None)
            with lattice if each else contextlib.nullcontext():
                seconds = _read_all(f"{west20}+{east20}", grid, args.window)
            rows.append({"way": way, "merge s": 0.0, "read s": seconds, "total s": seconds, "MB written": 0.0})
        start = time.perf_counter()
        mosaic, transform = merge([west, east], nodata=np.nan)
        merged = _write(Path(folder) / "S1_20230608T051234_merged.tif", mosaic, transform.c)
        merge_seconds = time.perf_counter() - start
        read_seconds = _read_all(str(merged), grid, args.window)
        written = round(merged.stat().st_size / 2**20, 1)
        rows.append(
            {
                "way": "merged first (rio merge), then read",
                "merge s": merge_seconds,
                "read s": read_seconds,
                "total s": merge_seconds + read_seconds,
                "MB written": written,
            }
        )
    for row in rows:
        row["size"] = size
    report("s1_frames", rows)


if __name__ == "__main__":
    main()
