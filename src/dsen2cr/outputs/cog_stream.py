"""A Cloud-Optimised GeoTIFF compressed while its image is computed (docs/design.md §4.4, issue #27 item 4).

GDAL's COG driver compresses the whole image in one copy after the last window: on a full Sentinel-2 tile that
serial tail took longer than the network. Here each level of the COG (the image, then its overviews) is cut
into 256 px tiles as soon as full block rows of it are complete, and the tiles are compressed on a thread pool
(imagecodecs: libdeflate and zstd, GIL released) into one data file per level while the next windows are
predicted. At the end only the TIFF's directories are written, with GDAL's COG layout (the "ghost" header that
makes GDAL report ``LAYOUT=COG``, every directory before the data, the smallest overview's tiles first, each
tile with GDAL's 4-byte leader and trailer), and the data files are appended by the kernel
(``os.copy_file_range``). The tags that describe the image (georeferencing, GDAL metadata, no-data, sample
format, photometric interpretation, compression and predictor codes) are the ones GDAL's COG driver writes
for it: taken from a 16 x 16 COG GDAL makes of the staging file's corner.
"""

from __future__ import annotations

import collections
import contextlib
import os
import shutil
import struct
import xml.etree.ElementTree as ElementTree
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import rasterio
import rasterio.shutil

try:  # a dependency of the package; a Python without it (or a build without a codec) gets GDAL's copy
    import imagecodecs
except ImportError:  # pragma: no cover - exercised by monkeypatching in tests
    imagecodecs = None  # type: ignore[assignment]

from dsen2cr.errors import DSen2CRError
from dsen2cr.outputs.overviews import edited_vrt
from dsen2cr.outputs.tiff_directories import (
    GDAL_METADATA,
    LONG,
    LONG8,
    SHORT,
    TiffTag,
    directory,
    directory_size,
    numbers,
    read_first_directory,
    size_tag,
    with_metadata_items,
)

#: Tags this writer sets per directory (size, tiling, tile positions); all other tags come from GDAL's template.
_STRUCTURAL = {254, 256, 257, 273, 278, 279, 322, 323, 324, 325}
#: Tags of the full-resolution directory only: georeferencing (GeoTIFF) and GDAL's metadata.
_MAIN_ONLY = {33550, 33922, 34264, 34735, 34736, 34737, 42112}
_COMPRESSION_CODES = {"DEFLATE": 8, "ZSTD": 50000}
#: GDAL's default level of each compression when the options name none.
_DEFAULT_LEVELS = {"DEFLATE": 6, "ZSTD": 9}
#: The structural metadata GDAL puts after the TIFF header of a COG: GDAL reports ``LAYOUT=COG`` for a file
#: that declares all four (its tiles then carry a leader with their size and a trailer repeating their last
#: 4 bytes); the trailing space leaves room for GDAL to turn ``NO`` into ``YES`` when the file is edited.
_GHOST_BODY = (
    b"LAYOUT=IFDS_BEFORE_DATA\nBLOCK_ORDER=ROW_MAJOR\nBLOCK_LEADER=SIZE_AS_UINT4\n"
    b"BLOCK_TRAILER=LAST_4_BYTES_REPEATED\nKNOWN_INCOMPATIBLE_EDITION=NO\n "
)
#: Offsets a classic TIFF can hold; a larger COG is a BigTIFF.
CLASSIC_TIFF_LIMIT = 2**32
_GHOST = b"GDAL_STRUCTURAL_METADATA_SIZE=%06d bytes\n" % len(_GHOST_BODY) + _GHOST_BODY


def option(options: dict[str, str | int], name: str, default: str | int) -> str:
    """A creation option as text, its name matched without case (GDAL's are case-insensitive)."""
    found = [value for key, value in options.items() if key.upper() == name.upper()]
    return str(found[0] if found else default)


def streams(options: dict[str, str | int], dtype: str) -> bool:
    """Whether :class:`COGStream` writes a COG with these options (deflate or zstd, horizontal predictor or
    none) of ``dtype`` (any integer or float type of 1 to 8 bytes) with the imagecodecs installed; else GDAL's
    copy does."""
    compress = option(options, "compress", "").upper()
    if (
        compress not in _COMPRESSION_CODES
        or option(options, "predictor", "1") not in ("1", "2")
        or np.dtype(dtype).itemsize not in (1, 2, 4, 8)
    ):
        return False
    return imagecodecs is not None and bool(getattr(imagecodecs, compress).available)


