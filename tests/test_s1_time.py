"""When S1 was sensed and how far from the S2 scene: read from an S1 STAC item, a file's metadata or its name,
recorded on remove-clouds' outputs and its STAC item, warned beyond 12 days, refused beyond --s1-max-days; the
days checked against arithmetic done by hand."""

from __future__ import annotations

import logging
from pathlib import Path

import pystac
import pytest
import rasterio

from conftest import split_s1, write_s1_item
from dsen2cr.cli import main
from dsen2cr.errors import DSen2CRError
from dsen2cr.inputs.product import days_between
from dsen2cr.inputs.s1_time import s1_orbit_direction, s1_sensing_time

S2_NAME = "T32TPT_20230610T101559_10m.tif"  # sensed 2023-06-10 10:15:59 UTC
# a GRD product's name: sensed 2023-06-08 05:12:34 UTC, 2 days 5 h 3 min 25 s before S2
S1_NAME = "S1A_IW_GRDH_1SDV_20230608T051234_20230608T051259_048901_05E1A2_3C4F_db.tif"
GAP_DAYS = -(2 + (5 * 3600 + 3 * 60 + 25) / 86400)


def _tag(path: Path, **tags: str) -> Path:
    with rasterio.open(path, "r+") as dataset:
        dataset.update_tags(**tags)
    return path


def _renamed(path: Path, name: str) -> Path:
    return path.rename(path.with_name(name))


def test_days_between_by_hand() -> None:
    assert days_between("2023-06-10T10:15:59Z", "2023-06-08T05:12:34Z") == pytest.approx(GAP_DAYS, abs=1e-12)
    # a zone and a fraction: 07:12:34.5+02:00 is 05:12:34.5 UTC, half a second later than above
    later = days_between("2023-06-10T10:15:59Z", "2023-06-08T07:12:34.5+02:00")
    assert later == pytest.approx(GAP_DAYS + 0.5 / 86400, abs=1e-12)
    assert days_between("2023-06-08T05:12:34Z", "2023-06-10T10:15:59Z") == pytest.approx(-GAP_DAYS, abs=1e-12)


@pytest.mark.parametrize(
    "case, expected",
    [
        ("metadata", "2023-06-08T05:12:34.123456Z"),  # GDAL's SAFE driver's tag, no zone: UTC
        ("metadata over name", "2023-06-08T05:12:34.123456Z"),
        ("product name", "2023-06-08T05:12:34Z"),
        ("rtc pair", "2023-06-08T05:12:34Z"),
        ("pair, one named", "2023-06-08T05:12:34Z"),
        ("stac item", "2023-06-08T05:12:34Z"),  # 07:12:34+02:00
        ("stac item of a span", "2023-06-08T05:12:34Z"),
        ("nothing says", None),
        ("stac item without a date", None),
    ],
)
def test_s1_sensing_time(workdir: Path, case: str, expected: str | None) -> None:
    _, s1 = workdir.scene()
    given: str
    if case == "metadata":
        given = str(_tag(s1, ACQUISITION_START_TIME="2023-06-08T05:12:34.123456"))
    elif case == "metadata over name":
        named = _renamed(s1, "S1A_IW_GRDH_1SDV_20230620T051234_20230620T051259_049076_05E6F0_1A2B_db.tif")
        given = str(_tag(named, ACQUISITION_START_TIME="2023-06-08T05:12:34.123456"))
    elif case == "product name":
        given = str(_renamed(s1, S1_NAME))
    elif case == "rtc pair":
        stem = "S1A_IW_20230608T051234_DVP_RTC10_G_gpuned_5F3A"
        given = split_s1(s1, f"{stem}_VV.tif", f"{stem}_VH.tif")
    elif case == "pair, one named":
        given = split_s1(s1, "vv.tif", "S1A_IW_20230608T051234_DVP_RTC10_G_gpuned_5F3A_VH.tif")
    elif case == "stac item":
        given = str(write_s1_item(s1, datetime="2023-06-08T07:12:34+02:00"))
    elif case == "stac item of a span":
        given = str(write_s1_item(s1, datetime=None, start_datetime="2023-06-08T05:12:34Z"))
    elif case == "nothing says":
        given = str(s1)
    else:
        given = str(write_s1_item(s1))
    assert s1_sensing_time(given) == expected


def test_a_pair_of_two_acquisitions_is_refused(workdir: Path) -> None:
    _, s1 = workdir.scene()
    pair = split_s1(s1, "S1A_IW_20230608T051234_VV.tif", "S1A_IW_20230620T051234_VH.tif")
    with pytest.raises(DSen2CRError, match="VV and VH were sensed at different times"):
        s1_sensing_time(pair)


def _remove_with_sar(workdir: Path, s2: Path, s1: str, *extra: str) -> int:
    weights = workdir.weights("dsen2cr-small")
    argv = ["remove-clouds", "--weights", str(weights), "--s2", str(s2), "--s1", s1, "--no-progress", *extra]
    return main([*argv, "--device", "cpu"])


