"""Which assets of an S2 STAC item hold the bands, and what their DN mean, as each catalogue says it: Planetary
Computer (``B02``, ``eo:bands``, ``s2:processing_baseline``), Earth Search (``blue``, ``raster:bands`` scale and
offset) and the Copernicus Data Space Ecosystem (STAC 1.1: ``B02_10m``, ``B02_20m`` and ``B02_60m`` each naming
``B02`` in ``bands``, the asset's own ``raster:scale`` and ``raster:offset``, ``processing:version``,
``product:type``). A band held at several resolutions is read from its finest asset."""

from __future__ import annotations

import logging
import math
import re
from typing import TypeGuard

from dsen2cr.errors import DSen2CRError
from dsen2cr.inputs.product import BASELINE_04_OFFSET, MAX_OFFSET_DN, band_of, plausible_offset
from dsen2cr.inputs.safe import baseline_at_least_04

log = logging.getLogger(__name__)

#: Earth Search (Element 84) asset keys of the S2 bands.
EARTH_SEARCH_KEYS = {
    "coastal": "B1",
    "blue": "B2",
    "green": "B3",
    "red": "B4",
    "rededge1": "B5",
    "rededge2": "B6",
    "rededge3": "B7",
    "nir": "B8",
    "nir08": "B8A",
    "nir09": "B9",
    "cirrus": "B10",
    "swir16": "B11",
    "swir22": "B12",
}
#: An asset key that says its resolution (the Copernicus Data Space's ``B02_10m``, ``SCL_20m``): name and metres.
_KEY_RESOLUTION = re.compile(r"(?P<name>.+?)[_-](?P<metres>\d+)m", re.IGNORECASE)


def _listed(asset: dict, field: str) -> list[dict]:
    """The objects of an asset's list ``field`` (``eo:bands``, ``bands``, ``raster:bands``)."""
    entries = asset.get(field)
    return [entry for entry in entries if isinstance(entry, dict)] if isinstance(entries, list) else []


def _key_name(key: str) -> str:
    """An asset key without the resolution it may end with (``B02_10m`` -> ``B02``)."""
    match = _KEY_RESOLUTION.fullmatch(key)
    return match["name"] if match else key


def asset_band(key: str, asset: dict) -> str | None:
    """The S2 band an asset holds: its ``eo:bands`` (or STAC 1.1 ``bands``) name, else its key (``B02``,
    ``B02_10m``, Earth Search's ``blue``), else None; None for an asset of several bands (the true-colour image,
    ``visual``, names B04, B03 and B02)."""
    listed = _listed(asset, "eo:bands") or _listed(asset, "bands")
    if len(listed) > 1:
        return None
    for entry in listed:
        band = band_of(str(entry.get("name", "")))
        if band is not None:
            return band
    return band_of(_key_name(key)) or EARTH_SEARCH_KEYS.get(key.lower())


def asset_resolution(key: str, asset: dict) -> float:
    """An asset's pixel size in metres: its ``gsd``, else the resolution its key ends with (``_20m``), else its
    ``proj:transform``'s; infinity where nothing says (read after any asset whose resolution is known)."""
    gsd = asset.get("gsd")
    if is_finite_number(gsd) and gsd > 0:
        return float(gsd)
    match = _KEY_RESOLUTION.fullmatch(key)
    if match:
        return float(match["metres"])
    transform = asset.get("proj:transform")
    if isinstance(transform, list) and transform and is_finite_number(transform[0]) and transform[0] > 0:
        return float(transform[0])
    return math.inf


def _preference(ranked: tuple[int, tuple[str, dict]]) -> tuple[float, bool, int]:
    """How an asset ranks among those of one band: the finest first, a GeoTIFF before another format (a COG beside
    the product's JPEG 2000), then the item's order."""
    index, (key, asset) = ranked
    geotiff = "tiff" in str(asset.get("type", "")).lower() or str(asset.get("href", "")).lower().endswith(".tif")
    return asset_resolution(key, asset), not geotiff, index


