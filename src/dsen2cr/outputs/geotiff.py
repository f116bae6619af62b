"""Writing GeoTIFFs: tiled, compressed GeoTIFFs of whole arrays, and the Cloud-Optimised GeoTIFF of a scene
written window by window, its compression checked against this GDAL before any work.

Every file is written under a temporary name and renamed when complete (:func:`dsen2cr.outputs.files.atomic_path`).
"""

from __future__ import annotations

import contextlib
import functools
import glob
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.errors import NotGeoreferencedWarning
from rasterio.windows import Window

import dsen2cr.machine as machine
from dsen2cr.choices import COG_COMPRESSION_LEVELS
from dsen2cr.errors import DSen2CRError
from dsen2cr.outputs.cog_stream import COGStream, option, streams
from dsen2cr.outputs.files import atomic_path, raise_write_failure
from dsen2cr.outputs.overviews import OverviewPyramid, average_2x2, level_shapes, mode_2x2, overview_factors

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


#: Creation options of a scene's staging file (``cog_writer``): tiled like ``GTIFF_OPTIONS`` but uncompressed,
#: so that windows not aligned with its blocks cost no decompression and recompression.
STAGING_OPTIONS: dict[str, object] = {k: v for k, v in GTIFF_OPTIONS.items() if k not in ("compress", "predictor")}

#: Creation options of the Cloud-Optimised GeoTIFF of a scene (GDAL's COG driver): deflate with the horizontal
#: predictor, 256 px blocks, overviews, blocks and overviews compressed on all cores (``cog_options``: this process's
#: share of them under torchrun), band statistics.
COG_OPTIONS: dict[str, str | int] = {
    "driver": "COG",
    "compress": "DEFLATE",
    "predictor": "2",
    "blocksize": 256,
    "BIGTIFF": "IF_SAFER",
    "NUM_THREADS": "ALL_CPUS",
    # per-band minimum, maximum, mean and standard deviation of the valid pixels, stored in the file (GDAL >= 3.8)
    # so that viewers stretch it at once; measured: no cost beyond noise on a 4096 px, 13-band copy here
    "STATISTICS": "YES",
}


def cog_options(compression: str = "deflate", level: int | None = None) -> dict[str, str | int]:
    """``COG_OPTIONS`` with ``compression`` (a key of ``COG_COMPRESSION_LEVELS``, horizontal predictor either
    way) at ``level`` (None: GDAL's default, 6 for deflate, 9 for zstd)."""
    check_compression_level(compression, level)
    options = dict(COG_OPTIONS, compress=compression.upper(), NUM_THREADS=machine.gdal_threads())
    if level is not None:
        options["LEVEL"] = str(level)
    _check_gdal_writes(options)
    return options


def check_compression_level(compression: str, level: int | None, *, name: str = "compression level") -> None:
    """Refuse a compression that is not a key of ``COG_COMPRESSION_LEVELS`` or a ``level`` it does not take
    (the error names the setting ``name``, e.g. a command-line option)."""
    if compression not in COG_COMPRESSION_LEVELS:
        raise DSen2CRError(f"compression: expected one of {', '.join(COG_COMPRESSION_LEVELS)}, got {compression!r}")
    levels = COG_COMPRESSION_LEVELS[compression]
    if level is not None and level not in levels:
        raise DSen2CRError(f"{name}: {compression} takes {levels.start} to {levels.stop - 1}, got {level}")


def _check_gdal_writes(options: dict[str, str | int]) -> None:
    """Refuse COG options whose compression this GDAL lacks: it would only warn and write uncompressed."""
    wanted = str(options["compress"])
    got = _probe_compression(tuple(sorted(options.items())))
    if got.upper() != wanted.upper():
        raise DSen2CRError(
            f"compression {wanted.lower()}: this GDAL ({rasterio.__gdal_version__}) cannot write it (the probe came "
            f"out {got.lower()}); use deflate"
        )


@functools.cache
def _probe_compression(options: tuple[tuple[str, str | int], ...]) -> str:
    """The compression GDAL writes with ``options``, tried once per process on a 16x16 image in memory."""
    probe = f"/vsimem/{uuid.uuid4().hex}.tif"
    with warnings.catch_warnings(), rasterio.MemoryFile() as source:
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with source.open(driver="GTiff", width=16, height=16, count=1, dtype="uint16") as dataset:
            dataset.write(np.ones((1, 16, 16), dtype="uint16"))
        try:
            rasterio.shutil.copy(source.name, probe, **dict(options))
            with rasterio.open(probe) as written:
                return str(written.tags(ns="IMAGE_STRUCTURE").get("COMPRESSION", "none"))
        finally:
            if rasterio.shutil.exists(probe):
                rasterio.shutil.delete(probe)


def write_geotiff(
    path: str | Path,
    array: np.ndarray,
    *,
    crs: object,
    transform: object,
    nodata: float | None = None,
    band_names: tuple[str, ...] | list[str] | None = None,
    describe: Callable[[rasterio.io.DatasetWriter], None] | None = None,
) -> Path:
    """Write a (bands, H, W) array to a tiled, compressed GeoTIFF atomically; return the path. ``describe``
    sets more metadata (scales, colour interpretation, tags) on the open dataset before it is published."""
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
        if describe is not None:
            describe(dst)
    return Path(path)


