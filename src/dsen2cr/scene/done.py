"""Scenes an earlier run finished (``remove-clouds --skip-existing``): a batch that stopped (an error, a job's time
limit, a killed process) goes on where it stopped, its finished scenes skipped rather than computed again. A
scene counts as finished when every output it asks for exists (but a STAC item, which is written from the others:
:func:`dsen2cr.scene.jobs.run_scene_jobs` writes a missing one) and its image records what this run would: the
same weights (SHA-256), the same S2 and S1 inputs (file names), the same area of the scene (``--bounds``), S2 offset,
S1 units and resampling, ``--keep-clear``, ``--mask`` and the cloud threshold."""

from __future__ import annotations

from pathlib import Path

import rasterio
from rasterio.errors import RasterioIOError

from dsen2cr.errors import DSen2CRError
from dsen2cr.formats import shortened_sha256
from dsen2cr.inputs import S2Product
from dsen2cr.inputs.area import WHOLE_SCENE, area_text, area_window
from dsen2cr.inputs.provenance import offset_tag, resampling_tags
from dsen2cr.inputs.readers import scene_grid
from dsen2cr.outputs.files import file_sha256
from dsen2cr.predictor import recorded_sha256
from dsen2cr.scene.checks import job_outputs
from dsen2cr.scene.describe import input_tags, run_tags
from dsen2cr.settings import SceneJob, SceneSettings, scene_bounds

#: The image tags compared, and what each records, for messages.
COMPARED = {
    "DSEN2CR_WEIGHTS_SHA256": "weights (SHA-256)",
    "DSEN2CR_S2": "S2 input",
    "DSEN2CR_S1": "S1 input",
    "DSEN2CR_AREA": "area",
    "DSEN2CR_OFFSET_REMOVED": "S2 offset removed",
    "DSEN2CR_S1_UNITS": "S1 read as",
    "DSEN2CR_RESAMPLING": "--resampling",
    "DSEN2CR_KEEP_CLEAR": "--keep-clear",
    "DSEN2CR_MASK": "--mask",
    "DSEN2CR_CLOUD_THRESHOLD": "--cloud-threshold",
    "DSEN2CR_MASK_STATISTICS": "--mask-statistics",
}

#: Tags that outputs of earlier versions lack.
_LATER = ("DSEN2CR_S1_UNITS", "DSEN2CR_RESAMPLING")


def weights_digest(settings: SceneSettings) -> str:
    """The SHA-256 that an output of the run's weights records (:func:`~dsen2cr.predictor.recorded_sha256`)."""
    return recorded_sha256(file_sha256(Path(weights)) for weights in settings.recorded_weights_files)


def made_otherwise(job: SceneJob, product: S2Product, settings: SceneSettings, digest: str) -> str | None:
    """How the job's existing image was made otherwise than this run would make it (the first tag of
    :data:`COMPARED` that differs, in words), or None when it records the same."""
    try:
        with rasterio.open(job.out) as image:
            tags = image.tags()
    except RasterioIOError as error:
        return f"it cannot be read as a GeoTIFF ({' '.join(str(error).split())})"
    expected = {"DSEN2CR_WEIGHTS_SHA256": digest, **run_tags(settings), **input_tags(job, settings)}
    expected["DSEN2CR_OFFSET_REMOVED"] = offset_tag(product)
    grid = scene_grid(product)
    expected["DSEN2CR_AREA"] = area_text(area_window(grid, scene_bounds(job, settings), job.s2, warn=False), grid)
    tags.setdefault("DSEN2CR_AREA", WHOLE_SCENE)  # made before --bounds: of the whole scene
    if tags.get("DSEN2CR_MASK") == "paper":
        tags.setdefault("DSEN2CR_MASK_STATISTICS", "scene")  # made before --mask-statistics: the scene's
    expected.update(resampling_tags(product, settings.resampling))
    for key, what in COMPARED.items():
        made, wanted = tags.get(key), expected.get(key)
        if key in _LATER and made is None:
            continue  # an output of a version before the tag: not known, not held against it
        if made != wanted:
            if key == "DSEN2CR_WEIGHTS_SHA256":  # each file's digest shortened (an ensemble's, one per member)
                made, wanted = (shortened_sha256(text) if text else text for text in (made, wanted))
            return f"made with {what} {made or 'not recorded'}, this run's is {wanted or 'none'}"
    return None


def finished_jobs(jobs: list[SceneJob], products: list[S2Product | None], settings: SceneSettings) -> list[bool]:
    """For each job (its S2 input resolved: ``products``), whether an earlier run finished it: every output it asks
    for exists (its STAC item may be missing) and its image records what this run would (:func:`made_otherwise`).
    A job with some of its outputs only is not finished (its outputs follow the usual rule: replaced with
    ``overwrite``, refused without), nor one whose input cannot be resolved (its run says why). One whose outputs
    all exist but were made otherwise is refused in one line, unless ``overwrite`` (then made again)."""
    finished, digest = [], None
    for job, product in zip(jobs, products, strict=True):
        computed = [path for role, path in job_outputs(job) if role != "stac_item"]  # the item is read from them
        if product is None or not all(path.is_file() for path in computed):
            finished.append(False)
            continue
        digest = digest if digest is not None else weights_digest(settings)
        differs = made_otherwise(job, product, settings, digest)
        if differs is not None and not settings.overwrite:
            raise DSen2CRError(
                f"{job.out}: exists, {differs}: --skip-existing skips only scenes made as this run would make them; "
                "pass --overwrite to replace it"
            )
        finished.append(differs is None)
    return finished
