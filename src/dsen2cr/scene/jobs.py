"""Many scenes: jobs from argument lists or a manifest, split across torchrun ranks, run with one predictor and
one plan (docs/design.md §4.4)."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rasterio.windows import Window

from dsen2cr.auto import plan_scene_run, resolve_device
from dsen2cr.ensemble import EnsembleSpec, check_distinct_members, check_same_inputs, ensemble
from dsen2cr.errors import DSen2CRError
from dsen2cr.inputs import S2Product, local_inputs, resolve_s2, s1_parts
from dsen2cr.inputs.area import area_window
from dsen2cr.inputs.manifest import manifest_input, read_manifest_rows, row_bounds
from dsen2cr.inputs.readers import scene_grid
from dsen2cr.inputs.stac import item_reference
from dsen2cr.launch import this_launch
from dsen2cr.outputs.files import (
    check_distinct_outputs,
    check_output_file,
    path_identity,
)
from dsen2cr.outputs.finisher import OutputFinisher, completes_in_background
from dsen2cr.outputs.locks import output_locks
from dsen2cr.predictor import Predictor, load_network, predictor_for_plan
from dsen2cr.scene.checks import (
    OUTPUT_KINDS,
    check_s1_date,
    check_uncertainty_output,
    check_uncertainty_parts,
    job_outputs,
)
from dsen2cr.scene.done import finished_jobs
from dsen2cr.scene.journal import check_no_journal
from dsen2cr.scene.remove import SceneReport, remove_clouds
from dsen2cr.scene.stac_item import check_stac_item, missing_item, write_finished_item
from dsen2cr.settings import SceneJob, ScenePlan, SceneSettings, scene_bounds

log = logging.getLogger(__name__)

#: A scene's height and width, and the window of it to process (all of it without ``--bounds``).
SceneArea = tuple[int, int, Window]


def scene_stem(source: str) -> str:
    """A name for a scene's outputs: the product name without ``.SAFE``/``.SAFE.zip``, else the file stem; an item of
    a STAC ItemCollection (``items.json#ID``), its id."""
    _, item_id = item_reference(source)
    if item_id is not None:
        return item_id.replace("/", "_").replace("\\", "_")
    name = Path(source.rstrip("/")).name
    for suffix in (".zip", ".SAFE", ".json", ".tif", ".tiff", ".jp2"):
        name = name.removesuffix(suffix)
    return name


#: The manifest's optional output columns (beside ``out``).
OPTIONAL_OUTPUTS = ("mask_out", "preview", "uncertainty_out", "stac_item")
#: Every column a manifest may have: the scene, its outputs, and the part of it to process (``bounds``: LEFT BOTTOM
#: RIGHT TOP, in ``bounds_crs`` or the scene's CRS; instead of ``--bounds`` for that row).
MANIFEST_COLUMNS = ("s2", "s1", "out", *OPTIONAL_OUTPUTS, "bounds", "bounds_crs")


def read_manifest(path: Path) -> list[SceneJob]:
    """Read a manifest CSV with a header: ``s2,s1,out`` (``s1`` may be left out for a model without SAR) and
    optionally ``mask_out,preview,uncertainty_out,stac_item`` and ``bounds,bounds_crs`` (:func:`row_bounds`).
    Relative paths are relative to the manifest's folder (so a manifest travels with its scenes); a UTF-8 BOM is
    read."""
    rows = read_manifest_rows(path, MANIFEST_COLUMNS, required=("s2", "out"), header="s2,s1,out")
    base = Path(path).parent
    jobs = []
    for row in rows:
        if not row.text("s2") or not row.text("out"):
            raise DSen2CRError(f"{path}:{row.line}: s2 and out must not be empty")
        s2 = manifest_input(row.text("s2"), path)
        s1 = manifest_input(row.text("s1"), path, pair=True) if row.text("s1") else None  # no column: no SAR
        out = output_path(base / row.text("out"), s2, row.fields["out"])
        optional: dict[str, Any] = {
            k: other_output_path(base / row.text(k), k, out, row.text(k)) if row.fields.get(k) else None
            for k in OPTIONAL_OUTPUTS
        }
        jobs.append(SceneJob(s2, s1, out, **optional, bounds=row_bounds(row, f"{path}:{row.line}")))
    return jobs


def output_path(path: Path, s2: str, text: str | None = None) -> Path:
    """An output named as given, or, for a folder (its name given with a trailing slash, ``text``), the file
    ``<scene>_cloudfree.tif`` in it."""
    return _file_or_folder(path, text, f"{scene_stem(s2)}_cloudfree.tif")


#: What a scene's other outputs are named in a folder given for them (``masks/``), after its image's stem.
FOLDER_NAMES = {"mask_out": "{}_mask.tif", "preview": "{}_preview.png", "uncertainty_out": "{}_sigma.tif"}
FOLDER_NAMES["stac_item"] = "{}.json"


def other_output_path(path: Path, role: str, out: Path, text: str | None = None) -> Path:
    """An output other than the image (``role``: ``mask_out``, ``preview``, ``uncertainty_out``, ``stac_item``)
    named as given, or for a folder (its name given with a trailing slash, ``text``) the file of
    :data:`FOLDER_NAMES` named after the image ``out`` in it."""
    return _file_or_folder(path, text, FOLDER_NAMES[role].format(out.stem))


def _file_or_folder(path: Path, text: str | None, name: str) -> Path:
    """``path`` as given (``text``: as the user wrote it), or ``name`` in it when that ends with a slash: an
    existing folder named without one, or a missing one named with one, is refused."""
    given = str(path) if text is None else text.strip()
    if not given.endswith(("/", os.sep)):
        if path.is_dir():
            raise DSen2CRError(
                f"{given}: is a folder; end it with a slash ({given.rstrip('/')}/) to write {name} into it, or name "
                "an output file"
            )
        return path
    if not path.is_dir():
        raise DSen2CRError(f"{given}: output folder does not exist")
    return path / name


def check_jobs(
    jobs: list[SceneJob],
    products: list[S2Product | None],
    *,
    weights: tuple[str, ...],
    overwrite: bool,
    extra_inputs: list[Path],
    unchecked: list[bool] | None = None,
) -> None:
    """Everything about the jobs that can be checked before the first scene runs: every input exists, every
    output can be written (exists only with ``overwrite``; its folder exists; the outputs of the jobs marked
    ``unchecked`` may exist: those an earlier run finished, which will be skipped, and another rank's, which that
    rank checks itself and may have written already), and no output is an input (any file a scene reads: product
    members, STAC assets, S1 pair members), lies in an input folder, or is another output (refused even with
    ``overwrite``). ``products``: each job's resolved S2 input (None if unresolved)."""
    inputs: list[tuple[str, Path]] = [("weights", Path(w)) for w in weights] + [("file", p) for p in extra_inputs]
    outputs: list[tuple[str, Path]] = []
    not_checked: set[Path] = set()
    for job, product, done in zip(jobs, products, unchecked or [False] * len(jobs), strict=True):
        named = [("s2", job.s2), *[("s1", part) for part in s1_parts(job.s1 or "")]]
        for role, text in named:  # as text: a URL is not a path ("http://a" would become "http:/a")
            if text and "://" not in text and not Path(item_reference(text)[0]).exists():
                chained = any(path_identity(Path(text)) == path_identity(other.out) for other in jobs)
                hint = " (it is another row's output: rows run independently, never one after the other)"
                raise DSen2CRError(f"{text}: {role.upper()} scene not found{hint if chained else ''}")
        inputs += local_inputs(job.s2, job.s1, product)
        outputs += [(role, target) for role, target in job_outputs(job)]
        not_checked.update(target for _, target in job_outputs(job) if done)
    check_distinct_outputs(outputs, inputs)  # first: "would replace the weights" says more than a name rule
    for role, target in outputs:
        if target not in not_checked:
            check_output_file(target, overwrite=overwrite, kind=OUTPUT_KINDS[role])
    for job, product in zip(jobs, products, strict=True):
        if product is not None:
            check_stac_item(job, product)  # a STAC item needs the sensing time


def _resolve(job: SceneJob, settings: SceneSettings) -> tuple[S2Product | None, SceneArea | None]:
    """A job's S2 input resolved once for the whole run, and its size with the window of it to process (None when
    it cannot be: its run reports the error; ``--bounds`` that miss the scene are refused here, before any
    scene runs)."""
    try:
        product = resolve_s2(job.s2, offset=settings.s2_offset)
        grid = scene_grid(product)
    except DSen2CRError:
        return None, None
    return product, (grid.height, grid.width, area_window(grid, scene_bounds(job, settings), job.s2, warn=False))


@dataclass
class CheckedJobs:
    """This process's share of a run's checked jobs (:func:`check_jobs`), as indices into them: ``mine`` to run,
    ``items`` finished but for the STAC item asked for; each job's S2 input resolved once, with its area (None:
    unresolved, its run reports why)."""

    products: list[S2Product | None]
    areas: list[SceneArea | None]
    mine: list[int]
    items: list[int]


def checked_jobs(jobs: list[SceneJob], settings: SceneSettings, extra_inputs: tuple[Path, ...] = ()) -> CheckedJobs:
    """Check every job before the first scene runs (:func:`check_jobs`; ``extra_inputs`` such as the manifest must
    not be overwritten either), resolve each scene's S2 input once, and take this rank's share: torchrun's ranks or
    an srun step's tasks split the scenes; with ``--skip-existing`` those an earlier run finished are skipped."""
    if settings.weights is None:
        raise DSen2CRError("remove-clouds: --weights is required")
    if settings.uncertainty_parts and all(job.uncertainty_out is None for job in jobs):
        raise DSen2CRError(
            "--uncertainty-parts: needs --uncertainty-out (or a manifest's uncertainty_out column), the sigma file "
            "that holds the parts"
        )
    launch = this_launch()
    rank, world = launch.rank, launch.world
    resolved = [_resolve(job, settings) for job in jobs]
    products = [product for product, _ in resolved]
    finished = finished_jobs(jobs, products, settings) if settings.skip_existing else [False] * len(jobs)
    # the ranks split the whole list (what an earlier run finished does not move a scene to another rank)
    share = range(rank, len(jobs), world)
    check_jobs(
        jobs,
        products,
        weights=settings.recorded_weights_files,
        overwrite=settings.overwrite,
        extra_inputs=list(extra_inputs),
        unchecked=[done or index not in share for index, done in enumerate(finished)],
    )
    for index in share:
        if finished[index]:
            log.info("skipped %s: an earlier run finished it (--skip-existing)", jobs[index].out)
    mine = [index for index in share if not finished[index]]
    # finished scenes without the STAC item asked for: written from their files, nothing computed again
    items = [index for index in share if finished[index] and missing_item(jobs[index])]
    if world > 1:
        log.info("%s: rank %d of %d takes %d of the %d scenes", launch.launcher, rank, world, len(mine), len(jobs))
    return CheckedJobs(products, [area for _, area in resolved], mine, items)


def run_scene_jobs(
    jobs: list[SceneJob], settings: SceneSettings, *, extra_inputs: tuple[Path, ...] = ()
) -> Iterator[SceneReport]:
    """Process this rank's share of ``jobs`` (:func:`checked_jobs`) with one predictor and one plan (made for the
    scenes' sizes)."""
    checked = checked_jobs(jobs, settings, extra_inputs)
    mine, items = checked.mine, checked.items
    if not mine and not items:
        return
    locked = [path for index in mine for _, path in job_outputs(jobs[index])]
    locked += [path for index in items for role, path in job_outputs(jobs[index]) if role == "stac_item"]
    with output_locks(locked, each_process=True):
        for index in items:
            write_finished_item(jobs[index], checked.products[index])
        if not mine:
            return
        for index in mine:  # under this run's locks: a journal is a stopped run's, not a running one's
            check_no_journal(jobs[index].out, resume=settings.resume, overwrite=settings.overwrite)
        yield from _run_my_jobs(
            [jobs[index] for index in mine],
            [checked.products[index] for index in mine],
            [checked.areas[index] for index in mine],
            settings,
        )


def plan_and_predictor(
    mine: list[SceneJob],
    products: list[S2Product | None],
    areas: list[SceneArea | None],
    settings: SceneSettings,
    *,
    check_dates: bool = True,
) -> tuple[ScenePlan, Predictor]:
    """Load the weights (several: an ensemble, :mod:`dsen2cr.ensemble`), refuse what the jobs ask of them before
    any decision is printed (tiles, backend; with ``check_dates``, S1 too far in time from a scene, before the first
    runs), then plan the run and build the predictor."""
    device = resolve_device(settings.device)
    networks = [load_network(weights, device=device) for weights in settings.weights_files]
    check_same_inputs(list(settings.weights_files), [network.config.include_sar for network in networks])
    models, digests = [network.model for network in networks], [network.weights_sha256 for network in networks]
    check_distinct_members(list(settings.weights_files), models, digests)
    without_s1 = [job.s2 for job in mine if job.s1 is None]
    if any(network.config.include_sar for network in networks) and without_s1:
        raise DSen2CRError(
            f"{without_s1[0]}: these weights need SAR input; pass --s1 (or an s1 column in the manifest): VV, VH "
            "in dB on or near the S2 grid"
        )
    if check_dates and any(network.config.include_sar for network in networks):
        for job, product in zip(mine, products, strict=True):
            if product is not None:
                check_s1_date(job, product, settings)
    if len({network.onnx for network in networks}) > 1:
        raise DSen2CRError("--weights: an ensemble's members are all ONNX files or all PyTorch weights, not both")
    single = len(networks) == 1
    config = networks[0].config if single else EnsembleSpec(tuple(network.config for network in networks))
    names = ", ".join(settings.weights_files)
    for job in mine:
        if job.uncertainty_out is not None:
            check_uncertainty_output(f"{job.uncertainty_out}: --uncertainty-out", config.uncertainty, names, settings)
    if settings.uncertainty_parts:
        check_uncertainty_parts(None if single else [network.config.uncertainty for network in networks], names)
    known = [area for area in areas if area]
    plan = plan_scene_run(settings, config, scene_areas=known, onnx=networks[0].onnx, device=device)
    members = [predictor_for_plan(network, plan) for network in networks]
    return plan, members[0] if single else ensemble(members, settings.ensemble_file)


def _run_my_jobs(
    mine: list[SceneJob],
    products: list[S2Product | None],
    areas: list[SceneArea | None],
    settings: SceneSettings,
) -> Iterator[SceneReport]:
    """Run this rank's jobs (checked, their inputs resolved, their outputs locked) with one predictor."""
    plan, predictor = plan_and_predictor(mine, products, areas, settings)
    finisher = OutputFinisher(background=completes_in_background(predictor.device))
    try:
        for job, product in zip(mine, products, strict=True):
            deferred: list[contextlib.ExitStack] = []
            report = remove_clouds(predictor, job, plan, s2_product=product, defer_outputs=deferred.append)
            if (done := finisher.submit(report, deferred.pop())) is not None:
                yield done
        if (done := finisher.wait()) is not None:
            yield done
    except Exception:
        if (done := finisher.wait()) is not None:  # the scene before the failed one is complete: say so
            yield done
        raise
    finally:
        finisher.close()
