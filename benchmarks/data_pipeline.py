"""Training input pipeline (read + preprocess + mask + augment, 128x128 crops of 256x256 patches) in
samples/s with 0, 1 and 2 DataLoader workers; with 2 workers, short epochs (worker start included) with a loader
rebuilt every epoch against the project's persistent loader; and ``data index`` speed extrapolated to the full
release.

Run: ``python -m benchmarks.data_pipeline [--count N]`` (writes benchmarks/results/data_pipeline.json and .md).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from torch.utils.data import DataLoader

from benchmarks.common import report
from dsen2cr.data.dataset import SEN12MSCRDataset
from dsen2cr.data.index import index_dataset
from dsen2cr.data.layout import read_file_list
from dsen2cr.data.synth import write_synthetic_dataset
from dsen2cr.training.datamodule import EpochShuffle

RELEASE_TRIPLETS = 122_218


def _short_epochs_rate(dataset: SEN12MSCRDataset, persistent: bool, epochs: int = 5) -> float:
    """Samples/s over a few short epochs, worker start-up included: one persistent loader (EpochShuffle keys
    carry the epoch), or a new loader each epoch."""
    start = time.perf_counter()
    samples = 0
    sampler = EpochShuffle(len(dataset), seed=0)
    loader = DataLoader(dataset, batch_size=16, sampler=sampler, num_workers=2, persistent_workers=persistent)
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        if not persistent:
            loader = DataLoader(dataset, batch_size=16, sampler=sampler, num_workers=2)
        samples += sum(len(batch["patch_id"]) for batch in loader)
    return samples / (time.perf_counter() - start)


def main() -> None:
    """Measure and report."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=96, help="synthetic 256x256 triplets to use")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_synthetic_dataset(root, args.count, size=256, seed=0)
        triplets = read_file_list(root / "files.csv", root)
        dataset = SEN12MSCRDataset(triplets, train=True, crop_size=128)
        for workers in (0, 1, 2):
            loader = DataLoader(dataset, batch_size=16, shuffle=True, num_workers=workers)
            for _ in loader:  # warm-up epoch (worker start, file cache)
                pass
            start = time.perf_counter()
            samples = 0
            for epoch in range(2):
                dataset.set_epoch(epoch + 1)
                samples += sum(len(batch["patch_id"]) for batch in loader)
            rate = samples / (time.perf_counter() - start)
            rows.append({"measure": f"training samples/s, {workers} workers", "value": rate})
        short_epochs = SEN12MSCRDataset(triplets[:32], train=True, crop_size=128)  # epochs as short as the demo's
        for persistent in (False, True):
            rows.append(
                {
                    "measure": f"short epochs, 2 workers, {'persistent' if persistent else 'rebuilt each epoch'}: "
                    "samples/s",
                    "value": _short_epochs_rate(short_epochs, persistent),
                }
            )
        start = time.perf_counter()
        index_dataset(root, root / "index.csv")
        per_triplet = (time.perf_counter() - start) / len(triplets)
        rows.append({"measure": "index: ms per triplet", "value": 1000 * per_triplet})
        rows.append(
            {"measure": f"index: minutes for {RELEASE_TRIPLETS} triplets", "value": per_triplet * RELEASE_TRIPLETS / 60}
        )
    report("data_pipeline", rows)


if __name__ == "__main__":
    main()
