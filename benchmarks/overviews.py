"""A scene's COG with its overviews made while the windows are written (``cog_writer(average_overviews=True)``,
what ``remove-clouds`` does) against GDAL making them at the copy (cubic), in one process: the seconds of the
writes (the windows, and with the pyramid its levels) and of the tail after the last window (the copy), which
on a GPU is what the network cannot hide.

The image: the bundled real L1C scene mirrored across the grid (13 uint16 bands, compresses like an output),
written in the row-major windows of ``remove-clouds`` (978 px windows, 64 px overlap: the cores).
Run: ``python -m benchmarks.overviews [--width 10980 --height 2048]`` (writes benchmarks/results/overviews.json
and .md).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.transform import from_origin

from benchmarks.common import report
from benchmarks.scene import _mirrored
from dsen2cr.data.sample import sample_scene
from dsen2cr.outputs.geotiff import COG_OPTIONS, cog_writer
from dsen2cr.rasters import gdal_block_cache
from dsen2cr.scene.tiles import plan_tiles


def main() -> None:
    """Measure and report."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--width", type=int, default=4096)
    parser.add_argument("--height", type=int, default=2048)
    args = parser.parse_args()
    with rasterio.open(sample_scene()) as dataset:
        sample = dataset.read()
    image = sample[:, _mirrored(0, args.height, sample.shape[1])][:, :, _mirrored(0, args.width, sample.shape[2])]
    tiles = plan_tiles(args.height, args.width, 978, 64)
    profile = dict(height=args.height, width=args.width, count=13, dtype="uint16", nodata=0)
    profile.update(crs=CRS.from_epsg(32632), transform=from_origin(500000, 5000000, 10, 10))
    results: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as tmp, gdal_block_cache():
        for name, average in (("GDAL makes them at the copy (cubic)", False), ("made while writing (average)", True)):
            out = Path(tmp) / f"{average}.tif"
            start = time.perf_counter()
            with cog_writer(out, profile, COG_OPTIONS, average_overviews=average) as dataset:
                for tile in tiles:
                    core = tile.core
                    block = image[
                        :, core.row_off : core.row_off + core.height, core.col_off : core.col_off + core.width
                    ]
                    dataset.write(np.ascontiguousarray(block), window=core)
                written = time.perf_counter()
            done = time.perf_counter()
            with rasterio.open(out) as cog:
                overviews = cog.overviews(1)
            measure = f"{args.width}x{args.height}, {len(tiles)} windows, overviews {name}"
            results.append(
                {"measure": f"{measure}: windows written", "value": written - start, "unit": "s", "note": ""}
            )
            results.append(
                {
                    "measure": f"{measure}: tail after the last window (the copy)",
                    "value": done - written,
                    "unit": "s",
                    "note": f"total {done - start:.1f} s; levels {overviews}",
                }
            )
    tails = [row["value"] for row in results if "tail" in str(row["measure"])]
    results[-1]["note"] = f"{results[-1]['note']}; tail {float(tails[1]) / float(tails[0]):.2f}x GDAL's"
    report("overviews", results)


if __name__ == "__main__":
    main()
