"""Sentinel products as users have them: what ``--s2`` and ``--s1`` name, resolved into band files and the
radiometric facts the readers need (docs/design.md §4.5).

``--s2`` takes a 13-band (L1C) or 12-band (L2A) GeoTIFF, a product folder (``.SAFE`` or ``IMG_DATA``), a zipped
product (``….SAFE.zip``, read in place through GDAL's ``/vsizip/``), or a STAC item (a JSON path or URL; remote
assets through ``/vsicurl/`` and ``/vsis3/``). Products of processing baseline 04.00 and later store
DN = reflectance × 10000 + 1000 and declare the shift per band (``RADIO_ADD_OFFSET``/``BOA_ADD_OFFSET`` −1000 in
``MTD_MSIL1C.xml``/``MTD_MSIL2A.xml``; ``raster:bands`` scale and offset, or ``s2:processing_baseline``, in STAC):
the offsets are read here and removed by the reader before anything else.

``--s1`` takes a 2-band GeoTIFF (VV, VH), a pair ``VV.tif,VH.tif`` of single-band files on one grid, or a STAC
item with ``vv`` and ``vh`` assets; pairs become a 2-band GDAL VRT.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urljoin, urlparse

from dsen2cr.errors import DSen2CRError
from dsen2cr.preprocessing import S2_BANDS

#: Level-2A products have no B10 (cirrus, top of atmosphere only); the 12 bands in their order.
L2A_BANDS = [band for band in S2_BANDS if band != "B10"]
#: Offset (DN) of products of processing baseline 04.00 and later, where metadata does not say otherwise.
BASELINE_04_OFFSET = -1000
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


def band_code(name: str) -> str:
    """B1 -> B01, B8A -> B8A (the two-digit codes of product file names and STAC keys)."""
    return name[0] + name[1:].zfill(2)


def _band_of(code: str) -> str | None:
    """B01 / B1 / b8a -> the project's band name (B1, B8A), or None."""
    match = re.fullmatch(r"B0?(\d{1,2})(A?)", code.strip().upper())
    if match is None:
        return None
    name = f"B{int(match[1])}{match[2]}"
    return name if name in S2_BANDS else None


@dataclass
class S2Product:
    """Where the bands of an S2 input are and how to read them.

    ``files`` holds one GDAL path per band of ``bands`` (a product), or a single multi-band file whose bands
    are ``bands`` in order. ``offsets`` are the DN to add to each band's stored values (−1000 for baseline 04.00
    and later), ``scale`` the factor from (DN + offset) to reflectance × 10000 (10000 / quantification value).
    """

    source: str
    bands: list[str]
    files: list[str]
    level: str  # L1C or L2A
    offsets: list[int] = field(default_factory=list)
    scale: float = 1.0
    baseline: str | None = None
    offset_from: str = "none"  # where the offsets come from: metadata, stac, option, none
    masks: dict[str, str] = field(default_factory=dict)  # the product's own masks: SCL (L2A), MSK_CLASSI (L1C)

    def __post_init__(self) -> None:
        if not self.offsets:
            self.offsets = [0] * len(self.bands)


def resolve_s2(arg: str | Path, *, offset: int | None = None) -> S2Product:
    """The :class:`S2Product` an ``--s2`` argument names (``offset``: ``--s2-offset`` for files whose metadata
    cannot say, i.e. GeoTIFFs and bare ``IMG_DATA`` folders)."""
    text = str(arg)
    if _is_url(text) or text.lower().endswith(".json"):
        if offset is not None:
            raise DSen2CRError(f"{text}: --s2-offset is for GeoTIFFs; a STAC item declares its offsets")
        return _stac_s2(text)
    path = Path(text)
    if path.suffix.lower() == ".zip":
        return _with_offset_option(_zipped_safe(path), offset)
    if path.is_dir():
        return _with_offset_option(_safe_folder(path), offset)
    return _geotiff(path, offset)


def _with_offset_option(product: S2Product, offset: int | None) -> S2Product:
    """Apply ``--s2-offset`` where the product has no metadata; refuse it where the metadata decides."""
    if offset is None:
        return product
    if product.offset_from == "metadata":
        raise DSen2CRError(f"{product.source}: --s2-offset given, but the product metadata declares its offsets")
    product.offsets, product.offset_from = [offset] * len(product.bands), "option"
    return product


def _geotiff(path: Path, offset: int | None) -> S2Product:
    """A 13-band (L1C order) or 12-band (L2A order) file."""
    from dsen2cr.geotiff import open_raster

    with open_raster(path, what="S2") as dataset:
        count = dataset.count
    if count not in (len(S2_BANDS), len(L2A_BANDS)):
        raise DSen2CRError(
            f"{path}: S2 has {count} bands, expected 13 (L1C: B1 ... B12, B8A) or 12 (L2A: the same without B10)"
        )
    level = "L1C" if count == len(S2_BANDS) else "L2A"
    product = S2Product(str(path), list(S2_BANDS if level == "L1C" else L2A_BANDS), [str(path)], level)
    if offset is not None:
        product.offsets, product.offset_from = [offset] * count, "option"
    return product


