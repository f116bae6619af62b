"""What a scene's job can be refused for before any input is opened: its outputs (writable, of the right kind,
replacing no input and not each other), a missing S1, and ``--uncertainty-out`` with weights or settings that
cannot give it; and once its grid is known, before any window, the room its outputs take while written."""

from __future__ import annotations

from pathlib import Path

from dsen2cr.errors import DSen2CRError
from dsen2cr.inputs import S2Product, local_inputs
from dsen2cr.inputs.s1_time import check_s1_gap, s1_sensing_time
from dsen2cr.outputs.cog_stream import streams
from dsen2cr.outputs.files import check_distinct_outputs, check_output_file
from dsen2cr.outputs.room import StagedOutput, check_room, staged_bytes
from dsen2cr.precision import HALF_DTYPES
from dsen2cr.predictor import ONE_MODEL_HAS_NO_PARTS, Predictor
from dsen2cr.scene.stac_item import check_stac_item
from dsen2cr.settings import SceneJob, SceneSettings

#: What each output of a scene holds (its name must say so; see dsen2cr.outputs.files.check_output_file).
OUTPUT_KINDS = {
    "out": "geotiff",
    "mask_out": "geotiff",
    "preview": "png",
    "uncertainty_out": "geotiff",
    "stac_item": "json",
}


def job_outputs(job: SceneJob) -> list[tuple[str, Path]]:
    """The outputs a job writes, as ``(role, path)``: ``out``, and ``mask_out``, ``preview``,
    ``uncertainty_out`` and ``stac_item`` when asked."""
    named = [("out", job.out), ("mask_out", job.mask_out), ("preview", job.preview)]
    named += [("uncertainty_out", job.uncertainty_out), ("stac_item", job.stac_item)]
    return [(role, path) for role, path in named if path is not None]


def check_job(predictor: Predictor, job: SceneJob, settings: SceneSettings, product: S2Product) -> None:
    """What can be refused before any input is opened: outputs that cannot be written or would replace an
    input (any file the scene reads) or each other, a missing S1, a STAC item of a scene whose sensing time is
    unknown, S1 sensed further from the scene than ``--s1-max-days`` (or at a time nothing says, then)."""
    check_distinct_outputs(job_outputs(job), local_inputs(job.s2, job.s1, product))
    for role, path in job_outputs(job):
        check_output_file(path, overwrite=settings.overwrite, kind=OUTPUT_KINDS[role])
    check_stac_item(job, product)
    if job.uncertainty_out is not None:
        check_uncertainty_output(
            f"{job.uncertainty_out}: --uncertainty-out", predictor.uncertainty, predictor.weights, settings
        )
        if settings.uncertainty_parts:
            check_uncertainty_parts(predictor.member_uncertainties, predictor.weights)
    if predictor.include_sar and job.s1 is None:
        raise DSen2CRError(
            f"{job.s2}: these weights need SAR input; pass --s1 (an s1 in the job in Python): VV, VH in dB on or "
            "near the S2 grid"
        )
    if predictor.include_sar:
        check_s1_date(job, product, settings)


def check_s1_date(job: SceneJob, product: S2Product, settings: SceneSettings) -> None:
    """``--s1-max-days``: refuse S1 sensed further from the scene (or when either date is unknown); nothing
    without the option or without S1."""
    if job.s1 is not None and settings.s1_max_days is not None:
        check_s1_gap(job.s2, job.s1, product.sensing_time, s1_sensing_time(job.s1), settings.s1_max_days)


def check_settings_fit(predictor: Predictor, settings: SceneSettings) -> None:
    """Refuse run settings that a predictor given ready-made would ignore: it runs as loaded, so ``weights``,
    ``backend``, ``precision`` and ``device`` are chosen in :func:`~dsen2cr.predictor.load_predictor`; ``auto``
    or the predictor's own value pass."""
    loaded = {"backend": predictor.backend, "precision": predictor.precision, "device": _device(predictor.device)}
    asked = {"weights": settings.weights, "backend": settings.backend, "precision": settings.precision}
    asked["device"] = settings.device
    for name, value in asked.items():
        if value in (None, "auto") or (_device(value) if name == "device" else value) == loaded.get(name):
            continue
        raise DSen2CRError(
            f"{name} {value}: remove_clouds runs the predictor as loaded ({predictor.backend}, "
            f"{predictor.precision} on {predictor.device}); choose {name} in load_predictor, or leave it auto"
        )


