"""rasters.read_decimated: a GeoTIFF without overviews read in strips of its blocks gives, pixel for pixel, what
GDAL's own decimated read (nearest) gives; files with overviews and other drivers go to GDAL."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.enums import Resampling
from rasterio.transform import from_origin

from dsen2cr.rasters import read_decimated


@pytest.mark.parametrize(
    ("height", "width", "shape", "layout"),
    [
        (1000, 777, (123, 97), {"tiled": True, "blockxsize": 256, "blockysize": 256}),
        (513, 1030, (500, 41), {}),  # striped: one read per row wanted
        (97, 1203, (1, 499), {"tiled": True, "blockxsize": 128, "blockysize": 128}),
        (600, 600, (600, 600), {"tiled": True, "blockxsize": 256, "blockysize": 256}),  # not decimated at all
    ],
)
def test_strips_read_as_gdal_decimates(tmp_path: Path, height: int, width: int, shape: tuple, layout: dict) -> None:
    rng = np.random.default_rng(height)
    data = rng.uniform(-30, 0, (2, height, width)).astype(np.float32)
    data[:, : height // 3, : width // 5] = np.nan
    path = tmp_path / "s.tif"
    profile = {"driver": "GTiff", "crs": "EPSG:32632", "transform": from_origin(0, 0, 10, 10), "count": 2}
    with rasterio.open(path, "w", width=width, height=height, dtype="float32", **profile, **layout) as dataset:
        dataset.write(data)
    with rasterio.open(path) as dataset:
        np.testing.assert_array_equal(read_decimated(dataset, shape), dataset.read(out_shape=(2, *shape)))


def test_overviews_are_gdals_to_read(tmp_path: Path) -> None:
    path = tmp_path / "o.tif"
    profile = {"driver": "GTiff", "crs": "EPSG:32632", "transform": from_origin(0, 0, 10, 10), "count": 1}
    with rasterio.open(path, "w", width=512, height=512, dtype="uint16", tiled=True, **profile) as dataset:
        dataset.write(np.arange(512 * 512, dtype=np.uint32).reshape(1, 512, 512).astype(np.uint16) % 977)
        dataset.build_overviews([4], Resampling.average)  # averages: not any pixel of the file
    with rasterio.open(path) as dataset:
        from_overview = dataset.read(out_shape=(1, 128, 128))
        assert not np.array_equal(from_overview, dataset.read()[:, 2::4, 2::4])
        np.testing.assert_array_equal(read_decimated(dataset, (128, 128)), from_overview)


def test_a_file_of_one_strip_is_read_in_parts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import dsen2cr.rasters

    monkeypatch.setattr(dsen2cr.rasters, "STRIP_BYTES", 3 * 200 * 2 * 10)  # ten rows at a time
    path = tmp_path / "one.tif"
    profile = {"driver": "GTiff", "crs": "EPSG:32632", "transform": from_origin(0, 0, 10, 10), "count": 3}
    layout = {"tiled": True, "blockxsize": 256, "blockysize": 256}  # one block holds the whole file
    with rasterio.open(path, "w", width=200, height=150, dtype="uint16", **layout, **profile) as dataset:
        dataset.write(np.random.default_rng(1).integers(0, 9999, (3, 150, 200), dtype=np.uint16))
    with rasterio.open(path) as dataset:
        assert dataset.block_shapes[0] == (256, 256)
        np.testing.assert_array_equal(read_decimated(dataset, (37, 51)), dataset.read(out_shape=(3, 37, 51)))
