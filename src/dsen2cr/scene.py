"""Whole-scene cloud removal: tiled, seamless, georeferenced inference with bounded memory.

The scene is cut into ``tile``-pixel windows that overlap by ``overlap`` pixels; each tile keeps only its core
(half the overlap is dropped on every side that borders another tile), so with an overlap of at least twice
the network's receptive-field radius every output pixel equals whole-image inference. Tiles at the scene
border are aligned with it, so the network's zero padding there is the same as for the whole image. Reads
and writes go window by window; the result is written to a temporary name, converted to a Cloud-Optimised
GeoTIFF and renamed at the end.
"""

from __future__ import annotations

import contextlib
import functools
import math
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
import rasterio.shutil
import torch
from rasterio.windows import Window
from tqdm import tqdm

from dsen2cr.backends import Predictor, build_backend
from dsen2cr.errors import DSen2CRError
from dsen2cr.geotiff import GTIFF_OPTIONS, atomic_path, check_output_file
from dsen2cr.masks import DEFAULT_CLOUD_THRESHOLD, cloud_shadow_mask
from dsen2cr.model import DSen2CR, ModelConfig
from dsen2cr.preprocessing import (
    NUM_S1_BANDS,
    NUM_S2_BANDS,
    S2_BANDS,
    S2_CLIP_DN,
    S2_MODEL_SCALE,
    s1_db_to_model,
    s2_dn_to_model,
)
from dsen2cr.sources import S1Source, S2Source

OUTPUT_NODATA = 0


def default_overlap(model: DSen2CR | ModelConfig) -> int:
    """The smallest overlap that makes tiled inference equal whole-image inference."""
    config = model.config if isinstance(model, DSen2CR) else model
    return 2 * config.receptive_radius


@dataclass(frozen=True)
class Tile:
    """A window to run the network on, and the part of it (core) that goes to the output."""

    window: Window
    core: Window

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
    out = []
    for i, start in enumerate(starts):
        core_start = out[-1][3] if out else 0
        core_end = size if i == count - 1 else start + length - half
        out.append((start, length, core_start, core_end))
    return out


def plan_tiles(height: int, width: int, tile: int, overlap: int) -> list[Tile]:
    """Tiles (all of one shape) covering a height x width scene; every pixel belongs to exactly one core."""
    if tile < 16:
        raise ValueError(f"tile: must be at least 16 pixels, got {tile}")
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap: must be in [0, tile), got {overlap} for tile {tile}")
    tiles = []
    for r0, rh, cr0, cr1 in _axis_tiles(height, tile, overlap):
        for c0, cw, cc0, cc1 in _axis_tiles(width, tile, overlap):
            tiles.append(Tile(Window(c0, r0, cw, rh), Window(cc0, cr0, cc1 - cc0, cr1 - cr0)))
    return tiles


#: Working memory of one window, in float32 values per pixel and hidden feature. Measured peaks
#: (benchmarks/window_memory.py): eager fp32 about 5 feature maps (oneDNN reorders included), the compiled
#: backend about 2.5; 6 leaves a margin.
FEATURE_MAPS_PER_WINDOW = 6
#: ``--tile auto`` aims for windows just large enough that the overlap costs at most this factor of compute
#: over a large scene ((tile / (tile - overlap))^2); larger windows gain little, and narrow models run slower
#: per pixel on them (their feature maps no longer fit in the CPU cache).
TARGET_REDUNDANCY = 1.15
#: ``--tile auto`` on CPU uses at most this much of the available memory.
MAX_CPU_MEMORY = 8 * 2**30


def window_bytes(config: ModelConfig, height: int, width: int) -> int:
    """Estimated peak working memory (bytes) of the network on one height x width window."""
    values_per_pixel = FEATURE_MAPS_PER_WINDOW * config.num_features + 2 * (NUM_S2_BANDS + NUM_S1_BANDS)
    return 4 * height * width * values_per_pixel


