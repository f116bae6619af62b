"""The part of a scene that ``remove-clouds --bounds`` asks for (docs/design.md §4.1): a window of the scene's 10 m
grid, the pixels the bounds cover or touch, on the scene's own lattice (nothing is resampled: the output's pixels
are the whole scene's run's), and what an output records of it."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import numpy as np
from rasterio.transform import array_bounds
from rasterio.warp import transform_bounds
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

from dsen2cr.bounds import Bounds, parse_crs
from dsen2cr.errors import DSen2CRError
from dsen2cr.inputs.readers import Grid

log = logging.getLogger(__name__)

#: What ``DSEN2CR_AREA`` says of an output of the whole scene.
WHOLE_SCENE = "whole scene"


def area_window(grid: Grid, bounds: Bounds | None, name: str, *, warn: bool = True) -> Window:
    """The pixels of ``grid`` (the scene ``name``'s) that ``bounds`` cover or touch, in their CRS (default: the
    scene's); the whole grid without bounds. Bounds that reach beyond the
    scene are clipped to it (``warn``: a warning says so), bounds that miss it are refused. An edge that lies on a
    pixel edge (within 1e-6 px) takes no pixel beyond it: the bounds of an earlier output give its pixels."""
    full = Window(0, 0, grid.width, grid.height)
    if bounds is None:
        return full
    left, bottom, right, top = bounds.left, bounds.bottom, bounds.right, bounds.top
    crs = parse_crs(bounds.crs, bounds.crs_label) if bounds.crs else grid.crs
    if crs != grid.crs:
        left, bottom, right, top = transform_bounds(crs, grid.crs, left, bottom, right, top, densify_pts=21)
        if not all(map(math.isfinite, (left, bottom, right, top))):
            raise DSen2CRError(
                f"{name}: {bounds.label} {bounds.text()} cannot be expressed in the scene's CRS {grid.crs.to_string()}"
            )
    inverse = ~grid.transform
    corners = np.array([inverse * (x, y) for x in (left, right) for y in (bottom, top)])
    col0, row0 = (_snap(value, math.floor) for value in corners.min(axis=0))
    col1, row1 = (_snap(value, math.ceil) for value in corners.max(axis=0))
    inside = (max(col0, 0), max(row0, 0), min(col1, grid.width), min(row1, grid.height))
    if inside[2] <= inside[0] or inside[3] <= inside[1]:
        covers = transform_bounds(grid.crs, crs, *array_bounds(grid.height, grid.width, grid.transform), densify_pts=21)
        digits = 5 if crs.is_geographic else 0
        raise DSen2CRError(
            f"{name}: {bounds.label} {bounds.text()} lie outside the scene, which covers "
            f"{' '.join(f'{value:.{digits}f}' for value in covers)} in {crs.to_string()}"
        )
    clipped = Window(inside[0], inside[1], inside[2] - inside[0], inside[3] - inside[1])
    if warn and inside != (col0, row0, col1, row1):
        log.warning(
            "%s: %s %s reach beyond the scene: clipped to the %d x %d px inside it",
            name,
            bounds.label,
            bounds.text(),
            clipped.width,
            clipped.height,
        )
    return clipped


def area_tags(window: Window, grid: Grid, bounds: Bounds | None) -> dict[str, str]:
    """What an output records of the area it holds: ``DSEN2CR_AREA`` (:func:`area_text`) and, when asked for,
    ``DSEN2CR_BOUNDS`` as given."""
    tags = {"DSEN2CR_AREA": area_text(window, grid)}
    if bounds is not None:
        tags["DSEN2CR_BOUNDS"] = bounds.text()
    return tags


def area_text(window: Window, grid: Grid) -> str:
    """The window in words: :data:`WHOLE_SCENE`, or its columns and rows (first to last) on the scene's grid."""
    if (window.col_off, window.row_off, window.width, window.height) == (0, 0, grid.width, grid.height):
        return WHOLE_SCENE
    return (
        f"columns {window.col_off}-{window.col_off + window.width - 1}, rows {window.row_off}-"
        f"{window.row_off + window.height - 1} of the scene's {grid.width} x {grid.height} px"
    )


def area_grid(window: Window, grid: Grid) -> Grid:
    """The grid of ``window``'s pixels: the scene's CRS and pixel size, its origin at the window's corner."""
    return Grid(grid.crs, window_transform(window, grid.transform), window.width, window.height)


def _snap(value: float, rounding: Callable[[float], int]) -> int:
    """A pixel coordinate rounded outwards (``math.floor`` or ``math.ceil``), or to the nearest integer within
    1e-6 px of one (an edge on a pixel edge)."""
    nearest = round(value)
    return int(nearest) if abs(value - nearest) < 1e-6 else rounding(value)
