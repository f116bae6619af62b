"""What ``remove-clouds --bounds`` saves: a part of a scene against the whole scene, in one process.

One synthetic scene (the bundled real L1C scene mirrored across the grid), one model without SAR: a warm-up run,
then the whole scene and a centred square of a quarter and of an eighth of its side (1/16 and 1/64 of its
pixels), plain and with ``--keep-clear --mask-out`` (whose paper mask takes its shadow thresholds from the whole
scene, so a part still reads three bands of all of it once). Each run is timed whole (read, predict, write, COG);
the network's pixels are those of the planned windows (a part's windows read half the overlap around it).

Run: ``python -m benchmarks.bounds [--device cuda] [--size 4096] [--variant dsen2cr-nosar]``
(writes benchmarks/results/bounds[-cuda].json and .md).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import rasterio
import torch
from rasterio.windows import Window

from benchmarks.common import report
from benchmarks.scene import write_scene
from dsen2cr import auto, create_model
from dsen2cr.predictor import predictor_from_model
from dsen2cr.scene.remove import remove_clouds
from dsen2cr.scene.tiles import plan_area_tiles, planned_pixels
from dsen2cr.settings import SceneJob, SceneSettings


def main() -> None:
    """Measure and report."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", type=int, help="scene width and height (default: 10980 on cuda, 2048 on cpu)")
    parser.add_argument("--variant", help="model without SAR (default: dsen2cr-nosar on cuda, small on cpu)")
    args = parser.parse_args()
    size = args.size or (10980 if args.device == "cuda" else 2048)
    variant = args.variant or ("dsen2cr-nosar" if args.device == "cuda" else "dsen2cr-small-nosar")
    predictor = predictor_from_model(create_model(variant).eval(), device=args.device)
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        scene = folder / "s2.tif"
        write_scene(scene, size, 13, "uint16", seed=0, texture="sample")
        with rasterio.open(scene) as dataset:
            west, _, east, north = dataset.bounds
        remove_clouds(
            predictor,
            SceneJob(str(scene), None, folder / "warm.tif"),
            SceneSettings(progress=False, device=args.device),
        )
        whole = {}
        for fraction in (1, 4, 8):
            side = size // fraction
            first = (size - side) // 2
            step = (east - west) / size
            bounds = (
                None
                if fraction == 1
                else (
                    west + first * step,
                    north - (first + side) * step,
                    west + (first + side) * step,
                    north - first * step,
                )
            )
            for masks in (False, True):
                settings = SceneSettings(progress=False, device=args.device, bounds=bounds, keep_clear=masks)
                out = folder / f"out{fraction}{masks}.tif"
                job = SceneJob(str(scene), None, out, mask_out=out.with_suffix(".mask.tif") if masks else None)
                plan = auto.plan_scene_run(settings, predictor.config, device=predictor.device)
                tiles = plan_area_tiles(size, size, Window(first, first, side, side), plan.tile, plan.overlap)
                start = time.perf_counter()
                remove_clouds(predictor, job, plan)
                total = time.perf_counter() - start
                name = "--keep-clear --mask-out" if masks else "plain"
                whole.setdefault(name, total)
                part = "whole scene" if fraction == 1 else f"--bounds of {side}x{side} px (1/{fraction**2} of it)"
                note = f"{total / whole[name]:.3f}x the whole scene; network over {planned_pixels(tiles) / 1e6:.2f} Mpx"
                measure = f"{size}x{size} scene, {variant}, {name}: {part}"
                rows.append({"measure": measure, "value": total, "unit": "s", "note": note})
                for path in folder.glob(f"{out.stem}*"):
                    path.unlink()
    report("bounds" + ("-cuda" if args.device == "cuda" else ""), rows)


if __name__ == "__main__":
    main()