def _block(size: int) -> int:
    """The largest GeoTIFF tile size (a multiple of 16, at most 256) that fits ``size``; 16 at least."""
    return max(16, min(256, size // 16 * 16))


@contextlib.contextmanager
def cog_writer(
    path: str | Path,
    profile: dict,
    options: dict[str, str | int] = COG_OPTIONS,
    *,
    overviews: Literal["gdal", "average", "mode"] = "gdal",
    stream: bool = True,
) -> Iterator[rasterio.io.DatasetWriter]:
    """Yield a dataset to write window by window; on success it becomes a Cloud-Optimised GeoTIFF at ``path``.

    Windows go to a tiled but uncompressed staging file beside ``path``: windows that do not align with its
    blocks would otherwise cost a decompression and a recompression each. With ``overviews`` "average" (an
    image with a nodata value) the overviews are the nodata-aware 2 x 2 means of the level above, with "mode"
    (a class map) its most common classes, made while the windows are written
    (:class:`~dsen2cr.outputs.overviews.OverviewPyramid`), and with ``stream`` (and options it supports:
    :func:`~dsen2cr.outputs.cog_stream.streams`) every level is compressed as its rows complete
    (:class:`~dsen2cr.outputs.cog_stream.COGStream`), so that the end writes only the directories and appends
    the data. Else one GDAL COG copy compresses (``options``: by default deflate, horizontal predictor, 256 px
    blocks, overviews; see :func:`cog_options`) on all cores at the end, making the overviews ("gdal":
    resampled as the options say, cubic by default) unless the pyramid made them. Either way the COG is
    written under a temporary name renamed to ``path``; on failure nothing is left at ``path`` and every
    temporary file is removed.
    """
    with atomic_path(path) as final_tmp:
        staging = final_tmp.with_name(final_tmp.name + ".staging.tif")
        pyramid: OverviewPyramid | None = None
        streamed: COGStream | None = None
        try:
            stream = stream and overviews != "gdal" and streams(options, np.dtype(profile["dtype"]).name)
            # w+: the pyramid reads complete rows back (a streamed COG's stay in memory)
            mode = "w+" if overviews != "gdal" and not stream else "w"
            # streamed: the image's rows stay in memory, the staging file only gives GDAL's tags (left sparse)
            staging_options = dict(STAGING_OPTIONS, **profile, **({"SPARSE_OK": "TRUE"} if stream else {}))
            with rasterio.open(staging, mode, **staging_options) as dataset:
                if overviews == "gdal":
                    yield dataset
                else:
                    factors = overview_factors(dataset.height, dataset.width, int(option(options, "blocksize", 512)))
                    if stream:
                        shapes = level_shapes(dataset.height, dataset.width, factors)
                        streamed = COGStream(
                            final_tmp, shapes, dataset.count, dataset.dtypes[0], profile["nodata"], options,
                            workers=compression_threads(),
                        )  # fmt: skip
                    rows = None if streamed is None else streamed.add
                    reduce = average_2x2 if overviews == "average" else mode_2x2
                    pyramid = OverviewPyramid(
                        dataset, staging, factors, profile["nodata"], rows, reduce, in_memory=streamed is not None
                    )
                    yield cast(rasterio.io.DatasetWriter, _WritesOverviews(dataset, pyramid))
                    pyramid.finish()
            if streamed is not None:
                streamed.write(final_tmp, staging)
            else:
                source = staging if pyramid is None else pyramid.source(staging)
                rasterio.shutil.copy(source, final_tmp, **options)
        except Exception as error:  # the COG would have taken at most what is staged for it, still there now
            staged = sum(file.stat().st_size for file in final_tmp.parent.glob(glob.escape(final_tmp.name) + ".*"))
            raise_write_failure(error, Path(path), room=staged)
            raise
        finally:
            if streamed is not None:
                streamed.remove()
            if pyramid is not None:
                pyramid.remove()
            staging.unlink(missing_ok=True)


def compression_threads() -> int:
    """Threads that compress a streamed COG's tiles: every core of this process's share, at most 16 (GDAL's
    copy used ``ALL_CPUS``)."""
    return min(16, machine.cores())


class _WritesOverviews:
    """A dataset being written whose :meth:`write` also feeds its overview pyramid (every other attribute, read
    or set, is the dataset's)."""

    def __init__(self, dataset: rasterio.io.DatasetWriter, pyramid: OverviewPyramid) -> None:
        self._dataset, self._pyramid = dataset, pyramid

    def write(self, array: np.ndarray, *args: Any, window: Window, **kwargs: Any) -> None:
        """Write ``array`` at ``window`` (as the dataset's ``write``; a streamed COG's pyramid keeps it in memory)
        and compute the overview rows it completes."""
        self._pyramid.write(array, *args, window=window, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._dataset, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_"):
            object.__setattr__(self, name, value)
        else:  # scales, offsets, colorinterp, …: the dataset's properties
            setattr(self._dataset, name, value)
