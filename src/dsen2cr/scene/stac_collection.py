"""A STAC Collection of a batch's items (``dsen2cr stac-collection``: the ``remove-clouds --stac-item items/`` of many
scenes, or any STAC items): their spatial and temporal extent, summaries of their grids and bands, and a link to
each item, relative, so that the folder travels as a self-contained static catalogue (docs/design.md §4.4). The
items are read, never rewritten."""

from __future__ import annotations

import json
import logging
from datetime import datetime
from pathlib import Path
from typing import Any

from dsen2cr.errors import DSen2CRError
from dsen2cr.inputs.product import sensing_moment
from dsen2cr.inputs.stac import item_time
from dsen2cr.inputs.stac_bands import is_finite_number
from dsen2cr.outputs.files import (
    check_distinct_outputs,
    check_input_file,
    check_output_file,
    write_text_atomic,
)
from dsen2cr.outputs.hrefs import href_from
from dsen2cr.scene.stac_item import STAC_VERSION
from dsen2cr.version import __version__

log = logging.getLogger(__name__)

#: The terms of the Copernicus Sentinel data every dsen2cr image is made from (free and open, with attribution).
SENTINEL_DATA_TERMS = "https://sentinels.copernicus.eu/documents/247904/690755/Sentinel_Data_Legal_Notice"


def read_item(path: Path) -> dict[str, Any]:
    """A STAC item file, checked for what a collection takes from it: a Feature with an id, a bbox of four finite
    numbers, and a ``datetime`` (or ``start_datetime``) that is a date and time."""
    check_input_file(path, "STAC item")
    try:
        item = json.loads(path.read_text(encoding="utf-8-sig"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as error:
        raise DSen2CRError(f"{path}: not a STAC item (not valid JSON: {error})") from None
    if not isinstance(item, dict) or item.get("type") != "Feature" or not isinstance(item.get("id"), str):
        raise DSen2CRError(f"{path}: not a STAC item (no Feature with an id)")
    bbox = item.get("bbox")
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(is_finite_number(v) for v in bbox)):
        raise DSen2CRError(f"{path}: STAC item {item['id']!r} has no bbox of four numbers (west, south, east, north)")
    if item_time(item.get("properties")) is None:
        raise DSen2CRError(f"{path}: STAC item {item['id']!r} has no datetime (nor start_datetime)")
    return item


def _is_this_collection(path: Path, out: Path) -> bool:
    """Whether ``path`` is the collection being written (an earlier run's), which a glob of its folder matches."""
    if not (out.exists() and path.exists() and path.samefile(out)):
        return False
    try:
        held = json.loads(out.read_text(encoding="utf-8-sig"))
    except (OSError, ValueError):
        return False
    if isinstance(held, dict) and held.get("type") == "Collection":
        log.info("left out %s: it is the collection being written", path)
        return True
    return False


def _moment(stamp: str) -> datetime:
    """The moment of a date and time :func:`read_item` checked."""
    moment = sensing_moment(stamp)
    assert moment is not None, stamp
    return moment


def spatial_extent(bboxes: list[list[float]]) -> list[list[float]]:
    """The collection's bbox: the latitudes that hold every item's, and the shortest run of longitudes that does
    (:func:`longitude_extent`: across the antimeridian where that is shorter, west then east of it, as STAC writes
    such boxes). The items' own bboxes are not listed: a batch's thousand would swell the collection, and STAC
    makes them optional."""
    west, east = longitude_extent([(b[0], b[2]) for b in bboxes])
    return [[west, min(b[1] for b in bboxes), east, max(b[3] for b in bboxes)]]


def longitude_extent(spans: list[tuple[float, float]]) -> tuple[float, float]:
    """The shortest run of longitudes that holds every span (west, east; one whose west lies east of its east
    crosses the antimeridian): the circle less its widest gap between the spans, as (west, east) with west > east
    when it crosses 180°; (-180, 180) when the spans leave no gap."""
    arcs = sorted((west, east + 360 if west > east else east) for west, east in spans)  # starts in [-180, 180]
    merged: list[list[float]] = []
    for start, stop in arcs:
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], stop)
        else:
            merged.append([start, stop])
    while len(merged) > 1 and merged[-1][1] >= merged[0][0] + 360:  # the last reaches round over the first
        merged[-1][1] = max(merged[-1][1], merged.pop(0)[1] + 360)
    if merged[-1][1] - merged[-1][0] >= 360 or (len(merged) == 1 and merged[0][1] - merged[0][0] >= 360):
        return -180.0, 180.0
    gaps = [(merged[i + 1][0] - merged[i][1], i + 1) for i in range(len(merged) - 1)]
    gaps.append((merged[0][0] + 360 - merged[-1][1], 0))  # from the last span round to the first
    _, after = max(gaps)
    west, east = merged[after][0], merged[after - 1][1]  # after the widest gap, round to before it
    return _longitude(west), _longitude(east)


