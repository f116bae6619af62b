"""Bad input to ``dsen2cr pair``, table-driven through the console entry point (the ``check_case`` fixture): each
row is an unusual but plausible input; the command exits 2 with one line on stderr naming the file or option and
the problem, no traceback, inputs unchanged, no manifest left behind."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.transform import from_origin

from conftest import split_s1, write_s1_item, write_s1_product
from dsen2cr.outputs.geotiff import write_geotiff

UTM32N = CRS.from_epsg(32632)
S2_NAME = "T32TPT_20230610T101559_10m.tif"
S1_NAME = "S1A_IW_GRDH_1SDV_20230608T051234_20230608T051259_048901_05E1A2_3C4F_db.tif"
RTC_NAME = "S1A_IW_20230608T051234_DVP_RTC10_G_gpuned_5F3A.tif"  # ASF HyP3's: no orbit in it


def _s2(tmp: Path, name: str = S2_NAME, *, empty: bool = False) -> Path:
    """A 40 x 50 px scene (the workdir's; ``empty``: all nodata) under ``name`` (folders in it made)."""
    s2, _ = tmp.scene(s2=np.zeros((13, 40, 50), np.uint16) if empty else None)
    (tmp / name).parent.mkdir(parents=True, exist_ok=True)
    (tmp / name).write_bytes(s2.read_bytes())
    return tmp / name


def _s1(tmp: Path, name: str = S1_NAME, *, origin: tuple[float, float] = (500000, 5000000)) -> Path:
    """The workdir's S1 under ``name``, its grid at ``origin``."""
    _, s1 = tmp.scene()
    db = np.stack([np.full((40, 50), -10.0), np.full((40, 50), -17.0)]).astype(np.float32)
    if origin == (500000, 5000000):
        (tmp / name).write_bytes(s1.read_bytes())
        return tmp / name
    return write_geotiff(tmp / name, db, crs=UTM32N, transform=from_origin(*origin, 10, 10))


def _tagged(s1: Path, direction: str) -> Path:
    """``s1`` tagged with the pass GDAL's Sentinel-1 driver reads (``ORBIT_DIRECTION``)."""
    with rasterio.open(s1, "r+") as dataset:
        dataset.update_tags(ORBIT_DIRECTION=direction)
    return s1


def _two_passes(tmp: Path) -> str:
    """A ``VV,VH`` pair of the workdir's S1 whose VV says an ascending pass and VH a descending one."""
    stem = "S1A_IW_GRDH_1SDV_20230608T051234_20230608T051259_048901_05E1A2_3C4F"
    pair = split_s1(_s1(tmp), f"{stem}_VV.tif", f"{stem}_VH.tif")
    vv, vh = map(Path, pair.split(","))
    _tagged(vv, "ASCENDING")
    _tagged(vh, "DESCENDING")
    return pair


def _two_tracks(tmp: Path) -> tuple[list[Path], list[Path]]:
    """Scenes of June 10 and June 22 (10:15:59), S1 of relative orbit 45 (S1A orbit 12717) of June 9 (05:12:34) and
    of 118 (orbit 12790) of June 23."""
    scenes = [_s2(tmp, "T32TPT_20230610T101559_10m.tif"), _s2(tmp, "T32TPT_20230622T101559_10m.tif")]
    names = [
        f"S1A_IW_GRDH_1SDV_{stamp}_{stamp}_{orbit}_013FFE_90AF_db.tif"
        for stamp, orbit in (("20230609T051234", "012717"), ("20230623T051234", "012790"))
    ]
    return scenes, [_s1(tmp, name) for name in names]


def _collection(tmp: Path, ids: list[str]) -> Path:
    """An ItemCollection ``s2_items.json`` of items with ``ids`` (an empty one: no id)."""
    import json

    features = [{"type": "Feature", "assets": {}, **({"id": item_id} if item_id else {})} for item_id in ids]
    (tmp / "s2_items.json").write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return tmp / "s2_items.json"


def _pair(tmp: Path, s2: list[Path], s1: list[Path], *extra: str) -> list[str]:
    return ["pair", "--s2", *map(str, s2), "--s1", *map(str, s1), "--out", str(tmp / "scenes.csv"), *extra]


def _vh_alone(tmp: Path) -> Path:
    """The VH file of an ASF HyP3-like pair of single-polarisation files, its VV file removed."""
    stem = "S1A_IW_20230608T051234_DVP_RTC10_G_gpuned_5F3A"
    vv, vh = map(Path, split_s1(_s1(tmp), f"{stem}_VV.tif", f"{stem}_VH.tif").split(","))
    vv.unlink()
    return vh


CASES = [
    dict(
        name="pair: a single-polarisation S1 file without its partner (VH alone)",
        setup=lambda t: _pair(t, [_s2(t)], [_s1(t), _vh_alone(t)]),
        message="_5F3A_VH.tif: S1 (VV, VH) has 1 band, expected 2; one polarisation a file: give the two as one S1 "
        "pair, VV.tif,VH.tif",
        absent=("scenes.csv",),
    ),
    dict(
        name="pair: a zipped Sentinel-1 GRD product among the S1 (a catalogue's download, not processed)",
        setup=lambda t: _pair(t, [_s2(t)], [_s1(t), write_s1_product(t, zipped=True)]),
        message="SAFE.zip: a Sentinel-1 Level-1 GRD product (amplitude in radar geometry); --s1 takes VV and VH",
        absent=("scenes.csv",),
    ),
    dict(
        name="pair: an S1 candidate whose date nothing says",
        setup=lambda t: _pair(t, [_s2(t)], [_s1(t), _s1(t, "s1.tif")]),
        message="s1.tif: when S1 was sensed is unknown (no metadata says it, nor a date and time such as "
        "20170216T051234 in its name), so it cannot be paired by date",
        absent=("scenes.csv",),
    ),
    dict(
        name="pair: an S2 scene whose date nothing says",
        setup=lambda t: _pair(t, [t.scene()[0]], [_s1(t)]),
        message="s2.tif: when the scene was sensed is unknown",
        absent=("scenes.csv",),
    ),
    dict(
        name="pair: no S1 over the scene",
        setup=lambda t: _pair(t, [_s2(t)], [_s1(t, origin=(600000, 5000000))]),
        message=f"{S2_NAME}: no S1 given holds data over it",
        absent=("scenes.csv",),
    ),
    dict(
        name="pair: an S2 scene without valid pixels",
        setup=lambda t: _pair(t, [_s2(t, empty=True)], [_s1(t)]),
        message=f"{S2_NAME}: S2 has no valid pixels (all nodata or NaN): nothing to pair",
        absent=("scenes.csv",),
    ),
    dict(
        name="pair: the only S1 over the scene lies beyond --s1-max-days",
        setup=lambda t: _pair(t, [_s2(t)], [_s1(t)], "--s1-max-days", "1"),
        message=f"{S2_NAME}: no S1 given covers 95% of it within 1 days; the nearest in time that covers any is ",
        absent=("scenes.csv",),
    ),
    dict(
        name="pair: --min-cover 0",
        setup=lambda t: _pair(t, [_s2(t)], [_s1(t)], "--min-cover", "0"),
        message="--min-cover: must be a share in (0, 1], got 0",
        absent=("scenes.csv",),
    ),
    dict(
        name="pair: --min-cover 95 (a percentage)",
        setup=lambda t: _pair(t, [_s2(t)], [_s1(t)], "--min-cover", "95"),
        message="--min-cover: must be a share in (0, 1], got 95",
        absent=("scenes.csv",),
    ),
    dict(
        name="pair: two S2 scenes of one name in two folders",
        setup=lambda t: _pair(t, [_s2(t, f"a/{S2_NAME}"), _s2(t, f"b/{S2_NAME}")], [_s1(t)]),
        message="--s2: two scenes named T32TPT_20230610T101559_10m: their images would have one name; rename one",
        absent=("scenes.csv",),
    ),
    dict(
        name="pair: --images a folder that does not exist",
        setup=lambda t: _pair(t, [_s2(t)], [_s1(t)], "--images", str(t / "images")),
        message="images: folder does not exist",
        absent=("scenes.csv", "images"),
    ),
    dict(
        name="pair: --mask-out a folder that does not exist",
        setup=lambda t: _pair(t, [_s2(t)], [_s1(t)], "--mask-out", str(t / "masks")),
        message="masks: folder does not exist",
        absent=("scenes.csv", "masks"),
    ),
    dict(
        name="pair: --orbit with a candidate whose pass nothing says",
        setup=lambda t: _pair(t, [_s2(t)], [_s1(t)], "--orbit", "ascending"),
        message=f"{S1_NAME}: --orbit ascending: on which pass S1 was sensed is unknown (no STAC sat:orbit_state, no "
        "ORBIT_DIRECTION tag); give its STAC item, or tag the file (gdal_edit.py -mo ORBIT_DIRECTION=ASCENDING FILE)",
        absent=("scenes.csv",),
    ),
    dict(
        name="pair: --orbit of a pass no candidate was sensed on",
        setup=lambda t: _pair(t, [_s2(t)], [_tagged(_s1(t), "DESCENDING")], "--orbit", "ascending"),
        message="--orbit ascending: none of the 1 S1 given was sensed on that pass",
        absent=("scenes.csv",),
    ),
    dict(
        name="pair: --relative-orbit beyond Sentinel-1's 175",
        setup=lambda t: _pair(t, [_s2(t)], [_s1(t)], "--relative-orbit", "45", "176"),
        message="--relative-orbit: Sentinel-1's are 1 to 175, got 176",
        absent=("scenes.csv",),
    ),
    dict(
        name="pair: --relative-orbit with a candidate whose relative orbit nothing says",
        setup=lambda t: _pair(t, [_s2(t)], [_s1(t, RTC_NAME)], "--relative-orbit", "45"),
        message=f"{RTC_NAME}: --relative-orbit 45: S1's relative orbit is unknown (no STAC sat:relative_orbit, no "
        "MISSION_ID and ORBIT_NUMBER tags, no Sentinel-1 product's or OPERA burst's name); give its STAC item, or "
        "tag the file (gdal_edit.py -mo DSEN2CR_S1_RELATIVE_ORBIT=45 FILE)",
        absent=("scenes.csv",),
    ),
    dict(
        name="pair: --relative-orbit no candidate was sensed on",
        setup=lambda t: _pair(t, [_s2(t)], [_s1(t)], "--relative-orbit", "45", "46"),
        # S1_NAME: S1A's absolute orbit 48901, relative (48901 - 73) % 175 + 1 = 4
        message="--relative-orbit 45 46: none of the 1 S1 given was sensed on it (they lie on relative orbit 4)",
        absent=("scenes.csv",),
    ),
    dict(
        name="pair: --relative-orbit neither a number nor same",
        setup=lambda t: _pair(t, [_s2(t)], [_s1(t)], "--relative-orbit", "T045"),
        message="--relative-orbit: relative orbit numbers (1 to 175), or same alone; got 'T045'",
        absent=("scenes.csv",),
    ),
    dict(
        name="pair: --relative-orbit same where no relative orbit serves every scene",
        setup=lambda t: _pair(t, *_two_tracks(t), "--relative-orbit", "same", "--s1-max-days", "5"),
        # S1 of 45 lies 1.2 days before the first scene and 13.2 before the second; S1 of 118 0.8 days after the
        # second, 12.8 after the first: within 5 days, each serves one
        message="--relative-orbit same: no relative orbit has S1 that covers 95% of every one of the 2 scenes within 5 "
        "days (45: 1, 118: 1): give more S1 of one, or pair the scenes apart",
        absent=("scenes.csv",),
    ),
    dict(
        name="pair: a VV,VH pair whose files say two passes",
        setup=lambda t: _pair(t, [_s2(t)], [_two_passes(t)]),
        message="VV and VH say different passes (ascending, descending): one acquisition is one",
        absent=("scenes.csv",),
    ),
    dict(
        name="pair: an S2 ItemCollection of two items of one id",
        setup=lambda t: _pair(t, [_collection(t, ["a", "a"])], [_s1(t)]),
        message="s2_items.json: two items of the ItemCollection have the id a",
        absent=("scenes.csv",),
    ),
    dict(
        name="pair: an S2 ItemCollection with an item without id",
        setup=lambda t: _pair(t, [_collection(t, ["a", ""])], [_s1(t)]),
        message="s2_items.json: item 1 of the ItemCollection has no id to name it by",
        absent=("scenes.csv",),
    ),
    dict(
        name="pair: an existing manifest without --overwrite",
        setup=lambda t: (t / "scenes.csv").write_text("s2,s1,out\n") and _pair(t, [_s2(t)], [_s1(t)]),
        message="scenes.csv: exists; pass --overwrite to replace it",
        keep=("scenes.csv",),
    ),
    dict(
        name="pair: --out the S1 STAC item read, --overwrite",
        setup=lambda t: [
            "pair",
            "--s2",
            str(_s2(t)),
            "--s1",
            str(write_s1_item(t.scene()[1], "item.json", datetime="2023-06-08T05:12:34Z")),
            "--out",
            str(t / "item.json"),
            "--overwrite",
        ],
        message="item.json: output out would replace",
        keep=("item.json",),
    ),
]


def test_bad_input(bad_input: dict, check_case: Callable[[dict], None]) -> None:
    """Each row of ``CASES`` (parametrized by the ``bad_input`` hook in conftest.py)."""
    check_case(bad_input)
