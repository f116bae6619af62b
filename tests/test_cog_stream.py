"""The COG compressed while it is written (outputs/cog_stream.py) against the COG GDAL's driver copies from the
same pixels and overviews: the same pixels at every level, the same tags, statistics and metadata, GDAL's COG
layout (directories first, the smallest overview's data first, tile leaders and trailers)."""

from __future__ import annotations

import os
import struct
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np
import pytest
import rasterio
import tifffile
from rasterio.enums import ColorInterp
from rasterio.transform import from_origin
from rasterio.windows import Window

import dsen2cr.outputs.cog_stream as cog_stream
from dsen2cr.outputs.geotiff import COG_OPTIONS, cog_options, cog_writer

UTM = "EPSG:32633"


def _write(path: Path, image: np.ndarray, nodata: float, options: dict, *, stream: bool, rows: int = 100) -> None:
    """``image`` written in full-width strips of ``rows`` with band metadata, as remove-clouds writes a scene."""
    count, height, width = image.shape
    profile = dict(height=height, width=width, count=count, dtype=str(image.dtype), crs=UTM, nodata=nodata)
    profile["transform"] = from_origin(500000, 5000000, 10, 10)
    with cog_writer(path, profile, options, overviews="average", stream=stream) as dataset:
        for band in range(1, count + 1):
            dataset.set_band_description(band, f"B{band}")
        dataset.update_tags(DSEN2CR_MODEL="m", DSEN2CR_PRECISION="fp32")
        dataset.scales, dataset.offsets = [1e-4] * count, [0.0] * count
        if count == 3:
            dataset.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue]
        for row in range(0, height, rows):
            strip = image[:, row : row + rows]
            dataset.write(strip, window=Window(0, row, width, strip.shape[1]))


def _metadata_items(value: str) -> dict[tuple[str, str | None], str]:
    """GDAL_METADATA's items by (name, sample)."""
    root = ElementTree.fromstring(value)
    return {(item.get("name", ""), item.get("sample")): item.text or "" for item in root.iter("Item")}


def _plain(value: object) -> object:
    """A tag's value comparable with ``==`` (tifffile gives the colour map as an array)."""
    return value.tolist() if isinstance(value, np.ndarray) else value


def _assert_same_cog(ours: Path, gdal: Path) -> None:
    """Every directory's tags equal but for the tiles' positions and sizes (statistics to 1e-12); every level's
    pixels equal; rasterio's view of both equal."""
    with tifffile.TiffFile(ours) as a, tifffile.TiffFile(gdal) as b:
        assert len(a.pages) == len(b.pages) and a.is_bigtiff == b.is_bigtiff
        for page_a, page_b in zip(a.pages, b.pages, strict=True):
            tags_a = {t.code: _plain(t.value) for t in page_a.tags.values() if t.code not in (324, 325)}
            tags_b = {t.code: _plain(t.value) for t in page_b.tags.values() if t.code not in (324, 325)}
            metadata_a, metadata_b = tags_a.pop(42112, None), tags_b.pop(42112, None)
            assert tags_a == tags_b
            if metadata_b is not None:
                items_a, items_b = _metadata_items(metadata_a), _metadata_items(metadata_b)
                assert items_a.keys() == items_b.keys()
                for key, value in items_b.items():
                    if key[0].startswith("STATISTICS_"):
                        assert float(items_a[key]) == pytest.approx(float(value), rel=1e-12, abs=1e-12), key
                    else:
                        assert items_a[key] == value, key
    with rasterio.open(ours) as a, rasterio.open(gdal) as b:
        assert a.profile == b.profile and a.overviews(1) == b.overviews(1)
        assert a.tags(ns="IMAGE_STRUCTURE") == b.tags(ns="IMAGE_STRUCTURE")
        assert (a.tags(), a.descriptions, a.scales, a.offsets, a.colorinterp) == (
            b.tags(),
            b.descriptions,
            b.scales,
            b.offsets,
            b.colorinterp,
        )
    for level in [None, *range(len(tifffile.TiffFile(gdal).pages) - 1)]:
        with rasterio.open(ours, overview_level=level) as a, rasterio.open(gdal, overview_level=level) as b:
            np.testing.assert_array_equal(a.read(), b.read())


