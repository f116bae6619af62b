"""Reading the inputs of a scene, window by window: a 13-band S2 GeoTIFF or an L1C product folder (one JP2 per
band, resampled onto the 10 m grid on the fly), and an S1 GeoTIFF warped onto the S2 grid on the fly. Nothing
is read whole (docs/design.md §4.4)."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_bounds
from rasterio.windows import Window

from dsen2cr.errors import DSen2CRError
from dsen2cr.geotiff import open_raster, read_window
from dsen2cr.preprocessing import NUM_S1_BANDS, NUM_S2_BANDS, S2_BANDS

log = logging.getLogger(__name__)

RESAMPLING = {"nearest": Resampling.nearest, "bilinear": Resampling.bilinear}


@dataclass(frozen=True)
class Grid:
    """A raster grid: CRS, transform and size."""

    crs: rasterio.crs.CRS
    transform: rasterio.Affine
    width: int
    height: int


class S2Source:
    """13-band S2 L1C DN on a 10 m grid, read window by window.

    ``path`` is a 13-band GeoTIFF (or any raster GDAL reads), an ``IMG_DATA`` folder with one JP2 per band, or
    a ``.SAFE`` product folder. Bands at 20 m and 60 m are resampled onto the 10 m grid of B02.
    """

    def __init__(self, path: str | Path, *, resampling: str = "nearest") -> None:
        self.path = Path(path)
        self._datasets: list[rasterio.io.DatasetReaderBase] = []
        if self.path.is_dir():
            self._open_band_files(_find_band_files(self.path), RESAMPLING[resampling])
        else:
            dataset = open_raster(self.path, what="S2")
            if dataset.count != NUM_S2_BANDS:
                count = dataset.count
                dataset.close()
                raise DSen2CRError(f"{self.path}: S2 has {count} bands, expected {NUM_S2_BANDS} (B1 ... B12, B8A)")
            self._datasets = [dataset]
            self.grid = Grid(dataset.crs, dataset.transform, dataset.width, dataset.height)
            self.nodata = dataset.nodata
            _check_band_names(self.path, dataset.descriptions)
        try:
            self._check_declared()
            self._check_units()
        except DSen2CRError:
            self.close()
            raise

    def _check_declared(self) -> None:
        """What the file says about itself: a CRS, a real geotransform, a numeric data type."""
        if self.grid.crs is None:
            raise DSen2CRError(f"{self.path}: S2 has no coordinate reference system")
        if self.grid.transform == rasterio.Affine.identity():
            raise DSen2CRError(
                f"{self.path}: S2 has no georeferencing (identity geotransform); the output would have none either"
            )
        kind = np.dtype(self._datasets[0].dtypes[0]).kind
        if kind not in "uif":
            raise DSen2CRError(f"{self.path}: S2 is {self._datasets[0].dtypes[0]}; expected DN (uint16)")

    def _check_units(self) -> None:
        """Refuse S2 that holds reflectance (0-1) instead of digital numbers (reflectance x 10000)."""
        dataset = self._datasets[0]
        if np.dtype(dataset.dtypes[0]).kind != "f":
            return
        sample = self.read_decimated(256).astype(np.float64)
        finite = sample[np.isfinite(sample) & (sample != 0)]
        if finite.size and np.percentile(finite, 99) <= 2.0:
            raise DSen2CRError(
                f"{self.path}: S2 values look like reflectance (99th percentile {np.percentile(finite, 99):.3g}); "
                "expected L1C digital numbers (reflectance x 10000), e.g. uint16"
            )

    def _open_band_files(self, files: list[Path], resampling: Resampling) -> None:
        """Open one file per band; warp the coarser ones onto the B02 grid."""
        reference = open_raster(files[S2_BANDS.index("B2")], what="S2 band B02")
        self.grid = Grid(reference.crs, reference.transform, reference.width, reference.height)
        self.nodata = 0
        for band_file in files:
            src = open_raster(band_file, what="S2 band")
            if src.crs is None:
                raise DSen2CRError(f"{band_file}: S2 band has no coordinate reference system")
            same = (src.crs, src.width, src.height, src.transform)
            if same == (self.grid.crs, self.grid.width, self.grid.height, self.grid.transform):
                self._datasets.append(src)
            else:
                self._datasets.append(
                    WarpedVRT(
                        src,
                        crs=self.grid.crs,
                        transform=self.grid.transform,
                        width=self.grid.width,
                        height=self.grid.height,
                        resampling=resampling,
                    )
                )
        reference.close()

    def read(self, window: Window) -> np.ndarray:
        """(13, h, w) DN of ``window``."""
        if len(self._datasets) == 1:
            return read_window(self._datasets[0], window)
        return np.concatenate([read_window(d, window) for d in self._datasets], axis=0)

    def valid(self, dn: np.ndarray) -> np.ndarray:
        """Bool (h, w): pixels that are not nodata (the file's nodata value, or 0, or NaN in every band)."""
        nodata = 0 if self.nodata is None else self.nodata
        missing = dn == nodata
        if dn.dtype.kind == "f":
            missing |= np.isnan(dn)
        return ~np.all(missing, axis=0)

    def read_decimated(self, max_size: int) -> np.ndarray:
        """The whole scene at reduced resolution (longest side at most ``max_size``), for quick checks."""
        scale = max(1, int(np.ceil(max(self.grid.width, self.grid.height) / max_size)))
        shape = (max(1, self.grid.height // scale), max(1, self.grid.width // scale))
        return np.concatenate([d.read(out_shape=(d.count, *shape)) for d in self._datasets], axis=0)

    def close(self) -> None:
        """Close the files."""
        for dataset in self._datasets:
            dataset.close()


def _band_code(name: str) -> str:
    """B1 -> B01, B8A -> B8A (the two-digit codes of product file names)."""
    return name[0] + name[1:].zfill(2)


def _check_band_names(path: Path, descriptions: tuple[str | None, ...]) -> None:
    """Refuse a 13-band file whose band descriptions name S2 bands in another order than B1 ... B12 (with B8A
    after B8): its bands would be fed to the network in the wrong places. Files without names pass."""
    names = [(d or "").strip().upper() for d in descriptions]
    if not all(re.fullmatch(r"B\d{1,2}A?", n) for n in names):
        return
    found = [_band_code(n) for n in names]
    expected = [_band_code(b) for b in S2_BANDS]
    if found != expected:
        raise DSen2CRError(
            f"{path}: band descriptions say {' '.join(found)}; expected the L1C order {' '.join(expected)}"
        )


def _find_band_files(folder: Path) -> list[Path]:
    """The 13 band files of an L1C product (``.SAFE``) or ``IMG_DATA`` folder, in the paper's band order."""
    candidates = [p for p in folder.rglob("*.jp2") if "IMG_DATA" in p.parts or p.parent == folder]
    candidates += [p for p in folder.glob("*.tif")]
    files = []
    for band in S2_BANDS:
        code = _band_code(band)
        matches = sorted(p for p in candidates if re.search(rf"_{code}(_10m|_20m|_60m)?\.(jp2|tif)$", p.name))
        if not matches:
            raise DSen2CRError(f"{folder}: no file for band {code} (expected *_{code}.jp2 in IMG_DATA)")
        if len({m.name for m in matches}) > 1:
            raise DSen2CRError(f"{folder}: several files for band {code}: {', '.join(m.name for m in matches)}")
        files.append(matches[0])
    return files


class S1Source:
    """S1 VV and VH in dB on the S2 grid, warped on the fly when the grids differ.

    Pixels outside the S1 footprint or marked nodata read as NaN.
    """

    def __init__(self, path: str | Path, grid: Grid, *, linear: bool = False) -> None:
        self.path = Path(path)
        self.linear = linear
        self._src = open_raster(self.path, bands=NUM_S1_BANDS, what="S1 (VV, VH)")
        try:
            self._open(grid)
        except DSen2CRError:
            self._src.close()
            raise

    def _open(self, grid: Grid) -> None:
        """Check what the file declares and set up the (warped) reader."""
        kind = np.dtype(self._src.dtypes[0]).kind
        if kind != "f":
            raise DSen2CRError(
                f"{self.path}: S1 is {self._src.dtypes[0]}; expected float dB (VV, VH), e.g. float32 "
                "(integer amplitude or complex data must be calibrated and converted first)"
            )
        if self._src.crs is None:
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
        same_grid = (self._src.crs, self._src.transform, self._src.width, self._src.height) == (
            grid.crs,
            grid.transform,
            grid.width,
            grid.height,
        )
        self.warped = not same_grid
        if same_grid:
            self._reader: rasterio.io.DatasetReaderBase = self._src
        else:
            self._reader = WarpedVRT(
                self._src,
                crs=grid.crs,
                transform=grid.transform,
                width=grid.width,
                height=grid.height,
                resampling=Resampling.bilinear,
                src_nodata=self._src.nodata if self._src.nodata is not None else np.nan,
                nodata=np.nan,
                dtype="float32",
            )
        self._check_units()

    def _check_units(self) -> None:
        """Refuse linear-power input unless ``linear`` (then it is converted to dB when read)."""
        finite = self._valid_values(self._lattice_sample())
        if finite.size == 0:  # data only between the lattice windows: look at the whole file, decimated
            height, width = min(256, self._src.height), min(256, self._src.width)
            finite = self._valid_values(self._src.read(out_shape=(2, height, width)).astype(np.float64))
        if finite.size == 0:
            raise DSen2CRError(f"{self.path}: S1 holds no valid values")
        looks_linear = finite.min() >= 0 and np.median(finite) < 1.0
        if looks_linear and not self.linear:
            raise DSen2CRError(
                f"{self.path}: S1 values look like linear power (all >= 0, median {np.median(finite):.3g}), not dB; "
                "convert to dB (10*log10), or pass --s1-linear (s1_linear=True in Python)"
            )
        if self.linear and not looks_linear:
            log.warning("%s: S1 given as linear power, but the values look like dB already", self.path)

    def _valid_values(self, values: np.ndarray) -> np.ndarray:
        """The finite values that are not the file's nodata value, flattened."""
        finite = values[np.isfinite(values)]
        return finite if self._src.nodata is None else finite[finite != self._src.nodata]

    def _lattice_sample(self, grid: int = 4, size: int = 64) -> np.ndarray:
        """Values of a grid x grid lattice of small windows spread over the file: a few blocks are decoded,
        where a decimated read of the whole file would decode all of them."""
        height, width = self._src.height, self._src.width
        size_y, size_x = min(size, height), min(size, width)
        windows = {
            (round(i * (height - size_y) / max(grid - 1, 1)), round(j * (width - size_x) / max(grid - 1, 1)))
            for i in range(grid)
            for j in range(grid)
        }
        return np.concatenate(
            [self._src.read(window=Window(c, r, size_x, size_y)).astype(np.float64).ravel() for r, c in windows]
        )

    def read(self, window: Window) -> np.ndarray:
        """(2, h, w) float32 dB of ``window``; NaN where S1 has no data."""
        data = read_window(self._reader, window).astype(np.float32)
        nodata = self._reader.nodata
        if nodata is not None and not np.isnan(nodata):
            data[data == nodata] = np.nan
        data[np.isinf(data)] = np.nan  # -inf dB (log of zero power) is no data, not the -25 dB clip floor
        if self.linear:
            with np.errstate(divide="ignore", invalid="ignore"):
                data = 10 * np.log10(np.where(data > 0, data, np.nan))
        return data

    def close(self) -> None:
        """Close the files."""
        if self._reader is not self._src:
            self._reader.close()
        self._src.close()


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