def _device(device: object) -> str:
    """A device's name, ``cuda`` and ``cuda:0`` alike (a process's first GPU), ``cpu`` and ``cpu:0`` alike."""
    name = str(device)
    return {"cuda": "cuda:0", "cpu:0": "cpu"}.get(name, name)


def check_uncertainty_output(asked: str, uncertainty: str, weights: str | None, settings: SceneSettings) -> None:
    """σ, as ``asked`` for it (``sigma.tif: --uncertainty-out``; ``uncertainty=True`` in Python), needs weights
    with a variance output (``uncertainty`` ``diag``: an ONNX file exported from such a model has it), run
    eagerly: the variance comes from the PyTorch model in fp32 or TF32 (neither a compiled backend nor fp16 or
    bf16 gives it), or from an ONNX file's own output."""
    if uncertainty != "diag":
        raise DSen2CRError(
            f"{asked} needs weights that predict their uncertainty (trained with "
            f"model.uncertainty=diag); {weights or 'this model'} predicts none"
        )
    if settings.backend not in ("auto", "eager", "onnxruntime") or settings.precision in HALF_DTYPES:
        raise DSen2CRError(
            f"{asked} runs the model eagerly in fp32 (or tf32), an ONNX file with onnxruntime; "
            "leave --backend auto, eager or onnxruntime and --precision auto, fp32 or tf32 (got --backend "
            f"{settings.backend}, --precision {settings.precision})"
        )


def check_uncertainty_parts(member_uncertainties: list[str] | None, weights: str | None) -> None:
    """``--uncertainty-parts`` needs an ensemble (``member_uncertainties``: its members' ``uncertainty``; None
    for one model, whose variance is all aleatoric) of which a member predicts a variance (else the aleatoric
    part is unknown and the sigma all epistemic)."""
    if member_uncertainties is None:
        raise DSen2CRError(f"--uncertainty-parts: {weights or 'this model'}: {ONE_MODEL_HAS_NO_PARTS}")
    if "diag" not in member_uncertainties:
        raise DSen2CRError(
            "--uncertainty-parts: no member of the ensemble predicts its variance (model.uncertainty=diag), so "
            "the aleatoric part is unknown; its sigma is the members' disagreement alone, all epistemic, which "
            "--uncertainty-out writes without the option"
        )


def sigma_band_count(bands: int, settings: SceneSettings) -> int:
    """The sigma file's bands for an image of ``bands``: the total sigma's, then with ``--uncertainty-parts``
    the aleatoric and the epistemic sigma's."""
    return 3 * bands if settings.uncertainty_parts else bands


def check_scene_room(
    job: SceneJob, height: int, width: int, bands: int, settings: SceneSettings, stream: bool, journal_bytes: int = 0
) -> None:
    """Refuse a scene whose COGs (``bands`` of uint16, a uint8 map, ``bands`` of float32 sigma) cannot be
    staged in their folders, warn where they may not fit with their COGs (:func:`dsen2cr.outputs.room.check_room`);
    ``stream``: the COGs are to be compressed while written (where the options allow it); ``journal_bytes``: what
    the scene's journal writes beside the image, counted with them."""
    options = settings.cog_options()
    sigma_bands = sigma_band_count(bands, settings)
    kinds = [(job.out, bands, "uint16"), (job.mask_out, 1, "uint8"), (job.uncertainty_out, sigma_bands, "float32")]
    check_room(
        [
            StagedOutput(Path(path), staged_bytes(height, width, count, dtype), stream and streams(options, dtype))
            for path, count, dtype in kinds
            if path is not None
        ]
        + ([StagedOutput(Path(job.out), journal_bytes, False)] if journal_bytes else [])
    )
