"""A STAC item for a scene's outputs (``remove-clouds --stac-item``): written once every file it describes is in
place, from those files as they are (grid, bands, statistics, what made them), so that a catalogue can list
the cloud-free scene beside the products it came from (docs/design.md §4.4)."""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.warp import transform_geom

from dsen2cr.errors import DSen2CRError
from dsen2cr.inputs import S2Product, is_stac, s1_parts
from dsen2cr.inputs.product import GIVE_SENSING_TIME, UNKNOWN_SENSING_TIME
from dsen2cr.inputs.s1_time import S1_TRACK_TAG, gap_text, pass_text
from dsen2cr.outputs.files import check_output_file, write_text_atomic
from dsen2cr.outputs.hrefs import href_from
from dsen2cr.settings import SceneJob
from dsen2cr.version import __version__

log = logging.getLogger(__name__)

STAC_VERSION = "1.0.0"
EXTENSIONS = [
    "https://stac-extensions.github.io/eo/v1.1.0/schema.json",
    "https://stac-extensions.github.io/projection/v1.1.0/schema.json",
    "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
    "https://stac-extensions.github.io/classification/v1.1.0/schema.json",
    "https://stac-extensions.github.io/processing/v1.1.0/schema.json",
]
COG_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"
#: Each band's STAC common name, centre wavelength and full width at half maximum (µm; Sentinel-2A's MSI).
SPECTRAL = {
    "B1": ("coastal", 0.443, 0.027),
    "B2": ("blue", 0.490, 0.098),
    "B3": ("green", 0.560, 0.045),
    "B4": ("red", 0.665, 0.038),
    "B5": ("rededge", 0.704, 0.019),
    "B6": ("rededge", 0.740, 0.018),
    "B7": ("rededge", 0.783, 0.028),
    "B8": ("nir", 0.842, 0.145),
    "B8A": ("nir08", 0.865, 0.033),
    "B9": ("nir09", 0.945, 0.026),
    "B10": ("cirrus", 1.375, 0.075),
    "B11": ("swir16", 1.610, 0.143),
    "B12": ("swir22", 2.190, 0.242),
}
#: The points along each edge of the footprint, so that it follows the grid's curves in longitude and latitude.
EDGE_POINTS = 4
#: The valid-data outline is read from the coarsest overview with at least this many pixels on its shorter side.
FOOTPRINT_PIXELS = 256
#: How near 180° (degrees) a part of a footprint cut at the antimeridian reaches.
ON_ANTIMERIDIAN = 1e-6
#: ``raster:bands`` statistics and the GDAL band tags that hold them.
STATISTICS = {key: f"STATISTICS_{key.upper()}" for key in ("minimum", "maximum", "mean", "stddev", "valid_percent")}


def check_stac_item(job: SceneJob, product: S2Product) -> None:
    """Refuse ``--stac-item`` for a scene whose sensing time is unknown (a STAC item must give one), before any
    work."""
    if job.stac_item is not None and product.sensing_time is None:
        raise DSen2CRError(
            f"{job.s2}: --stac-item {job.stac_item.name}: {UNKNOWN_SENSING_TIME}, and a STAC item must say it; "
            f"{GIVE_SENSING_TIME}"
        )


def write_item(job: SceneJob, product: S2Product) -> None:
    """Write the job's STAC item (:func:`scene_item`) under a temporary name, then rename it into place."""
    assert job.stac_item is not None
    write_text_atomic(job.stac_item, json.dumps(scene_item(job, product), indent=2) + "\n")


def write_on_success(job: SceneJob, product: S2Product) -> Callable[..., bool]:
    """An exit callback that writes the job's STAC item (:func:`write_item`) when the block it guards succeeded:
    pushed on a scene's outputs before them, it runs once they are all in place."""

    def write(exc_type: type[BaseException] | None, *exc: object) -> bool:
        if exc_type is None:
            write_item(job, product)
        return False  # never swallow the block's error

    return write


def missing_item(job: SceneJob) -> bool:
    """Whether the job asks for a STAC item that is not there."""
    return job.stac_item is not None and not os.path.lexists(job.stac_item)


def write_finished_item(job: SceneJob, product: S2Product | None) -> None:
    """Write the STAC item of a scene an earlier run finished without it (``--skip-existing``), from its files."""
    assert job.stac_item is not None and product is not None  # a finished scene's input was resolved
    check_output_file(job.stac_item, overwrite=False, kind="json")
    write_item(job, product)
    log.info("wrote the STAC item %s of %s, which an earlier run finished (--skip-existing)", job.stac_item, job.out)


