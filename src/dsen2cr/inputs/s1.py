"""Reading S1 window by window: VV and VH in dB on the S2 grid, warped on the fly when the grids differ, the frames
of one pass read as one (docs/design.md §4.4)."""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.warp import reproject, transform_bounds
from rasterio.windows import Window

from dsen2cr.errors import DSen2CRError
from dsen2cr.inputs import resolve_s1, s1_frames
from dsen2cr.inputs.geotiff import polarisation
from dsen2cr.inputs.readers import Grid, grid_offset, on_grid, read_shifted
from dsen2cr.inputs.s1_time import s1_facts
from dsen2cr.preprocessing import NUM_S1_BANDS
from dsen2cr.rasters import lattice_windows, open_raster, read_decimated, read_window

log = logging.getLogger(__name__)

#: The highest median (dB) S1 in dB may hold: sigma0 lies between about -30 and +5 dB on land and water (bright
#: cities reach +10 to +20 in a few pixels, not in the median); amplitude and digital numbers lie far above.
MAX_MEDIAN_DB = 10.0
#: How far (dB) the median of band 2 may lie above band 1 before S1 counts as swapped: VH lies some 5-8 dB below
#: VV on land and water (the bundled sample: 5-8 dB), and near the noise floor (calm water) the two come close.
SWAPPED_MARGIN_DB = 2.0


def _check_polarisations(name: str, descriptions: tuple[str | None, ...]) -> None:
    """Refuse an S1 file whose band descriptions name its polarisations in another order than VV, VH (the
    network would take VH for VV). Files without such names pass."""
    found = [polarisation(d) for d in descriptions]
    if any(found) and found != ["VV", "VH"]:
        said = tuple((d or "").strip() for d in descriptions)
        raise DSen2CRError(f"{name}: S1 band descriptions are {said}; expected VV, VH (band 1 VV, band 2 VH)")


def open_s1(text: str, local: Mapping[str, str] | None = None) -> rasterio.DatasetReader:
    """The S1 input ``text`` (a file, a ``VV,VH`` pair, a STAC item: its assets' ``local`` copies where fetched) open
    as one 2-band raster (VV, VH); a file of one band is refused saying how to give one polarisation a file."""
    dataset = open_raster(resolve_s1(text, local), what="S1 (VV, VH)")
    if dataset.count != NUM_S1_BANDS:
        count = dataset.count
        dataset.close()
        advice = "; one polarisation a file: give the two as one S1 pair, VV.tif,VH.tif" if count == 1 else ""
        raise DSen2CRError(f"{text}: S1 (VV, VH) has {count} band{'s' * (count != 1)}, expected 2{advice}")
    return dataset


def first_data(first: np.ndarray, more: list[Callable[[], np.ndarray]]) -> np.ndarray:
    """Frames put together as ``rio merge`` does: ``first`` (NaN: no data), its holes filled from each of ``more`` in
    turn (each read only while holes remain)."""
    for read in more:
        holes = np.isnan(first)
        if not holes.any():
            break
        first[holes] = read()[holes]
    return first


class S1Source:
    """S1 VV and VH in dB on the S2 grid: read as it is where it lies on the grid's pixel lattice, else warped on the
    fly.

    ``path`` is anything :func:`dsen2cr.inputs.resolve_s1` takes: a 2-band file, a ``VV,VH`` pair of
    single-band files, or a STAC item with ``vv`` and ``vh`` assets; or frames of one pass joined with ``+``
    (:func:`dsen2cr.inputs.s1_frames`), each checked on its own and read where the frames before it have no data
    (as ``rio merge`` puts them together). Pixels outside the S1 footprint, marked nodata, or infinite read as NaN.
    ``local``: the local copies of STAC items' assets a scene fetched (:mod:`dsen2cr.inputs.fetch`), read instead.
    """

    def __init__(
        self, path: str | Path, grid: Grid, *, linear: bool = False, local: Mapping[str, str] | None = None
    ) -> None:
        self.path = str(path)  # named in messages
        self.linear = linear
        self._frames: list[S1File] = []
        try:
            for frame in s1_frames(self.path):
                self._frames.append(S1File(frame, grid, linear=linear, local=local))
            facts = s1_facts(self.path)
        except DSen2CRError:
            self.close()
            raise
        self._lattice = CommonLattice.of(self._frames, grid)
        #: when S1 was sensed (ISO 8601 in UTC; of frames, the pass's start; None: nothing says), compared with S2's
        self.sensing_time = facts.sensing_time
        #: on which pass (``ascending``, ``descending``; None: nothing says)
        self.orbit_direction = facts.orbit
        #: its relative orbit (1 to 175; of frames, the pass's start's; None: nothing says)
        self.relative_orbit = facts.track

    def read(self, window: Window) -> np.ndarray:
        """(2, h, w) float32 dB of ``window``; NaN where S1 has no data (in no frame)."""
        if self._lattice is not None:
            return self._lattice.read(window)
        return first_data(self._frames[0].read(window), [functools.partial(f.read, window) for f in self._frames[1:]])

    def close(self) -> None:
        """Close the files."""
        for frame in self._frames:
            frame.close()


