"""Reading S2 window by window on its 10 m grid, whatever the input (a GeoTIFF, a product's band files resampled
onto the 10 m grid on the fly, STAC assets); S1 is read by :mod:`dsen2cr.inputs.s1`. Nothing is read whole
(docs/design.md §4.4)."""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from dsen2cr.errors import DSen2CRError
from dsen2cr.inputs import S2Product, resolve_s2
from dsen2cr.inputs.geotiff import check_band_names
from dsen2cr.inputs.product import offset_kept
from dsen2cr.preprocessing import S2_BANDS, reflectance_percentile
from dsen2cr.rasters import (
    decimated_shape,
    gdal_block_cache,
    ground_pixel_size,
    into_utm,
    lattice_windows,
    open_raster,
    read_decimated,
    read_window,
)

log = logging.getLogger(__name__)

RESAMPLING = {"nearest": Resampling.nearest, "bilinear": Resampling.bilinear}


@dataclass(frozen=True)
class Grid:
    """A raster grid: CRS, transform and size."""

    crs: rasterio.crs.CRS
    transform: rasterio.Affine
    width: int
    height: int


def on_grid(src: rasterio.io.DatasetReaderBase, grid: Grid, resampling: Resampling, **options: object) -> WarpedVRT:
    """``src`` warped on the fly onto ``grid`` (window reads of the VRT resample only what they need)."""
    return WarpedVRT(
        src,
        crs=grid.crs,
        transform=grid.transform,
        width=grid.width,
        height=grid.height,
        resampling=resampling,
        **options,
    )


def grid_offset(src: rasterio.io.DatasetReaderBase, grid: Grid) -> tuple[int, int] | None:
    """Where ``grid``'s first pixel lies among ``src``'s pixels (column, row) when ``src`` lies on ``grid``'s pixel
    lattice (one CRS, pixel size and orientation; origins a whole number of pixels apart, within 1e-6 px), so that
    its windows are ``grid``'s shifted: read as they are, no warp; else None."""
    ours, theirs = src.transform, grid.transform
    if src.crs != grid.crs or not all(
        math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
        for a, b in zip(ours[:2] + ours[3:5], theirs[:2] + theirs[3:5], strict=True)
    ):
        return None
    col, row = ~ours * (theirs.c, theirs.f)
    if abs(col - round(col)) > 1e-6 or abs(row - round(row)) > 1e-6:
        return None
    return round(col), round(row)


def read_shifted(src: rasterio.io.DatasetReaderBase, window: Window, offset: tuple[int, int]) -> np.ndarray:
    """``window`` of a grid whose first pixel is ``src``'s pixel ``offset`` (:func:`grid_offset`), as float32 of
    every band: what ``src`` holds there, NaN beyond its edges."""
    col, row = int(window.col_off) + offset[0], int(window.row_off) + offset[1]
    height, width = int(window.height), int(window.width)
    left, top = max(col, 0), max(row, 0)
    right, bottom = min(col + width, src.width), min(row + height, src.height)
    if (left, top, right, bottom) == (col, row, col + width, row + height):  # all within src
        return read_window(src, Window(col, row, width, height)).astype(np.float32, copy=False)
    out = np.full((src.count, height, width), np.nan, np.float32)
    if right > left and bottom > top:
        part = read_window(src, Window(left, top, right - left, bottom - top))
        out[:, top - row : bottom - row, left - col : right - col] = part
    return out