def scene_item(job: SceneJob, product: S2Product) -> dict[str, Any]:
    """The STAC item (version :data:`STAC_VERSION`) of a scene's outputs, read from the files: the image's grid
    (its footprint in longitude and latitude, ``proj:``), sensing time, bands (``eo:bands``, ``raster:bands`` with
    the files' statistics), and what made it (``processing:``); an asset for each output written, hrefs relative to
    the item; ``derived_from`` links to input STAC items."""
    assert job.stac_item is not None
    with rasterio.open(job.out) as image:
        tags, properties = image.tags(), _grid_properties(image)
        geometry = _footprint(image, _valid_hull(job.out, image))
        assets = {"image": _image_asset(image, job)}
    if job.mask_out is not None:
        assets["cloud_mask"] = _mask_asset(job)
    if job.uncertainty_out is not None:
        assets["uncertainty"] = _uncertainty_asset(job)
    if job.preview is not None:
        preview = {"title": "Before and after (RGB)", "type": "image/png", "roles": ["overview"]}
        assets["preview"] = {"href": _href(job.preview, job.stac_item), **preview}
    properties |= {
        "datetime": product.sensing_time,
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "constellation": "sentinel-2",
        "instruments": ["msi", "c-sar"] if job.s1 else ["msi"],
        "processing:software": {"dsen2cr": __version__},
        "processing:lineage": _lineage(tags),
    }
    return {
        "type": "Feature",
        "stac_version": STAC_VERSION,
        "stac_extensions": EXTENSIONS,
        "id": job.out.stem,
        "geometry": geometry,
        "bbox": _bbox(geometry),
        "properties": properties,
        "links": _derived_from(job),
        "assets": assets,
    }


def _grid_properties(image: Any) -> dict[str, Any]:
    """The projection extension's fields of the image's grid: its CRS as an EPSG code where it has one, else as
    WKT2 (``proj:epsg`` then left out: pystac reads a null one as the code ``EPSG:None``)."""
    epsg = image.crs.to_epsg()
    return {
        **({"proj:epsg": epsg} if epsg is not None else {"proj:wkt2": image.crs.to_wkt(version="WKT2_2019")}),
        "proj:shape": [image.height, image.width],
        "proj:transform": list(image.transform)[:6],
        "proj:bbox": list(image.bounds),
        "gsd": abs(image.transform.a),
    }


def _valid_hull(path: Path, image: Any) -> list[tuple[float, float]]:
    """The convex hull of the image's valid pixels in its CRS, counterclockwise: the image's rectangle when every
    pixel is valid, less where a swath's edge left no data (a tile's part of a swath is convex). Read from the
    coarsest overview at least :data:`FOOTPRINT_PIXELS` on its shorter side, whose pixels are valid where a pixel
    below is (each level the mean of the valid pixels under it), so the hull holds every valid pixel."""
    factors = image.overviews(1)
    fits = [
        level for level, factor in enumerate(factors) if min(image.height, image.width) // factor >= FOOTPRINT_PIXELS
    ]
    with rasterio.open(path, overview_level=fits[-1]) if fits else contextlib.nullcontext(image) as coarse:
        valid, transform = coarse.read_masks(1) > 0, coarse.transform
    points = []
    for row in np.flatnonzero(valid.any(axis=1)):  # each row's outermost valid pixels, their outer corners
        columns = np.flatnonzero(valid[row])
        points += [transform * (column, y) for column in (columns[0], columns[-1] + 1) for y in (row, row + 1)]
    return _convex_hull(points)


