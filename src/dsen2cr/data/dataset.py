"""A PyTorch ``Dataset`` of SEN12MS-CR triplets, read with rasterio windows and preprocessed as in the paper."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from rasterio.windows import Window
from torch.utils.data import Dataset, default_collate

from dsen2cr.choices import DEFAULT_CLOUD_THRESHOLD
from dsen2cr.cloud_detection import computed_mask
from dsen2cr.data.layout import Triplet
from dsen2cr.errors import DSen2CRError
from dsen2cr.preprocessing import NUM_S1_BANDS, NUM_S2_BANDS, s1_db_to_model, s2_dn_to_model
from dsen2cr.rasters import open_raster, read_window

#: Keys of every sample.
SAMPLE_KEYS = ("s1", "s2_cloudy", "s2", "cloud_mask", "patch_id")


#: Samples per epoch at most (patches x repeats): the shuffle holds one index per sample.
MAX_EPOCH_SAMPLES = 50_000_000


class SEN12MSCRDataset(Dataset):
    """Triplets (S1, S2 cloud-free, S2 cloudy) as dict samples in model units.

    Each sample has ``s1`` (2, h, w), ``s2_cloudy`` and ``s2`` (13, h, w) float32 tensors, ``cloud_mask``
    (h, w) int8 (1 cloud, -1 shadow, 0 clear, computed on the cloudy image as served) and ``patch_id``.

    Training mode (``train=True``): a random ``crop_size`` window, the same in the three rasters, then (with
    ``augment``) a random flip (none, vertical or horizontal) and rotation by k x 90 degrees of the whole
    triplet. The randomness of sample ``i`` depends only on ``(seed, epoch, i)``, so it is the same whatever
    the number of DataLoader workers, and a resumed run sees what an uninterrupted one would. The epoch is the
    one set with :meth:`set_epoch`, or travels with the index as an ``(epoch, index)`` pair (what
    ``EpochShuffle`` yields), so persistent workers need no update between epochs. With
    ``repeats`` > 1 each patch is served that many times per epoch, each with its own crop and augmentation.
    Evaluation mode: the full patch, no augmentation.
    """

    def __init__(
        self,
        triplets: Sequence[Triplet],
        *,
        train: bool = False,
        crop_size: int = 128,
        augment: bool = True,
        cloud_threshold: float = DEFAULT_CLOUD_THRESHOLD,
        seed: int = 0,
        repeats: int = 1,
        window: int | None = None,
        original_crop_offsets: bool = False,
        mask: str = "paper",
    ) -> None:
        if not triplets:
            raise DSen2CRError("dataset: no patches to read (empty split or file list)")
        if crop_size < 1 or repeats < 1:
            raise DSen2CRError(f"crop_size and repeats: must be positive, got {crop_size} and {repeats}")
        if len(triplets) * repeats > MAX_EPOCH_SAMPLES:
            raise DSen2CRError(
                f"repeats: {len(triplets)} patches x {repeats} repeats = {len(triplets) * repeats:,} samples per "
                f"epoch, more than {MAX_EPOCH_SAMPLES:,}; lower data.repeats"
            )
        self.triplets = list(triplets)
        self.train = train
        self.crop_size = crop_size
        self.augment = augment
        self.cloud_threshold = cloud_threshold
        self.seed = seed
        self.repeats = repeats
        self.mask = mask  # paper or s2cloudless (dsen2cr.cloud_detection.computed_mask)
        self.window = window  # evaluation: the top-left window x window of each patch (the original's protocol)
        self.original_crop_offsets = original_crop_offsets  # offsets 0 .. size - crop - 1, as the original draws
        self.epoch = 0
        self._check_files_exist()

    def _check_files_exist(self) -> None:
        """Fail at construction, not hours into an epoch, when a file of a triplet is missing."""
        for triplet in self.triplets:
            for role, path in triplet.paths().items():
                if not os.path.isfile(path):
                    raise DSen2CRError(f"{path}: {role} file of patch {triplet.patch_id} not found")

    def __len__(self) -> int:
        """Samples per epoch: the number of patches times ``repeats``."""
        return len(self.triplets) * self.repeats

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch that, with the seed and the index, determines each sample's crop and augmentation."""
        self.epoch = int(epoch)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        """Read, crop, augment and preprocess one triplet (patch ``index % number of patches``); ``key`` is
        the index, or an ``(epoch, index)`` pair that overrides the epoch set with :meth:`set_epoch`."""
        epoch, index = (int(key[0]), int(key[1])) if isinstance(key, tuple) else (self.epoch, int(key))
        triplet = self.triplets[index % len(self.triplets)]
        rng = np.random.default_rng([self.seed, epoch, index])
        s1, s2, s2_cloudy = self._read(triplet, rng)
        if self.train and self.augment:
            flip = int(rng.integers(3))  # 0 none, 1 vertical, 2 horizontal
            turns = int(rng.integers(4))
            s1, s2, s2_cloudy = (_flip_rotate(a, flip, turns) for a in (s1, s2, s2_cloudy))
        mask = computed_mask(self.mask, s2_cloudy, self.cloud_threshold)
        return {
            "s1": torch.from_numpy(s1_db_to_model(s1)),
            "s2_cloudy": torch.from_numpy(s2_dn_to_model(s2_cloudy)),
            "s2": torch.from_numpy(s2_dn_to_model(s2)),
            "cloud_mask": torch.from_numpy(mask),
            "patch_id": triplet.patch_id,
        }

    def _read(self, triplet: Triplet, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Read the three rasters (a common random window in training mode), checking bands and sizes."""
        with open_raster(triplet.s2_cloudy, bands=NUM_S2_BANDS, what="S2 cloudy") as cloudy_file:
            height, width = cloudy_file.height, cloudy_file.width
            window = None
            if self.train:
                if self.crop_size > min(height, width):
                    raise DSen2CRError(
                        f"{triplet.s2_cloudy}: patch is {height}x{width}, smaller than the "
                        f"{self.crop_size}x{self.crop_size} training crop; set data.crop_size to at most "
                        f"{min(height, width)} (the bundled sample: --config small-cpu)"
                    )
                last = 0 if self.original_crop_offsets else 1  # the original never reaches the last offset
                row = int(rng.integers(max(1, height - self.crop_size + last)))
                col = int(rng.integers(max(1, width - self.crop_size + last)))
                window = Window(col, row, self.crop_size, self.crop_size)
            elif self.window:
                if self.window > min(height, width):
                    raise DSen2CRError(
                        f"{triplet.s2_cloudy}: patch is {height}x{width}, smaller than the "
                        f"{self.window}x{self.window} evaluation window; score full patches with --window 0 "
                        f"(or a window of at most {min(height, width)})"
                    )
                window = Window(0, 0, self.window, self.window)
            s2_cloudy = read_window(cloudy_file, window)
        arrays = [s2_cloudy]
        for path, bands, what in ((triplet.s1, NUM_S1_BANDS, "S1"), (triplet.s2, NUM_S2_BANDS, "S2 cloud-free")):
            with open_raster(path, bands=bands, what=what) as dataset:
                if (dataset.height, dataset.width) != (height, width):
                    raise DSen2CRError(
                        f"{path}: {what} is {dataset.height}x{dataset.width}, but its S2 cloudy partner "
                        f"{triplet.s2_cloudy} is {height}x{width}"
                    )
                arrays.append(read_window(dataset, window))
        for array, path in zip(arrays, (triplet.s2_cloudy, triplet.s1, triplet.s2), strict=True):
            if array.dtype.kind == "f" and np.isnan(array).all():
                raise DSen2CRError(f"{path}: every value is NaN (patch {triplet.patch_id})")
        s2_cloudy, s1, s2 = arrays
        return s1, s2, s2_cloudy


def _flip_rotate(array: np.ndarray, flip: int, turns: int) -> np.ndarray:
    """Flip a (bands, H, W) array (0 none, 1 vertical, 2 horizontal) then rotate it by ``turns`` x 90 degrees."""
    if flip == 1:
        array = array[:, ::-1, :]
    elif flip == 2:
        array = array[:, :, ::-1]
    return np.ascontiguousarray(np.rot90(array, turns, axes=(1, 2)))


#: One calibration input: (S2, S1 or None), a batch of one in model units.
CalibrationBatch = tuple[np.ndarray, np.ndarray | None]


def calibration_batches(triplets: list[Triplet], patches: int = 16, crop_size: int = 128) -> Iterable[CalibrationBatch]:
    """``patches`` calibration inputs (batch of one, model units): a ``crop_size`` window (or the whole patch,
    if smaller) of each triplet in turn, windows drawn with a fixed seed. Each iteration reads them again
    (the same crops), so that quantisation can go over them twice without keeping them."""
    return _CalibrationCrops(triplets, patches, crop_size)


class _CalibrationCrops:
    """The crops of :func:`calibration_batches`, read from their files on each iteration."""

    def __init__(self, triplets: list[Triplet], patches: int, crop_size: int) -> None:
        self.triplets, self.patches, self.crop_size = triplets, patches, crop_size

    def __iter__(self) -> Iterator[CalibrationBatch]:
        import rasterio

        with rasterio.open(self.triplets[0].s2_cloudy) as first:
            crop_size = min(self.crop_size, first.height, first.width)
        repeats = -(-self.patches // len(self.triplets))
        dataset = SEN12MSCRDataset(
            self.triplets, train=True, crop_size=crop_size, augment=False, repeats=repeats, seed=0
        )
        for index in range(self.patches):
            sample = dataset[index]
            yield sample["s2_cloudy"][None].numpy(), sample["s1"][None].numpy()


def collate_by_size(samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Stack the samples of a batch, one stack per patch size, in the order the sizes first come (the whole patches
    of a dataset of mixed sizes, your own data, run as smaller batches; one stack where all share a size)."""
    by_size: dict[tuple[int, ...], list[dict[str, Any]]] = {}
    for sample in samples:
        by_size.setdefault(tuple(sample["s2_cloudy"].shape[1:]), []).append(sample)
    return [default_collate(group) for group in by_size.values()]
