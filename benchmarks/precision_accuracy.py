"""How far each precision is from float64, on the bundled real scene: ``python -m benchmarks.precision_accuracy``.

The paper-size model without SAR (random initialisation, seed 0; or ``--weights``) on a crop of the bundled
L1C scene (``--size 0``: all of it), computed in float64 (the reference), IEEE fp32, TF32 (on CUDA), fp16 and
bf16 autocast (fp16 on CUDA only: a CPU runs it natively and slowly), and the fused fp16 and bf16 forms, each
also with its residual stream, head and tail kept fp32 (issue #27 item 3: the goal is p99 <= 8 DN and max <= 40
DN). Prints |difference| in DN (mean, 99th percentile, largest) and writes
benchmarks/results/precision_accuracy[-DEVICE].json and .md. On a CPU the fused forms compute what the tensor
cores do (16-bit values, products and sums in fp32); the speed says nothing (the GPU script times it).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import rasterio
import torch

from benchmarks.common import RESULTS_DIR, machine_info
from dsen2cr import create_model
from dsen2cr.data.sample import sample_scene
from dsen2cr.models.dsen2cr import FusedHalf
from dsen2cr.precision import float32_arithmetic
from dsen2cr.preprocessing import s2_dn_to_model
from dsen2cr.weights import load_model


def main() -> None:
    """Run every form on one crop and compare it with float64."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=96, help="crop side in pixels, 0: all (default: %(default)s)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--weights", help="weights without SAR (default: the paper-size model, random, seed 0)")
    parser.add_argument("--name", default="precision_accuracy", help="results file name (default: %(default)s)")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = (load_model(args.weights) if args.weights else create_model("dsen2cr-nosar")).eval()
    args.model = f"{Path(args.weights).name}: {model.config.describe()}" if args.weights else "paper-size model, random"
    with rasterio.open(sample_scene()) as scene:
        size = args.size or max(scene.height, scene.width)
        top, left = max(0, (scene.height - size) // 2), max(0, (scene.width - size) // 2)
        dn = scene.read(window=((top, top + size), (left, left + size)))
    args.shape = dn.shape[1:]
    x = torch.from_numpy(s2_dn_to_model(dn))[None]
    with torch.no_grad():
        xd = x.to(device)
        reference = model.double().to(device)(xd.double()).float().cpu().numpy()  # float64 (fast on a GPU)
        model = model.float()
        forms: dict[str, Callable[[], torch.Tensor]] = {"IEEE fp32": lambda: _in(model, xd, "ieee")}
        if device.type == "cuda":
            forms["TF32"] = lambda: _in(model, xd, "tf32")
            forms["fp16 autocast"] = lambda: _autocast(model, xd, device, torch.float16)
        forms["bf16 autocast"] = lambda: _autocast(model, xd, device, torch.bfloat16)
        for name, dtype in (("fp16", torch.float16), ("bf16", torch.bfloat16)):
            for paths in (False, True):
                label = f"fused {name}" + (", fp32 residual stream, head and tail" if paths else "")
                fused = FusedHalf(model, dtype=dtype, fp32_paths=paths).to(device)
                forms[label] = lambda fused=fused: fused(xd)  # type: ignore[misc]
        rows = {name: _distance(form().float().cpu().numpy(), reference) for name, form in forms.items()}
    _report(rows, args, device)


def _in(model: torch.nn.Module, x: torch.Tensor, mode: str) -> torch.Tensor:
    with float32_arithmetic(mode):
        return model(x)


def _autocast(model: torch.nn.Module, x: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    with torch.autocast(device.type, dtype):
        return model(x)


def _distance(got: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """|difference| in DN: mean, 99th percentile, largest, and the share of values more than 1 DN off."""
    error = np.abs(got.astype(np.float64) - reference.astype(np.float64)) * 2000
    return {
        "mean": float(error.mean()),
        "p99": float(np.percentile(error, 99)),
        "max": float(error.max()),
        "over_1dn": float((error > 1).mean()),
    }


def _report(rows: dict[str, dict[str, float]], args: argparse.Namespace, device: torch.device) -> None:
    """Print the table and write it with the machine's description."""
    height, width = args.shape
    lines = [
        f"Distance to float64, DN ({args.model}, {height}x{width} of the bundled scene, {device.type})",
        "",
        "| form | mean | p99 | max | values > 1 DN off |",
        "|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        lines.append(f"| {name} | {row['mean']:.2f} | {row['p99']:.1f} | {row['max']:.1f} | {row['over_1dn']:.0%} |")
    text = "\n".join(lines) + "\n"
    print(text)
    suffix = "" if device.type == "cpu" else f"-{device.type}"
    RESULTS_DIR.mkdir(exist_ok=True)
    (RESULTS_DIR / f"{args.name}{suffix}.md").write_text(text)
    payload = {"machine": machine_info(), "shape": [height, width], "weights": args.weights, "rows": rows}
    (RESULTS_DIR / f"{args.name}{suffix}.json").write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