class S1File:
    """One S1 input (a 2-band file, a ``VV,VH`` pair, a STAC item) on the S2 grid: what it declares checked, read
    window by window in dB (a window shifted where it lies on the S2 grid's pixel lattice, else warped; NaN where it
    has no data)."""

    def __init__(self, path: str, grid: Grid, *, linear: bool = False, local: Mapping[str, str] | None = None) -> None:
        self.path = path  # named in messages
        self.linear = linear
        self._src = open_s1(path, local)
        #: the file's own grid (its pixel lattice)
        self.lattice = Grid(self._src.crs, self._src.transform, self._src.width, self._src.height)
        try:
            self._open(grid)
        except DSen2CRError:
            self._src.close()
            raise

    def _open(self, grid: Grid) -> None:
        """Check what the file declares and set up the (warped) reader."""
        _check_polarisations(self.path, self._src.descriptions)
        kind = np.dtype(self._src.dtypes[0]).kind
        if kind != "f":
            raise DSen2CRError(
                f"{self.path}: S1 is {self._src.dtypes[0]}; expected float dB (VV, VH), e.g. float32 "
                "(integer amplitude or complex data must be calibrated and converted first)"
            )
        if self._src.crs is None:
            if self._src.gcps[0]:  # georeferenced by the geolocation grid only, as a calibrated product before TC
                raise DSen2CRError(
                    f"{self.path}: S1 is in radar geometry (ground control points, no map grid): terrain-correct it "
                    "onto a map grid first (SNAP's Terrain-Correction; Earth Engine's COPERNICUS/S1_GRD is)"
                )
            raise DSen2CRError(f"{self.path}: S1 has no coordinate reference system")
        try:
            s1_bounds = transform_bounds(self._src.crs, grid.crs, *self._src.bounds)
        except Exception as error:  # GDAL/PROJ raise their own types (CPLE_NotSupportedError, CRSError, ...)
            raise DSen2CRError(
                f"{self.path}: S1's CRS cannot be related to the S2 scene's ({' '.join(str(error).split())[:150]})"
            ) from None
        if not all(np.isfinite(s1_bounds)):
            raise DSen2CRError(f"{self.path}: S1's CRS cannot be related to the S2 scene's (no finite bounds)")
        s2_bounds = rasterio.transform.array_bounds(grid.height, grid.width, grid.transform)  # west, south, east, north
        overlap_w = min(s1_bounds[2], s2_bounds[2]) - max(s1_bounds[0], s2_bounds[0])
        overlap_h = min(s1_bounds[3], s2_bounds[3]) - max(s1_bounds[1], s2_bounds[1])
        if overlap_w <= 0 or overlap_h <= 0:
            raise DSen2CRError(f"{self.path}: S1 does not overlap the S2 scene at all")
        #: where the scene's first pixel lies among S1's when S1 lies on the scene's pixel lattice (read as it is,
        #: a window shifted: RTC frames of the scene's UTM zone, S1 exported on its grid); None: warped
        self.offset = grid_offset(self._src, grid)
        self.warped = self.offset is None
        # a file that declares no nodata: 0 is (exports fill S1 outside its swath with it; SNAP's no-data value)
        self.nodata = 0.0 if self._src.nodata is None else float(self._src.nodata)
        sample = self._sample()
        #: the value that marks no data where the pixels are read as they are (:meth:`native`)
        self._native_nodata = self.nodata
        if not self.warped:
            self._reader: rasterio.io.DatasetReaderBase = self._src
        else:
            # the warp takes one nodata value: undeclared, 0 where the sample holds a 0 fill, else NaN (NaN fills)
            undeclared = np.nan if not (sample == 0).any() else 0.0
            src_nodata = self.nodata if self._src.nodata is not None else undeclared
            self._native_nodata = src_nodata  # mosaicked with other frames, then warped (CommonLattice): as the warp
            self._reader = on_grid(
                self._src, grid, Resampling.bilinear, src_nodata=src_nodata, nodata=np.nan, dtype="float32"
            )
        self._check_units(sample)

    def _sample(self) -> np.ndarray:
        """Values (2, n) of a lattice of small windows spread over the file, or of the whole file decimated where
        those hold no valid value."""
        sample = self._lattice_sample()
        if not self._valid(sample).any():
            height, width = min(256, self._src.height), min(256, self._src.width)
            sample = read_decimated(self._src, (height, width)).astype(np.float64).reshape(2, -1)
        return sample

    def _check_units(self, sample: np.ndarray) -> None:
        """Refuse linear-power input unless ``linear`` (then it is converted to dB when read), then check the band
        order (:meth:`_check_band_order`), on ``sample`` (:meth:`_sample`)."""
        finite = sample[self._valid(sample)]
        if finite.size == 0:
            raise DSen2CRError(f"{self.path}: S1 holds no valid values")
        looks_linear = finite.min() >= 0 and np.median(finite) < 1.0
        if looks_linear and not self.linear:
            raise DSen2CRError(
                f"{self.path}: S1 values look like linear power (all >= 0, median {np.median(finite):.3g}), not dB; "
                "convert to dB (10*log10), or pass --s1-linear (s1_linear=True in Python)"
            )
        if self.linear and finite.min() < 0:  # the logarithm of a power below 0 is no value at all
            raise DSen2CRError(
                f"{self.path}: S1 given as linear power (--s1-linear), but it holds negative values (median "
                f"{np.median(finite):.3g}): it looks like dB already; drop --s1-linear (s1_linear=False in Python)"
            )
        if self.linear and not looks_linear:
            log.warning("%s: S1 given as linear power, but the values look like dB already", self.path)
        if not self.linear and (median := float(np.median(finite))) > MAX_MEDIAN_DB:
            raise DSen2CRError(
                f"{self.path}: S1 values do not look like dB (median {median:.4g}; backscatter in dB lies below "
                f"{MAX_MEDIAN_DB:g} nearly everywhere): amplitude or digital numbers must be calibrated to sigma0 and "
                "converted to dB first"
            )
        self._check_band_order(sample)

    def _check_band_order(self, sample: np.ndarray) -> None:
        """Refuse S1 whose band 2 is brighter than band 1 by more than :data:`SWAPPED_MARGIN_DB` (the median over
        the (2, n) ``sample``'s pixels valid in both): VH lies some 5-8 dB below VV on land and water, so such
        bands are swapped and the network would take VH for VV. Bands the files name VV, VH are taken as named,
        with a warning."""
        both = self._valid(sample).all(axis=0)
        if self.linear:
            both &= (sample > 0).all(axis=0)
        if both.sum() < 100:
            return
        db = sample[:, both] if not self.linear else 10 * np.log10(sample[:, both])
        difference = float(np.median(db[0] - db[1]))
        if difference >= -SWAPPED_MARGIN_DB:
            return
        said = (
            f"{self.path}: S1 band 2 is brighter than band 1 (median band 1 - band 2: {difference:.1f} dB; VV lies "
            "some 5-8 dB above VH on land and water)"
        )
        if [polarisation(d) for d in self._src.descriptions] == ["VV", "VH"]:
            log.warning("%s; the file names them VV, VH, so they are taken as named (VV, VH)", said)
            return
        raise DSen2CRError(
            f"{said}: the bands look swapped; give VV first (or name the bands VV, VH to have them taken as they are)"
        )

    def _valid(self, values: np.ndarray) -> np.ndarray:
        """Where values are finite and not the nodata value (the file's, else 0)."""
        return np.isfinite(values) & (values != self.nodata)

    def _lattice_sample(self) -> np.ndarray:
        """Values (2, n) of small windows spread over the file (:func:`dsen2cr.rasters.lattice_windows`)."""
        windows = lattice_windows(self._src.height, self._src.width)
        return np.concatenate([self._src.read(window=w).astype(np.float64).reshape(2, -1) for w in windows], axis=1)

    def read(self, window: Window) -> np.ndarray:
        """(2, h, w) float32 dB of ``window`` of the S2 grid; NaN where S1 has no data."""
        if self.offset is None:  # the warped reader gives NaN for no data
            return self.in_db(read_window(self._reader, window).astype(np.float32))
        return self.in_db(self.native(window, self.offset))

    def native(self, window: Window, offset: tuple[int, int]) -> np.ndarray:
        """(2, h, w) float32 of ``window`` of a grid on this file's pixel lattice whose first pixel is this file's pixel
        ``offset``: its values as they are (power, where linear), NaN where it has no data and beyond its edges."""
        data = read_shifted(self._src, window, offset)
        if not np.isnan(self._native_nodata):
            data[data == self._native_nodata] = np.nan
        return data

    def in_db(self, data: np.ndarray) -> np.ndarray:
        """``data`` of this file (NaN: no data) in dB: infinite values no data (-inf dB, the log of zero power, is not
        the -25 dB clip floor), linear power converted."""
        data[np.isinf(data)] = np.nan
        if self.linear:
            with np.errstate(divide="ignore", invalid="ignore"):
                data = 10 * np.log10(np.where(data > 0, data, np.nan))
        return data

    def close(self) -> None:
        """Close the files."""
        if self._reader is not self._src:
            self._reader.close()
        self._src.close()


