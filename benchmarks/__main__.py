"""The project's benchmark, in one run: ``python -m benchmarks [--quick]``.

Measures this machine's fp32 matrix-multiply rate; patch inference (256x256) with the eager fp32 path and the
default path (what ``dsen2cr.auto.plan_backend`` picks for a long run), in s/patch, GFLOP/s and as a fraction of the
matmul rate; whole-scene throughput and its overhead against patch inference; the training input pipeline;
one training step (batch 2 of 128x128); and, without ``--quick``, peak memory of scene inference at two
sizes. Writes benchmarks/results/benchmark[-quick].json and .md. ``--quick`` uses the small variant and
finishes in about two minutes; the full run uses the paper's model.
"""

from __future__ import annotations

import argparse
import copy
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import RESULTS_DIR, add_compression_arguments, compression_suffix, machine_info, median_seconds
from dsen2cr import create_model
from dsen2cr.auto import float32_mode_of, plan_backend, resolve_precision
from dsen2cr.backends import build_backend, relative_error, select_backend


def matmul_gflops(device: torch.device, size: int = 4096, repeats: int = 5) -> float:
    """Matrix-multiply rate of the device (GFLOP/s): fp32 on CPU, bf16 (tensor cores) on GPU."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a, b = (torch.rand(size, size, device=device, dtype=dtype) for _ in range(2))

    def multiply() -> None:
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    seconds = median_seconds(multiply, repeats=repeats)
    return 2 * size**3 / seconds / 1e9


def patch_flops(model: torch.nn.Module, size: int = 256) -> float:
    """FLOP of one forward pass on a size x size patch (2 per multiply-add of the convolutions)."""
    macs = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    return 2.0 * macs * size * size


def main() -> None:
    """Run every measurement and write the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small variant, about two minutes")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default: %(default)s)")
    parser.add_argument("--scene-size", type=int, help="side of the scene to time (default: 2560 quick, 1280 full)")
    parser.add_argument(
        "--scene-texture",
        choices=("sample", "noise"),
        default="sample",
        help="the scene's S2: the bundled real scene mirrored across it, or random DN (default: %(default)s)",
    )
    add_compression_arguments(parser)
    args = parser.parse_args()
    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    variant = "dsen2cr-small" if args.quick else "dsen2cr"
    repeats = 5 if args.quick else 3
    rows: list[dict[str, object]] = []

    def add(measure: str, value: float, unit: str, note: str = "") -> None:
        rows.append({"measure": measure, "value": float(value), "unit": unit, "note": note})
        print(f"{measure}: {value:.4g} {unit} {note}", flush=True)

    rate = matmul_gflops(device)
    where = torch.cuda.get_device_name(device) if on_gpu else f"{torch.get_num_threads()} threads"
    add(f"{'bf16' if on_gpu else 'fp32'} matmul 4096x4096", rate, "GFLOP/s", where)

    model = create_model(variant).eval()
    flops = patch_flops(model)
    rng = np.random.default_rng(0)
    s2 = rng.uniform(0, 2, (1, 13, 256, 256)).astype(np.float32)
    s1 = rng.uniform(0, 2, (1, 2, 256, 256)).astype(np.float32)
    eager = build_backend(model, "eager", device)
    eager_s = median_seconds(lambda: eager(s2, s1), repeats=repeats)
    add(
        f"patch 256x256 {variant}, eager fp32",
        eager_s,
        "s/patch",
        f"{flops / eager_s / 1e9:.1f} GFLOP/s, {flops / eager_s / 1e9 / rate:.0%} of matmul",
    )
    # what --backend and --precision auto run for a long run on this device (compiled fp32 on CPU, fused fp16 on
    # a GPU, then eager)
    on = torch.device(device)
    precision = resolve_precision("auto", on)
    candidates, _ = plan_backend("auto", precision, model.config, on, pixels=float("inf"))
    default = select_backend(copy.deepcopy(model), candidates, device, float32=float32_mode_of(precision, on))
    start = time.perf_counter()
    default(s2, s1)
    name = default.backend
    add(f"default path ({name}): first patch (build, check, predict)", time.perf_counter() - start, "s")
    default_s = median_seconds(lambda: default(s2, s1), repeats=repeats)
    add(
        f"patch 256x256 {variant}, default ({name})",
        default_s,
        "s/patch",
        f"{flops / default_s / 1e9:.1f} GFLOP/s, {flops / default_s / 1e9 / rate:.0%} of matmul, "
        f"{eager_s / default_s:.2f}x eager",
    )
    add(f"default ({name}) vs eager: relative error", relative_error(default(s2, s1), eager(s2, s1)), "")

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        scene_size = args.scene_size or (2560 if args.quick else 1280)
        _scene_throughput(
            model,
            folder,
            scene_size,
            256 * 256 / 1e6 / default_s,
            add,
            device,
            args.scene_texture,
            compression=(args.compress, args.compress_level),
        )

        from dsen2cr.data.dataset import SEN12MSCRDataset
        from dsen2cr.data.layout import read_file_list
        from dsen2cr.data.synth import write_synthetic_dataset

        write_synthetic_dataset(folder / "data", 32, size=256, seed=0)
        dataset = SEN12MSCRDataset(read_file_list(folder / "data/files.csv", folder / "data"), train=True)
        loader = torch.utils.data.DataLoader(dataset, batch_size=16, shuffle=True, num_workers=2)
        for _ in loader:
            pass
        start = time.perf_counter()
        count = sum(len(batch["patch_id"]) for batch in loader)
        add(
            "training input pipeline, 2 workers",
            count / (time.perf_counter() - start),
            "samples/s",
            "128x128 crops: read, preprocess, mask, augment",
        )

        from dsen2cr.losses import carl_loss

        train_model = create_model(variant).train().to(device, memory_format=torch.channels_last)
        optimiser = torch.optim.NAdam(train_model.parameters(), lr=7e-5, momentum_decay=0.004)
        samples = torch.utils.data.default_collate([dataset[i] for i in range(2)])
        batch = {k: samples[k].to(device) for k in ("s2_cloudy", "s1", "s2", "cloud_mask")}

        def step() -> None:
            optimiser.zero_grad()
            with torch.autocast(device.type, torch.bfloat16, enabled=on_gpu):
                pred = train_model(
                    batch["s2_cloudy"].contiguous(memory_format=torch.channels_last),
                    batch["s1"].contiguous(memory_format=torch.channels_last),
                )
                loss = carl_loss(pred.float(), batch["s2_cloudy"], batch["s2"], batch["cloud_mask"])
            loss.backward()
            optimiser.step()
            if on_gpu:
                torch.cuda.synchronize(device)

        add(
            f"training step {variant}, batch 2 of 128x128",
            median_seconds(step, repeats=3),
            "s/step",
            "bf16 autocast, channels-last" if on_gpu else "eager fp32, channels-last",
        )

        if not args.quick and not on_gpu:
            result = subprocess.run(
                [sys.executable, "-m", "benchmarks.scene", "--sizes", "1024", "2048", "--name", "scene-in-benchmark"],
                capture_output=True,
                text=True,
                check=True,
            )
            for line in result.stdout.splitlines():
                if line.startswith("| 1024") or line.startswith("| 2048"):
                    cells = [c.strip() for c in line.strip("|").split("|")]
                    add(f"scene {cells[0]} small variant: peak RSS", float(cells[5]), "MiB", f"{cells[4]} Mpx/s")
    name = "benchmark" + ("-quick" if args.quick else "") + ("-cuda" if on_gpu else "")
    name += compression_suffix(args.compress, args.compress_level)
    _write(name, rows)


