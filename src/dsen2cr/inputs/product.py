"""What every S2 input resolves to (:class:`S2Product`), and the band names products use
(docs/design.md §4.5)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from urllib.parse import urlparse

import numpy as np

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
    ``file_bands`` (1-based; by default 1 … n) are ``bands`` in order. ``offsets`` are the DN to add to each band's
    stored values (−1000 for baseline 04.00 and later), ``scale`` the factor from (DN + offset) to reflectance ×
    10000 (10000 / quantification value).
    """

    source: str
    bands: list[str]
    files: list[str]
    level: str  # L1C or L2A
    offsets: list[int] = field(default_factory=list)
    scale: float = 1.0
    baseline: str | None = None
    offset_from: str = "none"  # where the offsets come from: metadata, stac, option, none
    masks: dict[str, str] = field(default_factory=dict)  # own masks: SCL (L2A), MSK_CLASSI (L1C), EE (Earth Engine's)
    sensing_time: str | None = None  # when the scene was sensed, ISO 8601 in UTC (sensing_time_text); None: unknown
    file_bands: list[int] = field(default_factory=list)  # a multi-band file's band (1-based) of each of ``bands``

    def __post_init__(self) -> None:
        if not self.offsets:
            self.offsets = [0] * len(self.bands)
        if not self.file_bands and len(self.files) == 1:
            self.file_bands = list(range(1, len(self.bands) + 1))


#: The largest DN offset a product may declare: Sentinel-2 uses -1000; beyond the DN range an offset is absurd.
MAX_OFFSET_DN = 10000


def plausible_offset(dn: float) -> bool:
    """Whether ``dn`` is an offset a Sentinel-2 product can hold: finite and within +-``MAX_OFFSET_DN``."""
    return math.isfinite(dn) and abs(dn) <= MAX_OFFSET_DN


def is_url(text: str) -> bool:
    """Whether ``text`` is an http(s) or s3 URL."""
    return urlparse(text).scheme in ("http", "https", "s3")


#: An ISO 8601 date and time as product metadata and STAC items write them (``2017-02-16T10:21:01.026Z``).
_ISO_TIME = re.compile(r"(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(Z|[+-]\d{2}:?\d{2})?")
#: The stamp of Sentinel product and file names (``S2A_MSIL1C_20170216T102101_N0204_…``,
#: ``T33UUU_20170216T102101_B01.jp2``, ``S1A_IW_GRDH_1SDV_20170216T051234_20170216T051259_…``,
#: ``S1A_IW_20170216T051234_DVP_RTC30_G_gpuned_5F3A_VV.tif``): the first in a name is the sensing start.
_NAME_TIME = re.compile(r"(?<!\d)(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})(?!\d)")


def _parse_time(text: str | None) -> tuple[datetime, str] | None:
    """The moment an ISO 8601 date and time names, to the second, in UTC (a zone other than UTC converted; none:
    UTC), and its fraction of a second as written (``026``, or empty), or None when ``text`` is not one (or not a
    real date)."""
    match = _ISO_TIME.fullmatch(text.strip()) if isinstance(text, str) else None
    if match is None:
        return None
    fraction, zone = match[7] or "", match[8] or "Z"
    try:
        year, month, day, hour, minute, second = (int(part) for part in match.groups()[:6])
        moment = datetime(year, month, day, hour, minute, second, tzinfo=timezone.utc)
    except ValueError:
        return None
    if zone != "Z":
        sign = 1 if zone[0] == "+" else -1
        hours, minutes = int(zone[1:3]), int(zone[-2:])
        moment -= sign * timedelta(hours=hours, minutes=minutes)
    return moment, fraction


def sensing_time_text(text: str | None) -> str | None:
    """An ISO 8601 date and time (a zone other than UTC converted; none: UTC) as ``2017-02-16T10:21:01.026Z``, or
    None when ``text`` is not one (or not a real date)."""
    parsed = _parse_time(text)
    if parsed is None:
        return None
    moment, fraction = parsed
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + (f".{fraction}" if fraction else "") + "Z"


def sensing_moment(text: str | None) -> datetime | None:
    """The moment an ISO 8601 date and time names, in UTC to the microsecond, or None (:func:`sensing_time_text`)."""
    parsed = _parse_time(text)
    if parsed is None:
        return None
    moment, fraction = parsed
    return moment + timedelta(microseconds=int(fraction[:6].ljust(6, "0")))


def days_between(earlier: str, later: str) -> float:
    """The days from one sensing time (:func:`sensing_time_text`'s form) to another: negative when ``later``
    comes first."""
    first, second = sensing_moment(earlier), sensing_moment(later)
    assert first is not None and second is not None, (earlier, later)
    return (second - first).total_seconds() / 86400


#: Why a scene's sensing time is unknown, and how to give it: for the commands that need it.
UNKNOWN_SENSING_TIME = (
    "when the scene was sensed is unknown (no metadata says it, nor a Sentinel-2 date and time such as 20170216T102101 "
    "in its name)"
)
GIVE_SENSING_TIME = (
    "give the product itself, or tag the file (gdal_edit.py -mo PRODUCT_START_TIME=2017-02-16T10:21:01Z FILE)"
)


def sensing_time_of_name(name: str) -> str | None:
    """The sensing time that a Sentinel product or file name holds (its first ``YYYYMMDDTHHMMSS``: a Sentinel-2
    product's or band file's, a Sentinel-1 product's or an RTC file's), in the form of :func:`sensing_time_text`, or
    None."""
    match = _NAME_TIME.search(name)
    if match is None:
        return None
    return sensing_time_text("{}-{}-{}T{}:{}:{}Z".format(*match.groups()))


def offset_kept(band: str, level: str, values: np.ndarray) -> str | None:
    """What says a band's valid DN ``values`` hold baseline 04.00's +1000, or None: a Level-1C B10 (cirrus) at 1000
    DN or above in the median, where a clear sky gives tens; a Level-2A B2 (blue) whose darkest 1 % lies at 1000 DN
    or above, where water and shadow lie at tens to hundreds (a scene all cloud or snow may show it too)."""
    if band == "B10" and level == "L1C" and (median := np.median(values)) >= 1000:
        return f"B10 (cirrus) lies at {median:.0f} DN in the median, where a clear sky gives tens"
    if band == "B2" and level == "L2A" and (darkest := np.percentile(values, 1)) >= 1000:
        return (
            f"B2 (blue) lies at {darkest:.0f} DN or above in its darkest 1 %, where surface reflectance of water and "
            "shadow gives tens to hundreds (unless the scene is all cloud or snow)"
        )
    return None