class CommonLattice:
    """Frames on one pixel lattice other than the S2 grid's (one CRS and pixel size, origins whole pixels apart: 20 m
    frames of one UTM zone), read as one file made of them would be: each window's source block mosaicked on the
    lattice (the first frame's data, what it lacks from the next, as ``rio merge`` does), then warped onto the window
    at once (bilinear), so that a seam is interpolated across as in the merged file."""

    #: Source pixels read beyond a window's footprint on the lattice: the bilinear kernel's reach and more.
    PAD = 2

    def __init__(self, frames: list[S1File], grid: Grid, offsets: list[tuple[int, int]]) -> None:
        self.frames, self.grid, self.offsets = frames, grid, offsets
        self.crs, self.transform = frames[0].lattice.crs, frames[0].lattice.transform

    @classmethod
    def of(cls, frames: list[S1File], grid: Grid) -> CommonLattice | None:
        """The frames as one, where there are several, none lies on ``grid``'s lattice and they share one; else None
        (each frame is then read on its own)."""
        if len(frames) < 2 or any(not frame.warped for frame in frames):
            return None
        offsets = [grid_offset(frame._src, frames[0].lattice) for frame in frames]
        if any(offset is None for offset in offsets):
            return None
        return cls(frames, grid, [offset for offset in offsets if offset is not None])

    def read(self, window: Window) -> np.ndarray:
        """(2, h, w) float32 dB of ``window`` of the S2 grid; NaN where no frame has data."""
        left, bottom, right, top = transform_bounds(
            self.grid.crs, self.crs, *rasterio.windows.bounds(window, self.grid.transform), densify_pts=21
        )
        inverse = ~self.transform
        cols, rows = zip(*(inverse * (x, y) for x in (left, right) for y in (bottom, top)), strict=True)
        col, row = math.floor(min(cols)) - self.PAD, math.floor(min(rows)) - self.PAD
        block = Window(col, row, math.ceil(max(cols)) + self.PAD - col, math.ceil(max(rows)) + self.PAD - row)
        rest = zip(self.frames[1:], self.offsets[1:], strict=True)
        data = first_data(
            self.frames[0].native(block, self.offsets[0]), [functools.partial(f.native, block, o) for f, o in rest]
        )
        out = np.full((NUM_S1_BANDS, int(window.height), int(window.width)), np.nan, np.float32)
        reproject(
            data,
            out,
            src_transform=rasterio.windows.transform(block, self.transform),
            src_crs=self.crs,
            dst_transform=rasterio.windows.transform(window, self.grid.transform),
            dst_crs=self.grid.crs,
            resampling=Resampling.bilinear,
            src_nodata=np.nan,
            dst_nodata=np.nan,
        )
        return self.frames[0].in_db(out)


def s1_scene_mean(s1: S1Source, grid_height: int, grid_width: int, block: int = 1024) -> tuple[float, float]:
    """Mean VV and VH (dB) of the S1 data under the scene, streamed block by block (the documented fill)."""
    sums, counts = np.zeros(2), np.zeros(2)
    for r in range(0, grid_height, block):
        for c in range(0, grid_width, block):
            db = s1.read(Window(c, r, min(block, grid_width - c), min(block, grid_height - r)))
            for band in range(2):
                valid = np.isfinite(db[band])
                sums[band] += db[band][valid].astype(np.float64).sum()
                counts[band] += valid.sum()
    if counts.min() == 0:
        raise DSen2CRError(f"{s1.path}: S1 has no valid pixels over the S2 scene")
    return float(sums[0] / counts[0]), float(sums[1] / counts[1])
