"""The disk room a scene run takes while it writes, against what ``dsen2cr.outputs.room`` plans for: the bytes
its outputs stage uncompressed (image and cloud/shadow map with their overview levels, in whole blocks) and the
worst case it warns about, twice that. The run's output folder is sampled every 5 ms (allocated blocks, so that
sparse files count as what they hold) for the peak and the end.

Runs: the CPU's path (an uncompressed staging file, then GDAL's COG copy beside it) and the GPU's (each COG
compressed while written, forced here: no GPU is needed), on two scenes: the bundled real L1C scene mirrored
across the grid (compresses as a real scene) and uniform noise (incompressible, the worst case). The network is
the identity, so the output is the input's pixels (as a cloud-free image compresses) and the run takes seconds.

Run: ``python -m benchmarks.disk_room [--size 2048] [--name disk_room]`` (writes benchmarks/results/NAME.json
and .md).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import threading
from pathlib import Path

import numpy as np
import torch

import dsen2cr.scene.jobs
import dsen2cr.scene.remove
from benchmarks.common import report
from benchmarks.scene import write_scene
from dsen2cr import create_model
from dsen2cr.outputs.room import staged_bytes
from dsen2cr.predictor import Predictor
from dsen2cr.scene.remove import remove_clouds
from dsen2cr.settings import SceneJob, SceneSettings


def _identity(s2: np.ndarray, s1: np.ndarray | None) -> np.ndarray:
    """The stand-in network: its input back (13 bands in model units)."""
    return s2.copy()


def _allocated(folder: Path) -> int:
    """Bytes the folder's files take on disk (their allocated blocks)."""
    total = 0
    for entry in os.scandir(folder):
        with contextlib.suppress(FileNotFoundError):  # removed while listed
            total += entry.stat(follow_symlinks=False).st_blocks * 512
    return total


def _peak_while(run: threading.Thread, folder: Path) -> int:
    """Start ``run`` and sample the folder's allocated bytes every 5 ms until it ends; return the peak."""
    peak, done = 0, threading.Event()
    run.start()
    while not done.is_set():
        peak = max(peak, _allocated(folder))
        done.wait(0.005)
        if not run.is_alive():
            done.set()
    return max(peak, _allocated(folder))


def main() -> None:
    """Measure and report."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=2048, help="scene width and height (default: %(default)s)")
    parser.add_argument("--name", default="disk_room", help="results file name (default: %(default)s)")
    args = parser.parse_args()
    predictor = Predictor(_identity, create_model("dsen2cr-small-nosar").config, torch.device("cpu"))
    staged = staged_bytes(args.size, args.size, 13, "uint16") + staged_bytes(args.size, args.size, 1, "uint8")
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for texture in ("sample", "noise"):
            scene = Path(tmp) / f"{texture}.tif"
            write_scene(scene, args.size, 13, "uint16", seed=0, texture=texture)
            for path, streamed in (("CPU: GDAL's copy", False), ("GPU: compressed while written", True)):
                dsen2cr.scene.remove.completes_in_background = lambda device, s=streamed: s  # type: ignore[assignment]
                dsen2cr.scene.jobs.completes_in_background = lambda device, s=streamed: s  # type: ignore[assignment]
                folder = Path(tmp) / "out"
                folder.mkdir()
                job = SceneJob(str(scene), None, folder / "out.tif", mask_out=folder / "mask.tif")
                settings = SceneSettings(progress=False, device="cpu", tile=512)
                failed: list[BaseException] = []
                run = threading.Thread(target=_run, args=(predictor, job, settings, failed))
                peak = _peak_while(run, folder)
                run.join()
                if failed:
                    raise failed[0]
                final = _allocated(folder)
                rows.append(
                    {
                        "scene": f"{args.size}x{args.size}, 13 bands, {texture}",
                        "path": path,
                        "staged MB": round(staged / 1e6, 1),
                        "peak MB": round(peak / 1e6, 1),
                        "peak / staged": round(peak / staged, 2),
                        "outputs MB": round(final / 1e6, 1),
                        "within 2x staged": peak <= 2 * staged,
                    }
                )
                print(rows[-1], flush=True)
                for entry in folder.iterdir():
                    entry.unlink()
                folder.rmdir()
    report(args.name, rows)


def _run(predictor: Predictor, job: SceneJob, settings: SceneSettings, failed: list[BaseException]) -> None:
    """Run the scene, keeping its error for the main thread."""
    try:
        remove_clouds(predictor, job, settings)
    except BaseException as error:  # handed to the main thread, which raises it
        failed.append(error)


if __name__ == "__main__":
    main()
