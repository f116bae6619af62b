"""Cloud/shadow maps of whole scenes, window by window but independent of the tiling, and ``--keep-clear``:
clear pixels kept bit for bit, cloudy ones predicted, a linear blend in between (docs/design.md §4.6).

Masks (``--mask``):

- ``paper``: the paper's detector (:mod:`dsen2cr.cloud_detection`) with the shadow thresholds' statistics taken once
  over the scene's valid pixels, and every window read with the detector's radius around it, so the map of a
  window equals the map of the whole scene there;
- ``product``: the product's own classification, resampled by nearest neighbour onto the 10 m grid: Level-2A
  SCL (8, 9 cloud medium/high probability and 10 thin cirrus are cloud, 3 is shadow) or Level-1C (baseline
  04.00+) ``MSK_CLASSI_B00`` (opaque clouds or cirrus are cloud; it has no shadow class), or an Earth Engine
  export's cloud bands (``EE``: QA60's opaque and cirrus bits, MSK_CLASSI_OPAQUE and _CIRRUS; no shadow class).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.warp import transform_bounds
from rasterio.windows import Window
from scipy import ndimage

from dsen2cr.cloud_detection import (
    CLEAR,
    CLOUD,
    DEFAULT_CLOUD_THRESHOLD,
    MASK_RADIUS,
    S2CLOUDLESS_RADIUS,
    SHADOW,
    SHADOW_STATS_BANDS,
    ShadowStats,
    ShadowStatsAccumulator,
    computed_mask,
)
from dsen2cr.errors import DSen2CRError
from dsen2cr.inputs.readers import Grid, S2Source, on_grid
from dsen2cr.rasters import gdal_block_cache, open_raster, read_window
from dsen2cr.settings import MASK_KINDS
from dsen2cr.signed_urls import displayed

log = logging.getLogger(__name__)

#: SCL classes (Level-2A scene classification) that count as cloud, and as shadow.
SCL_CLOUD = (8, 9, 10)
SCL_SHADOW = (3,)
#: The values of Earth Engine's cloud bands that are cloud: QA60's bit 10 (opaque), bit 11 (cirrus) or both, and the
#: MSK_CLASSI bands' 1 (any other value, 0 or an export's nodata, is not).
EE_CLOUD_VALUES = (1024, 2048, 3072, 1)


class ThreadSources:
    """Handles on one scene for each thread that reads it (GDAL datasets are not thread-safe): :meth:`get` opens
    the calling thread's on its first call (``S2Source.reopen``); :meth:`close` closes them all."""

    def __init__(self, s2: S2Source) -> None:
        self.s2 = s2
        self.opened: list[S2Source] = []
        self._lock = threading.Lock()
        self._per_thread = threading.local()

    def get(self) -> S2Source:
        """This thread's handles."""
        source: S2Source | None = getattr(self._per_thread, "s2", None)
        if source is None:
            with self._lock:
                source = self.s2.reopen()
                self.opened.append(source)
            self._per_thread.s2 = source
        return source

    def close(self) -> None:
        """Close every thread's handles (once none reads)."""
        for source in self.opened:
            source.close()


@dataclass(frozen=True)
class ReadWindow:
    """The DN (13, h, w) of a window of the scene as already read (by a scene run's reader), so that the map of a
    window inside it needs no read of its own."""

    window: Window
    dn: np.ndarray

    def part(self, inner: Window) -> np.ndarray | None:
        """The DN of ``inner`` (a view), or None when ``inner`` is not wholly inside :attr:`window`."""
        r0, c0 = inner.row_off - self.window.row_off, inner.col_off - self.window.col_off
        if min(r0, c0) < 0 or r0 + inner.height > self.window.height or c0 + inner.width > self.window.width:
            return None
        return self.dn[:, r0 : r0 + inner.height, c0 : c0 + inner.width]


