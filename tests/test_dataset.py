"""The triplet Dataset: preprocessing, common crop windows, joint augmentation, seeding, bad files."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterio.crs import CRS
from rasterio.transform import from_origin
from torch.utils.data import DataLoader

from dsen2cr.cloud_detection import cloud_shadow_mask
from dsen2cr.data.dataset import SAMPLE_KEYS, SEN12MSCRDataset
from dsen2cr.data.layout import Triplet, read_file_list
from dsen2cr.errors import DSen2CRError
from dsen2cr.outputs.geotiff import write_geotiff

UTM32N = CRS.from_epsg(32632)


def _read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read()


def test_eval_sample_is_the_full_patch_preprocessed(synthetic_tree: Path) -> None:
    triplets = read_file_list(synthetic_tree / "files.csv", synthetic_tree)
    sample = SEN12MSCRDataset(triplets, train=False)[0]
    assert set(sample) == set(SAMPLE_KEYS)
    t = triplets[0]
    s1, s2, cloudy = _read(t.s1).astype(np.float64), _read(t.s2).astype(np.float64), _read(t.s2_cloudy)
    # by hand: S2 clip [0, 10000] / 2000; VV (x + 25) / 25 * 2, VH (x + 32.5) / 32.5 * 2 after clipping
    np.testing.assert_allclose(sample["s2"].numpy(), np.clip(s2, 0, 10000) / 2000, rtol=1e-6)
    vv = (np.clip(s1[0], -25, 0) + 25) / 25 * 2
    vh = (np.clip(s1[1], -32.5, 0) + 32.5) / 32.5 * 2
    np.testing.assert_allclose(sample["s1"].numpy(), np.stack([vv, vh]), atol=1e-5)
    np.testing.assert_array_equal(sample["cloud_mask"].numpy(), cloud_shadow_mask(cloudy))
    assert sample["s2_cloudy"].shape == (13, 96, 96) and sample["s2_cloudy"].dtype == torch.float32
    assert sample["patch_id"] == t.patch_id


def _linked_triplet(root: Path) -> Triplet:
    """A triplet whose three rasters are functions of one field, so joint transforms can be checked."""
    rng = np.random.default_rng(0)
    field = rng.integers(1, 5000, size=(40, 40)).astype(np.uint16)
    s2 = np.repeat(field[None], 13, axis=0)
    s1 = np.stack([field / -200.0, field / -200.0 - 1]).astype(np.float32)  # within the clip ranges
    paths = []
    for name, array in (("s1", s1), ("s2", s2), ("s2_cloudy", s2 + 7)):
        paths.append(root / f"ROIs1158_spring_{name}_1_p0.tif")
        write_geotiff(paths[-1], array, crs=UTM32N, transform=from_origin(0, 0, 10, 10))
    return Triplet("ROIs1158_spring_1_p0", "ROIs1158_spring/1", *paths)


def test_training_crop_and_augmentation_are_joint(tmp_path: Path) -> None:
    triplet = _linked_triplet(tmp_path)
    dataset = SEN12MSCRDataset([triplet], train=True, crop_size=16, augment=True, seed=5)
    full = _read(triplet.s2)[0].astype(np.float64)
    seen_orientations = set()
    for epoch in range(12):
        dataset.set_epoch(epoch)
        sample = dataset[0]
        s2 = sample["s2"].numpy() * 2000
        assert s2.shape == (13, 16, 16)
        np.testing.assert_allclose(sample["s2_cloudy"].numpy() * 2000, s2 + 7, atol=1e-3)
        np.testing.assert_allclose((2 - sample["s1"][0].numpy()) / 2 * 25 * 200, s2[0], atol=0.05)
        # the crop is one of the 8 flips/rotations of a window of the full raster
        found = None
        for k in range(4):
            for flip in (False, True):
                view = np.rot90(s2[0], -k)
                view = view[::-1] if flip else view
                for r in range(40 - 15):
                    for c in range(40 - 15):
                        if np.allclose(full[r : r + 16, c : c + 16], view, atol=1e-3):
                            found = (k, flip)
        assert found is not None
        seen_orientations.add(found)
    assert len(seen_orientations) > 2


def test_samples_depend_only_on_seed_epoch_index(synthetic_tree: Path) -> None:
    triplets = read_file_list(synthetic_tree / "files.csv", synthetic_tree)
    make = lambda seed: SEN12MSCRDataset(triplets, train=True, crop_size=32, seed=seed)  # noqa: E731
    a, b = make(1), make(1)
    torch.testing.assert_close(a[3]["s2"], b[3]["s2"])
    b.set_epoch(1)
    assert not torch.equal(a[3]["s2"], b[3]["s2"])
    assert not torch.equal(a[3]["s2"], make(2)[3]["s2"])

    def batches(workers: int) -> list[torch.Tensor]:
        loader = DataLoader(make(1), batch_size=4, num_workers=workers)
        return [batch["s2_cloudy"] for batch in loader]

    for x, y in zip(batches(0), batches(2), strict=True):
        torch.testing.assert_close(x, y)


def test_missing_file_fails_at_construction(tmp_path: Path, write_release_triplet: Callable[..., Triplet]) -> None:
    triplet = write_release_triplet(tmp_path, "ROIs1158_spring", 1, 0)
    triplet.s2.unlink()
    with pytest.raises(
        DSen2CRError, match=r"ROIs1158_spring_s2_1_p0.tif: s2 file of patch ROIs1158_spring_1_p0 not found"
    ):
        SEN12MSCRDataset([triplet])


def test_empty_dataset_is_an_error() -> None:
    with pytest.raises(DSen2CRError, match="no patches"):
        SEN12MSCRDataset([])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"s1_bands": 3}, r"s1_1_p0.tif: S1 has 3 bands, expected 2"),
        ({"s1_size": 30}, r"s1_1_p0.tif: S1 is 30x30, but its S2 cloudy partner .* is 32x32"),
    ],
)
def test_bad_triplets_name_the_file(
    tmp_path: Path, kwargs: dict, message: str, write_release_triplet: Callable[..., Triplet]
) -> None:
    triplet = write_release_triplet(tmp_path, "ROIs1158_spring", 1, 0, **kwargs)
    with pytest.raises(DSen2CRError, match=message):
        SEN12MSCRDataset([triplet])[0]


def test_truncated_tiff_names_the_file(tmp_path: Path, write_release_triplet: Callable[..., Triplet]) -> None:
    triplet = write_release_triplet(tmp_path, "ROIs1158_spring", 1, 0)
    data = triplet.s2.read_bytes()
    triplet.s2.write_bytes(data[: len(data) // 2])
    with pytest.raises(DSen2CRError, match=r"s2_1_p0.tif: cannot read"):
        SEN12MSCRDataset([triplet])[0]


def test_crop_larger_than_patch(tmp_path: Path, write_release_triplet: Callable[..., Triplet]) -> None:
    triplet = write_release_triplet(tmp_path, "ROIs1158_spring", 1, 0, size=32)
    with pytest.raises(DSen2CRError, match=r"patch is 32x32, smaller than the 64x64 training crop; set data.crop_s"):
        SEN12MSCRDataset([triplet], train=True, crop_size=64)[0]
    with pytest.raises(DSen2CRError, match=r"evaluation window; score full patches with --window 0 \(or a window of"):
        SEN12MSCRDataset([triplet], train=False, window=64)[0]


def test_persistent_workers_follow_the_sampler_epoch(synthetic_tree: Path) -> None:
    """The training loader keeps its workers across epochs; the epoch reaches them with each key."""
    from dsen2cr.config import DataSection, LossSection
    from dsen2cr.training.datamodule import SEN12MSCRDataModule

    data = DataSection(root=str(synthetic_tree), file_list=str(synthetic_tree / "files.csv"), crop_size=32)
    module = SEN12MSCRDataModule(data, LossSection(), batch_size=2, seed=3)
    module.setup("fit")
    loader = module.train_dataloader()
    assert loader.persistent_workers and loader.num_workers == 2
    reference = SEN12MSCRDataset(module.train_set.triplets, train=True, crop_size=32, seed=3)
    served = {}
    for epoch in (0, 1, 0):
        loader.sampler.set_epoch(epoch)
        batches = [batch for batch in loader]
        order = [index for _, index in loader.sampler]
        got = torch.cat([batch["s2_cloudy"] for batch in batches])
        reference.set_epoch(epoch)
        expected = torch.stack([reference[index]["s2_cloudy"] for index in order])
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
        served.setdefault(epoch, got)
        torch.testing.assert_close(got, served[epoch], rtol=0, atol=0)  # epoch 0 again: the same samples
    assert not torch.equal(served[0], served[1])
