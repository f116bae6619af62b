"""Overviews made while a scene's windows are written (#27 item 4): nodata-aware 2 x 2 means, the levels GDAL's
COG driver would make, rows computed as soon as the rows above them are complete, and the COG copy using them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import rasterio.shutil
from rasterio.crs import CRS
from rasterio.enums import ColorInterp
from rasterio.transform import from_origin
from rasterio.windows import Window

from dsen2cr.outputs.geotiff import COG_OPTIONS, cog_writer
from dsen2cr.outputs.overviews import OverviewPyramid, average_2x2, mode_2x2, overview_factors

UTM = CRS.from_epsg(32633)


def _mean_by_hand(image: np.ndarray) -> np.ndarray:
    """The nodata(0)-aware 2 x 2 mean of a (bands, h, w) image, in float64 pixel by pixel, rounded half up."""
    bands, height, width = image.shape
    out = np.zeros((bands, -(-height // 2), -(-width // 2)), image.dtype)
    for b in range(bands):
        for i in range(out.shape[1]):
            for j in range(out.shape[2]):
                block = image[b, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2].astype(np.float64)
                valid = block[block != 0]
                out[b, i, j] = np.floor(valid.mean() + 0.5) if valid.size else 0
    return out


def test_average_2x2_is_the_mean_of_the_valid_pixels() -> None:
    """Odd sizes (the last row and column average what they have), nodata left out, all-nodata blocks stay
    nodata, halves rounded up; checked pixel by pixel in float64."""
    rng = np.random.default_rng(0)
    image = rng.integers(1, 10000, (2, 9, 7), dtype=np.uint16)
    image[rng.random(image.shape) < 0.3] = 0
    image[:, :2, :2] = 0
    image[0, 2:4, 0:2] = [[1, 2], [0, 0]]  # mean 1.5: rounds to 2
    got = average_2x2(image, 0)
    np.testing.assert_array_equal(got, _mean_by_hand(image))
    assert got[0, 1, 0] == 2 and (got[:, 0, 0] == 0).all()


@pytest.mark.parametrize("top", [10001, 2**14, 65536])
@pytest.mark.parametrize("missing", [0.0, 0.02, 0.6, 1.0])
def test_average_2x2_of_large_images_is_the_float64_mean(top: int, missing: float) -> None:
    """Reflectance DN (below 2**14, summed in 16 bits) and any uint16 value (summed in 32), with none, some,
    most or all pixels nodata, odd sizes: the mean of each block's valid pixels computed here in float64 and
    rounded half up, nodata where a block has none."""
    rng = np.random.default_rng(top)
    image = rng.integers(1, top, (3, 131, 257), dtype=np.uint16)
    image[rng.random(image.shape) < missing] = 0
    padded = np.zeros((3, 132, 258), np.float64)
    padded[:, :131, :257] = image
    blocks = padded.reshape(3, 66, 2, 129, 2)
    counts = (blocks != 0).sum(axis=(2, 4))
    means = np.floor(blocks.sum(axis=(2, 4)) / np.maximum(counts, 1) + 0.5)
    np.testing.assert_array_equal(average_2x2(image, 0), np.where(counts > 0, means, 0).astype(np.uint16))


def test_average_2x2_of_floats_leaves_out_nodata_and_nan() -> None:
    """A float image (sigma in DN, nodata -1): the plain mean of the valid values of each block, no rounding;
    NaN counts as no data; all-invalid blocks are nodata."""
    image = np.array([[[1.0, 2.0, -1.0], [4.0, np.nan, -1.0], [0.5, 0.25, 7.0]]], np.float32)
    got = average_2x2(image, -1.0)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, np.array([[[7 / 3, -1.0], [0.375, 7.0]]], np.float32))


@pytest.mark.parametrize("shape", [(390, 518), (256, 256), (257, 100), (513, 40), (1100, 40), (40, 2049), (40, 8200)])
def test_overview_factors_are_gdals(tmp_path: Path, shape: tuple[int, int]) -> None:
    """The levels are those GDAL's COG driver makes itself for the same size and 256 px blocks."""
    height, width = shape
    source = tmp_path / "s.tif"
    profile = dict(driver="GTiff", height=height, width=width, count=1, dtype="uint16", crs=UTM)
    with rasterio.open(source, "w", **profile, transform=from_origin(0, 0, 10, 10)) as dataset:
        dataset.write(np.ones((1, height, width), np.uint16))
    rasterio.shutil.copy(source, tmp_path / "c.tif", driver="COG", blocksize=256)
    with rasterio.open(tmp_path / "c.tif") as cog:
        assert overview_factors(height, width, 256) == cog.overviews(1)