@dataclass
class _Level:
    """One directory of the COG being streamed: its size, its compressed tiles' file and their positions."""

    height: int
    width: int
    data_path: Path
    data: BinaryIO
    offsets: list[int] = field(default_factory=list)  # of each tile's first byte in ``data``, after its leader
    counts: list[int] = field(default_factory=list)
    buffered: list[np.ndarray] = field(default_factory=list)  # rows received, not yet a whole block row
    received: int = 0  # rows received


class COGStream:
    """A COG of ``shapes`` (the image's (height, width), then each overview's) of ``count`` bands, compressed
    with ``options`` (:func:`streams`) on ``workers`` threads as rows of each level arrive (:meth:`add`);
    :meth:`write` then writes the file. ``stem`` names the per-level data files (beside the output).
    Band statistics (GDAL's ``STATISTICS_*`` items) are computed from the image's rows when ``options`` ask
    for them (``STATISTICS=YES``), excluding ``nodata`` and NaN."""

    #: Tile size, the COG options' ``blocksize``.
    block: int

    def __init__(
        self,
        stem: Path,
        shapes: Sequence[tuple[int, int]],
        count: int,
        dtype: str,
        nodata: float | None,
        options: dict[str, str | int],
        *,
        workers: int,
    ) -> None:
        if not streams(options, dtype):
            raise ValueError(f"COGStream cannot write {dtype} with {options}")
        self.count, self.dtype, self.nodata, self.options = count, np.dtype(dtype), nodata, options
        self.block = int(option(options, "blocksize", 512))
        compress = option(options, "compress", "").upper()
        self._codes = (_COMPRESSION_CODES[compress], int(option(options, "predictor", "1")))
        level = int(option(options, "level", _DEFAULT_LEVELS[compress]))
        self._encode = (
            (lambda data: imagecodecs.deflate_encode(data, level=level))
            if compress == "DEFLATE"
            else (lambda data: imagecodecs.zstd_encode(data, level=level))
        )
        self._differences = self._codes[1] == 2
        self._statistics = option(options, "statistics", "NO").upper() == "YES"
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="dsen2cr-cog")
        self._pending: collections.deque[tuple[_Level, Future[list[bytes]]]] = collections.deque()
        self._band_stats: list[Future[np.ndarray]] = []
        self._limit = 2 * workers  # block rows being compressed at most (bounds the memory held)
        self.levels: list[_Level] = []
        try:
            for index, (height, width) in enumerate(shapes):
                path = stem.with_name(f"{stem.name}.level{index}.tiles")
                self.levels.append(_Level(height, width, path, open(path, "wb")))  # noqa: SIM115  # closed in remove
        except BaseException:
            self.remove()
            raise

    def add(self, index: int, rows: np.ndarray) -> None:
        """The next (bands, n, width) rows of level ``index`` (0: the image), in order from the top; each
        complete block row is handed to the pool, and the block rows already compressed are written out."""
        level = self.levels[index]
        if rows.shape != (self.count, rows.shape[1], level.width) or level.received + rows.shape[1] > level.height:
            raise ValueError(
                f"level {index}: rows of shape {rows.shape} do not continue a {level.height} x {level.width} image"
            )
        level.buffered.append(rows)
        level.received += rows.shape[1]
        while level.buffered and (
            sum(part.shape[1] for part in level.buffered) >= self.block or level.received == level.height
        ):
            whole = np.concatenate(level.buffered, axis=1) if len(level.buffered) > 1 else level.buffered[0]
            level.buffered = [whole[:, self.block :]] if whole.shape[1] > self.block else []
            block_row = whole[:, : self.block]
            self._pending.append((level, self._pool.submit(self._tiles, block_row)))
            if index == 0 and self._statistics:
                self._band_stats.append(self._pool.submit(self._block_statistics, block_row))
        self._write_compressed(wait=len(self._pending) > self._limit)

    def _tiles(self, rows: np.ndarray) -> list[bytes]:
        """The compressed tiles of one block row (bands, n <= block, width), left to right, pixel-interleaved
        and padded to whole tiles, with the horizontal predictor when asked."""
        bands, height, width = rows.shape
        across = -(-width // self.block)
        padded = np.zeros((self.block, across * self.block, bands), self.dtype)
        padded[:height, :width] = rows.transpose(1, 2, 0)
        tiles = []
        for column in range(across):
            tile = padded[:, column * self.block : (column + 1) * self.block]
            if self._differences:  # each sample minus the same sample of the pixel to its left, wrapping
                tile = tile.view(f"u{self.dtype.itemsize}")
                tile = np.concatenate([tile[:, :1], tile[:, 1:] - tile[:, :-1]], axis=1)
            tiles.append(
                bytes(self._encode(np.ascontiguousarray(tile).astype(tile.dtype.newbyteorder("<"), copy=False)))
            )
        return tiles

    def _block_statistics(self, rows: np.ndarray) -> np.ndarray:
        """Per band: valid pixels, sum, sum of squares, minimum, maximum (float64; integers summed exactly)."""
        stats = np.zeros((rows.shape[0], 5))
        for band, values in enumerate(rows):
            flat = values.ravel()
            if self.dtype.kind in "ui" and self.dtype.itemsize <= 2:  # a histogram: exact sums, one pass
                shift = -int(np.iinfo(self.dtype).min)
                histogram = np.bincount(
                    flat.astype(np.int64) + shift if shift else flat, minlength=1 << (8 * self.dtype.itemsize)
                )
                if self.nodata is not None and np.iinfo(self.dtype).min <= self.nodata <= np.iinfo(self.dtype).max:
                    histogram[int(self.nodata) + shift] = 0
                present = np.flatnonzero(histogram)
                if present.size:
                    values_at = np.arange(histogram.size, dtype=np.float64) - shift
                    stats[band] = (
                        histogram.sum(),
                        histogram @ values_at,
                        histogram @ values_at**2,
                        present[0] - shift,
                        present[-1] - shift,
                    )
                continue
            valid = flat[~np.isnan(flat)] if self.dtype.kind == "f" else flat
            if self.nodata is not None:
                valid = valid[valid != self.nodata]
            if valid.size:
                as_float = valid.astype(np.float64)
                stats[band] = (valid.size, as_float.sum(), as_float @ as_float, as_float.min(), as_float.max())
        return stats

    def _write_compressed(self, *, wait: bool) -> None:
        """Append the compressed block rows at the head of the queue to their level's file (each tile with its
        4-byte size before it and its last 4 bytes again after it); with ``wait``, at least the first."""
        while self._pending and (wait or self._pending[0][1].done()):
            level, future = self._pending.popleft()
            for tile in future.result():
                position = level.data.tell() + 4
                level.data.write(struct.pack("<I", len(tile)) + tile + tile[-4:])
                level.offsets.append(position)
                level.counts.append(len(tile))
            wait = wait and len(self._pending) > self._limit

    def statistics(self) -> dict[int, dict[str, str]]:
        """GDAL's ``STATISTICS_*`` items of each band (1-based) as GDAL formats them; empty if not asked for."""
        if not self._statistics:
            return {}
        totals = np.zeros((self.count, 5))
        totals[:, 3], totals[:, 4] = np.inf, -np.inf
        for future in self._band_stats:
            part = future.result()
            has = part[:, 0] > 0
            totals[:, :3] += part[:, :3]
            totals[has, 3] = np.minimum(totals[has, 3], part[has, 3])
            totals[has, 4] = np.maximum(totals[has, 4], part[has, 4])
        pixels = self.levels[0].height * self.levels[0].width
        items: dict[int, dict[str, str]] = {}
        for band, (valid, total, squares, low, high) in enumerate(totals, start=1):
            if not valid:
                continue
            mean = total / valid
            std = float(np.sqrt(max(squares / valid - mean * mean, 0.0)))
            items[band] = {
                "STATISTICS_MAXIMUM": f"{high:.14g}",
                "STATISTICS_MEAN": f"{mean:.14g}",
                "STATISTICS_MINIMUM": f"{low:.14g}",
                "STATISTICS_STDDEV": f"{std:.14g}",
                "STATISTICS_VALID_PERCENT": f"{100 * valid / pixels:.4g}",
            }
        return items

    def write(self, path: Path, staging: Path) -> None:
        """Write the COG to ``path`` once every row of every level was added; ``staging`` (the closed image
        file, with all its metadata) gives GDAL's tags through a 16 x 16 COG of its corner."""
        for index, level in enumerate(self.levels):
            if level.received != level.height:
                raise ValueError(f"level {index}: {level.received} of {level.height} rows added")
        while self._pending:
            self._write_compressed(wait=True)
        for level in self.levels:
            level.data.close()
        main_tags, overview_tags = self._template_tags(staging, path)
        tile_tags = [numbers(322, SHORT, [self.block]), numbers(323, SHORT, [self.block])]

        def directories(bigtiff: bool, data_at: list[int]) -> list[list[TiffTag]]:
            kind = LONG8 if bigtiff else LONG
            out = []
            for index, level in enumerate(self.levels):
                tags = [*(main_tags if index == 0 else overview_tags), *tile_tags]
                tags += [size_tag(256, level.width), size_tag(257, level.height)]
                tags += [numbers(324, kind, [data_at[index] + o for o in level.offsets])]
                tags += [numbers(325, LONG, level.counts)]
                if index:
                    tags.append(numbers(254, LONG, [1]))  # a reduced-resolution image
                out.append(tags)
            return out

        data_sizes = [level.data_path.stat().st_size for level in self.levels]
        for bigtiff in (False, True):
            header = 16 if bigtiff else 8
            first = header + len(_GHOST) + (header + len(_GHOST)) % 2
            sized = directories(bigtiff, [0] * len(self.levels))
            directory_at = [first]
            for tags in sized[:-1]:
                directory_at.append(directory_at[-1] + directory_size(tags, bigtiff))
            data_start = directory_at[-1] + directory_size(sized[-1], bigtiff)
            data_at = [0] * len(self.levels)
            position = data_start
            for index in reversed(range(len(self.levels))):  # the smallest overview's tiles first, the image's last
                data_at[index] = position
                position += data_sizes[index]
            if position < CLASSIC_TIFF_LIMIT or bigtiff:
                break
        head = b"II" + (struct.pack("<HHHQ", 43, 8, 0, first) if bigtiff else struct.pack("<HI", 42, first))
        with open(path, "wb") as out:
            out.write(head + _GHOST + b"\0" * (first - header - len(_GHOST)))
            tagged = directories(bigtiff, data_at)
            for index, tags in enumerate(tagged):
                following = directory_at[index + 1] if index + 1 < len(tagged) else 0
                out.write(directory(tags, directory_at[index], following, bigtiff))
            assert out.tell() == data_start
            for index in reversed(range(len(self.levels))):
                _append(out, self.levels[index].data_path)
        self.remove()

    def _template_tags(self, staging: Path, path: Path) -> tuple[list[TiffTag], list[TiffTag]]:
        """The tags of GDAL's COG of ``staging``'s corner that describe the image (not its size or tiles), for
        the image's directory and (no georeferencing, no metadata) for the overviews'; the band statistics
        added to GDAL's metadata."""
        template, corner = path.with_name(path.name + ".template.tif"), path.with_name(path.name + ".corner.vrt")
        options = {k: v for k, v in self.options.items() if k.upper() not in ("STATISTICS", "NUM_THREADS")}

        def cut(root: ElementTree.Element) -> None:
            """The staging file's VRT cut to its corner (a VRT file, not a vrt:// string: any path works); GDAL's
            attribute names (a ``RasterXSize`` beside them was ignored: the copy was of the whole image)."""
            root.set("rasterXSize", str(min(16, self.levels[0].width)))
            root.set("rasterYSize", str(min(16, self.levels[0].height)))

        try:
            rasterio.shutil.copy(edited_vrt(staging, corner, cut), template, **options, STATISTICS="NO")
            tags = read_first_directory(template)
        finally:
            template.unlink(missing_ok=True)
            corner.unlink(missing_ok=True)
        predictor = int.from_bytes(tags[317].value, "little") if 317 in tags else 1  # absent: none
        written = (int.from_bytes(tags[259].value, "little"), predictor)
        if written != self._codes:  # GDAL's tags must describe the tiles as this stream encoded them
            raise DSen2CRError(f"{path}: GDAL wrote compression/predictor {written}, the tiles are {self._codes}")
        stats = self.statistics()
        if stats:
            tags[GDAL_METADATA] = with_metadata_items(tags.get(GDAL_METADATA), stats)
        main = [tag for code, tag in tags.items() if code not in _STRUCTURAL]
        return main, [tag for tag in main if tag.code not in _MAIN_ONLY]

    def remove(self) -> None:
        """Stop the pool and delete the data files (after :meth:`write`, or on failure)."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._pending.clear()
        for level in self.levels:
            with contextlib.suppress(Exception):
                level.data.close()
            level.data_path.unlink(missing_ok=True)


def _append(out: BinaryIO, source: Path) -> None:
    """Append the bytes of ``source`` to ``out`` in the kernel (``copy_file_range``) where it can, else by reads."""
    out.flush()
    with open(source, "rb") as data:
        left = source.stat().st_size
        with contextlib.suppress(OSError, AttributeError):
            while left:
                copied = os.copy_file_range(data.fileno(), out.fileno(), left)
                if not copied:
                    break
                left -= copied
        if left:  # no copy_file_range here (or not between these files): the rest by reads and writes
            out.seek(0, os.SEEK_END)
            data.seek(source.stat().st_size - left)
            shutil.copyfileobj(data, out, 16 << 20)
    out.seek(0, os.SEEK_END)
