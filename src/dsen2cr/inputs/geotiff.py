"""GeoTIFF inputs: a 13-band (L1C) or 12-band (L2A) S2 file, or one whose band descriptions name the bands (read by
them; its SCL band, or Earth Engine's QA60 and MSK_CLASSI bands, a product mask); an S1 ``VV,VH`` pair of
single-band files stacked into a 2-band VRT, and an S1 file's bands named VV and VH elsewhere than 1 and 2 taken
into one."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from dsen2cr.errors import DSen2CRError
from dsen2cr.inputs.product import L2A_BANDS, S2Product, band_code, band_of, sensing_time_text
from dsen2cr.preprocessing import S2_BANDS

log = logging.getLogger(__name__)

#: Metadata that says when a GeoTIFF's scene was sensed, in order: a dsen2cr output's, then what GDAL copies from a
#: product (its SENTINEL2 driver's names) into a GeoTIFF exported from it.
SENSING_TIME_TAGS = ("DSEN2CR_SENSING_TIME", "PRODUCT_START_TIME", "DATATAKE_1_DATATAKE_SENSING_START", "SENSING_TIME")


def geotiff_s2(path: Path, offset: int | None) -> S2Product:
    """A 13-band (L1C order) or 12-band (L2A order) file, or one whose band descriptions name the S2 bands (read by
    them, whatever else it holds: Earth Engine's QA bands); its sensing time from its metadata where that says it
    (:data:`SENSING_TIME_TAGS`, then GDAL's ``IMAGERY`` domain's ``ACQUISITIONDATETIME``)."""
    from dsen2cr.rasters import open_raster

    with open_raster(path, what="S2") as dataset:
        count, descriptions = dataset.count, dataset.descriptions
        sensing_time = tagged_sensing_time(dataset, SENSING_TIME_TAGS)
        grid = _grid_of(dataset)
    level, file_bands = _named_bands(path, descriptions)
    if level is None and count not in (len(S2_BANDS), len(L2A_BANDS)):
        named = [band for band in S2_BANDS if band in file_bands]
        said = (
            f"; its band descriptions name {', '.join(named)}, not {', '.join(b for b in S2_BANDS if b not in named)}"
        )
        raise DSen2CRError(
            f"{path}: S2 has {count} bands, expected 13 (L1C: B1 ... B12, B8A) or 12 (L2A: the same without B10)"
            + (said if named else "")
        )
    if level is None:
        level = "L1C" if count == len(S2_BANDS) else "L2A"
        file_bands = {}
    bands = list(S2_BANDS if level == "L1C" else L2A_BANDS)
    indexes = [file_bands[band] for band in bands] if file_bands else []
    product = S2Product(str(path), bands, [str(path)], level, file_bands=indexes)
    if indexes and indexes != list(range(1, len(bands) + 1)):
        unread = [d or f"band {i}" for i, d in enumerate(descriptions, start=1) if i not in indexes]
        log.info(
            "%s: bands read by their descriptions (%s)%s",
            path,
            ", ".join(f"{band} is band {index}" for band, index in zip(bands, indexes, strict=True)),
            f"; {', '.join(unread)} not read" if unread else "",
        )
    product.sensing_time = sensing_time
    upper = [(d or "").strip().upper() for d in descriptions]
    once = {name: i for i, name in enumerate(upper, start=1) if upper.count(name) == 1}  # a mask band named once
    cloud_bands = [(str(path), once[name], name) for name in EARTH_ENGINE_CLOUD_BANDS if name in once]
    if level == "L2A" and "SCL" in once:  # an export's scene classification (Earth Engine's S2_SR): --mask product
        product.masks["SCL"] = _vrt([(str(path), once["SCL"], "SCL")], grid)
    elif cloud_bands:  # Earth Engine's cloud bands (S2_HARMONIZED: Level-1C, no SCL)
        product.masks["EE"] = _vrt(cloud_bands, grid)
    if offset is not None:
        product.offsets, product.offset_from = [offset] * len(bands), "option"
    return product


#: Earth Engine's cloud bands of Sentinel-2 (``COPERNICUS/S2_HARMONIZED``, ``S2_SR_HARMONIZED``), in the order a
#: product mask reads them (``scene.masking.product_mask``, kind ``EE``): QA60 (bit 10 opaque clouds, bit 11
#: cirrus; masked out from February 2022 to February 2024), then the MSK_CLASSI bands (1: clouds; masked out
#: before February 2024). QA10 and QA20 are always empty; MSK_CLASSI_SNOW_ICE is not cloud.
EARTH_ENGINE_CLOUD_BANDS = ("QA60", "MSK_CLASSI_OPAQUE", "MSK_CLASSI_CIRRUS")


def _named_bands(path: Path, descriptions: tuple[str | None, ...]) -> tuple[str | None, dict[str, int]]:
    """The level a file's band descriptions name every band of (L1C's 13, else L2A's 12), or None, and each S2
    band they name -> its band (1-based). A band named twice is refused."""
    named: dict[str, int] = {}
    for index, description in enumerate(descriptions, start=1):
        band = band_of(description or "")
        if band is not None and band in named:
            raise DSen2CRError(f"{path}: band descriptions name {description} twice (bands {named[band]} and {index})")
        if band is not None:
            named[band] = index
    level = next((lvl for lvl, need in (("L1C", S2_BANDS), ("L2A", L2A_BANDS)) if set(need) <= set(named)), None)
    return level, named


def tagged_sensing_time(dataset: Any, names: tuple[str, ...]) -> str | None:
    """When an open raster's scene was sensed, from the first of its tags ``names`` that holds a date and time
    (:func:`~dsen2cr.inputs.product.sensing_time_text`), then GDAL's ``IMAGERY`` domain's ``ACQUISITIONDATETIME``;
    None when none does."""
    tags = dataset.tags()
    said = [tags.get(name) for name in names] + [dataset.tags(ns="IMAGERY").get("ACQUISITIONDATETIME")]
    return next(filter(None, map(sensing_time_text, said)), None)


def stack_pair(vv: str, vh: str, source: str, *, named: bool = False) -> str:
    """A 2-band VRT (XML text GDAL opens directly) of two single-band files on one grid. A file whose name or band
    description names the other polarisation (``s1_vh.tif`` first) is refused; a band whose file names its own
    (or all, when ``named``: a STAC item's ``vv`` and ``vh`` assets) gets it as its description, so that what
    the files said is known from the VRT."""
    from dsen2cr.rasters import open_raster

    grids, descriptions = [], []
    for (name, slot), path in zip((("VV", "first"), ("VH", "second")), (vv, vh), strict=True):
        with open_raster(path, bands=1, what=f"S1 {name}") as dataset:
            grids.append(_grid_of(dataset))
            description = dataset.descriptions[0] or ""
        said = {
            what: polarisation(text) for what, text in (("name", Path(path).name), ("band description", description))
        }
        for what, found in said.items():
            if found in ("VV", "VH") and found != name:
                raise DSen2CRError(
                    f"{path}: its {what} says {found}, but an S1 pair's {slot} file is {name} (VV.tif,VH.tif)"
                )
        descriptions.append(name if named or name in said.values() else "")
    if grids[0][:4] != grids[1][:4]:
        raise DSen2CRError(f"{source}: VV and VH are not on one grid (CRS, transform or size differ)")
    return _vrt([(vv, 1, descriptions[0]), (vh, 1, descriptions[1])], grids[0])


def select_polarisations(path: str) -> str:
    """An S1 file as VV and VH: the file itself where its band descriptions say nothing else (VV, VH; no names),
    else a 2-band VRT of the bands they name VV and VH, in any order and beside other bands (Earth Engine's
    ``COPERNICUS/S1_GRD`` exported whole: VV, VH, angle). A polarisation named twice is refused."""
    from dsen2cr.rasters import open_raster

    with open_raster(path, what="S1 (VV, VH)") as dataset:
        descriptions = dataset.descriptions
        grid = _grid_of(dataset)
    found = [polarisation(d) for d in descriptions]
    for name in ("VV", "VH"):
        if found.count(name) > 1:
            first, second = (i for i, said in enumerate(found, start=1) if said == name)
            raise DSen2CRError(
                f"{path}: S1 band descriptions name {name} twice (bands {first} and {second}: "
                f"{descriptions[first - 1]!r}, {descriptions[second - 1]!r})"
            )
    if "VV" not in found or "VH" not in found or found == ["VV", "VH"]:
        return path
    vv, vh = found.index("VV") + 1, found.index("VH") + 1
    log.info("%s: VV is band %d, VH band %d (by their band descriptions)", path, vv, vh)
    return _vrt([(path, vv, "VV"), (path, vh, "VH")], grid)


def _grid_of(dataset: Any) -> tuple:
    """What a VRT of an open raster's bands takes from it (:func:`_vrt`): CRS, transform, width, height, its first
    band's data type and nodata."""
    return dataset.crs, dataset.transform, dataset.width, dataset.height, dataset.dtypes[0], dataset.nodata


def _vrt(sources: list[tuple[str, int, str]], grid: tuple) -> str:
    """A VRT (XML text GDAL opens directly) of ``sources`` (file, its band, the description to give it: none where
    empty), on ``grid`` (CRS, transform, width, height, data type, nodata: the files')."""
    from xml.sax.saxutils import escape

    from rasterio.dtypes import dtype_rev, typename_fwd

    crs, transform, width, height, dtype, nodata = grid
    vrt_type = typename_fwd[dtype_rev[dtype]]  # the files' own (an integer pair is refused as the file would be)
    bands = ""
    for index, (path, band, description) in enumerate(sources, start=1):
        nodata_xml = f"<NoDataValue>{nodata}</NoDataValue>" if nodata is not None else ""
        description_xml = f"<Description>{description}</Description>" if description else ""
        bands += (
            f'<VRTRasterBand dataType="{vrt_type}" band="{index}">{description_xml}{nodata_xml}<SimpleSource>'
            f'<SourceFilename relativeToVRT="0">{escape(str(path))}</SourceFilename><SourceBand>{band}</SourceBand>'
            "</SimpleSource></VRTRasterBand>"
        )
    geotransform = ", ".join(repr(v) for v in transform.to_gdal())
    srs = escape(crs.to_wkt()) if crs is not None else ""
    return (
        f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}"><SRS>{srs}</SRS>'
        f"<GeoTransform>{geotransform}</GeoTransform>{bands}</VRTDataset>"
    )


def polarisation(text: str | None) -> str | None:
    """VV, VH, HH or HV when a band description or file name names exactly one of them, in any case (``VV``,
    ``Sigma0_VV_db``, ``s1_vh.tif``), else None."""
    upper = (text or "").upper()
    names = {p for p in ("VV", "VH", "HH", "HV") if re.search(rf"(^|[^A-Z]){p}([^A-Z]|$)", upper)}
    return names.pop() if len(names) == 1 else None


def check_band_names(name: str, descriptions: tuple[str | None, ...], bands: list[str]) -> None:
    """Refuse a file whose band descriptions name S2 bands in another order than ``bands`` (L1C: B1 ... B12
    with B8A after B8; L2A: the same without B10): its bands would be fed to the network in the wrong places.
    Files without names pass."""
    names = [(d or "").strip().upper() for d in descriptions]
    if not all(re.fullmatch(r"B\d{1,2}A?", n) for n in names):
        return
    found = [band_code(n) for n in names]
    expected = [band_code(b) for b in bands]
    if found != expected:
        raise DSen2CRError(f"{name}: band descriptions say {' '.join(found)}; expected the order {' '.join(expected)}")
