"""What every S2 input resolves to (:class:`S2Product`), and the band names products use
(docs/design.md §4.5)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from urllib.parse import urlparse

from dsen2cr.preprocessing import S2_BANDS

#: Level-2A products have no B10 (cirrus, top of atmosphere only); the 12 bands in their order.
L2A_BANDS = [band for band in S2_BANDS if band != "B10"]
#: Offset (DN) of products of processing baseline 04.00 and later, where metadata does not say otherwise.
BASELINE_04_OFFSET = -1000


def band_code(name: str) -> str:
    """B1 -> B01, B8A -> B8A (the two-digit codes of product file names and STAC keys)."""
    return name[0] + name[1:].zfill(2)


def band_of(code: str) -> str | None:
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


#: The largest DN offset a product may declare: Sentinel-2 uses -1000; beyond the DN range an offset is absurd.
MAX_OFFSET_DN = 10000


def plausible_offset(dn: float) -> bool:
    """Whether ``dn`` is an offset a Sentinel-2 product can hold: finite and within +-``MAX_OFFSET_DN``."""
    return math.isfinite(dn) and abs(dn) <= MAX_OFFSET_DN


def is_url(text: str) -> bool:
    """Whether ``text`` is an http(s) or s3 URL."""
    return urlparse(text).scheme in ("http", "https", "s3")
