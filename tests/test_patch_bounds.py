"""``data patches --bounds``: the patches of a part of the scenes are those a run without bounds cuts there
(numbers, pixels, georeferencing), so a scene pair splits into ROIs by area; a manifest row's own part; the
overlap warning looks at the ground the patches cover."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import rasterio
from pyproj import Transformer
from rasterio.crs import CRS
from rasterio.transform import from_origin

from dsen2cr.cli import main
from dsen2cr.outputs.geotiff import write_geotiff

UTM33N = CRS.from_epsg(32633)
LEFT, TOP = 400000.0, 5800000.0  # the scenes' top-left corner; 10 m pixels, 100 x 70 px


def _scenes(folder: Path) -> None:
    """A cloudy and a cloud-free 100 x 70 px scene and S1 on one grid, with data everywhere (32 px patches: 3
    columns, 2 rows, numbered row by row; every one is kept)."""
    rng = np.random.default_rng(3)
    cloudy = rng.integers(500, 9000, size=(13, 70, 100)).astype(np.uint16)
    clear = rng.integers(200, 1500, size=(13, 70, 100)).astype(np.uint16)
    clear[10] = rng.integers(5, 40, size=(70, 100))  # a clear sky's cirrus band: no cloud in the target
    s1 = np.stack([rng.uniform(-20, -5, (70, 100)), rng.uniform(-28, -12, (70, 100))]).astype(np.float32)
    for name, array in (("cloudy", cloudy), ("clear", clear), ("s1", s1)):
        write_geotiff(folder / f"{name}.tif", array, crs=UTM33N, transform=from_origin(LEFT, TOP, 10, 10))


def _patches(folder: Path, out: str, *extra: str) -> list[str]:
    scenes = [
        "--s2-cloudy",
        str(folder / "cloudy.tif"),
        "--s2",
        str(folder / "clear.tif"),
        "--s1",
        str(folder / "s1.tif"),
    ]
    return ["data", "patches", *scenes, "--out", str(folder / out), "--size", "32", "--no-progress", *extra]


def _cut(out: Path) -> dict[str, dict[int, tuple[np.ndarray, tuple[float, ...]]]]:
    """Every patch under ``out`` by sensor and number: its pixels and its transform's six numbers."""
    found: dict[str, dict[int, tuple[np.ndarray, tuple[float, ...]]]] = {}
    for path in sorted(out.rglob("*.tif")):
        sensor = path.parent.name.rpartition("_")[0]
        with rasterio.open(path) as patch:
            found.setdefault(sensor, {})[int(path.stem.rpartition("_p")[2])] = (
                patch.read(),
                tuple(patch.transform)[:6],
            )
    return found


def _box(columns: tuple[int, int], rows: tuple[int, int]) -> list[str]:
    """The scene-CRS bounds (LEFT BOTTOM RIGHT TOP) of pixel columns and rows [first, last), worked out by hand."""
    return [str(v) for v in (LEFT + 10 * columns[0], TOP - 10 * rows[1], LEFT + 10 * columns[1], TOP - 10 * rows[0])]


