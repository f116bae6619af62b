"""STAC ItemCollections (a search's results saved as one file): pair and data triplets take each of their items, and
every command reads one of them as ``items.json#ID``; checked against the same items given one file each."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.crs import CRS
from rasterio.transform import from_origin

from conftest import write_dated_s2, write_s1_item, write_stac_item
from dsen2cr.cli import main
from dsen2cr.inputs import is_stac, local_inputs
from dsen2cr.inputs.stac import collection_items, item_reference
from dsen2cr.outputs.geotiff import write_geotiff
from dsen2cr.scene.jobs import scene_stem


def _collection(path: Path, items: dict[str, Path]) -> Path:
    """The items (``id: item file``) as one ItemCollection ``path``, their assets' hrefs made relative to it."""
    features = []
    for item_id, item_file in items.items():
        item = json.loads(item_file.read_text())
        for asset in item["assets"].values():
            asset["href"] = (item_file.parent / asset["href"]).relative_to(path.parent).as_posix()
        features.append({**item, "id": item_id})
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


def _s1(folder: Path, stamp: str) -> Path:
    """S1 over the scenes (UTM 32N, 20 m), sensed at ``stamp``."""
    db = np.random.default_rng(int(stamp[:8])).uniform(-25, -5, size=(2, 60, 80)).astype(np.float32)
    db[1] -= 6
    folder.mkdir(parents=True, exist_ok=True)
    return write_geotiff(
        folder / f"s1_{stamp}.tif", db, crs=CRS.from_epsg(32632), transform=from_origin(500000, 5000000, 20, 20)
    )


def test_references() -> None:
    assert item_reference("items.json#S2B_MSIL2A_1") == ("items.json", "S2B_MSIL2A_1")
    assert item_reference("https://host/search?x=1#S2B") == ("https://host/search?x=1", "S2B")
    assert item_reference("scene#1.tif") == ("scene#1.tif", None)  # a file name holding '#'
    assert item_reference("a#b.json") == ("a#b.json", None)
    assert is_stac("items.json#S2B") and not is_stac("scene#1.tif")
    assert scene_stem("search/items.json#S2B_MSIL2A_20230610") == "S2B_MSIL2A_20230610"
    assert local_inputs("items.json#S2B", None) == [("s2", Path("items.json"))]  # the file an output must not replace


def test_pair_takes_each_item_and_remove_clouds_reads_them(workdir: Path) -> None:
    for folder in ("a", "b"):
        (workdir / folder).mkdir()
    a = write_dated_s2(workdir / "a", 500000, "20230610T101559", cloud_columns=64)
    b = write_dated_s2(workdir / "b", 500000, "20230620T101559", cloud_columns=30)
    items = {
        "S2B_A": write_stac_item(a, workdir / "a" / "item", datetime="2023-06-10T10:15:59Z"),
        "S2A_B": write_stac_item(b, workdir / "b" / "item", datetime="2023-06-20T10:15:59Z"),
    }
    s1_items = {
        "S1A_0609": write_s1_item(_s1(workdir / "s1a", "20230609T051234"), datetime="2023-06-09T05:12:34Z"),
        "S1A_0621": write_s1_item(_s1(workdir / "s1b", "20230621T051234"), datetime="2023-06-21T05:12:34Z"),
    }
    s2_collection = _collection(workdir / "s2_items.json", items)
    s1_collection = _collection(workdir / "s1_items.json", s1_items)
    assert collection_items(str(s2_collection)) == [f"{s2_collection}#S2B_A", f"{s2_collection}#S2A_B"]
    manifest = workdir / "scenes.csv"
    (workdir / "out").mkdir()
    argv = ["pair", "--s2", str(s2_collection), "--s1", str(s1_collection), "--out", str(manifest)]
    assert main([*argv, "--images", str(workdir / "out")]) == 0
    with manifest.open(newline="") as file:
        rows = list(csv.DictReader(file))
    assert rows == [
        {"s2": "s2_items.json#S2B_A", "s1": "s1_items.json#S1A_0609", "out": "out/S2B_A_cloudfree.tif"},
        {"s2": "s2_items.json#S2A_B", "s1": "s1_items.json#S1A_0621", "out": "out/S2A_B_cloudfree.tif"},
    ]
    weights = str(workdir.weights("dsen2cr-small"))
    assert main(["remove-clouds", "--weights", weights, "--manifest", str(manifest), "--no-progress"]) == 0
    # each output is what the same items, given one file each, give
    for row, item, s1_item in zip(rows, items.values(), s1_items.values(), strict=True):
        alone = workdir / f"alone_{scene_stem(row['s2'])}.tif"
        argv = ["remove-clouds", "--weights", weights, "--s2", str(item), "--s1", str(s1_item), "--out", str(alone)]
        assert main([*argv, "--no-progress"]) == 0
        with rasterio.open(workdir / row["out"]) as listed, rasterio.open(alone) as given:
            np.testing.assert_array_equal(listed.read(), given.read())
            assert listed.tags()["DSEN2CR_S1_SENSING_TIME"] == given.tags()["DSEN2CR_S1_SENSING_TIME"]


