"""What ``--keep-clear --mask-out`` costs against a plain ``remove-clouds`` run (#27 item 4: at most 1.25x), and
where the extra time goes: the scene's shadow statistics (a pass over the scene before the first window), the
cloud/shadow map of each window (its read and the detector), the feathering distances and the blend, and how
long the network waited for the writer (its queue full; while the statistics pass runs, a GPU run holds up to
``ScenePlan.hold_bytes`` of predicted windows in memory instead; on a GPU a fifth run holds none, as before).

One synthetic scene (the bundled real L1C scene mirrored across the grid, so it has real clouds and shadows),
one model without SAR, in one process: a warm-up run, then plain, ``--mask-out``, ``--keep-clear`` and both,
each timed whole (read, predict, write, COG). The parts are timed by wrapping the project's functions (their
seconds add up over the writer thread, which runs beside the network).

Each window's map is made from the window the reader read when the overlap holds the mask's radius and the
feathering (7 + 6 px a side with the defaults: the paper model's 34 px do, the small model's 10 do not, so its
``--keep-clear`` maps read their windows again unless ``--overlap 28`` or more).

Run: ``python -m benchmarks.keep_clear [--device cuda] [--size 10980] [--variant dsen2cr-nosar] [--overlap N]``
(writes benchmarks/results/keep_clear[-cuda][-overlapN].json and .md).
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

from benchmarks.common import report, timed_into
from benchmarks.scene import write_scene
from dsen2cr import auto, create_model
from dsen2cr.predictor import predictor_from_model
from dsen2cr.scene import batches, masking, tile_writer
from dsen2cr.scene.remove import remove_clouds
from dsen2cr.settings import SceneJob, SceneSettings

#: The name of the run whose windows do not wait in memory during the statistics pass (as before; GPU only).
NOTHING_HELD = "no window held"
#: The project functions whose seconds are reported: (module, attribute, what it is).
PARTS = (
    (masking, "_scene_shadow_stats", "shadow statistics pass over the scene"),
    (masking.SceneMasker, "window", "cloud/shadow map of the windows (detector; a read if the margin is short)"),
    (tile_writer, "keep_clear_weights", "keep-clear weights (map + distances)"),
    (tile_writer, "blend", "blend of input and prediction"),
    (batches.BackgroundWriter, "submit", "the network waiting for the writer (its queue full)"),
)


def main() -> None:
    """Measure and report."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", type=int, help="scene width and height (default: 10980 on cuda, 2048 on cpu)")
    parser.add_argument("--variant", help="model without SAR (default: dsen2cr-nosar on cuda, small on cpu)")
    parser.add_argument("--finish-threads", type=int, help="instead of dsen2cr.auto.resolve_finish_threads'")
    parser.add_argument("--overlap", type=int, help="tile overlap (default: the model's exact one)")
    args = parser.parse_args()
    if args.finish_threads:
        auto.resolve_finish_threads = lambda device: args.finish_threads
    size = args.size or (10980 if args.device == "cuda" else 2048)
    variant = args.variant or ("dsen2cr-nosar" if args.device == "cuda" else "dsen2cr-small-nosar")
    predictor = predictor_from_model(create_model(variant).eval(), device=args.device)
    seconds: dict[str, float] = defaultdict(float)
    for owner, attribute, what in PARTS:
        setattr(owner, attribute, timed_into(getattr(owner, attribute), seconds, what))
    runs = {
        "plain": ({}, False),
        "--mask-out": ({}, True),
        "--keep-clear": ({"keep_clear": True}, False),
        "--keep-clear --mask-out": ({"keep_clear": True}, True),
    }
    if auto.resolve_hold_bytes(predictor.device):  # a GPU run holds windows while the statistics pass runs
        runs[f"--keep-clear --mask-out, {NOTHING_HELD}"] = ({"keep_clear": True}, True)
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        scene = folder / "s2.tif"
        write_scene(scene, size, 13, "uint16", seed=0, texture="sample")
        warm = SceneJob(str(scene), None, folder / "warm.tif")
        settings = SceneSettings(progress=False, device=args.device, overlap=args.overlap, keep_clear=True)
        remove_clouds(predictor, warm, settings)
        plain = 0.0
        for name, (options, mask_out) in runs.items():
            seconds.clear()
            out = folder / f"{name.replace(' ', '').strip('-')}.tif"
            job = SceneJob(str(scene), None, out, mask_out=out.with_suffix(".mask.tif") if mask_out else None)
            start = time.perf_counter()
            settings = SceneSettings(progress=False, device=args.device, overlap=args.overlap, **options)
            plan = auto.plan_scene_run(settings, predictor.config, device=predictor.device)
            remove_clouds(predictor, job, dataclasses.replace(plan, hold_bytes=0) if NOTHING_HELD in name else plan)
            total = time.perf_counter() - start
            plain = plain or total
            parts = "; ".join(f"{what} {value:.1f} s" for what, value in seconds.items() if value)
            note = f"{total / plain:.2f}x plain" + (f"; {parts}" if parts else "")
            threads = auto.resolve_finish_threads(predictor.device)
            overlap = "" if args.overlap is None else f", overlap {args.overlap}"
            measure = f"{size}x{size} scene, {variant}{overlap}, {threads} finishing thread(s): {name}"
            rows.append({"measure": measure, "value": total, "unit": "s", "note": note})
            for path in folder.glob(f"{out.stem}*"):
                path.unlink()
    suffix = ("-cuda" if args.device == "cuda" else "") + (
        f"-{args.finish_threads}threads" if args.finish_threads else ""
    )
    suffix += f"-overlap{args.overlap}" if args.overlap is not None else ""
    report("keep_clear" + suffix, rows)


if __name__ == "__main__":
    main()
