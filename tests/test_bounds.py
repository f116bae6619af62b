"""``remove-clouds --bounds``: a part of a scene, on the scene's own pixels, equal to the whole scene's run there.

The windows are worked out by hand from the test scene's grid (origin 500000 E, 5000000 N, 10 m pixels, 50 x 40
px on UTM 32N), longitude/latitude bounds with pyproj on densely sampled edges; the pixels are compared with the
whole scene's output read with rasterio."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pytest
import rasterio
from pyproj import Transformer
from rasterio.windows import Window

import dsen2cr
from dsen2cr.bounds import Bounds
from dsen2cr.cli import main
from dsen2cr.errors import DSen2CRError
from dsen2cr.inputs.area import area_window
from dsen2cr.inputs.readers import Grid
from dsen2cr.scene.tiles import plan_area_tiles
from dsen2cr.settings import SceneSettings

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

WEST, NORTH = 500000.0, 5000000.0  # the test scene's corner (conftest.SCENE_ORIGIN)
GRID = Grid(rasterio.crs.CRS.from_epsg(32632), rasterio.Affine(10, 0, WEST, 0, -10, NORTH), 50, 40)
GRID_BOUNDS = (WEST + 100, NORTH - 300, WEST + 300, NORTH - 100)  # columns 10-29, rows 10-29


def _window(*bounds: float, crs: str | None = None) -> tuple[int, int, int, int]:
    window = area_window(GRID, SceneSettings(bounds=bounds, bounds_crs=crs).area, "s2.tif")
    return window.col_off, window.row_off, window.width, window.height


def test_window_of_bounds_by_hand() -> None:
    # edges on pixel edges: exactly those pixels (columns 15-34, rows 12-27)
    assert _window(WEST + 150, NORTH - 280, WEST + 350, NORTH - 120) == (15, 12, 20, 16)
    # edges inside pixels: every pixel they touch (columns 15.3 -> 15 to 34.7 -> 34, rows 12.2 -> 12 to 27.5 -> 27)
    assert _window(WEST + 153, NORTH - 275, WEST + 347, NORTH - 122) == (15, 12, 20, 16)
    # less than a pixel: that pixel
    assert _window(WEST + 101, NORTH - 19, WEST + 102, NORTH - 18) == (10, 1, 1, 1)
    # a floating-point hair beyond an edge takes no extra pixel
    assert _window(WEST + 150 - 1e-9, NORTH - 280, WEST + 350 + 1e-9, NORTH - 120) == (15, 12, 20, 16)


def test_bounds_beyond_the_scene_are_clipped_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        assert _window(WEST - 1000, NORTH - 100, WEST + 50, NORTH + 1000) == (0, 0, 5, 10)
    assert "reach beyond the scene: clipped to the 5 x 10 px inside it" in caplog.text
    with pytest.raises(DSen2CRError, match=r"s2.tif: --bounds .* lie outside the scene, which covers 500000 4999600"):
        _window(WEST + 600, NORTH - 100, WEST + 700, NORTH)  # east of it
    with pytest.raises(DSen2CRError, match="outside the scene"):
        _window(WEST + 500, NORTH - 100, WEST + 700, NORTH)  # touching its east edge only


def test_longitude_latitude_bounds_against_pyproj() -> None:
    to_lonlat = Transformer.from_crs(32632, 4326, always_xy=True)
    left, top = to_lonlat.transform(WEST + 123, NORTH - 57)
    right, bottom = to_lonlat.transform(WEST + 377, NORTH - 311)
    # expected: the pixels under the lon/lat rectangle, its edges sampled densely and taken to UTM by pyproj
    to_utm = Transformer.from_crs(4326, 32632, always_xy=True)
    t = np.linspace(0, 1, 2001)
    lons = np.concatenate(
        [left + (right - left) * t, np.full_like(t, right), right - (right - left) * t, np.full_like(t, left)]
    )
    lats = np.concatenate(
        [np.full_like(t, top), top - (top - bottom) * t, np.full_like(t, bottom), bottom + (top - bottom) * t]
    )
    xs, ys = to_utm.transform(lons, lats)
    col0, col1 = math.floor((xs.min() - WEST) / 10), math.ceil((xs.max() - WEST) / 10)
    row0, row1 = math.floor((NORTH - ys.max()) / 10), math.ceil((NORTH - ys.min()) / 10)
    assert _window(left, bottom, right, top, crs="EPSG:4326") == (col0, row0, col1 - col0, row1 - row0)
    assert (col0, row0) in {(12, 5), (11, 5), (12, 4), (11, 4)}  # the rectangle is rotated a little on UTM


@pytest.mark.parametrize(
    ("height", "width", "area", "tile", "overlap"),
    [
        (40, 50, Window(15, 12, 20, 16), 32, 20),  # inside, two windows a side
        (40, 50, Window(0, 0, 50, 40), 32, 20),  # the whole scene
        (40, 50, Window(0, 30, 7, 10), 16, 6),  # a corner: windows aligned with two scene edges
        (300, 200, Window(37, 101, 120, 150), 48, 20),
        (300, 200, Window(5, 5, 1, 1), 16, 8),  # one pixel
    ],
)
def test_area_tiles_cover_the_area_once_with_context(
    height: int, width: int, area: Window, tile: int, overlap: int
) -> None:
    tiles = plan_area_tiles(height, width, area, tile, overlap)
    covered = np.zeros((height, width), int)
    for t in tiles:
        w, c = t.window, t.core
        assert w.col_off >= 0 and w.col_off + w.width <= width and w.row_off >= 0 and w.row_off + w.height <= height
        assert (w.width, w.height) == (tiles[0].window.width, tiles[0].window.height)  # one shape for all
        covered[c.row_off : c.row_off + c.height, c.col_off : c.col_off + c.width] += 1
        # every core pixel has half the overlap of context on each side, or lies on the scene's edge there
        half = overlap // 2
        assert c.col_off - w.col_off >= half or w.col_off == 0
        assert c.row_off - w.row_off >= half or w.row_off == 0
        assert (w.col_off + w.width) - (c.col_off + c.width) >= half or w.col_off + w.width == width
        assert (w.row_off + w.height) - (c.row_off + c.height) >= half or w.row_off + w.height == height
        # its place in the output: the core less the area's corner
        assert (t.out.col_off, t.out.row_off) == (c.col_off - area.col_off, c.row_off - area.row_off)
        assert (t.out.width, t.out.height) == (c.width, c.height)
    expected = np.zeros((height, width), int)
    expected[area.row_off : area.row_off + area.height, area.col_off : area.col_off + area.width] = 1
    np.testing.assert_array_equal(covered, expected)


def _run(workdir: Path, out: str, *extra: str) -> list[str]:
    s2, _ = workdir.scene()
    weights = workdir.weights("dsen2cr-small-nosar")
    args = ["remove-clouds", "--weights", str(weights), "--s2", str(s2), "--out", str(workdir / out)]
    return [*args, "--backend", "eager", "--tile", "32", "--no-progress", *extra]


def test_part_equals_the_whole_scene_run(workdir: Path) -> None:
    assert main(_run(workdir, "whole.tif", "--mask-out", str(workdir / "whole_mask.tif"))) == 0
    bounds = ["--bounds", str(WEST + 153), str(NORTH - 275), str(WEST + 347), str(NORTH - 122)]
    part = ["--mask-out", str(workdir / "part_mask.tif"), "--preview", str(workdir / "part.png"), *bounds]
    assert main(_run(workdir, "part.tif", *part)) == 0
    window = Window(15, 12, 20, 16)  # by hand above
    with rasterio.open(workdir / "part.tif") as part_image, rasterio.open(workdir / "whole.tif") as whole:
        assert part_image.crs == whole.crs
        assert part_image.transform == rasterio.Affine(10, 0, WEST + 150, 0, -10, NORTH - 120)
        assert (part_image.width, part_image.height) == (20, 16)
        got, expected = part_image.read().astype(int), whole.read(window=window).astype(int)
        tags = part_image.tags()
        assert tags["DSEN2CR_AREA"] == "columns 15-34, rows 12-27 of the scene's 50 x 40 px"
        assert tags["DSEN2CR_BOUNDS"] == "500153 4999725 500347 4999878"
        assert whole.tags()["DSEN2CR_AREA"] == "whole scene"
    # equal to the whole scene's run (a different tiling: at most a rounding step apart, nearly all identical)
    assert np.abs(got - expected).max() <= 1
    assert np.mean(got != expected) < 0.01
    with rasterio.open(workdir / "part_mask.tif") as part_mask, rasterio.open(workdir / "whole_mask.tif") as mask:
        np.testing.assert_array_equal(part_mask.read(), mask.read(window=window))
    assert (workdir / "part.png").stat().st_size > 0


def test_skip_existing_compares_the_area(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    bounds = ["--bounds", str(WEST + 100), str(NORTH - 200), str(WEST + 300), str(NORTH)]
    assert main(_run(workdir, "part.tif", *bounds)) == 0
    made = (workdir / "part.tif").stat().st_mtime_ns
    assert main(_run(workdir, "part.tif", *bounds, "--skip-existing")) == 0
    assert (workdir / "part.tif").stat().st_mtime_ns == made  # skipped
    capsys.readouterr()
    assert main(_run(workdir, "part.tif", "--skip-existing")) == 2  # the whole scene asked for: made otherwise
    err = capsys.readouterr().err
    assert "made with area columns 10-29, rows 0-19 of the scene's 50 x 40 px, this run's is whole scene" in err
    assert (workdir / "part.tif").stat().st_mtime_ns == made


def test_arrays_refuse_bounds(workdir: Path) -> None:
    predictor = dsen2cr.load_predictor(str(workdir.weights("dsen2cr-small-nosar")), device="cpu")
    settings = SceneSettings(bounds=(WEST, NORTH - 100, WEST + 100, NORTH))
    s2 = np.full((13, 40, 50), 1000, np.uint16)
    with pytest.raises(DSen2CRError, match="bounds: remove_clouds_array returns the arrays' whole grid"):
        dsen2cr.remove_clouds_array(predictor, s2, None, settings=settings, crs=GRID.crs, transform=GRID.transform)


def test_s1_scene_mean_only_when_s1_has_holes(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """S1's scene mean fills its holes: S1 without holes is not read whole for it (a pass over all of S1 before the
    first window: some 11 s for a full tile here); with holes it is the mean of S1 under the scene, as numpy
    gives it."""
    import dsen2cr.scene.sources as sources  # where the scene's inputs are opened and the fill is set up

    passes = []
    mean = sources.s1_scene_mean
    monkeypatch.setattr(sources, "s1_scene_mean", lambda *args, **kw: passes.append(1) or mean(*args, **kw))
    s2, s1 = workdir.scene()
    weights = str(workdir.weights("dsen2cr-small"))
    base = ["remove-clouds", "--weights", weights, "--s2", str(s2), "--backend", "eager", "--no-progress"]
    assert main([*base, "--s1", str(s1), "--out", str(workdir / "a.tif"), "--bounds", *map(str, GRID_BOUNDS)]) == 0
    assert passes == []
    with rasterio.open(s1) as source:
        db = source.read()
        db[:, :, :10] = np.nan  # holes in the west, under valid S2
        holes = workdir / "holes.tif"
        with rasterio.open(holes, "w", **source.profile) as target:
            target.write(db)
    assert main([*base, "--s1", str(holes), "--out", str(workdir / "b.tif")]) == 0
    assert passes == [1]
    vv, vh = np.nanmean(db.astype(np.float64), axis=(1, 2))
    with rasterio.open(workdir / "b.tif") as out:
        assert out.tags()["DSEN2CR_S1_FILLED"] == (
            f"20.0% of the valid pixels, with the scene's mean (VV {vv:.1f} dB, VH {vh:.1f} dB)"
        )


def test_a_manifest_row_has_its_own_bounds(workdir: Path) -> None:
    """A manifest's bounds column (in its bounds_crs, or the scene's CRS) holds for its row; a row without takes the
    run's --bounds; each output records its part."""
    workdir.scene()  # s2.tif
    to_lonlat = Transformer.from_crs(32632, 4326, always_xy=True)
    (left, top), (right, bottom) = (to_lonlat.transform(WEST + x, NORTH - y) for x, y in ((105, 105), (295, 295)))
    (workdir / "scenes.csv").write_text(
        "s2,out,bounds,bounds_crs\n"
        f"s2.tif,a.tif,{WEST + 100} {NORTH - 200} {WEST + 300} {NORTH},\n"
        f"s2.tif,b.tif,{left} {bottom} {right} {top},EPSG:4326\n"
        "s2.tif,c.tif,,\n"
    )
    weights = str(workdir.weights("dsen2cr-small-nosar"))
    argv = ["remove-clouds", "--weights", weights, "--manifest", str(workdir / "scenes.csv"), "--no-progress"]
    assert main([*argv, "--bounds", str(WEST), str(NORTH - 100), str(WEST + 100), str(NORTH)]) == 0
    areas = {}
    for name in "abc":
        with rasterio.open(workdir / f"{name}.tif") as out:
            areas[name] = (out.tags()["DSEN2CR_AREA"], out.tags()["DSEN2CR_BOUNDS"])
    assert areas["a"] == ("columns 10-29, rows 0-19 of the scene's 50 x 40 px", "500100 4999800 500300 5000000")
    assert areas["b"][0] == "columns 10-29, rows 10-29 of the scene's 50 x 40 px"  # 105..295 m: pixels 10 to 29
    assert areas["b"][1].endswith("(EPSG:4326)")
    assert areas["c"] == ("columns 0-9, rows 0-9 of the scene's 50 x 40 px", "500000 4999900 500100 5000000")


