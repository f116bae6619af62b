"""dsen2cr data triplets: training triplets chosen from a collection of scenes (each cloudy scene with the clear one
of its grid nearest in time, and the S1 nearest to that target), checked against clouds painted on known columns,
dates counted by hand, and the manifest cut by data patches."""

from __future__ import annotations

import csv
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.crs import CRS
from rasterio.transform import from_origin
from rasterio.windows import Window

from conftest import write_dated_s2
from dsen2cr.choices import DEFAULT_CLOUD_THRESHOLD
from dsen2cr.cli import main
from dsen2cr.cloud_detection import cloud_score
from dsen2cr.data import triplets
from dsen2cr.data.triplets import S2Scene, TripletRules, choose_triplets
from dsen2cr.inputs.readers import S2Source
from dsen2cr.outputs.geotiff import write_geotiff

UTM32N = CRS.from_epsg(32632)
HEIGHT, WIDTH = 120, 160
TILE_A, TILE_B = 500000, 600000  # two grids' left edges (one CRS, 10 m)


def _s1(folder: Path, stamp: str, *, nan_right_of: int | None = None) -> Path:
    """S1 at 100 m over both grids, sensed at ``stamp`` (its name says so); NaN right of ``nan_right_of`` (metres
    east of TILE_A's left edge)."""
    width = (TILE_B - TILE_A) // 100 + WIDTH // 10 + 2
    db = np.random.default_rng(3).uniform(-25, -5, size=(2, HEIGHT // 10 + 2, width)).astype(np.float32)
    if nan_right_of is not None:
        db[:, :, nan_right_of // 100 :] = np.nan
    name = f"S1A_IW_GRDH_1SDV_{stamp}_{stamp}_048901_05E1A2_3C4F_db.tif"
    return write_geotiff(folder / name, db, crs=UTM32N, transform=from_origin(TILE_A, 5000000, 100, 100))


def test_cloud_cover_is_the_painted_share(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    painted = write_dated_s2(workdir, TILE_A, "20230610T101559", cloud_columns=64)
    read = S2Scene.read(str(painted))
    # by hand: the cloud's score 1 (the detector's ceiling), the ground's about -1.94 (its B1 + B10 rule); the 7 px
    # mean is cloud (0.2 or more) where 6 or more of its 7 columns are (5 - 1.94 * 2 < 0.2 * 7): columns 0-61
    assert read.cloud == pytest.approx(62 / WIDTH, abs=0.5 / WIDTH)
    assert read.sensing_time.startswith("2023-06-10T10:15:59")
    half = S2Scene.read(str(write_dated_s2(workdir, TILE_B, "20230610T101559", cloud_columns=64, nodata_columns=60)))
    assert half.cloud == pytest.approx(62 / (WIDTH - 60), abs=0.5 / WIDTH)  # a share of the valid pixels
    # a baseline 04.00 export read with its offset: the same clouds; read decimated 4x: about the same
    (workdir / "offset").mkdir()
    shifted = write_dated_s2(workdir / "offset", TILE_A, "20230610T101559", cloud_columns=64, add=1000)
    assert S2Scene.read(str(shifted), offset=-1000).cloud == read.cloud
    with rasterio.open(painted) as dataset:  # Level-2A: no B10 (filled as the reader fills it)
        l2a = np.delete(dataset.read(), 10, axis=0)
    level_2a = write_geotiff(
        workdir / "offset" / "l2a_20230610T101559.tif", l2a, crs=UTM32N, transform=dataset.transform
    )
    assert (S2Scene.read(str(level_2a)).level, S2Scene.read(str(level_2a)).cloud) == ("L2A", read.cloud)
    monkeypatch.setattr(triplets, "SCENE_READ_SIZE", WIDTH // 4)
    assert S2Scene.read(str(painted)).cloud == pytest.approx(64 / WIDTH, abs=10 / WIDTH)


def test_each_cloudy_scene_gets_the_nearest_clear_one_of_its_grid(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    scene = partial(write_dated_s2, workdir)
    scenes = {
        "a_cloudy": scene(TILE_A, "20230610T101559", cloud_columns=64),
        "b_cloudy": scene(TILE_B, "20230605T101559", cloud_columns=64),
        "a_clear": scene(TILE_A, "20230601T101559"),  # 9 days before a_cloudy
        "a_clear_half": scene(TILE_A, "20230612T101559", nodata_columns=100),  # nearer, 60 of 160 columns
        "a_late": scene(TILE_A, "20230801T101559", cloud_columns=64),  # 50 days after the nearest clear
        "a_hazy": scene(TILE_A, "20230620T101559", cloud_columns=14),  # 12/160 = 7.5 %: neither
        "b_clear": scene(TILE_B, "20230620T101559"),  # 15 days after b_cloudy (a_clear is nearer, on A)
    }
    s1 = {
        "0531": _s1(workdir, "20230531T051234"),  # 1.2 days before a_clear
        "0601": _s1(workdir, "20230601T171234", nan_right_of=800),  # 0.3 days after a_clear, 80 of its 160 columns
        "0609": _s1(workdir, "20230609T171234"),  # 0.7 days before a_cloudy
        "0604": _s1(workdir, "20230604T171234"),  # 0.7 days before b_cloudy
        "0619": _s1(workdir, "20230619T171234"),  # 0.7 days before b_clear
    }
    manifest = workdir / "pairs.csv"
    argv = ["data", "triplets", "--s2", *map(str, scenes.values()), "--s1", *map(str, s1.values())]
    capsys.readouterr()
    assert main([*argv, "--out", str(manifest)]) == 0
    out = capsys.readouterr().out
    with manifest.open(newline="") as file:
        rows = list(csv.DictReader(file))
    assert rows == [
        {"s2_cloudy": scenes["a_cloudy"].name, "s2": scenes["a_clear"].name, "s1": s1["0531"].name, "roi": "1"},
        {"s2_cloudy": scenes["b_cloudy"].name, "s2": scenes["b_clear"].name, "s1": s1["0619"].name, "roi": "2"},
    ]
    assert (
        f"ROI 1: input {scenes['a_cloudy']} (39% cloud), target {scenes['a_clear']} (0% cloud, 9.0 days before the "
        f"input), S1 {s1['0531']} (1.2 days before the target, relative orbit 4); all three hold data under 100% of "
        "the input"
    ) in out
    assert f"left out {scenes['a_late']}: no clear scene" in out and "lies 50.0 days before it (--max-days)" in out
    assert f"{scenes['a_hazy']}: 8% cloud: neither an input" in out
    # S1 near the inputs instead; ROIs from 7
    manifest.unlink()
    assert main([*argv, "--out", str(manifest), "--s1-near", "input", "--first-roi", "7"]) == 0
    with manifest.open(newline="") as file:
        rows = list(csv.DictReader(file))
    assert [(row["s1"], row["roi"]) for row in rows] == [(s1["0609"].name, "7"), (s1["0604"].name, "8")]


def test_the_half_covered_target_is_chosen_under_a_lower_min_cover(workdir: Path) -> None:
    scene = partial(write_dated_s2, workdir)
    cloudy = scene(TILE_A, "20230610T101559", cloud_columns=64)
    far = scene(TILE_A, "20230601T101559")
    half = scene(TILE_A, "20230612T101559", nodata_columns=100)
    s1 = _s1(workdir, "20230611T171234")
    choice = choose_triplets([str(cloudy), str(far), str(half)], [str(s1)], TripletRules(min_cover=0.3))
    [triplet] = choice.triplets
    assert triplet.s2.text == str(half)
    assert triplet.target_days == pytest.approx(2.0)
    assert triplet.cover == pytest.approx(60 / WIDTH, abs=1 / WIDTH)  # by hand: its 60 valid columns of 160


def test_the_manifest_is_cut_by_data_patches(workdir: Path) -> None:
    (workdir / "scenes").mkdir()
    cloudy = write_dated_s2(workdir / "scenes", TILE_A, "20230610T101559", cloud_columns=64)
    clear = write_dated_s2(workdir / "scenes", TILE_A, "20230601T101559")
    s1 = _s1(workdir / "scenes", "20230531T051234")
    manifest = workdir / "pairs.csv"
    argv = ["data", "triplets", "--s2", str(cloudy), str(clear), "--s1", str(s1), "--out", str(manifest)]
    assert main(argv) == 0
    out = workdir / "patches"
    assert main(["data", "patches", "--manifest", str(manifest), "--out", str(out), "--size", "40", "-q"]) == 0
    patches = sorted((out / "ROIs0_own_s2_cloudy" / "s2_cloudy_1").glob("*.tif"))
    assert len(patches) == (HEIGHT // 40) * (WIDTH // 40)
    for folder, source in (("s2_cloudy", cloudy), ("s2", clear), ("s1", s1)):
        with rasterio.open(out / f"ROIs0_own_{folder}" / f"{folder}_1" / f"ROIs0_own_{folder}_1_p0.tif") as patch:
            assert patch.tags()["DSEN2CR_SOURCE"] == source.name


@pytest.mark.parametrize(
    ("level", "baseline", "shift", "offsets"),
    [("L1C", "02.04", 0, None), ("L2A", "04.00", 1000, dict.fromkeys(range(13), -1000))],
)
def test_a_product_is_read_as_its_windows_are(
    make_safe: Callable[..., Path], tmp_path: Path, level: str, baseline: str, shift: int, offsets: dict | None
) -> None:
    """A product's bands at 10, 20 and 60 m (and a baseline 04.00 product's offsets): the 512 px read of a small
    product is its full-resolution scene, so its cloud share is the one of the scene read window by window."""
    safe = make_safe(tmp_path, level=level, baseline=baseline, shift=shift, offsets=offsets)
    source = S2Source(str(safe))
    whole = source.read(Window(0, 0, source.grid.width, source.grid.height))
    source.close()
    expected = float((cloud_score(whole) >= DEFAULT_CLOUD_THRESHOLD).mean())
    scene = S2Scene.read(str(safe))
    assert 0.05 < expected < 0.95  # (the product holds both cloud and ground by the detector)
    assert (scene.level, scene.cloud) == (level, pytest.approx(expected, abs=1e-12))
    assert scene.sensing_time.startswith("2023-06-10T10:15:59")


def test_data_patches_warns_of_s1_far_from_both_scenes(workdir: Path, caplog: pytest.LogCaptureFixture) -> None:
    cloudy = write_dated_s2(workdir, TILE_A, "20230610T101559", cloud_columns=64)
    clear = write_dated_s2(workdir, TILE_A, "20230601T101559")
    argv = ["data", "patches", "--s2-cloudy", str(cloudy), "--s2", str(clear), "--size", "40", "-q"]
    far = _s1(workdir, "20230710T051234")  # by hand: 38.8 days after the target, 29.8 after the input
    assert main([*argv, "--s1", str(far), "--out", str(workdir / "far"), "--roi", "1"]) == 0
    assert "S1 sensed 38.8 days after the target and 29.8 days after the input: beyond 12 days of both" in caplog.text
    caplog.clear()
    near_input = _s1(workdir, "20230612T051234")  # 1.8 days after the input, 10.8 after the target: no warning
    assert main([*argv, "--s1", str(near_input), "--out", str(workdir / "near"), "--roi", "1"]) == 0
    assert "beyond 12 days" not in caplog.text


def test_orbit_keeps_one_pass(workdir: Path) -> None:
    cloudy = write_dated_s2(workdir, TILE_A, "20230610T101559", cloud_columns=64)
    clear = write_dated_s2(workdir, TILE_A, "20230601T101559")
    s1 = {"descending": _s1(workdir, "20230531T171234"), "ascending": _s1(workdir, "20230529T051234")}
    for direction, path in s1.items():
        with rasterio.open(path, "r+") as dataset:
            dataset.update_tags(ORBIT_DIRECTION=direction.upper())
    inputs = ([str(cloudy), str(clear)], list(map(str, s1.values())))
    [nearest] = choose_triplets(*inputs).triplets
    assert (nearest.s1, nearest.s1_orbit) == (str(s1["descending"]), "descending")  # 0.7 days before the target
    [ascending] = choose_triplets(*inputs, TripletRules(orbit="ascending")).triplets
    assert (ascending.s1, ascending.s1_orbit) == (str(s1["ascending"]), "ascending")  # 3.2 days before it


def test_an_input_without_s1_near_its_target_is_left_out(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    scenes = [
        write_dated_s2(workdir, TILE_A, "20230610T101559", cloud_columns=64),
        write_dated_s2(workdir, TILE_A, "20230601T101559"),
        write_dated_s2(workdir, TILE_B, "20230605T101559", cloud_columns=64),
        write_dated_s2(workdir, TILE_B, "20230620T101559"),
    ]
    s1 = _s1(workdir, "20230531T051234")  # 1.2 days before A's target, 20.2 before B's
    argv = ["data", "triplets", "--s2", *map(str, scenes), "--s1", str(s1), "--out", str(workdir / "pairs.csv")]
    assert main([*argv, "--s1-max-days", "5"]) == 0
    out = capsys.readouterr().out
    assert f"left out {scenes[2]} (S1 near its target {scenes[3]}): no S1 given covers 95% of it within 5 days" in out
    assert f"the nearest in time that covers any is {s1} (100% of it, 20.2 days before the target)" in out
    with (workdir / "pairs.csv").open(newline="") as file:
        assert [row["s2_cloudy"] for row in csv.DictReader(file)] == [scenes[0].name]


def test_one_acquisition_at_two_levels_is_two_products(workdir: Path) -> None:
    """Level-1C and Level-2A of one acquisition (one grid, one time) are two products, each paired within its level;
    only the same product given twice is refused (test_triplets_bad_input)."""
    scenes = {}
    for level in ("l1c", "l2a"):
        (workdir / level).mkdir()
        cloudy = write_dated_s2(workdir / level, TILE_A, "20230610T101559", cloud_columns=64)
        clear = write_dated_s2(workdir / level, TILE_A, "20230601T101559")
        if level == "l2a":  # no B10, as Level-2A
            for path in (cloudy, clear):
                with rasterio.open(path) as dataset:
                    data, transform = np.delete(dataset.read(), 10, axis=0), dataset.transform
                write_geotiff(path, data, crs=UTM32N, transform=transform)
        scenes[level] = (cloudy, clear)
    s1 = _s1(workdir, "20230531T051234")
    inputs = [str(path) for pair in scenes.values() for path in pair]
    choice = choose_triplets(inputs, [str(s1)])
    assert [(t.s2_cloudy.level, t.s2_cloudy.text, t.s2.text) for t in choice.triplets] == [
        ("L1C", str(scenes["l1c"][0]), str(scenes["l1c"][1])),
        ("L2A", str(scenes["l2a"][0]), str(scenes["l2a"][1])),
    ]


def test_frames_of_one_pass_are_joined(workdir: Path) -> None:
    """S1 in two frames of one pass, each over about half of the scene: the triplet's S1 is both, joined with +; its
    patches hold the S1 the frames were cut from."""
    (workdir / "scenes").mkdir()
    cloudy = write_dated_s2(workdir / "scenes", TILE_A, "20230610T101559", cloud_columns=64)
    clear = write_dated_s2(workdir / "scenes", TILE_A, "20230601T101559")
    west = _s1(workdir / "scenes", "20230531T051234", nan_right_of=900)
    west = west.rename(west.with_name(west.name.replace("_db", "_west_db")))
    whole = _s1(workdir / "scenes", "20230531T051234")
    with rasterio.open(whole) as dataset:
        data, profile = dataset.read(), dataset.profile
    data[:, :, :7] = np.nan  # the east frame, 25 s later, from 700 m east of the scene's edge
    east = write_geotiff(
        workdir / "scenes" / "S1A_IW_GRDH_1SDV_20230531T051259_x_db.tif",
        data,
        crs=UTM32N,
        transform=profile["transform"],
    )
    cut = {}
    for name, s1 in (("frames", [east, west]), ("whole", [whole])):
        manifest = workdir / f"{name}.csv"
        argv = ["data", "triplets", "--s2", str(cloudy), str(clear), "--s1", *map(str, s1), "--out", str(manifest)]
        assert main(argv) == 0
        out = workdir / name
        assert main(["data", "patches", "--manifest", str(manifest), "--out", str(out), "--size", "40", "-q"]) == 0
        folder = out / "ROIs0_own_s1" / "s1_1"
        scene = np.full((2, HEIGHT, WIDTH), np.nan, np.float32)  # the patches put back where they lie
        for path in folder.glob("*.tif"):
            with rasterio.open(path) as patch:
                col, row = ~from_origin(TILE_A, 5000000, 10, 10) * (patch.transform.c, patch.transform.f)
                scene[:, round(row) : round(row) + 40, round(col) : round(col) + 40] = patch.read()
                cut[f"{name} source"] = patch.tags()["DSEN2CR_SOURCE"]
        cut[name] = scene
    with (workdir / "frames.csv").open(newline="") as file:
        assert next(csv.DictReader(file))["s1"] == f"scenes/{west.name}+scenes/{east.name}"  # west covers more
    assert cut["frames source"] == f"{west.name}+{east.name}"
    assert np.isfinite(cut["frames"]).all()
    # one 100 m lattice: the frames mosaicked on it, then warped at once, as the S1 they were cut from (the warp's
    # arithmetic some 1e-4 dB apart), at the seam too (900 m east of the scene's edge)
    np.testing.assert_allclose(cut["frames"], cut["whole"], rtol=0, atol=1e-3)