def _scene_throughput(
    model: torch.nn.Module,
    folder: Path,
    size: int,
    patch_mpx: float,
    add: Callable,
    device: torch.device,
    texture: str = "sample",
    compression: tuple[str, int | None] = ("deflate", None),
) -> None:
    """Whole-scene throughput with the CLI's defaults (--tile auto, --batch-size auto, default overlap and
    backend) against patch throughput; the compute rate on full batches of the scene's windows; and how much
    of the scene's time the predictor itself took (the rest is reading, preprocessing, writing and the COG
    copy). The scene's S2 has the given ``texture`` (:func:`benchmarks.scene.write_scene`); its COG the given
    ``compression`` (name, level)."""
    import dataclasses

    import rasterio.shutil

    from benchmarks.scene import write_scene
    from dsen2cr.auto import resolve_batch_size, resolve_tile
    from dsen2cr.predictor import predictor_from_model
    from dsen2cr.scene.remove import remove_clouds
    from dsen2cr.scene.tiles import default_overlap, plan_tiles
    from dsen2cr.settings import SceneJob, SceneSettings

    overlap = default_overlap(model)
    batch = resolve_batch_size("auto", device)
    tile = resolve_tile(model.config, "auto", device=device, batch_size=batch, overlap=default_overlap(model))
    windows = plan_tiles(size, size, tile, overlap)
    window = windows[0].window
    probe = (batch, window.height, window.width)
    rng = np.random.default_rng(0)
    s2 = rng.uniform(0, 2, (batch, 13, window.height, window.width)).astype(np.float32)
    s1 = rng.uniform(0, 2, (batch, 2, window.height, window.width)).astype(np.float32)
    start = time.perf_counter()
    predictor = predictor_from_model(model, backend="auto", device=device, window_shape=probe, pixels=float(size**2))
    predictor(s2, s1)
    name = predictor.backend
    add(
        f"default path ({name}) for {probe[0]}x{probe[1]}x{probe[2]} windows: first batch (build, check, predict)",
        time.perf_counter() - start,
        "s",
    )
    batch_s = median_seconds(lambda: predictor(s2, s1), repeats=3, warmup=0)
    window_px = batch * window.height * window.width
    add(
        f"batch of {batch} windows {window.height}x{window.width}, default ({name})",
        window_px / batch_s / 1e6,
        "Mpx/s",
        f"{patch_flops(model, 1) * window_px / batch_s / 1e9:.1f} GFLOP/s (host arrays in and out included)",
    )

    start = time.perf_counter()
    write_scene(folder / "s2.tif", size, 13, "uint16", seed=1, texture=texture)
    write_scene(folder / "s1.tif", size, 2, "float32", seed=2)
    add(
        f"writing the synthetic {size}x{size} scene (S2 and S1)",
        time.perf_counter() - start,
        "s",
        f"S2 texture: {texture}; not timed below",
    )
    busy = [0.0, 0.0]  # seconds in the predictor, in the final COG copy

    class Timed:
        """The predictor's backend, timed."""

        backend, precision = predictor.backend, predictor.precision

        def __call__(self, s2: np.ndarray, s1: np.ndarray | None) -> np.ndarray:
            begin = time.perf_counter()
            try:
                return predictor.predict(s2, s1)
            finally:
                busy[0] += time.perf_counter() - begin

    copy = rasterio.shutil.copy

    def timed_copy(*args: object, **kwargs: object) -> object:
        begin = time.perf_counter()
        try:
            return copy(*args, **kwargs)
        finally:
            busy[1] += time.perf_counter() - begin

    rasterio.shutil.copy = timed_copy  # as dsen2cr.outputs.geotiff calls it
    try:
        report = remove_clouds(
            dataclasses.replace(predictor, predict=Timed()),  # type: ignore[arg-type]
            SceneJob(str(folder / "s2.tif"), str(folder / "s1.tif"), folder / "out.tif"),
            SceneSettings(
                tile=tile,
                overlap=overlap,
                batch_size=batch,
                progress=False,
                compression=compression[0],
                compression_level=compression[1],
            ),
        )
    finally:
        rasterio.shutil.copy = copy
    scene_mpx = report.megapixels / report.seconds
    redundancy = _pixels_run(windows) / size**2
    full = plan_tiles(10980, 10980, tile, overlap)
    full_redundancy = _pixels_run(full) / 10980**2
    add(
        f"scene {size}x{size} {model.config.num_blocks} blocks, default path ({name})",
        scene_mpx,
        "Mpx/s",
        f"{1 - scene_mpx / patch_mpx:.0%} below patch throughput ({patch_mpx:.4g} Mpx/s); --tile auto = {tile}: "
        f"{len(windows)} windows of {window.height}x{window.width}, overlap {overlap} px, {redundancy:.2f}x the "
        f"scene's pixels (a full 10980x10980 tile: {len(full)} windows, {full_redundancy:.2f}x)",
    )
    add(
        f"scene {size}x{size}: whole run",
        report.seconds,
        "s",
        f"predictor {busy[0]:.1f} s ({busy[0] / report.seconds:.0%}), final COG copy {busy[1]:.1f} s "
        f"({busy[1] / report.seconds:.0%}; {compression[0]} level {compression[1] or 'default'}, GDAL "
        f"{rasterio.__gdal_version__}); reading, preprocessing and writing overlap the predictor",
    )


def _pixels_run(tiles: list) -> int:
    """Pixels the network runs over for a tile plan (overlaps counted as often as they are run)."""
    return sum(t.window.height * t.window.width for t in tiles)


def _write(name: str, rows: list[dict[str, object]]) -> None:
    """JSON and Markdown table, atomically."""
    import json

    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    lines = ["| measure | value | unit | note |", "|---|---|---|---|"]
    lines += [f"| {r['measure']} | {r['value']:.4g} | {r['unit']} | {r['note']} |" for r in rows]
    table = "\n".join(lines) + "\n"
    print(table)
    for suffix, text in (
        (".json", json.dumps({"machine": machine_info(), "rows": rows}, indent=2) + "\n"),
        (".md", table),
    ):
        path = RESULTS_DIR / f"{name}{suffix}"
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        tmp.replace(path)
    print(f"wrote {RESULTS_DIR / name}.json and .md")


if __name__ == "__main__":
    main()
