"""remove-clouds --stac-item: a STAC item of a scene's outputs, read back with pystac (another library's reader),
its footprint checked against pyproj and its statistics against the pixels."""

from __future__ import annotations

import itertools
import json
import logging
import math
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
import rasterio.crs
import rasterio.transform
from pyproj import Transformer
from pystac.extensions.eo import EOExtension
from pystac.extensions.projection import ProjectionExtension
from pystac.extensions.raster import RasterExtension
from stac_pydantic import Item as StacItem

from dsen2cr.cli import main
from dsen2cr.outputs.geotiff import write_geotiff

SENSED = "T32TPT_20230610T101559_10m.tif"  # a Sentinel-2 name: sensed 2023-06-10 10:15:59 UTC


@pytest.fixture
def scene(workdir: Path) -> Path:
    """The test scene (UTM 32N, 50 x 40 px) under a Sentinel-2 name."""
    s2, _ = workdir.scene()
    return s2.rename(workdir / SENSED)


def _read_item(path: Path) -> pystac.Item:
    """The item at ``path``, checked first against stac-pydantic's STAC models (what stac-fastapi ingests with),
    then read with pystac."""
    StacItem.model_validate(json.loads(path.read_text()))
    return pystac.Item.from_file(str(path))


def _remove(workdir: Path, *argv: str) -> None:
    weights = workdir.weights("dsen2cr-small-nosar")
    assert main(["remove-clouds", "--weights", str(weights), "--no-progress", "--device", "cpu", *argv]) == 0


def _ring_area(ring: list[list[float]]) -> float:
    """Signed area of a ring (shoelace): positive when counterclockwise."""
    return sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in itertools.pairwise(ring)) / 2


def test_item_describes_the_outputs(workdir: Path, scene: Path) -> None:
    (workdir / "out").mkdir()
    (workdir / "catalog").mkdir()
    out, mask, preview = (workdir / "out" / name for name in ("a.tif", "m.tif", "p.png"))
    item_path = workdir / "catalog" / "a.json"
    _remove(
        workdir,
        *("--s2", str(scene), "--out", str(out), "--mask-out", str(mask), "--preview", str(preview)),
        *("--stac-item", str(item_path)),
    )
    item = _read_item(item_path)
    assert item.id == "a"
    assert item.datetime == datetime(2023, 6, 10, 10, 15, 59, tzinfo=timezone.utc)
    assert item.properties["processing:software"]["dsen2cr"]
    lineage = item.properties["processing:lineage"]
    assert "dsen2cr-small-nosar.safetensors" in lineage
    with rasterio.open(out) as image:  # the map's shares, as the image records them
        cloud, shadow = (float(image.tags()[f"DSEN2CR_{what}_PERCENT"]) for what in ("CLOUD", "SHADOW"))
    said = f"--keep-clear no (every pixel); its cloud/shadow map (paper): cloud {cloud:.1f}%, shadow {shadow:.1f}%"
    assert said in lineage, lineage
    # hrefs relative to the item, resolved by pystac to the files written
    assert json.loads(item_path.read_text())["assets"]["image"]["href"] == "../out/a.tif"
    for key, path in (("image", out), ("cloud_mask", mask), ("preview", preview)):
        assert Path(item.assets[key].get_absolute_href()).resolve() == path.resolve()
    with rasterio.open(out) as image:
        pixels = image.read().astype(np.float64)
        crs, transform, bounds = image.crs, image.transform, image.bounds
    projection = ProjectionExtension.ext(item)
    assert projection.epsg == crs.to_epsg() == 32632
    assert projection.shape == [40, 50] and projection.transform == list(transform)[:6]
    # the footprint: the corners in longitude and latitude, by pyproj
    to_lonlat = Transformer.from_crs(crs.to_wkt(), "EPSG:4326", always_xy=True)
    corners = [to_lonlat.transform(x, y) for x in (bounds.left, bounds.right) for y in (bounds.bottom, bounds.top)]
    lons, lats = [x for x, _ in corners], [y for _, y in corners]
    np.testing.assert_allclose(item.bbox, [min(lons), min(lats), max(lons), max(lats)], atol=1e-6)
    ring = item.geometry["coordinates"][0]
    assert ring[0] == ring[-1] and _ring_area(ring) > 0  # closed, counterclockwise
    # the bands: names, common names, and statistics that the pixels give
    image_asset = item.assets["image"]
    bands = EOExtension.ext(image_asset).bands
    assert [band.name for band in bands][:4] == ["B1", "B2", "B3", "B4"]
    assert [band.common_name for band in bands][1:4] == ["blue", "green", "red"]
    raster = RasterExtension.ext(image_asset).bands
    assert len(raster) == 13
    for index, band in enumerate(raster):
        valid = pixels[index][pixels[index] != 0]
        assert band.nodata == 0 and band.data_type == "uint16" and band.scale == 0.0001
        assert band.statistics.mean == pytest.approx(valid.mean(), rel=1e-9)
        assert band.statistics.minimum == valid.min() and band.statistics.maximum == valid.max()
    # the map's classes, with the colours of its colour table
    classes = RasterExtension.ext(item.assets["cloud_mask"]).bands[0].to_dict()["classification:classes"]
    assert [(c["value"], c["name"]) for c in classes] == [(0, "clear"), (1, "cloud"), (2, "shadow"), (255, "no_data")]
    with rasterio.open(mask) as written:
        colours = written.colormap(1)
    assert classes[1]["color_hint"] == "{:02X}{:02X}{:02X}".format(*colours[1][:3])
    assert item.assets["preview"].media_type == "image/png" and not item.get_links("derived_from")


