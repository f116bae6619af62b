"""Small scenes, whole process: what a user waits for, against a bare eager forward pass of the same image.

The paper-size model (random weights, without SAR) on the bundled 768x640 scene: a plain eager fp32 PyTorch
forward of the whole image in this process (the reference), then ``dsen2cr remove-clouds`` in fresh processes
(start-up, weights, reading, the backend's build and check, writing the COG): eager; compiled with an empty
compile cache (first run); compiled again (second run, the persistent cache warm); and ``--backend auto``
after those runs (it finds the recorded build time).

Run: ``python -m benchmarks.warm_start`` (writes benchmarks/results/warm_start.json and .md; about 3 minutes).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import report
from dsen2cr import create_model
from dsen2cr.data.sample import sample_scene
from dsen2cr.preprocessing import s2_dn_to_model
from dsen2cr.rasters import open_raster
from dsen2cr.weights import save_weights


def main() -> None:
    """Measure and report."""
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        torch.manual_seed(0)
        model = create_model("dsen2cr-nosar").eval()
        weights = save_weights(model, folder / "paper-nosar.safetensors")
        with open_raster(sample_scene()) as dataset:
            s2 = torch.from_numpy(s2_dn_to_model(dataset.read().astype("float32")))[None]
        with torch.inference_mode():
            start = time.perf_counter()
            model(s2, None)
            forward = time.perf_counter() - start
        rows.append({"run": "plain eager forward, in process", "seconds": forward, "vs forward": 1.0})
        env = dict(os.environ, DSEN2CR_CACHE_DIR=str(folder / "cache"))
        env.pop("TORCHINDUCTOR_CACHE_DIR", None)
        for name, backend in (
            ("remove-clouds --backend eager", "eager"),
            ("remove-clouds --backend compiled, first run (empty cache)", "compiled"),
            ("remove-clouds --backend compiled, second run (warm cache)", "compiled"),
            ("remove-clouds --backend auto, after those", "auto"),
        ):
            command = [sys.executable, "-m", "dsen2cr.cli", "-v", "remove-clouds", "--weights", str(weights)]
            command += ["--s2", str(sample_scene()), "--out", str(folder / "out.tif"), "--overwrite"]
            command += ["--no-progress", "--backend", backend]
            start = time.perf_counter()
            result = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
            seconds = time.perf_counter() - start
            chosen = [line for line in result.stdout.splitlines() if line.startswith("backend:")][-1]  # settled
            rows.append({"run": f"{name} ({chosen})", "seconds": seconds, "vs forward": forward / seconds})
        builds = json.loads((folder / "cache" / "builds.json").read_text(encoding="utf-8"))
        for key, seconds in builds.items():  # what the compiled runs left for --backend auto
            window = "[" + key.rsplit("[", 1)[1]
            rows.append({"run": f"build recorded for the {window} window", "seconds": seconds, "vs forward": ""})
    report("warm_start", rows)


if __name__ == "__main__":
    main()