# ------------------------------------------------------------------------------------------- SAFE products


def _safe_folder(folder: Path) -> S2Product:
    """A ``.SAFE`` product folder (with its metadata) or a bare ``IMG_DATA`` folder (without)."""
    metadata = sorted(folder.glob("MTD_MSIL*.xml"))
    is_safe = folder.name.upper().endswith(".SAFE")
    if is_safe and not metadata:
        raise DSen2CRError(
            f"{folder}: no MTD_MSIL1C.xml or MTD_MSIL2A.xml in the product; its radiometric offsets are unknown"
        )
    names = [str(p.relative_to(folder)) for p in folder.rglob("*") if p.suffix.lower() in (".jp2", ".tif")]
    level = "L2A" if (metadata and "MSIL2A" in metadata[0].name) or any("/R10m/" in f"/{n}" for n in names) else "L1C"
    bands, files = _band_files(str(folder), names, level, lambda name: str(folder / name))
    product = S2Product(str(folder), bands, files, level, masks=_mask_files(names, lambda name: str(folder / name)))
    if metadata:
        _apply_metadata(product, metadata[0].read_bytes(), str(metadata[0]))
    return product


def _zipped_safe(path: Path) -> S2Product:
    """A zipped product, read in place: member names from the zip's directory, pixels through ``/vsizip/``."""
    from dsen2cr.files import check_input_file

    check_input_file(path, "zipped S2 product")
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            metadata = [n for n in names if re.search(r"(^|/)MTD_MSIL(1C|2A)\.xml$", n)]
            if not metadata:
                raise DSen2CRError(f"{path}: no Sentinel-2 product inside (no MTD_MSIL1C.xml or MTD_MSIL2A.xml)")
            text = archive.read(metadata[0])
    except zipfile.BadZipFile as error:
        raise DSen2CRError(f"{path}: not a readable zip file ({error})") from None
    root = metadata[0].rpartition("/")[0]
    inside = [n[len(root) + 1 :] if root else n for n in names if n.startswith(root) and not n.endswith("/")]
    inside = [n for n in inside if n.lower().endswith((".jp2", ".tif"))]
    level = "L2A" if "MSIL2A" in metadata[0] else "L1C"
    prefix = f"/vsizip/{path.resolve()}/{root + '/' if root else ''}"
    bands, files = _band_files(str(path), inside, level, lambda name: prefix + name)
    product = S2Product(str(path), bands, files, level, masks=_mask_files(inside, lambda name: prefix + name))
    _apply_metadata(product, text, f"{path}:{metadata[0]}")
    return product


def _band_files(source: str, names: list[str], level: str, locate: object) -> tuple[list[str], list[str]]:
    """The band files of a product, in band order: ``IMG_DATA/…_B01.jp2`` (L1C) or the finest resolution of
    ``IMG_DATA/R10m|R20m|R60m/…_B02_10m.jp2`` (L2A)."""
    wanted = S2_BANDS if level == "L1C" else L2A_BANDS
    candidates = [n for n in names if "IMG_DATA" in n or "/" not in n]
    files = []
    for band in wanted:
        code = band_code(band)
        matches = sorted(
            (n for n in candidates if re.search(rf"_{code}(_(10|20|60)m)?\.(jp2|tif)$", n, re.IGNORECASE)),
            key=lambda n: (_resolution(n), n),
        )
        if not matches:
            raise DSen2CRError(f"{source}: no file for band {code} (expected *_{code}*.jp2 in IMG_DATA)")
        finest = [m for m in matches if _resolution(m) == _resolution(matches[0])]
        if len({Path(m).name for m in finest}) > 1:
            raise DSen2CRError(f"{source}: several files for band {code}: {', '.join(Path(m).name for m in finest)}")
        files.append(locate(finest[0]))  # type: ignore[operator]
    return list(wanted), files


def _mask_files(names: list[str], locate: object) -> dict[str, str]:
    """The product's own cloud masks: the scene classification at 20 m (L2A ``…_SCL_20m.jp2``) and the
    granule's ``QI_DATA/MSK_CLASSI_B00.jp2`` (L1C, baseline 04.00+)."""
    found = {}
    for kind, pattern in (("SCL", r"_SCL_20m\.(jp2|tif)$"), ("MSK_CLASSI", r"(^|/)MSK_CLASSI_B00\.(jp2|tif)$")):
        matches = sorted(n for n in names if re.search(pattern, n, re.IGNORECASE))
        if matches:
            found[kind] = locate(matches[0])  # type: ignore[operator]
    return found


