"""Removing the clouds of one scene: plan the windows, run them, write the Cloud-Optimised GeoTIFF (and the
optional cloud/shadow map and quicklook) under temporary names, rename at the end (docs/design.md §4.4)."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from dsen2cr.auto import auto_tile, resolve_batch_size
from dsen2cr.errors import DSen2CRError
from dsen2cr.files import check_output_file
from dsen2cr.geotiff import atomic_raster, cog_options, cog_writer, gdal_block_cache
from dsen2cr.masks import DEFAULT_CLOUD_THRESHOLD
from dsen2cr.predictor import Predictor
from dsen2cr.preprocessing import S2_BANDS, S2_CLIP_DN, S2_MODEL_SCALE
from dsen2cr.scene.batches import BackgroundWriter, iter_predictions
from dsen2cr.scene.masking import DEFAULT_FEATHER, SceneMasker, blend, keep_clear_weights
from dsen2cr.scene.readers import S1Source, S2Source, s1_scene_mean
from dsen2cr.scene.tiles import Tile, default_overlap, plan_tiles
from dsen2cr.visualize import Quicklook

log = logging.getLogger(__name__)

OUTPUT_NODATA = 0
#: ``--feather`` at most (pixels): beyond a few hundred metres a blend is no longer a seam.
MAX_FEATHER = 64


@dataclass
class SceneReport:
    """What a scene run did."""

    out: Path
    tiles: int
    megapixels: float
    seconds: float
    s1_missing_fraction: float = 0.0
    skipped: int = 0  # tiles whose core holds no valid S2 pixel (not run)


def remove_clouds(
    predictor: Predictor,
    *,
    s2_path: str | Path,
    s1_path: str | Path | None = None,
    out: str | Path,
    tile: int | None = None,
    overlap: int | None = None,
    batch_size: int | None = None,
    resampling: str = "nearest",
    s1_linear: bool = False,
    s2_offset: int | None = None,
    mask_out: str | Path | None = None,
    cloud_threshold: float = DEFAULT_CLOUD_THRESHOLD,
    preview: str | Path | None = None,
    overwrite: bool = False,
    progress: bool = True,
    mask: str = "paper",
    keep_clear: bool = False,
    feather: int | None = None,
    compression: str = "deflate",
    compression_level: int | None = None,
    defer_outputs: Callable[[contextlib.ExitStack], None] | None = None,
) -> SceneReport:
    """Remove the clouds of one scene and write a uint16 Cloud-Optimised GeoTIFF to ``out``: the input's bands
    (13 for L1C, 12 for L2A), as offset-free reflectance x 10000, tagged with the processing level and the
    offsets removed (``s2_offset``: the offset of a GeoTIFF exported from a baseline 04.00+ product).

    ``mask`` (``paper`` or ``product``, see :mod:`dsen2cr.scene.masking`) drives ``mask_out``, the preview's
    outline and ``keep_clear``: the input kept bit for bit on clear pixels farther than ``feather`` px from
    any cloud or shadow, the prediction on cloud/shadow farther than ``feather`` px from clear, a linear blend
    in between.

    ``compression`` (``deflate`` or ``zstd``) and ``compression_level`` (None: GDAL's default) choose the COG's
    lossless compression (:func:`dsen2cr.geotiff.cog_options`).

    ``predictor`` comes from :func:`dsen2cr.predictor.load_predictor`; it says whether S1 is needed. ``tile``,
    ``overlap`` and ``batch_size`` default to what ``remove-clouds`` picks automatically for the predictor's
    device (:mod:`dsen2cr.auto`; the overlap that makes tiling exact). Nodata in S2 stays nodata (0).

    ``defer_outputs``, if given, receives the outputs still open once every tile is written (an ``ExitStack``:
    closing it makes the COG and renames the outputs into place; leaving it with an exception removes them)
    instead of their being completed before this returns, so that a caller can compress one scene while the
    next one runs (:func:`dsen2cr.scene.jobs.run_scene_jobs`); the report's seconds then leave that step out.
    """
    cog = cog_options(compression, compression_level)  # checked before any work
    with gdal_block_cache():
        return _remove_clouds(
            predictor,
            s2_path=s2_path,
            s1_path=s1_path,
            out=Path(out),
            tile=tile,
            overlap=default_overlap(predictor.config) if overlap is None else overlap,
            batch_size=resolve_batch_size("auto" if batch_size is None else batch_size, predictor.device),
            resampling=resampling,
            s1_linear=s1_linear,
            s2_offset=s2_offset,
            mask_out=mask_out,
            cloud_threshold=cloud_threshold,
            preview=preview,
            overwrite=overwrite,
            progress=progress,
            mask=mask,
            keep_clear=keep_clear,
            feather=DEFAULT_FEATHER if feather is None else feather,
            cog=cog,
            defer_outputs=defer_outputs,
        )


def _remove_clouds(
    predictor: Predictor,
    *,
    s2_path: str | Path,
    s1_path: str | Path | None,
    out: Path,
    tile: int | None,
    overlap: int,
    batch_size: int,
    resampling: str,
    s1_linear: bool,
    s2_offset: int | None,
    mask_out: str | Path | None,
    cloud_threshold: float,
    preview: str | Path | None,
    overwrite: bool,
    progress: bool,
    mask: str,
    keep_clear: bool,
    feather: int,
    cog: dict[str, str | int],
    defer_outputs: Callable[[contextlib.ExitStack], None] | None,
) -> SceneReport:
    """:func:`remove_clouds` with its settings resolved, under a bounded GDAL cache."""
    if not 0 <= feather <= MAX_FEATHER:
        raise DSen2CRError(f"feather: must be in [0, {MAX_FEATHER}] pixels, got {feather}")
    include_sar = predictor.include_sar
    for path in (out, mask_out, preview):
        if path is not None:
            check_output_file(path, overwrite=overwrite)
    if include_sar and s1_path is None:
        raise DSen2CRError(
            f"{s2_path}: these weights need SAR input; pass --s1 (s1_path in Python): VV, VH in dB on or near "
            "the S2 grid"
        )
    if tile is None:
        tile = auto_tile(predictor.config, device=predictor.device, batch_size=batch_size, overlap=overlap)
    s2 = S2Source(s2_path, resampling=resampling, offset=s2_offset)
    s1 = None
    masker = None
    try:
        if keep_clear and s2.dtype not in ("uint8", "uint16"):
            raise DSen2CRError(
                f"{s2.name}: --keep-clear keeps input pixels bit for bit, but S2 is {s2.dtype} and the output "
                "is uint16; convert the input to uint16 DN first"
            )
        if keep_clear or mask_out is not None or preview is not None or mask != "paper":
            # its own file handles: the batch loop's reader thread owns ``s2`` while the loop runs
            masker = SceneMasker(S2Source(s2_path, resampling=resampling, offset=s2_offset), mask, cloud_threshold)
        grid = s2.grid
        if include_sar:
            s1 = S1Source(s1_path, grid, linear=s1_linear)  # type: ignore[arg-type]  # checked above
            s1_fill = s1_scene_mean(s1, grid.height, grid.width)
        else:
            if s1_path is not None:
                log.warning("these weights were trained without SAR: the S1 input is ignored")
            s1_fill = (0.0, 0.0)
        tiles = plan_tiles(grid.height, grid.width, tile, overlap)
        quicklook = Quicklook(grid.height, grid.width) if preview is not None else None
        start = time.perf_counter()
        bar = _progress_bar(len(tiles), enabled=progress)
        grid_profile = {"width": grid.width, "height": grid.height, "crs": grid.crs, "transform": grid.transform}
        profile = dict(grid_profile, count=len(s2.bands), dtype="uint16", nodata=OUTPUT_NODATA)
        written = [S2_BANDS.index(band) for band in s2.bands]  # the input's bands: never a made-up B10
        totals = {"missing": 0, "valid": 0, "skipped": 0}

        def write_tile(tile: Tile, pred: np.ndarray, dn: np.ndarray, valid: np.ndarray, holes: int) -> None:
            """Convert one tile's prediction and write it (runs on the writer thread, which alone touches the
            output files, the masker and the quicklook while the loop runs)."""
            out_dn = _to_output_dn(pred, valid)
            core_mask = None
            if keep_clear and masker is not None:
                weights, core_mask = keep_clear_weights(masker, tile.core, feather)
                out_dn = blend(dn, out_dn, weights[None])
                out_dn[:, ~valid] = OUTPUT_NODATA
            elif masker is not None:
                core_mask = masker.window(tile.core)
            dst.write(out_dn[written], window=tile.core)
            if quicklook is not None:
                quicklook.add(tile.core, dn, out_dn, core_mask)
            totals["missing"] += holes
            totals["valid"] += int(valid.sum())
            totals["skipped"] += not valid.any()
            if mask_dst is not None and core_mask is not None:
                mask_dst.write(core_mask[None], window=tile.core)

        try:
            with contextlib.ExitStack() as outputs:
                if quicklook is not None and preview is not None:
                    outputs.push(_save_on_success(quicklook, preview))  # runs last: once the COG is in place
                # left in reverse order: the COG is made first; should that fail, the map is removed
                mask_dst = outputs.enter_context(_optional_mask(mask_out, dict(grid_profile)))
                dst = outputs.enter_context(cog_writer(out, profile, cog))
                for index, name in enumerate(s2.bands, start=1):
                    dst.set_band_description(index, name)
                dst.update_tags(**output_tags(s2))
                predictions = iter_predictions(
                    predictor, s2, s1, tiles, batch_size=batch_size, s1_fill_db=s1_fill, on_batch=bar.update
                )
                # closed explicitly: its reader thread must have stopped before the sources close below, also
                # when an error or a signal leaves the loop (else a read of a closed file crashes the process)
                with BackgroundWriter(depth=2 * batch_size) as writer, contextlib.closing(predictions):
                    for result in predictions:
                        writer.submit(write_tile, *result)
                if totals["valid"] == 0:
                    raise DSen2CRError(f"{s2_path}: S2 has no valid pixels (all nodata or NaN)")
                written_outputs = outputs.pop_all()  # every tile written: completed below, or by the caller
        finally:
            bar.close()
        seconds = time.perf_counter() - start
    finally:
        s2.close()
        if s1 is not None:
            s1.close()
        if masker is not None:
            masker.close()
    missing, skipped = totals["missing"], totals["skipped"]
    fraction = missing / totals["valid"] if totals["valid"] else 0.0
    if include_sar and fraction > 0:
        log.warning(
            "%s: S1 has no data under %.1f%% of the valid S2 pixels; filled with the scene's S1 mean "
            "(VV %.1f dB, VH %.1f dB)",
            s1_path,
            100 * fraction,
            *s1_fill,
        )
    if defer_outputs is None:
        written_outputs.close()
        seconds = time.perf_counter() - start
    else:
        defer_outputs(written_outputs)
    return SceneReport(out, len(tiles), grid.width * grid.height / 1e6, seconds, fraction, skipped)


def output_tags(s2: S2Source) -> dict[str, str]:
    """Metadata of an output: what its DN mean, so that no one applies an offset twice."""
    product = s2.product
    offsets = ",".join(f"{band}:{offset}" for band, offset in zip(product.bands, product.offsets, strict=True))
    return {
        "DSEN2CR_RADIOMETRY": "reflectance x 10000, no offset; 0 = nodata",
        "DSEN2CR_PROCESSING_LEVEL": product.level,
        "DSEN2CR_OFFSET_REMOVED": offsets if any(product.offsets) else "none",
        "DSEN2CR_OFFSET_SOURCE": product.offset_from,
        "DSEN2CR_PROCESSING_BASELINE": product.baseline or "unknown",
    }


def _to_output_dn(pred: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Model units to uint16 DN in [1, 10000] on valid pixels (0 stays reserved for nodata)."""
    scaled = np.multiply(pred, np.float32(S2_MODEL_SCALE))  # one temporary, rounded and clipped in place
    np.clip(np.rint(scaled, out=scaled), 1, S2_CLIP_DN[1], out=scaled)
    dn = scaled.astype(np.uint16)
    dn[:, ~valid] = OUTPUT_NODATA
    return dn


def _save_on_success(quicklook: Quicklook, path: str | Path) -> Callable[..., bool]:
    """An exit callback that saves the quicklook when the block it guards succeeded."""

    def save(exc_type: type[BaseException] | None, *exc: object) -> bool:
        if exc_type is None:
            quicklook.save(path)
        return False  # never swallow the block's error

    return save


@contextlib.contextmanager
def _optional_mask(path: str | Path | None, grid_profile: dict):
    """A writer for the cloud/shadow map (int8, atomic), or None."""
    if path is None:
        yield None
        return
    with atomic_raster(path, dict(grid_profile, count=1, dtype="int8")) as dataset:
        dataset.set_band_description(1, "cloud (1) / shadow (-1) / clear (0)")
        yield dataset


def _progress_bar(total: int, *, enabled: bool) -> tqdm:
    """A tqdm bar counting tiles (with tiles/s and ETA)."""
    return tqdm(total=total, unit="tile", disable=not enabled, desc="remove-clouds", dynamic_ncols=True)
