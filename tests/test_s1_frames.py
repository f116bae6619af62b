"""S1 frames of one pass joined with ``+`` (``--s1 west.tif+east.tif``): read as one S1, each frame where those
before it have no data; the result checked against the S1 the frames were cut from, pixel for pixel, and against
frames on another CRS read alone."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.crs import CRS
from rasterio.transform import from_origin
from rasterio.warp import Resampling, calculate_default_transform, reproject, transform_bounds
from rasterio.windows import Window

from conftest import write_s1_item
from dsen2cr.cli import main
from dsen2cr.errors import DSen2CRError
from dsen2cr.inputs import map_s1_files, s1_frames, s1_parts
from dsen2cr.inputs.readers import S2Source
from dsen2cr.inputs.s1 import S1Source
from dsen2cr.inputs.s1_time import s1_facts
from dsen2cr.outputs.geotiff import write_geotiff

UTM32N = CRS.from_epsg(32632)
ORIGIN = from_origin(500000, 5000000, 10, 10)
S2_NAME = "T32TPT_20230610T101559_10m.tif"  # sensed 2023-06-10 10:15:59 UTC
WEST, EAST = "S1A_IW_GRDH_1SDV_20230608T051234_x_db.tif", "S1A_IW_GRDH_1SDV_20230608T051259_x_db.tif"


def _s2(folder: Path) -> Path:
    dn = np.random.default_rng(1).integers(200, 3000, size=(13, 40, 50)).astype(np.uint16)
    return write_geotiff(folder / S2_NAME, dn, crs=UTM32N, transform=ORIGIN)


def _whole_s1() -> np.ndarray:
    db = np.random.default_rng(2).uniform(-25, -5, size=(2, 40, 50)).astype(np.float32)
    db[1] -= 6  # VH below VV
    return db


def _frames(folder: Path, fill: float = np.nan) -> tuple[Path, Path]:
    """Two frames of the whole S1, on the scene's grid: the west one holds columns 0-29, the east one (sensed 25 s
    later) columns 24-49; ``fill`` where each has no data (0: as exports that declare no nodata value fill)."""
    whole = _whole_s1()
    west, east = whole.copy(), whole.copy()
    west[:, :, 30:] = fill
    east[:, :, :24] = fill
    return (
        write_geotiff(folder / WEST, west, crs=UTM32N, transform=ORIGIN),
        write_geotiff(folder / EAST, east, crs=UTM32N, transform=ORIGIN),
    )


def _remove(folder: Path, s1: str, out: str, weights: Path) -> list[str]:
    s2 = str(folder / S2_NAME)
    return ["remove-clouds", "--weights", str(weights), "--s2", s2, "--s1", s1, "--out", str(folder / out), "-q"]


@pytest.mark.parametrize("fill", [np.nan, 0.0])
def test_frames_give_the_image_of_the_s1_they_were_cut_from(workdir: Path, fill: float) -> None:
    _s2(workdir)
    whole = write_geotiff(
        workdir / "S1A_IW_GRDH_1SDV_20230608T051234_whole_db.tif", _whole_s1(), crs=UTM32N, transform=ORIGIN
    )
    west, east = _frames(workdir, fill)
    weights = workdir.weights("dsen2cr-small")
    assert main(_remove(workdir, str(whole), "whole.tif", weights)) == 0
    assert main(_remove(workdir, f"{east}+{west}", "frames.tif", weights)) == 0  # in any order: they do not overlap
    with rasterio.open(workdir / "whole.tif") as a, rasterio.open(workdir / "frames.tif") as b:
        assert np.array_equal(a.read(), b.read())
        tags = b.tags()
    assert tags["DSEN2CR_S1"] == f"{EAST}+{WEST}"  # the names as given, never the folders
    assert tags["DSEN2CR_S1_SENSING_TIME"] == "2023-06-08T05:12:34Z"  # the pass's start: the earlier frame's
    assert tags["DSEN2CR_S1_DAYS_FROM_S2"] == "-2.21"  # 2 days 5 h 3 min 25 s before S2


def test_where_frames_overlap_the_first_given_counts(workdir: Path) -> None:
    scene = S2Source(_s2(workdir))
    west, east = _frames(workdir)
    with rasterio.open(east, "r+") as dataset:  # the east frame says other values where both hold data
        data = dataset.read()
        data[:, :, 24:30] -= 1.5
        dataset.write(data)
    whole, window = _whole_s1(), Window(0, 0, 50, 40)
    for first, second in ((west, east), (east, west)):
        s1 = S1Source(f"{first}+{second}", scene.grid)
        got = s1.read(window)
        s1.close()
        expected = whole.copy()
        expected[:, :, 30:] = data[:, :, 30:]
        if first == east:
            expected[:, :, 24:] = data[:, :, 24:]
        assert np.array_equal(got, expected)
    scene.close()


def test_a_frame_on_another_crs_fills_what_the_first_lacks(workdir: Path) -> None:
    """The east frame in longitude/latitude (warped by rasterio): read where the west frame has no data, as it
    reads alone (warped onto the scene's grid); the west frame's pixels as they are."""
    scene = S2Source(_s2(workdir))
    west, east = _frames(workdir)
    with rasterio.open(east) as src:
        transform, width, height = calculate_default_transform(src.crs, "EPSG:4326", src.width, src.height, *src.bounds)
        lonlat = np.full((2, height, width), np.nan, np.float32)
        reproject(
            src.read(),
            lonlat,
            src_transform=src.transform,
            src_crs=src.crs,
            dst_transform=transform,
            dst_crs="EPSG:4326",
            resampling=Resampling.nearest,
            src_nodata=np.nan,
            dst_nodata=np.nan,
        )
    east_lonlat = write_geotiff(workdir / f"lonlat_{EAST}", lonlat, crs=CRS.from_epsg(4326), transform=transform)
    window = Window(0, 0, 50, 40)
    joined, alone = S1Source(f"{west}+{east_lonlat}", scene.grid), S1Source(str(east_lonlat), scene.grid)
    got, east_alone = joined.read(window), alone.read(window)
    joined.close(), alone.close(), scene.close()
    assert np.array_equal(got[:, :, :30], _whole_s1()[:, :, :30])
    assert np.array_equal(got[:, :, 30:], east_alone[:, :, 30:], equal_nan=True)
    assert np.isfinite(got[:, 2:-2, 30:-2]).all()  # the warped frame holds data there


def test_the_values_split_as_the_files_they_name(tmp_path: Path) -> None:
    assert s1_frames("a.tif+b.tif") == ["a.tif", "b.tif"]
    assert s1_parts("a_vv.tif,a_vh.tif+b.tif") == ["a_vv.tif", "a_vh.tif", "b.tif"]
    assert map_s1_files("x/a_vv.tif,x/a_vh.tif + x/b.tif", lambda p: Path(p).name) == "a_vv.tif,a_vh.tif+b.tif"
    (tmp_path / "S1+merged.tif").touch()  # an existing file's name holds a +: that one file
    assert s1_frames(str(tmp_path / "S1+merged.tif")) == [str(tmp_path / "S1+merged.tif")]
    assert s1_frames("S1+merged.tif", base=tmp_path) == ["S1+merged.tif"]


def test_the_pass_is_the_frames_pass(workdir: Path) -> None:
    west, east = _frames(workdir)
    for path in (west, east):
        with rasterio.open(path, "r+") as dataset:
            dataset.update_tags(ORBIT_DIRECTION="DESCENDING")
    facts = s1_facts(f"{east}+{west}")
    assert (facts.sensing_time, facts.orbit) == ("2023-06-08T05:12:34Z", "descending")


def test_a_manifest_joins_frames_relative_to_its_folder(workdir: Path) -> None:
    (workdir / "s1").mkdir()
    _s2(workdir)
    _frames(workdir / "s1")
    manifest = workdir / "scenes.csv"
    with manifest.open("w", newline="") as file:
        csv.writer(file).writerows([["s2", "s1", "out"], [S2_NAME, f"s1/{WEST}+s1/{EAST}", "out.tif"]])
    weights = str(workdir.weights("dsen2cr-small"))
    assert main(["remove-clouds", "--weights", weights, "--manifest", str(manifest), "-q", "--no-progress"]) == 0
    with rasterio.open(workdir / "out.tif") as dataset:
        assert dataset.tags()["DSEN2CR_S1"] == f"{WEST}+{EAST}"
        assert np.isfinite(dataset.read()).all()


def test_frames_as_stac_items(workdir: Path) -> None:
    """Each frame an S1 STAC item (``vv`` and ``vh`` assets): the image of the S1 they were cut from, the pass's
    start and direction from the items, a ``derived_from`` link to each."""
    _s2(workdir)
    whole = write_geotiff(workdir / "s1_whole.tif", _whole_s1(), crs=UTM32N, transform=ORIGIN)
    items = []
    for frame, stamp in zip(_frames(workdir), ("2023-06-08T05:12:34Z", "2023-06-08T05:12:59Z"), strict=True):
        (workdir / frame.stem).mkdir()
        moved = frame.rename(workdir / frame.stem / frame.name)
        items.append(write_s1_item(moved, datetime=stamp, **{"sat:orbit_state": "descending"}))
    weights = workdir.weights("dsen2cr-small")
    with rasterio.open(whole, "r+") as dataset:
        dataset.update_tags(ACQUISITION_START_TIME="2023-06-08T05:12:34Z")
    assert main(_remove(workdir, str(whole), "whole.tif", weights)) == 0
    assert (
        main(
            [
                *_remove(workdir, f"{items[1]}+{items[0]}", "frames.tif", weights),
                "--stac-item",
                str(workdir / "frames.json"),
            ]
        )
        == 0
    )
    with rasterio.open(workdir / "whole.tif") as a, rasterio.open(workdir / "frames.tif") as b:
        assert np.array_equal(a.read(), b.read())
        tags = b.tags()
    assert (tags["DSEN2CR_S1_SENSING_TIME"], tags["DSEN2CR_S1_ORBIT_DIRECTION"]) == (
        "2023-06-08T05:12:34Z",
        "descending",
    )
    item = json.loads((workdir / "frames.json").read_text())
    links = [link["href"] for link in item["links"] if link["rel"] == "derived_from"]
    assert links == [f"{Path(WEST).stem}/s1_item.json", f"{Path(EAST).stem}/s1_item.json"][::-1]


@pytest.mark.parametrize(
    ("crs", "zero_fill"),
    [(UTM32N, False), (CRS.from_epsg(32633), False), (UTM32N, True)],  # 20 m in the scene's zone; the next zone
)
def test_frames_on_one_lattice_read_as_the_file_they_were_cut_from(workdir: Path, crs: CRS, zero_fill: bool) -> None:
    """Frames on one pixel lattice that is not the scene's (20 m; or the next UTM zone): mosaicked on it, then warped
    at once, they give what the S1 they were cut from gives warped, at the seam too; also frames of the whole extent
    that hold 0 beyond their part and declare no nodata value (as Earth Engine exports them)."""
    scene = S2Source(_s2(workdir))
    west, _, _, north = transform_bounds(UTM32N, crs, 500000, 4999600, 500500, 5000000)
    left, top = np.floor(west / 20) * 20 - 100, np.ceil(north / 20) * 20 + 100  # on the 20 m lattice, around it
    db = np.random.default_rng(5).uniform(-25, -5, size=(2, 30, 36)).astype(np.float32)
    db[1] -= 6
    whole = write_geotiff(workdir / "s1_whole.tif", db, crs=crs, transform=from_origin(left, top, 20, 20))
    west_db, east_db = db[:, :, :20], db[:, :, 14:]  # columns 0-19 and 14-35 of the 20 m lattice
    east_left = left + 14 * 20
    if zero_fill:
        west_db, east_db = np.zeros_like(db), np.zeros_like(db)
        west_db[:, :, :20], east_db[:, :, 14:], east_left = db[:, :, :20], db[:, :, 14:], left
    west_frame = write_geotiff(workdir / WEST, west_db, crs=crs, transform=from_origin(left, top, 20, 20))
    east_frame = write_geotiff(workdir / EAST, east_db, crs=crs, transform=from_origin(east_left, top, 20, 20))
    window = Window(0, 0, 50, 40)
    joined, one = S1Source(f"{west_frame}+{east_frame}", scene.grid), S1Source(str(whole), scene.grid)
    got, expected = joined.read(window), one.read(window)
    per_window = np.concatenate([joined.read(Window(c, 0, 25, 40)) for c in (0, 25)], axis=2)  # windows as a run's
    joined.close(), one.close(), scene.close()
    assert np.isfinite(expected).all()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-3)  # the warp's arithmetic: some 1e-4 dB apart
    np.testing.assert_allclose(per_window, expected, rtol=0, atol=1e-3)


def test_frames_in_a_folder_whose_name_holds_a_plus(workdir: Path) -> None:
    """``S1+S2/west.tif+S1+S2/east.tif``: split where every part names an existing file (it was split at every +,
    'S1: S1 scene not found'); the same image as the frames under plain names."""
    _s2(workdir)
    west, east = _frames(workdir)
    (workdir / "S1+S2").mkdir()
    for frame in (west, east):
        (workdir / "S1+S2" / frame.name).write_bytes(frame.read_bytes())
    joined = f"{workdir}/S1+S2/{WEST}+{workdir}/S1+S2/{EAST}"
    assert s1_frames(joined) == [f"{workdir}/S1+S2/{WEST}", f"{workdir}/S1+S2/{EAST}"]
    weights = workdir.weights("dsen2cr-small")
    assert main(_remove(workdir, f"{west}+{east}", "plain.tif", weights)) == 0
    assert main(_remove(workdir, joined, "plus.tif", weights)) == 0
    with rasterio.open(workdir / "plain.tif") as a, rasterio.open(workdir / "plus.tif") as b:
        assert np.array_equal(a.read(), b.read())


def test_a_pair_in_a_folder_whose_name_holds_a_comma(tmp_path: Path) -> None:
    """``run,1/vv.tif,run,1/vh.tif``: the pair of the two files that exist (relative to a manifest's folder too)."""
    (tmp_path / "run,1").mkdir()
    for name in ("vv.tif", "vh.tif"):
        (tmp_path / "run,1" / name).touch()
    assert s1_parts(f"{tmp_path}/run,1/vv.tif,{tmp_path}/run,1/vh.tif") == [
        f"{tmp_path}/run,1/vv.tif",
        f"{tmp_path}/run,1/vh.tif",
    ]
    assert s1_parts("run,1/vv.tif,run,1/vh.tif", base=tmp_path) == ["run,1/vv.tif", "run,1/vh.tif"]


def test_a_value_two_splits_fit_is_refused(tmp_path: Path) -> None:
    """Files ``a+b.tif``, ``a`` and ``b.tif`` beside ``c.tif``: ``a+b.tif+c.tif`` splits two ways into existing files;
    refused, saying so, rather than guessed."""
    for name in ("a+b.tif", "a", "b.tif", "c.tif"):
        (tmp_path / name).touch()
    with pytest.raises(DSen2CRError, match=r"a\+b.tif\+c.tif: splits at \+ two ways into existing files"):
        s1_frames("a+b.tif+c.tif", base=tmp_path)
