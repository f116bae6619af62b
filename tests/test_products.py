"""Sentinel products as users have them (tiny products made here, never downloaded): baseline 04.00+ offsets,
zipped SAFE, Level-2A, STAC items, S1 as a VV/VH pair, and their bad-input cases."""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterio.crs import CRS
from rasterio.transform import from_origin
from rasterio.windows import Window

from dsen2cr.cli import main
from dsen2cr.errors import DSen2CRError
from dsen2cr.inputs import resolve_s2
from dsen2cr.inputs.product import L2A_BANDS, band_code, band_of, sensing_time_text
from dsen2cr.inputs.stac_bands import EARTH_SEARCH_KEYS, band_assets, stac_offset
from dsen2cr.outputs.geotiff import write_geotiff
from dsen2cr.preprocessing import S2_BANDS

CRS_33N = CRS.from_epsg(32633)
SIZE = 60  # the 10 m size of the products the make_safe fixture writes
ALL_OFFSETS = {i: -1000 for i in range(13)}


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory, weights_file: Callable[[str], Path]) -> Path:
    import torch

    torch.manual_seed(0)
    return weights_file("dsen2cr-small-nosar")


def _run(weights: Path, s2: str | Path, out: Path, *extra: str) -> np.ndarray:
    argv = ["remove-clouds", "--weights", str(weights), "--s2", str(s2), "--out", str(out), "--no-progress"]
    assert main([*argv, "--device", "cpu", *extra]) == 0
    with rasterio.open(out) as dataset:
        return dataset.read()


def test_baseline_offset_is_removed(weights: Path, tmp_path: Path, make_safe: Callable[..., Path]) -> None:
    """The same pixels + 1000 DN at baseline 05.10 (offsets declared) give the baseline-02.04 output."""
    old = make_safe(tmp_path / "a", baseline="02.04")
    new = make_safe(tmp_path / "b", baseline="05.10", shift=1000, offsets=ALL_OFFSETS)
    before = _run(weights, old, tmp_path / "old.tif")
    after = _run(weights, new, tmp_path / "new.tif")
    assert np.abs(before.astype(int) - after.astype(int)).max() <= 1
    with rasterio.open(tmp_path / "new.tif") as dataset:
        tags = dataset.tags()
    assert tags["DSEN2CR_PROCESSING_LEVEL"] == "L1C" and tags["DSEN2CR_PROCESSING_BASELINE"] == "05.10"
    assert (
        tags["DSEN2CR_OFFSET_REMOVED"].startswith("B1:-1000,B2:-1000") and tags["DSEN2CR_OFFSET_SOURCE"] == "metadata"
    )
    assert tags["DSEN2CR_RESAMPLING"] == "nearest (20 m and 60 m bands onto the 10 m grid)"


def test_geotiff_offset_option(weights: Path, tmp_path: Path) -> None:
    """A 13-band GeoTIFF exported from a baseline 04.00+ product: --s2-offset -1000 gives the offset-free result."""
    rng = np.random.default_rng(0)
    s2 = rng.integers(500, 4000, (13, 40, 50)).astype(np.uint16)
    s2[:, :5, :5] = 0  # nodata stays nodata
    origin = from_origin(500000, 5000000, 10, 10)
    plain = write_geotiff(tmp_path / "plain.tif", s2, crs=CRS_33N, transform=origin)
    shifted = write_geotiff(
        tmp_path / "shifted.tif", np.where(s2 > 0, s2 + 1000, 0).astype(np.uint16), crs=CRS_33N, transform=origin
    )
    expected = _run(weights, plain, tmp_path / "a.tif")
    got = _run(weights, shifted, tmp_path / "b.tif", "--s2-offset", "-1000")
    np.testing.assert_array_equal(got, expected)
    assert (got[:, :5, :5] == 0).all()


def _dark_water(level: str) -> np.ndarray:
    """A GeoTIFF's DN without offset (``level``: 13 bands, or Level-2A's 12): L1C's cirrus band B10 at tens of DN
    (a clear sky); L2A's blue band B2 at tens to hundreds of DN over a strip of water."""
    rng = np.random.default_rng(1)
    if level == "L1C":
        s2 = rng.integers(500, 4000, (13, 40, 50)).astype(np.uint16)
        s2[10] = rng.integers(5, 60, (40, 50))  # B10, cirrus: tens of DN under a clear sky
        return s2
    s2 = rng.integers(300, 4000, (12, 40, 50)).astype(np.uint16)
    s2[1, :10] = rng.integers(40, 250, (10, 50))  # B2 over water: tens to hundreds of DN
    return s2