def memory_budget(device: str | torch.device) -> int:
    """Memory that ``--tile auto`` may fill: half the free memory of a GPU; on CPU half the available memory,
    at most ``MAX_CPU_MEMORY``."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free // 2
    import psutil

    return min(psutil.virtual_memory().available // 2, MAX_CPU_MEMORY)


def choose_tile(config: ModelConfig, *, batch_size: int, memory_bytes: int, overlap: int) -> int:
    """The tile (a multiple of 64) for ``--tile auto``: just large enough for ``TARGET_REDUNDANCY``, smaller
    when a batch of such windows would not fit in ``memory_bytes``, never below the overlap plus 64 pixels."""
    enough = math.ceil(overlap / (1 - TARGET_REDUNDANCY**-0.5))
    fits = math.isqrt(int(memory_bytes / max(batch_size, 1) / window_bytes(config, 1, 1)))
    return max(_round_up_64(overlap + 64), min(_round_up_64(enough), fits // 64 * 64))


def auto_tile(
    config: ModelConfig,
    *,
    device: str | torch.device = "cpu",
    batch_size: int = 1,
    memory_bytes: int | None = None,
    overlap: int | None = None,
) -> int:
    """``--tile auto``: :func:`choose_tile` with the device's :func:`memory_budget` (unless ``memory_bytes``)
    and the exact :func:`default_overlap` (unless ``overlap``)."""
    return choose_tile(
        config,
        batch_size=batch_size,
        memory_bytes=memory_budget(device) if memory_bytes is None else memory_bytes,
        overlap=default_overlap(config) if overlap is None else overlap,
    )


def _round_up_64(pixels: int) -> int:
    """``pixels`` rounded up to a multiple of 64."""
    return -(-pixels // 64) * 64


def torch_predictor(model: DSen2CR, *, device: str | torch.device = "cpu", precision: str = "fp32") -> Predictor:
    """A PyTorch predictor without compilation: eager fp32, or bf16 autocast (see ``dsen2cr.backends``)."""
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision: expected fp32 or bf16, got {precision!r}")
    return build_backend(model, "eager" if precision == "fp32" else "bf16", device)


@dataclass
class SceneReport:
    """What a scene run did."""

    out: Path
    tiles: int
    megapixels: float
    seconds: float
    s1_missing_fraction: float = 0.0
    skipped: int = 0  # tiles whose core holds no valid S2 pixel (not run)


def iter_predictions(
    predictor: Predictor,
    s2: S2Source,
    s1: S1Source | None,
    tiles: list[Tile],
    *,
    batch_size: int,
    s1_fill_db: tuple[float, float],
    on_batch: Callable[[int], None] | None = None,
) -> Iterator[tuple[Tile, np.ndarray, np.ndarray, np.ndarray, int]]:
    """Run ``predictor`` over ``tiles``; yield (tile, prediction in model units, S2 DN, S2 valid mask,
    number of valid S2 pixels without S1) per tile, each cropped to the tile's core.

    Tiles whose core holds no valid S2 pixel (outside the swath, say) are not run: their prediction is zeros,
    and their output is nodata anyway. A reader thread reads and preprocesses the next batch while the
    predictor runs on this one (GDAL and numpy release the GIL); only that thread touches the sources while
    the loop runs.
    """
    batches = [tiles[first : first + batch_size] for first in range(0, len(tiles), batch_size)]
    pad_to = batch_size if len(tiles) > batch_size else len(tiles)

    def read(group: list[Tile]) -> _Batch:
        # rasterio.Env is per thread: without it here, a reader thread that first touches GDAL's block cache
        # would size it by GDAL's default (5 % of RAM) instead of the bound of remove_clouds.
        with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB):
            return _read_batch(s2, s1, group, s1_fill_db)

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="dsen2cr-read") as reader:
        pending = reader.submit(read, batches[0]) if batches else None
        for index, group in enumerate(batches):
            batch = pending.result()
            pending = reader.submit(read, batches[index + 1]) if index + 1 < len(batches) else None
            pred = predictor(*_pad_batch(batch.s2_model, batch.s1_model, pad_to)) if batch.run else None
            row_of = {tile_index: row for row, tile_index in enumerate(batch.run)}
            for i, tile in enumerate(group):
                rows, cols = tile.core_in_tile()
                if pred is not None and i in row_of:
                    core_pred = pred[row_of[i]][:, rows, cols]
                else:
                    core_pred = np.zeros((NUM_S2_BANDS, *batch.valid_cores[i].shape), np.float32)
                yield tile, core_pred, batch.dn_cores[i], batch.valid_cores[i], batch.missing[i]
            if on_batch is not None:
                on_batch(len(group))


@dataclass
class _Batch:
    """One batch as read: per tile the S2 DN and valid mask of its core and the valid pixels without S1;
    the model inputs of the tiles to run (those with valid pixels in their core), and their indices."""

    dn_cores: list[np.ndarray]
    valid_cores: list[np.ndarray]
    missing: list[int]
    run: list[int]
    s2_model: np.ndarray | None
    s1_model: np.ndarray | None


def _read_batch(s2: S2Source, s1: S1Source | None, group: list[Tile], s1_fill_db: tuple[float, float]) -> _Batch:
    """Read and preprocess the windows of one batch (S1 only where the tile is run; its holes are filled
    with ``s1_fill_db``)."""
    s2_dn = [s2.read(t.window) for t in group]
    cores = [t.core_in_tile() for t in group]
    valid = [s2.valid(dn) for dn in s2_dn]
    valid_cores = [v[rows, cols] for v, (rows, cols) in zip(valid, cores, strict=True)]
    run = [i for i, v in enumerate(valid_cores) if v.any()]
    missing = [0] * len(group)
    s2_model = s1_model = None
    if run:
        s2_model = np.stack([s2_dn_to_model(np.nan_to_num(s2_dn[i].astype(np.float32))) for i in run])
    if s1 is not None and run:
        s1_batch = []
        for i in run:
            db = s1.read(group[i].window)
            rows, cols = cores[i]
            missing[i] = int((np.isnan(db).any(axis=0) & valid[i])[rows, cols].sum())
            for band in range(2):
                db[band][np.isnan(db[band])] = s1_fill_db[band]
            s1_batch.append(s1_db_to_model(db))
        s1_model = np.stack(s1_batch)
    dn_cores = [dn[:, rows, cols] for dn, (rows, cols) in zip(s2_dn, cores, strict=True)]
    return _Batch(dn_cores, valid_cores, missing, run, s2_model, s1_model)


def _pad_batch(s2: np.ndarray, s1: np.ndarray | None, size: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Pad a short last batch with zeros to ``size`` so that compiled backends see one shape (outputs beyond
    the real tiles are ignored)."""
    missing = size - s2.shape[0]
    if missing <= 0:
        return s2, s1
    pad = lambda a: np.concatenate([a, np.zeros((missing, *a.shape[1:]), a.dtype)])  # noqa: E731
    return pad(s2), None if s1 is None else pad(s1)


