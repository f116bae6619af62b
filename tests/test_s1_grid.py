"""S1 on the scene's pixel lattice (one CRS and pixel size, origins a whole number of pixels apart: RTC frames of
the scene's UTM zone, an export on its grid but of another extent) is read as it is, a window shifted, not warped:
checked against the arrays written, and against GDAL's warp (bilinear at pixel centres) that read it before."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from rasterio.crs import CRS
from rasterio.transform import from_origin
from rasterio.windows import Window

from dsen2cr.inputs.readers import Grid, grid_offset
from dsen2cr.inputs.s1 import S1Source
from dsen2cr.outputs.geotiff import write_geotiff

UTM32N = CRS.from_epsg(32632)
SCENE = Grid(crs=UTM32N, transform=from_origin(500000, 5000000, 10, 10), width=50, height=40)


def _s1(path: Path, left: float, top: float, width: int, height: int, *, nodata: float | None = None) -> np.ndarray:
    """S1 dB (VV above VH) of ``width`` x ``height`` px at 10 m whose top-left corner is (``left``, ``top``)."""
    db = np.random.default_rng(width * height).uniform(-25, -5, size=(2, height, width)).astype(np.float32)
    db[1] -= 6
    write_geotiff(path, db, crs=UTM32N, transform=from_origin(left, top, 10, 10), nodata=nodata)
    return db


def _read(path: Path, window: Window) -> np.ndarray:
    s1 = S1Source(str(path), SCENE)
    try:
        return s1.read(window)
    finally:
        s1.close()


def test_s1_larger_than_the_scene_is_its_window_shifted(tmp_path: Path) -> None:
    db = _s1(tmp_path / "s1.tif", 500000 - 70, 5000000 + 30, 70, 60)  # 7 columns west, 3 rows north of the scene
    got = _read(tmp_path / "s1.tif", Window(5, 4, 30, 20))
    assert np.array_equal(got, db[:, 3 + 4 : 3 + 24, 7 + 5 : 7 + 35])


def test_s1_over_part_of_the_scene_is_no_data_beyond_its_edges(tmp_path: Path) -> None:
    db = _s1(tmp_path / "s1.tif", 500000 + 200, 5000000 - 100, 40, 20)  # from column 20, row 10: to column 59
    db[:, :, :3] = 0  # an export's fill where it declares no nodata value: no data
    filled = write_geotiff(
        tmp_path / "s1_fill.tif", db, crs=UTM32N, transform=from_origin(500000 + 200, 5000000 - 100, 10, 10)
    )
    got = _read(filled, Window(0, 0, 50, 40))
    expected = np.full((2, 40, 50), np.nan, np.float32)
    expected[:, 10:30, 23:50] = db[:, :, 3:30]
    assert np.array_equal(got, expected, equal_nan=True)


def test_the_same_pixels_as_the_warp_gave(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """GDAL's bilinear warp onto a lattice the file lies on gives its pixels as they are, where it has data all round;
    the read without it gives the same there (and no data beyond S1's edges, as the warp does)."""
    _s1(tmp_path / "s1.tif", 500000 + 100, 5000000 + 50, 45, 60, nodata=-9999.0)
    window = Window(0, 0, 50, 40)
    shifted = _read(tmp_path / "s1.tif", window)
    monkeypatch.setattr("dsen2cr.inputs.s1.grid_offset", lambda src, grid: None)  # as every such S1 was read
    warped = _read(tmp_path / "s1.tif", window)
    inside = np.isfinite(warped)
    assert np.array_equal(np.isfinite(shifted), inside)
    assert inside[:, :, 10:].all() and not inside[:, :, :10].any()
    np.testing.assert_allclose(shifted[inside], warped[inside], rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    ("transform", "crs", "expected"),
    [
        (from_origin(500000 - 70, 5000000 + 30, 10, 10), UTM32N, (7, 3)),
        (from_origin(500000 + 0.5, 5000000, 10, 10), UTM32N, None),  # half a metre: off the lattice
        (from_origin(500000 - 70, 5000000 + 30, 20, 20), UTM32N, None),  # 20 m pixels
        (from_origin(500000 - 70, 5000000 + 30, 10, 10), CRS.from_epsg(32633), None),  # another zone
        (from_origin(500000 - 70 + 1e-8, 5000000 + 30, 10, 10), UTM32N, (7, 3)),  # float noise of a product's origin
    ],
)
def test_grid_offset(transform: object, crs: CRS, expected: tuple[int, int] | None) -> None:
    class Raster:
        pass

    raster = Raster()
    raster.transform, raster.crs = transform, crs  # type: ignore[attr-defined]
    assert grid_offset(raster, SCENE) == expected  # type: ignore[arg-type]