def _convex_hull(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The convex hull of ``points``, counterclockwise, its first point not repeated (Andrew's monotone chain)."""

    def turn(o: tuple[float, float], a: tuple[float, float], b: tuple[float, float]) -> float:
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    unique = sorted(set(points))
    lower: list[tuple[float, float]] = []
    upper: list[tuple[float, float]] = []
    for point in unique:
        while len(lower) >= 2 and turn(lower[-2], lower[-1], point) <= 0:
            lower.pop()
        lower.append(point)
    for point in reversed(unique):
        while len(upper) >= 2 and turn(upper[-2], upper[-1], point) <= 0:
            upper.pop()
        upper.append(point)
    return lower[:-1] + upper[:-1]


def _footprint(image: Any, hull: list[tuple[float, float]]) -> dict[str, Any]:
    """The outline ``hull`` (in the image's CRS) in longitude and latitude (EPSG:4326), its edges followed point by
    point: a polygon, or where it crosses the antimeridian two, cut there (GDAL cuts it), each counterclockwise
    (GeoJSON's right-hand rule)."""
    steps = [i / EDGE_POINTS for i in range(EDGE_POINTS)]
    ring = [
        (x0 + (x1 - x0) * t, y0 + (y1 - y0) * t)
        for (x0, y0), (x1, y1) in zip(hull, hull[1:] + hull[:1], strict=True)
        for t in steps
    ]
    polygon = {"type": "Polygon", "coordinates": [[*ring, ring[0]]]}
    outline = transform_geom(image.crs, "EPSG:4326", polygon)
    parts = [outline["coordinates"]] if outline["type"] == "Polygon" else outline["coordinates"]
    rings = [_counterclockwise([[round(x, 7), round(y, 7)] for x, y in part[0]]) for part in parts]
    if len(rings) == 1:
        return {"type": "Polygon", "coordinates": rings}
    return {"type": "MultiPolygon", "coordinates": [[ring] for ring in rings]}


def _counterclockwise(ring: list[list[float]]) -> list[list[float]]:
    """The closed ring, reversed if it runs clockwise (its shoelace area negative)."""
    area = sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in itertools.pairwise(ring))
    return ring if area >= 0 else ring[::-1]


def _bbox(geometry: dict[str, Any]) -> list[float]:
    """West, south, east, north of a footprint; across the antimeridian (two parts, one on each side) the
    eastern part's west edge first and the western part's east edge third, as STAC has it."""
    rings = [geometry["coordinates"][0]] if geometry["type"] == "Polygon" else [p[0] for p in geometry["coordinates"]]
    latitudes = [y for ring in rings for _, y in ring]
    east = [x for ring in rings if max(x for x, _ in ring) > 180 - ON_ANTIMERIDIAN for x, _ in ring]
    west = [x for ring in rings if min(x for x, _ in ring) < -180 + ON_ANTIMERIDIAN for x, _ in ring]
    if len(rings) > 1 and east and west:
        return [min(east), min(latitudes), max(west), max(latitudes)]
    longitudes = [x for ring in rings for x, _ in ring]
    return [min(longitudes), min(latitudes), max(longitudes), max(latitudes)]


def _image_asset(image: Any, job: SceneJob) -> dict[str, Any]:
    """The cloud-free image: its bands named (``eo:bands``) and described (``raster:bands``)."""
    eo_bands = []
    for name in image.descriptions:
        common, centre, width = SPECTRAL[name]
        eo_bands.append(
            {"name": name, "common_name": common, "center_wavelength": centre, "full_width_half_max": width}
        )
    return {
        "href": _href(job.out, job.stac_item),
        "type": COG_TYPE,
        "title": "Cloud-free Sentinel-2 (DSen2-CR), reflectance x 10000",
        "roles": ["data"],
        "eo:bands": eo_bands,
        "raster:bands": _raster_bands(image),
    }


def _mask_asset(job: SceneJob) -> dict[str, Any]:
    """The cloud/shadow map, its codes as classification classes (with the colours of its colour table)."""
    assert job.mask_out is not None
    with rasterio.open(job.mask_out) as mask:
        colours, classes = mask.colormap(1), []
        for entry in mask.tags()["DSEN2CR_MASK_CLASSES"].split(", "):  # "0 clear, 1 cloud, 2 shadow, 255 no data"
            code, _, name = entry.partition(" ")
            value = int(code)
            if value == mask.nodata:
                classes.append({"value": value, "name": "no_data", "description": name, "nodata": True})
                continue
            hint = "{:02X}{:02X}{:02X}".format(*colours[value][:3])
            classes.append({"value": value, "name": name.replace(" ", "_"), "description": name, "color_hint": hint})
        bands = _raster_bands(mask)
        bands[0]["classification:classes"] = classes
        title = mask.descriptions[0]
    return {
        "href": _href(job.mask_out, job.stac_item),
        "type": COG_TYPE,
        "title": title,
        "roles": ["cloud", "cloud-shadow"],
        "raster:bands": bands,
    }


def _uncertainty_asset(job: SceneJob) -> dict[str, Any]:
    """The per-pixel standard deviation (DN), a band per image band (with the parts: three per band)."""
    assert job.uncertainty_out is not None
    with rasterio.open(job.uncertainty_out) as sigma:
        bands, names = _raster_bands(sigma), list(sigma.descriptions)
    return {
        "href": _href(job.uncertainty_out, job.stac_item),
        "type": COG_TYPE,
        "title": "Per-pixel standard deviation of the prediction (DN): " + ", ".join(names),
        "roles": ["data", "uncertainty"],
        "raster:bands": bands,
    }


def _raster_bands(dataset: Any) -> list[dict[str, Any]]:
    """``raster:bands`` of a file: data type, nodata, resolution, scale and offset, and the statistics its band
    tags hold (GDAL's ``STATISTICS_*``)."""
    bands = []
    for index in range(1, dataset.count + 1):
        band: dict[str, Any] = {"data_type": dataset.dtypes[index - 1], "spatial_resolution": abs(dataset.transform.a)}
        if dataset.nodata is not None:
            band["nodata"] = dataset.nodata
        scale, offset = dataset.scales[index - 1], dataset.offsets[index - 1]
        if (scale, offset) != (1.0, 0.0):
            band |= {"scale": scale, "offset": offset}
        stats = dataset.tags(index)
        found = {key: float(stats[tag]) for key, tag in STATISTICS.items() if tag in stats}
        if found:
            band["statistics"] = found
        bands.append(band)
    return bands


def _lineage(tags: dict[str, str]) -> str:
    """What made the image, in words, from its tags."""
    s1 = tags.get("DSEN2CR_S1", "none")
    sar = f"with S1 {s1}" if s1 != "none" else "without SAR"
    gap = tags.get("DSEN2CR_S1_DAYS_FROM_S2", "unknown")
    if s1 != "none" and gap != "unknown":  # an image of an earlier version has no such tag
        orbit, track = tags.get("DSEN2CR_S1_ORBIT_DIRECTION", "unknown"), tags.get(S1_TRACK_TAG, "unknown")
        on_pass = pass_text(None if orbit == "unknown" else orbit, int(track) if track.isdigit() else None)
        sar += f" (sensed {tags.get('DSEN2CR_S1_SENSING_TIME')}, {gap_text(float(gap))}{on_pass})"
    return (
        f"Clouds removed from {tags.get('DSEN2CR_S2')} {sar} by the "
        f"DSen2-CR network (Meraner et al., ISPRS 2020), model {tags.get('DSEN2CR_MODEL')}, weights "
        f"{tags.get('DSEN2CR_WEIGHTS')} (SHA-256 {tags.get('DSEN2CR_WEIGHTS_SHA256')}), precision "
        f"{tags.get('DSEN2CR_PRECISION')}{_arithmetic_lineage(tags)}, --keep-clear {tags.get('DSEN2CR_KEEP_CLEAR')}"
        f"{_map_lineage(tags)}"
        f"{_sigma_lineage(tags)}{_warnings_lineage(tags)}"
    )


def _arithmetic_lineage(tags: dict[str, str]) -> str:
    """How the precision computed, in brackets, where the image's tags say it (an earlier version's do not)."""
    return f" ({tags['DSEN2CR_ARITHMETIC']})" if "DSEN2CR_ARITHMETIC" in tags else ""


def _map_lineage(tags: dict[str, str]) -> str:
    """The cloud/shadow map's shares of the valid pixels, where the run made one (its tags say them)."""
    if "DSEN2CR_CLOUD_PERCENT" not in tags:
        return ""
    cloud, shadow = (float(tags.get(f"DSEN2CR_{what}_PERCENT", "nan")) for what in ("CLOUD", "SHADOW"))
    return (
        f"; its cloud/shadow map ({tags.get('DSEN2CR_MASK', 'paper')}): cloud {cloud:.1f}%, shadow {shadow:.1f}% of "
        "the valid pixels"
    )


def _warnings_lineage(tags: dict[str, str]) -> str:
    """The warnings said while the image was made (its ``DSEN2CR_WARNINGS``, one a line), or nothing."""
    said = tags.get("DSEN2CR_WARNINGS")
    return f"; warned while it ran: {'; '.join(said.splitlines())}" if said else ""


def _sigma_lineage(tags: dict[str, str]) -> str:
    """What made the sigma beside the image (its tags say when it was written): the likelihood that trained it and
    its calibration after training; nothing for an image without sigma."""
    if "DSEN2CR_LIKELIHOOD" not in tags:
        return ""
    calibration = tags.get("DSEN2CR_SIGMA_CALIBRATION", "none (sigma as trained)")
    return f"; sigma trained by {tags['DSEN2CR_LIKELIHOOD']}, calibrated: {calibration}"


def _derived_from(job: SceneJob) -> list[dict[str, str]]:
    """``derived_from`` links to the STAC items among the inputs (as given: a URL, or a path relative to the
    item)."""
    links = []
    for source in (job.s2, *s1_parts(job.s1 or "")):
        if is_stac(source):
            href = _href(source, job.stac_item)
            links.append({"rel": "derived_from", "href": href, "type": "application/geo+json"})
    return links


def _href(target: str | Path, item: Path | None) -> str:
    """``target`` as the item names it (:func:`~dsen2cr.outputs.hrefs.href_from`: relative to its folder, a URL as
    it is; a catalogue moves as a whole)."""
    assert item is not None
    return href_from(item, target)
