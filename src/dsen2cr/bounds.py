"""The part of a scene a user asks for (``--bounds``, a manifest's ``bounds`` column): four numbers in a CRS,
checked when made; no rasterio until a CRS is parsed (the command line's help imports this module)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from dsen2cr.errors import DSen2CRError

if TYPE_CHECKING:
    from rasterio.crs import CRS


@dataclass(frozen=True)
class Bounds:
    """A part of a scene, as ``--bounds`` (or a manifest's ``bounds`` column) gives it: left, bottom, right, top in
    ``crs`` (None: the scene's own CRS); checked when made, however made (the command line, a manifest, the Python
    API): finite numbers, left < right and bottom < top, a CRS GDAL knows, in which a geographic one takes
    longitudes and latitudes within [-90, 90]; there left > right is a box across the antimeridian (as STAC writes
    it: 179.9 -17.7 -179.9 -17.5), longitudes within [-180, 180]. ``label`` and ``crs_label`` name them in
    messages."""

    left: float
    bottom: float
    right: float
    top: float
    crs: str | None = None
    label: str = field(default="--bounds", compare=False)
    crs_label: str = field(default="--bounds-crs", compare=False)

    def __post_init__(self) -> None:
        values = (self.left, self.bottom, self.right, self.top)
        if not all(isinstance(v, int | float) and math.isfinite(v) for v in values):
            raise DSen2CRError(f"{self.label}: expected four finite numbers LEFT BOTTOM RIGHT TOP, got {values}")
        geographic = self.crs is not None and parse_crs(self.crs, self.crs_label).is_geographic
        across = geographic and self.right < self.left <= 180 and self.right >= -180  # a box across the antimeridian
        if not ((self.left < self.right or across) and self.bottom < self.top):
            hint = " (longitudes across 180°: each within -180 to 180)" if geographic else ""
            raise DSen2CRError(
                f"{self.label}: expected LEFT BOTTOM RIGHT TOP with left < right and bottom < top, got "
                f"{self.numbers()}{hint}"
            )
        if geographic and not (self.left >= -180 and self.right <= 360 and self.bottom >= -90 and self.top <= 90):
            raise DSen2CRError(
                f"{self.label}: {self.numbers()} are no longitudes and latitudes of {self.crs} (LEFT BOTTOM RIGHT "
                "TOP: longitude, then latitude within [-90, 90])"
            )

    def numbers(self) -> str:
        """The four numbers as given (``12.6 52.46 12.63 52.48``)."""
        return " ".join(f"{value:.12g}" for value in (self.left, self.bottom, self.right, self.top))

    def text(self) -> str:
        """The bounds as given, with their CRS when named (``12.6 52.46 12.63 52.48 (EPSG:4326)``)."""
        return f"{self.numbers()} ({self.crs})" if self.crs else self.numbers()


def checked_bounds(
    values: object, crs: str | None, option: str = "--bounds", crs_option: str = "--bounds-crs"
) -> Bounds:
    """:class:`Bounds` of four ``values`` in ``crs`` (checked as :class:`Bounds` checks them), or a one-line error
    naming ``option`` (or ``crs_option``)."""
    numbers = tuple(values) if isinstance(values, list | tuple) else ()
    if len(numbers) != 4:
        raise DSen2CRError(f"{option}: expected four finite numbers LEFT BOTTOM RIGHT TOP, got {values}")
    return Bounds(*numbers, crs=crs, label=option, crs_label=crs_option)


def given_bounds(
    values: object | None, crs: str | None, option: str = "--bounds", crs_option: str = "--bounds-crs"
) -> Bounds | None:
    """:func:`checked_bounds` of options that may be left out (None: the whole scene); a CRS without bounds is
    refused (it says what bounds are in)."""
    if values is None and crs is not None:
        raise DSen2CRError(f"{crs_option}: says what {option} are in; give {option} LEFT BOTTOM RIGHT TOP")
    return None if values is None else checked_bounds(values, crs, option, crs_option)


def parse_crs(text: str, option: str) -> CRS:
    """The CRS ``text`` names (``EPSG:4326``, a WKT or PROJ string), or a one-line error naming ``option``."""
    import rasterio  # here: the command line's help imports this module, and stays without rasterio
    from rasterio.crs import CRS
    from rasterio.errors import CRSError

    try:
        with rasterio.Env():  # GDAL's and PROJ's messages go to the error raised, not to stderr
            return CRS.from_user_input(text)
    except (CRSError, ValueError) as error:
        raise DSen2CRError(f"{option}: {text!r} is not a coordinate reference system ({error})") from None
