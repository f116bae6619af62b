"""STAC items (a JSON path or URL): S2 items with one asset per band (Planetary Computer, Earth Search or Copernicus
Data Space naming and offsets: :mod:`~dsen2cr.inputs.stac_bands`), S1 items with ``vv`` and ``vh`` assets; remote
assets are read through ``/vsicurl/`` and ``/vsis3/`` (docs/design.md §4.5)."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urljoin, urlparse
from urllib.request import url2pathname

from dsen2cr.errors import DSen2CRError
from dsen2cr.inputs.geotiff import stack_pair
from dsen2cr.inputs.product import L2A_BANDS, S2Product, band_code, is_url, sensing_time_text
from dsen2cr.inputs.s1_products import refuse_s1_grd_item
from dsen2cr.inputs.stac_bands import (
    OFFSET_REMOVED,
    band_assets,
    item_level_and_baseline,
    offset_removed,
    scl_asset,
    stac_offset,
)
from dsen2cr.preprocessing import S2_BANDS
from dsen2cr.signed_urls import fresh, refuse_expired, unsigned

log = logging.getLogger(__name__)

#: A token that expires sooner than this when an item is read is got anew where it can be (the checks and first reads
#: of a scene take seconds; a run's fetch or later reads get theirs anew for the run: dsen2cr.scene.sources).
SIGNED_FOR_SECONDS = 900.0


def gdal_path(href: str) -> str:
    """A GDAL path for an asset href: ``/vsicurl/`` for http(s), ``/vsis3/`` for s3, local paths as they are."""
    parsed = urlparse(href)
    if parsed.scheme in ("http", "https"):
        return f"/vsicurl/{href}"
    if parsed.scheme == "s3":
        return f"/vsis3/{parsed.netloc}{parsed.path}"
    if parsed.scheme == "file":
        return url2pathname(parsed.path)  # percent-encoded: "my%20dir%20%C3%A9" is "my dir é"
    return href


def item_reference(text: str) -> tuple[str, str | None]:
    """The document and the item id of a reference to one item of a STAC ItemCollection, ``items.json#ID`` (or a
    URL ending ``#ID``: a search's results saved or served); ``(text, None)`` for anything else."""
    document, hash_sign, item_id = text.rpartition("#")
    if hash_sign and item_id and (is_url(document) or document.lower().endswith(".json")):
        return document, item_id
    return text, None


def is_stac(text: str) -> bool:
    """Whether an ``--s2``/``--s1`` value names a STAC item (a ``.json`` path or a URL; ``…#ID``: an item of an
    ItemCollection)."""
    document, _ = item_reference(text)
    return is_url(document) or document.lower().endswith(".json")


def _read_document(document: str) -> tuple[object, str]:
    """The JSON at a path or an http(s) URL (parsed once per process while the file is unchanged: an
    ItemCollection's items are each read several times; to be read, not modified), and the base its relative hrefs
    resolve against."""
    try:
        if is_url(document):
            return _parsed(document, None), document
        from dsen2cr.outputs.files import check_input_file

        path = check_input_file(Path(document), "STAC item").resolve()
        stat = path.stat()
        return _parsed(str(path), (stat.st_mtime_ns, stat.st_size)), path.as_uri()
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as error:
        raise DSen2CRError(f"{document}: not a STAC item (not valid JSON: {error})") from None


@functools.lru_cache(maxsize=4)
def _parsed(document: str, stamp: tuple[int, int] | None) -> object:
    """The parsed JSON of a URL (``stamp`` None: fetched) or of a local file as of ``stamp`` (its modification time
    and size: a file changed since is read again)."""
    text = _fetch(document) if stamp is None else Path(document).read_text(encoding="utf-8-sig")
    return json.loads(text)


def _is_collection(document: object) -> bool:
    """Whether a JSON document is a STAC ItemCollection (a GeoJSON FeatureCollection)."""
    return isinstance(document, dict) and document.get("type") == "FeatureCollection"


