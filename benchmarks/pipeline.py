"""Several scenes in one run: on a GPU each scene's COG is made while the next one is predicted
(``dsen2cr.scene.jobs.OutputFinisher``; on a CPU at once), against the same scenes one at a time
(``remove_clouds`` per scene, COG made before the next starts), in one process with one predictor each.

Run: ``python -m benchmarks.pipeline [--device cuda] [--scenes 3] [--width 10980 --height 4096]
[--variant dsen2cr] [--compress zstd --compress-level 1] [--only-together]`` (the S2 of each scene is the
bundled real scene mirrored across it; ``--only-together`` skips the one-at-a-time run). Writes
benchmarks/results/pipeline[-DEVICE][-COMPRESSION].json and .md (or ``--name``).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import add_compression_arguments, compression_suffix, report
from benchmarks.scene import write_scene
from dsen2cr import create_model
from dsen2cr.outputs.finisher import completes_in_background
from dsen2cr.predictor import load_predictor
from dsen2cr.scene.jobs import run_scene_jobs
from dsen2cr.scene.remove import remove_clouds
from dsen2cr.settings import SceneJob, SceneSettings
from dsen2cr.weights import save_weights


def main() -> None:
    """Measure and report."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--scenes", type=int, default=3)
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--height", type=int, default=1024)
    parser.add_argument("--variant", default="dsen2cr-small")
    add_compression_arguments(parser, "the COGs'")
    parser.add_argument("--only-together", action="store_true", help="skip the one-at-a-time run")
    parser.add_argument("--name", help="results file name (default: pipeline[-DEVICE][-COMPRESSION])")
    args = parser.parse_args()
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        torch.manual_seed(0)
        weights = save_weights(create_model(args.variant), folder / "w.safetensors")
        s2, s1 = folder / "s2.tif", folder / "s1.tif"
        write_scene(s2, args.width, 13, "uint16", seed=1, height=args.height, texture="sample")
        write_scene(s1, args.width, 2, "float32", seed=2, height=args.height)
        compression = f"{args.compress} level {args.compress_level or 'default'}"
        scenes = f"{args.scenes} scenes of {args.width}x{args.height}, {args.variant}, {args.device}, {compression}"

        one_at_a_time = float("nan")
        if not args.only_together:
            predictor = load_predictor(weights, device=args.device)
            start = time.perf_counter()
            for index in range(args.scenes):
                remove_clouds(
                    predictor,
                    SceneJob(str(s2), str(s1), folder / f"one-{index}.tif"),
                    SceneSettings(progress=False, compression=args.compress, compression_level=args.compress_level),
                )
            one_at_a_time = time.perf_counter() - start
            rows.append(
                {
                    "run": f"one at a time ({scenes})",
                    "seconds": one_at_a_time,
                    "speed-up": 1.0,
                    "s/scene": one_at_a_time / args.scenes,
                }
            )
            print(rows[-1], flush=True)

        jobs = [SceneJob(str(s2), str(s1), folder / f"run-{index}.tif") for index in range(args.scenes)]
        settings = SceneSettings(
            weights=str(weights),
            device=args.device,
            progress=False,
            compression=args.compress,
            compression_level=args.compress_level,
        )
        start = time.perf_counter()
        for _ in run_scene_jobs(jobs, settings):
            pass
        together = time.perf_counter() - start
        how = "during the next" if completes_in_background(torch.device(args.device)) else "at once, as on any CPU"
        rows.append(
            {
                "run": f"one run, COG of each scene {how} ({scenes})",
                "seconds": together,
                "speed-up": one_at_a_time / together,
                "s/scene": together / args.scenes,
            }
        )
        print(rows[-1], flush=True)
    suffix = "" if args.device == "cpu" else f"-{args.device.split(':')[0]}"
    suffix += compression_suffix(args.compress, args.compress_level)
    report(args.name or f"pipeline{suffix}", rows)


if __name__ == "__main__":
    main()