def test_data_triplets_takes_each_item(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    for folder in ("a", "b"):
        (workdir / folder).mkdir()
    cloudy = write_dated_s2(workdir / "a", 500000, "20230610T101559", cloud_columns=64)
    clear = write_dated_s2(workdir / "b", 500000, "20230601T101559")
    items = {
        "cloudy": write_stac_item(cloudy, workdir / "a" / "item", datetime="2023-06-10T10:15:59Z"),
        "clear": write_stac_item(clear, workdir / "b" / "item", datetime="2023-06-01T10:15:59Z"),
    }
    collection = _collection(workdir / "items.json", items)
    s1 = _s1(workdir, "20230531T051234")
    manifest = workdir / "pairs.csv"
    assert main(["data", "triplets", "--s2", str(collection), "--s1", str(s1), "--out", str(manifest)]) == 0
    with manifest.open(newline="") as file:
        [row] = list(csv.DictReader(file))
    assert (row["s2_cloudy"], row["s2"]) == ("items.json#cloudy", "items.json#clear")
    out = workdir / "patches"
    assert main(["data", "patches", "--manifest", str(manifest), "--out", str(out), "--size", "40", "-q"]) == 0
    patch = out / "ROIs0_own_s2" / "s2_1" / "ROIs0_own_s2_1_p0.tif"
    with rasterio.open(patch) as dataset:
        assert dataset.tags()["DSEN2CR_SOURCE"] == "items.json#clear"
        assert dataset.tags()["DSEN2CR_SENSING_TIME"].startswith("2023-06-01T10:15:59")


def test_a_collection_by_url_is_fetched_once(workdir: Path) -> None:
    """pair reads each item of a collection by URL several times (its bands, time, files): one request serves all."""
    import http.server
    import threading

    for folder in ("a", "b"):
        (workdir / folder).mkdir()
    items = {
        "A": write_stac_item(write_dated_s2(workdir / "a", 500000, "20230610T101559"), workdir / "a" / "item"),
        "B": write_stac_item(write_dated_s2(workdir / "b", 500000, "20230620T101559"), workdir / "b" / "item"),
    }
    collection = _collection(workdir / "items.json", items)
    document = json.loads(collection.read_text())
    for feature, item in zip(document["features"], items.values(), strict=True):  # assets by file:// URI
        feature["properties"]["datetime"] = f"2023-06-{10 if feature['id'] == 'A' else 20}T10:15:59Z"
        for asset in feature["assets"].values():
            asset["href"] = (item.parent / Path(asset["href"]).name).resolve().as_uri()
    body = json.dumps(document).encode()
    requests = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            requests.append(self.path)
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/search.json"
    s1 = _s1(workdir, "20230611T051234")
    try:
        assert main(["pair", "--s2", url, "--s1", str(s1), "--out", str(workdir / "scenes.csv")]) == 0
    finally:
        httpd.shutdown()
    with (workdir / "scenes.csv").open(newline="") as file:
        assert [row["s2"] for row in csv.DictReader(file)] == [f"{url}#A", f"{url}#B"]
    assert requests == ["/search.json"]


def test_remove_clouds_without_sar_takes_each_item(workdir: Path) -> None:
    for folder in ("a", "b", "out"):
        (workdir / folder).mkdir()
    items = {
        "A": write_stac_item(write_dated_s2(workdir / "a", 500000, "20230610T101559", cloud_columns=64), workdir / "a"),
        "B": write_stac_item(write_dated_s2(workdir / "b", 500000, "20230620T101559"), workdir / "b"),
    }
    collection = _collection(workdir / "items.json", items)
    weights = str(workdir.weights("dsen2cr-small-nosar"))
    argv = ["remove-clouds", "--weights", weights, "--no-progress"]
    assert main([*argv, "--s2", str(collection), "--out", f"{workdir / 'out'}/"]) == 0
    assert sorted(path.name for path in (workdir / "out").iterdir()) == ["A_cloudfree.tif", "B_cloudfree.tif"]
    assert main([*argv, "--s2", str(items["A"]), "--out", str(workdir / "alone.tif")]) == 0
    with rasterio.open(workdir / "out" / "A_cloudfree.tif") as listed, rasterio.open(workdir / "alone.tif") as given:
        np.testing.assert_array_equal(listed.read(), given.read())


def test_frames_of_one_pass_in_a_collection_are_joined(workdir: Path) -> None:
    """A search's S1 items, two frames of one pass each over half of the scene: pair joins the two items; the image
    equals the one made with the S1 they were cut from, at the seam too."""
    (workdir / "a").mkdir()
    scene = write_dated_s2(workdir / "a", 500000, "20230610T101559", cloud_columns=64)
    whole = _s1(workdir / "whole", "20230609T051234")
    with rasterio.open(whole) as dataset:
        db, transform = dataset.read(), dataset.transform
    frames = {}
    for item_id, stamp, columns in (
        ("S1A_W", "20230609T051234", slice(45, None)),
        ("S1A_E", "20230609T051259", slice(0, 40)),
    ):
        part = db.copy()
        part[:, :, columns] = np.nan
        (workdir / item_id).mkdir()
        path = write_geotiff(workdir / item_id / "s1.tif", part, crs=CRS.from_epsg(32632), transform=transform)
        frames[item_id] = write_s1_item(path, datetime=f"{stamp[:4]}-{stamp[4:6]}-{stamp[6:8]}T05:12:{stamp[-2:]}Z")
    collection = _collection(workdir / "s1_items.json", frames)
    manifest = workdir / "scenes.csv"
    assert main(["pair", "--s2", str(scene), "--s1", str(collection), "--out", str(manifest)]) == 0
    with manifest.open(newline="") as file:
        [row] = list(csv.DictReader(file))
    assert row["s1"] == "s1_items.json#S1A_W+s1_items.json#S1A_E"
    weights = str(workdir.weights("dsen2cr-small"))
    assert main(["remove-clouds", "--weights", weights, "--manifest", str(manifest), "--no-progress"]) == 0
    alone = workdir / "alone.tif"
    argv = ["remove-clouds", "--weights", weights, "--s2", str(scene), "--s1", str(whole), "--out", str(alone)]
    assert main([*argv, "--no-progress"]) == 0
    with rasterio.open(workdir / row["out"]) as listed, rasterio.open(alone) as given:
        joined, one = listed.read(), given.read()
    # the 20 m frames share a lattice: mosaicked on it and warped at once, as the S1 they were cut from (the warp's
    # arithmetic some 1e-4 dB apart: a DN may round the other way)
    assert np.abs(joined.astype(int) - one.astype(int)).max() <= 1