class S2Source:
    """S2 DN on a 10 m grid, read window by window, always as the 13 L1C bands in model convention: offset-free
    reflectance x 10000 (docs/design.md §4.5).

    ``path`` is anything :func:`dsen2cr.inputs.resolve_s2` takes: a 13-band (L1C) or 12-band (L2A)
    GeoTIFF, a ``.SAFE`` or ``IMG_DATA`` folder, a zipped product or a STAC item. Bands at 20 m and 60 m are
    resampled onto the 10 m grid of B02. Declared offsets (baseline 04.00+) are removed when reading; DN 0
    stays nodata. For Level-2A input, B10 (absent) is filled with ``L2A_B10_FILL_DN``; ``bands`` lists the
    input's own bands, which are the ones to write.

    ``band_threads`` > 1: a product's band files are read on that many threads at once (each file by one
    thread at a time). A window touches few of a band's JPEG 2000 blocks (1024 px), so GDAL's own decoding
    threads stay mostly idle on one band; decoding the bands side by side uses the cores.
    """

    def __init__(
        self,
        path: str | Path | S2Product,
        *,
        resampling: str = "nearest",
        offset: int | None = None,
        checked: bool = False,
        band_threads: int = 1,
    ) -> None:
        self.product = path if isinstance(path, S2Product) else resolve_s2(path, offset=offset)
        self.path = self.product.source
        self.name = self.product.source
        self.bands = self.product.bands
        self.level = self.product.level
        self.resampling = resampling
        self._datasets: list[rasterio.io.DatasetReaderBase] = []
        try:
            if len(self.product.files) > 1:
                self._open_band_files(self.product.files, RESAMPLING[resampling])
            else:
                dataset = open_raster(self.product.files[0], what="S2")
                self._datasets = [dataset]
                self.grid = Grid(dataset.crs, dataset.transform, dataset.width, dataset.height)
                self.nodata = dataset.nodata
                descriptions = tuple(dataset.descriptions[i - 1] for i in self.product.file_bands)
                check_band_names(self.name, descriptions, self.bands)
            if not checked:
                self._check_declared()
                self._check_units()
                self._check_offsets()
        except DSen2CRError:
            self.close()
            raise
        self.dtype = str(self._datasets[0].dtypes[0])
        threads = min(band_threads, len(self._datasets))
        self._band_pool = ThreadPoolExecutor(threads, thread_name_prefix="dsen2cr-bands") if threads > 1 else None
        self._offsets = np.asarray(self.product.offsets, np.int32)[:, None, None]
        self._converts = bool(self._offsets.any()) or self.product.scale != 1.0
        if self.level == "L2A":
            _warn_once(
                "Level-2A input: the published weights were trained on top-of-atmosphere (Level-1C) data, so "
                f"results on surface reflectance carry that domain shift; B10 is filled with {L2A_B10_FILL_DN} DN"
            )

    def _check_declared(self) -> None:
        """What the file says about itself: a CRS, a real geotransform, a numeric data type."""
        if self.grid.crs is None:
            if self._datasets[0].gcps[0]:
                raise DSen2CRError(
                    f"{self.name}: S2 is georeferenced by ground control points only; warp it onto a 10 m grid "
                    "first (gdalwarp -t_srs EPSG:326NN -tr 10 10)"
                )
            raise DSen2CRError(f"{self.name}: S2 has no coordinate reference system")
        if self.grid.transform == rasterio.Affine.identity():
            raise DSen2CRError(
                f"{self.name}: S2 has no georeferencing (identity geotransform); the output would have none either"
            )
        dtype = np.dtype(self._datasets[0].dtypes[0])
        if dtype.kind not in "uif" or dtype.itemsize < 2:
            raise DSen2CRError(
                f"{self.name}: S2 is {dtype}; expected DN (reflectance x 10000), uint16 (uint8 cannot hold them)"
            )
        self._check_pixel_size()

    def _check_pixel_size(self) -> None:
        """Refuse a grid the model was not trained on: a geographic CRS, or pixels other than 10 m (+-5 %) in the
        CRS's units or on the ground (a projection that stretches: Web Mercator's 10 m at 50 degrees span 6.4 m)."""
        crs, transform, width, height = self.grid.crs, self.grid.transform, self.grid.width, self.grid.height
        if crs.is_geographic:
            raise DSen2CRError(
                f"{self.name}: S2 is on a geographic CRS ({crs.to_string()}); the model works on 10 m pixels: "
                f"{into_utm(crs, transform, width, height)}"
            )
        metres = crs.linear_units_factor[1] if crs.is_projected else 1.0
        size = (metres * math.hypot(transform.a, transform.d), metres * math.hypot(transform.b, transform.e))
        if not _near_10_m(size):
            raise DSen2CRError(
                f"{self.name}: S2 pixels are {size[0]:.3g} x {size[1]:.3g} m; the model works at 10 m: resample it to "
                "10 m first (rio warp IN OUT --res 10, or gdalwarp -tr 10 10 IN OUT)"
            )
        ground = ground_pixel_size(crs, transform, width, height)
        if ground is not None and not _near_10_m(ground):
            raise DSen2CRError(
                f"{self.name}: S2 pixels are {size[0]:.3g} x {size[1]:.3g} m in {crs.to_string()}, but {ground[0]:.3g} "
                f"x {ground[1]:.3g} m on the ground here; the model works at 10 m: "
                + into_utm(crs, transform, width, height)
            )

    def _check_units(self) -> None:
        """Refuse S2 that holds reflectance (0-1) instead of digital numbers (reflectance x 10000), or negative
        DN (signed integers; a decimated sample is looked at). Unsigned integers need no look."""
        dataset = self._datasets[0]
        if np.dtype(dataset.dtypes[0]).kind == "u":
            return
        sample = self.read_decimated(256).astype(np.float64)
        if dataset.dtypes[0].startswith("int") and sample.min(initial=0) < 0:
            raise DSen2CRError(
                f"{self.name}: S2 holds negative DN (as low as {sample.min():.0f} in a sample); expected DN >= 0 "
                "(reflectance x 10000, 0 = nodata)"
            )
        percentile = reflectance_percentile(sample)
        if percentile is not None:
            raise DSen2CRError(
                f"{self.name}: S2 values look like reflectance (99th percentile {percentile:.3g}); "
                "expected L1C digital numbers (reflectance x 10000), e.g. uint16"
            )

    def _check_offsets(self) -> None:
        """Refuse offsets the data does not hold: one that takes a band to 0 or below (DN 1 once clipped) on more
        than half of its valid pixels. Data that holds its offset (-1000: reflectance 0 is DN 1000) lies above it
        nearly everywhere; dark land in the visible bands lies far below 1000 without it. Where no offset is
        known (a GeoTIFF, a folder without metadata), warn about a Level-1C B10 (cirrus) above 1000 DN in the
        median (tens of DN under a clear sky) or a Level-2A B2 (blue) whose darkest 1 % lies at 1000 DN or above
        (surface reflectance of water and shadow: tens to hundreds): it holds baseline 04.00's offset. Both look at
        :meth:`_raw_sample`."""
        offsets = np.asarray(self.product.offsets, np.float64)
        if not offsets.any() and self.product.offset_from != "none":
            return
        sample = self._raw_sample()
        nodata = 0 if self.nodata is None else self.nodata
        for band, offset, values in zip(self.bands, offsets, sample, strict=True):
            values = values[(values != nodata) & np.isfinite(values)]
            if values.size == 0:
                continue
            lost = float(np.mean(np.rint((values + offset) * self.product.scale) < 1))
            if offset and lost > 0.5:
                source = {"option": "--s2-offset", "metadata": "the product's metadata", "stac": "the STAC item"}
                raise DSen2CRError(
                    f"{self.name}: the offset {offset:g} ({source.get(self.product.offset_from, 'declared')}) takes "
                    f"{band} to 0 or below on {lost:.0%} of its valid pixels (median DN {np.median(values):.0f}): "
                    "the data holds no such offset"
                )
            if not offset and (said := offset_kept(band, self.level, values)):
                log.warning(
                    "%s: %s: products of processing baseline 04.00+ (since 2022) add 1000 to every DN; if this is an "
                    "export of one, give --s2-offset -1000",
                    self.name,
                    said,
                )

    def _raw_sample(self) -> np.ndarray:
        """The input's DN (bands, n), offsets kept: the decimated scene where every file has overviews (a
        product's JP2 bands, COGs: read from them), else a lattice of small windows spread over the scene (a few
        blocks, where a decimated read would decode the whole file), or the decimated scene where those hold no
        valid pixel. (Full-resolution windows of JP2 bands decode a tile each: 11.4 s against 0.66 s from the
        overviews for a 4096 x 10980 IMG_DATA folder.)"""
        if all(dataset.overviews(1) for dataset in self._datasets):
            return self.read_decimated(256).reshape(len(self.bands), -1).astype(np.float64)
        parts = [
            self._read_file_bands(window).reshape(len(self.bands), -1)
            for window in lattice_windows(self.grid.height, self.grid.width)
        ]
        sample = np.concatenate(parts, axis=1)
        if not self.valid(sample[:, :, None]).any():
            sample = self.read_decimated(256).reshape(len(self.bands), -1)
        return sample.astype(np.float64)

    def _open_band_files(self, files: list[str], resampling: Resampling) -> None:
        """Open one file per band; resample the coarser ones onto the B02 grid. Bands of one product share a
        CRS: a band file on another one (same transform numbers or not) is refused, not guessed past."""
        reference = open_raster(files[self.bands.index("B2")], what="S2 band B02")
        self.grid = Grid(reference.crs, reference.transform, reference.width, reference.height)
        self.nodata = 0
        for band_file in files:
            src = open_raster(band_file, bands=1, what="S2 band")
            if src.crs is None:
                raise DSen2CRError(f"{band_file}: S2 band has no coordinate reference system")
            if src.crs != self.grid.crs:
                crs = src.crs.to_string()
                src.close()
                raise DSen2CRError(
                    f"{band_file}: S2 band is on {crs}, but B02 of {self.name} is on {self.grid.crs.to_string()}; "
                    "the bands of one scene must share a CRS"
                )
            same = (src.crs, src.width, src.height, src.transform)
            if same == (self.grid.crs, self.grid.width, self.grid.height, self.grid.transform):
                self._datasets.append(src)
            else:
                self._datasets.append(on_grid(src, self.grid, resampling))
        reference.close()

    def read(self, window: Window) -> np.ndarray:
        """(13, h, w) DN of ``window`` in model convention (offsets removed; B10 filled for Level-2A)."""
        return self._with_b10(self._read_input_bands(window, list(range(len(self.bands)))))

    def read_decimated_scene(self, max_size: int) -> np.ndarray:
        """The whole scene at reduced resolution (longest side at most ``max_size``; a product's overviews) as
        :meth:`read` gives a window: (13, h, w) DN in model convention."""
        raw = self.read_decimated(max_size)
        return self._with_b10(self._remove_offsets(raw, self._offsets) if self._converts else raw)

    def _with_b10(self, raw: np.ndarray) -> np.ndarray:
        """The input's bands as the 13 L1C bands: B10 filled for Level-2A (where the pixel is valid)."""
        if self.level == "L2A":
            fill = np.where(self.valid(raw), L2A_B10_FILL_DN, 0 if self.nodata is None else self.nodata)
            raw = np.insert(raw, S2_BANDS.index("B10"), fill.astype(raw.dtype), axis=0)
        return raw

    def read_bands(self, window: Window, bands: Sequence[str]) -> np.ndarray:
        """(len(bands), h, w) DN of some of the input's own ``bands`` in ``window``, as :meth:`read` gives them
        (offsets removed), reading only their files (or, from one file, only those bands)."""
        return self._read_input_bands(window, [self.bands.index(band) for band in bands])

    def _read_input_bands(self, window: Window, indices: list[int]) -> np.ndarray:
        """The input's bands ``indices`` (positions in :attr:`bands`) of ``window``, offsets removed."""
        if len(self._datasets) == 1:
            raw = read_window(self._datasets[0], window, [self.product.file_bands[i] for i in indices])
        elif self._band_pool is None:
            raw = np.concatenate([read_window(self._datasets[i], window) for i in indices], axis=0)
        else:
            datasets = [self._datasets[i] for i in indices]
            raw = np.concatenate(list(self._band_pool.map(_read_band, datasets, itertools.repeat(window))))
        return self._remove_offsets(raw, self._offsets[indices]) if self._converts else raw

    def _remove_offsets(self, raw: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """(DN + offset) x scale on valid values, at least 1 (0 stays reserved for nodata), in the input's type."""
        nodata = 0 if self.nodata is None else self.nodata
        values = (raw.astype(np.float64) + offsets) * self.product.scale
        if raw.dtype.kind in "ui":
            values = np.clip(np.rint(values), 1, np.iinfo(raw.dtype).max)
        return np.where(raw == nodata, raw, values).astype(raw.dtype)

    def valid(self, dn: np.ndarray) -> np.ndarray:
        """Bool (h, w): pixels that are not nodata (the file's nodata value, or 0, or NaN in every band)."""
        nodata = 0 if self.nodata is None else self.nodata
        missing = dn == nodata
        if dn.dtype.kind == "f":
            missing |= np.isnan(dn)
        return ~np.all(missing, axis=0)

    def read_decimated(self, max_size: int) -> np.ndarray:
        """The whole scene at reduced resolution (longest side at most ``max_size``), for quick checks."""
        shape = decimated_shape(self.grid.height, self.grid.width, max_size)
        raw = np.concatenate([read_decimated(d, shape) for d in self._datasets], axis=0)
        return raw if len(self._datasets) > 1 else raw[np.asarray(self.product.file_bands) - 1]

    def _read_file_bands(self, window: Window) -> np.ndarray:
        """The input's bands of ``window`` as stored (offsets kept): each band file's, or a file's bands."""
        if len(self._datasets) == 1:
            return read_window(self._datasets[0], window, self.product.file_bands)
        return np.concatenate([read_window(dataset, window) for dataset in self._datasets])

    def reopen(self) -> S2Source:
        """The same scene on file handles of its own (for another thread: GDAL datasets are not thread-safe),
        without resolving the input or checking it again."""
        return S2Source(self.product, resampling=self.resampling, checked=True)

    def close(self) -> None:
        """Close the files (once no band is being read)."""
        pool: ThreadPoolExecutor | None = getattr(self, "_band_pool", None)  # (unset when __init__ failed)
        if pool is not None:
            pool.shutdown(wait=True)
        for dataset in self._datasets:
            dataset.close()


def _near_10_m(sides: tuple[float, float]) -> bool:
    """Whether a pixel's width and height are both 10 m, within 5 %."""
    return all(abs(side - 10) <= 0.5 for side in sides)


def _read_band(dataset: rasterio.io.DatasetReaderBase, window: Window) -> np.ndarray:
    """One band file's window, on a band-reading thread (in the scene's GDAL settings, which are per thread)."""
    with gdal_block_cache():
        return read_window(dataset, window)


def scene_grid(product: S2Product) -> Grid:
    """The 10 m grid of a resolved S2 input (B02's, or the file's), without opening the other bands."""
    single = len(product.files) == 1
    path = product.files[0] if single else product.files[product.bands.index("B2")]
    with open_raster(path, what="S2" if single else "S2 band B02") as dataset:
        return Grid(dataset.crs, dataset.transform, dataset.width, dataset.height)


#: B10 for Level-2A input, which has none: 15 DN (reflectance 0.0015) is a clear-sky value of the cirrus band
#: over land, so the network sees a typical cloud-free B10, and the mask's cirrus test (B1 + B10 >= 0.15) is
#: left to B1 alone. The bundled sample (Level-2A) is filled the same way.
L2A_B10_FILL_DN = 15
_warned: set[str] = set()


def _warn_once(message: str) -> None:
    """Log ``message`` as a warning the first time only (per process)."""
    if message not in _warned:
        _warned.add(message)
        log.warning("%s", message)
