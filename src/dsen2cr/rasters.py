"""Reading rasters with rasterio: validated opens (local files, GDAL ``/vsi…`` paths, VRT XML) and windowed
reads whose every error names the file and what is wrong with it (``DSen2CRError``), GDAL's bounded block
cache for a scene run, and the ground a raster covers (:class:`Footprint`)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.errors import RasterioIOError
from rasterio.transform import Affine, array_bounds
from rasterio.warp import transform
from rasterio.windows import Window

import dsen2cr.machine as machine
from dsen2cr.bucket_access import bucket_hint
from dsen2cr.choices import GDAL_CACHE_BYTES
from dsen2cr.errors import DSen2CRError
from dsen2cr.gdal_messages import last_thread_error, log_position
from dsen2cr.outputs.files import check_input_file
from dsen2cr.signed_urls import displayed, read_failure

_block_cache_bytes = GDAL_CACHE_BYTES  # the bound in force (GDAL's cache is one per process)


def set_block_cache_bytes(cache_bytes: int) -> None:
    """Bound GDAL's block cache to ``cache_bytes`` in every :func:`gdal_block_cache` entered from now on."""
    global _block_cache_bytes
    _block_cache_bytes = cache_bytes


#: Time bounds of GDAL's remote reads (``/vsicurl/``, ``/vsis3/``: STAC assets): a connection that does not
#: open in 20 s or a request that takes over 60 s fails and is retried 3 times, 2 s apart; then the read fails,
#: naming the URL. An option set in the environment is the user's and is left alone.
GDAL_HTTP_OPTIONS = {
    "GDAL_HTTP_CONNECTTIMEOUT": "20",
    "GDAL_HTTP_TIMEOUT": "60",
    "GDAL_HTTP_MAX_RETRY": "3",
    "GDAL_HTTP_RETRY_DELAY": "2",
}


def gdal_block_cache() -> rasterio.Env:
    """A rasterio environment with GDAL's block cache bounded as :func:`set_block_cache_bytes` last said (by
    default ``GDAL_CACHE_BYTES``), its multi-threaded block decoding and overview computation on all cores (this
    process's share under torchrun, :func:`dsen2cr.machine.gdal_threads`), and
    remote reads bounded in time (``GDAL_HTTP_OPTIONS``, unless set in the environment). Per thread: enter it in
    every thread that reads or writes."""
    http = {key: value for key, value in GDAL_HTTP_OPTIONS.items() if key not in os.environ}
    return rasterio.Env(GDAL_CACHEMAX=_block_cache_bytes, GDAL_NUM_THREADS=machine.gdal_threads(), **http)


def open_raster(path: str | Path, *, bands: int | None = None, what: str = "raster") -> rasterio.DatasetReader:
    """Open a raster for reading (a local file, a GDAL ``/vsi…`` path or VRT XML), checking that it exists, is
    readable and has ``bands`` bands."""
    text = str(path)
    virtual = text.startswith(("/vsi", "<VRTDataset"))  # GDAL virtual file systems and VRTs built in memory
    name = displayed(text)
    if not virtual:
        path = check_input_file(path, what)
    try:
        dataset = rasterio.open(text if virtual else path)
    except RasterioIOError as error:
        reason = " ".join(str(error).split()).replace(text, name)  # GDAL's words name the path: a signed one's token
        raise DSen2CRError(f"{name}: cannot read {what} ({reason}){bucket_hint(text)}") from None
    if bands is not None and dataset.count != bands:
        count = dataset.count
        dataset.close()
        raise DSen2CRError(f"{name}: {what} has {count} bands, expected {bands}")
    return dataset


