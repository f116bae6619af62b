"""``data index``: every check, both layouts, and the skipped-patch report."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from pyproj import Transformer
from rasterio.crs import CRS

from dsen2cr.data.index import index_dataset
from dsen2cr.data.layout import Triplet, read_file_list
from dsen2cr.outputs.geotiff import write_geotiff


def test_index_skips_bad_triplets_with_reasons(tmp_path: Path, write_release_triplet: Callable[..., Triplet]) -> None:
    root = tmp_path / "data"
    write_release_triplet(root, "ROIs1158_spring", 1, 0)
    write_release_triplet(root, "ROIs1158_spring", 1, 1, s1_bands=3)
    write_release_triplet(root, "ROIs1158_spring", 2, 0, s1_size=31)
    write_release_triplet(root, "ROIs1868_summer", 3, 0, s1_crs=CRS.from_epsg(32633))
    missing = write_release_triplet(root, "ROIs1868_summer", 4, 0)
    missing.s2_cloudy.unlink()
    broken = write_release_triplet(root, "ROIs1868_summer", 5, 0)
    broken.s2.write_bytes(b"not a tiff")
    report = index_dataset(root, tmp_path / "files.csv", test_rois={"ROIs1158_spring/1"})
    assert [t.patch_id for t in report.triplets] == ["ROIs1158_spring_1_p0"]
    assert report.triplets[0].split == 3
    reasons = "\n".join(reason for _, reason in report.skipped)
    assert "s1_1_p1.tif: 3 bands, expected 2" in reasons
    assert "s1_2_p0.tif: size 31x31 differs from" in reasons
    assert "s1_3_p0.tif: CRS EPSG:32633 differs from" in reasons
    assert "missing partner file" in reasons and "s2_cloudy_4_p0.tif" in reasons
    assert "s2_5_p0.tif: cannot read" in reasons
    assert len(report.skipped) == 5
    assert len((tmp_path / "files.csv.skipped.tsv").read_text().splitlines()) == 5
    assert read_file_list(tmp_path / "files.csv", root) == report.triplets


def test_index_flat_layout(tmp_path: Path, write_release_triplet: Callable[..., Triplet]) -> None:
    nested = tmp_path / "nested"
    t = write_release_triplet(nested, "ROIs1158_spring", 101, 0)
    flat = tmp_path / "flat"
    for folder, path in (("s1", t.s1), ("s2_cloudFree", t.s2), ("s2_cloudy", t.s2_cloudy)):
        (flat / folder).mkdir(parents=True)
        (flat / folder / "ROIs1158_spring_101_0.tif").write_bytes(path.read_bytes())
    report = index_dataset(flat, tmp_path / "flat.csv")
    assert len(report.triplets) == 1 and not report.skipped
    line = (tmp_path / "flat.csv").read_text().strip().split("\t")
    assert line == ["1", "s1", "s2_cloudFree", "s2_cloudy", "ROIs1158_spring_101_0.tif"]


def test_geotiff_writes_are_atomic(tmp_path: Path) -> None:
    import numpy as np
    import pytest
    from rasterio.transform import from_origin

    target = tmp_path / "out.tif"
    target.write_bytes(b"previous result")
    with pytest.raises(ValueError):
        write_geotiff(target, np.zeros((4, 4)), crs=CRS.from_epsg(32632), transform=from_origin(0, 0, 10, 10))
    assert target.read_bytes() == b"previous result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.tif"]


def test_patches_without_their_s1_are_listed_as_skipped(
    tmp_path: Path, write_release_triplet: Callable[..., Triplet]
) -> None:
    """The scan started from the S1 files: a cloudy and a clear S2 whose S1 file, or whole S1 ROI folder, was
    missing (an S1 archive cut short) were left out of the file list without a word. Every patch of any sensor
    is now either indexed or listed with the files it lacks."""
    root = tmp_path / "data"
    write_release_triplet(root, "ROIs1158_spring", 1, 0)
    write_release_triplet(root, "ROIs1158_spring", 1, 1).s1.unlink()  # one S1 file missing
    roi_without_s1 = write_release_triplet(root, "ROIs1158_spring", 2, 0)
    for path in roi_without_s1.s1.parent.iterdir():  # the whole S1 ROI folder missing
        path.unlink()
    roi_without_s1.s1.parent.rmdir()
    write_release_triplet(root, "ROIs1868_summer", 3, 0).s2.unlink()  # only the cloudy S2 and its S1
    report = index_dataset(root, tmp_path / "files.csv")
    assert [t.patch_id for t in report.triplets] == ["ROIs1158_spring_1_p0"]
    listed = (tmp_path / "files.csv.skipped.tsv").read_text().splitlines()
    assert len(report.skipped) == len(listed) == 3, listed
    reasons = {path.name: reason for path, reason in report.skipped}
    assert set(reasons) == {"ROIs1158_spring_s2_1_p1.tif", "ROIs1158_spring_s2_2_p0.tif", "ROIs1868_summer_s1_3_p0.tif"}
    assert reasons["ROIs1158_spring_s2_1_p1.tif"] == (
        f"missing partner file {root / 'ROIs1158_spring_s1' / 's1_1' / 'ROIs1158_spring_s1_1_p1.tif'}"
    )
    assert reasons["ROIs1158_spring_s2_2_p0.tif"].endswith("ROIs1158_spring_s1_2_p0.tif")
    assert reasons["ROIs1868_summer_s1_3_p0.tif"].endswith("ROIs1868_summer_s2_3_p0.tif")


def test_flat_layout_patches_without_their_s1_are_listed_as_skipped(
    tmp_path: Path, write_release_triplet: Callable[..., Triplet]
) -> None:
    """The flat layout's scan also started from ``s1/``: a patch only in ``s2_cloudFree/`` and ``s2_cloudy/``
    was left out silently."""
    t = write_release_triplet(tmp_path / "nested", "ROIs1158_spring", 101, 0)
    flat = tmp_path / "flat"
    for folder, path in (("s1", t.s1), ("s2_cloudFree", t.s2), ("s2_cloudy", t.s2_cloudy)):
        (flat / folder).mkdir(parents=True)
        for patch in (0, 1):
            if folder != "s1" or patch == 0:
                (flat / folder / f"ROIs1158_spring_101_{patch}.tif").write_bytes(path.read_bytes())
    report = index_dataset(flat, tmp_path / "flat.csv")
    assert [t.patch_id for t in report.triplets] == ["ROIs1158_spring_101_p0"]
    assert [(path.name, reason) for path, reason in report.skipped] == [
        ("ROIs1158_spring_101_1.tif", f"missing partner file {flat / 's1' / 'ROIs1158_spring_101_1.tif'}")
    ]


def test_roi_lists_are_checked_against_the_seasons_the_tree_holds(
    tmp_path: Path, write_release_triplet: Callable[..., Triplet], caplog: pytest.LogCaptureFixture
) -> None:
    """The common split names ROIs of all four seasons, so every download of fewer seasons (``--seasons
    winter``, the README's example) warned that ROIs of its lists 'match no patch: check the ids or the root'.
    A ROI of a season the tree does not hold is expected to be absent; one of a season it holds, or of a season
    the release does not have (a misspelt id), is still warned of."""
    root = tmp_path / "data"
    write_release_triplet(root, "ROIs2017_winter", 22, 0)
    write_release_triplet(root, "ROIs2017_winter", 5, 0)
    val = {"ROIs2017_winter/22", "ROIs1868_summer/19", "ROIs1158_spring/17"}
    with caplog.at_level("WARNING"):
        index_dataset(root, tmp_path / "a.csv", val_rois=val, test_rois={"ROIs1970_fall/139"})
    assert not caplog.records, caplog.text
    with caplog.at_level("WARNING"):
        index_dataset(root, tmp_path / "b.csv", val_rois=val | {"ROIs2017_winter/23"}, test_rois={"ROIs1158_sprng/1"})
    assert "1 ROI(s) of the validation list match no patch" in caplog.text and "ROIs2017_winter/23" in caplog.text
    assert "1 ROI(s) of the test list match no patch" in caplog.text and "ROIs1158_sprng/1" in caplog.text


def test_held_out_patches_on_training_ground_are_warned(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Training ROI 1: 32 px patches (320 m) at x = 0 and 1000 m. Test ROI 2: a patch half over the first (counted)
    and one whose west edge touches its east edge (not: no shared area). Test ROI 4: a patch between ROI 1's two,
    inside the box around them but on none (not). Validation ROI 3: ROI 1's numbers on the next UTM zone, 6
    degrees east (not: other ground). Validation ROI 5: on the next zone's grid too, one patch over ROI 1's first
    (its corner taken there by pyproj, 40 m east and 50 m south: counted, as tiles of two zones overlap) and one
    a patch's width east of ROI 1's second (not: beside it), and one over the south-east corner of ROI 1's second
    (120 m x 220 m of its 320 m x 320 m, neither patch holding the other's centre: counted). Each placement worked
    out by hand: one test patch of three and two validation patches of four lie on training ground."""
    import logging

    import numpy as np
    from rasterio.transform import from_origin

    from dsen2cr.data.layout import release_triplet

    root = tmp_path / "data"
    rng = np.random.default_rng(0)
    placed = [(1, 0, 0.0, 32632), (1, 1, 1000.0, 32632), (2, 0, 160.0, 32632), (2, 1, 320.0, 32632)]
    placed += [(4, 0, 500.0, 32632), (3, 0, 0.0, 32633)]
    to_zone_33 = Transformer.from_crs(32632, 32633, always_xy=True)
    east, north = to_zone_33.transform(400000 + 40, 5000000 - 50)  # 40 m east, 50 m south of ROI 1's first patch
    beside_east, beside_north = to_zone_33.transform(400000 + 1000 + 320, 5000000)  # east of ROI 1's second
    corner_east, corner_north = to_zone_33.transform(400000 + 1200, 5000000 - 100)  # ROI 1's second's corner
    origins = {(5, 0): (east, north), (5, 1): (beside_east, beside_north), (5, 2): (corner_east, corner_north)}
    placed += [(5, 0, 0.0, 32633), (5, 1, 0.0, 32633), (5, 2, 0.0, 32633)]
    for roi, patch, west, epsg in placed:
        x, y = origins.get((roi, patch), (400000 + west, 5000000))
        grid = {"crs": CRS.from_epsg(epsg), "transform": from_origin(x, y, 10, 10)}
        for sensor, path in release_triplet(root, "ROIs0_own", roi, patch).paths().items():
            path.parent.mkdir(parents=True, exist_ok=True)
            bands = 2 if sensor == "s1" else 13
            write_geotiff(path, rng.integers(1, 5000, size=(bands, 32, 32)).astype(np.float32), **grid)
    with caplog.at_level(logging.WARNING):
        report = index_dataset(
            root,
            tmp_path / "files.csv",
            val_rois={"ROIs0_own/3", "ROIs0_own/5"},
            test_rois={"ROIs0_own/2", "ROIs0_own/4"},
        )
    assert report.on_training_ground == {
        2: (2, ["ROIs0_own/5"], ["ROIs0_own/1"]),
        3: (1, ["ROIs0_own/2"], ["ROIs0_own/1"]),
    }
    warned = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert warned == [
        "1 of the 3 test patches (ROI ROIs0_own/2) lie on ground that training patches cover (ROI ROIs0_own/1): a "
        "model would be scored there on ground it trained on; give ROIs of one place one split (--val-rois, "
        "--test-rois)",
        "2 of the 4 validation patches (ROI ROIs0_own/5) lie on ground that training patches cover (ROI "
        "ROIs0_own/1): a model would be scored there on ground it trained on; give ROIs of one place one split "
        "(--val-rois, --test-rois)",
    ]


def test_footprints_on_two_utm_zones_are_compared_by_their_ground() -> None:
    """A 10 km square on zone 32 by the zone's edge; the same ground's middle on zone 33 (by pyproj): overlapping;
    a square on zone 33 100 m east of the first's east edge (both its corners taken there by pyproj): not; the
    first's numbers on zone 33 (6 degrees east): not; a footprint without a CRS: not compared."""
    from dsen2cr.rasters import Footprint

    first = Footprint("EPSG:32632", (690000.0, 5800000.0, 700000.0, 5810000.0))
    to_33 = Transformer.from_crs(32632, 32633, always_xy=True)
    (west, south), (east, north) = to_33.transform(695000, 5803000), to_33.transform(699000, 5807000)
    middle = Footprint("EPSG:32633", (west, south, east, north))
    corners = [to_33.transform(700000, y) for y in (5800000, 5810000)]
    edge = max(x for x, _ in corners) + 100
    beside = Footprint("EPSG:32633", (edge, min(y for _, y in corners), edge + 10000, max(y for _, y in corners)))
    assert first.overlaps(middle) and middle.overlaps(first)
    assert not first.overlaps(beside) and not beside.overlaps(first)
    assert not first.overlaps(Footprint("EPSG:32633", first.bounds))
    assert not first.overlaps(Footprint("", first.bounds))
