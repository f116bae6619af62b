"""bf16 paths on one batch of a full tile's windows (``--tile auto``, batch 4): autocast, the fused network
(the ``bf16`` backend on CUDA, ``dsen2cr.backends.FusedBF16``), the same backend through the predictor that
``remove-clouds`` calls (first-batch check, output finiteness check) and, with ``--compiled``, autocast compiled;
seconds per batch with the host arrays in and out, TFLOP/s, and the relative error against fp32 eager.

Run on a GPU: ``python -m benchmarks.windows_bf16 [--compiled]`` (``scripts/gpu_benchmark.sh`` steps ``fused``
and ``compile``); ``--device cpu --variant dsen2cr-small --size 512`` checks it runs on a CPU. Writes
benchmarks/results/windows_bf16.json and .md.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from benchmarks.__main__ import patch_flops
from benchmarks.common import median_seconds, report
from dsen2cr import create_model
from dsen2cr.auto import resolve_tile
from dsen2cr.backends import PredictFn, _channels_last, _fused_bf16, build_backend, relative_error
from dsen2cr.models.dsen2cr import FusedBF16
from dsen2cr.predictor import predictor_from_model
from dsen2cr.scene.tiles import default_overlap, plan_tiles


def main() -> None:
    """Measure and report."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--variant", default="dsen2cr")
    parser.add_argument("--size", type=int, default=10980, help="side of the scene whose windows are run")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--compiled", action="store_true", help="also autocast compiled (torch.compile)")
    args = parser.parse_args()
    model = create_model(args.variant).eval()
    device = torch.device(args.device)
    tile = resolve_tile(model.config, "auto", device=device, batch_size=args.batch_size, overlap=default_overlap(model))
    window = plan_tiles(args.size, args.size, tile, default_overlap(model))[0].window
    rng = np.random.default_rng(0)
    shape = (args.batch_size, window.height, window.width)
    s2 = rng.uniform(0, 2, (shape[0], 13, *shape[1:])).astype(np.float32)
    s1 = rng.uniform(0, 2, (shape[0], 2, *shape[1:])).astype(np.float32)
    flop = patch_flops(model, 1) * shape[0] * shape[1] * shape[2]
    fp32 = build_backend(model, "eager", device)(s2, s1)
    paths: list[tuple[str, PredictFn]] = [
        ("bf16 autocast", _channels_last(model, device, compile_model=False, bf16=True)),
        ("bf16 backend (fused on CUDA)", build_backend(model, "bf16", device)),
        # issue #27 item 3: the fused form with its residual stream, head and tail in fp32 (4x closer to fp64)
        ("fused bf16, fp32 paths", _fused_bf16(FusedBF16(model, fp32_paths=True), device)),
        # the same backend as remove-clouds calls it: checked on the first batch, its output checked for NaN
        ("bf16 backend through the predictor", predictor_from_model(model, device=device, precision="bf16")),
    ]
    if args.compiled:
        paths.append(("bf16 autocast compiled", _channels_last(model, device, compile_model=True, bf16=True)))
    rows: list[dict[str, object]] = []
    for name, predict in paths:
        start = time.perf_counter()
        first = predict(s2, s1)  # builds (compiles) where the path does
        seconds = median_seconds(lambda: predict(s2, s1), repeats=5, warmup=0)  # noqa: B023
        rows.append(
            {
                "path": f"{name}, {shape[0]} windows {shape[1]}x{shape[2]}",
                "s/batch": seconds,
                "TFLOP/s": flop / seconds / 1e12,
                "first call s": time.perf_counter() - start - 5 * seconds,
                "rel. error vs fp32": relative_error(first, fp32),
            }
        )
        print(rows[-1], flush=True)
    report("windows_bf16", rows)


if __name__ == "__main__":
    main()
