"""Removing the clouds of one scene: plan the windows, run them, write the Cloud-Optimised GeoTIFF (and the
optional cloud/shadow map and quicklook) under temporary names, rename at the end (docs/design.md §4.4)."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rasterio.windows import Window
from tqdm import tqdm

from dsen2cr.auto import plan_scene_run
from dsen2cr.errors import DSen2CRError, HalfPrecisionOverflowError
from dsen2cr.inputs import S2Product, local_inputs, resolve_s2
from dsen2cr.inputs.area import area_grid, area_tags, area_window
from dsen2cr.inputs.fetch import signed_for_now
from dsen2cr.inputs.provenance import s1_time_tags
from dsen2cr.inputs.readers import scene_grid
from dsen2cr.onnx_runtime import OnnxPredictor
from dsen2cr.outputs.finisher import FINISH_THREAD, completes_in_background
from dsen2cr.predictor import Predictor
from dsen2cr.preprocessing import NUM_S2_BANDS
from dsen2cr.rasters import gdal_block_cache, set_block_cache_bytes
from dsen2cr.said_warnings import warnings_said
from dsen2cr.scene.batches import BackgroundWriter, iter_predictions, write_in_order
from dsen2cr.scene.checks import check_job, check_settings_fit, job_outputs
from dsen2cr.scene.describe import input_tags, output_tags, scene_tags, warnings_tag
from dsen2cr.scene.journal import SceneJournal, network_channels, open_scene_journal
from dsen2cr.scene.sources import SceneInputs, open_scene_inputs
from dsen2cr.scene.stac_item import write_on_success
from dsen2cr.scene.tile_writer import TileWriter
from dsen2cr.scene.tiles import Tile, default_overlap, plan_area_tiles
from dsen2cr.settings import SceneJob as SceneJob  # re-exported: the job is what remove_clouds takes
from dsen2cr.settings import ScenePlan, SceneSettings, scene_bounds

log = logging.getLogger(__name__)

#: A callback that takes a scene's outputs once every tile is written (see :func:`remove_clouds`).
DeferOutputs = Callable[[contextlib.ExitStack], None]


#: Said when S1 misses much of a scene: a scene often lies across two frames of one pass, of which one was given.
FRAMES_HINT = (
    "; where a scene lies across frames of one S1 pass, give them joined with + (frame1.tif+frame2.tif), as dsen2cr "
    "pair joins them"
)
FRAMES_HINT_FRACTION = 0.05


@dataclass
class SceneReport:
    """What a scene run did."""

    out: Path
    tiles: int
    megapixels: float
    seconds: float
    s1_missing_fraction: float = 0.0
    skipped: int = 0  # tiles whose core holds no valid S2 pixel (not run)
    resumed: int = 0  # tiles a stopped run predicted (--resume), taken from its journal
    mask_percent: tuple[float, float] | None = None  # the map's cloud and shadow shares of the valid pixels, if made
    warnings: int = 0  # said while the scene ran (its outputs' DSEN2CR_WARNINGS)


def remove_clouds(
    predictor: Predictor,
    job: SceneJob,
    plan: ScenePlan | SceneSettings | None = None,
    *,
    s2_product: S2Product | None = None,
    defer_outputs: DeferOutputs | None = None,
) -> SceneReport:
    """Remove the clouds of ``job``'s scene and write a uint16 Cloud-Optimised GeoTIFF to ``job.out``: the
    input's bands (13 for L1C, 12 for L2A), as offset-free reflectance x 10000, tagged with the processing level
    and the offsets removed; nodata in S2 stays nodata (0).

    ``plan`` is a run's :class:`~dsen2cr.settings.ScenePlan` (from :func:`dsen2cr.auto.plan_scene_run`), or the
    :class:`~dsen2cr.settings.SceneSettings` to plan for ``predictor`` (None: the defaults). Its mask kind drives
    ``job.mask_out``, the preview's outline and ``keep_clear`` (the input kept bit for bit on clear pixels
    farther than ``feather`` px from any cloud or shadow, the prediction on cloud/shadow farther than
    ``feather`` px from clear, a linear blend in between).

    ``s2_product``: the job's S2 input already resolved (a run resolves each input once). ``defer_outputs``,
    if given, receives the outputs still open once every tile is written (an ``ExitStack``: closing it makes
    the COG and renames the outputs into place; leaving it with an exception removes them) instead of their
    being completed before this returns, so that a caller can compress one scene while the next one runs
    (:func:`dsen2cr.scene.jobs.run_scene_jobs`); the report's seconds then leave that step out.

    A 16-bit precision that ``--precision auto`` chose and that overflows on a batch after the first is dropped
    (:class:`~dsen2cr.errors.HalfPrecisionOverflowError`): the scene runs again from the start in the float32
    arithmetic auto falls back to (TF32 on a GPU), which its outputs then record, as do later scenes'.
    """
    if not isinstance(plan, ScenePlan):
        settings = plan or SceneSettings()
        check_settings_fit(predictor, settings)
        if settings.uncertainty_parts and job.uncertainty_out is None:
            raise DSen2CRError("uncertainty_parts: needs the job's uncertainty_out, the sigma file that holds them")
        onnx = isinstance(predictor.predict, OnnxPredictor)
        plan = plan_scene_run(settings, predictor.config, device=predictor.device, onnx=onnx)
    with warnings_said(skip_threads=FINISH_THREAD) as said:  # recorded on the outputs, read later without the console
        product = signed_for_now(s2_product) if s2_product else resolve_s2(job.s2, offset=plan.settings.s2_offset)
        check_job(predictor, job, plan.settings, product)
        area = area_window(scene_grid(product), scene_bounds(job, plan.settings), job.s2)
        try:
            return _remove_scene(predictor, job, plan, product, area, defer_outputs, said)
        except HalfPrecisionOverflowError as overflow:  # auto chose fp16 or bf16: what it wrote is gone with the error
            failed = predictor.precision
            overflow.fall_back()
            log.warning(
                "%s: %s overflowed on a batch after the first (NaN, infinite or absurdly large values): running the "
                "scene again from the start in %s, what --precision auto falls back to (--precision tf32 avoids this)",
                job.s2,
                failed,
                predictor.precision,
            )
            return _remove_scene(predictor, job, plan, product, area, defer_outputs, said)


def _remove_scene(
    predictor: Predictor,
    job: SceneJob,
    plan: ScenePlan,
    product: S2Product,
    area: Window,
    defer_outputs: DeferOutputs | None,
    said: Sequence[str] = (),
) -> SceneReport:
    """The run of :func:`remove_clouds` on the checked job, for the ``area`` of its scene (a window: all of it
    without ``--bounds``), the warnings ``said`` (a list that grows as it runs) recorded on its outputs."""
    set_block_cache_bytes(plan.block_cache_bytes)
    bounds = scene_bounds(job, plan.settings)
    with gdal_block_cache(), open_scene_inputs(predictor, job, plan, product, area) as inputs:
        tiles = plan_area_tiles(inputs.grid.height, inputs.grid.width, area, plan.tile, plan.overlap)
        start = time.perf_counter()
        writer = TileWriter(
            inputs,
            area_grid(area, inputs.grid),
            plan.settings,
            job,
            model=predictor.config.describe(),
            stream=completes_in_background(predictor.device),
        )
        with _progress_bar(len(tiles), enabled=plan.settings.progress) as bar, contextlib.ExitStack() as outputs:
            journal = open_scene_journal(predictor, job, plan, product, area, len(tiles))
            if journal is not None:  # first in: removed once every output is in place, kept if one fails
                outputs.push(journal)
                writer.journal_bytes = journal.bytes_to_come()
            if job.stac_item is not None:  # then the item: written once the files it describes are in place
                outputs.push(write_on_success(job, product))
            writer.open(outputs)
            _predict_tiles(predictor, inputs, tiles, plan, writer, bar.update, journal)
            if writer.valid == 0:
                where = " inside --bounds" if bounds is not None else ""
                raise DSen2CRError(f"{job.s2}: S2 has no valid pixels{where} (all nodata or NaN)")
            # what computed it, once the first batch settled the backend, and how it was asked for
            fraction = writer.missing / writer.valid  # of valid S2 pixels where S1's scene mean filled in
            exact = default_overlap(predictor.config)
            tags = predictor.provenance(with_variance=job.uncertainty_out is not None)
            tags = journal.tags(tags) if journal is not None else tags
            fill = inputs.s1_fill() if fraction > 0 else None  # asked for by the holes already: no second pass
            if predictor.include_sar and fill is not None:  # said before the tags, which record what was said
                _warn_of_s1_holes(job, fraction, fill)
            tags |= scene_tags(job, plan, exact, fraction, fill)
            if (sar := inputs.s1) is not None:
                tags |= s1_time_tags(product.sensing_time, sar.sensing_time, sar.orbit_direction, sar.relative_orbit)
            recorded_area = area_tags(area, inputs.grid, bounds)
            tags |= recorded_area
            shares = writer.mask_shares()  # of the map made (--keep-clear, --mask-out, --preview), if any
            if inputs.masker is not None and writer.mapped:
                inputs.masker.check_flagged(writer.cloud + writer.shadow)
            files = [str(path) for _, path in [*local_inputs(job.s2, job.s1, product), *job_outputs(job)]]
            tags |= shares | warnings_tag(said, files)
            for dataset in filter(None, (writer.cog, writer.sigma)):
                dataset.update_tags(**tags)
            if writer.quicklook is not None:  # the preview records what the COG does
                writer.quicklook.text = output_tags(inputs.s2) | tags
            if writer.mask is not None:
                writer.mask.update_tags(**input_tags(job, plan.settings), **recorded_area, **shares)
            written_outputs = outputs.pop_all()  # every tile written: completed below, or by the caller
        seconds = time.perf_counter() - start
    if defer_outputs is None:
        with gdal_block_cache():
            written_outputs.close()
        seconds = time.perf_counter() - start
    else:
        defer_outputs(written_outputs)
    megapixels = area.width * area.height / 1e6
    resumed = journal.replayed if journal is not None else 0
    return SceneReport(
        job.out, len(tiles), megapixels, seconds, fraction, writer.skipped, resumed, writer.mask_percent(), len(said)
    )


def _warn_of_s1_holes(job: SceneJob, fraction: float, fill: tuple[float, float]) -> None:
    """Warn that S1 has no data under ``fraction`` of the scene's valid S2 pixels, filled with its scene mean
    ``fill`` (VV, VH dB), naming frames where much is missing."""
    log.warning(
        "%s: S1 has no data under %.1f%% of the valid S2 pixels; filled with the scene's S1 mean (VV %.1f dB, VH "
        "%.1f dB)%s",
        job.s1,
        100 * fraction,
        *fill,
        FRAMES_HINT if fraction >= FRAMES_HINT_FRACTION else "",
    )


def _predict_tiles(
    predictor: Predictor,
    inputs: SceneInputs,
    tiles: list[Tile],
    plan: ScenePlan,
    writer: TileWriter,
    on_batch: Callable[[int], object],
    journal: SceneJournal | None,
) -> None:
    """Run every tile through ``predictor`` (read ahead on one thread; the batches a stopped run predicted taken
    from its ``journal``, and each batch predicted recorded there) and hand each result to ``writer`` (on another);
    while the mask's statistics pass runs, results wait in memory up to ``plan.hold_bytes``."""
    channels = network_channels(writer.job, plan)
    with_variance, parts = channels > 1, channels == 3
    predictions = iter_predictions(
        _means_and_variances(predictor, parts=parts) if with_variance else predictor,
        inputs.s2,
        inputs.s1,
        tiles,
        batch_size=plan.batch_size,
        s1_fill_db=inputs.s1_fill,
        on_batch=on_batch,
        channels=channels * NUM_S2_BANDS,
        journal=journal,
    )
    # closed explicitly: its reader thread must have stopped before the sources close, also when an error or a
    # signal leaves the loop (else a read of a closed file crashes the process)
    background = BackgroundWriter(depth=2 * plan.batch_size, prepare_threads=plan.finish_threads)
    masker = inputs.masker
    waiting = masker.statistics_pending if masker is not None else lambda: False
    with background, contextlib.closing(predictions):
        write_in_order(
            background, predictions, writer.prepare, writer.write, hold_bytes=plan.hold_bytes, waiting=waiting
        )


def _means_and_variances(predictor: Predictor, *, parts: bool) -> Callable[[np.ndarray, np.ndarray | None], np.ndarray]:
    """A batch function giving the 13 means then the 13 variances of each window (26 channels); ``parts``: the
    13 aleatoric then the 13 epistemic variances of an ensemble instead (39 channels)."""

    def predict(s2: np.ndarray, s1: np.ndarray | None) -> np.ndarray:
        moments = predictor.predict_variance_parts(s2, s1) if parts else predictor.predict_with_variance(s2, s1)
        return np.concatenate(moments, axis=1)

    return predict


def _progress_bar(total: int, *, enabled: bool) -> tqdm:
    """A tqdm bar counting tiles (with tiles/s and ETA)."""
    return tqdm(total=total, unit="tile", disable=not enabled, desc="remove-clouds", dynamic_ncols=True)