def _resolution(name: str) -> int:
    """The resolution (m) a product file name states (``_20m``), 0 when none."""
    match = re.search(r"_(10|20|60)m\.\w+$", name)
    return int(match[1]) if match else 0


def _apply_metadata(product: S2Product, xml: bytes, where: str) -> None:
    """Quantification value, processing baseline and per-band offsets from ``MTD_MSIL1C/2A.xml``."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as error:
        raise DSen2CRError(f"{where}: product metadata is not valid XML ({error})") from None
    baseline = _find_text(root, "PROCESSING_BASELINE")
    product.baseline = baseline
    l2a = product.level == "L2A"
    quantification = _find_text(root, "BOA_QUANTIFICATION_VALUE" if l2a else "QUANTIFICATION_VALUE")
    if quantification is None:
        raise DSen2CRError(f"{where}: product metadata has no quantification value")
    try:
        product.scale = 10000.0 / float(quantification)
    except (ValueError, ZeroDivisionError):
        raise DSen2CRError(f"{where}: quantification value {quantification!r} is not a positive number") from None
    tag = "BOA_ADD_OFFSET" if l2a else "RADIO_ADD_OFFSET"
    declared: dict[int, int] = {}
    for element in root.iter():
        if element.tag.rpartition("}")[2] == tag:
            try:
                declared[int(element.attrib["band_id"])] = int(float(element.text or ""))
            except (KeyError, ValueError):
                raise DSen2CRError(f"{where}: {tag} entry without a numeric band_id and value") from None
    product.offset_from = "metadata"
    if not declared:
        if baseline is not None and _baseline_at_least_04(baseline):
            raise DSen2CRError(f"{where}: processing baseline {baseline} but no {tag} list (offsets unknown)")
        return
    missing = [band_code(S2_BANDS[i]) for i in range(len(S2_BANDS)) if i not in declared]
    needed = [band for band in product.bands if S2_BANDS.index(band) not in declared]
    if needed:
        raise DSen2CRError(f"{where}: {tag} list misses bands {', '.join(missing)}")
    product.offsets = [declared[S2_BANDS.index(band)] for band in product.bands]


def _find_text(root: ET.Element, tag: str) -> str | None:
    """The text of the first element named ``tag`` (namespaces ignored)."""
    for element in root.iter():
        if element.tag.rpartition("}")[2] == tag and element.text:
            return element.text.strip()
    return None


def _baseline_at_least_04(baseline: str) -> bool:
    """Whether a processing baseline (``05.10``) is 04.00 or later."""
    try:
        return float(baseline) >= 4.0
    except ValueError:
        return False


# ---------------------------------------------------------------------------------------------- STAC items


def _is_url(text: str) -> bool:
    """Whether ``text`` is an http(s) or s3 URL."""
    return urlparse(text).scheme in ("http", "https", "s3")


def gdal_path(href: str) -> str:
    """A GDAL path for an asset href: ``/vsicurl/`` for http(s), ``/vsis3/`` for s3, local paths as they are."""
    parsed = urlparse(href)
    if parsed.scheme in ("http", "https"):
        return f"/vsicurl/{href}"
    if parsed.scheme == "s3":
        return f"/vsis3/{parsed.netloc}{parsed.path}"
    if parsed.scheme == "file":
        return parsed.path
    return href


def _read_item(location: str) -> tuple[dict, str]:
    """The STAC item JSON at a path or an http(s) URL, and the base its relative hrefs resolve against."""
    try:
        if _is_url(location):
            item = json.loads(_fetch(location))
            base = location
        else:
            from dsen2cr.files import check_input_file

            path = check_input_file(Path(location), "STAC item")
            item = json.loads(path.read_text(encoding="utf-8-sig"))
            base = path.resolve().as_uri()
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as error:
        raise DSen2CRError(f"{location}: not a STAC item (not valid JSON: {error})") from None
    if not isinstance(item, dict) or not isinstance(item.get("assets"), dict):
        raise DSen2CRError(f"{location}: not a STAC item (no assets)")
    return item, base


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
    if not _is_url(href) and not href.startswith("/") and not urlparse(href).scheme:
        href = urljoin(base, href)
    return gdal_path(href)


def _asset_band(key: str, asset: dict) -> str | None:
    """The S2 band an asset holds: its ``eo:bands`` (or STAC 1.1 ``bands``) name, else its key."""
    for entry in asset.get("eo:bands") or asset.get("bands") or []:
        if isinstance(entry, dict):
            band = _band_of(str(entry.get("name", "")))
            if band is not None:
                return band
    return _band_of(key) or EARTH_SEARCH_KEYS.get(key.lower())


def _stac_s2(location: str) -> S2Product:
    """An S2 STAC item: one asset per band (Planetary Computer or Earth Search naming)."""
    item, base = _read_item(location)
    assets = {
        band: (key, asset)
        for key, asset in item["assets"].items()
        if isinstance(asset, dict)
        for band in [_asset_band(key, asset)]
        if band is not None
    }
    properties = item.get("properties") or {}
    product_type = str(properties.get("s2:product_type", "")).upper()
    if "2A" in product_type or "1C" in product_type:  # S2MSI2A, S2MSI1C
        level = "L2A" if "2A" in product_type else "L1C"
    else:  # no product type: an item with a cirrus band is top of atmosphere
        level = "L1C" if "B10" in assets else "L2A"
    wanted = S2_BANDS if level == "L1C" else L2A_BANDS
    missing = [band_code(b) for b in wanted if b not in assets]
    if missing:
        raise DSen2CRError(
            f"{location}: STAC item lacks the assets of bands {', '.join(missing)} (the model needs them)"
        )
    files = [_asset_href(assets[band][1], base) for band in wanted]
    baseline = properties.get("s2:processing_baseline")
    product = S2Product(location, list(wanted), files, level, baseline=str(baseline) if baseline else None)
    scl = next(
        (asset for key, asset in item["assets"].items() if key.lower() == "scl" and isinstance(asset, dict)), None
    )
    if scl is not None:
        product.masks["SCL"] = _asset_href(scl, base)
    offsets = []
    for band in wanted:
        offsets.append(_stac_offset(assets[band][1], product.baseline))
    product.offsets, product.offset_from = offsets, "stac"
    return product


def _stac_offset(asset: dict, baseline: str | None) -> int:
    """DN to add: from ``raster:bands`` scale and offset (scale 0.0001, offset −0.1 -> −1000), else −1000 for
    baseline 04.00 and later, else 0."""
    for entry in asset.get("raster:bands") or []:
        if isinstance(entry, dict) and entry.get("offset") is not None:
            scale = float(entry.get("scale") or 1.0)
            return round(float(entry["offset"]) / scale)
    if baseline is not None and _baseline_at_least_04(baseline):
        return BASELINE_04_OFFSET
    return 0


# ------------------------------------------------------------------------------------------------------ S1


def resolve_s1(arg: str | Path) -> str:
    """A GDAL path with VV and VH as bands 1 and 2: the file itself, or a VRT of a ``VV,VH`` pair or of the
    ``vv``/``vh`` assets of a STAC item."""
    text = str(arg)
    if text.lower().endswith(".json") or _is_url(text):
        item, base = _read_item(text)
        assets = {key.lower(): asset for key, asset in item["assets"].items() if isinstance(asset, dict)}
        missing = [name for name in ("vv", "vh") if name not in assets]
        if missing:
            raise DSen2CRError(f"{text}: STAC item lacks the {' and '.join(missing)} asset(s) (VV, VH)")
        return stack_pair(_asset_href(assets["vv"], base), _asset_href(assets["vh"], base), text)
    if "," in text:
        parts = [p.strip() for p in text.split(",")]
        if len(parts) != 2 or not all(parts):
            raise DSen2CRError(f"{text}: an S1 pair is two files, VV,VH")
        return stack_pair(parts[0], parts[1], text)
    return text


def stack_pair(vv: str, vh: str, source: str) -> str:
    """A 2-band VRT (XML text GDAL opens directly) of two single-band files on one grid."""
    from xml.sax.saxutils import escape

    from dsen2cr.geotiff import open_raster

    grids = []
    for name, path in (("VV", vv), ("VH", vh)):
        with open_raster(path, bands=1, what=f"S1 {name}") as dataset:
            grids.append(
                (dataset.crs, dataset.transform, dataset.width, dataset.height, dataset.dtypes[0], dataset.nodata)
            )
    if grids[0][:4] != grids[1][:4]:
        raise DSen2CRError(f"{source}: VV and VH are not on one grid (CRS, transform or size differ)")
    crs, transform, width, height, dtype, nodata = grids[0]
    vrt_type = {"float32": "Float32", "float64": "Float64"}.get(dtype, "Float32")
    bands = ""
    for index, path in enumerate((vv, vh), start=1):
        nodata_xml = f"<NoDataValue>{nodata}</NoDataValue>" if nodata is not None else ""
        bands += (
            f'<VRTRasterBand dataType="{vrt_type}" band="{index}">{nodata_xml}<SimpleSource>'
            f'<SourceFilename relativeToVRT="0">{escape(str(path))}</SourceFilename><SourceBand>1</SourceBand>'
            "</SimpleSource></VRTRasterBand>"
        )
    geotransform = ", ".join(repr(v) for v in transform.to_gdal())
    srs = escape(crs.to_wkt()) if crs is not None else ""
    return (
        f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}"><SRS>{srs}</SRS>'
        f"<GeoTransform>{geotransform}</GeoTransform>{bands}</VRTDataset>"
    )
