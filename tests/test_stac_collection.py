"""dsen2cr stac-collection: a STAC Collection of a batch's items, read back with pystac (another library's reader):
its extent against one computed by hand, its links resolved to the items, the items left as they were."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pystac
import pytest
from stac_pydantic import Collection as StacCollection

from dsen2cr.cli import main
from dsen2cr.scene.stac_collection import longitude_extent


def _item(folder: Path, item_id: str, bbox: list[float], when: str) -> Path:
    """A minimal STAC item ``folder/<id>.json``."""
    west, south, east, north = bbox
    ring = [[west, south], [east, south], [east, north], [west, north], [west, south]]
    item = {
        "type": "Feature",
        "stac_version": "1.0.0",
        "id": item_id,
        "geometry": {"type": "Polygon", "coordinates": [ring]},
        "bbox": bbox,
        "properties": {"datetime": when, "gsd": 10, "proj:epsg": 32632, "constellation": "sentinel-2"},
        "links": [],
        "assets": {"image": {"href": f"../out/{item_id}.tif", "eo:bands": [{"name": "B1"}]}},
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{item_id}.json").write_text(json.dumps(item))
    return folder / f"{item_id}.json"


def test_collection_of_items(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    items = [
        _item(workdir / "items", "a", [9.0, 45.0, 10.5, 46.0], "2023-06-10T10:30:00Z"),
        _item(workdir / "items", "b", [10.0, 44.5, 11.0, 45.5], "2023-06-10T12:00:00+02:00"),  # 10:00 UTC: first
        _item(workdir / "items" / "later", "c", [8.5, 45.2, 9.5, 46.4], "2023-07-01T10:00:00Z"),
    ]
    before = [path.read_bytes() for path in items]
    out = workdir / "items" / "collection.json"
    argv = ["stac-collection", *map(str, items), "--out", str(out), "--title", "Summer 2023"]
    assert main(argv) == 0
    assert "collection 'items' of 3 items, bbox 8.50000 44.50000 11.00000 46.40000" in capsys.readouterr().out
    StacCollection.model_validate(json.loads(out.read_text()))  # stac-pydantic's model, as stac-fastapi ingests it
    collection = pystac.Collection.from_file(str(out))
    assert collection.id == "items" and collection.title == "Summer 2023"
    # by hand: the west of c, the south of b, the east of b, the north of c (the items' own are not listed)
    assert collection.extent.spatial.bboxes == [[8.5, 44.5, 11.0, 46.4]]
    interval = collection.extent.temporal.intervals[0]
    assert interval == [
        datetime(2023, 6, 10, 10, 0, tzinfo=timezone.utc),
        datetime(2023, 7, 1, 10, tzinfo=timezone.utc),
    ]
    found = {item.id: item for item in collection.get_items()}
    assert sorted(found) == ["a", "b", "c"]
    assert Path(found["c"].get_self_href() or "").resolve() == items[2].resolve()
    assert collection.summaries.to_dict()["gsd"] == [10] and collection.summaries.to_dict()["proj:epsg"] == [32632]
    assert [path.read_bytes() for path in items] == before  # never rewritten
    # again over items/*.json, which now matches the collection too: it is left out, said so
    again = sorted((workdir / "items").glob("*.json"))
    assert main(["stac-collection", *map(str, again), str(items[2]), "--out", str(out), "--overwrite"]) == 0
    assert "of 3 items" in capsys.readouterr().out


@pytest.mark.parametrize(
    "bboxes, expected",
    [
        ([[179.5, -17.0, -179.5, -16.0], [178.0, -17.5, 179.0, -16.5]], [178.0, -17.5, -179.5, -16.0]),
        ([[179.0, -17.0, 179.5, -16.0], [-179.5, -17.5, -179.0, -16.5]], [179.0, -17.5, -179.0, -16.0]),
    ],
)
def test_items_about_the_antimeridian_give_an_extent_across_it(
    workdir: Path, bboxes: list[list[float]], expected: list[float]
) -> None:
    items = [_item(workdir, f"i{index}", bbox, "2023-06-10T22:00:00Z") for index, bbox in enumerate(bboxes)]
    out = workdir / "collection.json"
    assert main(["stac-collection", *map(str, items), "--out", str(out), "--id", "fiji"]) == 0
    StacCollection.model_validate(json.loads(out.read_text()))  # its rule for boxes across the antimeridian
    collection = pystac.Collection.from_file(str(out))
    assert collection.id == "fiji"
    assert collection.extent.spatial.bboxes == [expected]  # west of 180 first, then east of it, as STAC writes


def test_longitude_extent_is_the_shortest_run_that_holds_every_span() -> None:
    rng = np.random.default_rng(5)
    for _ in range(300):
        count = int(rng.integers(1, 6))
        wests = rng.uniform(-180, 180, count).round(1)
        widths = rng.uniform(0.1, rng.choice([10, 60, 200]), count).round(1)  # 0.1 at least: a span, not a point
        spans = [(float(w), round((w + d + 180) % 360 - 180, 6)) for w, d in zip(wests, widths, strict=True)]
        west, east = longitude_extent(spans)
        width = (east - west) % 360 if (west, east) != (-180.0, 180.0) else 360.0
        # by brute force: a shortest run starts at some span's west and reaches round to the farthest span's east
        best = min(max((w - start) % 360 + d for w, d in zip(wests, widths, strict=True)) for start in wests)
        assert width == pytest.approx(min(best, 360.0), abs=1e-6), (spans, west, east)
        for w, d in zip(wests, widths, strict=True):  # and it holds every span
            assert (w - west) % 360 + d <= width + 1e-6 or width == 360.0


def test_items_that_remove_clouds_wrote(workdir: Path) -> None:
    s2, _ = workdir.scene()
    scenes = [workdir / name for name in ("T32TPT_20230610T101559_10m.tif", "T32TPT_20230620T101559_10m.tif")]
    for scene in scenes:
        scene.write_bytes(s2.read_bytes())
    for folder in ("out", "items"):
        (workdir / folder).mkdir()
    weights = str(workdir.weights("dsen2cr-small-nosar"))
    run = [
        "remove-clouds",
        "--weights",
        weights,
        "--no-progress",
        "--s2",
        *map(str, scenes),
        "--out",
        f"{workdir}/out/",
    ]
    assert main([*run, "--stac-item", f"{workdir}/items/"]) == 0
    items = sorted((workdir / "items").glob("*.json"))
    out = workdir / "items" / "collection.json"
    assert main(["stac-collection", *map(str, items), "--out", str(out)]) == 0
    StacCollection.model_validate(json.loads(out.read_text()))
    collection = pystac.Collection.from_file(str(out))
    images = sorted(Path(item.assets["image"].get_absolute_href() or "") for item in collection.get_items())
    assert images == sorted((workdir / "out").glob("*_cloudfree.tif"))
    assert collection.summaries.to_dict()["instruments"] == ["msi"]
    assert len(collection.summaries.to_dict()["eo:bands"]) == 13