def test_outputs_and_item_record_s1s_date(workdir: Path, caplog: pytest.LogCaptureFixture) -> None:
    s2, s1 = workdir.scene()
    s2, s1 = _renamed(s2, S2_NAME), _renamed(s1, S1_NAME)
    out, item = workdir / "out.tif", workdir / "out.json"
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert _remove_with_sar(workdir, s2, str(s1), "--out", str(out), "--stac-item", str(item)) == 0
    with rasterio.open(out) as dataset:
        tags = dataset.tags()
    assert tags["DSEN2CR_S1_SENSING_TIME"] == "2023-06-08T05:12:34Z"
    assert float(tags["DSEN2CR_S1_DAYS_FROM_S2"]) == pytest.approx(GAP_DAYS, abs=0.005)
    assert tags["DSEN2CR_S1_DAYS_FROM_S2"] == "-2.21"
    assert tags["DSEN2CR_S1_ORBIT_DIRECTION"] == "unknown"  # (nothing says)
    assert "S1: sensed 2023-06-08T05:12:34Z, 2.2 days before S2" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and "S1 sensed" in r.getMessage()]
    lineage = pystac.Item.from_file(str(item)).properties["processing:lineage"]
    # its name's absolute orbit 48901 of S1A: relative orbit (48901 - 73) % 175 + 1 = 4
    assert f"with S1 {S1_NAME} (sensed 2023-06-08T05:12:34Z, 2.2 days before S2, relative orbit 4)" in lineage


def test_outputs_and_item_record_s1s_pass(workdir: Path) -> None:
    s2, s1 = workdir.scene()
    s2, s1 = _renamed(s2, S2_NAME), _tag(_renamed(s1, S1_NAME), ORBIT_DIRECTION="DESCENDING")  # as GDAL's driver says
    out, item = workdir / "out.tif", workdir / "out.json"
    assert _remove_with_sar(workdir, s2, str(s1), "--out", str(out), "--stac-item", str(item)) == 0
    with rasterio.open(out) as dataset:
        assert dataset.tags()["DSEN2CR_S1_ORBIT_DIRECTION"] == "descending"
    lineage = pystac.Item.from_file(str(item)).properties["processing:lineage"]
    said = "(sensed 2023-06-08T05:12:34Z, 2.2 days before S2, descending pass, relative orbit 4)"
    assert f"with S1 {S1_NAME} {said}" in lineage


def test_s1_of_another_month_is_warned_and_recorded(workdir: Path, caplog: pytest.LogCaptureFixture) -> None:
    s2, s1 = workdir.scene()
    s2 = _renamed(s2, S2_NAME)
    s1 = _tag(s1, ACQUISITION_START_TIME="2023-07-20T05:12:34Z")  # 39.8 days after S2
    caplog.clear()
    assert _remove_with_sar(workdir, s2, str(s1), "--out", str(workdir / "out.tif")) == 0
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "S1 sensed" in r.getMessage()]
    assert len(warned) == 1 and "39.8 days after S2 (2023-06-10T10:15:59Z)" in warned[0], warned
    with rasterio.open(workdir / "out.tif") as dataset:
        days = (40 * 86400 - 5 * 3600 - 3 * 60 - 25) / 86400  # June 10 to July 20: 40 days, less 5 h 3 min 25 s
        assert dataset.tags()["DSEN2CR_S1_DAYS_FROM_S2"] == f"{days:+.2f}"
    # within --s1-max-days the user accepted it: no warning
    caplog.clear()
    assert _remove_with_sar(workdir, s2, str(s1), "--out", str(workdir / "o2.tif"), "--s1-max-days", "40") == 0
    assert not [r for r in caplog.records if r.levelno == logging.WARNING and "S1 sensed" in r.getMessage()]


def test_unknown_dates_are_recorded_as_unknown(workdir: Path) -> None:
    s2, s1 = workdir.scene()
    assert _remove_with_sar(workdir, s2, str(s1), "--out", str(workdir / "out.tif")) == 0
    with rasterio.open(workdir / "out.tif") as dataset:
        tags = dataset.tags()
    assert tags["DSEN2CR_S1_SENSING_TIME"] == "unknown"
    assert tags["DSEN2CR_S1_DAYS_FROM_S2"] == "unknown"


def test_patches_record_s1s_date(workdir: Path) -> None:
    from dsen2cr.outputs.geotiff import write_geotiff

    s2, s1 = workdir.scene()
    with rasterio.open(s2) as dataset:  # a darker, cloud-free target of the same grid
        clear, crs, transform = dataset.read() // 4, dataset.crs, dataset.transform
    clear[10] = 20  # B10 of a clear sky
    write_geotiff(workdir / "clear.tif", clear, crs=crs, transform=transform)
    s1 = _tag(_renamed(s1, S1_NAME), ORBIT_DIRECTION="ASCENDING")
    argv = ["data", "patches", "--s2-cloudy", str(s2), "--s2", str(workdir / "clear.tif"), "--s1", str(s1)]
    assert main([*argv, "--out", str(workdir / "patches"), "--roi", "1", "--size", "32", "--no-progress"]) == 0
    s1_patches = sorted((workdir / "patches").rglob("*_s1_*.tif"))
    assert s1_patches
    with rasterio.open(s1_patches[0]) as dataset:
        assert dataset.tags()["DSEN2CR_SENSING_TIME"] == "2023-06-08T05:12:34Z"
        assert dataset.tags()["DSEN2CR_S1_ORBIT_DIRECTION"] == "ascending"
    assert s1_orbit_direction(str(s1_patches[0])) == "ascending"  # a patch given as S1 says its pass
