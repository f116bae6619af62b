"""Each ``--precision`` on the CPU, through the predictor remove-clouds calls: ``python -m benchmarks.cpu_precision``.

The paper-size model (with SAR, random initialisation, seed 0) and the demo-size one (``dsen2cr-small``) predict
one batch of windows of the bundled real scene (``--size``, default 256; SAR drawn) in IEEE fp32, bf16 and fp16
(autocast on a CPU); prints seconds per batch, the speed against fp32, and the distance to fp32 in DN (p99 and
largest), with the CPU's bf16 and fp16 units (AMX and AVX512 flags), and writes
benchmarks/results/cpu_precision.json and .md. With ``--metrics`` (after ``make demo``) also the paper metrics of
each demo model in each precision on the sample's held-out patches, as ``benchmarks.int8`` scores int8
(benchmarks/results/cpu_precision-metrics.json and .md); with ``--int8`` also onnxruntime's int8 export, timed
and compared the same way. Whether 16 bits pay on a CPU depends on those units:
oneDNN runs bf16 convolutions on AMX tiles where the CPU has them.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import rasterio
import torch

from benchmarks.common import median_seconds, report
from dsen2cr import create_model
from dsen2cr.data.sample import sample_scene
from dsen2cr.machine import cpu_half_units
from dsen2cr.predictor import Predictor, predictor_from_model
from dsen2cr.preprocessing import s2_dn_to_model, s2_model_to_dn


def main() -> None:
    """Time and compare every precision on one batch."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="window side in pixels (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variants", nargs="+", default=["dsen2cr", "dsen2cr-small"])
    parser.add_argument("--name", default="cpu_precision", help="results file name (default: %(default)s)")
    parser.add_argument("--metrics", action="store_true", help="also score the demo's models (make demo first)")
    parser.add_argument("--int8", action="store_true", help="also onnxruntime int8 (export-onnx --int8's)")
    args = parser.parse_args()
    with rasterio.open(sample_scene()) as scene:
        top, left = (scene.height - args.size) // 2, (scene.width - args.size) // 2
        dn = scene.read(window=((top, top + args.size), (left, left + args.size)))
    s2 = np.repeat(s2_dn_to_model(dn)[None], args.batch_size, axis=0)
    s1 = np.random.default_rng(0).uniform(-1, 1, (args.batch_size, 2, args.size, args.size)).astype(np.float32)
    units, rows = ", ".join(cpu_half_units()) or "none named", []
    for variant in args.variants:
        torch.manual_seed(0)
        model = create_model(variant).eval()
        reference: np.ndarray | None = None
        fp32_seconds = 1.0
        for precision, predictor in _predictors(model, variant, args.int8):
            prediction = predictor(s2, s1)
            seconds = median_seconds(lambda p=predictor: p(s2, s1), repeats=args.repeats)
            if reference is None:
                reference, fp32_seconds = prediction, seconds
            off = np.abs(s2_model_to_dn(prediction).astype(np.float64) - s2_model_to_dn(reference))
            rows.append(
                {
                    "model": variant,
                    "precision": precision,
                    "window": f"{args.batch_size}x{args.size}x{args.size}",
                    "s per batch": seconds,
                    "speed vs fp32": fp32_seconds / seconds,
                    "p99 DN off fp32": float(np.percentile(off, 99)),
                    "max DN off fp32": float(off.max()),
                    "threads": torch.get_num_threads(),
                    "cpu units": units,
                }
            )
            print(rows[-1], flush=True)
    report(args.name, rows)
    if args.metrics:
        report(f"{args.name}-metrics", _demo_metrics())


def _predictors(model: torch.nn.Module, variant: str, int8: bool) -> Iterator[tuple[str, Predictor]]:
    """The predictor of each precision, IEEE fp32 first; with ``int8`` onnxruntime's int8 export last (calibrated
    on the sample's train split, as ``benchmarks.int8`` makes it)."""
    for precision in ("fp32", "bf16", "fp16"):
        yield precision, predictor_from_model(model, backend="eager", device="cpu", precision=precision)
    if int8:
        from benchmarks.int8 import _int8_pair

        with tempfile.TemporaryDirectory() as folder:
            yield "int8 (onnxruntime)", _int8_pair(model, Path(folder), variant)[1]


def _demo_metrics() -> list[dict[str, object]]:
    """The paper metrics of each demo model without sigma in fp32, bf16 and fp16 on the sample's val and test
    patches (those the demo scores), and each 16-bit precision's difference from fp32 (a model with sigma runs its
    head eagerly in IEEE fp32 whatever the precision: left out)."""
    from dsen2cr.config import DataSection
    from dsen2cr.data.layout import resolve_split
    from dsen2cr.evaluate import evaluate
    from dsen2cr.predictor import load_predictor

    held_out = resolve_split(DataSection(), "val") + resolve_split(DataSection(), "test")
    rows: list[dict[str, object]] = []
    for weights in sorted(Path("demo-output/weights").glob("*.safetensors")):
        scores = {}
        for precision in ("fp32", "bf16", "fp16"):
            predictor = load_predictor(weights, backend="auto", device="cpu", precision=precision)
            if predictor.config.uncertainty != "none":
                break
            with tempfile.TemporaryDirectory() as folder:
                summary = evaluate(predictor, held_out, folder, write_images=False)
            scores[precision] = {metric: summary["model"][metric]["mean"] for metric in METRICS}
            row = {"weights": weights.name, "precision": precision, **scores[precision]}
            row |= {f"d{metric}": scores[precision][metric] - scores["fp32"][metric] for metric in METRICS}
            rows.append(row)
            print(row, flush=True)
    return rows


#: The metrics compared, as benchmarks.int8 compares them.
METRICS = ("mae", "psnr", "ssim", "sam")


if __name__ == "__main__":
    main()