class SceneMasker:
    """The cloud/shadow map (int8: 1 cloud, -1 shadow, 0 clear) of any window of an S2 scene, made from the DN
    the caller already read where they cover what the map needs, else read through its own ``S2Source`` (which
    it closes).

    :meth:`window` may run on several threads at once: each reads through file handles of its own. The
    paper mask's scene statistics (of the window ``statistics_of`` instead, where given: a part's own pixels) are
    gathered on a thread of their own from the start (its blocks read on ``stats_threads``), so that the network
    runs meanwhile; the first window waits for them (and raises their error, a bad read, if any)."""

    def __init__(
        self,
        s2: S2Source,
        kind: str = "paper",
        threshold: float = DEFAULT_CLOUD_THRESHOLD,
        stats_threads: int = 1,
        *,
        statistics_of: Window | None = None,
    ) -> None:
        if kind not in MASK_KINDS:
            raise DSen2CRError(f"mask: expected one of {MASK_KINDS}, got {kind!r}")
        self.s2 = s2
        self.kind = kind
        self.threshold = threshold
        self._product: rasterio.io.DatasetReaderBase | None = None
        self.product_kind: str | None = None  # a product mask's (SCL, MSK_CLASSI, EE), once opened
        self._source: rasterio.io.DatasetReaderBase | None = None
        self._lock = threading.Lock()  # the product mask's handle
        self._sources = ThreadSources(s2)  # each thread's handles, for the windows the caller did not read
        self._stop = threading.Event()
        self._stats: Future[ShadowStats | None] | None = None
        self._stats_thread: ThreadPoolExecutor | None = None
        if kind == "paper":
            self._stats_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dsen2cr-mask-stats")
            self._stats = self._stats_thread.submit(
                _scene_shadow_stats_on_thread, s2, statistics_of, self._stop, stats_threads
            )
        elif kind == "product":
            self._open_product_mask()
        else:
            computed_mask(kind, np.zeros((13, 1, 1), np.uint16))  # fails now, not mid-scene, without the extra
            if s2.level == "L2A":
                log.warning(
                    "%s: --mask s2cloudless was trained on Level-1C data with its cirrus band B10, which Level-2A "
                    "lacks (filled with a clear-sky value): its map sees no cirrus and carries the surface-reflectance "
                    "shift",
                    s2.name,
                )

    def _open_product_mask(self) -> None:
        """The product's SCL or MSK_CLASSI file, warped by nearest neighbour onto the 10 m grid."""
        masks = self.s2.product.masks
        self.product_kind = next((kind for kind in ("SCL", "MSK_CLASSI", "EE") if kind in masks), None)
        if self.product_kind is None:
            raise DSen2CRError(
                f"{self.s2.name}: --mask product needs the product's own mask (Level-2A SCL, or Level-1C "
                "QI_DATA/MSK_CLASSI_B00 of baseline 04.00+; an Earth Engine export's SCL, QA60 or MSK_CLASSI bands), "
                "which this input does not have; use --mask paper"
            )
        self._source = open_raster(masks[self.product_kind], what=f"{self.product_kind} mask")
        covered = covered_fraction(self._source, self.s2.grid)
        if covered < MIN_MASK_COVERAGE:
            self._source.close()
            raise DSen2CRError(
                f"{displayed(masks[self.product_kind])}: the product's {self.product_kind} mask covers "
                f"{100 * covered:.1f}% of "
                f"the scene ({self.s2.name}); a product mask must cover all of it (or use --mask paper)"
            )
        self._product = on_grid(self._source, self.s2.grid, Resampling.nearest)

    @property
    def stats(self) -> ShadowStats | None:
        """The paper mask's shadow statistics of the scene (waits for them; None for other masks)."""
        return None if self._stats is None else self._stats.result()

    def statistics_pending(self) -> bool:
        """Whether the paper mask's statistics pass still runs (the next map would wait for it)."""
        return self._stats is not None and not self._stats.done()

    def window(self, window: Window, read: ReadWindow | None = None) -> np.ndarray:
        """The map of ``window`` (within the scene), exactly as of the whole scene: the detector runs on the
        window grown by its radius (clipped to the scene), taken from ``read`` when it holds all of that (a
        scene run's windows overlap by more than the radius), else read."""
        if self.kind == "product":
            assert self._product is not None
            with self._lock:
                classes = read_window(self._product, window)
            return product_mask(classes, self.product_kind or "")
        stats = self.stats
        grid = self.s2.grid
        radius = MASK_RADIUS if self.kind == "paper" else S2CLOUDLESS_RADIUS
        outer = _grow(window, radius, grid.height, grid.width)
        dn = None if read is None else read.part(outer)
        if dn is None:
            dn = self._sources.get().read(outer)
        mask = computed_mask(self.kind, np.nan_to_num(dn), self.threshold, stats)
        r0, c0 = window.row_off - outer.row_off, window.col_off - outer.col_off
        return mask[r0 : r0 + window.height, c0 : c0 + window.width]

    def check_flagged(self, flagged: int) -> None:
        """Warn where a scene's map made from an Earth Engine export's cloud bands flagged no pixel (``flagged``
        cloud or shadow pixels of the whole run): Earth Engine masks those bands out for some years, and an export
        holds zeros there, which say no cloud."""
        if flagged or self.product_kind != "EE":
            return
        log.warning(
            "%s: the map of its Earth Engine cloud bands (QA60, MSK_CLASSI) flags no cloud anywhere in the scene: "
            "Earth Engine leaves QA60 empty for scenes sensed from February 2022 to February 2024 and MSK_CLASSI for "
            "those before February 2024; if the scene has clouds, run it with --mask paper (or s2cloudless)",
            self.s2.name,
        )

    def close(self) -> None:
        """Stop the statistics pass (waiting for its read in progress) and close every file."""
        self._stop.set()
        if self._stats_thread is not None:
            self._stats_thread.shutdown(wait=True)
        self._sources.close()
        self.s2.close()
        for dataset in (self._product, self._source):
            if dataset is not None:
                dataset.close()


