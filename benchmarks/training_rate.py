"""Training at the device's rate (#27 item 5): for each bundled config (default: paper and paper-fast), in
samples/s, the training loader alone (the run's own ``SEN12MSCRDataModule`` with N workers), the training step
alone (forward, loss, backward, NAdam step under the config's precision, through Lightning, on one batch
of real samples already in memory) and end to end (``Trainer.fit`` on the loader, as ``dsen2cr train`` runs),
with end to end as a share of the step alone. Data: synthetic 256x256 triplets (``dsen2cr data synth``)
written to a temporary folder; the page cache holds them after the first epoch, as it would on a training
machine with enough memory.

Run: ``python -m benchmarks.training_rate [--device cuda] [--workers 8 16] [--variant V --batch B]``
(writes benchmarks/results/training_rate[-cuda].json and .md). On a CPU the paper-size model takes minutes per
step: ``--variant dsen2cr-small --batch 4`` measures the same pipeline with the small model.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from benchmarks.common import report
from dsen2cr.config import RunConfig, load_config
from dsen2cr.data.synth import write_synthetic_dataset
from dsen2cr.precision import training_arithmetic
from dsen2cr.training.datamodule import SEN12MSCRDataModule
from dsen2cr.training.train import build_task


class _StepTimer(L.Callback):
    """Wall time of the training batches after ``warmup`` (the device synchronised at both ends)."""

    def __init__(self, warmup: int, device: torch.device) -> None:
        self.warmup, self.device = warmup, device
        self.start: float | None = None
        self.batches = 0  # begun so far, over every epoch (a batch's index starts again at each epoch's)
        self.samples = 0
        self.seconds = 0.0

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def on_train_batch_start(self, trainer: L.Trainer, module: L.LightningModule, batch: Any, index: int) -> None:
        if self.batches == self.warmup:
            self._sync()
            self.start = time.perf_counter()
        self.batches += 1

    def on_train_batch_end(
        self, trainer: L.Trainer, module: L.LightningModule, outputs: Any, batch: Any, index: int
    ) -> None:
        if self.start is not None:
            self.samples += len(batch["patch_id"])
            self._sync()
            self.seconds = time.perf_counter() - self.start


class _OneBatch(Dataset):
    """``length`` copies of one collated batch (the step alone: no reading, no preprocessing)."""

    def __init__(self, batch: dict[str, Any], length: int) -> None:
        self.batch, self.length = batch, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.batch


def _config(name: str, root: Path, args: argparse.Namespace, workers: int) -> RunConfig:
    """The bundled config ``name`` on the synthetic data, with the benchmark's variant, batch and workers."""
    overrides = [f"data.root={root}", f"data.file_list={root / 'files.csv'}", f"data.num_workers={workers}"]
    overrides.append("trainer.accelerator=" + ("gpu" if args.device == "cuda" else "cpu"))
    if args.variant:
        overrides.append(f"model.variant={args.variant}")
    if args.batch:
        overrides.append(f"optim.batch_size={args.batch}")
    config = load_config(name, overrides)
    # one epoch holds every measurement's batches (a new epoch would time the workers' restart of the sampler)
    needed = (args.warmup + args.steps + 2) * config.optim.batch_size
    return load_config(name, [*overrides, f"data.repeats={-(-needed // args.count)}"])


def _loader_rate(datamodule: SEN12MSCRDataModule, batches: int) -> float:
    """Samples/s of the training loader alone, after one warm-up batch (worker start)."""
    loader = datamodule.train_dataloader()
    iterator = iter(loader)
    next(iterator)
    start = time.perf_counter()
    samples = 0
    for _ in range(batches):
        samples += len(next(iterator)["patch_id"])
    return samples / (time.perf_counter() - start)


def _fit_rate(
    config: RunConfig, loader: DataLoader, device: torch.device, warmup: int, steps: int, folder: Path
) -> float:
    """Samples/s of ``Trainer.fit`` over ``loader``: ``steps`` timed batches after ``warmup`` (what the run
    writes goes to ``folder``), in the config's float32 arithmetic as ``dsen2cr train`` runs it."""
    timer = _StepTimer(warmup, device)
    trainer = L.Trainer(
        default_root_dir=folder,
        accelerator=config.trainer.accelerator,
        devices=1,
        precision=config.trainer.precision,  # type: ignore[arg-type]  # checked by the config
        max_steps=warmup + steps,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
    )
    with training_arithmetic(config.trainer.matmul_precision):
        trainer.fit(build_task(config), train_dataloaders=loader)
    return timer.samples / timer.seconds


def main() -> None:
    """Measure and report."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--configs", nargs="+", default=["paper", "paper-fast"])
    parser.add_argument("--workers", nargs="+", type=int, help="loader workers (default: 8 16 on cuda, 2 on cpu)")
    parser.add_argument("--variant", help="the model variant instead of the config's (e.g. dsen2cr-small on a CPU)")
    parser.add_argument("--batch", type=int, help="the batch instead of the config's 16")
    parser.add_argument("--count", type=int, default=64, help="synthetic 256x256 triplets")
    parser.add_argument("--steps", type=int, default=20, help="timed steps of each training measurement")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (start-up, cuDNN choice)")
    args = parser.parse_args()
    workers = args.workers or ([8, 16] if args.device == "cuda" else [2])
    device = torch.device(args.device)
    for logger in ("lightning", "lightning.pytorch", "lightning.pytorch.utilities.rank_zero", "lightning.fabric"):
        logging.getLogger(logger).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="lightning")
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_synthetic_dataset(root, args.count, size=256, seed=0)
        for name in args.configs:
            base = _config(name, root, args, max(workers))
            label = f"{name} ({base.model.variant}, batch {base.optim.batch_size} of {base.data.crop_size}^2, "
            label += f"{base.trainer.precision}, matmul {base.trainer.matmul_precision})"
            rates: dict[str, float] = {}
            for count in workers:
                datamodule = SEN12MSCRDataModule(
                    _config(name, root, args, count).data, base.loss, base.optim.batch_size, base.trainer.seed
                )
                datamodule.setup("fit")
                rates[f"loader alone, {count} workers"] = _loader_rate(datamodule, args.steps)
            datamodule = SEN12MSCRDataModule(base.data, base.loss, base.optim.batch_size, base.trainer.seed)
            datamodule.setup("fit")
            batch = next(iter(datamodule.train_dataloader()))
            one = DataLoader(_OneBatch(batch, args.warmup + args.steps), batch_size=None)
            rates["step alone"] = step = _fit_rate(base, one, device, args.warmup, args.steps, root)
            rates[f"end to end, {max(workers)} workers"] = end = _fit_rate(
                base, datamodule.train_dataloader(), device, args.warmup, args.steps, root
            )
            for measure, value in rates.items():
                note = f"{100 * end / step:.0f} % of the step alone" if measure.startswith("end to end") else ""
                rows.append({"measure": f"{label}: {measure}", "value": value, "unit": "samples/s", "note": note})
    suffix = "-cuda" if args.device == "cuda" else ""
    report(f"training_rate{suffix}", rows)


if __name__ == "__main__":
    main()
