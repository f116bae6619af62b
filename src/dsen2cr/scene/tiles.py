"""Planning the windows of a scene (docs/design.md §4.1).

The scene is cut into windows of at most ``tile`` pixels that overlap by ``overlap`` pixels; each window keeps
only its core (half the overlap is dropped on every side that borders another window), so with an overlap of at
least twice the network's receptive-field radius every output pixel equals whole-image inference. Windows at
the scene border are aligned with it, so the network's zero padding there is the same as for the whole image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from rasterio.windows import Window, intersect, intersection
from torch import nn

from dsen2cr.errors import DSen2CRError
from dsen2cr.models import ModelSpec
from dsen2cr.settings import MIN_TILE


def default_overlap(model: nn.Module | ModelSpec) -> int:
    """The smallest overlap that makes tiled inference equal whole-image inference: twice the receptive-field
    radius of a network (or of its configuration)."""
    config: ModelSpec = model.config if isinstance(model, nn.Module) else model  # type: ignore[assignment]
    return 2 * config.receptive_radius


@dataclass(frozen=True)
class Tile:
    """A window to run the network on, and the part of it (core) that goes to the output, both on the scene's
    grid; ``origin`` is the output's first row and column on that grid ((0, 0): the output is the whole scene)."""

    window: Window
    core: Window
    origin: tuple[int, int] = (0, 0)

    @property
    def out(self) -> Window:
        """The core's place in the output."""
        row0, col0 = self.origin
        return Window(self.core.col_off - col0, self.core.row_off - row0, self.core.width, self.core.height)

    def core_in_tile(self) -> tuple[slice, slice]:
        """Row and column slices of the core inside the tile's prediction."""
        r0 = self.core.row_off - self.window.row_off
        c0 = self.core.col_off - self.window.col_off
        return slice(r0, r0 + self.core.height), slice(c0, c0 + self.core.width)


def _axis_tiles(size: int, tile: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """Tiles along one axis: (start, length, core_start, core_end); cores partition [0, size).

    The fewest tiles of at most ``tile`` px that overlap by at least ``overlap`` are spread evenly, each just
    long enough (all of one length), so little compute is spent twice: e.g. 517 px with tiles of 256 and an
    overlap of 20 takes 3 tiles of 186 px. Each core keeps ``overlap // 2`` px from every inner tile edge.
    """
    if size <= tile:
        return [(0, size, 0, size)]
    count = math.ceil((size - overlap) / (tile - overlap))
    length = math.ceil((size + (count - 1) * overlap) / count)
    starts = [i * (size - length) // (count - 1) for i in range(count)]
    half = overlap // 2
    out: list[tuple[int, int, int, int]] = []
    for i, start in enumerate(starts):
        core_start = out[-1][3] if out else 0
        core_end = size if i == count - 1 else start + length - half
        out.append((start, length, core_start, core_end))
    return out


def plan_tiles(height: int, width: int, tile: int, overlap: int) -> list[Tile]:
    """Tiles (all of one shape) covering a height x width scene; every pixel belongs to exactly one core."""
    if tile < MIN_TILE:
        raise DSen2CRError(f"tile: must be at least {MIN_TILE} pixels, got {tile}")
    if not 0 <= overlap < tile:
        raise DSen2CRError(f"overlap: must be in [0, tile), got {overlap} for tile {tile}")
    tiles = []
    for r0, rh, cr0, cr1 in _axis_tiles(height, tile, overlap):
        for c0, cw, cc0, cc1 in _axis_tiles(width, tile, overlap):
            tiles.append(Tile(Window(c0, r0, cw, rh), Window(cc0, cr0, cc1 - cc0, cr1 - cr0)))
    return tiles


def plan_area_tiles(height: int, width: int, area: Window, tile: int, overlap: int) -> list[Tile]:
    """Tiles whose cores cover ``area`` (a window of a height x width scene) once, the output being that area:
    the windows read up to half the overlap of the scene around it (clipped at the scene's edges), so its pixels
    are those of the whole scene's run (with an exact overlap, whole-image inference on both)."""
    region = area_region(height, width, area, overlap)
    tiles = []
    for planned in plan_tiles(region.height, region.width, tile, overlap):
        core = _shifted(planned.core, region)
        if intersect(core, area):
            tiles.append(Tile(_shifted(planned.window, region), intersection(core, area), (area.row_off, area.col_off)))
    return tiles


def area_region(height: int, width: int, area: Window, overlap: int) -> Window:
    """What the tiles of ``area`` read: the area and half the overlap of the scene around it (clipped at the
    scene's edges, where the windows align with them)."""
    margin = (overlap + 1) // 2
    row0, col0 = max(0, area.row_off - margin), max(0, area.col_off - margin)
    row1 = min(height, area.row_off + area.height + margin)
    col1 = min(width, area.col_off + area.width + margin)
    return Window(col0, row0, col1 - col0, row1 - row0)


def _shifted(window: Window, region: Window) -> Window:
    """A window planned within ``region``, on the scene's grid."""
    return Window(window.col_off + region.col_off, window.row_off + region.row_off, window.width, window.height)


def planned_pixels(tiles: list[Tile]) -> int:
    """Pixels the network runs over for a tile plan (overlaps counted as often as they are run)."""
    return sum(t.window.width * t.window.height for t in tiles)
