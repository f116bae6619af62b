"""What an output records of the Sentinel-2 and Sentinel-1 inputs it was read from (``remove-clouds``' images and
maps, ``data patches``' patch files): the processing level and baseline, the DN offset removed and where it was
declared, how a product's coarser bands were resampled, and S1's units."""

from __future__ import annotations

from dsen2cr.inputs.product import S2Product
from dsen2cr.inputs.readers import S2Source
from dsen2cr.inputs.s1_time import S1_TRACK_TAG, s1_gap_days


def s2_read_tags(s2: S2Source) -> dict[str, str]:
    """How ``s2`` was read: its processing level and baseline, when it was sensed (``unknown`` where neither its
    metadata nor its name says), the offset removed (:func:`offset_tag`) and where it was declared, and the
    resampling of a product's coarser bands (:func:`resampling_tags`)."""
    product = s2.product
    return {
        "DSEN2CR_PROCESSING_LEVEL": product.level,
        "DSEN2CR_OFFSET_REMOVED": offset_tag(product),
        "DSEN2CR_OFFSET_SOURCE": product.offset_from,
        "DSEN2CR_PROCESSING_BASELINE": product.baseline or "unknown",
        "DSEN2CR_SENSING_TIME": product.sensing_time or "unknown",
        **resampling_tags(product, s2.resampling),
        **file_band_tags(product),
    }


def file_band_tags(product: S2Product) -> dict[str, str]:
    """``DSEN2CR_S2_FILE_BANDS`` of a multi-band file read by its band descriptions (another order, or bands it
    holds beside them): the file's band each S2 band was read from (``B1:1,…,B8A:10,…``); nothing otherwise."""
    if product.file_bands == list(range(1, len(product.bands) + 1)) or not product.file_bands:
        return {}
    return {
        "DSEN2CR_S2_FILE_BANDS": ",".join(f"{b}:{i}" for b, i in zip(product.bands, product.file_bands, strict=True))
    }


def offset_tag(product: S2Product) -> str:
    """``DSEN2CR_OFFSET_REMOVED``: the DN offset removed from each band (``B1:-1000,…``), or ``none``."""
    offsets = ",".join(f"{band}:{offset}" for band, offset in zip(product.bands, product.offsets, strict=True))
    return offsets if any(product.offsets) else "none"


def resampling_tags(product: S2Product, resampling: str) -> dict[str, str]:
    """``DSEN2CR_RESAMPLING`` of a product read band file by band file (its 20 m and 60 m bands resampled onto
    the 10 m grid by ``resampling``); nothing for a multi-band file, which is read as it is."""
    if len(product.files) < 2:
        return {}
    return {"DSEN2CR_RESAMPLING": f"{resampling} (20 m and 60 m bands onto the 10 m grid)"}


def s1_time_tags(
    s2_time: str | None, s1_time: str | None, orbit: str | None = None, track: int | None = None
) -> dict[str, str]:
    """``DSEN2CR_S1_SENSING_TIME``: when S1 was sensed; ``DSEN2CR_S1_DAYS_FROM_S2``: the days from the S2 scene's
    sensing to S1's (``-2.21``: S1 sensed first); ``DSEN2CR_S1_ORBIT_DIRECTION``: its pass (``ascending``,
    ``descending``); ``DSEN2CR_S1_RELATIVE_ORBIT``: its relative orbit (1 to 175); ``unknown`` where nothing says."""
    gap = s1_gap_days(s2_time, s1_time)
    return {
        "DSEN2CR_S1_SENSING_TIME": s1_time or "unknown",
        "DSEN2CR_S1_DAYS_FROM_S2": "unknown" if gap is None else f"{gap:+.2f}",
        "DSEN2CR_S1_ORBIT_DIRECTION": orbit or "unknown",
        S1_TRACK_TAG: "unknown" if track is None else str(track),
    }


def s1_units_tags(linear: bool) -> dict[str, str]:
    """``DSEN2CR_S1_UNITS``: how S1 was read (dB, or linear power converted with ``--s1-linear``)."""
    return {"DSEN2CR_S1_UNITS": "linear power, converted to dB (--s1-linear)" if linear else "dB"}
