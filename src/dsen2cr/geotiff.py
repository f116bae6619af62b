"""GeoTIFF reading and writing with rasterio: validated opens, windowed reads, atomic writes.

Every error names the file and what is wrong with it (``DSen2CRError``).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import rasterio
from rasterio.errors import RasterioIOError
from rasterio.windows import Window

from dsen2cr.errors import DSen2CRError

#: Creation options of every GeoTIFF the project writes: tiled, compressed, BigTIFF when needed.
GTIFF_OPTIONS: dict[str, object] = {
    "driver": "GTiff",
    "tiled": True,
    "blockxsize": 256,
    "blockysize": 256,
    "compress": "deflate",
    "predictor": 2,
    "bigtiff": "if_safer",
}


def open_raster(path: str | Path, *, bands: int | None = None, what: str = "raster") -> rasterio.DatasetReader:
    """Open a raster for reading, checking that it exists, is readable and has ``bands`` bands."""
    path = Path(path)
    if path.is_dir():
        raise DSen2CRError(f"{path}: is a directory, expected a {what} file")
    if not path.exists():
        raise DSen2CRError(f"{path}: {what} file not found")
    try:
        dataset = rasterio.open(path)
    except RasterioIOError as error:
        reason = " ".join(str(error).split())
        raise DSen2CRError(f"{path}: cannot read {what} ({reason})") from None
    if bands is not None and dataset.count != bands:
        count = dataset.count
        dataset.close()
        raise DSen2CRError(f"{path}: {what} has {count} bands, expected {bands}")
    return dataset


def read_window(dataset: rasterio.DatasetReader, window: Window | None = None) -> np.ndarray:
    """Read all bands of an open raster in ``window``, naming the file when the read fails (e.g. truncated)."""
    try:
        return dataset.read(window=window)
    except Exception as error:  # rasterio raises several types for damaged files
        reason = " ".join(str(error).split())
        raise DSen2CRError(f"{dataset.name}: cannot read pixels, the file may be truncated ({reason})") from None


def check_output_file(path: str | Path, *, overwrite: bool) -> Path:
    """Fail early unless ``path`` can be written: its folder exists and is writable, and it does not exist
    yet (or ``overwrite``)."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise DSen2CRError(f"{path}: exists; pass --overwrite to replace it")
    _check_folder(path)
    return path


def _check_folder(path: Path) -> None:
    """The folder of an output file must exist and be writable."""
    folder = path.parent
    if not folder.is_dir():
        raise DSen2CRError(f"{path}: output folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise DSen2CRError(f"{path}: output folder {folder} is not writable")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` when the block succeeds, else delete it.

    A reader never sees a half-written file at ``path``, and a failed or killed write leaves ``path`` as it was.
    """
    path = Path(path)
    _check_folder(path)
    handle, tmp_name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(handle)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the permissions of a plain open()
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _umask() -> int:
    """The process's file-creation mask."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_geotiff(
    path: str | Path,
    array: np.ndarray,
    *,
    crs: object,
    transform: object,
    nodata: float | None = None,
    band_names: tuple[str, ...] | list[str] | None = None,
) -> Path:
    """Write a (bands, H, W) array to a tiled, compressed GeoTIFF atomically; return the path."""
    if array.ndim != 3:
        raise ValueError(f"array: expected shape (bands, H, W), got {array.shape}")
    count, height, width = array.shape
    profile = dict(GTIFF_OPTIONS, count=count, height=height, width=width, dtype=array.dtype, crs=crs)
    profile.update(transform=transform, nodata=nodata)
    if array.dtype.kind == "f":
        profile["predictor"] = 3
    if height < 256 or width < 256:  # a single strip-free tile per small image would be mostly padding
        profile.update(blockxsize=_block(width), blockysize=_block(height))
    with atomic_path(path) as tmp, rasterio.open(tmp, "w", **profile) as dst:
        dst.write(array)
        for index, name in enumerate(band_names or (), start=1):
            dst.set_band_description(index, name)
    return Path(path)


def _block(size: int) -> int:
    """The largest GeoTIFF tile size (a multiple of 16, at most 256) that fits ``size``; 16 at least."""
    return max(16, min(256, size // 16 * 16))
