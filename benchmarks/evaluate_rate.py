"""What an evaluation's scoring costs beside its predictions: ``evaluate`` of synthetic 256² patches with the
patches scored (paper metrics of the model and of the identity, the GeoTIFF and PNG previews written) on the main
thread after each batch is predicted (``--score-threads 1``, as before) against on a pool of threads while the next
batch is predicted (the default: the process's cores, at most 8), and the network's share of the run (its
predictions alone, in the same process). The small model keeps the network's part near a GPU's share of the paper
model's run, where scoring on one core bound the whole evaluation.

Run: ``python -m benchmarks.evaluate_rate [--patches 48] [--variant dsen2cr-small] [--device cpu] [--num-workers 0]
[--name NAME]``
(writes benchmarks/results/evaluate_rate.json and .md, or NAME's).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import report
from dsen2cr import create_model
from dsen2cr.data.synth import write_synthetic_dataset
from dsen2cr.evaluate import evaluate
from dsen2cr.machine import cores
from dsen2cr.predictor import predictor_from_model


def _predict_only(predictor: object, triplets: list, batch_size: int) -> float:
    """Seconds the network takes for every patch (read once beforehand), batch by batch."""
    from dsen2cr.data.dataset import SEN12MSCRDataset

    samples = [SEN12MSCRDataset(triplets, train=False)[i] for i in range(len(triplets))]
    start = time.perf_counter()
    with torch.inference_mode():
        for first in range(0, len(samples), batch_size):
            chunk = samples[first : first + batch_size]
            s2 = np.stack([sample["s2_cloudy"].numpy() for sample in chunk])
            s1 = np.stack([sample["s1"].numpy() for sample in chunk])
            predictor(s2, s1)  # type: ignore[operator]
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    """Measure and report."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--patches", type=int, default=48)
    parser.add_argument("--variant", default="dsen2cr-small")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--num-workers", type=int, default=0, help="processes reading the patches (evaluate's)")
    parser.add_argument("--name", default="evaluate_rate")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = create_model(args.variant).eval()
    predictor = predictor_from_model(model, device=args.device, precision="fp32")  # evaluate's auto: IEEE fp32
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        triplets, _ = write_synthetic_dataset(Path(folder) / "tree", args.patches, patches_per_roi=4)
        network = _predict_only(predictor, triplets, args.batch_size)
        for threads, way in ((1, "scored after each batch, main thread (before)"), (None, "scored on threads")):
            start = time.perf_counter()
            out = Path(folder) / f"report_{threads}"
            options = {"batch_size": args.batch_size, "score_threads": threads, "num_workers": args.num_workers}
            evaluate(predictor, triplets, out, **options)
            seconds = time.perf_counter() - start
            used = 1 if threads == 1 else min(8, cores())
            rows.append(
                {
                    "way": way,
                    "threads": used,
                    "seconds": seconds,
                    "patches/s": len(triplets) / seconds,
                    "network share": network / seconds,
                }
            )
    for row in rows:
        row["vs before"] = rows[0]["seconds"] / row["seconds"]
        row["patches"], row["variant"], row["device"] = args.patches, args.variant, args.device
    report(args.name, rows)


if __name__ == "__main__":
    main()