def test_item_of_a_stac_input_links_it(workdir: Path, scene: Path, stac_item_of: Callable[..., Path]) -> None:
    """An S2 STAC item read: the output's item says so (``derived_from``) and takes its datetime."""
    source = stac_item_of(scene, workdir / "source", datetime="2023-06-10T12:15:59.5+02:00")
    _remove(workdir, "--s2", str(source), "--out", str(workdir / "o.tif"), "--stac-item", str(workdir / "o.json"))
    item = _read_item(workdir / "o.json")
    assert item.datetime == datetime(2023, 6, 10, 10, 15, 59, 500000, tzinfo=timezone.utc)
    (link,) = item.get_links("derived_from")
    assert Path(link.get_absolute_href()).resolve() == source.resolve()


def test_manifest_column_and_skip_existing(workdir: Path, scene: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A manifest's stac_item column. --skip-existing writes the item of a scene an earlier run finished without
    one (outputs of a run before --stac-item, or one killed between its image and its item) from the files there,
    computing nothing again; a finished scene with its item is left as it is."""
    manifest = workdir / "m.csv"
    manifest.write_text(f"s2,out,mask_out\n{scene.name},o.tif,m.tif\n")
    _remove(workdir, "--manifest", str(manifest))  # yesterday's run, without items
    before = {name: (workdir / name).stat() for name in ("o.tif", "m.tif")}
    manifest.write_text(f"s2,out,mask_out,stac_item\n{scene.name},o.tif,m.tif,catalog/o.json\n")
    (workdir / "catalog").mkdir()
    caplog.clear()
    with caplog.at_level(logging.INFO):
        _remove(workdir, "--manifest", str(manifest), "--skip-existing")
    item = json.loads((workdir / "catalog" / "o.json").read_text())
    assert item["properties"]["datetime"] == "2023-06-10T10:15:59Z"
    assert {key: asset["href"] for key, asset in item["assets"].items()} == {
        "image": "../o.tif",
        "cloud_mask": "../m.tif",
    }
    for name, stat in before.items():  # not written again
        assert ((workdir / name).stat().st_mtime_ns, (workdir / name).stat().st_ino) == (stat.st_mtime_ns, stat.st_ino)
    assert "wrote the STAC item" in caplog.text and "backend:" not in caplog.text  # no network was loaded
    written = (workdir / "catalog" / "o.json").stat().st_mtime_ns
    _remove(workdir, "--manifest", str(manifest), "--skip-existing")
    assert (workdir / "catalog" / "o.json").stat().st_mtime_ns == written


def test_footprint_across_the_antimeridian(workdir: Path) -> None:
    """A scene of UTM zone 60 S (Fiji) astride 180°: its footprint is cut there into two polygons (GeoJSON's rule),
    each counterclockwise, and its bbox runs from the eastern part's west edge to the western part's east edge
    (first longitude larger than the third, as STAC says for a box across the antimeridian)."""
    crs = "EPSG:32760"
    to_utm = Transformer.from_crs("EPSG:4326", crs, always_xy=True)
    x180, y = to_utm.transform(180.0, -17.6)
    origin = rasterio.transform.from_origin(round(x180) - 250, round(y) + 200, 10, 10)  # 500 x 400 m, 180° inside
    s2 = np.random.default_rng(0).integers(1, 8000, size=(13, 40, 50)).astype(np.uint16)
    scene = write_geotiff(workdir / SENSED, s2, crs=rasterio.crs.CRS.from_string(crs), transform=origin)
    _remove(workdir, "--s2", str(scene), "--out", str(workdir / "o.tif"), "--stac-item", str(workdir / "o.json"))
    item = _read_item(workdir / "o.json")
    assert item.geometry["type"] == "MultiPolygon"
    east, west = sorted(item.geometry["coordinates"], key=lambda polygon: -polygon[0][0][0])
    assert all(179.99 < x <= 180 for x, _ in east[0]) and all(-180 <= x < -179.99 for x, _ in west[0])
    assert _ring_area(east[0]) > 0 and _ring_area(west[0]) > 0
    to_lonlat = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    left, top = origin.c, origin.f
    corners = [to_lonlat.transform(x, y) for x in (left, left + 500) for y in (top - 400, top)]
    lons, lats = [x for x, _ in corners], [y for _, y in corners]
    expected = [min(x for x in lons if x > 0), min(lats), max(x for x in lons if x < 0), max(lats)]
    np.testing.assert_allclose(item.bbox, expected, atol=1e-6)
    assert item.bbox[0] > item.bbox[2]


def test_a_grid_without_an_epsg_code_gives_its_wkt2(workdir: Path) -> None:
    """A scene reprojected to a CRS of its own (no EPSG code): no ``proj:epsg``, and ``proj:wkt2`` WKT2, which
    pyproj reads as the same CRS."""
    import pyproj

    proj4 = "+proj=laea +lat_0=52 +lon_0=11 +x_0=4321000 +y_0=3210000 +ellps=GRS80 +units=m +no_defs"
    crs = rasterio.crs.CRS.from_proj4(proj4)
    s2 = np.random.default_rng(0).integers(1, 8000, size=(13, 40, 50)).astype(np.uint16)
    origin = rasterio.transform.from_origin(4321000, 3210000, 10, 10)
    scene = write_geotiff(workdir / SENSED, s2, crs=crs, transform=origin)
    _remove(workdir, "--s2", str(scene), "--out", str(workdir / "o.tif"), "--stac-item", str(workdir / "o.json"))
    projection = ProjectionExtension.ext(_read_item(workdir / "o.json"))
    assert projection.epsg is None
    assert projection.wkt2.startswith("PROJCRS[")  # WKT2, not GDAL's WKT1 (PROJCS[)
    assert pyproj.CRS.from_wkt(projection.wkt2).equals(pyproj.CRS.from_proj4(proj4), ignore_axis_order=True)


def _inside(point: tuple[float, float], ring: list[list[float]], tolerance: float = 1e-6) -> bool:
    """Whether ``point`` lies inside the closed ``ring`` (ray casting) or within ``tolerance`` degrees of its edge
    (about 0.1 m: the outline's edges are chords of the grid's curved lines, its coordinates rounded to 1e-7)."""
    x, y = point
    crossings = 0
    for (x0, y0), (x1, y1) in itertools.pairwise(ring):
        t = max(0.0, min(1.0, ((x - x0) * (x1 - x0) + (y - y0) * (y1 - y0)) / ((x1 - x0) ** 2 + (y1 - y0) ** 2)))
        if math.hypot(x - x0 - t * (x1 - x0), y - y0 - t * (y1 - y0)) <= tolerance:
            return True  # on the edge
        if (y0 > y) != (y1 > y) and x < x0 + (y - y0) * (x1 - x0) / (y1 - y0):
            crossings += 1
    return crossings % 2 == 1


def test_footprint_is_the_valid_data(workdir: Path) -> None:
    """A scene at the edge of the swath (its north-east corner no data, a diagonal edge, as Sentinel-2 tiles
    there are): the footprint holds every valid pixel (each corner, by pyproj) and leaves the no-data corner out;
    the scene is large enough to have an overview, from which the outline is read."""
    height, width = 520, 640
    rows, cols = np.mgrid[0:height, 0:width]
    s2 = np.random.default_rng(0).integers(1, 8000, size=(13, height, width)).astype(np.uint16)
    s2[:, cols > rows + 300] = 0  # no data beyond the swath's edge
    origin = rasterio.transform.from_origin(500000, 5000000, 10, 10)
    crs = rasterio.crs.CRS.from_epsg(32632)
    scene = write_geotiff(workdir / SENSED, s2, crs=crs, transform=origin)
    _remove(workdir, "--s2", str(scene), "--out", str(workdir / "o.tif"), "--stac-item", str(workdir / "o.json"))
    with rasterio.open(workdir / "o.tif") as image:
        assert image.overviews(1)  # the outline comes from an overview
    ring = _read_item(workdir / "o.json").geometry["coordinates"][0]
    to_lonlat = Transformer.from_crs("EPSG:32632", "EPSG:4326", always_xy=True)
    edge = [(r, c) for r in range(height) for c in (0, min(width - 1, r + 300))]  # each row's outermost valid pixels
    for r, c in edge:
        for dx, dy in ((0, 0), (1, 0), (0, 1), (1, 1)):
            corner = to_lonlat.transform(500000 + 10 * (c + dx), 5000000 - 10 * (r + dy))
            assert _inside(corner, ring), (r, c, dx, dy)
    far = to_lonlat.transform(500000 + 10 * (width - 20), 5000000 - 10 * 20)  # deep in the no-data corner
    assert not _inside(far, ring)
    assert _ring_area(ring) > 0


def test_the_lineage_says_the_warnings_the_image_records() -> None:
    """An image that records warnings (DSEN2CR_WARNINGS, one a line) has them in its item's lineage, after what made
    it; one without has none."""
    from dsen2cr.scene.stac_item import _lineage

    tags = {"DSEN2CR_S2": "s2.tif", "DSEN2CR_KEEP_CLEAR": "true", "DSEN2CR_WARNINGS": "s2.tif: first\ns2.tif: second"}
    assert _lineage(tags).endswith("; warned while it ran: s2.tif: first; s2.tif: second")
    assert "warned" not in _lineage({"DSEN2CR_S2": "s2.tif"})