#: A product mask must cover this share of the scene (all of it, but for rounding at the edges).
MIN_MASK_COVERAGE = 0.999


def covered_fraction(source: rasterio.io.DatasetReaderBase, grid: Grid) -> float:
    """The share of ``grid``'s area that ``source``'s footprint covers (its bounds taken onto the grid's CRS;
    0 when the CRSs cannot be related)."""
    try:
        west, south, east, north = transform_bounds(source.crs, grid.crs, *source.bounds)
    except Exception:  # GDAL/PROJ raise their own types for CRSs that cannot be related
        return 0.0
    g_west, g_south, g_east, g_north = rasterio.transform.array_bounds(grid.height, grid.width, grid.transform)
    width = max(0.0, min(east, g_east) - max(west, g_west))
    height = max(0.0, min(north, g_north) - max(south, g_south))
    area = (g_east - g_west) * (g_north - g_south)
    return float(width * height / area) if area > 0 and np.isfinite(width * height) else 0.0


def product_mask(classes: np.ndarray, kind: str) -> np.ndarray:
    """The int8 cloud/shadow map of a product mask read as (bands, h, w): SCL classes, MSK_CLASSI bands (opaque
    clouds, cirrus, snow), or Earth Engine's cloud bands (``EE``: those of QA60, MSK_CLASSI_OPAQUE and _CIRRUS an
    export holds, a pixel cloud where any says so: :data:`EE_CLOUD_VALUES`)."""
    result = np.full(classes.shape[1:], CLEAR, np.int8)
    if kind == "SCL":
        result[np.isin(classes[0], SCL_SHADOW)] = SHADOW
        result[np.isin(classes[0], SCL_CLOUD)] = CLOUD
    elif kind == "EE":
        result[np.isin(classes, EE_CLOUD_VALUES).any(axis=0)] = CLOUD
    else:
        result[(classes[0] > 0) | (classes[1] > 0 if classes.shape[0] > 1 else False)] = CLOUD
    return result


def _scene_shadow_stats_on_thread(
    s2: S2Source, area: Window | None, stop: threading.Event, threads: int
) -> ShadowStats | None:
    """:func:`_scene_shadow_stats` on a thread of its own (GDAL's block cache bounded as on the others)."""
    with gdal_block_cache():
        return _scene_shadow_stats(s2, area=area, stop=stop, threads=threads)


def _scene_shadow_stats(
    s2: S2Source,
    block: int = 1024,
    *,
    area: Window | None = None,
    stop: threading.Event | None = None,
    threads: int = 1,
) -> ShadowStats | None:
    """The shadow thresholds' statistics over the valid pixels of the scene, or of its window ``area``, in blocks
    from its corner (one streamed pass; ``stop``, when set,
    ends it before the next read, returning None). Each block reads :data:`SHADOW_STATS_BANDS` only (a
    product's three band files of thirteen) where one of them has data on every pixel; a pixel where none has
    may hold data in another band (a swath's edge differs between bands), so such a block is read whole.

    With ``threads`` > 1 the blocks are read on that many threads, each through handles of its own; the blocks'
    sums are added in the scene's order all the same, so the statistics are those of one thread bit for bit."""
    grid = s2.grid
    area = area or Window(0, 0, grid.width, grid.height)
    (top, bottom), (left, right) = area.toranges()
    windows = [
        Window(col, row, min(block, right - col), min(block, bottom - row))
        for row in range(top, bottom, block)
        for col in range(left, right, block)
    ]
    if threads <= 1:
        return _merged(_block_stats(s2, window, stop) for window in windows)
    sources = ThreadSources(s2)

    def block_stats(window: Window) -> ShadowStatsAccumulator | None:
        with gdal_block_cache():  # rasterio.Env is per thread
            return _block_stats(sources.get(), window, stop)

    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="dsen2cr-mask-stats-blocks")
    try:
        return _merged(pool.map(block_stats, windows))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # no read runs once the files close
        sources.close()


