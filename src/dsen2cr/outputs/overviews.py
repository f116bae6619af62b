"""Overviews of a scene's COG made while its windows are written (docs/design.md §4.4): means of an image,
most common classes of a class map.

GDAL's COG driver makes the overviews of an image that has none at the copy, after the last window: it reads
the whole image once more and resamples it (cubic by default), a third or more of the copy's time. Here each
level is the nodata-aware 2 x 2 mean of the one above, computed as soon as full-width rows of it are
complete (windows arrive row by row) into an uncompressed staging file per level; at the end the copy reads
the image through a VRT that names those files as its overviews, and only compresses.
"""

from __future__ import annotations

import contextlib
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.windows import Window

#: Output rows of a level computed at a time (bounds the memory of a read-back: 2 x 64 full-width rows).
CHUNK_ROWS = 64


def overview_factors(height: int, width: int, block: int) -> list[int]:
    """The overview factors GDAL's COG driver makes for an image: 2, 4, … while the size halved (rounded
    down) that many times is still larger than one ``block`` in either dimension (390 x 518 with 256 px
    blocks gets 2 and 4; 2049 wide gets 2, 4 and 8)."""
    factors: list[int] = []
    while max(height, width) > block:
        height, width = height // 2, width // 2
        factors.append(2 * (factors[-1] if factors else 1))
    return factors


