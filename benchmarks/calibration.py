"""Is the predicted uncertainty calibrated? ``python -m benchmarks.calibration [--loss gnll] [--cloud-aware]``.

Trains the small DSen2-CR with a variance head (``model.uncertainty=diag``) on this CPU, on the demo's data
(the bundled real sample's training ROIs plus synthetic SEN12MS-CR-like patches), then evaluates it on patches
it never saw: the sample's validation and test ROIs (real BigEarthNet S1/S2 with synthetic clouds) and a
second synthetic set drawn with another seed. Prints, per held-out set, the +-1 sigma and +-2 sigma coverage
(ideal 0.683 and 0.954), UCE, AUCE, Spearman's rank correlation of sigma and |error|, the NLL and the MAE;
writes benchmarks/results/calibration-LOSS[-cloud-aware].json and the reliability diagram of the pooled
held-out values to docs/images/calibration-LOSS[-cloud-aware].png.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from benchmarks.common import RESULTS_DIR, machine_info
from dsen2cr.config import load_config
from dsen2cr.data.layout import read_file_list, resolve_split
from dsen2cr.data.synth import write_synthetic_dataset
from dsen2cr.demo import DEMO_OVERRIDES, demo_training_data
from dsen2cr.evaluate import evaluate
from dsen2cr.training.train import run_training
from dsen2cr.weights import load_model

FIGURES = Path(__file__).resolve().parent.parent / "docs" / "images"
COLUMNS = ("coverage_1sigma", "coverage_2sigma", "uce", "auce", "nll", "mae", "mae_certain10", "mae_certain90")


def main() -> None:
    """Train, evaluate on the held-out sets, print the table, write the JSON and the figure."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loss", choices=("gnll", "lnll"), default="gnll")
    parser.add_argument("--cloud-aware", action="store_true", help="CARL's weighting of the likelihood")
    parser.add_argument("--epochs", type=int, default=DEMO_OVERRIDES["optim"]["epochs"])
    parser.add_argument("--work", type=Path, help="folder for data and run (default: a temporary one)")
    parser.add_argument("--reuse", action="store_true", help="evaluate the run already in --work (no training)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="dsen2cr-calibration-"))
    reuse = args.reuse and (work / "run" / "checkpoints" / "last.ckpt").is_file()
    if reuse:  # the data and the run of an earlier call with this --work
        file_list = work / "data" / "files.csv"
        held_out_synthetic = read_file_list(work / "held-out" / "files.csv", work / "held-out")
    else:
        file_list = demo_training_data(work)
        held_out_synthetic, _ = write_synthetic_dataset(work / "held-out", 6, size=128, seed=77)
    overrides = [f"{s}.{k}={v}" for s, values in DEMO_OVERRIDES.items() for k, v in values.items()]
    overrides += [f"data.root={file_list.parent}", f"data.file_list={file_list}", f"optim.epochs={args.epochs}"]
    overrides += [
        "model.uncertainty=diag",
        f"loss.name={args.loss}",
        f"loss.cloud_aware={str(args.cloud_aware).lower()}",
    ]
    overrides += [f"trainer.out_dir={work / 'run'}"]
    config = load_config("small-cpu", overrides)
    start = time.perf_counter()
    last = work / "run" / "checkpoints" / "last.ckpt" if reuse else run_training(config, overwrite=True, progress=False)
    model = load_model(last).eval()
    train_seconds = None if reuse else time.perf_counter() - start
    sample = resolve_split(config.data, "val") + resolve_split(config.data, "test")
    sets = {"real sample (val+test ROIs)": sample, "synthetic, another seed": held_out_synthetic}
    results: dict[str, dict] = {}
    for index, (name, triplets) in enumerate(sets.items()):
        summary = evaluate(model, triplets, work / f"evaluation-{index}", write_images=False)
        report = json.loads((work / f"evaluation-{index}" / "calibration.json").read_text())
        results[name] = {"images": len(triplets), **{c: summary["model"][c]["mean"] for c in COLUMNS}}
        results[name]["spearman_sigma_abs_error"] = report["spearman_sigma_abs_error"]
        results[name]["pooled_coverage_1sigma"] = report["coverage_1sigma"]
        results[name]["pooled_coverage_2sigma"] = report["coverage_2sigma"]
    # the pooled diagram of every held-out patch
    pooled = sample + held_out_synthetic
    evaluate(model, pooled, work / "evaluation-all", write_images=False, batch_size=1)  # patches of two sizes
    pooled_report = json.loads((work / "evaluation-all" / "calibration.json").read_text())
    name = f"calibration-{args.loss}{'-cloud-aware' if args.cloud_aware else ''}"
    FIGURES.mkdir(parents=True, exist_ok=True)
    shutil.copy(work / "evaluation-all" / "calibration.png", FIGURES / f"{name}.png")
    _print_table(results, pooled_report, train_seconds)
    RESULTS_DIR.mkdir(exist_ok=True)
    payload = {"machine": machine_info(), "loss": args.loss, "cloud_aware": args.cloud_aware, "epochs": args.epochs}
    payload.update({"train_seconds": train_seconds, "held_out": results, "pooled": pooled_report})
    (RESULTS_DIR / f"{name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {RESULTS_DIR / f'{name}.json'} and {FIGURES / f'{name}.png'}")


def _print_table(results: dict[str, dict], pooled: dict, train_seconds: float | None) -> None:
    """The held-out sets' calibration as a Markdown table."""
    header = ["held-out set", "images", *COLUMNS, "spearman"]
    print("training: reused" if train_seconds is None else f"training: {train_seconds:.0f} s")
    print("| " + " | ".join(header) + " |")
    print("|---" * len(header) + "|")
    for name, row in results.items():
        cells = [f"{row[c]:.4f}" for c in COLUMNS] + [f"{row['spearman_sigma_abs_error']:.3f}"]
        print(f"| {name} | {row['images']} | " + " | ".join(cells) + " |")
    print(
        f"pooled over every held-out value: coverage 1 sigma {pooled['coverage_1sigma']:.3f}, 2 sigma "
        f"{pooled['coverage_2sigma']:.3f}, UCE {pooled['uce']:.4f}, Spearman {pooled['spearman_sigma_abs_error']:.3f}"
    )


if __name__ == "__main__":
    main()