def _block_stats(s2: S2Source, window: Window, stop: threading.Event | None) -> ShadowStatsAccumulator | None:
    """The statistics of one block (None when ``stop`` is set)."""
    if stop is not None and stop.is_set():
        return None
    accumulator = ShadowStatsAccumulator()
    dn = s2.read_bands(window, SHADOW_STATS_BANDS)
    valid = s2.valid(dn)
    if valid.all():
        accumulator.add_bands(np.nan_to_num(dn), valid)
    else:
        dn = s2.read(window)
        accumulator.add(np.nan_to_num(dn), s2.valid(dn))
    return accumulator


def _merged(blocks: Iterable[ShadowStatsAccumulator | None]) -> ShadowStats | None:
    """The statistics of the blocks taken together, in their order (None if a block's pass was stopped)."""
    total = ShadowStatsAccumulator()
    for accumulator in blocks:
        if accumulator is None:
            return None
        total.merge(accumulator)
    return total.stats()


def _grow(window: Window, margin: int, height: int, width: int) -> Window:
    """``window`` grown by ``margin`` pixels on every side, clipped to the scene."""
    r0, c0 = max(0, window.row_off - margin), max(0, window.col_off - margin)
    r1 = min(height, window.row_off + window.height + margin)
    c1 = min(width, window.col_off + window.width + margin)
    return Window(c0, r0, c1 - c0, r1 - r0)


def keep_clear_weights(
    masker: SceneMasker, window: Window, feather: int, read: ReadWindow | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The prediction's weight (float64, h x w) for ``window``: 0 on clear pixels farther than ``feather`` px
    from any cloud or shadow pixel, 1 on cloud/shadow pixels farther than ``feather`` px from any clear pixel,
    linear in the (Euclidean) distance in between: w = (feather - s) / (2 feather), clipped to [0, 1], with s
    the distance to the nearest cloud/shadow pixel on clear pixels and minus the distance to the nearest clear
    pixel on cloud/shadow ones (feather 0: w is 1 on cloud/shadow, 0 on clear). Distances are computed on the
    window grown by ``feather + 1`` px, so they are those of the whole scene (its map made from ``read`` where
    that covers it: :meth:`SceneMasker.window`). Returns the weights and the window's cloud/shadow map."""
    grid = masker.s2.grid
    outer = _grow(window, feather + 1, grid.height, grid.width)
    r0, c0 = window.row_off - outer.row_off, window.col_off - outer.col_off
    core = (slice(r0, r0 + window.height), slice(c0, c0 + window.width))
    mask = masker.window(outer, read)
    cloudy = mask != CLEAR
    if not feather:
        return cloudy[core].astype(np.float64), mask[core]
    signed = np.where(cloudy, -_distance_to(~cloudy), _distance_to(cloudy))
    return np.clip((feather - signed[core]) / (2 * feather), 0.0, 1.0), mask[core]


def _distance_to(target: np.ndarray) -> np.ndarray:
    """Euclidean distance of every pixel to the nearest ``True`` pixel (0 on them; inf when there is none)."""
    if not target.any():
        return np.full(target.shape, np.inf)
    return ndimage.distance_transform_edt(~target)


def blend(input_dn: np.ndarray, predicted_dn: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``input`` where the weight (h x w, or 1 x h x w) is 0 (bit for bit), ``predicted`` where it is 1, the
    rounded linear blend in between (so every value lies between the two), computed in float64 on those
    pixels only (a feathered edge is a small part of a window)."""
    weights = weights.reshape(weights.shape[-2:])
    out = predicted_dn.copy()
    kept = weights == 0
    out[:, kept] = input_dn[:, kept]
    edge = (weights > 0) & (weights < 1)
    if edge.any():
        share = weights[edge]
        mixed = share * predicted_dn[:, edge].astype(np.float64) + (1 - share) * input_dn[:, edge].astype(np.float64)
        out[:, edge] = np.rint(mixed)
    return out