def _longitude(value: float) -> float:
    """A longitude in [-180, 180] (180 kept as it is)."""
    return value if -180 <= value <= 180 else (value + 180) % 360 - 180


def _summaries(items: list[dict[str, Any]]) -> dict[str, Any]:
    """What the items share or span: their ground sampling distances, EPSG codes, constellations and instruments,
    and the bands of the first item's image."""
    summaries: dict[str, Any] = {}
    for key in ("gsd", "proj:epsg", "constellation"):
        values = sorted({item["properties"][key] for item in items if item.get("properties", {}).get(key) is not None})
        if values:
            summaries[key] = values
    instruments = {i for item in items for i in item.get("properties", {}).get("instruments") or []}
    if instruments:
        summaries["instruments"] = sorted(instruments)
    image = (items[0].get("assets") or {}).get("image") or {}
    if image.get("eo:bands"):
        summaries["eo:bands"] = image["eo:bands"]
    return summaries


def collection_of(
    items: list[tuple[Path, dict[str, Any]]], out: Path, *, collection_id: str, description: str, title: str | None
) -> dict[str, Any]:
    """The STAC Collection (version :data:`STAC_VERSION`) of ``items`` (each with its file), to be written to
    ``out``: extent (its time in UTC), summaries, and links to the items relative to ``out``'s folder."""
    stamps = sorted((str(item_time(item["properties"])) for _, item in items), key=_moment)
    start, end = stamps[0], stamps[-1]
    links = [{"rel": "root", "href": f"./{out.name}", "type": "application/json"}]
    links.append({"rel": "license", "href": SENTINEL_DATA_TERMS, "title": "Copernicus Sentinel data terms"})
    for path, item in items:
        href = href_from(out, path)
        links.append(
            {
                "rel": "item",
                "href": href if href.startswith(".") else f"./{href}",
                "type": "application/geo+json",
                "title": item["id"],
            }
        )
    collection: dict[str, Any] = {
        "type": "Collection",
        "stac_version": STAC_VERSION,
        "id": collection_id,
        **({"title": title} if title else {}),
        "description": description,
        "license": "proprietary",
        "extent": {
            "spatial": {"bbox": spatial_extent([item["bbox"] for _, item in items])},
            "temporal": {"interval": [[start, end]]},
        },
        "summaries": _summaries([item for _, item in items]),
        "links": links,
        "providers": [{"name": f"dsen2cr {__version__}", "roles": ["processor"]}],
    }
    return collection


def write_collection(
    paths: list[Path],
    out: Path,
    *,
    collection_id: str | None = None,
    title: str | None = None,
    description: str | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Read the items at ``paths``, refuse two of one id, and write their collection to ``out`` (``.json``; never
    one of the items); return it. ``out`` itself among ``paths`` when it holds a collection (``items/*.json`` run
    again) is left out, said in a line."""
    paths = [path for path in paths if not _is_this_collection(path, out)]
    check_distinct_outputs([("out", out)], [("item", path) for path in paths])
    check_output_file(out, overwrite=overwrite, kind="json")
    items = [(path, read_item(path)) for path in paths]
    seen: dict[str, Path] = {}
    for path, item in items:
        if item["id"] in seen:
            raise DSen2CRError(
                f"{path}: STAC item id {item['id']!r} is also {seen[item['id']]}'s; a collection's ids are unique"
            )
        seen[item["id"]] = path
    collection_id = collection_id or out.resolve().parent.name or "dsen2cr"
    description = description or (
        f"Cloud-free Sentinel-2 scenes made by dsen2cr (DSen2-CR, Meraner et al., ISPRS 2020): {len(items)} item"
        f"{'s' if len(items) != 1 else ''}"
    )
    collection = collection_of(items, out, collection_id=collection_id, description=description, title=title)
    write_text_atomic(out, json.dumps(collection, indent=2) + "\n")
    return collection
