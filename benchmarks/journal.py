"""What a scene's journal costs and what ``remove-clouds --resume`` saves (``dsen2cr.scene.journal``), on this CPU.

One scene (the bundled real L1C scene mirrored across a ``--size`` square GeoTIFF), one small model (random
weights of ``--variant``), CPU plan and defaults. Runs: without a journal; with one (the cost of writing each
batch's predictions, 4 bytes a band and pixel, and syncing them); a run stopped half way (Ctrl-C as the middle
batch starts) then ``--resume`` (the network runs for the other half); a run stopped after its last batch, then
``--resume`` (no window predicted: what a resume costs beside the network, reading, masks and COGs). The
network's seconds are counted in each run, so that a paper-size model's run can be worked out from them.

Run: ``python -m benchmarks.journal [--size 2048] [--variant dsen2cr-small-nosar] [--name journal]`` (writes
benchmarks/results/NAME.json and .md).
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import report
from benchmarks.scene import write_scene
from dsen2cr import create_model
from dsen2cr.predictor import Predictor, load_predictor
from dsen2cr.scene import journal as journal_module
from dsen2cr.scene.remove import remove_clouds
from dsen2cr.settings import SceneJob, SceneSettings
from dsen2cr.weights import save_weights


def _stopping(predict: Callable[..., np.ndarray], seconds: dict[str, float], stop_at: int | None) -> Callable:
    """``predict`` counting its batches and seconds; Ctrl-C as batch ``stop_at`` (1-based) starts."""

    def counted(self: Predictor, s2: np.ndarray, s1: np.ndarray | None) -> np.ndarray:
        seconds["batches"] += 1
        if stop_at is not None and seconds["batches"] == stop_at:
            raise KeyboardInterrupt
        start = time.perf_counter()
        try:
            return predict(self, s2, s1)
        finally:
            seconds["network"] += time.perf_counter() - start

    return counted


def _interrupt(*_: object) -> dict[str, str]:
    """Ctrl-C in place of a call."""
    raise KeyboardInterrupt


def main() -> None:
    """Measure and report."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=2048, help="scene width and height (default: %(default)s)")
    parser.add_argument("--variant", default="dsen2cr-small-nosar", help="model (default: %(default)s)")
    parser.add_argument("--name", default="journal", help="results file name (default: %(default)s)")
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        weights = save_weights(create_model(args.variant), folder / "w.safetensors")
        predictor = load_predictor(weights, device="cpu")
        scene = folder / "s2.tif"
        write_scene(scene, args.size, 13, "uint16", seed=0, texture="sample")
        job = SceneJob(str(scene), None, folder / "out.tif")
        base = SceneSettings(progress=False, device="cpu")
        rows: list[dict[str, object]] = []
        plain = 0.0

        def run(
            name: str, settings: SceneSettings, stop_at: int | None = None, at_end: bool = False
        ) -> dict[str, float]:
            """One run; ``stop_at``: Ctrl-C as that batch starts; ``at_end``: Ctrl-C once every batch is predicted."""
            seconds: dict[str, float] = defaultdict(float)
            original, tags = Predictor.__call__, journal_module.SceneJournal.tags
            Predictor.__call__ = _stopping(original, seconds, stop_at)  # type: ignore[method-assign]
            if at_end:
                journal_module.SceneJournal.tags = _interrupt  # type: ignore[method-assign,assignment]
            start = time.perf_counter()
            try:
                remove_clouds(predictor, job, settings)
            except KeyboardInterrupt:
                pass
            finally:
                Predictor.__call__ = original  # type: ignore[method-assign]
                journal_module.SceneJournal.tags = tags  # type: ignore[method-assign]
            seconds["total"] = time.perf_counter() - start
            job.out.unlink(missing_ok=True)
            journal = journal_module.journal_path(job.out) / "predictions.f32"
            seconds["journal_bytes"] = journal.stat().st_size if journal.exists() else 0
            print(name, dict(seconds))
            return seconds

        run("warm-up (not reported)", dataclasses.replace(base, journal="off"))
        first = run("plain", dataclasses.replace(base, journal="off"))
        plain, batches = first["total"], int(first["batches"])
        measured = {
            "without a journal": first,
            "with a journal": run("with", dataclasses.replace(base, journal="on")),
        }
        on = dataclasses.replace(base, journal="on")
        run("stopped half way", on, stop_at=batches // 2 + 1)
        measured["--resume after half of the batches"] = run("resume half", dataclasses.replace(on, resume=True))
        full_journal = run("stopped after the last batch", on, at_end=True)["journal_bytes"]
        measured["--resume after every batch"] = run("resume all", dataclasses.replace(on, resume=True))
        for name, seconds in measured.items():
            note = (
                f"{seconds['total'] / plain:.2f}x the run without a journal; network {seconds['network']:.1f} s over "
                f"{int(seconds['batches'])} of {batches} batches"
            )
            measure = f"{args.size}x{args.size} scene, {args.variant}, CPU: {name}"
            rows.append({"measure": measure, "value": round(seconds["total"], 2), "unit": "s", "note": note})
        rows.append(
            {
                "measure": f"{args.size}x{args.size} scene: journal written",
                "value": round(full_journal / 2**20, 1),
                "unit": "MiB",
                "note": f"{full_journal / args.size**2 / 13:.2f} bytes a band and pixel",
            }
        )
    report(args.name, rows)


if __name__ == "__main__":
    main()
