"""Sentinel-1 products as catalogues deliver them (a ``.SAFE`` folder, ``….SAFE.zip``, a measurement file): amplitude
or complex values in radar geometry, which ``--s1`` does not take. The network learnt SEN12MS-CR's S1: σ⁰ in dB,
thermal noise removed, calibrated and terrain-corrected onto a map grid (Earth Engine's ``COPERNICUS/S1_GRD``). Such
inputs are refused before anything is read, saying what they are and how to make what ``--s1`` takes."""

from __future__ import annotations

import re
from pathlib import Path

from dsen2cr.errors import DSen2CRError

#: A Sentinel-1 product's name: satellite, mode, product type (``GRDH``, ``SLC_``, ``RAW_``, ``OCN_``), then its
#: level and polarisations (``S1A_IW_GRDH_1SDV_20170216T051234_…``).
_PRODUCT_NAME = re.compile(r"S1[A-Z]_(?:IW|EW|SM|WV|S[1-6])_(GRD[FHM]|SLC_|RAW_|OCN_)_\d[SA][A-Z]{2}_\d{8}T\d{6}", re.I)
#: A measurement file of a Level-1 product, as ESA names it (``s1a-iw-grd-vv-20170216t051234-…-001.tiff``).
_MEASUREMENT_NAME = re.compile(r"s1[a-z]-(?:iw|ew|wv|s[1-6])[1-3]?-(grd|slc)-(?:vv|vh|hh|hv)-\d{8}t\d{6}-", re.I)
#: A Sentinel-2 product's name (``S2B_MSIL1C_20170216T102101_N0204_R065_T32TPT_…``).
_S2_PRODUCT_NAME = re.compile(r"S2[A-Z]_MSIL(?:1C|2A)_\d{8}T\d{6}_", re.I)
#: What each product type holds.
_PRODUCT_KINDS = {
    "GRD": "a Sentinel-1 Level-1 GRD product (amplitude in radar geometry)",
    "SLC": "a Sentinel-1 Level-1 SLC product (complex values in radar geometry)",
    "RAW": "a Sentinel-1 Level-0 RAW product (unfocused signal data, no image)",
    "OCN": "a Sentinel-1 Level-2 OCN product (ocean wind, wave and current fields, no backscatter image)",
}
#: What ``--s1`` takes.
S1_WANTED = (
    "--s1 takes VV and VH backscatter in dB on a map grid, as SEN12MS-CR's (sigma0: thermal noise removed, calibrated, "
    "terrain-corrected, Earth Engine's COPERNICUS/S1_GRD)"
)
#: How to make it from a Level-1 product (``{slc}``: the steps an SLC product needs beside a GRD's).
S1_HOW = (
    "make it with SNAP's gpt (Apply-Orbit-File, ThermalNoiseRemoval, Calibration{slc}, Terrain-Correction, "
    "LinearToFromdB), or give an RTC product (a sentinel-1-rtc STAC item; OPERA RTC-S1 files with --s1-linear)"
)


#: An ASF HyP3 RTC product's name: ``…_RTC30_G_gpuned_5F3A``, its six letters gamma0 (g) or sigma0 (s), power (p),
#: amplitude (a) or decibel (d), then masking, filtering, clipping and DEM matching.
_HYP3_RTC_NAME = re.compile(r"_RTC\d{2}_[A-Z]_(?P<flags>[gs](?P<scale>[pad])[uw][nf][ec][dm])_[0-9A-F]{4}", re.I)


def refuse_amplitude(part: str) -> None:
    """Refuse an ASF HyP3 RTC file (or folder) whose name says amplitude: its values lie where power's do (a check of
    the values takes them for power), and ``--s1-linear`` would read them as power, their dB halved."""
    found = _HYP3_RTC_NAME.search(Path(part).name)
    if found and found["scale"].lower() == "a":
        raise DSen2CRError(
            f"{part}: an ASF HyP3 RTC product in amplitude (the 'a' of {found['flags']}); --s1 takes sigma0 in dB, and "
            "--s1-linear linear power: make the product again with scale decibel (or power, with --s1-linear)"
        )


