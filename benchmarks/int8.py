"""The optional int8 path (``dsen2cr export-onnx --int8``): its speed next to its accuracy cost.

Speed: patch inference (paper model, 256x256) with PyTorch eager fp32, onnxruntime fp32 and onnxruntime int8
(calibrated on the bundled sample's train split), in one run. Accuracy: for each trained weights file (default:
the demo's, ``make demo`` first), the paper metrics of the fp32 and the int8 model on the sample's val and test
patches, with min/max and with percentile calibration, the mean distance of the int8 outputs to the fp32
outputs (in DN; for a model without SAR also on the bundled real L1C scene through ``remove_clouds``), and
the signal-to-quantisation-noise ratio of every quantised activation against fp32 (per-layer error,
benchmarks/results/int8-layers.md).

Run: ``python -m benchmarks.int8 [--weights W ...]`` (writes benchmarks/results/int8.json and .md).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.common import median_seconds, report
from dsen2cr import create_model
from dsen2cr.backends import build_backend
from dsen2cr.config import DataSection
from dsen2cr.data.layout import resolve_split
from dsen2cr.evaluate import evaluate
from dsen2cr.onnx_export import activation_errors, calibration_batches, export_onnx, quantize_onnx
from dsen2cr.predictor import Predictor, load_predictor
from dsen2cr.preprocessing import S2_MODEL_SCALE
from dsen2cr.weights import load_model

DEMO_WEIGHTS = sorted(Path("demo-output/weights").glob("*.safetensors"))
METRICS = ("mae", "psnr", "ssim", "sam")


def _int8_pair(model: object, folder: Path, name: str, method: str = "minmax") -> tuple[Predictor, Predictor]:
    """fp32 and int8 (calibrated on the sample's train split) onnxruntime predictors of ``model``."""
    fp32 = export_onnx(model, folder / f"{name}-fp32.onnx")
    calibration = calibration_batches(resolve_split(DataSection(), "train"), patches=16)
    int8 = quantize_onnx(fp32, folder / f"{name}-{method}-int8.onnx", calibration, method=method)
    return load_predictor(fp32, device="cpu"), load_predictor(int8, device="cpu")


def _scene_distance(pair: tuple[Predictor, Predictor], folder: Path, name: str) -> dict[str, object]:
    """Mean, 99th percentile and largest |int8 - fp32| (DN) of ``remove-clouds`` outputs on the bundled real
    L1C scene (a model without SAR: the scene has no S1)."""
    import rasterio

    from dsen2cr.data.sample import sample_scene
    from dsen2cr.scene.remove import remove_clouds
    from dsen2cr.settings import SceneJob, SceneSettings

    outputs = []
    for precision, predictor in zip(("fp32", "int8"), pair, strict=True):
        out = folder / f"{name}-scene-{precision}.tif"
        remove_clouds(predictor, SceneJob(str(sample_scene()), None, out), SceneSettings(progress=False))
        with rasterio.open(out) as dataset:
            outputs.append(dataset.read().astype(np.float64))
    valid = outputs[0] > 0
    distance = np.abs(outputs[1] - outputs[0])[valid]
    return {
        "measure": f"{name}, minmax: |int8 - fp32| of remove-clouds on the bundled L1C scene (768x640)",
        "value": float(distance.mean()),
        "unit": "DN",
        "note": f"mean; 99th percentile {np.percentile(distance, 99):.0f} DN, largest {distance.max():.0f} DN",
    }


def main() -> None:
    """Measure and report."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--weights", nargs="*", type=Path, default=DEMO_WEIGHTS, help="trained weights to evaluate")
    args = parser.parse_args()
    rows: list[dict[str, object]] = []
    layers: dict[str, dict[str, object]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model = create_model("dsen2cr").eval()
        rng = np.random.default_rng(0)
        s2 = rng.uniform(0, 1.5, (1, 13, 256, 256)).astype(np.float32)
        s1 = rng.uniform(0, 1.5, (1, 2, 256, 256)).astype(np.float32)
        eager = build_backend(model, "eager")
        fp32, int8 = _int8_pair(model, folder, "paper")
        reference = eager(s2, s1)
        seconds = {"eager": median_seconds(lambda: eager(s2, s1), repeats=3)}
        eager_row = {"measure": "patch 256x256 dsen2cr, eager fp32", "value": seconds["eager"], "unit": "s/patch"}
        rows.append({**eager_row, "note": "the reference"})
        for name, predictor in (("onnxruntime fp32", fp32), ("onnxruntime int8", int8)):
            seconds[name] = median_seconds(lambda p=predictor: p(s2, s1), repeats=3)
            error = float(np.abs(predictor(s2, s1) - reference).max() / np.abs(reference).max())
            rows.append(
                {
                    "measure": f"patch 256x256 dsen2cr, {name}",
                    "value": seconds[name],
                    "unit": "s/patch",
                    "note": f"{seconds['eager'] / seconds[name]:.2f}x eager fp32; relative error vs eager {error:.2g}",
                }
            )
        held_out = resolve_split(DataSection(), "val") + resolve_split(DataSection(), "test")
        for weights in args.weights:
            trained = load_model(weights)
            fp32_summary = None
            for method in ("minmax", "percentile"):
                pair = _int8_pair(trained, folder, weights.stem, method)
                if fp32_summary is None:
                    fp32_summary = evaluate(pair[0], held_out, folder / f"{weights.stem}-fp32", write_images=False)
                summary = evaluate(pair[1], held_out, folder / f"{weights.stem}-{method}", write_images=False)
                for metric in METRICS:
                    fp32_value, int8_value = (s["model"][metric]["mean"] for s in (fp32_summary, summary))
                    rows.append(
                        {
                            "measure": f"{weights.stem}, {method}: {metric} on the sample's val+test "
                            f"({len(held_out)} patches)",
                            "value": int8_value,
                            "unit": "int8",
                            "note": f"fp32 {fp32_value:.4f}, int8 - fp32 = {int8_value - fp32_value:+.4f}",
                        }
                    )
                crops = list(calibration_batches(held_out, 2))
                outputs = [(pair[0](*crop).astype(np.float64), pair[1](*crop).astype(np.float64)) for crop in crops]
                distance = float(np.mean([np.abs(int8 - fp32).mean() for fp32, int8 in outputs]))
                signal = sum(float(np.square(fp32).sum()) for fp32, _ in outputs)
                noise = sum(float(np.square(int8 - fp32).sum()) for fp32, int8 in outputs)
                rows.append(
                    {
                        "measure": f"{weights.stem}, {method}: mean |int8 - fp32| of the outputs on held-out crops",
                        "value": distance * S2_MODEL_SCALE,
                        "unit": "DN",
                        "note": "fidelity to the fp32 model itself (score deltas alone cannot show it); output "
                        f"SQNR {10 * np.log10(signal / noise):.1f} dB",
                    }
                )
                if not trained.include_sar and method == "minmax":
                    rows.append(_scene_distance(pair, folder, weights.stem))
                errors = activation_errors(
                    folder / f"{weights.stem}-fp32.onnx",
                    folder / f"{weights.stem}-{method}-int8.onnx",
                    crops,
                )
                for layer, sqnr in errors.items():
                    layers.setdefault(layer, {"activation": layer})[f"{weights.stem} {method} (dB)"] = round(sqnr, 1)
    report("int8", rows)
    if layers:  # one row per quantised activation, graph order: SQNR (dB) against fp32 on held-out crops
        columns = list(dict.fromkeys(key for row in layers.values() for key in row))
        report("int8-layers", [{c: row.get(c, "-") for c in columns} for row in layers.values()])


if __name__ == "__main__":
    main()