def _scene_s1_mean(s1: S1Source, grid_height: int, grid_width: int, block: int = 1024) -> tuple[float, float]:
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


#: GDAL's block cache for a scene run (MB). GDAL's default is 5 % of RAM, which holds written tiles and makes
#: memory grow with the scene; a fixed cache keeps it flat.
GDAL_CACHE_MB = 128


def _bounded_gdal_cache(function: Callable[..., SceneReport]) -> Callable[..., SceneReport]:
    """Run ``function`` with GDAL's block cache bounded to ``GDAL_CACHE_MB``."""

    @functools.wraps(function)
    def wrapper(*args: object, **kwargs: object) -> SceneReport:
        with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB):
            return function(*args, **kwargs)

    return wrapper


@_bounded_gdal_cache
def remove_clouds(
    predictor: Predictor,
    *,
    include_sar: bool,
    s2_path: str | Path,
    s1_path: str | Path | None,
    out: str | Path,
    tile: int = 256,
    overlap: int,
    batch_size: int = 4,
    resampling: str = "nearest",
    s1_linear: bool = False,
    mask_out: str | Path | None = None,
    cloud_threshold: float = DEFAULT_CLOUD_THRESHOLD,
    preview: str | Path | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> SceneReport:
    """Remove the clouds of one scene and write a uint16 Cloud-Optimised GeoTIFF to ``out``.

    ``predictor`` maps model-unit batches to predictions (see :func:`torch_predictor`); ``include_sar`` says
    whether it needs S1. See the module docstring for tiling; nodata in S2 stays nodata (0) in the output.
    """
    out = Path(out)
    if batch_size < 1:
        raise DSen2CRError(f"--batch-size: must be at least 1, got {batch_size}")
    for path in (out, mask_out, preview):
        if path is not None:
            check_output_file(path, overwrite=overwrite)
    if include_sar and s1_path is None:
        raise DSen2CRError(f"{s2_path}: these weights need SAR input; pass --s1 (VV, VH in dB on or near the S2 grid)")
    s2 = S2Source(s2_path, resampling=resampling)
    s1 = None
    try:
        grid = s2.grid
        if include_sar:
            s1 = S1Source(s1_path, grid, linear=s1_linear)
            s1_fill = _scene_s1_mean(s1, grid.height, grid.width)
        else:
            if s1_path is not None:
                warnings.warn("these weights were trained without SAR: --s1 is ignored", stacklevel=2)
            s1_fill = (0.0, 0.0)
        tiles = plan_tiles(grid.height, grid.width, tile, overlap)
        quicklook = Quicklook(grid.height, grid.width) if preview is not None else None
        start = time.perf_counter()
        bar = _progress_bar(len(tiles), enabled=progress)
        missing = valid_total = skipped = 0
        grid_profile = {"width": grid.width, "height": grid.height, "crs": grid.crs, "transform": grid.transform}
        # The staging file is tiled but uncompressed: tile cores do not align with its blocks, and completing a
        # partly written compressed block costs a decompression and a recompression. The COG copy compresses once.
        uncompressed = {k: v for k, v in GTIFF_OPTIONS.items() if k not in ("compress", "predictor")}
        profile = dict(uncompressed, **grid_profile, count=len(S2_BANDS), dtype="uint16", nodata=OUTPUT_NODATA)
        mask_profile = dict(GTIFF_OPTIONS, **grid_profile, count=1, dtype="int8")
        with atomic_path(out) as final_tmp:
            staging = final_tmp.with_name(final_tmp.name + ".staging.tif")
            try:
                with rasterio.open(staging, "w", **profile) as dst, _optional_mask(mask_out, mask_profile) as mask_dst:
                    for index, name in enumerate(S2_BANDS, start=1):
                        dst.set_band_description(index, name)
                    for t, pred, dn, valid, holes in iter_predictions(
                        predictor, s2, s1, tiles, batch_size=batch_size, s1_fill_db=s1_fill, on_batch=bar.update
                    ):
                        out_dn = _to_output_dn(pred, valid)
                        dst.write(out_dn, window=t.core)
                        if quicklook is not None:
                            quicklook.add(t.core, dn, out_dn)
                        missing += holes
                        valid_total += int(valid.sum())
                        skipped += not valid.any()
                        if mask_dst is not None:
                            mask_dst.write(cloud_shadow_mask(dn, cloud_threshold)[None], window=t.core)
                    if valid_total == 0:
                        raise DSen2CRError(f"{s2_path}: S2 has no valid pixels (all nodata or NaN)")
                rasterio.shutil.copy(
                    staging,
                    final_tmp,
                    driver="COG",
                    compress="DEFLATE",
                    predictor="2",
                    blocksize=256,
                    BIGTIFF="IF_SAFER",
                    NUM_THREADS="ALL_CPUS",  # compress blocks and overviews in parallel
                )
            finally:
                staging.unlink(missing_ok=True)
                bar.close()
        seconds = time.perf_counter() - start
    finally:
        s2.close()
        if s1 is not None:
            s1.close()
    fraction = missing / valid_total if valid_total else 0.0
    if include_sar and fraction > 0:
        print(
            f"warning: {s1_path}: S1 has no data under {100 * fraction:.1f}% of the valid S2 pixels; filled with "
            f"the scene's S1 mean (VV {s1_fill[0]:.1f} dB, VH {s1_fill[1]:.1f} dB)",
            file=sys.stderr,
        )
    if quicklook is not None:
        quicklook.save(preview)
    return SceneReport(out, len(tiles), grid.width * grid.height / 1e6, seconds, fraction, skipped)


def _to_output_dn(pred: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Model units to uint16 DN in [1, 10000] on valid pixels (0 stays reserved for nodata)."""
    dn = np.clip(np.rint(pred * S2_MODEL_SCALE), 1, S2_CLIP_DN[1]).astype(np.uint16)
    dn[:, ~valid] = OUTPUT_NODATA
    return dn


def _optional_mask(path: str | Path | None, profile: dict) -> contextlib.AbstractContextManager:
    """A writer for the cloud/shadow map beside the output (atomic), or a null context."""
    if path is None:
        return contextlib.nullcontext()
    return _AtomicRaster(Path(path), profile)


class _AtomicRaster:
    """Open a raster for writing under a temporary name; rename it on success, delete it on failure."""

    def __init__(self, path: Path, profile: dict) -> None:
        self.path = path
        self.profile = profile
        self._context = atomic_path(path)

    def __enter__(self) -> rasterio.io.DatasetWriter:
        tmp = self._context.__enter__()
        self._dataset = rasterio.open(tmp, "w", **self.profile)
        self._dataset.set_band_description(1, "cloud (1) / shadow (-1) / clear (0)")
        return self._dataset

    def __exit__(self, *exc: object) -> None:
        self._dataset.close()
        self._context.__exit__(*exc)


def _progress_bar(total: int, *, enabled: bool) -> tqdm:
    """A tqdm bar counting tiles (with tiles/s and ETA)."""
    return tqdm(total=total, unit="tile", disable=not enabled, desc="remove-clouds", dynamic_ncols=True)


class Quicklook:
    """Before/after RGB quicklook filled tile by tile (every ``scale``-th pixel), so nothing is read twice."""

    def __init__(self, height: int, width: int, max_size: int = 1024) -> None:
        self.scale = max(1, math.ceil(max(height, width) / max_size))
        shape = (3, math.ceil(height / self.scale), math.ceil(width / self.scale))
        self.before = np.zeros(shape, np.uint16)
        self.after = np.zeros(shape, np.uint16)

    def add(self, core: Window, before_dn: np.ndarray, after_dn: np.ndarray) -> None:
        """Place the sampled pixels of one tile core (13-band DN arrays of the core's size)."""
        from dsen2cr.visualize import RGB_BANDS

        s = self.scale
        r0, c0 = -core.row_off % s, -core.col_off % s  # first rows/columns on the sampling grid
        rows = slice((core.row_off + r0) // s, (core.row_off + r0) // s + len(range(r0, core.height, s)))
        cols = slice((core.col_off + c0) // s, (core.col_off + c0) // s + len(range(c0, core.width, s)))
        self.before[:, rows, cols] = before_dn[RGB_BANDS, r0::s, c0::s]
        self.after[:, rows, cols] = after_dn[RGB_BANDS, r0::s, c0::s]

    def save(self, path: str | Path) -> Path:
        """Write input (left) and output (right) side by side as PNG."""
        from dsen2cr.visualize import rgb_image, save_png, side_by_side

        return save_png(path, side_by_side([rgb_image(self.before), rgb_image(self.after)]))
