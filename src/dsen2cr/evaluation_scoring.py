"""An evaluation's patches scored (paper metrics of the model and of the identity baseline, a model's sigma
against its errors) and their images written, on a pool of threads while the model predicts the next batch: the
metrics, the GeoTIFFs and the PNG previews take a CPU core some 0.3 s a patch, more than a GPU's prediction of it.
Rows and the calibration's sample come out in the patches' order, whatever order the threads finish in."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dsen2cr.calibration import (
    BAND_COVERAGE_KEY,
    STATED_INTERVAL_KEY,
    Intervals,
    band_coverage_counts,
    reflectance_errors,
    sigma_part_metrics,
    stated_interval_counts,
    uncertainty_metrics_of,
)
from dsen2cr.data.layout import Triplet
from dsen2cr.evaluation_progress import PREDICTIONS, PREVIEWS, Scored
from dsen2cr.machine import available_memory_bytes
from dsen2cr.metrics import image_metrics, original_metrics
from dsen2cr.outputs.geotiff import write_geotiff
from dsen2cr.preprocessing import S2_BANDS, S2_MODEL_SCALE, s1_model_to_db, s2_model_to_dn
from dsen2cr.rasters import open_raster
from dsen2cr.scene.describe import describe_bands, threshold_tags
from dsen2cr.visualize import write_patch_previews

#: Memory a patch's scoring holds at its peak, a pixel: the metrics' float64 copies and SSIM's moments of 13 bands,
#: a model's sigma against its errors (measured: 2.0-2.3 KB a pixel of 256 to 1024 px patches), and its images.
SCORING_BYTES_PER_PIXEL = 2500


class MemoryBudget:
    """Bytes the patches being scored may hold at once: a patch waits until its share fits beside the others' (one
    alone always runs, however large), so that threads scoring large patches do not take the machine's memory."""

    def __init__(self, total: int) -> None:
        self.total, self.used = total, 0
        self._changed = threading.Condition()

    @contextmanager
    def hold(self, amount: int) -> Iterator[None]:
        """Hold ``amount`` bytes of the budget while the block runs (waiting until they fit)."""
        with self._changed:
            self._changed.wait_for(lambda: self.used == 0 or self.used + amount <= self.total)
            self.used += amount
        try:
            yield
        finally:
            with self._changed:
                self.used -= amount
                self._changed.notify_all()


@dataclass
class PatchScore:
    """One patch's rows (the model's, then the identity's) and, for a model with sigma, its (|error|, sigma) values
    (reflectance) to sample from."""

    rows: list[dict[str, Any]]
    errors: tuple[np.ndarray, np.ndarray] | None = None


@dataclass
class BatchScore:
    """A batch submitted to :meth:`Scorer.submit`: its patches' scores as they come (futures, or done)."""

    number: int
    patches: list[Future[PatchScore]] = field(default_factory=list)


