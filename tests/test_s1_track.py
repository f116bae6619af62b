"""S1's relative orbit (its track): read from a STAC item, GDAL's Sentinel-1 tags or a product's name, checked against
the relative orbits ESA's own manifests state; kept to with ``pair --relative-orbit`` and ``data triplets
--relative-orbit``, said where a batch's S1 lie on several, and recorded on what remove-clouds and data patches
write."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
from rasterio.crs import CRS
from rasterio.transform import from_origin

from conftest import split_s1, write_dated_s2, write_s1_item
from dsen2cr.cli import main
from dsen2cr.data.triplets import TripletRules, choose_triplets
from dsen2cr.errors import DSen2CRError
from dsen2cr.inputs.pairing import pair_scenes
from dsen2cr.inputs.s1_time import relative_orbit, s1_facts, track_of_name
from dsen2cr.outputs.geotiff import write_geotiff

UTM32N = CRS.from_epsg(32632)
TILE_LEFT = 500000
S2_NAME = "T32TPT_20230610T101559_10m.tif"  # sensed 2023-06-10 10:15:59 UTC

#: Products and the absolute and relative orbits their manifest.safe states (ESA's numbers, as xarray-sentinel's
#: and the sat extension's test data record them): not computed here.
ESA_MANIFESTS = [
    ("S1A_IW_GRDH_1SDV_20160822T182823_20160822T182848_012717_013FFE_90AF", "S1A", 12717, 45),
    ("S1A_S6_SLC__1SDV_20210402T115512_20210402T115535_037271_046407_39FD", "S1A", 37271, 99),
    ("S1A_S3_SLC__1SDV_20210401T152855_20210401T152914_037258_04638E_6001", "S1A", 37258, 86),
    ("S1A_EW_SLC__1SDH_20210403T122536_20210403T122630_037286_046484_8152", "S1A", 37286, 114),
    ("S1B_WV_SLC__1SSV_20210403T083025_20210403T084452_026300_032390_D542", "S1B", 26300, 24),
    ("S1B_IW_GRDH_1SDV_20210401T052623_20210401T052648_026269_032297_ECC8", "S1B", 26269, 168),
]


@pytest.mark.parametrize("name, mission, absolute, expected", ESA_MANIFESTS)
def test_relative_orbit_is_the_one_esa_states(name: str, mission: str, absolute: int, expected: int) -> None:
    assert relative_orbit(mission, absolute) == expected
    assert relative_orbit(mission.lower(), absolute) == expected
    assert track_of_name(f"{name}.SAFE") == expected
    assert track_of_name(f"{name.lower()}_db.tif") == expected  # an export named after it


@pytest.mark.parametrize(
    "name, track",
    [  # OPERA RTC-S1 bursts, as ASF serves them: the burst ID's T087 is the track
        ("OPERA_L2_RTC-S1_T087-185679-IW2_20200101T161622Z_20250911T203016Z_S1A_30_v1.0_VH.tif", 87),
        ("OPERA_L2_RTC-S1_T168-359429-IW2_20231217T052415Z_20231220T055805Z_S1A_30_v1.0_VV.tif", 168),
        ("OPERA_L2_RTC-S1_T165-352512-IW3_20200723T000516Z_20250908T213809Z_S1B_30_v1.0_VH.tif", 165),
        ("OPERA_L2_RTC-S1_T002-002345-IW1_20240101T000000Z_20240102T000000Z_S1A_30_v1.0_VV.tif", 2),
    ],
)
def test_opera_bursts_say_their_track(name: str, track: int) -> None:
    assert track_of_name(name) == track


def test_names_and_satellites_that_say_no_relative_orbit() -> None:
    assert track_of_name("S1A_IW_20230608T051234_DVP_RTC30_G_gpuned_ABCD_VV.tif") is None  # HyP3 RTC: no orbit
    assert track_of_name("s1_20230608.tif") is None
    assert relative_orbit("S1D", 1000) is None  # a satellite whose numbering this version does not know
    # S1C: MintPy's offset; S1C flies S1A's tracks 6 days later (180 degrees apart on one orbit), so its orbit
    # 9435 (2026-09-13 23:11 UTC) lies on the track S1A flew 6 days before: 28940.56 orbits after S1A's orbit 37271
    # (relative 99) crossed the equator (2021-04-02 11:17:22, ESA's manifest), at 12 * 86400 / 175 s an orbit
    by_phase = (99 - 1 + 28940) % 175 + 1
    assert relative_orbit("S1C", 9435) == by_phase == 164


def _s1(folder: Path, name: str, **tags: str) -> Path:
    """S1 over the whole scene (UTM 32N, 10 m) named ``name``, with ``tags``."""
    db = np.random.default_rng(2).uniform(-25, -5, size=(2, 120, 160)).astype(np.float32)
    path = write_geotiff(folder / name, db, crs=UTM32N, transform=from_origin(TILE_LEFT, 5000000, 10, 10))
    if tags:
        with rasterio.open(path, "r+") as dataset:
            dataset.update_tags(**tags)
    return path


def _product(stamp: str, mission: str = "S1A", absolute: int = 12717) -> str:
    """A GRD product's name of ``mission``'s ``absolute`` orbit, sensed at ``stamp``, as exported (``_db.tif``)."""
    return f"{mission}_IW_GRDH_1SDV_{stamp}_{stamp}_{absolute:06d}_013FFE_90AF_db.tif"


def test_what_says_the_relative_orbit(workdir: Path) -> None:
    named = _s1(workdir, _product("20230608T051234"))  # S1A orbit 12717: relative 45
    assert s1_facts(str(named)).track == 45
    # GDAL's Sentinel-1 driver's tags (an export of a product: gdal_translate keeps them) under any name
    gdal = _s1(workdir, "export.tif", MISSION_ID="S1B", ORBIT_NUMBER="26269", ACQUISITION_START_TIME="2023-06-08")
    assert s1_facts(str(gdal)).track == 168
    # dsen2cr's own tag says it over the name's
    tagged = _s1(workdir, _product("20230608T051235"), DSEN2CR_S1_RELATIVE_ORBIT="117")
    assert s1_facts(str(tagged)).track == 117
    assert s1_facts(str(_s1(workdir, "s1.tif"))).track is None
    # a VV,VH pair: whichever file says it
    pair = split_s1(named, "vv.tif", "S1A_IW_GRDH_1SDV_20230608T051234_20230608T051259_012717_013FFE_90AF_VH.tif")
    assert s1_facts(pair).track == 45
    # STAC: sat:relative_orbit, else sat:absolute_orbit of its platform
    item = write_s1_item(named, "rel.json", datetime="2023-06-08T05:12:34Z", **{"sat:relative_orbit": 22})
    assert s1_facts(str(item)).track == 22
    properties = {"sat:absolute_orbit": 26300, "platform": "sentinel-1b"}
    item = write_s1_item(named, "abs.json", datetime="2023-06-08T05:12:34Z", **properties)
    assert s1_facts(str(item)).track == 24
    # frames of one pass: the pass's start's (the earlier frame's), whichever order they are given in
    later = _s1(workdir, "S1A_IW_GRDH_1SDV_20230608T051259_20230608T051324_012718_013FFE_90AF_db.tif")
    assert s1_facts(f"{later}+{named}").track == 45


def _scene(folder: Path, stamp: str = "20230610T101559") -> Path:
    """A 120 x 160 px clear scene on the S1's grid, sensed at ``stamp`` (its name says so)."""
    dn = np.random.default_rng(1).integers(200, 3000, size=(13, 120, 160)).astype(np.uint16)
    dn[10] = 20  # B10 of a clear sky
    path = folder / f"T32TPT_{stamp}_10m.tif"
    return write_geotiff(path, dn, crs=UTM32N, transform=from_origin(TILE_LEFT, 5000000, 10, 10))


