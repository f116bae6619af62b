"""Everything a GPU scene run does around the network, with the network replaced by the identity (#27 item 4):
how fast the reads, the output pixels, the masks, the overviews and the COG's compression go together when
the network costs nothing. On a GPU the network runs beside them, so a full tile's run takes about the longer
of the two: if this is above the network's time (about 11 s a full tile on an H200), the CPU side bounds it.

The run is planned as on a GPU (``dsen2cr.auto``'s GPU values: band, finishing and compressing threads, block
cache, held windows, batch 4, 1024 px windows with the paper model's overlap, each COG compressed while
written) but runs on this machine's CPU: no GPU is needed, and the GPU machine's 16 cores give its numbers.
The scene: the bundled real L1C scene mirrored across a ``--size`` square GeoTIFF (a full tile by default).
Runs: plain, ``--keep-clear --mask-out``, and the same with no window held during the mask's statistics pass;
each reports the seconds the network would have waited for the writer (its queue full) and the reader's.

Run: ``python -m benchmarks.without_network [--size 10980] [--name without_network]`` (writes
benchmarks/results/NAME.json and .md).
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

import dsen2cr.scene.jobs
import dsen2cr.scene.remove
from benchmarks.common import report, timed_into
from benchmarks.scene import write_scene
from dsen2cr import auto, create_model
from dsen2cr.predictor import Predictor
from dsen2cr.scene import batches
from dsen2cr.scene.remove import remove_clouds
from dsen2cr.settings import SceneJob, SceneSettings

#: The project functions whose seconds are reported: (owner, attribute, what it is).
PARTS = (
    (batches, "_read_batch", "reading and preprocessing (the reader thread)"),
    (batches.BackgroundWriter, "submit", "the network waiting for the writer"),
)


def _identity(s2: np.ndarray, s1: np.ndarray | None) -> np.ndarray:
    """The stand-in network: its input back (13 bands in model units)."""
    return s2.copy()


def main() -> None:
    """Measure and report."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=10980, help="scene width and height (default: a full tile)")
    parser.add_argument("--name", default="without_network", help="results file name (default: %(default)s)")
    args = parser.parse_args()
    config = create_model("dsen2cr-nosar").config
    predictor = Predictor(_identity, config, torch.device("cpu"))
    gpu = torch.device("cuda")  # auto's GPU values (computed from this machine's cores and memory)
    gpu_plan = {
        "finish_threads": auto.resolve_finish_threads(gpu),
        "band_threads": auto.resolve_band_threads(gpu),
        "block_cache_bytes": auto.resolve_block_cache_bytes(gpu),
        "hold_bytes": auto.resolve_hold_bytes(gpu),
        "batch_size": auto.resolve_batch_size("auto", gpu),
        "tile": 1024,
    }
    # each COG compressed while written and completed on a thread of its own, as on a GPU
    dsen2cr.scene.remove.completes_in_background = lambda device: True  # type: ignore[assignment]
    dsen2cr.scene.jobs.completes_in_background = lambda device: True  # type: ignore[assignment]
    seconds: dict[str, float] = defaultdict(float)
    for owner, attribute, what in PARTS:
        setattr(owner, attribute, timed_into(getattr(owner, attribute), seconds, what))
    runs = {"plain": (False, None), "--keep-clear --mask-out": (True, None)}
    runs["--keep-clear --mask-out, no window held"] = (True, 0)
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        scene = folder / "s2.tif"
        start = time.perf_counter()
        write_scene(scene, args.size, 13, "uint16", seed=0, texture="sample")
        print(f"scene of {args.size}x{args.size} written in {time.perf_counter() - start:.1f} s")
        plain = 0.0
        for name, (masks, hold) in runs.items():
            seconds.clear()
            out = folder / "out.tif"
            job = SceneJob(str(scene), None, out, mask_out=folder / "mask.tif" if masks else None)
            settings = SceneSettings(progress=False, device="cpu", keep_clear=masks)
            plan = dataclasses.replace(auto.plan_scene_run(settings, config, device=predictor.device), **gpu_plan)
            if hold is not None:
                plan = dataclasses.replace(plan, hold_bytes=hold)
            start = time.perf_counter()
            remove_clouds(predictor, job, plan)
            total = time.perf_counter() - start
            plain = plain or total
            parts = "; ".join(f"{what} {value:.1f} s" for what, value in seconds.items())
            measure = f"{args.size}x{args.size} scene, identity network, a GPU's plan: {name}"
            note = f"{total / plain:.2f}x plain; {args.size**2 / total / 1e6:.1f} Mpx/s; {parts}"
            rows.append({"measure": measure, "value": round(total, 2), "unit": "s", "note": note})
            print(rows[-1])
            for path in folder.glob("*.tif"):
                if path != scene:
                    path.unlink()
    report(args.name, rows)


if __name__ == "__main__":
    main()