class Scorer:
    """Scores the patches of each batch (model and identity rows: the ``protocol``'s metrics, the region metrics on
    the map of ``mask``, its kind and cloud threshold), writes their images (``write_images``), and keeps a sample of up
    to ``sample`` (|error|, sigma) values a patch for the reliability diagram; ``threads`` > 1: on a pool of that
    many threads, up to two batches at once (the next one submitted while one is scored), as many patches at once as
    half the memory available when it starts holds (:data:`SCORING_BYTES_PER_PIXEL`; ``memory``: another budget). A
    context manager: the pool is shut down on leaving, patches not yet started cancelled."""

    #: Values per patch kept for the pooled calibration (a fixed random subset), at most.
    SAMPLE = 20_000

    def __init__(
        self,
        out: Path,
        by_id: dict[str, Triplet],
        include_sar: bool,
        *,
        protocol: str,
        write_images: bool,
        mask: tuple[str, float],
        sample: int,
        threads: int = 1,
        memory: int | None = None,
    ) -> None:
        self.out, self.by_id, self.protocol, self.write_images = out, by_id, protocol, write_images
        self.include_sar = include_sar  # the figure shows the SAR input only to a model that reads it
        self.tags: dict[str, str] = {}  # what computed the predictions (set once the first batch ran)
        self.rows: list[dict[str, Any]] = []
        self.samples: list[tuple[np.ndarray, np.ndarray]] = []
        #: the intervals the weights' calibration stated (share, each band's multiple of sigma), counted per image
        self.stated_intervals: Intervals = ()
        self.sample = max(1, min(self.SAMPLE, sample))
        self.rng = np.random.default_rng(0)
        kind, threshold = mask  # the map the region metrics use
        self.mask_tags = {"DSEN2CR_MASK": kind} | threshold_tags(kind, threshold)
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="dsen2cr-score") if threads > 1 else None
        self.budget = MemoryBudget(memory if memory is not None else available_memory_bytes() // 2)
        self.pending: deque[BatchScore] = deque()
        #: a batch's scoring or record failed (set by whoever records them, ``evaluate``): no batch after it is recorded
        self.failed = False

    @property
    def overlapped(self) -> bool:
        """Whether batches are scored on threads while the next is predicted."""
        return self._pool is not None

    def __enter__(self) -> Scorer:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def submit(
        self,
        number: int,
        batch: dict[str, Any],
        pred: torch.Tensor,
        variance: torch.Tensor | None,
        parts: list[torch.Tensor] | None = None,
    ) -> None:
        """Start scoring batch ``number``'s predictions (model units) and, for a model with uncertainty, their
        variances (and an ensemble's aleatoric and epistemic ``parts`` of them): each patch on the pool, or here
        and now without one."""
        tags = dict(self.tags)  # what computed this batch, as it was when it was predicted
        scored = BatchScore(number)
        for i in range(len(batch["patch_id"])):
            args = (batch, i, pred, variance, parts, tags)
            if self._pool is None:
                done: Future[PatchScore] = Future()
                done.set_result(self._score_patch(*args))
                scored.patches.append(done)
            else:
                scored.patches.append(self._pool.submit(self._score_patch, *args))
        self.pending.append(scored)

    def finish_oldest(self) -> int:
        """Wait for the oldest pending batch's patches, in order: append their rows and draw their samples (the
        sampler in the patches' order, as one thread would); returns the batch's number."""
        scored = self.pending.popleft()
        for patch in scored.patches:
            result = patch.result()
            self.rows.extend(result.rows)
            if result.errors is not None:
                self._keep_sample(*result.errors)
        return scored.number

    def _score_patch(self, batch: dict[str, Any], i: int, *prediction: Any) -> PatchScore:
        """Score patch ``i`` of ``batch`` (:meth:`_score`; ``prediction``: its other arguments) within the memory
        budget."""
        height, width = batch["s2_cloudy"][i].shape[-2:]
        with self.budget.hold(SCORING_BYTES_PER_PIXEL * height * width):
            return self._score(batch, i, *prediction)

    def _score(
        self,
        batch: dict[str, Any],
        i: int,
        pred: torch.Tensor,
        variance: torch.Tensor | None,
        parts: list[torch.Tensor] | None,
        tags: dict[str, str],
    ) -> PatchScore:
        """Score patch ``i`` of ``batch`` (its rows; its errors and sigma for the sample) and write its images: the
        predictions ``pred`` (model units), a model's ``variance`` and an ensemble's ``parts`` of it, ``tags`` what
        computed them."""
        patch_id = batch["patch_id"][i]
        pred_dn = s2_model_to_dn(pred[i])
        cloudy_dn = s2_model_to_dn(batch["s2_cloudy"][i])
        target_dn = s2_model_to_dn(batch["s2"][i])
        mask = batch["cloud_mask"][i].numpy()
        score = PatchScore([])
        for method, candidate in (("model", pred_dn), ("identity", cloudy_dn)):
            if self.protocol == "original":
                unclipped = pred[i] if method == "model" else batch["s2_cloudy"][i]
                values = original_image_metrics(unclipped, batch["s2"][i], batch["s2_cloudy"][i], mask)
            else:
                values = image_metrics(candidate, target_dn, cloudy=cloudy_dn, mask=mask)
            if method == "model" and variance is not None:
                sigma_dn = variance[i].double().sqrt().numpy() * S2_MODEL_SCALE
                score.errors = reflectance_errors(pred_dn, target_dn, sigma_dn)
                values.update(uncertainty_metrics_of(*score.errors, mask))
                if parts is not None:
                    values.update(sigma_part_metrics(*(p[i].double().sqrt().numpy() * S2_MODEL_SCALE for p in parts)))
            cloud_fraction = float((mask != 0).mean())
            roi = self.by_id[patch_id].roi
            row = {"patch_id": patch_id, "roi": roi, "method": method, "cloud_fraction": cloud_fraction, **values}
            if method == "model" and score.errors is not None:  # recorded with the row, left out of the CSVs
                row[BAND_COVERAGE_KEY] = band_coverage_counts(*score.errors, pred_dn.shape[0])
                if self.stated_intervals:
                    counts = stated_interval_counts(*score.errors, self.stated_intervals, len(pred_dn), mask)
                    row[STATED_INTERVAL_KEY] = counts
            score.rows.append(row)
        if self.write_images:
            write_prediction(self.by_id[patch_id], pred_dn, self.out / PREDICTIONS, tags)
            s1_db = s1_model_to_db(batch["s1"][i].numpy()) if self.include_sar else None
            images = {"cloudy": cloudy_dn, "target": target_dn, "prediction": pred_dn}
            caption = patch_caption(patch_id, score.rows[0], score.rows[1], self.protocol)
            text = {**tags, **self.mask_tags, "DSEN2CR_PATCH": patch_id}  # what made the pictures
            write_patch_previews(patch_id, s1_db, images, mask, caption, self.out / PREVIEWS, text)
        return score

    def restore(self, scored: Scored) -> None:
        """Go on from what a stopped run ``scored``: its rows, samples and the sampler's state after them."""
        self.rows, self.samples = list(scored.rows), list(scored.samples)
        if scored.sampler is not None:
            self.rng.bit_generator.state = scored.sampler

    def _keep_sample(self, error: np.ndarray, sigma: np.ndarray) -> None:
        """Keep up to :attr:`sample` random (|error|, sigma) values of a patch (reflectance)."""
        if error.size > self.sample:
            chosen = self.rng.choice(error.size, self.sample, replace=False)
            error, sigma = error[chosen], sigma[chosen]
        self.samples.append((error, sigma))

    def pooled(self) -> tuple[np.ndarray, np.ndarray]:
        """The kept (|error|, sigma) values of every patch."""
        return np.concatenate([e for e, _ in self.samples]), np.concatenate([s for _, s in self.samples])


def original_image_metrics(
    pred: torch.Tensor, target: torch.Tensor, cloudy: torch.Tensor, mask: np.ndarray
) -> dict[str, float]:
    """The original's metrics of one image (model units, float64)."""
    p, t, c = (x.to(torch.float64)[None] for x in (pred, target, cloudy))
    values = original_metrics(p, t, c, torch.as_tensor(mask)[None])
    return {name: float(value[0]) for name, value in values.items()}


def write_prediction(triplet: Triplet, pred_dn: np.ndarray, folder: Path, tags: dict[str, str]) -> None:
    """The prediction as a uint16 GeoTIFF with the cloudy input's georeferencing, and what a scene output says
    of itself: band names, reflectance scale, red/green/blue hints, what computed it (``tags``)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open_raster(triplet.s2_cloudy, what="S2 cloudy") as src:
        crs, transform = src.crs, src.transform

    def describe(dataset: Any) -> None:
        describe_bands(dataset, list(S2_BANDS))
        dataset.update_tags(**tags, DSEN2CR_RADIOMETRY="reflectance x 10000 (the patch's DN)")

    write_geotiff(folder / f"{triplet.patch_id}.tif", pred_dn, crs=crs, transform=transform, describe=describe)


def patch_caption(patch_id: str, model: dict[str, Any], identity: dict[str, Any], protocol: str) -> str:
    """The figure's first line: the patch and how the model did against leaving the clouds."""
    if protocol != "default":
        return f"{patch_id} (cloud cover {model['cloud_fraction']:.0%})"
    return (
        f"{patch_id}, cloud cover {model['cloud_fraction']:.0%}: model MAE {model['mae']:.4f}, "
        f"PSNR {model['psnr']:.2f} dB, SSIM {model['ssim']:.3f}, SAM {model['sam']:.2f} deg "
        f"(cloudy input: MAE {identity['mae']:.4f}, PSNR {identity['psnr']:.2f} dB)"
    )