def test_bounds_are_checked_however_made() -> None:
    """A job's Bounds made in Python are checked as --bounds are: swapped edges, latitudes beyond 90."""
    from dsen2cr.bounds import Bounds
    from dsen2cr.settings import SceneJob

    with pytest.raises(DSen2CRError, match="left < right and bottom < top, got 500300 4999700 500100 4999900"):
        SceneJob("s2.tif", None, Path("o.tif"), bounds=Bounds(500300, 4999700, 500100, 4999900))
    with pytest.raises(DSen2CRError, match="9 45 10 95 are no longitudes and latitudes of EPSG:4326"):
        Bounds(9, 45, 10, 95, crs="EPSG:4326")


def test_longitudes_across_the_antimeridian() -> None:
    """A scene of UTM zone 60 S astride 180°: longitude bounds across it (left > right, as STAC boxes and the
    scene's own extent in refusals say it) take the pixels on both sides, as 180.005 for -179.995 does; pyproj
    gives the expected columns."""
    to_utm = Transformer.from_crs("EPSG:4326", "EPSG:32760", always_xy=True)
    x180, y = to_utm.transform(180.0, -17.6)
    west, north = round(x180) - 1000, round(y) + 1000
    grid = Grid(rasterio.crs.CRS.from_epsg(32760), rasterio.Affine(10, 0, west, 0, -10, north), 200, 200)
    across = SceneSettings(bounds=(179.995, -17.605, -179.995, -17.600), bounds_crs="EPSG:4326").area
    unwrapped = SceneSettings(bounds=(179.995, -17.605, 180.005, -17.600), bounds_crs="EPSG:4326").area
    window = area_window(grid, across, "s2.tif")
    assert window == area_window(grid, unwrapped, "s2.tif")
    xs = [to_utm.transform(lon, lat)[0] for lon in (179.995, -179.995) for lat in (-17.605, -17.6)]
    assert window.col_off == math.floor((min(xs) - west) / 10) and window.width > 100  # both sides of 180°
    assert window.col_off + window.width == math.ceil((max(xs) - west) / 10)
    with pytest.raises(DSen2CRError, match="left < right and bottom < top"):  # in metres, left > right is an error
        Bounds(west + 500, north - 500, west + 100, north - 100)


