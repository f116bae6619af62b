"""Resident memory across long runs: a training run over many epochs and a scene run over many tiles.

Prints RSS after each epoch / every few tiles, then a table (first, last, peak, growth), and writes
benchmarks/results/memory.json. Run: ``python -m benchmarks.memory [--epochs 30] [--scene 3072]``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import lightning as L

from benchmarks.common import report
from benchmarks.scene import write_scene
from dsen2cr import create_model
from dsen2cr.config import load_config
from dsen2cr.data.synth import write_synthetic_dataset
from dsen2cr.inputs.readers import S2Source
from dsen2cr.inputs.s1 import S1Source
from dsen2cr.predictor import predictor_from_model
from dsen2cr.rasters import gdal_block_cache
from dsen2cr.scene.batches import iter_predictions
from dsen2cr.scene.tiles import default_overlap, plan_tiles


def rss_mib() -> float:
    """This process's resident memory in MiB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class _RssPerEpoch(L.Callback):
    """Record RSS at the end of every training epoch."""

    def __init__(self) -> None:
        self.samples: list[float] = []

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.samples.append(rss_mib())
        print(f"epoch {trainer.current_epoch}: RSS {self.samples[-1]:.0f} MiB", flush=True)


def _row(name: str, samples: list[float]) -> dict[str, object]:
    """Summary of an RSS series; growth compares the medians of the last quarter and of the second quarter
    (after warm-up): resident memory swings as large buffers come and go, a leak moves the median."""
    quarter = max(1, len(samples) // 4)
    settled, end = sorted(samples[quarter : 2 * quarter]), sorted(samples[-quarter:])
    return {
        "run": name,
        "samples": len(samples),
        "first_MiB": samples[0],
        "last_MiB": samples[-1],
        "peak_MiB": max(samples),
        "median_MiB": sorted(samples)[len(samples) // 2],
        "growth_MiB": end[len(end) // 2] - settled[len(settled) // 2],
    }


def main() -> None:
    """Measure and report."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--scene", type=int, default=3072, help="scene size in pixels (square)")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_synthetic_dataset(folder / "data", 10, size=96, seed=0)
        config = load_config(
            None,
            [
                "model.variant=dsen2cr-small",
                f"data.root={folder / 'data'}",
                f"data.file_list={folder / 'data/files.csv'}",
                "data.crop_size=64",
                "data.repeats=4",
                "data.num_workers=2",
                "optim.batch_size=8",
                f"optim.epochs={args.epochs}",
                f"trainer.out_dir={folder / 'run'}",
                "trainer.accelerator=cpu",
                "trainer.devices=1",
            ],
        )
        from dsen2cr.training.datamodule import SEN12MSCRDataModule
        from dsen2cr.training.train import build_task, build_trainer, prepare_run_dir

        out = prepare_run_dir(config, resume=None, overwrite=True)
        datamodule = SEN12MSCRDataModule(config.data, config.loss, config.optim.batch_size, config.trainer.seed)
        trainer = build_trainer(config, out, progress=False)
        recorder = _RssPerEpoch()
        trainer.callbacks.append(recorder)
        trainer.fit(build_task(config), datamodule=datamodule)
        rows.append(_row(f"training, {args.epochs} epochs", recorder.samples))

        write_scene(folder / "s2.tif", args.scene, 13, "uint16", seed=1)
        write_scene(folder / "s1.tif", args.scene, 2, "float32", seed=2)
        model = create_model("dsen2cr-small")
        s2 = S2Source(folder / "s2.tif")
        s1 = S1Source(folder / "s1.tif", s2.grid)
        tiles = plan_tiles(args.scene, args.scene, 256, default_overlap(model))
        with gdal_block_cache():  # as remove_clouds runs
            samples = []
            fill = lambda: (-12.0, -19.0)  # noqa: E731
            for _ in iter_predictions(
                predictor_from_model(model, device="cpu"), s2, s1, tiles, batch_size=4, s1_fill_db=fill
            ):
                samples.append(rss_mib())
        rows.append(_row(f"scene {args.scene}x{args.scene}, {len(tiles)} tiles", samples))
    report("memory", rows)


if __name__ == "__main__":
    main()