def test_pair_keeps_the_relative_orbits_asked_for(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    s2 = _scene(workdir)
    near = _s1(workdir, _product("20230609T171234", absolute=12717))  # 0.7 days before S2, relative orbit 45
    far = _s1(workdir, _product("20230607T051234", absolute=12790))  # 3.2 days before, (12790 - 73) % 175 + 1 = 118
    argv = ["pair", "--s2", str(s2), "--s1", str(near), str(far), "--out", str(workdir / "scenes.csv")]
    capsys.readouterr()
    assert main(argv) == 0
    assert f"S1 {near}, 0.7 days before S2, covering 100% of the scene, relative orbit 45" in capsys.readouterr().out
    assert main([*argv, "--overwrite", "--relative-orbit", "118"]) == 0
    assert f"S1 {far}, 3.2 days before S2, covering 100% of the scene, relative orbit 118" in capsys.readouterr().out
    with open(workdir / "scenes.csv", newline="") as manifest:
        assert [row["s1"] for row in csv.DictReader(manifest)] == [far.name]
    assert main([*argv, "--overwrite", "--relative-orbit", "7", "118"]) == 0  # any of those given
    assert [p.track for p in pair_scenes([str(s2)], [str(near), str(far)], tracks=(118,))] == [118]


def test_pair_says_when_its_s1_lie_on_several_relative_orbits(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    s2 = [str(_scene(workdir, stamp)) for stamp in ("20230610T101559", "20230622T101559", "20230704T101559")]
    s1 = [  # one 0.7 days before each scene: on relative orbits 45, 45, then 118
        _s1(workdir, _product("20230609T171234", absolute=12717)),
        _s1(workdir, _product("20230621T171234", absolute=12892)),  # 175 orbits (12 days) later: 45 again
        _s1(workdir, _product("20230703T171234", absolute=13140)),  # (13140 - 73) % 175 + 1 = 118
    ]
    capsys.readouterr()
    assert main(["pair", "--s2", *s2, "--s1", *map(str, s1), "--out", str(workdir / "scenes.csv")]) == 0
    out = capsys.readouterr().out
    assert (
        "S1 chosen on 2 relative orbits (scenes each: 45: 2, 118: 1); each sees the ground from its own angle: "
        "--relative-orbit same keeps the one that serves every scene, if one does" in out
    )
    assert main(["pair", "--s2", *s2[:2], "--s1", *map(str, s1), "--out", str(workdir / "two.csv")]) == 0
    assert "relative orbits (scenes each" not in capsys.readouterr().out  # one track: nothing to say


def test_triplets_keep_the_relative_orbits_asked_for(workdir: Path) -> None:
    cloudy = write_dated_s2(workdir, TILE_LEFT, "20230610T101559", cloud_columns=64)
    clear = write_dated_s2(workdir, TILE_LEFT, "20230601T101559")
    near = _s1(workdir, _product("20230531T171234", absolute=12717))  # 0.7 days before the target: 45
    far = _s1(workdir, _product("20230529T051234", absolute=12790))  # 3.2 days before it: 118
    inputs = ([str(cloudy), str(clear)], [str(near), str(far)])
    [nearest] = choose_triplets(*inputs).triplets
    assert (nearest.s1, nearest.s1_track) == (str(near), 45)
    [kept] = choose_triplets(*inputs, TripletRules(tracks=(118,))).triplets
    assert (kept.s1, kept.s1_track) == (str(far), 118)
    manifest = workdir / "pairs.csv"
    argv = ["data", "triplets", "--s2", str(cloudy), str(clear), "--s1", str(near), str(far), "--out", str(manifest)]
    assert main([*argv, "--relative-orbit", "118"]) == 0
    with open(manifest, newline="") as file:
        assert [row["s1"] for row in csv.DictReader(file)] == [far.name]


def test_outputs_record_the_relative_orbit(workdir: Path) -> None:
    s2, s1 = workdir.scene()
    s2 = s2.rename(s2.with_name(S2_NAME))
    s1 = s1.rename(s1.with_name(_product("20230608T051234", "S1B", 26300)))  # relative orbit 24
    with rasterio.open(s1, "r+") as dataset:
        dataset.update_tags(ORBIT_DIRECTION="DESCENDING")
    out, item = workdir / "out.tif", workdir / "out.json"
    weights = workdir.weights("dsen2cr-small")
    argv = ["remove-clouds", "--weights", str(weights), "--s2", str(s2), "--s1", str(s1), "--no-progress"]
    assert main([*argv, "--device", "cpu", "--out", str(out), "--stac-item", str(item)]) == 0
    with rasterio.open(out) as dataset:
        assert dataset.tags()["DSEN2CR_S1_RELATIVE_ORBIT"] == "24"
    lineage = pystac.Item.from_file(str(item)).properties["processing:lineage"]
    assert "(sensed 2023-06-08T05:12:34Z, 2.2 days before S2, descending pass, relative orbit 24)" in lineage
    # data patches record it too, and a patch given as S1 says it again
    clear = workdir / "clear.tif"
    with rasterio.open(s2) as dataset:
        dark = dataset.read() // 4
        dark[10] = 20  # B10 of a clear sky
        write_geotiff(clear, dark, crs=dataset.crs, transform=dataset.transform)
    argv = ["data", "patches", "--s2-cloudy", str(s2), "--s2", str(clear), "--s1", str(s1), "--size", "32"]
    assert main([*argv, "--out", str(workdir / "patches"), "--roi", "1", "--no-progress"]) == 0
    [patch, *_] = sorted((workdir / "patches").rglob("*_s1_*.tif"))
    with rasterio.open(patch) as dataset:
        assert dataset.tags()["DSEN2CR_S1_RELATIVE_ORBIT"] == "24"
    assert s1_facts(str(patch)).track == 24


def test_outputs_say_unknown_where_nothing_says(workdir: Path) -> None:
    s2, s1 = workdir.scene()
    weights = workdir.weights("dsen2cr-small")
    argv = ["remove-clouds", "--weights", str(weights), "--s2", str(s2), "--s1", str(s1), "--no-progress"]
    assert main([*argv, "--device", "cpu", "--out", str(workdir / "out.tif")]) == 0
    with rasterio.open(workdir / "out.tif") as dataset:
        assert dataset.tags()["DSEN2CR_S1_RELATIVE_ORBIT"] == "unknown"


def _series(workdir: Path) -> tuple[list[str], dict[str, Path]]:
    """Three scenes 12 days apart (June 10, June 22, July 4, 10:15:59) and S1 of two tracks: 45 sensed 0.7107 days
    (17 h 3 min 25 s) before the first two scenes, 118 0.7893 days (18 h 56 min 35 s) after the first and 0.7107
    days before the third."""
    s2 = [str(_scene(workdir, stamp)) for stamp in ("20230610T101559", "20230622T101559", "20230704T101559")]
    s1 = {
        "45 June 9": _s1(workdir, _product("20230609T171234", absolute=12717)),
        "45 June 21": _s1(workdir, _product("20230621T171234", absolute=12892)),
        "118 June 11": _s1(workdir, _product("20230611T051234", absolute=12790)),
        "118 July 3": _s1(workdir, _product("20230703T171234", absolute=13140)),
    }
    return s2, s1


def test_same_relative_orbit_is_the_one_nearest_on_average(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    s2, s1 = _series(workdir)
    candidates = list(map(str, s1.values()))
    nearest = pair_scenes(s2, candidates)  # each scene's nearest: 45, 45, 118
    assert [p.s1 for p in nearest] == [str(s1[k]) for k in ("45 June 9", "45 June 21", "118 July 3")]
    # one track, by hand: 45 serves the third scene with June 21 only, 12.7107 days before it: mean
    # (0.7107 + 0.7107 + 12.7107) / 3 = 4.7107; 118 serves the second with June 11, 11.2107 days before it (July 3 is
    # 11.2893 after): mean (0.7893 + 11.2107 + 0.7107) / 3 = 4.2369, the nearer
    same = pair_scenes(s2, candidates, tracks="same")
    assert [p.s1 for p in same] == [str(s1[k]) for k in ("118 June 11", "118 June 11", "118 July 3")]
    assert [p.track for p in same] == [118] * 3
    assert [round(abs(p.days), 4) for p in same] == [0.7893, 11.2107, 0.7107]
    # within 12 days 45 serves two scenes only, 118 all three; within 10 days neither serves all
    assert [p.track for p in pair_scenes(s2, candidates, tracks="same", max_days=12)] == [118] * 3
    with pytest.raises(DSen2CRError, match=r"no relative orbit has S1 .* within 10 days \(45: 2, 118: 2\)"):
        pair_scenes(s2, candidates, tracks="same", max_days=10)
    argv = ["pair", "--s2", *s2, "--s1", *candidates, "--out", str(workdir / "scenes.csv")]
    capsys.readouterr()
    assert main([*argv, "--relative-orbit", "same"]) == 0
    out = capsys.readouterr().out
    assert "--relative-orbit same: relative orbit 118, whose S1 serve every scene, 4.2 days from S2 on average" in out
    assert "relative orbits (scenes each" not in out
    with open(workdir / "scenes.csv", newline="") as manifest:
        assert [row["s1"] for row in csv.DictReader(manifest)] == [s1[k].name for k in ("118 June 11",) * 2] + [
            s1["118 July 3"].name
        ]


def test_a_collections_items_are_kept_to_their_relative_orbit(workdir: Path) -> None:
    """A search's S1 items (an ItemCollection, as Planetary Computer returns them: sat:relative_orbit said):
    ``--relative-orbit`` keeps the item of that track, the nearer one on another left out."""
    import json

    s2 = _scene(workdir)
    features = []
    for item_id, stamp, track in (("near", "2023-06-09T17:12:34Z", 45), ("far", "2023-06-07T05:12:34Z", 118)):
        (workdir / item_id).mkdir()
        path = _s1(workdir / item_id, "s1.tif")
        item = json.loads(write_s1_item(path, datetime=stamp, **{"sat:relative_orbit": track}).read_text())
        for asset in item["assets"].values():
            asset["href"] = f"{item_id}/{asset['href']}"
        features.append({**item, "id": item_id})
    collection = workdir / "s1_items.json"
    collection.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    [nearest] = pair_scenes([str(s2)], [str(collection)])
    assert (nearest.s1, nearest.track) == (f"{collection}#near", 45)
    [kept] = pair_scenes([str(s2)], [str(collection)], tracks=(118,))
    assert (kept.s1, kept.track) == (f"{collection}#far", 118)
    manifest = workdir / "scenes.csv"
    argv = ["pair", "--s2", str(s2), "--s1", str(collection), "--out", str(manifest)]
    assert main([*argv, "--relative-orbit", "118"]) == 0
    with open(manifest, newline="") as file:
        assert [row["s1"] for row in csv.DictReader(file)] == ["s1_items.json#far"]