def _shadowed_scene() -> np.ndarray:
    """A scene whose near-infrared, SWIR and blue grow from west to east, with a very dark corner: the part's own
    statistics call its western third shadow, the scene's (their minimum in the corner) none of it."""
    east = np.tile(np.arange(50), (40, 1)) / 50
    s2 = np.full((13, 40, 50), 1200.0)
    s2[1] = 500 + 400 * east  # B2
    s2[7] = s2[11] = 2000 + 1500 * east  # B8, B11
    s2[:, 0:8, 0:8] = 150
    s2[10] = 20  # B10: a clear sky's cirrus
    return s2.astype(np.uint16)


def test_mask_statistics_of_the_area_are_the_parts_own_pixels(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """``--mask-statistics area``: the shadow thresholds take the part's pixels' statistics (worked out here in
    float64 from the part's DN, the map then made as the paper's detector makes it, with the scene around the part
    as context: 128 shadow pixels, where the scene's statistics give none), the statistics pass reads no block
    beyond the part, the outputs record it, and --skip-existing tells a run with the scene's statistics apart."""
    from scipy import ndimage

    import dsen2cr.scene.masking as masking
    from dsen2cr.cloud_detection import cloud_shadow_mask

    blocks: list[Window] = []
    block_stats = masking._block_stats

    def recorded(s2: object, window: Window, stop: object) -> object:
        blocks.append(window)
        return block_stats(s2, window, stop)  # type: ignore[arg-type]

    monkeypatch.setattr(masking, "_block_stats", recorded)
    s2 = _shadowed_scene()
    scene, _ = workdir.scene(s2=s2)
    weights = workdir.weights("dsen2cr-small-nosar")
    bounds = ["--bounds", str(WEST + 153), str(NORTH - 275), str(WEST + 347), str(NORTH - 122)]
    argv = ["remove-clouds", "--weights", str(weights), "--s2", str(scene), "--tile", "32", "--no-progress", *bounds]
    for name, statistics in (("area", "area"), ("scene", "scene")):
        mask_out = ["--mask-out", str(workdir / f"{name}_mask.tif"), "--mask-statistics", statistics]
        assert main([*argv, "--out", str(workdir / f"{name}.tif"), *mask_out]) == 0
    window = Window(15, 12, 20, 16)  # by hand above
    assert blocks == [window, Window(0, 0, 50, 40)]  # the part alone; then the whole scene
    r = s2.astype(np.float64) / 10000
    csi, blue = (r[7] + r[11]) / 2, r[1]
    part = (slice(12, 28), slice(15, 35))
    t3 = csi[part].min() + 0.75 * (csi[part].mean() - csi[part].min())
    t4 = blue[part].min() + 5 / 6 * (blue[part].mean() - blue[part].min())
    dark = ((csi < t3) & (blue < t4)).astype(int)
    expected = np.where(ndimage.convolve(dark, np.ones((5, 5), int), mode="constant") > 12, 2, 0)
    expected[cloud_shadow_mask(s2) == 1] = 1
    with rasterio.open(workdir / "area_mask.tif") as mask, rasterio.open(workdir / "area.tif") as image:
        np.testing.assert_array_equal(mask.read(1), expected[part])
        assert (mask.read(1) == 2).sum() == 128
        assert mask.tags()["DSEN2CR_MASK_STATISTICS"] == image.tags()["DSEN2CR_MASK_STATISTICS"] == "area"
    with rasterio.open(workdir / "scene_mask.tif") as mask:
        assert (mask.read(1) == 2).sum() == 0 and mask.tags()["DSEN2CR_MASK_STATISTICS"] == "scene"
    capsys.readouterr()
    again = [*argv, "--out", str(workdir / "area.tif"), "--skip-existing"]
    assert main(again) == 2
    assert "made with --mask-statistics area, this run's is scene" in capsys.readouterr().err
