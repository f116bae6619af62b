"""dsen2cr pair: each S2 scene with the S1 nearest to it in time that covers it, as a remove-clouds manifest; the
cover checked against shares counted by hand, an S1 on another CRS (warped by rasterio) among the candidates."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.crs import CRS
from rasterio.transform import from_origin
from rasterio.warp import Resampling, calculate_default_transform, reproject

from conftest import split_s1, write_s1_item
from dsen2cr.cli import main
from dsen2cr.errors import DSen2CRError
from dsen2cr.inputs.pairing import LATTICE_SIZE, pair_scenes, polarisation_pairs
from dsen2cr.inputs.s1_time import s1_orbit_direction
from dsen2cr.outputs.geotiff import write_geotiff

UTM32N = CRS.from_epsg(32632)
ORIGIN = from_origin(500000, 5000000, 10, 10)
S2_NAME = "T32TPT_20230610T101559_10m.tif"  # sensed 2023-06-10 10:15:59 UTC


def _s2(folder: Path, *, nodata_columns: int = 0) -> Path:
    """A 200 x 250 px scene, no data in its first ``nodata_columns`` columns."""
    dn = np.random.default_rng(1).integers(200, 3000, size=(13, 200, 250)).astype(np.uint16)
    dn[10] = 20  # B10 of a clear sky
    dn[:, :, :nodata_columns] = 0
    return write_geotiff(folder / S2_NAME, dn, crs=UTM32N, transform=ORIGIN)


def _s1(folder: Path, stamp: str, *, nan_from_column: int | None = None) -> Path:
    """S1 on the scene's grid, sensed at ``stamp`` (its name says so), NaN from ``nan_from_column`` on."""
    db = np.random.default_rng(2).uniform(-25, -5, size=(2, 200, 250)).astype(np.float32)
    db[1] -= 6  # VH below VV
    if nan_from_column is not None:
        db[:, :, nan_from_column:] = np.nan
    return write_geotiff(
        folder / f"S1A_IW_GRDH_1SDV_{stamp}_{stamp}_048901_05E1A2_3C4F_db.tif", db, crs=UTM32N, transform=ORIGIN
    )


def _s1_in_lonlat(folder: Path, stamp: str) -> Path:
    """S1 of the whole scene and beyond, warped to longitude/latitude (EPSG:4326) by rasterio."""
    source = _s1(folder, "20000101T000000")
    with rasterio.open(source) as src:
        data = src.read()
        transform, width, height = calculate_default_transform(
            src.crs, "EPSG:4326", src.width + 40, src.height + 40, *np.add(src.bounds, (-200, -200, 200, 200))
        )
        warped = np.full((2, height, width), np.nan, np.float32)
        left, top = src.bounds.left - 200, src.bounds.top + 200
        padded = np.full((2, src.height + 40, src.width + 40), -15.0, np.float32)
        padded[:, 20:-20, 20:-20] = data
        reproject(
            padded,
            warped,
            src_transform=from_origin(left, top, 10, 10),
            src_crs=src.crs,
            dst_transform=transform,
            dst_crs="EPSG:4326",
            resampling=Resampling.nearest,
            dst_nodata=np.nan,
        )
    source.unlink()
    path = folder / f"S1A_IW_{stamp}_DVP_RTC10_G_gpuned_5F3A_lonlat.tif"
    return write_geotiff(path, warped, crs=CRS.from_epsg(4326), transform=transform)