def test_a_part_holds_the_whole_runs_patches_that_lie_wholly_inside_it(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Columns 20-99, rows 0-69: windows 1, 2 (columns 32-95 of row 0) and 4, 5 lie inside, 0 and 3 (columns
    0-31) do not; the four are the whole run's patches of those numbers, pixel for pixel, on the same ground. A
    part touching a patch's pixels without holding it all (columns 33-99) drops it."""
    _scenes(tmp_path)
    assert main([*_patches(tmp_path, "whole"), "--roi", "1"]) == 0
    assert main([*_patches(tmp_path, "part"), "--roi", "1", "--bounds", *_box((20, 100), (0, 70))]) == 0
    out = capsys.readouterr().out
    assert "wrote 6 patches of 32 px, ROI ROIs0_own/1, under" in out  # the whole scene: no part named
    assert "wrote 4 patches of 32 px, ROI ROIs0_own/1 of columns 20-99, rows 0-69 of the scene's 100 x 70 px" in out
    whole, part = _cut(tmp_path / "whole"), _cut(tmp_path / "part")
    assert sorted(whole["s1"]) == [0, 1, 2, 3, 4, 5] and sorted(part["s1"]) == [1, 2, 4, 5]
    for sensor in ("s1", "s2", "s2_cloudy"):
        for number in (1, 2, 4, 5):
            np.testing.assert_array_equal(part[sensor][number][0], whole[sensor][number][0])
            assert part[sensor][number][1] == whole[sensor][number][1]
    assert part["s1"][1][1] == (10.0, 0.0, LEFT + 320, 0.0, -10.0, TOP)  # column 32, row 0: by hand
    assert main([*_patches(tmp_path, "narrower"), "--roi", "1", "--bounds", *_box((33, 100), (0, 70))]) == 0
    assert sorted(_cut(tmp_path / "narrower")["s1"]) == [2, 5]


def test_a_manifest_splits_one_scene_pair_into_rois_by_area(
    tmp_path: Path, capsys: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture
) -> None:
    """Row 2: columns 0-63 in the scenes' CRS (patches 0, 1, 3, 4); row 3: columns 64-99 given in longitude and
    latitude (pyproj's corners of the part; a little wider once back on the grid, still holding only patches 2
    and 5). The parts are apart: no warning. A third row of the whole scene overlaps both: one warning naming
    the three rows."""
    _scenes(tmp_path)
    to_lonlat = Transformer.from_crs(UTM33N, "EPSG:4326", always_xy=True)
    corners = [to_lonlat.transform(LEFT + 10 * c, TOP - 10 * r) for c in (64, 100) for r in (0, 70)]
    lons, lats = zip(*corners, strict=True)
    lonlat = f"{min(lons):.7f} {min(lats):.7f} {max(lons):.7f} {max(lats):.7f}"
    rows = [
        "s2_cloudy,s2,s1,roi,bounds,bounds_crs",
        f"cloudy.tif,clear.tif,s1.tif,1,{' '.join(_box((0, 64), (0, 70)))},",
        f"cloudy.tif,clear.tif,s1.tif,2,{lonlat},EPSG:4326",
    ]
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    command = ["data", "patches", "--manifest", str(tmp_path / "m.csv"), "--size", "32", "--no-progress"]
    with caplog.at_level(logging.WARNING):
        assert main([*command, "--out", str(tmp_path / "split")]) == 0
    assert not [r for r in caplog.records if "overlapping ground" in r.getMessage()]
    split = tmp_path / "split" / "ROIs0_own_s1"
    assert sorted(p.name for p in (split / "s1_1").iterdir()) == [f"ROIs0_own_s1_1_p{n}.tif" for n in (0, 1, 3, 4)]
    assert sorted(p.name for p in (split / "s1_2").iterdir()) == [f"ROIs0_own_s1_2_p{n}.tif" for n in (2, 5)]
    (tmp_path / "m.csv").write_text("\n".join([*rows, "cloudy.tif,clear.tif,s1.tif,3,,"]) + "\n")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert main([*command, "--out", str(tmp_path / "overlapping")]) == 0
    overlapping = [r.getMessage() for r in caplog.records if "overlapping ground" in r.getMessage()]
    assert len(overlapping) == 1 and "rows 2, 3, 4 (ROIs 1, 2, 3)" in overlapping[0]


def test_skip_existing_keeps_a_parts_patches_and_refuses_those_outside_a_new_part(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A part's run goes on with --skip-existing (its patches kept); a run of a smaller part over the same ROI
    refuses the earlier patches it would not cut, naming one."""
    _scenes(tmp_path)
    part = [*_patches(tmp_path, "own"), "--roi", "1", "--bounds", *_box((20, 100), (0, 70))]
    assert main(part) == 0
    capsys.readouterr()
    assert main([*part, "--skip-existing"]) == 0
    assert "wrote 0 patches of 32 px, ROI ROIs0_own/1" in capsys.readouterr().out
    smaller = [*_patches(tmp_path, "own"), "--roi", "1", "--bounds", *_box((64, 100), (0, 70)), "--skip-existing"]
    assert main(smaller) == 2
    assert "_p1.tif: this run cuts no patch of its number (a smaller scene or part" in capsys.readouterr().err