def _assert_gdal_cog_layout(path: Path) -> None:
    """What GDAL's COG validator checks, and GDAL's tile leaders (size) and trailers (last 4 bytes again)."""
    with rasterio.open(path) as cog:
        assert cog.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        levels = len(cog.overviews(1))
        ifds = [int(cog.get_tag_item("IFD_OFFSET", "TIFF", bidx=1))]
        ifds += [int(cog.get_tag_item("IFD_OFFSET", "TIFF", bidx=1, ovr=i)) for i in range(levels)]
        first_blocks = [int(cog.get_tag_item("BLOCK_OFFSET_0_0", "TIFF", bidx=1))]
        first_blocks += [int(cog.get_tag_item("BLOCK_OFFSET_0_0", "TIFF", bidx=1, ovr=i)) for i in range(levels)]
    assert ifds[0] in (192, 200) and ifds == sorted(ifds)  # 8 or 16 byte header, GDAL's 183 byte ghost
    assert first_blocks == sorted(first_blocks, reverse=True) and first_blocks[-1] > ifds[-1]
    data = path.read_bytes()
    with tifffile.TiffFile(path) as tiff:
        tiles = [t for page in tiff.pages for t in zip(page.dataoffsets, page.databytecounts, strict=True)]
    for offset, count in tiles:
        assert struct.unpack_from("<I", data, offset - 4)[0] == count
        assert data[offset + count : offset + count + 4] == data[offset + count - 4 : offset + count]
    assert len(data) == max(offset + count for offset, count in tiles) + 4  # nothing after the last trailer


@pytest.mark.parametrize(
    ("shape", "compression", "level"),
    [((3, 390, 518), "deflate", None), ((13, 700, 1100), "zstd", 1), ((2, 200, 150), "deflate", 1)],
)
def test_streamed_cog_is_the_cog_gdal_writes(tmp_path: Path, shape: tuple, compression: str, level: int) -> None:
    """uint16 reflectances with no-data edges, RGB or 13 bands, 0 to 2 overview levels, deflate or zstd."""
    rng = np.random.default_rng(3)
    image = rng.integers(1, 10000, shape, dtype=np.uint16)
    image[:, :37] = 0
    image[:, :, -11:] = 0
    options = cog_options(compression, level)
    _write(tmp_path / "ours.tif", image, 0, options, stream=True)
    _write(tmp_path / "gdal.tif", image, 0, options, stream=False)
    _assert_same_cog(tmp_path / "ours.tif", tmp_path / "gdal.tif")
    _assert_gdal_cog_layout(tmp_path / "ours.tif")
    with rasterio.open(tmp_path / "ours.tif") as cog:
        np.testing.assert_array_equal(cog.read(), image)
        valid = image[0][image[0] != 0].astype(np.float64)  # statistics by hand, float64
        stats = cog.tags(1)
        assert float(stats["STATISTICS_MEAN"]) == pytest.approx(valid.mean(), rel=1e-13)
        assert float(stats["STATISTICS_STDDEV"]) == pytest.approx(valid.std(), rel=1e-12)
        assert (float(stats["STATISTICS_MINIMUM"]), float(stats["STATISTICS_MAXIMUM"])) == (valid.min(), valid.max())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gdal.tif", "ours.tif"]


def test_streamed_sigma_map_keeps_nan_and_nodata_out_of_its_statistics(tmp_path: Path) -> None:
    """A float32 map (σ: no-data -1, a NaN) with odd sizes: GDAL's COG of the same pixels."""
    rng = np.random.default_rng(4)
    image = rng.uniform(0, 3000, (1, 301, 517)).astype(np.float32)
    image[:, 100:140] = -1
    image[0, 5, 7] = np.nan
    _write(tmp_path / "ours.tif", image, -1, dict(COG_OPTIONS), stream=True, rows=64)
    _write(tmp_path / "gdal.tif", image, -1, dict(COG_OPTIONS), stream=False, rows=64)
    _assert_same_cog(tmp_path / "ours.tif", tmp_path / "gdal.tif")
    _assert_gdal_cog_layout(tmp_path / "ours.tif")
    valid = image[(image != -1) & ~np.isnan(image)].astype(np.float64)
    with rasterio.open(tmp_path / "ours.tif") as cog:
        assert float(cog.tags(1)["STATISTICS_MEAN"]) == pytest.approx(valid.mean(), rel=1e-12)


