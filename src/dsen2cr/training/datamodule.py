"""The LightningDataModule that owns the splits and the loaders."""

from __future__ import annotations

import atexit
import functools
import hashlib
import itertools
from collections.abc import Iterable, Iterator
from typing import Any

import lightning as L
import rasterio
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader

from dsen2cr.config import DataSection, LossSection
from dsen2cr.data.dataset import SEN12MSCRDataset, collate_by_size
from dsen2cr.data.layout import check_validation_split, data_files, resolve_split
from dsen2cr.errors import DSen2CRError, RunWideError
from dsen2cr.machine import SHARED_MEMORY, shared_memory_free
from dsen2cr.weights import loop_position

#: Batches each loader worker prepares ahead (DataLoader's ``prefetch_factor`` default).
PREFETCH_FACTOR = 2


def check_shared_memory(
    dataset: torch.utils.data.Dataset, key: Any, batch: int, workers: int, processes: int = 1
) -> None:
    """Refuse loader workers whose batches in flight (``workers`` x :data:`PREFETCH_FACTOR` batches of ``batch``
    samples like ``dataset[key]``, for each of the run's ``processes`` on this machine) do not fit in the free
    shared memory: PyTorch fails mid-epoch with "unable to allocate shared memory", or a worker dies of SIGBUS."""
    free = shared_memory_free()
    if workers == 0 or free is None:
        return
    sample_bytes = sum(value.nbytes for value in dataset[key].values() if isinstance(value, torch.Tensor))
    need = processes * workers * PREFETCH_FACTOR * batch * sample_bytes
    if need > free:
        each = "" if processes == 1 else f" on each of {processes} processes"
        size_gib = max(1, -(-2 * need // 2**30))  # twice the need, in whole GiB
        raise DSen2CRError(
            f"data.num_workers: {workers} loader workers{each} hold up to {need / 1e6:.2f} MB of batches in "
            f"shared memory, but {SHARED_MEMORY} has {free / 1e6:.2f} MB free (a Docker container's default is "
            f"64 MB): run the container with --shm-size {size_gib}g or --ipc=host, lower data.num_workers or "
            "optim.batch_size, or set data.num_workers=0"
        )


def largest_patch(dataset: SEN12MSCRDataset) -> int:
    """The index of the validation patch with the most pixels: each ROI's first is opened (a ROI's patches are cut
    at one size: the release's 256 px, or ``data patches --size``), so its batches' need is the loader's largest."""
    first_of: dict[str, int] = {}
    for index, triplet in enumerate(dataset.triplets):
        first_of.setdefault(triplet.roi, index)

    def pixels(index: int) -> int:
        with rasterio.open(dataset.triplets[index].s2) as patch:
            return patch.width * patch.height

    return max(first_of.values(), key=pixels)


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


class _SkipFirst:
    """A batch sampler whose first iteration starts after ``skip`` batches (indices only: nothing is read); its
    length stays the epoch's, as Lightning counts a resumed epoch's batches from where it stopped."""

    def __init__(self, batches: Iterable[list[Any]], skip: int) -> None:
        self.batches = batches
        self.skip = skip

    def __len__(self) -> int:
        """The epoch's batches."""
        return len(self.batches)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[list[Any]]:
        """This epoch's batches, the first iteration drawn from after the skipped ones (a DataLoader's workers
        make an iteration they never draw from before the one they use)."""
        batches: Iterator[list[Any]] = iter(self.batches)
        if self.skip:  # a generator: this runs at the first draw
            batches, self.skip = itertools.islice(batches, self.skip, None), 0
        yield from batches


class TrainingLoader(DataLoader):
    """The training DataLoader, whose sampler starts at ``start_epoch`` (a resumed run's). A run resumed in the
    middle of an epoch (from a SLURM requeue checkpoint, :mod:`dsen2cr.training.requeue`) starts after the
    ``skip_batches`` batches of the epoch that it had trained, as an uninterrupted run goes on; later epochs are
    whole. Under DDP each rank skips its own batches.

    Lightning takes a loader with ``state_dict``/``load_state_dict`` for one that resumes mid-epoch (else it
    warns that it does not): this one's state is the loops' progress in the checkpoint, which the data module
    reads when it makes the loader (:func:`resumed_position`), so there is nothing more to store."""

    def __init__(self, *args: Any, start_epoch: int = 0, skip_batches: int = 0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.start_epoch = start_epoch
        self.skip_batches = skip_batches
        self._skipping: _SkipFirst | None = None
        # Workers make their iterator, and fetch its first batches, before Lightning sets the restored epoch on the
        # sampler: it starts at that epoch (under DDP Lightning's distributed sampler, which shuffles again by it)
        if callable(set_epoch := getattr(self.sampler, "set_epoch", None)):
            set_epoch(start_epoch)

    @property
    def _index_sampler(self) -> Any:
        """The batch sampler, the first epoch's iteration after the skipped batches (one wrapper: the workers'
        iterator keeps the one it was made with for every epoch)."""
        batches = super()._index_sampler
        if not self.skip_batches:
            return batches
        if self._skipping is None:
            self._skipping = _SkipFirst(batches, self.skip_batches)
        return self._skipping

    def state_dict(self) -> dict[str, Any]:
        """Nothing: where a resumed epoch starts comes from the loops' progress (class docstring)."""
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Nothing to restore (class docstring)."""


def resumed_position(trainer: L.Trainer | None) -> tuple[int, int]:
    """Where a trainer restored from a checkpoint goes on: the epoch (the one Lightning passes to the sampler's
    ``set_epoch``) and, in an epoch the checkpoint interrupted, the batches of it already trained (else 0)."""
    if trainer is None:
        return 0, 0
    loop = trainer.fit_loop  # its restored progress, as the checkpoint holds it
    return loop_position(loop.epoch_progress.current.state_dict(), loop.epoch_loop.batch_progress.current.state_dict())


def _ignore_sigterm(worker_id: int) -> None:
    """In a DataLoader worker: ignore SIGTERM. ``timeout`` and schedulers signal the whole process group; the
    main process ends the run cleanly and its workers with it (they also exit when it dies), where a killed
    worker made the run end with a DataLoader error instead. (So the main process kills, not terminates, those
    still alive at its exit: :func:`_end_workers_at_exit`.)"""
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _end_workers_at_exit() -> None:
    """At the main process's exit, SIGKILL its daemonic children still alive (loader workers of a run that
    failed while they lived): multiprocessing's own exit handler ends them with SIGTERM, which they ignore
    (:func:`_ignore_sigterm`), and then waited for them forever. Registered after multiprocessing's handler, so it
    runs before it."""
    import multiprocessing

    for child in multiprocessing.active_children():
        if child.daemon:
            child.kill()
            child.join(timeout=5)


@functools.cache
def _register_end_of_workers() -> None:
    """Register :func:`_end_workers_at_exit` once, when the first loader with workers is built."""
    import multiprocessing.util  # noqa: F401  (its exit handler first, so that ours runs before it)

    atexit.register(_end_workers_at_exit)


class SEN12MSCRDataModule(L.LightningDataModule):
    """Training and validation loaders over SEN12MS-CR triplets.

    The training loader is built once with persistent workers (and pinned memory on CUDA); its sampler is an
    ``EpochShuffle`` whose ``(epoch, index)`` keys make crops, augmentations and order depend only on
    (seed, epoch): a resumed run sees what an uninterrupted one would. Under DDP, Lightning's distributed sampler
    shuffles that order again (by its seed and the epoch) and splits it across ranks.
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
        self.val_in_training_rois = 0  # validation patches in ROIs training patches come from (setup counts them)

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
            self.val_in_training_rois = check_validation_split(
                self.train_set.triplets, self.val_set.triplets, data_files(self.data)
            )
        world = self.trainer.world_size if self.trainer is not None else 1
        if (patches := len(self.val_set)) < world:  # a process with nothing to validate would skip the validation
            raise RunWideError(  # the others end by adding their sums together, and they would wait for it for ever
                f"data: the validation split has {patches} patch{'es' if patches != 1 else ''}, fewer than the run's "
                f"{world} processes: each validates its own patches; add validation patches or train on fewer processes"
            )
        self._check_batch_limits(world)

    def _check_batch_limits(self, world: int) -> None:
        """Refuse a fraction of ``trainer.limit_train_batches`` or ``limit_val_batches`` that leaves a process less
        than one batch (Lightning's own check is an internal error, the validation's once the first epoch trained
        and only on the ranks it hits: under DDP the ranks validate unequal shares)."""
        assert self.train_set is not None and self.val_set is not None
        size = self.batch_per_device()
        train = -(-len(self.train_set) // world)  # Lightning's distributed sampler gives every rank as many
        fewest = {  # the fewest batches a process runs
            "train": train // size if self.data.drop_last else -(-train // size),
            "val": -(-(len(self.val_set) // world) // size),
        }
        for split, what in (("train", "training"), ("val", "validation")):
            limit, batches = getattr(self.trainer, f"limit_{split}_batches", 1.0), fewest[split]
            if isinstance(limit, float) and batches and int(batches * limit) == 0:
                raise RunWideError(
                    f"trainer.limit_{split}_batches: {limit:g} of the {batches} {what} batch"
                    f"{'es' if batches != 1 else ''} a process runs is less than one batch; raise it to at least "
                    f"{1 / batches:.3g}, or give a number of batches (an integer)"
                )

    def record(self) -> dict[str, Any]:
        """What the run trains and validates on (after :meth:`setup`), for its weights' training record: the
        list files by name (never a machine's folders), each split's patch count and the SHA-256 of its sorted
        patch ids (``season_roi_pN``, one per line: the same split gives the same digest wherever the data
        lies), how many validation patches lie in ROIs training patches come from, and how training samples are
        drawn."""
        assert self.train_set is not None and self.val_set is not None, "setup() first"
        record: dict[str, Any] = {"files": data_files(self.data)}
        for split, dataset in (("train", self.train_set), ("val", self.val_set)):
            ids = sorted(triplet.patch_id for triplet in dataset.triplets)
            record[f"{split}_patches"] = len(ids)
            record[f"{split}_patches_sha256"] = hashlib.sha256("".join(f"{i}\n" for i in ids).encode()).hexdigest()
        # validation patches in ROIs training patches come from (a list split by patch; warned of at setup): the
        # checkpoints were chosen on neighbours of what the model trained on
        record["val_in_training_rois"] = self.val_in_training_rois
        drawn = {"crop_size": self.data.crop_size, "augment": self.data.augment, "repeats": self.data.repeats}
        return record | drawn | {"seed": self.seed}

    def batch_per_device(self) -> int:
        """The batch of one rank: ``batch_size``, or with ``global_batch`` its share of the global batch (the
        original's ``batch_size / n_gpus``; a world size that does not divide it is refused)."""
        world = self.trainer.world_size if self.trainer is not None else 1
        if not self.global_batch or world == 1:
            return self.batch_size
        if self.batch_size % world:
            raise RunWideError(
                f"optim.batch_size: the global batch {self.batch_size} does not split over {world} processes "
                "(optim.global_batch is true); choose a device count that divides it"
            )
        return self.batch_size // world

    def _check_shared_memory(self, dataset: torch.utils.data.Dataset, key: Any) -> None:
        """:func:`check_shared_memory` for this run's loaders: its batch per device and workers, on each of the
        run's processes on this machine (the trainer's devices per node, which share its /dev/shm)."""
        processes = max(1, int(self.trainer.num_devices)) if self.trainer is not None else 1
        check_shared_memory(dataset, key, self.batch_per_device(), self.data.num_workers, processes)

    def _loader_options(self, *, drop_last: bool = False) -> dict[str, Any]:
        """A DataLoader's options: the configured batch and workers."""
        if self.data.num_workers > 0:
            _register_end_of_workers()
        return {
            "batch_size": self.batch_per_device(),
            "drop_last": drop_last,
            "num_workers": self.data.num_workers,
            "persistent_workers": self.data.num_workers > 0,
            "pin_memory": torch.cuda.is_available(),
            "worker_init_fn": _ignore_sigterm,
        }

    def train_dataloader(self) -> DataLoader:
        """The training loader (Lightning sets its sampler's epoch before each epoch; it starts at a resumed
        run's)."""
        assert self.train_set is not None
        world = self.trainer.world_size if self.trainer is not None else 1
        per_rank = len(self.train_set) // world  # Lightning's distributed sampler splits the samples evenly
        if self.data.drop_last and per_rank < self.batch_per_device():
            raise RunWideError(
                f"optim.batch_size: {self.batch_per_device()} per process, but an epoch has {per_rank} training "
                f"samples per process and data.drop_last is true: no batch would run (the run would save untrained "
                "weights); lower optim.batch_size, raise data.repeats, or set data.drop_last: false"
            )
        epoch, skip = resumed_position(self.trainer)
        sampler = EpochShuffle(len(self.train_set), self.seed, epoch)
        self._check_shared_memory(self.train_set, (0, 0))
        options = self._loader_options(drop_last=self.data.drop_last)
        return TrainingLoader(self.train_set, sampler=sampler, start_epoch=epoch, skip_batches=skip, **options)

    def val_dataloader(self) -> DataLoader:
        """The validation loader (whole patches, a batch of one stack per patch size); under DDP each rank takes
        every world-th patch, each patch once (Lightning's distributed sampler repeats patches to give every rank
        as many, which weighed them twice in the means)."""
        assert self.val_set is not None
        self._check_shared_memory(self.val_set, largest_patch(self.val_set))
        options = self._loader_options() | {"collate_fn": collate_by_size}  # whole patches: one stack per size
        if self.trainer is None or self.trainer.world_size == 1:
            return DataLoader(self.val_set, **options)
        world, rank = self.trainer.world_size, self.trainer.global_rank
        sampler = UnrepeatedDistributedSampler(self.val_set, num_replicas=world, rank=rank, shuffle=False)
        return DataLoader(self.val_set, sampler=sampler, **options)