def _read_item(location: str) -> tuple[dict, str]:
    """The STAC item JSON at a path or an http(s) URL (``…#ID``: the item of that id in an ItemCollection), and
    the base its relative hrefs resolve against."""
    document, item_id = item_reference(location)
    item, base = _read_document(document)
    if item_id is not None and _is_collection(item):
        assert isinstance(item, dict)
        features = [f for f in item.get("features") or [] if isinstance(f, dict) and f.get("id") == item_id]
        if not features:
            count = len(item.get("features") or [])
            raise DSen2CRError(f"{location}: the ItemCollection {document} of {count} items holds no item {item_id}")
        item = features[0]
    elif item_id is not None and not (isinstance(item, dict) and item.get("id") == item_id):
        raise DSen2CRError(f"{location}: {document} is no ItemCollection, nor the item {item_id}")
    if _is_collection(item):
        assert isinstance(item, dict)
        count = len(item.get("features") or [])
        raise DSen2CRError(
            f"{location}: a STAC ItemCollection of {count} items, not an item; name one as {location}#ITEM_ID, or "
            "give the collection to dsen2cr pair or data triplets, which take each of its items (remove-clouds takes "
            "each too, without --s1)"
        )
    if not isinstance(item, dict) or not isinstance(item.get("assets"), dict):
        raise DSen2CRError(f"{location}: not a STAC item (no assets)")
    return item, base


def collection_items(text: str) -> list[str]:
    """An ``--s2``/``--s1`` value as the scenes it names: each item of a STAC ItemCollection as ``DOCUMENT#ID`` (in
    the collection's order), any other value as it is. Items without an id, or two of one id, are refused."""
    if not is_stac(text) or item_reference(text)[1] is not None:
        return [text]
    document, _ = _read_document(text)
    if not _is_collection(document):
        return [text]
    assert isinstance(document, dict)
    ids = [f.get("id") if isinstance(f, dict) else None for f in document.get("features") or []]
    if not ids:
        raise DSen2CRError(f"{text}: an ItemCollection of no items")
    if bad := next((str(i) for i, item_id in enumerate(ids) if not isinstance(item_id, str) or not item_id), None):
        raise DSen2CRError(f"{text}: item {bad} of the ItemCollection has no id to name it by")
    if twice := next((item_id for item_id in ids if ids.count(item_id) > 1), None):
        raise DSen2CRError(f"{text}: two items of the ItemCollection have the id {twice}")
    return [f"{text}#{item_id}" for item_id in ids]


#: Largest STAC item fetched by URL (bytes): items are a few kB.
MAX_ITEM_BYTES = 16 * 2**20


def _fetch(url: str) -> bytes:
    """The bytes of a STAC item at an http(s) URL (the usual proxy variables apply)."""
    import urllib.request

    if urlparse(url).scheme not in ("http", "https"):
        raise DSen2CRError(f"{url}: STAC items are read from a file or an http(s) URL (assets may be on s3)")
    try:
        with urllib.request.urlopen(url, timeout=60) as response:  # http(s) only, checked above
            data = response.read(MAX_ITEM_BYTES + 1)
    except OSError as error:
        raise DSen2CRError(f"{url}: cannot fetch the STAC item ({error})") from None
    if len(data) > MAX_ITEM_BYTES:
        raise DSen2CRError(f"{url}: larger than {MAX_ITEM_BYTES // 2**20} MiB, not a STAC item")
    return data


def _asset_href(asset: dict, base: str) -> str:
    """The GDAL path of an asset (relative hrefs resolve against the item's location)."""
    href = str(asset.get("href", ""))
    if not href:
        raise DSen2CRError("STAC asset without href")
    if not is_url(href) and not href.startswith("/") and not urlparse(href).scheme:
        href = urljoin(base, href)
    return gdal_path(href)


def _usable(location: str, paths: list[str]) -> list[str]:
    """The GDAL paths of an item's assets to read now: Planetary Computer assets whose token expires within
    :data:`SIGNED_FOR_SECONDS` signed anew where its SDK is installed (said once an item); refused where a token has
    expired all the same (:func:`~dsen2cr.signed_urls.refuse_expired`)."""
    renewed = [fresh(path, SIGNED_FOR_SECONDS) for path in paths]
    if renewed != paths:
        log.info(
            "%s: its assets signed anew through the Planetary Computer's token API (unsigned, or their token ends)",
            location,
        )
    refuse_expired(location, renewed)  # the server would refuse every read, after the work before the first
    return renewed


