"""Sentinel-2 products as ESA delivers them: ``.SAFE`` folders (or bare ``IMG_DATA`` folders) and zipped
products read in place through GDAL's ``/vsizip/``; band files, the product's own masks, and the radiometric
metadata of ``MTD_MSIL1C.xml``/``MTD_MSIL2A.xml`` (docs/design.md §4.5)."""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

from dsen2cr.errors import DSen2CRError
from dsen2cr.inputs.product import (
    L2A_BANDS,
    MAX_OFFSET_DN,
    S2Product,
    band_code,
    plausible_offset,
    sensing_time_text,
)
from dsen2cr.preprocessing import S2_BANDS


def safe_folder(folder: Path) -> S2Product:
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


def zipped_safe(path: Path) -> S2Product:
    """A zipped product, read in place: member names from the zip's directory, pixels through ``/vsizip/``."""
    from dsen2cr.outputs.files import check_input_file

    check_input_file(path, "zipped S2 product")
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            metadata = [n for n in names if re.search(r"(^|/)MTD_MSIL(1C|2A)\.xml$", n)]
            if not metadata:
                raise DSen2CRError(f"{path}: no Sentinel-2 product inside (no MTD_MSIL1C.xml or MTD_MSIL2A.xml)")
            if len(metadata) > 1:
                products = ", ".join(n.rpartition("/")[0] or "(top level)" for n in metadata)
                raise DSen2CRError(
                    f"{path}: holds {len(metadata)} Sentinel-2 products ({products}); give one product per --s2"
                )
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
    """Quantification value, processing baseline, per-band offsets and the sensing time (the datatake's start)
    from ``MTD_MSIL1C/2A.xml``."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as error:
        raise DSen2CRError(f"{where}: product metadata is not valid XML ({error})") from None
    baseline = _find_text(root, "PROCESSING_BASELINE")
    product.baseline = baseline
    times = (_find_text(root, tag) for tag in ("PRODUCT_START_TIME", "DATATAKE_SENSING_START"))
    product.sensing_time = next(filter(None, map(sensing_time_text, times)), None)
    l2a = product.level == "L2A"
    quantification = _find_text(root, "BOA_QUANTIFICATION_VALUE" if l2a else "QUANTIFICATION_VALUE")
    if quantification is None:
        raise DSen2CRError(f"{where}: product metadata has no quantification value")
    try:
        value = float(quantification)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise DSen2CRError(f"{where}: quantification value {quantification!r} is not a positive finite number")
    product.scale = 10000.0 / value
    tag = "BOA_ADD_OFFSET" if l2a else "RADIO_ADD_OFFSET"
    declared: dict[int, int] = {}
    for element in root.iter():
        if element.tag.rpartition("}")[2] == tag:
            try:
                band_id, value = int(element.attrib["band_id"]), float(element.text or "")
            except (KeyError, ValueError):
                raise DSen2CRError(f"{where}: {tag} entry without a numeric band_id and value") from None
            if not plausible_offset(value):
                raise DSen2CRError(
                    f"{where}: {tag} {(element.text or '').strip()!r} of band_id {band_id} is not an offset Sentinel-2 "
                    f"products hold (a finite number of DN within +-{MAX_OFFSET_DN})"
                )
            declared[band_id] = round(value)
    product.offset_from = "metadata"
    if not declared:
        if baseline is not None and baseline_at_least_04(baseline):
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


def baseline_at_least_04(baseline: str) -> bool:
    """Whether a processing baseline (``05.10``) is 04.00 or later."""
    try:
        return float(baseline) >= 4.0
    except ValueError:
        return False