def test_streamed_class_map_keeps_its_colour_table_and_mode_overviews(tmp_path: Path) -> None:
    """The cloud/shadow map's COG (uint8 classes, no-data 255, a colour table): GDAL's COG of the same pixels and
    overviews (the pyramid's most common classes), palette and all."""
    rng = np.random.default_rng(9)
    image = rng.choice(np.array([0, 1, 2, 255], np.uint8), size=(1, 530, 610), p=[0.5, 0.3, 0.15, 0.05])
    colours = {0: (90, 110, 90, 255), 1: (255, 255, 255, 255), 2: (20, 30, 120, 255), 255: (0, 0, 0, 0)}
    for name, stream in (("ours.tif", True), ("gdal.tif", False)):
        profile = dict(height=530, width=610, count=1, dtype="uint8", crs=UTM, nodata=255)
        profile["transform"] = from_origin(500000, 5000000, 10, 10)
        with cog_writer(tmp_path / name, profile, dict(COG_OPTIONS), overviews="mode", stream=stream) as dataset:
            dataset.set_band_description(1, "cloud/shadow map")
            dataset.write_colormap(1, colours)
            dataset.write(image[:, :300], window=Window(0, 0, 610, 300))
            dataset.write(image[:, 300:], window=Window(0, 300, 610, 230))
    _assert_same_cog(tmp_path / "ours.tif", tmp_path / "gdal.tif")
    _assert_gdal_cog_layout(tmp_path / "ours.tif")
    with rasterio.open(tmp_path / "ours.tif") as cog:
        assert cog.colormap(1)[2] == colours[2] and cog.overviews(1) == [2, 4]
        np.testing.assert_array_equal(cog.read(), image)


@pytest.mark.parametrize("predictor", ["1", "2"])
def test_option_names_in_any_case_give_the_same_cog(tmp_path: Path, predictor: str) -> None:
    """GDAL's creation options are case-insensitive: ``COMPRESS``/``PREDICTOR``/``LEVEL``/``BLOCKSIZE`` stream
    the COG GDAL writes with them (the predictor applied to the tiles exactly when the tags say so)."""
    image = np.random.default_rng(11).integers(1, 10000, (3, 390, 518), dtype=np.uint16)
    options = {"driver": "COG", "COMPRESS": "ZSTD", "PREDICTOR": predictor, "LEVEL": "3", "BLOCKSIZE": 256}
    assert cog_stream.streams(options, "uint16")
    _write(tmp_path / "ours.tif", image, 0, options, stream=True)
    _write(tmp_path / "gdal.tif", image, 0, options, stream=False)
    _assert_same_cog(tmp_path / "ours.tif", tmp_path / "gdal.tif")
    _assert_gdal_cog_layout(tmp_path / "ours.tif")