def band_assets(location: str, assets: dict) -> dict[str, tuple[str, dict]]:
    """Each S2 band an item's assets hold -> the key and asset to read it from: of several assets of one band (its
    resolutions, or its COG beside its JPEG 2000), the finest (said at debug level)."""
    candidates: dict[str, list[tuple[int, tuple[str, dict]]]] = {}
    for index, (key, asset) in enumerate(assets.items()):
        band = asset_band(key, asset) if isinstance(asset, dict) else None
        if band is not None:
            candidates.setdefault(band, []).append((index, (key, asset)))
    chosen = {band: min(ranked, key=_preference)[1] for band, ranked in candidates.items()}
    for band, ranked in candidates.items():
        if len(ranked) > 1:
            others = ", ".join(key for _, (key, _) in ranked)
            log.debug("%s: band %s read from asset %s (of %s)", location, band, chosen[band][0], others)
    return chosen


def scl_asset(assets: dict) -> dict | None:
    """The finest scene classification (SCL) asset of an item (``SCL``, ``scl``, ``SCL_20m``), or None."""
    found = [
        (index, (key, asset))
        for index, (key, asset) in enumerate(assets.items())
        if isinstance(asset, dict) and _key_name(key).lower() == "scl"
    ]
    return min(found, key=_preference)[1][1] if found else None


def is_finite_number(value: object) -> TypeGuard[int | float]:
    """Whether a JSON value is a finite number (not a bool, not a string)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _scale_and_offset(asset: dict) -> tuple[object, object, str] | None:
    """An asset's declared (scale, offset, the fields' prefix): STAC 1.0's ``raster:bands`` (``scale``, ``offset``),
    STAC 1.1's ``bands`` (``raster:scale``, ``raster:offset``) or the asset's own ``raster:scale`` and
    ``raster:offset``; None where no offset is declared. A scale not declared is 1."""
    declared = [(e.get("scale", 1.0), e.get("offset"), "raster:bands ") for e in _listed(asset, "raster:bands")]
    declared += [(e.get("raster:scale", 1.0), e.get("raster:offset"), "raster:") for e in _listed(asset, "bands")]
    declared.append((asset.get("raster:scale", 1.0), asset.get("raster:offset"), "raster:"))
    return next((entry for entry in declared if entry[1] is not None), None)


def stac_offset(asset: dict, baseline: str | None, location: str, key: str) -> int:
    """DN to add to asset ``key``: from its declared scale and offset (scale 0.0001, offset −0.1 -> −1000), else
    −1000 for baseline 04.00 and later, else 0. A scale that is not a positive number (0 is not "no scale"), an
    offset that is not a finite number, or one beyond what Sentinel-2 products hold is refused."""
    declared = _scale_and_offset(asset)
    if declared is None:
        return BASELINE_04_OFFSET if baseline is not None and baseline_at_least_04(baseline) else 0
    scale, offset, field = declared
    if not is_finite_number(offset):
        raise DSen2CRError(f"{location}: {field}offset {offset!r} of asset {key} is not a finite number")
    if not (is_finite_number(scale) and scale > 0):
        raise DSen2CRError(f"{location}: {field}scale {scale!r} of asset {key} is not a positive number")
    dn = offset / scale
    if not plausible_offset(dn):
        raise DSen2CRError(
            f"{location}: {field}scale {scale!r} of asset {key} with offset {offset!r} gives {dn:.3g} DN; "
            f"Sentinel-2 products hold offsets within +-{MAX_OFFSET_DN} DN"
        )
    return round(dn)


#: Earth Search's property that says its COGs' pixels hold no offset: it removed baseline 04.00's when it made them
#: (their ``raster:bands`` still declare offset −0.1).
OFFSET_REMOVED = "earthsearch:boa_offset_applied"


def offset_removed(properties: dict) -> bool:
    """Whether an item says its pixels hold no offset any more, whatever its assets declare
    (:data:`OFFSET_REMOVED`)."""
    return properties.get(OFFSET_REMOVED) in (True, "true", "True")


def item_level_and_baseline(properties: dict, bands: dict) -> tuple[str, str | None]:
    """An S2 item's processing level (``L1C`` or ``L2A``: its ``s2:product_type`` or ``product:type``, else L1C where
    it holds the cirrus band B10) and its processing baseline (``s2:processing_baseline`` or
    ``processing:version``), None where it says none."""
    product_type = str(properties.get("s2:product_type") or properties.get("product:type") or "").upper()
    if "2A" in product_type or "1C" in product_type:  # S2MSI2A, S2MSI1C
        level = "L2A" if "2A" in product_type else "L1C"
    else:  # no product type: an item with a cirrus band is top of atmosphere
        level = "L1C" if "B10" in bands else "L2A"
    baseline = properties.get("s2:processing_baseline") or properties.get("processing:version")
    return level, str(baseline) if baseline else None
