"""``dsen2cr data patches``: the seconds to cut a scene pair and its S1 into 256 px training patches, from
GeoTIFFs (tiled, deflate: what exports give) and from products' JPEG 2000 bands (an ``IMG_DATA`` folder of the
13 bands at their native 10, 20 and 60 m, lossless in 1024 px blocks, as ESA's files:
:func:`benchmarks.product_read.write_product`), every window kept (``--max-target-cloud 1``: the reads, the
checks and the writes; also on one thread, where the run writes its files and reads product bands on this
process's cores), and from the GeoTIFFs with the target's cloud check at its default. Also what ``--manifest``
adds a row before any is cut: its check (the product pair and S1 opened, grids and levels compared, the ROI's
folders looked at).

The scenes: the bundled real L1C scene mirrored across ``--size`` x ``--size`` px, as input and, 1 DN brighter, as
target (the same pixels would be left out as no target; the target holds its clouds: the default check leaves
those windows out); S1: uniform random dB on the same grid.
Run: ``python -m benchmarks.patches [--size 2048]`` (writes benchmarks/results/patches.json and .md).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin

import dsen2cr.data.patches as patches
from benchmarks.common import report
from benchmarks.product_read import write_product
from benchmarks.scene import _mirrored
from dsen2cr.data.patch_jobs import PatchJob, PatchOptions, check_patch_jobs
from dsen2cr.data.patches import SceneTriplet, cut_patches
from dsen2cr.data.sample import sample_scene
from dsen2cr.outputs.geotiff import write_geotiff

#: The grid of the scenes (write_product's origin, 10 m).
ORIGIN = from_origin(399960, 5800020, 10, 10)


def write_geotiffs(folder: Path, size: int) -> tuple[Path, Path, Path]:
    """The input, the target (its pixels 1 DN brighter) and S1 as tiled, compressed GeoTIFFs on one grid."""
    with rasterio.open(sample_scene()) as dataset:
        sample, crs = dataset.read(), dataset.crs
    image = sample[:, _mirrored(0, size, sample.shape[1])][:, :, _mirrored(0, size, sample.shape[2])]
    rng = np.random.default_rng(0)
    s1 = np.stack([rng.uniform(-20, -5, (size, size)), rng.uniform(-28, -12, (size, size))]).astype(np.float32)
    return (
        write_geotiff(folder / "cloudy.tif", image, crs=crs, transform=ORIGIN),
        write_geotiff(folder / "clear.tif", image + np.uint16(1), crs=crs, transform=ORIGIN),
        write_geotiff(folder / "s1.tif", s1, crs=crs, transform=ORIGIN),
    )


def timed_cut(scenes: SceneTriplet, out: Path, max_target_cloud: float) -> tuple[float, int, int]:
    """Seconds, patches written and patches left out of one ``cut_patches`` run."""
    start = time.perf_counter()
    report = cut_patches(scenes, out, roi=1, max_target_cloud=max_target_cloud, progress=False)
    return time.perf_counter() - start, report.written, sum(report.left_out.values())


default_threads = patches.writer_threads


def main() -> None:
    """Measure and report."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=2048, help="scene width and height in pixels")
    args = parser.parse_args()
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        cloudy, clear, s1 = write_geotiffs(folder, args.size)
        products = [
            write_product(folder / name, args.size, args.size, shift) for name, shift in (("input", 0), ("target", 1))
        ]
        runs = {
            "GeoTIFFs, every window kept, one thread": (SceneTriplet(str(cloudy), str(clear), str(s1)), 1.0),
            "GeoTIFFs, every window kept": (SceneTriplet(str(cloudy), str(clear), str(s1)), 1.0),
            "GeoTIFFs, the target's cloud check (0.1)": (SceneTriplet(str(cloudy), str(clear), str(s1)), 0.1),
            "JPEG 2000 bands (IMG_DATA), every window kept": (
                SceneTriplet(str(products[0]), str(products[1]), str(s1)),
                1.0,
            ),
        }
        for index, (name, (scenes, max_cloud)) in enumerate(runs.items()):
            threads = 1 if name.endswith("one thread") else default_threads()
            patches.writer_threads = lambda threads=threads: threads  # type: ignore[misc]
            seconds, written, left_out = timed_cut(scenes, folder / f"out{index}", max_cloud)
            megapixels = args.size * args.size / 1e6
            note = f"{written} patches written, {left_out} left out; {megapixels / seconds:.2f} Mpx/s of the scene; "
            note += f"{threads} writer thread{'s' if threads != 1 else ''} (and band readers)"
            rows.append({"measure": f"{args.size}x{args.size} px, {name}", "value": seconds, "unit": "s", "note": note})
        start = time.perf_counter()
        job = PatchJob(SceneTriplet(str(products[0]), str(products[1]), str(s1)), 2)
        check_patch_jobs([job], folder / "out9", PatchOptions())
        rows.append(
            {
                "measure": f"{args.size}x{args.size} px, JPEG 2000 bands: a manifest row's check before any is cut",
                "value": time.perf_counter() - start,
                "unit": "s",
                "note": "both products' 13 band files and S1 opened, the offset's sample read, grids compared",
            }
        )
    report("patches", rows)


if __name__ == "__main__":
    main()