def test_a_cog_over_4_gib_is_a_bigtiff(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past the classic TIFF's 4 GiB of offsets the file is a BigTIFF (the limit lowered here to a few bytes):
    GDAL reads the same pixels at every level and still reports GDAL's COG layout."""
    image = np.random.default_rng(5).integers(1, 10000, (3, 390, 518), dtype=np.uint16)
    monkeypatch.setattr(cog_stream, "CLASSIC_TIFF_LIMIT", 1000)
    _write(tmp_path / "ours.tif", image, 0, dict(COG_OPTIONS), stream=True)
    with tifffile.TiffFile(tmp_path / "ours.tif") as tiff:
        assert tiff.is_bigtiff and len(tiff.pages) == 3
    _assert_gdal_cog_layout(tmp_path / "ours.tif")
    with rasterio.open(tmp_path / "ours.tif") as cog:
        np.testing.assert_array_equal(cog.read(), image)
        assert cog.overviews(1) == [2, 4] and cog.crs == UTM


def test_without_copy_file_range_the_data_is_copied_by_reads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A filesystem without copy_file_range (or a failure part way) still gives the whole file."""
    image = np.random.default_rng(6).integers(1, 10000, (3, 390, 518), dtype=np.uint16)
    _write(tmp_path / "kernel.tif", image, 0, dict(COG_OPTIONS), stream=True)
    calls = []

    def partly(source: int, target: int, count: int) -> int:
        if calls:
            raise OSError(18, "Invalid cross-device link")
        calls.append(count)
        return os.copy_file_range(source, target, min(count, 1000))

    monkeypatch.setattr(cog_stream.os, "copy_file_range", partly)
    _write(tmp_path / "reads.tif", image, 0, dict(COG_OPTIONS), stream=True)
    assert calls and (tmp_path / "kernel.tif").read_bytes() == (tmp_path / "reads.tif").read_bytes()


def test_without_imagecodecs_gdal_compresses_at_the_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Python without imagecodecs (or an imagecodecs built without the codec) still writes the same COG, by
    GDAL's copy."""
    image = np.random.default_rng(10).integers(1, 10000, (3, 390, 518), dtype=np.uint16)
    _write(tmp_path / "gdal.tif", image, 0, dict(COG_OPTIONS), stream=False)
    monkeypatch.setattr(cog_stream, "imagecodecs", None)
    assert not cog_stream.streams(dict(COG_OPTIONS), "uint16")
    _write(tmp_path / "fallback.tif", image, 0, dict(COG_OPTIONS), stream=True)
    assert (tmp_path / "fallback.tif").read_bytes() == (tmp_path / "gdal.tif").read_bytes()


def test_a_failed_compression_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An error in a compression thread ends the write with that error; no output, staging or tile file."""
    image = np.random.default_rng(7).integers(1, 10000, (3, 390, 518), dtype=np.uint16)

    def broken(self: cog_stream.COGStream, rows: np.ndarray) -> list[bytes]:
        raise MemoryError("no memory for a tile")

    monkeypatch.setattr(cog_stream.COGStream, "_tiles", broken)
    with pytest.raises(MemoryError, match="no memory for a tile"):
        _write(tmp_path / "out.tif", image, 0, dict(COG_OPTIONS), stream=True)
    assert list(tmp_path.iterdir()) == []


def test_gdals_template_is_the_16_px_corner_not_the_image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The tags come from a COG GDAL makes of the staging file's 16 x 16 corner: GDAL copies nothing larger.
    (The corner's VRT set ``RasterXSize``, which GDAL does not read beside its own ``rasterXSize``: GDAL
    compressed a COG of the whole image, with overviews, after the last window: 5.7 s of tail on a
    4096 x 2048 image, more than the GDAL copy the stream replaces.)"""
    templates: list[tuple[int, int]] = []
    real_copy = cog_stream.rasterio.shutil.copy

    def recording_copy(source: object, destination: object, **options: object) -> None:
        if str(destination).endswith(".template.tif"):
            with rasterio.open(source) as dataset:  # type: ignore[arg-type]
                templates.append((dataset.width, dataset.height))
        real_copy(source, destination, **options)

    monkeypatch.setattr(cog_stream.rasterio.shutil, "copy", recording_copy)
    image = np.random.default_rng(4).integers(1, 10000, (3, 300, 700), dtype=np.uint16)
    _write(tmp_path / "ours.tif", image, 0, cog_options(), stream=True)
    assert templates == [(16, 16)]
    with rasterio.open(tmp_path / "ours.tif") as cog:
        np.testing.assert_array_equal(cog.read(), image)


def test_windows_in_any_order_some_never_written(tmp_path: Path) -> None:
    """A streamed COG keeps the image's rows in memory (nothing is read back from the staging file): windows
    written in a shuffled order, one never written (nodata), give GDAL's COG of the same writes, every level."""
    rng = np.random.default_rng(5)
    image = rng.integers(1, 10000, (3, 300, 520), dtype=np.uint16)
    windows = [
        Window(col, row, min(64, 520 - col), min(64, 300 - row))
        for row in range(0, 300, 64)
        for col in range(0, 520, 64)
    ]
    shuffled = rng.permutation(len(windows))
    skipped, order = windows[shuffled[0]], shuffled[1:]  # the first of the shuffled windows is never written
    profile = dict(height=300, width=520, count=3, dtype="uint16", crs=UTM, nodata=0)
    profile["transform"] = from_origin(500000, 5000000, 10, 10)
    for name, stream in (("ours", True), ("gdal", False)):
        with cog_writer(tmp_path / f"{name}.tif", profile, cog_options(), overviews="average", stream=stream) as out:
            for index in order:
                rows, cols = windows[index].toslices()
                out.write(image[:, rows, cols], window=windows[index])
    _assert_same_cog(tmp_path / "ours.tif", tmp_path / "gdal.tif")
    _assert_gdal_cog_layout(tmp_path / "ours.tif")
    expected = image.copy()
    expected[(slice(None), *skipped.toslices())] = 0
    with rasterio.open(tmp_path / "ours.tif") as cog:
        np.testing.assert_array_equal(cog.read(), expected)