def test_the_nearest_s1_that_covers_the_scene_is_chosen(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    s2 = _s2(workdir)
    candidates = [
        _s1(workdir, "20230608T051234"),  # 2.2 days before, all of it
        _s1(workdir, "20230611T051234", nan_from_column=125),  # 0.8 days after, half of it
        _s1(workdir, "20230630T051234"),  # 19.8 days after, all of it
        _s1_in_lonlat(workdir, "20230609T171234"),  # 0.7 days before, all of it, on another CRS
    ]
    argv = ["pair", "--s2", str(s2), "--s1", *map(str, candidates), "--out", str(workdir / "scenes.csv")]
    capsys.readouterr()
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"{s2}: S1 {candidates[3]}, 0.7 days before S2, covering 100% of the scene" in out
    with (workdir / "scenes.csv").open(newline="") as file:
        rows = list(csv.DictReader(file))
    assert rows == [{"s2": S2_NAME, "s1": candidates[3].name, "out": "T32TPT_20230610T101559_10m_cloudfree.tif"}]
    # without it, the half-covered one is nearer but covers too little: the one 2.2 days before
    (workdir / "scenes.csv").unlink()
    assert main(argv[: argv.index(str(candidates[3]))] + argv[argv.index("--out") :]) == 0
    assert f"{s2}: S1 {candidates[0]}, 2.2 days before S2, covering 100% of the scene" in capsys.readouterr().out


def test_cover_is_the_share_of_valid_pixels_under_s1(workdir: Path) -> None:
    s2 = _s2(workdir, nodata_columns=100)  # valid: columns 100-249
    s1 = _s1(workdir, "20230608T051234", nan_from_column=150)  # data: columns 0-149
    [pairing] = pair_scenes([str(s2)], [str(s1)], min_cover=0.1)
    assert pairing.cover == pytest.approx(50 / 150, abs=2 / LATTICE_SIZE)  # by hand: 50 of the 150 valid columns
    assert pairing.days == pytest.approx(-(2 + (5 * 3600 + 3 * 60 + 25) / 86400), abs=1e-9)


def test_the_manifest_runs(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    (workdir / "inputs").mkdir()
    (workdir / "images").mkdir()
    s2 = _s2(workdir / "inputs")
    stem = "S1A_IW_20230608T051234_DVP_RTC10_G_gpuned_5F3A"
    pair = split_s1(_s1(workdir / "inputs", "20230608T051234"), f"{stem}_VV.tif", f"{stem}_VH.tif")
    vv, vh = map(Path, pair.split(","))
    (workdir / "masks").mkdir()
    manifest = workdir / "scenes.csv"
    argv = ["pair", "--s2", str(s2), "--s1", f"{vv},{vh}", "--out", str(manifest), "--images", str(workdir / "images")]
    assert main([*argv, "--mask-out", str(workdir / "masks"), "--stac-item", str(workdir / "images")]) == 0
    with manifest.open(newline="") as file:
        [row] = list(csv.DictReader(file))
    assert row["s1"] == f"inputs/{vv.name},inputs/{vh.name}"  # one quoted field, relative to the manifest
    assert (row["mask_out"], row["stac_item"]) == ("masks/", "images/")  # folders: each file named after its image
    weights = str(workdir.weights("dsen2cr-small"))
    assert main(["remove-clouds", "--weights", weights, "--manifest", str(manifest), "--no-progress"]) == 0
    with rasterio.open(workdir / "images" / "T32TPT_20230610T101559_10m_cloudfree.tif") as dataset:
        tags = dataset.tags()
    assert tags["DSEN2CR_S1"] == f"{vv.name},{vh.name}"
    assert tags["DSEN2CR_S1_DAYS_FROM_S2"] == "-2.21"
    assert (workdir / "masks" / "T32TPT_20230610T101559_10m_cloudfree_mask.tif").is_file()
    assert (workdir / "images" / "T32TPT_20230610T101559_10m_cloudfree.json").is_file()


@pytest.mark.parametrize("fill", ["nan", "0"])  # no data as NaN, or as 0 in files that declare no nodata value
def test_frames_of_one_pass_are_joined(workdir: Path, capsys: pytest.CaptureFixture, fill: str) -> None:
    """A scene across two frames of one pass, neither covering enough: paired with both, joined with + in the
    manifest; its image equals the one made with the frames merged into one file by ``rio merge`` (rasterio's)."""
    (workdir / "images").mkdir()
    s2 = _s2(workdir)
    frames = np.random.default_rng(3).uniform(-25, -5, size=(2, 2, 200, 250)).astype(np.float32)
    frames[:, 1] -= 6  # VH below VV
    frames[0, :, :, 125:] = float(fill)  # the frame holding the west half
    frames[1, :, :, :120] = float(fill)  # the next frame of the pass, 25 s later: the east half and a little more
    frames[1, :, :, 120:125] -= 1  # where both hold data, other values: the first frame's count
    west, east = (
        write_geotiff(workdir / f"S1A_IW_GRDH_1SDV_{stamp}_x_db.tif", frame, crs=UTM32N, transform=ORIGIN)
        for stamp, frame in zip(("20230608T051234", "20230608T051259"), frames, strict=True)
    )
    far = _s1(workdir, "20230622T051234")  # another pass, 12 days later, all of the scene
    manifest = workdir / "scenes.csv"
    argv = ["pair", "--s2", str(s2), "--s1", str(far), str(east), str(west), "--out", str(manifest)]
    capsys.readouterr()
    assert main([*argv, "--images", str(workdir / "images")]) == 0
    out = capsys.readouterr().out
    assert f"{s2}: S1 {east}+{west}, 2.2 days before S2, covering 100% of the scene" in out  # the larger one first
    with manifest.open(newline="") as file:
        [row] = list(csv.DictReader(file))
    assert row["s1"] == f"{east.name}+{west.name}"
    weights = str(workdir.weights("dsen2cr-small"))
    assert main(["remove-clouds", "--weights", weights, "--manifest", str(manifest), "-q", "--no-progress"]) == 0
    rio = Path(sys.executable).parent / "rio"
    merge = [str(rio), "merge", "--nodata", fill, east.name, west.name, "merged.tif"]  # the first counts
    subprocess.run(merge, cwd=workdir, check=True, capture_output=True)
    merged = (workdir / "merged.tif").rename(workdir / "S1A_IW_GRDH_1SDV_20230608T051234_merged.tif")
    out = workdir / "merged_cloudfree.tif"
    assert (
        main(["remove-clouds", "--weights", weights, "--s2", str(s2), "--s1", str(merged), "--out", str(out), "-q"])
        == 0
    )
    with rasterio.open(workdir / "images" / "T32TPT_20230610T101559_10m_cloudfree.tif") as a, rasterio.open(out) as b:
        assert np.array_equal(a.read(), b.read())
        assert a.tags()["DSEN2CR_S1"] == f"{east.name}+{west.name}"


def test_a_frame_joins_only_where_it_adds_cover(workdir: Path) -> None:
    s2 = _s2(workdir)
    whole = _s1(workdir, "20230608T051234")  # all of the scene
    part = _s1(workdir, "20230608T051259", nan_from_column=100)  # the same pass, 25 s later, part of it
    most = _s1(workdir, "20230611T051259", nan_from_column=240)  # another pass: 96 % of it
    rest = _s1(workdir, "20230611T051324", nan_from_column=None)  # its next frame: all of it
    [pairing] = pair_scenes([str(s2)], [str(part), str(whole)], min_cover=0.95)
    assert (pairing.s1, pairing.cover) == (str(whole), 1.0)  # part adds nothing
    with rasterio.open(rest, "r+") as dataset:  # the next frame holds only the columns the first lacks, and some
        data = dataset.read()
        data[:, :, :200] = np.nan
        dataset.write(data)
    [pairing] = pair_scenes([str(s2)], [str(whole), str(rest), str(most)], min_cover=0.95)
    assert pairing.s1 == f"{most}+{rest}"  # 0.8 days after S2: nearer than the whole one 2.2 days before
    assert pairing.cover == 1.0
    assert pairing.days == pytest.approx(
        (18 * 3600 + 57 * 60) / 86400, abs=1e-9
    )  # the pass's start: its first frame's time


def _on_pass(s1: Path, direction: str) -> Path:
    """``s1`` tagged as GDAL's Sentinel-1 driver tags a product's pass (``ORBIT_DIRECTION``)."""
    with rasterio.open(s1, "r+") as dataset:
        dataset.update_tags(ORBIT_DIRECTION=direction)
    return s1


def test_orbit_keeps_one_pass(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    s2 = _s2(workdir)
    descending = _on_pass(_s1(workdir, "20230609T171234"), "DESCENDING")  # 0.7 days before
    ascending = _on_pass(_s1(workdir, "20230607T051234"), "ASCENDING")  # 3.2 days before
    argv = ["pair", "--s2", str(s2), "--s1", str(descending), str(ascending), "--out", str(workdir / "scenes.csv")]
    capsys.readouterr()
    assert main(argv) == 0
    assert (
        f"S1 {descending}, 0.7 days before S2, covering 100% of the scene, descending pass" in capsys.readouterr().out
    )
    assert main([*argv, "--overwrite", "--orbit", "ascending"]) == 0
    assert f"S1 {ascending}, 3.2 days before S2, covering 100% of the scene, ascending pass" in capsys.readouterr().out
    item = write_s1_item(_s1(workdir, "20230611T051234"), "s1.json", datetime="2023-06-11T05:12:34Z")
    assert s1_orbit_direction(str(item)) is None
    item.write_text(item.read_text().replace('"properties": {', '"properties": {"sat:orbit_state": "ascending", '))
    assert s1_orbit_direction(str(item)) == "ascending"
    [pairing] = pair_scenes([str(s2)], [str(descending), str(ascending), str(item)], orbit="ascending")
    assert (pairing.s1, pairing.orbit) == (str(item), "ascending")  # 0.2 days after, the nearest ascending


def test_single_polarisation_files_are_paired_by_name(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    """A folder of ASF HyP3 RTC products, one file a polarisation (``…_VV.tif``, ``…_VH.tif``), given as it is: each
    VV file with the VH file of its name, as one candidate; the nearest pair of files chosen, written as a pair."""
    s2 = _s2(workdir)
    (workdir / "rtc").mkdir()
    files = []
    for stamp in ("20230608T051234", "20230609T171234"):  # 2.2 and 0.7 days before S2
        stem = f"S1A_IW_{stamp}_DVP_RTC10_G_gpuned_5F3A"
        pair = split_s1(_s1(workdir / "rtc", stamp), f"{stem}_VV.tif", f"{stem}_VH.tif")
        files += pair.split(",")
    for path in (workdir / "rtc").glob("S1A_IW_GRDH_*"):
        path.unlink()  # only the single-polarisation files remain
    manifest = workdir / "scenes.csv"
    capsys.readouterr()
    assert main(["pair", "--s2", str(s2), "--s1", *sorted(files), "--out", str(manifest)]) == 0
    assert f"{s2}: S1 {files[2]},{files[3]}, 0.7 days before S2" in capsys.readouterr().out
    with manifest.open(newline="") as file:
        [row] = list(csv.DictReader(file))
    assert row["s1"] == f"rtc/{Path(files[2]).name},rtc/{Path(files[3]).name}"  # VV first, as remove-clouds takes it


def test_polarisation_pairs() -> None:
    given = ["a/x_VH.tif", "a/x_VV.tif", "a/y_VH.tif", "b/x_VV.tif", "s1-vv.tif", "s1-vh.tif", "c/s1_VV_VH.tif"]
    assert polarisation_pairs([*given, "items.json#S1_VV", "p_VV.tif,p_VH.tif"]) == [
        "a/x_VV.tif,a/x_VH.tif",  # where the VV file stood
        "a/y_VH.tif",  # no VV of its name: as given (refused as it is read: one band)
        "b/x_VV.tif",  # another folder's VH is not its partner
        "s1-vv.tif,s1-vh.tif",
        "c/s1_VV_VH.tif",  # both named: a 2-band file
        "items.json#S1_VV",  # a STAC item, and a pair given as one: as they are
        "p_VV.tif,p_VH.tif",
    ]


def test_frames_join_where_their_files_say_one_pass(workdir: Path) -> None:
    """Frames of one pass join when the passes their files say agree (one saying none: the other's); frames said to
    be of two passes do not (remove-clouds refuses such a join), and then neither covers enough."""
    s2 = _s2(workdir)
    west = _s1(workdir, "20230608T051234", nan_from_column=130)
    east = _s1(workdir, "20230608T051259")
    with rasterio.open(east, "r+") as dataset:
        data = dataset.read()
        data[:, :, :120] = np.nan
        dataset.write(data)
    _on_pass(east, "DESCENDING")
    [pairing] = pair_scenes([str(s2)], [str(west), str(east)])
    assert (pairing.s1, pairing.orbit) == (f"{west}+{east}", "descending")  # west covers 52 %, east 52 %: west first
    _on_pass(west, "ASCENDING")
    with pytest.raises(DSen2CRError, match="no S1 given covers 95% of it"):
        pair_scenes([str(s2)], [str(west), str(east)])


def test_frames_joined_by_hand_are_one_candidate(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    """Frames given joined with + (STAC items, whose names end in .json as a collection's do): one candidate as
    given, not read as an ItemCollection."""
    s2 = _s2(workdir)
    items = []
    for name, stamp, columns in (
        ("w", "2023-06-08T05:12:34Z", slice(130, None)),
        ("e", "2023-06-08T05:12:59Z", slice(0, 120)),
    ):
        (workdir / name).mkdir()
        s1 = _s1(workdir / name, "20230608T051234")
        with rasterio.open(s1, "r+") as dataset:
            data = dataset.read()
            data[:, :, columns] = np.nan
            dataset.write(data)
        items.append(write_s1_item(s1, datetime=stamp))
    joined = f"{items[0]}+{items[1]}"
    assert main(["pair", "--s2", str(s2), "--s1", joined, "--out", str(workdir / "scenes.csv")]) == 0
    assert f"{s2}: S1 {joined}, 2.2 days before S2, covering 100% of the scene" in capsys.readouterr().out
