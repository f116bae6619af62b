"""The LightningDataModule that owns the splits and the loaders."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from dsen2cr.config import DataSection, LossSection
from dsen2cr.data.dataset import SEN12MSCRDataset
from dsen2cr.data.layout import resolve_split
from dsen2cr.errors import DSen2CRError


class EpochShuffle(torch.utils.data.Sampler[tuple[int, int]]):
    """A shuffle that depends only on (seed, epoch): the same order however often the loader is iterated.

    Yields ``(epoch, index)`` pairs, so the dataset learns the epoch from each key rather than from state
    that persistent workers would keep stale. Lightning calls :meth:`set_epoch` before each epoch (also
    through its distributed wrapper) with the epoch restored from a checkpoint on resume.
    """

    def __init__(self, size: int, seed: int, epoch: int = 0) -> None:
        self.size = size
        self.seed = seed
        self.epoch = epoch

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order the next iteration yields."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        """Number of indices."""
        return self.size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        """The permutation of this epoch, as (epoch, index) pairs."""
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return ((self.epoch, index) for index in torch.randperm(self.size, generator=generator).tolist())


def _ignore_sigterm(worker_id: int) -> None:
    """In a DataLoader worker: ignore SIGTERM. ``timeout`` and schedulers signal the whole process group; the
    main process ends the run cleanly and its workers with it (they also exit when it dies), where a killed
    worker made the run end with a DataLoader error instead."""
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class SEN12MSCRDataModule(L.LightningDataModule):
    """Training and validation loaders over SEN12MS-CR triplets.

    The training loader is built once with persistent workers (and pinned memory on CUDA); its sampler is an
    ``EpochShuffle`` whose ``(epoch, index)`` keys make crops, augmentations and order depend only on
    (seed, epoch): a resumed run sees what an uninterrupted one would. Under DDP, Lightning splits that order
    across ranks.
    """

    def __init__(
        self, data: DataSection, loss: LossSection, batch_size: int, seed: int, *, global_batch: bool = False
    ) -> None:
        super().__init__()
        self.data = data
        self.loss = loss
        self.batch_size = batch_size
        self.global_batch = global_batch
        self.seed = seed
        self.train_set: SEN12MSCRDataset | None = None
        self.val_set: SEN12MSCRDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        """Resolve the splits and build the datasets (missing files fail here, not mid-epoch)."""
        common: dict[str, Any] = {
            "cloud_threshold": self.loss.cloud_threshold,
            "seed": self.seed,
            "mask": self.loss.mask,
        }
        if self.train_set is None:
            self.train_set = SEN12MSCRDataset(
                resolve_split(self.data, "train"),
                train=True,
                crop_size=self.data.crop_size,
                augment=self.data.augment,
                repeats=self.data.repeats,
                original_crop_offsets=self.data.original_crop_offsets,
                **common,
            )
        if self.val_set is None:
            self.val_set = SEN12MSCRDataset(resolve_split(self.data, "val"), train=False, **common)

    def batch_per_device(self) -> int:
        """The batch of one rank: ``batch_size``, or with ``global_batch`` its share of the global batch (the
        original's ``batch_size / n_gpus``; a world size that does not divide it is refused)."""
        world = self.trainer.world_size if self.trainer is not None else 1
        if not self.global_batch or world == 1:
            return self.batch_size
        if self.batch_size % world:
            raise DSen2CRError(
                f"optim.batch_size: the global batch {self.batch_size} does not split over {world} processes "
                "(optim.global_batch is true); choose a device count that divides it"
            )
        return self.batch_size // world

    def _loader(
        self, dataset: torch.utils.data.Dataset, sampler: torch.utils.data.Sampler | None, *, drop_last: bool = False
    ) -> DataLoader:
        """A DataLoader with the configured workers."""
        return DataLoader(
            dataset,
            batch_size=self.batch_per_device(),
            sampler=sampler,
            drop_last=drop_last,
            num_workers=self.data.num_workers,
            persistent_workers=self.data.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
            worker_init_fn=_ignore_sigterm,
        )

    def train_dataloader(self) -> DataLoader:
        """The training loader (Lightning sets its sampler's epoch before each epoch)."""
        assert self.train_set is not None
        world = self.trainer.world_size if self.trainer is not None else 1
        per_rank = len(self.train_set) // world  # Lightning's distributed sampler splits the samples evenly
        if self.data.drop_last and per_rank < self.batch_per_device():
            raise DSen2CRError(
                f"optim.batch_size: {self.batch_per_device()} per process, but an epoch has {per_rank} training "
                f"samples per process and data.drop_last is true: no batch would run (the run would save untrained "
                "weights); lower optim.batch_size, raise data.repeats, or set data.drop_last: false"
            )
        sampler = EpochShuffle(len(self.train_set), self.seed)
        return self._loader(self.train_set, sampler, drop_last=self.data.drop_last)

    def val_dataloader(self) -> DataLoader:
        """The validation loader (full patches)."""
        assert self.val_set is not None
        return self._loader(self.val_set, None)