@pytest.mark.parametrize(("level", "said"), [("L1C", "B10 (cirrus) lies at 10"), ("L2A", "B2 (blue) lies at 10")])
def test_a_missing_offset_is_warned(
    weights: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, level: str, said: str
) -> None:
    """A GeoTIFF exported from a baseline 04.00+ product (DN + 1000) run without --s2-offset: a warning names the
    option, where a Level-1C B10 (cirrus) lies above 1000 DN in the median (tens of DN without the offset), or the
    darkest 1 % of a Level-2A B2 (blue) does (tens to hundreds over water and shadow: it ran silently, every
    reflectance 0.1 high). With --s2-offset -1000, or for the same scene without the shift, none."""
    s2 = _dark_water(level)
    origin = from_origin(500000, 5000000, 10, 10)
    plain = write_geotiff(tmp_path / "plain.tif", s2, crs=CRS_33N, transform=origin)
    shifted = write_geotiff(tmp_path / "shifted.tif", s2 + np.uint16(1000), crs=CRS_33N, transform=origin)
    for scene, extra, warned in ((shifted, (), True), (shifted, ("--s2-offset", "-1000"), False), (plain, (), False)):
        caplog.clear()
        _run(weights, scene, tmp_path / f"{scene.stem}{len(extra)}.tif", *extra)
        found = [r.getMessage() for r in caplog.records if "--s2-offset -1000" in r.getMessage()]
        assert bool(found) == warned, found
        if warned:
            assert found[0].startswith(f"{scene}: {said}") and "baseline 04.00" in found[0]


def test_value_checks_read_overviews_where_the_files_have_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The offset checks' sample comes from the files' overviews where every file has them (a product's JP2
    bands, COGs: 16 full-resolution windows decoded 16 JP2 tiles a band, 11.4 s for a 4096 x 10980 IMG_DATA
    folder, against 0.66 s from its overviews), else from a lattice of small windows (a GeoTIFF without
    overviews, whose decimated read would decode the whole file)."""
    from dsen2cr.inputs.readers import S2Source

    rng = np.random.default_rng(2)
    s2 = (rng.integers(500, 4000, (13, 64, 64)) + 1000).astype(np.uint16)
    origin = from_origin(500000, 5000000, 10, 10)
    plain = write_geotiff(tmp_path / "plain.tif", s2, crs=CRS_33N, transform=origin)
    with_overviews = write_geotiff(tmp_path / "ovr.tif", s2, crs=CRS_33N, transform=origin)
    with rasterio.open(with_overviews, "r+") as dataset:
        dataset.build_overviews([2, 4])
    calls: list[str] = []
    original = S2Source.read_decimated
    monkeypatch.setattr(S2Source, "read_decimated", lambda self, size: calls.append(self.name) or original(self, size))
    for path in (plain, with_overviews):
        S2Source(path, offset=-1000).close()
    assert calls == [str(with_overviews)]


def test_zipped_product_equals_the_folder(weights: Path, tmp_path: Path, make_safe: Callable[..., Path]) -> None:
    safe = make_safe(tmp_path / "p", baseline="05.10", shift=1000, offsets=ALL_OFFSETS)
    archive = tmp_path / f"{safe.name}.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for path in sorted(safe.rglob("*")):
            z.write(path, path.relative_to(safe.parent))
    np.testing.assert_array_equal(_run(weights, archive, tmp_path / "z.tif"), _run(weights, safe, tmp_path / "f.tif"))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["p", archive.name, "z.tif", "f.tif"])


def test_level2a_product_gives_its_twelve_bands(
    weights: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, make_safe: Callable[..., Path]
) -> None:
    from dsen2cr.inputs import readers

    readers._warned.clear()  # the warning is given once per process: forget earlier tests' L2A runs
    safe = make_safe(tmp_path / "l2a", level="L2A", baseline="05.10", shift=1000, offsets=ALL_OFFSETS)
    out = _run(weights, safe, tmp_path / "l2a.tif")
    assert out.shape == (12, SIZE, SIZE)
    with rasterio.open(tmp_path / "l2a.tif") as dataset:
        assert list(dataset.descriptions) == L2A_BANDS
        assert dataset.tags()["DSEN2CR_PROCESSING_LEVEL"] == "L2A"
    assert "trained on top-of-atmosphere (Level-1C) data" in caplog.text


def _stac_item(
    folder: Path,
    safe: Path,
    *,
    keys: str,
    offsets: bool,
    level: str = "L1C",
    drop: tuple[str, ...] = (),
    properties: dict | None = None,
) -> Path:
    """A STAC item whose assets are single-band GeoTIFF copies of a SAFE's band files (relative hrefs), with
    ``properties`` beside the product type and baseline, and a true-colour image that names B04, B03 and B02 in its
    bands: last as the Planetary Computer's ``visual``, first as Earth Search's ``overview``."""
    earth_search = {band: key for key, band in EARTH_SEARCH_KEYS.items()}
    with rasterio.open(next(safe.rglob("*_B02*.jp2"))) as src:
        write_geotiff(folder / "TCI.tif", np.repeat(src.read(), 3, axis=0), crs=src.crs, transform=src.transform)
    true_colour = {"href": "TCI.tif", "gsd": 10, "eo:bands": [{"name": name} for name in ("B04", "B03", "B02")]}
    assets = {} if keys == "planetary" else {"overview": true_colour}
    for band in S2_BANDS if level == "L1C" else L2A_BANDS:
        if band in drop:
            continue
        source = next(safe.rglob(f"*_{band_code(band)}*.jp2"))
        with rasterio.open(source) as src:
            write_geotiff(folder / f"{band_code(band)}.tif", src.read(), crs=src.crs, transform=src.transform)
        key = band_code(band) if keys == "planetary" else earth_search[band]
        asset: dict = {"href": f"{band_code(band)}.tif", "type": "image/tiff"}
        if keys == "planetary":
            asset["eo:bands"] = [{"name": band_code(band)}]
        if offsets:
            asset["raster:bands"] = [{"scale": 0.0001, "offset": -0.1, "nodata": 0}]
        assets[key] = asset
    if keys == "planetary":
        assets["visual"] = true_colour
    properties = {"s2:product_type": f"S2MSI{level[1:]}", "s2:processing_baseline": "05.10", **(properties or {})}
    item = {"type": "Feature", "stac_version": "1.0.0", "id": "S2B_T33UUU", "properties": properties, "assets": assets}
    path = folder / "item.json"
    path.write_text(json.dumps(item))
    return path


@pytest.mark.parametrize(("keys", "offsets"), [("planetary", False), ("earth-search", True)])
def test_stac_item_equals_the_safe(
    weights: Path, tmp_path: Path, keys: str, offsets: bool, make_safe: Callable[..., Path]
) -> None:
    """Planetary Computer naming (offset from s2:processing_baseline) and Earth Search naming (offset from
    raster:bands scale and offset) both give the SAFE's output."""
    safe = make_safe(tmp_path / "p", baseline="05.10", shift=1000, offsets=ALL_OFFSETS)
    (tmp_path / "stac").mkdir()
    item = _stac_item(tmp_path / "stac", safe, keys=keys, offsets=offsets)
    np.testing.assert_array_equal(_run(weights, item, tmp_path / "s.tif"), _run(weights, safe, tmp_path / "f.tif"))


