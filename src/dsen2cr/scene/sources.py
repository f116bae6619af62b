"""A scene's open inputs for ``remove-clouds``: S2, S1 warped onto its grid with the value that fills S1's holes,
and the cloud/shadow masker when an output needs it (docs/design.md §4.4)."""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from rasterio.windows import Window

from dsen2cr.auto import FETCH_MARGIN_SECONDS, estimated_eager_seconds, resolve_fetch
from dsen2cr.errors import DSen2CRError
from dsen2cr.inputs import S2Product
from dsen2cr.inputs.fetch import fetched, local_product, remote_assets
from dsen2cr.inputs.readers import Grid, S2Source
from dsen2cr.inputs.s1 import S1Source, s1_scene_mean
from dsen2cr.inputs.s1_time import report_s1_gap
from dsen2cr.predictor import Predictor
from dsen2cr.scene.masking import SceneMasker
from dsen2cr.settings import SceneJob, ScenePlan
from dsen2cr.signed_urls import earliest_expiry, fresh

log = logging.getLogger(__name__)


@dataclass
class SceneInputs:
    """A scene's open inputs: S2, S1 (None without SAR) and what fills S1's holes (its scene mean,
    :func:`~dsen2cr.inputs.s1.s1_scene_mean`, computed when first asked for), and the cloud/shadow masker (None when
    nothing needs the mask)."""

    s2: S2Source
    s1: S1Source | None = None
    s1_fill: Callable[[], tuple[float, float]] = lambda: (0.0, 0.0)
    masker: SceneMasker | None = None

    @property
    def grid(self) -> Grid:
        """The scene's 10 m grid."""
        return self.s2.grid


@contextlib.contextmanager
def open_scene_inputs(
    predictor: Predictor, job: SceneJob, plan: ScenePlan, product: S2Product, area: Window, *, checking: bool = False
) -> Iterator[SceneInputs]:
    """Open S2 (resolved once: ``product``), S1 warped onto its grid, and the masker (the paper mask's statistics
    of the whole scene, or of ``area`` with ``--mask-statistics area``); close them all on the way out. ``checking``:
    opened for their checks alone (``--dry-run``): no paper masker, whose statistics pass reads the whole scene;
    nothing fetched. Remote assets are downloaded first where ``--fetch-inputs`` says (:func:`_fetched`)."""
    with contextlib.ExitStack() as fetched_inputs:  # removed once the inputs are closed
        local = {} if checking else fetched_inputs.enter_context(_fetched(predictor, job, plan, product, area))
        with _opened_inputs(predictor, job, plan, local_product(product, local), area, local, checking) as inputs:
            yield inputs


def _fetched(
    predictor: Predictor, job: SceneJob, plan: ScenePlan, product: S2Product, area: Window
) -> contextlib.AbstractContextManager[dict[str, str]]:
    """What the scene reads in place of its remote assets: Planetary Computer assets whose token expires during the
    run signed anew (where its SDK is installed), and local copies where ``--fetch-inputs`` downloads them first
    (``auto``: :func:`~dsen2cr.auto.resolve_fetch`, where their signatures would expire during the run)."""
    paths = remote_assets(product, job.s1 if predictor.include_sar else None)
    pixels = area.width * area.height
    network = estimated_eager_seconds(predictor.config, pixels) if plan.device.type == "cpu" else 0.0
    renewed = {path: fresh(path, network + FETCH_MARGIN_SECONDS) for path in paths}
    expiry = earliest_expiry(renewed.values())
    left = None if expiry is None else (expiry - datetime.now(timezone.utc)).total_seconds()
    if not paths or not resolve_fetch(plan.settings.fetch_inputs, predictor.config, plan.device, pixels, left):
        return contextlib.nullcontext({path: new for path, new in renewed.items() if new != path})
    if plan.settings.fetch_inputs == "auto" and left is not None:
        log.info(
            "%s: the signed URLs of its %d remote assets expire in %.0f min, before the network's estimated %.0f min "
            "here ends: downloaded first (--fetch-inputs off reads them as the run goes)",
            job.out,
            len(paths),
            left / 60,
            network / 60,
        )
    return fetched(renewed, Path(job.out))


@contextlib.contextmanager
def _opened_inputs(
    predictor: Predictor,
    job: SceneJob,
    plan: ScenePlan,
    product: S2Product,
    area: Window,
    local: dict[str, str],
    checking: bool,
) -> Iterator[SceneInputs]:
    """The scene's inputs open (:func:`open_scene_inputs`), remote assets read from their ``local`` copies."""
    settings = plan.settings
    s2 = S2Source(product, resampling=settings.resampling, band_threads=plan.band_threads)
    inputs = SceneInputs(s2)
    try:
        if settings.keep_clear and s2.dtype not in ("uint8", "uint16"):
            raise DSen2CRError(
                f"{s2.name}: --keep-clear keeps input pixels bit for bit, but S2 is {s2.dtype} and the output "
                "is uint16; convert the input to uint16 DN first"
            )
        needs_mask = settings.keep_clear or job.mask_out is not None or job.preview is not None
        if settings.mask != "paper" or (needs_mask and not checking):
            # its own file handles: the batch loop's reader thread owns ``s2`` while the loop runs; its statistics
            # pass reads the whole scene before the first map, on as many threads as the reader reads bands
            statistics_of = area if settings.mask_statistics == "area" else None
            inputs.masker = SceneMasker(
                s2.reopen(), settings.mask, settings.cloud_threshold, plan.band_threads, statistics_of=statistics_of
            )
        if predictor.include_sar:
            assert job.s1 is not None  # checked in check_job
            inputs.s1 = S1Source(job.s1, s2.grid, linear=settings.s1_linear, local=local)
            report_s1_gap(job.s1, product.sensing_time, inputs.s1.sensing_time, warn=settings.s1_max_days is None)
            # computed the first time a hole needs it (on the thread that reads S1), then kept: S1 without holes is
            # never read whole for it (a pass over all of S1: some 11 s for a full tile warped onto its grid here)
            inputs.s1_fill = functools.cache(functools.partial(s1_scene_mean, inputs.s1, s2.grid.height, s2.grid.width))
        elif job.s1 is not None:
            log.warning("these weights were trained without SAR: the S1 input is ignored")
        yield inputs
    finally:
        s2.close()
        for source in (inputs.s1, inputs.masker):
            if source is not None:
                source.close()