def decimated_shape(height: int, width: int, max_size: int) -> tuple[int, int]:
    """The shape of a raster read decimated by a whole factor, the least that brings its longer side to at most
    ``max_size`` (each side at least 1)."""
    scale = max(1, math.ceil(max(height, width) / max_size))
    return max(1, height // scale), max(1, width // scale)


def read_window(
    dataset: rasterio.DatasetReader,
    window: Window | None = None,
    indexes: list[int] | None = None,
    *,
    out_shape: tuple[int, ...] | None = None,
) -> np.ndarray:
    """Read the bands ``indexes`` (1-based; None: all) of an open raster in ``window`` (decimated to ``out_shape``
    when given: GDAL's nearest pixel, from overviews where the file has them), naming the file when the read fails
    (e.g. truncated)."""
    logged = log_position()  # what GDAL's own threads say while this read runs is about it
    try:
        return dataset.read(indexes, window=window, out_shape=out_shape)
    except Exception as error:  # rasterio raises several types for damaged files
        reason, thread = gdal_reason(error), last_thread_error(since=logged)
        if thread is not None and thread not in reason:  # what GDAL's own thread met first: the server's answer
            reason = f"{thread}, then {reason}"
        raise DSen2CRError(read_failure(dataset.name, reason)) from None


def gdal_reason(error: BaseException) -> str:
    """What a failed GDAL call says, on one line: rasterio raises ``Read failed. See previous exception for details.``
    from GDAL's own message (the server's ``response_code=403``, the codec's complaint), which is the reason a user
    needs; each message of the chain once (none that another holds), innermost last."""
    messages: list[str] = []
    seen: BaseException | None = error
    while seen is not None and len(messages) < 5:
        text = " ".join(str(seen).split())
        if text and text not in messages:
            messages.append(text)
        seen = seen.__cause__ or seen.__context__
    said = [m for m in messages if "See previous exception" not in m] or messages
    return "; ".join(m for m in said if not any(m != other and m in other for other in said))


#: The most bytes :func:`read_decimated` holds of a file at once (a strip of its blocks).
STRIP_BYTES = 256 * 2**20


def read_decimated(dataset: rasterio.DatasetReader, shape: tuple[int, int]) -> np.ndarray:
    """Every band of an open raster decimated to ``shape`` (rows, columns): the nearest pixel of each cell, as GDAL
    picks it (source index ``floor((i + 0.5) * size / n)``). GDAL reads it from the file's overviews where it has
    them; a GeoTIFF without them is read here in strips of its blocks, each decoded once and only the rows wanted
    kept (GDAL's own decimated read decodes each block once per band when the file is larger than its block cache:
    9x slower, ``python -m benchmarks.decimated_read``)."""
    height, width = shape
    if dataset.driver != "GTiff" or dataset.overviews(1) or (height, width) == (dataset.height, dataset.width):
        return read_window(dataset, None, out_shape=(dataset.count, height, width))
    rows = np.floor((np.arange(height) + 0.5) * (dataset.height / height)).astype(np.int64)
    cols = np.floor((np.arange(width) + 0.5) * (dataset.width / width)).astype(np.int64)
    row_bytes = dataset.width * dataset.count * np.dtype(dataset.dtypes[0]).itemsize
    strip = max(1, min(dataset.block_shapes[0][0], STRIP_BYTES // row_bytes))  # a file of one strip: in parts
    out = np.empty((dataset.count, height, width), dtype=dataset.dtypes[0])
    for start in range(0, dataset.height, strip):
        wanted = np.nonzero((rows >= start) & (rows < start + strip))[0]
        if wanted.size:
            window = Window(0, start, dataset.width, min(strip, dataset.height - start))
            out[:, wanted, :] = read_window(dataset, window)[:, rows[wanted] - start][:, :, cols]
    return out


def lattice_windows(height: int, width: int, grid: int = 4, size: int = 64) -> list[Window]:
    """A grid x grid lattice of windows of at most ``size`` px spread evenly over a raster (corners included): a
    sample of a few blocks, where a decimated read of the whole raster would decode all of them."""
    size_y, size_x = min(size, height), min(size, width)
    corners = {
        (round(i * (height - size_y) / max(grid - 1, 1)), round(j * (width - size_x) / max(grid - 1, 1)))
        for i in range(grid)
        for j in range(grid)
    }
    return [Window(col, row, size_x, size_y) for row, col in sorted(corners)]


def utm_epsg(crs: CRS, grid_transform: Affine, width: int, height: int) -> int:
    """The EPSG code of the WGS 84 UTM zone (326NN north of the equator, 327NN south) of the centre of a grid of
    ``width`` x ``height`` pixels: the zone of 6 degrees of longitude it lies in."""
    x, y = grid_transform * (width / 2, height / 2)
    (lon,), (lat,) = transform(crs, "EPSG:4326", [x], [y])
    zone = min(60, max(1, math.floor((lon + 180) / 6) + 1))
    return (32600 if lat >= 0 else 32700) + zone


def into_utm(crs: CRS, grid_transform: Affine, width: int, height: int) -> str:
    """How to reproject a grid to 10 m in the UTM zone of its centre (:func:`utm_epsg`), with rasterio's CLI or
    GDAL's."""
    epsg = f"EPSG:{utm_epsg(crs, grid_transform, width, height)}"
    return (
        f"reproject it to 10 m in the UTM zone of its centre first (rio warp IN OUT --dst-crs {epsg} --res 10, or "
        f"gdalwarp -t_srs {epsg} -tr 10 10 IN OUT)"
    )


#: The Earth's mean radius (m), for distances on the ground between nearby points (0.3 % of the ellipsoid's at most).
EARTH_RADIUS_M = 6371008.8


def ground_pixel_size(crs: CRS, grid_transform: Affine, width: int, height: int) -> tuple[float, float] | None:
    """The width and height (m) on the ground of the pixel at the centre of a grid: what its CRS's units say, but for
    a projection that stretches (Web Mercator's 10 m span 10 x cos(latitude) m), the distance its corners lie apart;
    None for a CRS that cannot be related to longitude and latitude (an engineering CRS)."""
    col, row = width // 2, height // 2
    xs, ys = zip(*(grid_transform * point for point in ((col, row), (col + 1, row), (col, row + 1))), strict=True)
    try:
        lons, lats = transform(crs, "EPSG:4326", list(xs), list(ys))
    except Exception:  # PROJ finds no operation (GDAL's error classes, several): the ground is unknown
        return None
    points = [(math.radians(lon), math.radians(lat)) for lon, lat in zip(lons, lats, strict=True)]

    def apart(a: tuple[float, float], b: tuple[float, float]) -> float:
        """Haversine distance (m) of two (longitude, latitude) points in radians."""
        h = math.sin((b[1] - a[1]) / 2) ** 2 + math.cos(a[1]) * math.cos(b[1]) * math.sin((b[0] - a[0]) / 2) ** 2
        return 2 * EARTH_RADIUS_M * math.asin(math.sqrt(h))

    return apart(points[0], points[1]), apart(points[0], points[2])


@dataclass(frozen=True)
class Footprint:
    """The ground a raster covers: its CRS (as text: comparable, hashable) and its bounds in it (left, bottom,
    right, top)."""

    crs: str
    bounds: tuple[float, float, float, float]

    @classmethod
    def of(cls, crs: CRS | None, transform: Affine, width: int, height: int) -> Footprint:
        """The footprint of a ``width`` x ``height`` px grid."""
        west, south, east, north = array_bounds(height, width, transform)
        bounds = (min(west, east), min(south, north), max(west, east), max(south, north))
        return cls(crs.to_string() if crs is not None else "", bounds)

    def overlaps(self, other: Footprint, samples: int = 32) -> bool:
        """Whether the two share ground of positive area: on one CRS by their bounds (edges that touch do not
        count); on two (tiles of neighbouring UTM zones), :func:`lattice_overlap` with a ``samples`` x ``samples``
        lattice (never a false alarm; a sliver narrower than 1/``samples`` of a side is missed). Without a CRS,
        False."""
        first, second = np.array([self.bounds]), np.array([other.bounds])
        if self.crs == other.crs:
            return bool(overlapping(first, second).any())
        if not self.crs or not other.crs:
            return False
        return bool(lattice_overlap(first, self.crs, second, other.crs, samples)[0, 0])


def overlapping(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Which of the ``(n, 4)`` bounds ``first`` share ground of positive area with which of the ``(m, 4)`` bounds
    ``second`` (one CRS): an ``(n, m)`` boolean array (edges that touch do not overlap)."""
    a, b = first[:, None, :], second[None, :, :]
    return (a[..., 0] < b[..., 2]) & (b[..., 0] < a[..., 2]) & (a[..., 1] < b[..., 3]) & (b[..., 1] < a[..., 3])


def lattice_overlap(
    first: np.ndarray, first_crs: str, second: np.ndarray, second_crs: str, samples: int = 1
) -> np.ndarray:
    """``(n, m)``: whether each of the ``(n, 4)`` bounds ``first`` (on ``first_crs``) and each of the ``(m, 4)``
    bounds ``second`` (on ``second_crs``) share ground, as far as a point of either's ``samples`` x ``samples``
    lattice lies inside the other (:func:`lattice_inside`, both ways): boxes turned onto another CRS would overlap
    their neighbours, points do not."""
    return np.asarray(
        lattice_inside(first, first_crs, second, second_crs, samples)
        | lattice_inside(second, second_crs, first, first_crs, samples).T
    )


def lattice_inside(
    first: np.ndarray, first_crs: str, second: np.ndarray, second_crs: str, samples: int = 1
) -> np.ndarray:
    """``(n, m)``: whether a point of a ``samples`` x ``samples`` lattice over each of the ``(n, 4)`` bounds
    ``first`` (its cells' centres; ``samples`` 1: its centre), taken from ``first_crs`` onto ``second_crs``, lies
    strictly inside each of the ``(m, 4)`` bounds ``second``."""
    steps = (np.arange(samples) + 0.5) / samples
    xs = first[:, 0:1] + (first[:, 2:3] - first[:, 0:1]) * steps  # (n, samples)
    ys = first[:, 1:2] + (first[:, 3:4] - first[:, 1:2]) * steps
    xs, ys = np.repeat(xs, samples, axis=1), np.tile(ys, (1, samples))  # every x with every y
    moved_x, moved_y = transform(first_crs, second_crs, xs.ravel(), ys.ravel())
    x = np.asarray(moved_x).reshape(len(first), -1, 1)
    y = np.asarray(moved_y).reshape(len(first), -1, 1)
    inside = (second[:, 0] < x) & (x < second[:, 2]) & (second[:, 1] < y) & (y < second[:, 3])  # (n, points, m)
    return np.asarray(inside.any(axis=1))