def test_an_earth_search_item_whose_offset_was_applied_is_read_as_it_is(
    weights: Path, tmp_path: Path, make_safe: Callable[..., Path]
) -> None:
    """Earth Search's sentinel-2-l2a items of baseline 04.00 and later hold pixels with the offset already removed
    (``earthsearch:boa_offset_applied: true``) while their ``raster:bands`` still declare offset −0.1: the pixels
    are read as they are, the output that of the same pixels in a product without offset (the declared −1000 DN was
    removed a second time: every reflectance 0.1 low, exit 0, where most pixels are bright, as a cloudy scene's)."""
    safe = make_safe(tmp_path / "p", level="L2A", baseline="02.14")
    (tmp_path / "stac").mkdir()
    applied = {"s2:processing_baseline": "05.09", "earthsearch:boa_offset_applied": True}
    item = _stac_item(tmp_path / "stac", safe, keys="earth-search", offsets=True, level="L2A", properties=applied)
    assert resolve_s2(item).offsets == [0] * len(L2A_BANDS)
    np.testing.assert_array_equal(_run(weights, item, tmp_path / "s.tif"), _run(weights, safe, tmp_path / "f.tif"))


@pytest.mark.parametrize(
    ("names", "level"),
    [
        # Earth Engine's COPERNICUS/S2_HARMONIZED exported whole: its 13 bands, then QA10, QA20 and QA60
        ([*(band_code(b) for b in S2_BANDS), "QA10", "QA20", "QA60"], "L1C"),
        # the product's order (B8A after B09), as a stack of its JP2 bands is made: each band is where it says
        (["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B09", "B8A", "B10", "B11", "B12"], "L1C"),
        # COPERNICUS/S2_SR_HARMONIZED's bands of interest with its AOT, WVP and SCL before them, named as GDAL gives
        # Earth Engine's names (B1, B8A): Level-2A
        (["AOT", "WVP", "SCL", *(b for b in S2_BANDS if b != "B10")], "L2A"),
    ],
)
def test_a_geotiff_whose_band_descriptions_name_the_bands_is_read_by_them(
    weights: Path, tmp_path: Path, names: list[str], level: str
) -> None:
    """A multi-band GeoTIFF whose band descriptions name the S2 bands is read by them, whatever else it holds and
    in whatever order: the output is that of the file of those bands in order (it was refused: 16 bands, or the
    descriptions in another order)."""
    wanted = S2_BANDS if level == "L1C" else [b for b in S2_BANDS if b != "B10"]
    rng = np.random.default_rng(5)
    bands = {name: rng.integers(300, 6000, (40, 50)).astype(np.uint16) for name in names}
    ordered = np.stack([bands[next(n for n in names if band_of(n) == b)] for b in wanted])
    write_geotiff(tmp_path / "ordered.tif", ordered, crs=CRS_33N, transform=from_origin(400000, 5800000, 10, 10))
    stacked = np.stack([bands[n] for n in names])
    path = write_geotiff(
        tmp_path / "export.tif", stacked, crs=CRS_33N, transform=from_origin(400000, 5800000, 10, 10), band_names=names
    )
    product = resolve_s2(path)
    assert product.level == level and product.bands == list(wanted)
    expected = _run(weights, tmp_path / "ordered.tif", tmp_path / "a.tif")
    np.testing.assert_array_equal(_run(weights, path, tmp_path / "b.tif"), expected)
    with rasterio.open(tmp_path / "b.tif") as out:  # the file's band of each S2 band, where not 1 ... n
        assert list(out.descriptions) == list(wanted)
        said = out.tags().get("DSEN2CR_S2_FILE_BANDS", ",".join(f"{b}:{i}" for i, b in enumerate(wanted, start=1)))
    read = {band: names[int(index) - 1] for band, index in (part.split(":") for part in said.split(","))}
    assert read == {b: next(n for n in names if band_of(n) == b) for b in wanted}