def level_shapes(height: int, width: int, factors: list[int]) -> list[tuple[int, int]]:
    """(height, width) of the image and of each overview level: the size divided by the factor, rounded up (a
    level's last row and column average what remains of the image's)."""
    return [(-(-height // factor), -(-width // factor)) for factor in [1, *factors]]


def _even(image: np.ndarray, nodata: float) -> np.ndarray:
    """(bands, h, w) image padded with ``nodata`` to even height and width (itself if they are)."""
    bands, height, width = image.shape
    if not (height % 2 or width % 2):
        return image
    padded = np.full((bands, height + height % 2, width + width % 2), nodata, image.dtype)
    padded[:, :height, :width] = image
    return padded


def average_2x2(image: np.ndarray, nodata: float) -> np.ndarray:
    """(bands, h, w) image to (bands, ceil(h/2), ceil(w/2)): each 2 x 2 block's mean over its pixels that are
    not ``nodata`` (nor NaN, for floats); ``nodata`` where none is valid (pixels beyond an odd edge count as
    nodata). Unsigned integers (at most 16 bits) are rounded half up; floats keep their type (sums in float64).

    Pairs of rows are added first, then pairs of columns. Values below 2**14 (reflectance DN are at most
    10000) are summed in 16 bits, which numpy adds several times faster than it widens them; blocks of four
    valid pixels, nearly all of an image, take (sum + 2) >> 2, the others a division (it ran on the writer's
    thread at 3.5 ns a pixel: seconds for a full tile's levels)."""
    image = _even(image, nodata)
    floating = image.dtype.kind == "f"
    valid = image != nodata
    if floating:
        valid &= ~np.isnan(image)
    counts = _pairs_added(valid.view(np.uint8))
    values = image if nodata == 0 and not floating else np.where(valid, image, 0)  # 0 adds nothing
    if floating:  # the rows' pairs added straight into float64 (a whole float64 copy first took 5x as long)
        rows = np.add(values[:, 0::2], values[:, 1::2], dtype=np.float64)
        sums = rows[:, :, 0::2] + rows[:, :, 1::2]
        return np.where(counts > 0, sums / np.maximum(counts, 1), nodata).astype(image.dtype)
    narrow = values.dtype.kind == "u" and values.dtype.itemsize <= 2 and (values.size == 0 or values.max() < 2**14)
    sums = _pairs_added(values if narrow else values.astype(np.uint32))  # four values < 2**14: no overflow
    mean = (sums + 2) >> 2  # four valid pixels: rounded half up
    partial = counts < 4
    if partial.any():
        some, total = counts[partial].astype(np.uint32), sums[partial].astype(np.uint32)
        mean[partial] = (2 * total + some) // np.maximum(2 * some, 1)  # rounded half up, in integers
    mean[counts == 0] = nodata
    return mean.astype(image.dtype, copy=False)


def _pairs_added(image: np.ndarray) -> np.ndarray:
    """(bands, h, w) with even h and w to (bands, h/2, w/2): each 2 x 2 block's sum, in ``image``'s type."""
    rows = image[:, 0::2] + image[:, 1::2]
    return rows[:, :, 0::2] + rows[:, :, 1::2]


def mode_2x2(image: np.ndarray, nodata: float) -> np.ndarray:
    """(bands, h, w) class map to (bands, ceil(h/2), ceil(w/2)): each 2 x 2 block's most common value that is
    not ``nodata``, ties going as GDAL's MODE resampling breaks them (the value that first reaches the highest
    count, the block read row by row); ``nodata`` where none is valid (pixels beyond an odd edge count as
    nodata)."""
    image = _even(image, nodata)
    quarters = [image[:, row::2, col::2] for row in (0, 1) for col in (0, 1)]  # the block read row by row
    valid = [quarter != nodata for quarter in quarters]
    so_far, totals = [], []  # per position: its value's count up to it, and in the whole block
    for k, quarter in enumerate(quarters):
        same = [(other == quarter) & valid[j] & valid[k] for j, other in enumerate(quarters)]
        so_far.append(sum(s.astype(np.uint8) for s in same[: k + 1]))
        totals.append(sum(s.astype(np.uint8) for s in same))
    highest = np.maximum.reduce(totals)
    out = np.full(quarters[0].shape, nodata, image.dtype)
    chosen = highest == 0
    for quarter, count in zip(quarters, so_far, strict=True):
        take = ~chosen & (count == highest)
        out[take] = quarter[take]
        chosen |= take
    return out


def edited_vrt(image: Path, vrt: Path, edit: Callable[[ElementTree.Element], None]) -> Path:
    """``vrt``: a VRT file of ``image`` (GDAL's), its XML root changed in place by ``edit``."""
    rasterio.shutil.copy(image, vrt, driver="VRT")
    tree = ElementTree.parse(vrt)
    edit(tree.getroot())
    tree.write(vrt)
    return vrt


class RowBuffer:
    """A level's rows in memory, from the first not yet read to the last written: what :class:`OverviewPyramid`
    uses instead of files when nothing is copied from them at the end (a streamed COG). Written anywhere below
    the rows read (unwritten pixels are ``nodata``); read once, full width, from the top."""

    def __init__(self, count: int, height: int, width: int, dtype: np.dtype, nodata: float) -> None:
        self.count, self.height, self.width, self.nodata = count, height, width, nodata
        self._rows = np.empty((count, 0, width), dtype)
        self._first = 0  # the image row of self._rows' first

    def write(self, array: np.ndarray, *, window: Window) -> None:
        """Put ``array`` (count, h, w) at ``window`` (rows already read cannot be written again)."""
        if window.row_off < self._first or array.shape != (self.count, window.height, window.width):
            raise ValueError(f"rows from {self._first} of {self.count} bands: cannot write {array.shape} at {window}")
        self._hold(window.row_off + window.height - self._first)
        top = window.row_off - self._first
        self._rows[:, top : top + window.height, window.col_off : window.col_off + window.width] = array

    def read(self, *, window: Window) -> np.ndarray:
        """The next ``window.height`` rows (``window``: full width, from the first row not read), nodata where
        none was written; they leave the buffer."""
        if window.row_off != self._first or (window.col_off, window.width) != (0, self.width):
            raise ValueError(f"rows are read once, full width, from row {self._first}: not {window}")
        self._hold(window.height)  # rows never written (the image's unwritten bottom) are nodata
        rows, self._rows = self._rows[:, : window.height], self._rows[:, window.height :]
        self._first += window.height
        return rows

    def _hold(self, rows: int) -> None:
        """Hold at least ``rows`` rows from the first not read, new ones nodata (in new memory: rows already
        handed out are never written again)."""
        if rows > self._rows.shape[1]:
            grown = np.full((self.count, rows, self.width), self.nodata, self._rows.dtype)
            grown[:, : self._rows.shape[1]] = self._rows
            self._rows = grown

    def close(self) -> None:
        """Drop the rows."""
        self._rows = self._rows[:, :0]


class OverviewPyramid:
    """The overviews of ``dataset`` (an image being written window by window, opened ``w+`` so that
    its complete rows can be read back), one uncompressed tiled GeoTIFF per level beside ``stem``; with
    ``in_memory`` (nothing is copied from the levels at the end: ``rows`` takes them all) the image's rows and
    every level's are kept in memory (:class:`RowBuffer`) instead, and the image's pixels never reach
    ``dataset``.

    Call :meth:`write` with each window (or :meth:`written` after writing it to ``dataset``); :meth:`finish`
    once all are written; :meth:`source` then gives the VRT (the image with these overviews) to copy;
    :meth:`remove` deletes the level files and the VRT. Every level's rows, the image's first, are read back
    once, from the top, in chunks as they complete; ``rows`` (when given) receives each chunk as ``rows(level,
    array)``: level 0 is the image. ``reduce`` makes a level from the one above: :func:`average_2x2` (images),
    :func:`mode_2x2` (class maps).
    """

    def __init__(
        self,
        dataset: rasterio.io.DatasetWriter,
        stem: Path,
        factors: list[int],
        nodata: float,
        rows: Callable[[int, np.ndarray], None] | None = None,
        reduce: Callable[[np.ndarray, float], np.ndarray] = average_2x2,
        *,
        in_memory: bool = False,
    ) -> None:
        self.dataset, self.nodata, self._rows, self._reduce = dataset, nodata, rows, reduce
        self.paths = [] if in_memory else [stem.with_name(f"{stem.name}.ovr{factor}.tif") for factor in factors]
        self.vrt = stem.with_name(f"{stem.name}.ovr.vrt")
        self._columns = np.zeros(dataset.height, np.int64)  # pixels written per row of the image
        self._complete = 0  # rows of the image complete, from the top
        self.levels: list[Any] = []  # datasets opened w+, or RowBuffers
        self._read = [0] * (len(factors) + 1)  # rows of each level (the image first) read back
        shapes = level_shapes(dataset.height, dataset.width, factors)
        dtype = np.dtype(dataset.dtypes[0])
        self.image: Any = dataset
        if in_memory:
            self.image = RowBuffer(dataset.count, *shapes[0], dtype, nodata)
            self.levels = [RowBuffer(dataset.count, height, width, dtype, nodata) for height, width in shapes[1:]]
        else:
            self._open_level_files(shapes[1:])

    def _open_level_files(self, shapes: list[tuple[int, int]]) -> None:
        """One uncompressed tiled GeoTIFF per level of ``shapes`` at :attr:`paths`, opened ``w+``."""
        dataset = self.dataset
        profile = {"driver": "GTiff", "tiled": True, "blockxsize": 256, "blockysize": 256, "bigtiff": "if_safer"}
        profile.update(count=dataset.count, dtype=dataset.dtypes[0], crs=dataset.crs, nodata=self.nodata)
        try:
            for path, (height, width) in zip(self.paths, shapes, strict=True):
                transform = dataset.transform * rasterio.Affine.scale(dataset.width / width, dataset.height / height)
                level = dict(profile, height=height, width=width, transform=transform)
                self.levels.append(rasterio.open(path, "w+", **level))
        except BaseException:
            self.remove()
            raise

    def write(self, array: np.ndarray, *args: Any, window: Window, **kwargs: Any) -> None:
        """Write ``array`` at ``window`` to the image (``dataset``, or memory) and compute the level rows that it
        completes."""
        self.image.write(array, *args, window=window, **kwargs)
        self.written(window)

    def written(self, window: Window) -> None:
        """Record a window written to the image and compute the level rows that it completes."""
        self._columns[window.row_off : window.row_off + window.height] += window.width
        while self._complete < self.dataset.height and self._columns[self._complete] >= self.dataset.width:
            self._complete += 1
        self._extend()

    def finish(self) -> None:
        """Compute every remaining row (the image is complete: unwritten pixels read as nodata) and close the
        level files."""
        self._complete = self.dataset.height
        self._extend()
        for level in self.levels:
            level.close()

    def _extend(self) -> None:
        """Read back the complete rows of each level not read yet (an even number, until the level's last),
        hand them on, and write their 2 x 2 means into the next level."""
        chain = [self.image, *self.levels]
        complete = self._complete
        for index, source in enumerate(chain):
            if self._rows is None and index + 1 == len(chain):
                break  # the smallest level's rows: nobody reads them
            ready = complete if complete >= source.height else complete - complete % 2
            for first in range(self._read[index], ready, 2 * CHUNK_ROWS):
                rows = source.read(window=Window(0, first, source.width, min(first + 2 * CHUNK_ROWS, ready) - first))
                if self._rows is not None:
                    self._rows(index, rows)
                if index + 1 < len(chain):
                    target = chain[index + 1]
                    target.write(
                        self._reduce(rows, self.nodata),
                        window=Window(0, first // 2, target.width, -(-rows.shape[1] // 2)),
                    )
            self._read[index] = max(self._read[index], ready)
            complete = -(-self._read[index] // 2)  # rows of the next level written

    def source(self, image: Path) -> Path:
        """A VRT of the (closed) ``image`` with the level files as its overviews: what the COG copy reads."""

        def add_overviews(root: ElementTree.Element) -> None:
            for band in root.iter("VRTRasterBand"):
                for path in self.paths:
                    overview = ElementTree.SubElement(band, "Overview")
                    ElementTree.SubElement(overview, "SourceFilename", relativeToVRT="0").text = str(path)
                    ElementTree.SubElement(overview, "SourceBand").text = band.get("band")

        return edited_vrt(image, self.vrt, add_overviews)

    def remove(self) -> None:
        """Close and delete the level files and the VRT."""
        for level in self.levels:
            with contextlib.suppress(Exception):
                level.close()
        for path in [*self.paths, self.vrt]:
            path.unlink(missing_ok=True)
