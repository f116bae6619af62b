"""What a weights file holds and what made it (``dsen2cr weights info``): its kind, SHA-256, model and size, and
the provenance that exports record (source file, version, training record with its data; an int8 file's
calibration), read from any file ``--weights`` takes."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dsen2cr.ensemble_file import is_ensemble_file, read_ensemble_file
from dsen2cr.formats import sniff
from dsen2cr.models import VARIANTS, ModelSpec, family_of
from dsen2cr.outputs.files import check_input_file, file_sha256
from dsen2cr.precision import FLOAT32_WORDS
from dsen2cr.sigma_record import recorded_intervals, recorded_region_words, training_ground_words
from dsen2cr.weights import (
    INIT_WEIGHTS_KEY,
    SHA256_KEY,
    SIGMA_SCALE_KEY,
    SOURCE_KEY,
    TRAINING_KEY,
    VERSION_KEY,
    load_model_and_record,
    progress_phrase,
    recorded_sigma_scale,
)

#: The kinds of weights file, by content.
KINDS = {"safetensors": "safetensors weights", "pytorch": "Lightning checkpoint", "hdf5": "Keras HDF5"}


@dataclass(frozen=True)
class WeightsInfo:
    """A weights file's description: ``provenance`` holds what made it, as recorded (``source``,
    ``source_sha256``, ``version``, ``training``, for int8 ONNX files ``int8_calibration``, for weights whose
    sigma was calibrated ``sigma_scale``; absent keys were
    not recorded)."""

    file: str
    kind: str
    sha256: str
    model: str
    parameters: int
    variant: str | None = None  # the registry's variant of that configuration, if any
    precision: str = "fp32"
    provenance: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The description as JSON-ready data."""
        return asdict(self)


def weights_info(path: str | Path) -> WeightsInfo:
    """Describe the weights file ``path`` (safetensors, Lightning checkpoint, Keras HDF5 or ONNX), loading it as
    ``--weights`` does, so that a file it would refuse is refused here with the same message."""
    path = check_input_file(path, "weights")
    if path.suffix.lower() == ".onnx":
        return _onnx_info(path)
    if is_ensemble_file(path):
        return _ensemble_info(path)
    model, record = load_model_and_record(path)
    kind = sniff(path)
    metadata = _safetensors_metadata(path) if kind == "safetensors" else dict(record)
    return _describe(path, KINDS.get(kind, kind), model.config, "fp32", metadata)


def _onnx_info(path: Path) -> WeightsInfo:
    """An exported ONNX file (fp32 or int8): its model configuration and records are its metadata."""
    from dsen2cr.onnx_export import CALIBRATION_KEY
    from dsen2cr.onnx_runtime import OnnxPredictor

    onnx = OnnxPredictor(path)
    metadata = dict(onnx.session.get_modelmeta().custom_metadata_map)
    if CALIBRATION_KEY in metadata:
        metadata["int8_calibration"] = metadata.pop(CALIBRATION_KEY)
    return _describe(path, "ONNX model", onnx.config, onnx.precision, metadata)


def _ensemble_info(path: Path) -> WeightsInfo:
    """An ensemble file: its members' models (each described as its own file is), their files and SHA-256, and
    the ensemble's sigma scale."""
    ensemble = read_ensemble_file(path)
    members = [weights_info(member) for member in ensemble.members]
    listed = [
        {"file": str(member), "sha256": info.sha256} for member, info in zip(ensemble.members, members, strict=True)
    ]
    return WeightsInfo(
        file=path.name,
        kind="ensemble file",
        sha256=ensemble.sha256,
        model=f"ensemble of {len(members)} ({'; '.join(sorted({info.model for info in members}))})",
        parameters=sum(info.parameters for info in members),
        precision="/".join(dict.fromkeys(info.precision for info in members)),
        provenance={"members": listed, "sigma_scale": ensemble.sigma_scale},
    )


