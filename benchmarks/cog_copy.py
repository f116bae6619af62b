"""The final COG copy of a scene run, alone: seconds, main-thread CPU seconds and output size for the COG
options in use (``dsen2cr.outputs.geotiff.COG_OPTIONS``) and variants of them, on a staging file like the one
``remove-clouds`` writes (tiled, uncompressed, 13 uint16 bands).

The main-thread CPU time is the serial part (reading the staging file, GDAL's copies, writing tiles); the
rest of the wall time is compression on GDAL's worker threads, or waiting for the disk. Two textures: the
bundled real scene mirrored across the strip (compresses like a real output) and random DN (incompressible).
Run: ``python -m benchmarks.cog_copy [--width 10980 --height 2048]`` (about a minute on 2 cores).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import rasterio
import rasterio.shutil

from benchmarks.common import report
from benchmarks.scene import write_scene
from dsen2cr.outputs.geotiff import COG_OPTIONS, STAGING_OPTIONS
from dsen2cr.rasters import gdal_block_cache

VARIANTS: dict[str, dict[str, str]] = {
    "in use": {},
    "deflate level 1": {"LEVEL": "1"},
    "zstd": {"COMPRESS": "ZSTD"},
    "zstd level 1": {"COMPRESS": "ZSTD", "LEVEL": "1"},
    "average overviews": {"OVERVIEW_RESAMPLING": "AVERAGE"},
    "no overviews": {"OVERVIEWS": "NONE"},
    "one thread": {"NUM_THREADS": "1"},
}


def main() -> None:
    """Measure and report."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--width", type=int, default=10980)
    parser.add_argument("--height", type=int, default=2048)
    parser.add_argument("--textures", nargs="+", default=["sample", "noise"], choices=["sample", "noise"])
    parser.add_argument("--name", default="cog_copy", help="results file name (benchmarks/results/NAME.json)")
    args = parser.parse_args()
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for texture in args.textures:
            compressed = Path(tmp) / f"{texture}.tif"
            write_scene(compressed, args.width, 13, "uint16", seed=0, height=args.height, texture=texture)
            staging = Path(tmp) / "staging.tif"
            with gdal_block_cache():
                rasterio.shutil.copy(compressed, staging, **STAGING_OPTIONS)  # as remove-clouds leaves it
                for name, options in VARIANTS.items():
                    out = Path(tmp) / "out.tif"
                    start, cpu = time.perf_counter(), time.thread_time()
                    rasterio.shutil.copy(staging, out, **dict(COG_OPTIONS, **options))
                    seconds, cpu = time.perf_counter() - start, time.thread_time() - cpu
                    rows.append(
                        {
                            "strip": f"{args.width}x{args.height}, {os.cpu_count()} CPUs",
                            "GDAL": rasterio.__gdal_version__,
                            "texture": texture,
                            "copy": name,
                            "seconds": seconds,
                            "main-thread CPU s": cpu,
                            "MB": out.stat().st_size / 1e6,
                            "Mpx/s": args.width * args.height / seconds / 1e6,
                        }
                    )
                    print(rows[-1], flush=True)
                    out.unlink()
            staging.unlink()
    report(args.name, rows)


if __name__ == "__main__":
    main()
