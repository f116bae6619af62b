"""``remove-clouds --dry-run``: every scene of a run checked as its run would check it before its first window (its
outputs, its inputs opened and their values sampled, S1's date, the room its outputs take) and what the run would
write said, scene by scene; a refused scene is listed and the others checked on. Nothing is written, no window is
predicted: a batch of a hundred scenes is checked in the time it takes to open them, before hours of work stop at
the scene that fails."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from dsen2cr.errors import DSen2CRError
from dsen2cr.inputs import S2Product, resolve_s2
from dsen2cr.inputs.area import area_window
from dsen2cr.inputs.readers import scene_grid
from dsen2cr.inputs.s1_time import gap_text, s1_gap_days
from dsen2cr.outputs.finisher import completes_in_background
from dsen2cr.predictor import Predictor
from dsen2cr.scene.checks import check_job, check_scene_room
from dsen2cr.scene.jobs import checked_jobs, plan_and_predictor
from dsen2cr.scene.journal import check_no_journal
from dsen2cr.scene.sources import open_scene_inputs
from dsen2cr.scene.tiles import plan_area_tiles
from dsen2cr.settings import SceneJob, ScenePlan, SceneSettings, scene_bounds

log = logging.getLogger(__name__)


@dataclass
class SceneCheck:
    """What the dry run found of one scene: ``refused`` (the one-line reason; None: it would run), else what the
    run would do: the pixels of its area, its windows, and the line that says so (of its image; its other outputs
    are the job's)."""

    job: SceneJob
    refused: str | None = None
    width: int = 0
    height: int = 0
    tiles: int = 0
    said: str = ""


def dry_run_scene_jobs(
    jobs: list[SceneJob], settings: SceneSettings, *, extra_inputs: tuple[Path, ...] = ()
) -> list[SceneCheck]:
    """Check this rank's share of ``jobs`` as :func:`~dsen2cr.scene.jobs.run_scene_jobs` would before any scene
    runs (a refusal there, which stops a run, stops this too), then each scene as its run would before its first
    window; one :class:`SceneCheck` a scene, those an earlier run finished (``--skip-existing``) left out. The
    weights are loaded (the tiling depends on them), the network is not run."""
    checked = checked_jobs(jobs, settings, extra_inputs)
    mine = [jobs[index] for index in checked.mine]
    if not mine:
        return []
    products = [checked.products[index] for index in checked.mine]
    areas = [checked.areas[index] for index in checked.mine]
    plan, predictor = plan_and_predictor(mine, products, areas, settings, check_dates=False)
    return [_check_scene(predictor, plan, job, product) for job, product in zip(mine, products, strict=True)]


def _check_scene(predictor: Predictor, plan: ScenePlan, job: SceneJob, product: S2Product | None) -> SceneCheck:
    """One scene checked as its run checks it before the first window (S2 and S1 opened and sampled, the mask's
    product file too; a paper mask's statistics, a read of the whole scene, are not gathered)."""
    settings = plan.settings
    try:
        product = product or resolve_s2(job.s2, offset=settings.s2_offset)  # unresolved: its error, again
        check_job(predictor, job, settings, product)
        check_no_journal(job.out, resume=settings.resume, overwrite=settings.overwrite)
        area = area_window(scene_grid(product), scene_bounds(job, settings), job.s2, warn=False)
        with open_scene_inputs(predictor, job, plan, product, area, checking=True) as inputs:
            grid = inputs.grid
            tiles = plan_area_tiles(grid.height, grid.width, area, plan.tile, plan.overlap)
            stream = completes_in_background(predictor.device)
            check_scene_room(job, area.height, area.width, len(inputs.s2.bands), settings, stream)
            s1_time = inputs.s1.sensing_time if inputs.s1 is not None else None
    except DSen2CRError as error:
        return SceneCheck(job, refused=str(error))
    sensed = f"sensed {product.sensing_time}" if product.sensing_time else "sensing time unknown"
    said = f"{area.width}x{area.height} px of {Path(job.s2).name} ({product.level}, {sensed})"
    if predictor.include_sar:
        gap = s1_gap_days(product.sensing_time, s1_time)
        said += f", S1 {gap_text(gap)}" if gap is not None else ", S1's date unknown"
    said += f", {len(tiles)} window{'s' if len(tiles) != 1 else ''}"
    return SceneCheck(job, None, area.width, area.height, len(tiles), said)
