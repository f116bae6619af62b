"""The predictor's check that a batch's prediction is finite, on one batch shaped as a full tile's windows
(batch 4 of 978x978, 13 bands, float32, channels-last as the PyTorch backends return it): numpy's float64 sum
(the check before) against PyTorch's float32 sum in place (``dsen2cr.predictor._sums_to_a_finite_number``),
milliseconds per batch with this machine's threads. Run: ``python -m benchmarks.output_check`` (seconds).
Writes benchmarks/results/output_check[-NAME].json and .md.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from benchmarks.common import median_seconds, report
from dsen2cr.predictor import _sums_to_a_finite_number


def main() -> None:
    """Measure and report."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--size", type=int, default=978, help="side of a window (a full tile's, --tile auto)")
    parser.add_argument("--name", default="output_check", help="results file name")
    args = parser.parse_args()
    batch = torch.rand(args.batch_size, 13, args.size, args.size, generator=torch.Generator().manual_seed(0))
    rows: list[dict[str, object]] = []
    for layout, tensor in (("channels-last", batch.contiguous(memory_format=torch.channels_last)), ("NCHW", batch)):
        prediction = tensor.numpy()
        checks = {
            "numpy float64 sum (before)": lambda p=prediction: bool(np.isfinite(p.sum(dtype=np.float64))),
            "torch float32 sum (in use)": lambda p=prediction: _sums_to_a_finite_number(p),
        }
        for name, check in checks.items():
            assert check()
            rows.append(
                {
                    "batch": f"{args.batch_size}x13x{args.size}x{args.size} float32, {layout}",
                    "check": name,
                    "ms": 1e3 * median_seconds(check, repeats=7),
                    "threads": torch.get_num_threads(),
                }
            )
            print(rows[-1], flush=True)
    report(args.name, rows)


if __name__ == "__main__":
    main()
