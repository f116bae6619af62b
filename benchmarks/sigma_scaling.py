"""Does sigma calibrated after training carry over to patches it was not fitted on?
``python -m benchmarks.sigma_scaling --weights A [B C …] [--count 60] [--seed 7]``.

Draws a synthetic SEN12MS-CR-like set (``write_synthetic_dataset``: its validation and test ROIs alike, unlike the
demo's one validation and one test patch of other places), fits the sigma scale of each model alone and, with
several, of their ensemble as a whole (``weights calibrate-sigma``), on the validation split; then scores the first
model as trained and calibrated and, with several, the ensemble as trained, of the members calibrated alone and
calibrated as a whole, on both splits: the +-1 sigma coverage of every value (0.683 for calibrated Gaussian sigma)
and the mean negative log-likelihood per value (a Gaussian's, nats, sigma as reflectance), pooled, as
calibrate-sigma computes them; and the share of the test values within the 68.3, 90 and 95 % intervals, as a
Gaussian's (+-1, +-1.645, +-1.96 sigma) and, for a calibrated run, as its calibration stated them (each band's
multiple that held those shares of its validation values), pooled and, at 90 %, the range over the bands. Writes
benchmarks/results/sigma-scaling.json.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.common import report
from dsen2cr.data.layout import read_file_list, select_split
from dsen2cr.data.synth import write_synthetic_dataset
from dsen2cr.ensemble import load_ensemble
from dsen2cr.predictor import load_exact_predictor
from dsen2cr.preprocessing import NUM_S2_BANDS
from dsen2cr.sigma_calibration import calibrate_ensemble, calibrate_weights, scale_statistics

DATA = "synthetic, split val"
#: The Gaussian's multiples of sigma for each share of the values.
GAUSSIAN = {0.683: 1.0, 0.9: 1.645, 0.95: 1.96}
#: How the ensembles run here: as calibrate-sigma runs them, eager in IEEE fp32 (load_exact_predictor for one).
EXACT = {"backend": "eager", "exact": True}


def main() -> None:
    """Calibrate on the synthetic validation split, score on its test split, print and write the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--weights", nargs="+", required=True, type=Path, help="models with sigma (several: also an ensemble)"
    )
    parser.add_argument("--count", type=int, default=60, help="synthetic patches (a fifth each val and test)")
    parser.add_argument("--seed", type=int, default=7, help="the synthetic set's seed")
    parser.add_argument("--work", type=Path, help="folder for the data and the calibrated files (default: temporary)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="dsen2cr-sigma-scaling-"))
    _, file_list = write_synthetic_dataset(work / "data", args.count, seed=args.seed)
    triplets = read_file_list(file_list, file_list.parent)
    val, test = select_split(triplets, "val"), select_split(triplets, "test")
    calibrated = [work / f"calibrated-{index}.safetensors" for index in range(len(args.weights))]
    for weights, out in zip(args.weights, calibrated, strict=True):  # each member alone
        calibrate_weights(weights, val, out, data=DATA, progress=False)
    runs = [(f"{args.weights[0].name} as trained", load_exact_predictor(args.weights[0]))]
    runs.append((f"{args.weights[0].name} calibrated", load_exact_predictor(calibrated[0])))
    if len(args.weights) > 1:
        calibrate_ensemble(args.weights, val, work / "ensemble.json", data=DATA, progress=False)
        runs += [
            (f"ensemble of {len(args.weights)} as trained", load_ensemble(args.weights, **EXACT)),
            ("ensemble of the members calibrated alone", load_ensemble(calibrated, **EXACT)),
            ("ensemble calibrated as a whole", load_ensemble(work / "ensemble.json", **EXACT)),
        ]
    rows = []
    for name, predictor in runs:  # a fit's "before" numbers are the predictor's as it is
        on_val, on_test = (scale_statistics(predictor, split, progress=False) for split in (val, test))
        row: dict[str, object] = {"run": name, "val patches": len(val), "test patches": len(test)}
        for split, statistics in (("val", on_val), ("test", on_test)):
            fit = statistics.fit("gnll")
            row.update({f"coverage {split}": fit.coverage_before, f"NLL {split}": fit.nll_before})
        stated = dict(predictor.sigma_intervals)
        for level, multiple in GAUSSIAN.items():  # +-1 sigma's is the coverage already
            gaussian = on_test.held([multiple] * NUM_S2_BANDS)
            if multiple != 1.0:
                row[f"+-{multiple:g} sigma test"] = float(gaussian.mean())
            calibrated = on_test.held(stated[level]) if level in stated else None
            row[f"{100 * level:g} % stated test"] = None if calibrated is None else float(calibrated.mean())
            if level == 0.9:  # how far each band's share strays
                row["+-1.645 sigma, bands"] = _band_range(gaussian)
                row["90 % stated, bands"] = None if calibrated is None else _band_range(calibrated)
        rows.append(row)
    report("sigma-scaling", rows)


def _band_range(shares: np.ndarray) -> str:
    """The smallest and largest of the bands' shares, ``0.82 to 0.97``."""
    return f"{shares.min():.3f} to {shares.max():.3f}"


if __name__ == "__main__":
    main()