def _cdse_item(folder: Path, safe: Path, level: str) -> Path:
    """A STAC 1.1 item as the Copernicus Data Space Ecosystem's catalogue gives one: Level-2A bands at their own and
    every coarser resolution of the product (keys ``B02_10m``, ``B02_20m``, ``B02_60m`` in the catalogue's
    alphabetical order, each naming ``B02`` in ``bands``, its ``gsd`` said) with their offset as the asset's
    ``raster:offset`` and ``raster:scale``, an ``SCL_20m`` and ``SCL_60m``; Level-1C bands one asset each (``B02``);
    the baseline as ``processing:version``, the level as ``product:type``."""
    assets: dict[str, dict] = {}
    for band in S2_BANDS if level == "L1C" else L2A_BANDS:
        source = next(safe.rglob(f"*_{band_code(band)}*.jp2"))
        with rasterio.open(source) as src:
            data, crs, transform = src.read(), src.crs, src.transform
        native = round(transform.a)
        for resolution in [native] if level == "L1C" else [r for r in (10, 20, 60) if r >= native]:
            factor = resolution // native
            coarse = data.reshape(1, data.shape[1] // factor, factor, -1, factor).mean(axis=(2, 4)).round()
            key = band_code(band) if level == "L1C" else f"{band_code(band)}_{resolution}m"
            write_geotiff(
                folder / f"{key}.tif", coarse.astype(np.uint16), crs=crs, transform=transform * transform.scale(factor)
            )
            asset: dict = {"href": f"{key}.tif", "gsd": resolution, "bands": [{"name": band_code(band)}]}
            if level == "L2A":
                asset |= {"raster:scale": 0.0001, "raster:offset": -0.1}
            assets[key] = asset
    if level == "L2A":
        for resolution in (20, 60):
            write_geotiff(
                folder / f"SCL_{resolution}m.tif",
                np.full((1, SIZE * 10 // resolution, SIZE * 10 // resolution), 4, np.uint8),
                crs=CRS_33N,
                transform=from_origin(399960, 5800020, resolution, resolution),
            )
            assets[f"SCL_{resolution}m"] = {"href": f"SCL_{resolution}m.tif", "gsd": resolution}
    properties = {"product:type": f"S2MSI{level[1:]}", "processing:version": "05.10"}
    item = {"type": "Feature", "stac_version": "1.1.0", "id": "S2B_CDSE", "properties": properties}
    path = folder / "item.json"
    path.write_text(json.dumps(item | {"assets": dict(sorted(assets.items()))}))
    return path


@pytest.mark.parametrize("level", ["L1C", "L2A"])
def test_a_copernicus_data_space_item_equals_the_safe(
    weights: Path, tmp_path: Path, level: str, make_safe: Callable[..., Path]
) -> None:
    """A Copernicus Data Space Ecosystem item (STAC 1.1) gives the SAFE's output: each band read from its finest
    asset (the 60 m copies came last, and were read), the offset from processing:version (Level-1C) or the assets'
    raster:offset and raster:scale (Level-2A), both of which it missed (the offset was taken for 0), and the product's
    classification from its finest SCL."""
    safe = make_safe(tmp_path / "p", level=level, baseline="05.10", shift=1000, offsets=ALL_OFFSETS)
    (tmp_path / "stac").mkdir()
    item = _cdse_item(tmp_path / "stac", safe, level)
    product = resolve_s2(item)
    assert product.offsets == [-1000] * len(product.bands) and product.level == level
    if level == "L2A":
        assert product.files[0].endswith("B01_60m.tif") and product.files[1].endswith("B02_10m.tif")
        assert product.masks["SCL"].endswith("SCL_20m.tif")
    np.testing.assert_array_equal(_run(weights, item, tmp_path / "s.tif"), _run(weights, safe, tmp_path / "f.tif"))


@pytest.mark.parametrize(
    ("assets", "chosen"),
    [
        ({"B02_60m": {}, "B02_20m": {}, "B02_10m": {}}, "B02_10m"),  # by the key's resolution
        ({"a": {"gsd": 60, "bands": [{"name": "B02"}]}, "b": {"gsd": 10, "bands": [{"name": "B02"}]}}, "b"),
        ({"a": {"proj:transform": [20, 0, 0, 0, -20, 0], "eo:bands": [{"name": "B2"}]}, "B02_10m": {}}, "B02_10m"),
        # one resolution: the COG before the product's JPEG 2000, whatever their order
        (
            {
                "x": {"type": "image/jp2", "eo:bands": [{"name": "B02"}]},
                "y": {"href": "B02.tif", "bands": [{"name": "B02"}]},
            },
            "y",
        ),
        ({"blue": {"href": "b.tif"}, "blue-jp2": {"href": "b.jp2"}}, "blue"),  # Earth Search's JP2 copy is no key
        # the Planetary Computer's true-colour image names B04, B03 and B02 in its eo:bands: no band's asset
        ({"visual": {"gsd": 10, "eo:bands": [{"name": "B02"}, {"name": "B03"}, {"name": "B04"}]}, "B02": {}}, "B02"),
    ],
)
def test_the_asset_a_band_is_read_from(assets: dict, chosen: str) -> None:
    assert band_assets("item.json", assets)["B2"][0] == chosen


@pytest.mark.parametrize(
    ("asset", "dn"),
    [
        ({"raster:bands": [{"scale": 0.0001, "offset": -0.1}]}, -1000),  # STAC 1.0 (Earth Search)
        ({"bands": [{"name": "B02", "raster:scale": 0.0001, "raster:offset": -0.1}]}, -1000),  # STAC 1.1, per band
        ({"raster:scale": 0.0001, "raster:offset": -0.1}, -1000),  # STAC 1.1, the asset's own
        ({"raster:scale": 0.0001}, 0),  # a scale alone declares no offset: the baseline (none here) decides
        ({"raster:offset": -1000}, -1000),  # in DN (no scale)
    ],
)
def test_the_offsets_an_asset_declares(asset: dict, dn: int) -> None:
    assert stac_offset(asset, None, "item.json", "B02") == dn
    if "offset" not in str(asset):
        assert stac_offset(asset, "05.11", "item.json", "B02") == -1000


@pytest.mark.parametrize(
    ("bucket", "hint"),
    [
        ("eodata", "eodata is the Copernicus Data Space Ecosystem's bucket: set AWS_S3_ENDPOINT=eodata.dataspace."),
        ("sentinel-s2-l1c", "sentinel-s2-l1c bills the requester: set AWS_REQUEST_PAYER=requester and your AWS"),
    ],
)
def test_an_item_in_a_bucket_that_needs_settings_says_which(
    weights: Path,
    tmp_path: Path,
    bucket: str,
    hint: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    """A Copernicus Data Space item (its hrefs in s3://eodata, served at its own endpoint with its own keys) and an
    Earth Search Level-1C item (s3://sentinel-s2-l1c, which bills the requester) read without those settings: the
    line says what the bucket needs, beside GDAL's reason (no credentials; with keys for AWS, eodata "does not exist").
    Nothing leaves this machine: no credentials, and GDAL asks no cloud's instance metadata for any."""
    for name in ("AWS_S3_ENDPOINT", "AWS_REQUEST_PAYER", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("CPL_AWS_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("CPL_AWS_AUTODETECT_EC2", "NO")
    assets = {band_code(b): {"href": f"s3://{bucket}/tiles/33/U/UU/{band_code(b)}.jp2"} for b in S2_BANDS}
    item = tmp_path / "item.json"
    item.write_text(json.dumps({"type": "Feature", "id": "x", "properties": {}, "assets": assets}))
    argv = ["remove-clouds", "--weights", str(weights), "--s2", str(item), "--out", str(tmp_path / "o.tif")]
    assert main([*argv, "--device", "cpu", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"/vsis3/{bucket}/tiles/33/U/UU/B0" in err and hint in err, err
    if bucket != "eodata":
        monkeypatch.setenv("AWS_REQUEST_PAYER", "requester")  # said: the line is GDAL's
        assert main([*argv, "--device", "cpu", "--no-progress"]) == 2
        assert "bills the requester" not in capsys.readouterr().err


def test_a_vrt_is_named_by_its_files_in_messages(tmp_path: Path) -> None:
    """A failure to read through a VRT made of an S1 pair (or of a file's bands) names the files and bands it
    reads, not the VRT's XML (which GDAL gives as the dataset's name)."""
    from dsen2cr.inputs.geotiff import stack_pair
    from dsen2cr.signed_urls import read_failure

    origin = from_origin(400000, 5800000, 10, 10)
    for name in ("a & b_vv.tif", "a & b_vh.tif"):
        write_geotiff(tmp_path / name, np.full((1, 4, 4), -10, np.float32), crs=CRS_33N, transform=origin)
    xml = stack_pair(str(tmp_path / "a & b_vv.tif"), str(tmp_path / "a & b_vh.tif"), "pair")
    said = read_failure(xml, "TIFFReadEncodedTile() failed")
    assert said == (
        f"{tmp_path}/a & b_vv.tif band 1 + {tmp_path}/a & b_vh.tif band 1: cannot read pixels, a file may be "
        "truncated (TIFFReadEncodedTile() failed)"
    )


def test_s1_pair_equals_the_stacked_file(tmp_path: Path, weights_file: Callable[[str], Path]) -> None:
    import torch

    torch.manual_seed(0)
    sar = weights_file("dsen2cr-small")
    origin = from_origin(500000, 5000000, 10, 10)
    rng = np.random.default_rng(0)
    s2 = write_geotiff(
        tmp_path / "s2.tif", rng.integers(500, 4000, (13, 40, 50)).astype(np.uint16), crs=CRS_33N, transform=origin
    )
    db = rng.uniform(-25, -5, (2, 40, 50)).astype(np.float32)
    stacked = write_geotiff(tmp_path / "s1.tif", db, crs=CRS_33N, transform=origin)
    vv = write_geotiff(tmp_path / "vv.tif", db[:1], crs=CRS_33N, transform=origin)
    vh = write_geotiff(tmp_path / "vh.tif", db[1:], crs=CRS_33N, transform=origin)
    expected = _run(sar, s2, tmp_path / "a.tif", "--s1", str(stacked))
    np.testing.assert_array_equal(_run(sar, s2, tmp_path / "b.tif", "--s1", f"{vv},{vh}"), expected)
    item = {
        "type": "Feature",
        "id": "s1",
        "properties": {},
        "assets": {"vv": {"href": "vv.tif"}, "vh": {"href": "vh.tif"}},
    }
    (tmp_path / "s1.json").write_text(json.dumps(item))
    np.testing.assert_array_equal(_run(sar, s2, tmp_path / "c.tif", "--s1", str(tmp_path / "s1.json")), expected)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2017-02-16T10:21:01.026Z", "2017-02-16T10:21:01.026Z"),
        ("2017-02-16T10:21:01Z", "2017-02-16T10:21:01Z"),
        ("2017-02-16T10:21:01", "2017-02-16T10:21:01Z"),  # no zone: UTC, as Sentinel metadata means it
        ("2017-02-16T12:21:01+02:00", "2017-02-16T10:21:01Z"),
        ("2017-02-16T00:21:01.5+0100", "2017-02-15T23:21:01.5Z"),  # across midnight
        ("2017-02-30T10:21:01Z", None),  # no such day
        ("16/02/2017", None),
        ("", None),
    ],
)
def test_sensing_time_text(text: str, expected: str | None) -> None:
    assert sensing_time_text(text) == expected


def test_sensing_time_of_each_input(workdir: Path) -> None:
    """Where the sensing time comes from: a product's metadata (to the millisecond, where its name says the
    second), a STAC item's datetime (in UTC), else a Sentinel-2 name (the first stamp: the datatake's), else
    unknown."""
    safe = workdir.safe("p", baseline="05.10", shift=1000, offsets=ALL_OFFSETS)
    assert resolve_s2(safe).sensing_time == "2023-06-10T10:15:59.024Z"
    image_data = next(safe.rglob("IMG_DATA"))  # band files T33UUU_20230610T101559_B01.jp2, no metadata
    assert resolve_s2(image_data).sensing_time == "2023-06-10T10:15:59Z"
    (workdir / "stac").mkdir()
    when = {"datetime": "2023-06-10T12:15:59.024+02:00"}
    item = _stac_item(workdir / "stac", safe, keys="planetary", offsets=False, properties=when)
    assert resolve_s2(item).sensing_time == "2023-06-10T10:15:59.024Z"
    s2, _ = workdir.scene()
    assert resolve_s2(s2).sensing_time is None  # s2.tif: nothing says
    named = s2.rename(workdir / "S2A_MSIL1C_20170216T102101_N0204_R065_T33UUU_20170216T102052.tif")
    assert resolve_s2(named).sensing_time == "2017-02-16T10:21:01Z"


def test_sensing_time_of_a_geotiff_from_its_tags(workdir: Path, weights: Path) -> None:
    """A GeoTIFF exported with GDAL from a product keeps its metadata (``PRODUCT_START_TIME``, or the SENTINEL2
    driver's ``DATATAKE_1_DATATAKE_SENSING_START``), GDAL's ``IMAGERY`` domain has ``ACQUISITIONDATETIME``, and a
    dsen2cr output records ``DSEN2CR_SENSING_TIME``: each says when, before any name does."""
    s2, _ = workdir.scene()
    cases = [
        ({"PRODUCT_START_TIME": "2021-05-04T10:20:31.024Z"}, None, "2021-05-04T10:20:31.024Z"),
        ({"DATATAKE_1_DATATAKE_SENSING_START": "2021-05-04T10:20:31.024Z"}, None, "2021-05-04T10:20:31.024Z"),
        ({}, {"ACQUISITIONDATETIME": "2021-05-04T10:20:31Z"}, "2021-05-04T10:20:31Z"),
        ({"PRODUCT_START_TIME": "not a time"}, None, "2017-02-16T10:21:01Z"),  # then the name
    ]
    for index, (tags, imagery, expected) in enumerate(cases):
        path = workdir / f"T32TPT_20170216T102101_{index}.tif"
        path.write_bytes(s2.read_bytes())
        with rasterio.open(path, "r+") as dataset:
            dataset.update_tags(**tags)
            if imagery:
                dataset.update_tags(ns="IMAGERY", **imagery)
        assert resolve_s2(path).sensing_time == expected, tags
    # an output of this tool, given again (its name says nothing)
    _run(weights, workdir / "T32TPT_20170216T102101_0.tif", workdir / "out.tif")
    assert resolve_s2(workdir / "out.tif").sensing_time == "2021-05-04T10:20:31.024Z"


def test_output_records_the_sensing_time(weights: Path, workdir: Path) -> None:
    safe = workdir.safe("p")
    _run(weights, safe, workdir / "safe.tif")
    s2, _ = workdir.scene()
    _run(weights, s2, workdir / "plain.tif")
    with rasterio.open(workdir / "safe.tif") as safe_out, rasterio.open(workdir / "plain.tif") as plain_out:
        assert safe_out.tags()["DSEN2CR_SENSING_TIME"] == "2023-06-10T10:15:59.024Z"
        assert plain_out.tags()["DSEN2CR_SENSING_TIME"] == "unknown"


# ------------------------------------------------------------------------------------------------ bad input


def _safe_without_metadata(t: Path) -> Path:
    return t.safe(metadata=False)


def _offsets_missing_bands(t: Path) -> Path:
    return t.safe(baseline="05.10", offsets={i: -1000 for i in range(10)})


def _zip_without_product(t: Path) -> Path:
    with zipfile.ZipFile(t / "nothing.SAFE.zip", "w") as z:
        z.writestr("readme.txt", "no product here")
    return t / "nothing.SAFE.zip"


def _stac_without_bands(t: Path) -> Path:
    safe = t.safe("p")
    (t / "stac").mkdir()
    return _stac_item(t / "stac", safe, keys="planetary", offsets=False, drop=("B10", "B11"))


def _assets_on_two_crs(t: Path) -> Path:
    safe = t.safe("p")
    (t / "stac").mkdir()
    item = _stac_item(t / "stac", safe, keys="planetary", offsets=False)
    with rasterio.open(t / "stac" / "B11.tif") as src:
        data, transform = src.read(), src.transform
    write_geotiff(t / "stac" / "B11.tif", data, crs=CRS.from_epsg(32632), transform=transform)
    return item


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (_safe_without_metadata, "no MTD_MSIL1C.xml or MTD_MSIL2A.xml in the product"),
        (_offsets_missing_bands, "RADIO_ADD_OFFSET list misses bands B10, B11, B12"),
        (_zip_without_product, "nothing.SAFE.zip: no Sentinel-2 product inside"),
        (_stac_without_bands, "STAC item lacks the assets of bands B10, B11"),
        (_assets_on_two_crs, "B11.tif: S2 band is on EPSG:32632, but B02"),
    ],
    ids=[
        "SAFE without metadata",
        "offset list misses bands",
        "zip without product",
        "STAC without bands",
        "assets on two CRSs",
    ],
)
def test_bad_products(
    setup: Callable[[Path], Path], message: str, weights: Path, check_case: Callable[[dict], None]
) -> None:
    def argv(t: Path) -> list[str]:
        return ["remove-clouds", "--weights", str(weights), "--s2", str(setup(t)), "--out", str(t / "o.tif")]

    check_case({"setup": lambda t: [*argv(t), "--no-progress"], "message": message, "absent": ("o.tif",)})


def test_s1_pair_on_two_grids_is_refused(tmp_path: Path) -> None:
    from dsen2cr.inputs import resolve_s1

    db = np.full((1, 40, 50), -12, np.float32)
    vv = write_geotiff(tmp_path / "vv.tif", db, crs=CRS_33N, transform=from_origin(500000, 5000000, 10, 10))
    vh = write_geotiff(tmp_path / "vh.tif", db, crs=CRS_33N, transform=from_origin(500010, 5000000, 10, 10))
    with pytest.raises(DSen2CRError, match="VV and VH are not on one grid"):
        resolve_s1(f"{vv},{vh}")


def test_stac_item_in_a_folder_with_spaces_and_accents(
    weights: Path, tmp_path: Path, make_safe: Callable[..., Path]
) -> None:
    """Relative hrefs resolve in a folder named ``my dir é`` (the item's location is percent-encoded as a URI:
    it is decoded again before GDAL opens the files)."""
    safe = make_safe(tmp_path / "p", baseline="05.10", shift=1000, offsets=ALL_OFFSETS)
    folder = tmp_path / "my dir é"
    folder.mkdir()
    item = _stac_item(folder, safe, keys="planetary", offsets=False)
    np.testing.assert_array_equal(_run(weights, item, tmp_path / "s.tif"), _run(weights, safe, tmp_path / "f.tif"))


@pytest.mark.parametrize("level", ["L1C", "L2A"])
def test_band_files_read_side_by_side_give_the_same_pixels(
    tmp_path: Path,
    make_safe: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
    machine_of: Callable[[int | None], None],
    level: str,
) -> None:
    """A product's band files read on several threads at once (a GPU run's reader) give what one thread reading
    them in turn gives, on windows inside and at the edges; B02 is the file's values less the declared offset
    and a 20 m band each of its pixels 2 x 2 times (nearest), both computed here from the band arrays."""
    import threading
    import time

    import conftest
    from dsen2cr import auto
    from dsen2cr.inputs import readers
    from dsen2cr.inputs.readers import S2Source

    safe = make_safe(tmp_path, level=level, baseline="05.10", shift=1000, offsets=ALL_OFFSETS)
    threads: set[str] = set()
    real_read = readers.read_window

    def recording(dataset: object, window: object = None) -> np.ndarray:
        threads.add(threading.current_thread().name)
        time.sleep(0.01)  # reads of a few pixels end at once: let them overlap as a tile's do
        return real_read(dataset, window)  # type: ignore[arg-type]

    monkeypatch.setattr(readers, "read_window", recording)
    one, four = S2Source(safe), S2Source(safe, band_threads=4)
    windows = [Window(0, 0, SIZE, SIZE), Window(7, 13, 29, 31), Window(SIZE - 9, SIZE - 5, 9, 5)]
    try:
        for window in windows:
            threads.clear()
            side_by_side = four.read(window)
            assert len(threads) > 1 and all(name.startswith("dsen2cr-bands") for name in threads), threads
            np.testing.assert_array_equal(side_by_side, one.read(window))
        rows, cols = window.toslices()
        np.testing.assert_array_equal(side_by_side[S2_BANDS.index("B2")], conftest._band_array("B2")[0][rows, cols])
        b5 = np.repeat(np.repeat(conftest._band_array("B5")[0], 2, axis=0), 2, axis=1)
        np.testing.assert_array_equal(side_by_side[S2_BANDS.index("B5")], b5[rows, cols])
    finally:
        one.close()
        four.close()
    for cores, expected in ((16, 13), (4, 4), (None, 1)):
        machine_of(cores)
        assert auto.resolve_band_threads(torch.device("cuda")) == expected
        assert auto.resolve_band_threads(torch.device("cpu")) == 1


@pytest.mark.parametrize("kind", ["GeoTIFF", "L1C", "L2A"])
def test_read_bands_gives_what_read_gives_for_those_bands(
    tmp_path: Path, make_safe: Callable[..., Path], kind: str
) -> None:
    """``S2Source.read_bands`` (the masks' statistics pass reads B2, B8 and B11 with it): the same DN, offsets
    removed, as those bands of :meth:`S2Source.read`, from one multi-band file (``--s2-offset``) or band files
    (declared offsets; Level-2A without B10)."""
    from dsen2cr.inputs.readers import S2Source

    if kind == "GeoTIFF":
        rng = np.random.default_rng(7)
        dn = rng.integers(0, 9000, size=(13, 40, 50)).astype(np.uint16)
        path = write_geotiff(tmp_path / "s2.tif", dn, crs=CRS.from_epsg(32632), transform=from_origin(5e5, 5e6, 10, 10))
        source = S2Source(str(path), offset=-1000)
    else:
        source = S2Source(str(make_safe(tmp_path, level=kind, baseline="05.10", shift=1000, offsets=ALL_OFFSETS)))
    try:
        window = Window(3, 5, 29, 31)
        whole = source.read(window)
        for bands in (["B2", "B8", "B11"], ["B12", "B1"], ["B8A"]):
            expected = whole[[S2_BANDS.index(band) for band in bands]]
            np.testing.assert_array_equal(source.read_bands(window, bands), expected)
        if kind == "GeoTIFF":  # by hand: DN - 1000, at least 1, nodata 0 kept
            raw = dn[S2_BANDS.index("B2")][window.toslices()].astype(np.int64)
            by_hand = np.where(raw == 0, 0, np.clip(raw - 1000, 1, None))
            np.testing.assert_array_equal(source.read_bands(window, ["B2"])[0], by_hand)
    finally:
        source.close()