def test_level_rows_are_made_as_soon_as_the_rows_above_are_complete(tmp_path: Path) -> None:
    """Windows written row by row: once the top 100 of 300 rows are complete, level 2 has its top 50 rows and
    level 4 its top 25, before the rest is written; at the end every level is the mean of the one above."""
    rng = np.random.default_rng(1)
    image = rng.integers(1, 10000, (3, 300, 700), dtype=np.uint16)
    image[:, 150:170, 300:420] = 0
    profile = dict(driver="GTiff", height=300, width=700, count=3, dtype="uint16", crs=UTM, nodata=0, tiled=True)
    profile.update(transform=from_origin(0, 0, 10, 10), blockxsize=256, blockysize=256)
    with rasterio.open(tmp_path / "i.tif", "w+", **profile) as dataset:
        pyramid = OverviewPyramid(dataset, tmp_path / "i.tif", overview_factors(300, 700, 256), 0)
        assert [level.shape for level in pyramid.levels] == [(150, 350), (75, 175)]
        for col in (0, 350):  # the top 100 rows, in two windows
            dataset.write(image[:, :100, col : col + 350], window=Window(col, 0, 350, 100))
            pyramid.written(Window(col, 0, 350, 100))
        level2 = _mean_by_hand(image[:, :100])
        np.testing.assert_array_equal(pyramid.levels[0].read(window=Window(0, 0, 350, 50)), level2)
        np.testing.assert_array_equal(pyramid.levels[1].read(window=Window(0, 0, 175, 25)), _mean_by_hand(level2))
        assert not pyramid.levels[0].read(window=Window(0, 50, 350, 100)).any()  # not yet
        dataset.write(image[:, 100:], window=Window(0, 100, 700, 200))
        pyramid.written(Window(0, 100, 700, 200))
        pyramid.finish()
    with rasterio.open(pyramid.paths[0]) as two, rasterio.open(pyramid.paths[1]) as four:
        np.testing.assert_array_equal(two.read(), _mean_by_hand(image))
        np.testing.assert_array_equal(four.read(), _mean_by_hand(_mean_by_hand(image)))
        assert two.transform == from_origin(0, 0, 20, 20) and four.transform == from_origin(0, 0, 40, 40)
    pyramid.remove()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["i.tif"]


def test_the_cog_carries_these_overviews_and_its_metadata(tmp_path: Path) -> None:
    """cog_writer(overviews="average"): a COG whose overviews are the pyramid's (not GDAL's cubic ones),
    with the image's pixels, georeferencing, band descriptions and tags, and no temporary file left; a
    failure mid-write leaves nothing at all."""
    rng = np.random.default_rng(2)
    image = rng.integers(1, 10000, (2, 390, 518), dtype=np.uint16)
    image[:, :40] = 0
    transform = from_origin(500000, 5000000, 10, 10)
    profile = dict(height=390, width=518, count=2, dtype="uint16", crs=UTM, transform=transform, nodata=0)
    out = tmp_path / "out.tif"
    with cog_writer(out, profile, COG_OPTIONS, overviews="average") as dataset:
        dataset.set_band_description(1, "B2")
        dataset.update_tags(DSEN2CR_MODEL="m")
        dataset.scales, dataset.offsets = [1e-4, 1e-4], [0.0, 0.0]  # properties set, not only methods called
        dataset.colorinterp = [ColorInterp.red, ColorInterp.green]
        for row in range(0, 390, 130):
            dataset.write(image[:, row : row + 130], window=Window(0, row, 518, 130))
    with rasterio.open(out) as cog:
        assert cog.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG" and cog.overviews(1) == [2, 4]
        assert (cog.crs, cog.transform, cog.nodata, cog.descriptions[0]) == (UTM, transform, 0, "B2")
        assert cog.tags()["DSEN2CR_MODEL"] == "m" and cog.scales == (1e-4, 1e-4)
        assert cog.colorinterp == (ColorInterp.red, ColorInterp.green)
        np.testing.assert_array_equal(cog.read(), image)
        np.testing.assert_array_equal(cog.read(out_shape=(2, 195, 259)), _mean_by_hand(image))
        np.testing.assert_array_equal(cog.read(out_shape=(2, 98, 130)), _mean_by_hand(_mean_by_hand(image)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.tif"]

    with (
        pytest.raises(RuntimeError, match="stop"),
        cog_writer(tmp_path / "failed.tif", profile, COG_OPTIONS, overviews="average") as dataset,
    ):
        dataset.write(image[:, :200], window=Window(0, 0, 518, 200))
        raise RuntimeError("stop")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.tif"]


def _mode_by_hand(image: np.ndarray, nodata: int) -> np.ndarray:
    """GDAL's MODE rule block by block: the block read row by row, the value whose count first exceeds the
    highest count so far wins; nodata left out."""
    bands, height, width = image.shape
    out = np.full((bands, -(-height // 2), -(-width // 2)), nodata, image.dtype)
    for b in range(bands):
        for i in range(out.shape[1]):
            for j in range(out.shape[2]):
                counts: dict[int, int] = {}
                best, winner = 0, nodata
                for value in image[b, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2].ravel().tolist():
                    if value != nodata:
                        counts[value] = counts.get(value, 0) + 1
                        if counts[value] > best:
                            best, winner = counts[value], value
                out[b, i, j] = winner
    return out


def test_mode_2x2_is_the_most_common_class_with_gdals_ties() -> None:
    """Every tie pattern of a 2 x 2 block (2-2, 1-1-1-1, with nodata), odd sizes, against the rule by hand and
    against GDAL's own MODE overview of an even-sized map."""
    rng = np.random.default_rng(8)
    classes = np.array([0, 1, 2, 255], np.uint8)
    image = rng.choice(classes, size=(1, 61, 47), p=[0.35, 0.3, 0.2, 0.15])
    image[:, :8] = 255
    np.testing.assert_array_equal(mode_2x2(image, 255), _mode_by_hand(image, 255))
    assert mode_2x2(np.array([[[1, 2], [2, 1]]], np.uint8), 255)[0, 0, 0] == 2  # 2 reaches two counts first
    assert mode_2x2(np.array([[[1, 2], [1, 2]]], np.uint8), 255)[0, 0, 0] == 1
    even = image[:, :60, :46]
    profile = dict(driver="GTiff", height=60, width=46, count=1, dtype="uint8", nodata=255)
    with rasterio.MemoryFile() as memory:
        with memory.open(**profile, crs=UTM, transform=from_origin(0, 0, 10, 10)) as dataset:
            dataset.write(even)
            dataset.build_overviews([2], rasterio.enums.Resampling.mode)
        with memory.open(overview_level=0) as level:
            np.testing.assert_array_equal(mode_2x2(even, 255), level.read())
