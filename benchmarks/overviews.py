"""A scene's COG written three ways, in one process: GDAL makes the overviews (cubic) and compresses at one
copy after the last window; the overviews made while the windows are written (``OverviewPyramid``) and GDAL
compresses at the copy; the overviews made and every level compressed while the windows are written
(``COGStream``, what ``remove-clouds`` does). Reported: the seconds of the writes (the windows, and what the
writer does alongside) and of the tail after the last window, which on a GPU is what the network cannot hide.
``--pause`` sleeps that many seconds after each window, as a GPU's network would leave the CPU free
(0.09 s: a full tile's 10.9 s of fused bf16 on an H200 over its 121 windows). The writing thread's own CPU
time is reported too: on a GPU it runs beside the network, one window after another, and must keep up with it.

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
from typing import Any

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

#: The three ways, by name: ``cog_writer``'s arguments.
WAYS: dict[str, dict[str, Any]] = {
    "GDAL makes the overviews (cubic) and compresses at the copy": {"overviews": "gdal"},
    "overviews made while writing, GDAL compresses at the copy": {"overviews": "average", "stream": False},
    "overviews made and compressed while writing": {"overviews": "average", "stream": True},
}


def main() -> None:
    """Measure and report."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--width", type=int, default=4096)
    parser.add_argument("--height", type=int, default=2048)
    parser.add_argument("--pause", type=float, default=0.0, help="seconds of sleep after each window")
    args = parser.parse_args()
    with rasterio.open(sample_scene()) as dataset:
        sample = dataset.read()
    image = sample[:, _mirrored(0, args.height, sample.shape[1])][:, :, _mirrored(0, args.width, sample.shape[2])]
    tiles = plan_tiles(args.height, args.width, 978, 64)
    profile = dict(height=args.height, width=args.width, count=13, dtype="uint16", nodata=0)
    profile.update(crs=CRS.from_epsg(32632), transform=from_origin(500000, 5000000, 10, 10))
    results: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as tmp, gdal_block_cache():
        for index, (name, ways) in enumerate(WAYS.items()):
            out = Path(tmp) / f"{index}.tif"
            start, cpu_start = time.perf_counter(), time.thread_time()
            with cog_writer(out, profile, COG_OPTIONS, **ways) as dataset:
                for tile in tiles:
                    core = tile.core
                    block = image[
                        :, core.row_off : core.row_off + core.height, core.col_off : core.col_off + core.width
                    ]
                    dataset.write(np.ascontiguousarray(block), window=core)
                    time.sleep(args.pause)
                written, cpu = time.perf_counter(), time.thread_time() - cpu_start
            done = time.perf_counter()
            with rasterio.open(out) as cog:
                overviews = cog.overviews(1)
            pause = f", {args.pause} s pause per window" if args.pause else ""
            measure = f"{args.width}x{args.height}, {len(tiles)} windows{pause}, {name}"
            note = f"the writing thread's own CPU {cpu:.2f} s ({1000 * cpu / len(tiles):.0f} ms a window)"
            results.append(
                {"measure": f"{measure}: windows written", "value": written - start, "unit": "s", "note": note}
            )
            results.append(
                {
                    "measure": f"{measure}: tail after the last window",
                    "value": done - written,
                    "unit": "s",
                    "note": f"total {done - start:.1f} s; levels {overviews}",
                }
            )
    tails = [float(str(row["value"])) for row in results if "tail" in str(row["measure"])]
    for row, tail in zip(results[3::2], tails[1:], strict=True):
        row["note"] = f"{row['note']}; tail {tail / tails[0]:.2f}x GDAL's"
    report("overviews-pause" if args.pause else "overviews", results)


if __name__ == "__main__":
    main()
