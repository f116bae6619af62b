"""Whole-scene inference: megapixels/s and peak resident memory for synthetic scenes of two sizes.

Each size runs ``dsen2cr remove-clouds`` in a fresh process (the small model with SAR, 256 px tiles), so its
peak RSS is the process's own. The scenes are written window by window, so the benchmark itself stays small.
Run: ``python -m benchmarks.scene [--sizes 2048 8192] [--variant dsen2cr-small]``.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.transform import from_origin
from rasterio.windows import Window

from benchmarks.common import report
from dsen2cr import create_model
from dsen2cr.data.sample import sample_scene
from dsen2cr.outputs.geotiff import GTIFF_OPTIONS
from dsen2cr.weights import save_weights


def write_scene(
    path: Path,
    size: int,
    bands: int,
    dtype: str,
    seed: int,
    block: int = 1024,
    height: int | None = None,
    texture: str = "noise",
) -> None:
    """A ``size`` x ``size`` scene (``height`` rows if given) written block by block (uint16 S2 DN or float32 S1
    dB), compressed on all cores. ``texture``: ``noise`` (uniform random values: incompressible, the worst
    case for every codec) or ``sample`` (S2 only: the bundled real L1C scene mirrored across the grid, so
    that outputs compress like a real scene's)."""
    rng = np.random.default_rng(seed)
    rows = size if height is None else height
    profile = dict(
        GTIFF_OPTIONS,
        count=bands,
        width=size,
        height=rows,
        dtype=dtype,
        crs=CRS.from_epsg(32632),
        transform=from_origin(500000, 5000000, 10, 10),
        num_threads="ALL_CPUS",
    )
    sample = None
    if texture == "sample":
        with rasterio.open(sample_scene()) as dataset:
            sample = dataset.read()
        if dtype != "uint16" or bands != sample.shape[0]:
            raise ValueError("texture sample: the bundled scene is a 13-band uint16 S2 scene")
    elif texture != "noise":
        raise ValueError(f"texture: expected noise or sample, got {texture!r}")
    with rasterio.open(path, "w", **profile) as dst:
        for r in range(0, rows, block):
            for c in range(0, size, block):
                h, w = min(block, rows - r), min(block, size - c)
                if sample is not None:
                    data = sample[:, _mirrored(r, h, sample.shape[1])][:, :, _mirrored(c, w, sample.shape[2])]
                elif dtype == "uint16":
                    data = rng.integers(200, 6000, size=(bands, h, w), dtype=np.uint16)
                else:
                    data = rng.uniform(-25, -5, size=(bands, h, w)).astype(np.float32)
                dst.write(data, window=Window(c, r, w, h))


def _mirrored(start: int, length: int, period: int) -> np.ndarray:
    """Indices ``start`` .. ``start + length`` folded into [0, period) by mirroring (no seams between copies)."""
    index = np.arange(start, start + length) % (2 * period)
    return np.where(index < period, index, 2 * period - 1 - index)


def main() -> None:
    """Measure and report."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[2048, 8192])
    parser.add_argument("--variant", default="dsen2cr-small")
    parser.add_argument("--batch-size", default="auto", help="passed to remove-clouds (default: %(default)s)")
    parser.add_argument("--name", default="scene", help="results file name (benchmarks/results/NAME.json)")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        weights = save_weights(create_model(args.variant), folder / "w.safetensors")
        for size in args.sizes:
            write_scene(folder / "s2.tif", size, 13, "uint16", seed=size)
            write_scene(folder / "s1.tif", size, 2, "float32", seed=size + 1)
            before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
            start = time.perf_counter()
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "dsen2cr.cli",
                    "remove-clouds",
                    "--weights",
                    str(weights),
                    "--s2",
                    str(folder / "s2.tif"),
                    "--s1",
                    str(folder / "s1.tif"),
                    "--out",
                    str(folder / "out.tif"),
                    "--overwrite",
                    "--no-progress",
                    "--batch-size",
                    str(args.batch_size),
                ],
                check=True,
            )
            seconds = time.perf_counter() - start
            peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
            if peak_kib <= before:
                print("note: peak RSS of this run is not above an earlier one; the value is an upper bound")
            rows.append(
                {
                    "scene": f"{size}x{size}",
                    "variant": args.variant,
                    "megapixels": size * size / 1e6,
                    "seconds": seconds,
                    "Mpx_per_s": size * size / 1e6 / seconds,
                    "peak_rss_MiB": peak_kib / 1024,
                }
            )
            for name in ("s2.tif", "s1.tif", "out.tif"):
                (folder / name).unlink(missing_ok=True)
    if len(rows) >= 2:
        print(
            f"peak memory ratio {rows[-1]['scene']} / {rows[0]['scene']}: "
            f"{rows[-1]['peak_rss_MiB'] / rows[0]['peak_rss_MiB']:.2f}"
        )
    report(args.name, rows)


if __name__ == "__main__":
    main()