def _product_type(name: str) -> str | None:
    """``GRD``, ``SLC``, ``RAW`` or ``OCN`` where ``name`` begins with a Sentinel-1 product's name, else None."""
    found = _PRODUCT_NAME.match(name)
    return found.group(1)[:3].upper() if found else None


def _is_product_folder(path: Path) -> bool:
    """Whether ``path`` is a folder laid out as a Sentinel-1 product: ``manifest.safe`` beside ``measurement/``."""
    return path.is_dir() and (path / "manifest.safe").is_file() and (path / "measurement").is_dir()


def _s1_product_kind(path: Path) -> tuple[str, str | None] | None:
    """What ``path`` is where it is a Sentinel-1 product as delivered (its description, and its type: ``GRD``,
    ``SLC``, ``RAW``, ``OCN``, None where only its layout says), else None."""
    kind = _product_type(path.name)
    if kind is not None and (path.is_dir() or path.name.lower().endswith((".safe", ".zip"))):
        return _PRODUCT_KINDS[kind], kind
    if _is_product_folder(path):
        return "a Sentinel-1 product (amplitude or complex values in radar geometry)", None
    if found := _MEASUREMENT_NAME.match(path.name):
        kind = found.group(1).upper()
        return f"a measurement file of {_PRODUCT_KINDS[kind]}", kind
    return None


def _is_s2_product(path: Path) -> bool:
    """Whether ``path`` is a Sentinel-2 product folder or zip (its name, or its metadata file)."""
    named = _S2_PRODUCT_NAME.match(path.name) and (path.is_dir() or path.name.lower().endswith((".safe", ".zip")))
    return bool(named) or (path.is_dir() and any(path.glob("MTD_MSIL*.xml")))


def refuse_s1_product(part: str) -> None:
    """Refuse ``part`` (one file of an ``--s1`` value) where it is a Sentinel-1 product as delivered: a ``.SAFE``
    folder (or any folder laid out as one), a zipped product (``….SAFE.zip``, ``….zip``), or one of its measurement
    files; the refusal says what it is and how to make the σ⁰ dB ``--s1`` takes. Files whose names merely begin
    with a product's (``S1A_IW_GRDH_…_db.tif``, exports named after their product) pass. A Sentinel-2 product
    (the two inputs swapped) is refused saying so."""
    path = Path(part)
    refuse_amplitude(part)
    if _is_s2_product(path):
        raise DSen2CRError(f"{part}: a Sentinel-2 product given as --s1; {S1_WANTED}, and --s2 the Sentinel-2 scene")
    found = _s1_product_kind(path)
    if found is None:
        return
    what, kind = found
    advice = "use the GRD product of the same acquisition; " if kind in ("RAW", "OCN") else ""
    how = S1_HOW.format(slc=", TOPSAR-Deburst, Multilook" if kind == "SLC" else "")
    raise DSen2CRError(f"{part}: {what}; {advice}{S1_WANTED}: {how}")


def refuse_s1_as_s2(text: str) -> None:
    """Refuse an ``--s2`` value that is a Sentinel-1 product as delivered (the two inputs swapped)."""
    found = _s1_product_kind(Path(text))
    if found is not None:
        raise DSen2CRError(
            f"{text}: {found[0]} given as --s2; --s2 takes the Sentinel-2 scene, --s1 its S1 (VV and VH in dB on a "
            "map grid: a product as delivered is processed first)"
        )


#: STAC collections of Level-1 GRD products as delivered (the Planetary Computer's and the Copernicus Data Space's id).
GRD_COLLECTIONS = ("sentinel-1-grd",)


def refuse_s1_grd_item(location: str, item: dict) -> None:
    """Refuse the S1 STAC item ``item`` (read from ``location``) where it is of a GRD collection: its ``vv`` and
    ``vh`` assets are the product's amplitude in radar geometry; the same acquisition's RTC item serves."""
    collection = item.get("collection")
    if isinstance(collection, str) and collection.lower() in GRD_COLLECTIONS:
        raise DSen2CRError(
            f"{location}: an item of {collection} (Level-1 GRD: amplitude in radar geometry); {S1_WANTED}: give the "
            "same acquisition's item from sentinel-1-rtc"
        )