def _safetensors_metadata(path: Path) -> dict[str, str]:
    """A safetensors file's metadata (the header's strings)."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as weights:
        return dict(weights.metadata() or {})


def _describe(path: Path, kind: str, config: ModelSpec, precision: str, metadata: dict[str, str]) -> WeightsInfo:
    """The description of a loaded file from its configuration and metadata."""
    names = {SOURCE_KEY: "source", SHA256_KEY: "source_sha256", VERSION_KEY: "version", TRAINING_KEY: "training"}
    names["int8_calibration"] = "int8_calibration"
    provenance: dict[str, Any] = {}
    for key, name in names.items():
        if key in metadata:
            provenance[name] = _json_or_text(metadata[key])
    if SIGMA_SCALE_KEY in metadata:  # checked as --weights checks it (an ONNX file's too, which is not loaded here)
        provenance["sigma_scale"] = recorded_sigma_scale(metadata, path)
    variant = next((v.name for v in VARIANTS.values() if v.config == config), None)
    return WeightsInfo(
        file=path.name,
        kind=kind,
        sha256=file_sha256(path) or "unknown",  # read once already: None only if it vanished since
        model=f"{family_of(config).name} {config.describe()}",
        parameters=config.build_parameter_count(),
        variant=variant,
        precision=precision,
        provenance=provenance,
    )


def _json_or_text(value: str) -> Any:
    """A metadata value: its JSON when it is a JSON object, else the text."""
    try:
        parsed = json.loads(value)
    except ValueError:
        return value
    return parsed if isinstance(parsed, dict) else value


def info_lines(info: WeightsInfo) -> list[str]:
    """The description as lines for people: the file, its model, and what made it."""
    variant = f", variant {info.variant}" if info.variant else ""
    lines = [
        f"{info.file}: {info.kind}, {info.precision}, SHA-256 {info.sha256}",
        f"  model: {info.model} ({info.parameters:,} parameters{variant})",
    ]
    made = info.provenance
    for member in made.get("members", []):  # an ensemble file's
        lines.append(f"  member: {member['file']} (SHA-256 {member['sha256']})")
    if "source" in made or "version" in made:
        source = f" from {made['source']} (SHA-256 {made.get('source_sha256', 'unknown')})" if "source" in made else ""
        lines.append(f"  written by: dsen2cr {made.get('version', 'unknown version')}{source}")
    training = made.get("training")
    if isinstance(training, dict):
        lines.append("  " + _training_line(training))
        if isinstance(training.get("data"), dict):
            lines.append("  " + _data_line(training["data"]))
        starts = training.get("arithmetic")  # absent in earlier files
        if isinstance(starts, list) and starts and all(isinstance(start, dict) for start in starts):
            lines.append("  arithmetic: " + arithmetic_words(starts))
        start = training.get(INIT_WEIGHTS_KEY)
        if isinstance(start, dict):  # model.init_weights: fine-tuned from these
            fresh = f", {start['fresh']} new" if start.get("fresh") else ""
            lines.append(f"  started from: {start.get('file')} (SHA-256 {start.get('sha256')}){fresh}")
    elif "training" not in made and "members" not in made:
        lines.append("  training: not recorded (a Keras file, or weights saved without a training run's record)")
    calibration = made.get("int8_calibration")
    if isinstance(calibration, dict):
        lines.append(
            f"  int8 calibration: {calibration.get('method')} on {calibration.get('crops')} crops of "
            f"{calibration.get('patches')} patches ({calibration.get('file_list')})"
        )
    scale = made.get("sigma_scale")  # checked when described
    if scale is not None:
        factors = ", ".join(f"{k:.3g}" for k in scale["scale"])
        lines.append(
            f"  sigma calibrated: x {factors} (per band), fitted by {scale.get('likelihood')} on {scale.get('data')} "
            f"({scale.get('values')} values{recorded_region_words(scale)}{training_ground_words(scale)})"
        )
        for level, multiples in recorded_intervals(scale):
            each = ", ".join(f"{m:.3g}" for m in multiples)
            lines.append(
                f"  sigma interval, where fitted: {100 * level:g} % of values within +- {each} sigma (per band)"
            )
    return lines


def _training_line(training: dict[str, Any]) -> str:
    """The training record: when it was saved and the loss (its name, then its settings)."""
    epoch, steps = training.get("epoch"), training.get("global_step")
    finished = training.get("finished_epochs", epoch + 1 if isinstance(epoch, int) else None)  # earlier records
    batches = training.get("epoch_batches", 0)  # saved mid-epoch (a SLURM requeue's)
    if isinstance(finished, int) and isinstance(batches, int):
        when = f"after {progress_phrase(finished, batches)} ({steps} optimiser step{'' if steps == 1 else 's'})"
    else:
        when = "at an unknown epoch"
    loss = dict(training.get("loss") or {})
    name = loss.pop("name", "not recorded")
    return f"training: saved {when}; loss {name}" + (f" ({_pairs(loss)})" if loss else "")


def arithmetic_words(starts: list[dict[str, Any]]) -> str:
    """What a run trained in, from its record's ``arithmetic`` (each start that computed otherwise, from where it
    started): ``IEEE fp32 convolutions and matmuls (trainer.precision 32-true) on cpu, 1 process, torch …``;
    several, or one that started later than the run (earlier ones unrecorded), each ``from epoch N: …``."""
    if len(starts) == 1 and (starts[0].get("from_epoch"), starts[0].get("from_batch")) == (0, 0):
        return start_words(starts[0])
    said = []
    for start in starts:
        epoch, batch = start.get("from_epoch"), start.get("from_batch")
        where = f"from epoch {epoch + 1}" if isinstance(epoch, int) else "from an unknown epoch"
        said.append(
            where + (f" batch {batch + 1}" if isinstance(batch, int) and batch else "") + ": " + start_words(start)
        )
    return "; ".join(said)


def start_words(start: dict[str, Any]) -> str:
    """One start of a run's arithmetic in words (what a run says as it starts)."""
    convolutions, matmuls = (
        FLOAT32_WORDS.get(str(start.get(k)), str(start.get(k))) for k in ("convolutions", "matmuls")
    )
    both = (
        f"{convolutions} convolutions and matmuls"
        if convolutions == matmuls
        else f"{convolutions} convolutions, {matmuls} matmuls"
    )
    precision, processes = start.get("precision"), start.get("processes")
    how = (
        f"{both} (trainer.precision {precision})"
        if precision == "32-true"
        else f"{precision} (16-bit autocast; the rest {both})"
    )
    return f"{how} on {start.get('device')}, {processes} process{'es' * (processes != 1)}, torch {start.get('torch')}"


def _data_line(data: dict[str, Any]) -> str:
    """The data of the training record."""
    splits = []
    for split in ("train", "val"):
        count = data.get(f"{split}_patches")
        noun = "patch" if count == 1 else "patches"
        splits.append(f"{split} {count} {noun} (their ids' SHA-256 {data.get(f'{split}_patches_sha256')})")
    if beside := data.get("val_in_training_rois"):  # absent in earlier files: not known
        splits[-1] += f", {beside} of them in ROIs training patches come from (its validation scores flatter it)"
    drawn = _pairs({k: data[k] for k in ("crop_size", "augment", "repeats", "seed") if k in data})
    return f"data: {data.get('files', 'unknown')}; {', '.join(splits)}; {drawn}"


def _pairs(values: dict[str, Any]) -> str:
    """``key value`` pairs, comma-separated."""
    return ", ".join(f"{key} {value}" for key, value in values.items())