def stac_s2(location: str) -> S2Product:
    """An S2 STAC item: one asset per band (Planetary Computer, Earth Search or Copernicus Data Space naming; a band
    at several resolutions read from its finest, :mod:`~dsen2cr.inputs.stac_bands`)."""
    item, base = _read_item(location)
    assets = band_assets(location, item["assets"])
    said = item.get("properties")
    properties: dict = said if isinstance(said, dict) else {}
    level, baseline = item_level_and_baseline(properties, assets)
    wanted = S2_BANDS if level == "L1C" else L2A_BANDS
    missing = [band_code(b) for b in wanted if b not in assets]
    if missing:
        raise DSen2CRError(
            f"{location}: STAC item lacks the assets of bands {', '.join(missing)} (the model needs them)"
        )
    scl = scl_asset(item["assets"])
    *files, mask = _usable(
        location, [*(_asset_href(assets[band][1], base) for band in wanted), _asset_href(scl, base) if scl else ""]
    )
    product = S2Product(location, list(wanted), files, level, baseline=baseline)
    product.sensing_time = item_time(properties)
    if mask:
        product.masks["SCL"] = mask
    if offset_removed(properties):
        log.info(
            "%s: its pixels hold no offset (%s): the offsets its assets declare are not removed",
            location,
            OFFSET_REMOVED,
        )
        product.offsets = [0] * len(wanted)
    else:
        product.offsets = [stac_offset(assets[band][1], baseline, location, assets[band][0]) for band in wanted]
    product.offset_from = "stac"
    return product


def item_time(properties: object) -> str | None:
    """When an item's scene was sensed, in UTC (:func:`~dsen2cr.inputs.product.sensing_time_text`): its
    ``datetime``, else its ``start_datetime`` (an item of a time span has a null ``datetime``); None when neither
    holds a date and time (or ``properties`` is no object)."""
    if not isinstance(properties, dict):
        return None
    return sensing_time_text(properties.get("datetime") or properties.get("start_datetime"))


def item_properties(location: str) -> dict:
    """The ``properties`` of the STAC item at ``location`` (empty where it has none)."""
    item, _ = _read_item(location)
    properties = item.get("properties")
    return properties if isinstance(properties, dict) else {}


def s1_assets(location: str) -> tuple[str, str]:
    """The GDAL paths of the ``vv`` and ``vh`` assets of an S1 STAC item."""
    item, base = _read_item(location)
    refuse_s1_grd_item(location, item)
    assets = {key.lower(): asset for key, asset in item["assets"].items() if isinstance(asset, dict)}
    missing = [name for name in ("vv", "vh") if name not in assets]
    if missing:
        raise DSen2CRError(f"{location}: STAC item lacks the {' and '.join(missing)} asset(s) (VV, VH)")
    vv, vh = _usable(location, [_asset_href(assets["vv"], base), _asset_href(assets["vh"], base)])
    return vv, vh


def stac_s1(location: str, local: Mapping[str, str] | None = None) -> str:
    """A 2-band VRT of the ``vv`` and ``vh`` assets of an S1 STAC item (read from their ``local`` copies where a
    scene fetched them, :mod:`dsen2cr.inputs.fetch`)."""
    vv, vh = ((local or {}).get(path, path) for path in s1_assets(location))
    return stack_pair(vv, vh, location, named=True)  # the item names its assets vv and vh


def _without_signatures(value: object) -> object:
    """A STAC document with each ``href`` as a search saved again still gives it: without its query (signatures)."""
    if isinstance(value, dict):
        return {
            key: unsigned(item) if key == "href" and isinstance(item, str) else _without_signatures(item)
            for key, item in value.items()
        }
    return [_without_signatures(item) for item in value] if isinstance(value, list) else value


def item_digest(location: str) -> str:
    """SHA-256 of the STAC item at ``location`` (``…#ID``: in an ItemCollection) but for its hrefs' signatures: the
    same for a search saved again, signed anew (another file, other tokens), another for an item that changed."""
    item, _ = _read_item(location)
    return hashlib.sha256(json.dumps(_without_signatures(item), sort_keys=True).encode()).hexdigest()
