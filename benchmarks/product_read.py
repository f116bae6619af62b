"""Reading a Sentinel-2 product's JPEG 2000 bands window by window, as a scene run's reader does: the rate it
gives the network (Mpx/s of the 10 m grid) with the band files read one after the other or side by side
(``S2Source(band_threads=...)``, a GPU run's reader), and GDAL's block cache at 256 MiB (a CPU run's, and a GPU
run's before) and at a GPU run's (``dsen2cr.auto.resolve_block_cache_bytes``); and the same with the
cloud/shadow map of each window's core made alongside (``SceneMasker``, as ``--keep-clear`` and ``--mask-out``
do: the scene's statistics on a thread of their own, its blocks read on as many threads as the band files),
each map made from the window the reader read (what a scene run does), or from a read of its own through the
masker's handles with the mask's radius (what it did before); and the statistics pass alone, its blocks read on
one thread or on as many as the band files (a GPU run's).

The product: an ``IMG_DATA`` folder of the 13 L1C bands at their native 10, 20 and 60 m, each a lossless JPEG
2000 in 1024 px blocks (as ESA's files: ``gdalinfo`` says Block=1024x1024), made from the bundled real L1C scene
mirrored across a grid ``--width`` (default a full tile's 10980) by ``--height`` px; the coarser bands take
every 2nd or 6th pixel. The windows: the paper model's (``--tile`` px, the exact overlap), row by row. The files
are read once before the timed runs (the OS's page cache warm for all), and each run opens them afresh (GDAL's
block cache cold). Run: ``python -m benchmarks.product_read [--height 4096] [--name product_read]`` (writes
benchmarks/results/NAME.json and .md).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
import torch
from rasterio.crs import CRS
from rasterio.transform import from_origin

import dsen2cr.rasters
from benchmarks.common import report
from benchmarks.scene import _mirrored
from dsen2cr.auto import resolve_block_cache_bytes
from dsen2cr.data.sample import sample_scene
from dsen2cr.inputs.product import band_code
from dsen2cr.inputs.readers import S2Source
from dsen2cr.models.dsen2cr import ModelConfig
from dsen2cr.preprocessing import S2_BANDS
from dsen2cr.scene.masking import ReadWindow, SceneMasker, _scene_shadow_stats
from dsen2cr.scene.tiles import default_overlap, plan_tiles

#: Each band's resolution in metres.
RESOLUTION = {band: 10 for band in ("B2", "B3", "B4", "B8")} | {band: 60 for band in ("B1", "B9", "B10")}
RESOLUTION |= {band: 20 for band in S2_BANDS if band not in RESOLUTION}
#: Pixels of a full Sentinel-2 tile at 10 m.
FULL_TILE = 10980 * 10980


def write_product(folder: Path, width: int, height: int, shift: int = 0) -> Path:
    """An ``IMG_DATA`` folder of the 13 bands as lossless JPEG 2000 in 1024 px blocks (``shift`` DN added: another
    date's pixels, for a timing); returns the folder."""
    with rasterio.open(sample_scene()) as dataset:
        sample, crs = dataset.read(), dataset.crs or CRS.from_epsg(32633)
    image = sample[:, _mirrored(0, height, sample.shape[1])][:, :, _mirrored(0, width, sample.shape[2])]
    img_data = folder / "IMG_DATA"
    img_data.mkdir(parents=True)
    for index, band in enumerate(S2_BANDS):
        step = RESOLUTION[band] // 10
        pixels = image[index, ::step, ::step][: height // step, : width // step] + np.uint16(shift)
        profile = dict(driver="JP2OpenJPEG", width=pixels.shape[1], height=pixels.shape[0], count=1, dtype="uint16")
        profile.update(crs=crs, transform=from_origin(399960, 5800020, RESOLUTION[band], RESOLUTION[band]))
        profile.update(QUALITY=100, REVERSIBLE="YES", BLOCKXSIZE=1024, BLOCKYSIZE=1024)
        with rasterio.open(img_data / f"T33UUU_20170216T102101_{band_code(band)}.jp2", "w", **profile) as out:
            out.write(pixels[None])
    return img_data


#: How the maps are made: none, from the reader's windows (a scene run now), from reads of their own (before).
MASKS = {"reads": None, "reads and masks": "reader's window", "reads and masks read again": "own read"}


def read_scene(
    img_data: Path, tile: int, overlap: int, band_threads: int, cache_bytes: int, *, masks: str | None
) -> float:
    """Seconds to read every window of the scene (fresh handles, GDAL's block cache bounded to ``cache_bytes``),
    with ``masks`` also each core's cloud/shadow map (the paper mask; a value of :data:`MASKS`)."""
    dsen2cr.rasters.set_block_cache_bytes(cache_bytes)  # every thread's GDAL settings, the band threads' too
    with dsen2cr.rasters.gdal_block_cache():
        source = S2Source(str(img_data), offset=0, band_threads=band_threads)
        masker = SceneMasker(source.reopen(), "paper", stats_threads=band_threads) if masks is not None else None
        tiles = plan_tiles(source.grid.height, source.grid.width, tile, overlap)
        try:
            start = time.perf_counter()
            for planned in tiles:
                read = ReadWindow(planned.window, source.read(planned.window))
                if masker is not None:
                    masker.window(planned.core, read if masks == "reader's window" else None)
            return time.perf_counter() - start
        finally:
            source.close()
            if masker is not None:
                masker.close()


def statistics_pass(img_data: Path, threads: int, cache_bytes: int) -> float:
    """Seconds of the paper mask's statistics pass over the scene alone, its blocks read on ``threads``."""
    dsen2cr.rasters.set_block_cache_bytes(cache_bytes)
    with dsen2cr.rasters.gdal_block_cache():
        source = S2Source(str(img_data), offset=0)
        try:
            start = time.perf_counter()
            _scene_shadow_stats(source, threads=threads)
            return time.perf_counter() - start
        finally:
            source.close()


def _row(what: str, threads: int, cache_bytes: int, seconds: float, pixels: int) -> dict[str, object]:
    """One row of the table (printed)."""
    row = {
        "what": what,
        "reading threads": threads,
        "GDAL block cache (MiB)": cache_bytes // 2**20,
        "seconds": round(seconds, 2),
        "Mpx/s": round(pixels / seconds / 1e6, 2),
        "full tile (s, projected)": round(FULL_TILE / (pixels / seconds), 1),
    }
    print(row)
    return row


def main() -> None:
    """Measure and report."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--width", type=int, default=10980)
    parser.add_argument("--height", type=int, default=4096)
    parser.add_argument("--tile", type=int, default=1024, help="window size (a GPU run's --tile auto is 1024)")
    parser.add_argument("--name", default="product_read", help="results file name (benchmarks/results/NAME.json)")
    args = parser.parse_args()
    overlap = default_overlap(ModelConfig())
    side_by_side = min(13, os.cpu_count() or 1)
    gpu_cache = resolve_block_cache_bytes(torch.device("cuda"))  # (computed from the memory: no GPU needed)
    ways = [(1, 256 * 2**20), (side_by_side, 256 * 2**20), (side_by_side, gpu_cache)]
    pixels = args.width * args.height
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        img_data = write_product(Path(tmp), args.width, args.height)
        print(f"product of {args.width}x{args.height} written in {time.perf_counter() - start:.1f} s")
        for path in img_data.iterdir():  # the OS's page cache warm for every run
            path.read_bytes()
        for what, masks in MASKS.items():
            for band_threads, cache_bytes in ways if masks != "own read" else ways[-1:]:
                seconds = read_scene(img_data, args.tile, overlap, band_threads, cache_bytes, masks=masks)
                rows.append(_row(what, band_threads, cache_bytes, seconds, pixels))
        for threads in (1, side_by_side):
            seconds = statistics_pass(img_data, threads, gpu_cache)
            rows.append(_row("the masks' statistics pass alone", threads, gpu_cache, seconds, pixels))
    report(args.name, rows)


if __name__ == "__main__":
    main()
