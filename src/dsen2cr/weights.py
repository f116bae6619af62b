"""Loading and saving trained weights without unpickling arbitrary objects.

Accepted files: the project's safetensors weights (the model configuration rides in the metadata), Lightning
checkpoints of ``dsen2cr train`` (read with ``torch.load(weights_only=True)``), and (see ``dsen2cr.keras``)
the published Keras HDF5 files.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import torch

from dsen2cr.calibration import Intervals
from dsen2cr.errors import DSen2CRError
from dsen2cr.formats import describe, sniff
from dsen2cr.models import DEFAULT_FAMILY, CloudRemovalNetwork, ModelSpec, family_of, get_family
from dsen2cr.outputs.files import atomic_path, check_input_file, file_sha256
from dsen2cr.sigma_record import calibration_text, checked_sigma_scale, recorded_intervals
from dsen2cr.version import __version__

CONFIG_KEY = "dsen2cr_model_config"
#: The model family's name (absent from files written before the registry, which are all DSen2-CR).
FAMILY_KEY = "dsen2cr_model_family"
FORMAT_KEY = "format"
FORMAT_VALUE = "dsen2cr-weights-v1"
#: What made a weights file (docs/design.md §3.4): the file it was written from and that file's SHA-256, the
#: version that wrote it, and for weights of a dsen2cr training run, its record (epoch, step, loss).
SOURCE_KEY = "dsen2cr_source"
SHA256_KEY = "dsen2cr_source_sha256"
VERSION_KEY = "dsen2cr_version"
TRAINING_KEY = "dsen2cr_training"
#: A training record's (and the training task's hyperparameter's) record of the weights a fine-tuned run started
#: from (``model.init_weights``): their file's name and SHA-256.
INIT_WEIGHTS_KEY = "init_weights"
#: A calibration of the model's sigma fitted after training (``dsen2cr weights calibrate-sigma``): JSON with the
#: factor of each band (``scale``), the likelihood it was fitted by, and the data it was fitted on.
SIGMA_SCALE_KEY = "dsen2cr_sigma_scale"
#: Where ``dsen2cr train`` keeps a run's checkpoints in its folder (:func:`last_checkpoint`: the newest).
CHECKPOINT_DIR = "checkpoints"


def made_by(source: str, sha256: str | None) -> dict[str, str]:
    """The metadata that says what made a weights or ONNX file: its source (a file's name, a URL) and the
    source's SHA-256, and the version that wrote it."""
    return {SOURCE_KEY: source, SHA256_KEY: sha256 or "unknown", VERSION_KEY: __version__}


def load_model_with_provenance(path: str | Path) -> tuple[CloudRemovalNetwork, dict[str, str]]:
    """The model in a weights file (:func:`load_model_and_record`) and the metadata of a file written from it:
    :func:`made_by` the source file, and the source's training record."""
    model, record = load_model_and_record(path)
    return model, {**record, **made_by(Path(path).name, file_sha256(Path(path)))}


def last_checkpoint(run: str | Path) -> Path:
    """The checkpoint ``dsen2cr train`` writes last into the run folder ``run`` (Lightning's ``last.ckpt``)."""
    return Path(run) / CHECKPOINT_DIR / "last.ckpt"


#: How outputs name the likelihood that trained a model's sigma (``DSEN2CR_LIKELIHOOD``).
LIKELIHOOD_NAMES = {"gnll": "gnll (Gaussian)", "lnll": "lnll (Laplace)"}


def recorded_likelihood(record: dict[str, str]) -> str | None:
    """The likelihood loss (:data:`LIKELIHOOD_NAMES`' description) that a training record (metadata with
    :data:`TRAINING_KEY`) names, or None (no record, or a loss that is no likelihood)."""
    try:
        name = json.loads(record[TRAINING_KEY])["loss"]["name"]
    except (KeyError, TypeError, ValueError):
        return None
    return LIKELIHOOD_NAMES.get(name) if isinstance(name, str) else None


def newest_checkpoint(run: str | Path) -> Path | None:
    """The newest complete checkpoint in the run folder ``run`` (None if it holds none): by modification time,
    ``last.ckpt`` first among equals. (``last.ckpt`` may be older than the newest epoch's when its own write found
    the disk full.)"""
    found = list((Path(run) / CHECKPOINT_DIR).glob("*.ckpt"))
    return max(found, key=lambda path: (path.stat().st_mtime_ns, path.name == "last.ckpt"), default=None)


def save_weights(model: CloudRemovalNetwork, path: str | Path, *, provenance: dict[str, str] | None = None) -> Path:
    """Write a model's weights and configuration to a safetensors file, atomically (``provenance``: more
    metadata, e.g. where the weights came from)."""
    from safetensors.torch import save

    state = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    config = model.config
    metadata = {
        **(provenance or {}),
        FORMAT_KEY: FORMAT_VALUE,
        CONFIG_KEY: json.dumps(config.to_dict()),
        FAMILY_KEY: family_of(config).name,
    }
    with atomic_path(path) as tmp:
        tmp.write_bytes(_sorted_header(save(state, metadata=metadata)))
    return Path(path)


def _sorted_header(blob: bytes) -> bytes:
    """A safetensors file with its JSON header's keys sorted: safetensors writes the metadata in a random order
    (its issue #584), so two saves of one model differed in bytes and SHA-256. The data offsets are relative to
    the data, so only the header changes; it is padded with spaces so that the data stays 8-byte aligned."""
    length = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + length])
    text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + blob[8 + length :]


def config_from_metadata(raw: Any, path: Path | str, family: Any = None) -> ModelSpec:
    """Validate a stored model configuration (JSON text or a dict) with its family's rules; ``family`` is the
    stored family name (None, as in every file written before the registry: DSen2-CR)."""
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except (json.JSONDecodeError, RecursionError):
            raise DSen2CRError(f"{path}: stored model configuration is not valid JSON") from None
    name = DEFAULT_FAMILY if family is None else family
    if not isinstance(name, str):
        raise DSen2CRError(f"{path}: stored model family must be a name, got {name!r}")
    return get_family(name, str(path)).config_from_dict(raw, str(path))


def check_state(config: ModelSpec, state: dict[str, Any], path: Path) -> None:
    """Refuse, before the network is built, a state dict that does not hold exactly the tensors of ``config``
    (names and shapes), or holds a non-finite value (naming the tensor)."""
    expected = expected_shapes(config)
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        detail = f"missing {missing[0]}" if missing else f"unexpected {extra[0]}"
        raise DSen2CRError(
            f"{path}: weights do not fit the stored configuration ({config.describe()}): {detail} "
            f"({len(state)} tensors, expected {len(expected)})"
        )
    for name, shape in expected.items():
        tensor = state[name]
        if not isinstance(tensor, torch.Tensor) or tuple(tensor.shape) != shape:
            got = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
            raise DSen2CRError(f"{path}: tensor {name} has shape {got}, expected {shape} for {config.describe()}")
        if not tensor.is_floating_point():
            raise DSen2CRError(f"{path}: tensor {name} is {tensor.dtype}, expected floating point")
        if not bool(torch.isfinite(tensor).all()):
            raise DSen2CRError(f"{path}: tensor {name} holds NaN or infinite values; refusing these weights")


def expected_shapes(config: ModelSpec) -> dict[str, tuple[int, ...]]:
    """The state-dict names and shapes of a network of ``config``, from a network built on the meta device (no
    memory for its weights, whatever its family)."""
    with torch.device("meta"):
        model = config.build()
    return {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}


def _load_safetensors(path: Path) -> tuple[ModelSpec, dict[str, torch.Tensor], dict[str, str]]:
    """Read config, state dict and training record (:data:`TRAINING_KEY`, if any) from a safetensors file."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as file:
            metadata = file.metadata() or {}
            state = {key: file.get_tensor(key) for key in file.keys()}  # noqa: SIM118 (safe_open has no iter)
    except (SafetensorError, OSError, ValueError) as error:
        raise DSen2CRError(f"{path}: not a readable safetensors file ({' '.join(str(error).split())})") from None
    record = {key: metadata[key] for key in (TRAINING_KEY, SIGMA_SCALE_KEY) if key in metadata}
    return config_from_metadata(metadata.get(CONFIG_KEY), path, metadata.get(FAMILY_KEY)), state, record


def _load_lightning_checkpoint(path: Path) -> tuple[ModelSpec, dict[str, torch.Tensor], dict[str, str]]:
    """Read config, model state dict and training record from a Lightning checkpoint, refusing pickled objects
    and archives that would inflate far beyond their size on disk."""
    _check_inflation(path)
    try:
        with path.open("rb") as file:  # a file object: torch must not go by the name (it reads *.safetensors itself)
            checkpoint = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else "unsafe content"
        raise DSen2CRError(
            f"{path}: refused to load, the checkpoint holds objects other than tensors and plain data ({first_line})"
        ) from None
    except (RuntimeError, EOFError, OSError) as error:
        raise DSen2CRError(f"{path}: not a readable checkpoint ({' '.join(str(error).split())[:200]})") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise DSen2CRError(f"{path}: not a dsen2cr training checkpoint (no state_dict)")
    config = config_from_metadata(checkpoint.get(CONFIG_KEY), path, checkpoint.get(FAMILY_KEY))
    if not isinstance(checkpoint["state_dict"], dict):
        raise DSen2CRError(f"{path}: state_dict is a {type(checkpoint['state_dict']).__name__}, expected a mapping")
    state = {k[len("model.") :]: v for k, v in checkpoint["state_dict"].items() if str(k).startswith("model.")}
    return config, state, _training_record(checkpoint)


#: A training checkpoint's record of the processes that saved it (a mid-epoch one continues only on as many).
WORLD_SIZE_KEY = "dsen2cr_world_size"
#: A training checkpoint's record of the arithmetic each start of its run trained in, read inside the run (the
#: training record's ``arithmetic``: :func:`dsen2cr.training.module.observed_arithmetic`).
ARITHMETIC_KEY = "dsen2cr_arithmetic"


def loop_position(epochs: dict[str, int], batches: dict[str, int]) -> tuple[int, int]:
    """Where a fit loop stands, from its epoch and batch progress (the ``current`` counters, as a Lightning
    checkpoint holds them): the epochs finished, and the batches of the next already trained (0 at an epoch's start
    or end; saved at a batch's end, that batch counts, as Lightning counts it on restoring; else the completed)."""
    if epochs["started"] <= epochs["processed"]:
        return epochs["processed"], 0
    at_batch_end = batches["started"] == batches["processed"] == batches["completed"] + 1
    return epochs["processed"], batches["processed"] if at_batch_end else batches["completed"]


def checkpoint_position(checkpoint: dict[str, Any]) -> tuple[int, int]:
    """:func:`loop_position` of a Lightning checkpoint (a SLURM requeue's is saved in the middle of its epoch);
    one without the loop's state has finished the epochs its epoch number says."""
    try:
        loop = checkpoint["loops"]["fit_loop"]
        return loop_position(loop["epoch_progress"]["current"], loop["epoch_loop.batch_progress"]["current"])
    except (KeyError, TypeError):
        epoch = checkpoint.get("epoch")
        return (epoch + 1 if isinstance(epoch, int) else 0), 0


def progress_phrase(epochs: int, batches: int = 0) -> str:
    """How far a run had come, for messages: ``2 epochs``, ``1 epoch and 3 batches``."""
    phrase = f"{epochs} epoch{'s' if epochs != 1 else ''}"
    return f"{phrase} and {batches} batch{'es' if batches != 1 else ''}" if batches else phrase


def _training_record(checkpoint: dict[str, Any]) -> dict[str, str]:
    """The record of a dsen2cr training checkpoint: the epoch it was saved at (0-based, as its file name), the
    epochs it finished and, saved mid-epoch, the batches of the next, the optimiser steps, the loss settings and
    the data it trained on, the weights it started from and the arithmetic it computed in (empty for a checkpoint
    without them)."""
    settings = checkpoint.get("hyper_parameters")
    if not isinstance(settings, dict) or not isinstance(settings.get("loss"), dict):
        return {}
    record = {"epoch": checkpoint.get("epoch"), "global_step": checkpoint.get("global_step"), "loss": settings["loss"]}
    record["finished_epochs"], batches = checkpoint_position(checkpoint)
    if batches:
        record["epoch_batches"] = batches
    if isinstance(settings.get("data"), dict):  # what it trained on (checkpoints of earlier versions lack it)
        record["data"] = settings["data"]
    if isinstance(settings.get(INIT_WEIGHTS_KEY), dict):  # the weights it started from (model.init_weights)
        record[INIT_WEIGHTS_KEY] = settings[INIT_WEIGHTS_KEY]
    # what it computed in (checkpoints of earlier versions lack it)
    if isinstance(checkpoint.get(ARITHMETIC_KEY), list):
        record["arithmetic"] = checkpoint[ARITHMETIC_KEY]
    return {TRAINING_KEY: json.dumps(record, sort_keys=True)}


#: torch.save stores its archive members uncompressed; a checkpoint whose members inflate to more than this
#: factor of the file (plus a margin) was not written by torch, and is refused before it is read.
MAX_INFLATION = 2.0


def _check_inflation(path: Path) -> None:
    """Refuse a zip checkpoint whose members would inflate beyond ``MAX_INFLATION`` x its size on disk."""
    import zipfile

    if not zipfile.is_zipfile(path):
        return  # torch's legacy format, or not a checkpoint: torch.load reports it
    try:
        with zipfile.ZipFile(path) as archive:
            inflated = sum(member.file_size for member in archive.infolist())
    except (zipfile.BadZipFile, OSError) as error:
        raise DSen2CRError(f"{path}: not a readable checkpoint ({error})") from None
    on_disk = path.stat().st_size
    if inflated > MAX_INFLATION * on_disk + 2**26:
        raise DSen2CRError(
            f"{path}: refused, its {on_disk / 2**20:.1f} MiB would inflate to {inflated / 2**20:.0f} MiB "
            "(torch checkpoints are stored uncompressed)"
        )


#: What a weights file's name promises, for the message when its content is something else.
NAMED_KINDS = {
    ".h5": "not an HDF5 file",
    ".hdf5": "not an HDF5 file",
    ".safetensors": "not a readable safetensors file",
    ".ckpt": "not a readable checkpoint",
    # an ensemble file (dsen2cr.ensemble_file) names several networks' weights
    ".json": "an ensemble file, not one network's weights; --weights of evaluate and remove-clouds runs it",
}


def check_weights_file(path: str | Path, what: str) -> Path:
    """``path`` as a Path if it is a regular file (:func:`~dsen2cr.outputs.files.check_input_file`, ``what``
    naming the kind); a training run's folder is told the checkpoint to give instead."""
    last = last_checkpoint(path)
    if last.is_file():
        raise DSen2CRError(
            f"{path}: is a training run's folder, not a weights file; give one of its checkpoints, e.g. {last}"
        )
    return check_input_file(path, what)


def load_model(
    path: str | Path, *, device: str | torch.device = "cpu", expected: ModelSpec | None = None
) -> CloudRemovalNetwork:
    """Build the model stored in ``path`` (safetensors weights, Lightning checkpoint or Keras HDF5), in eval mode.

    With ``expected``, weights of another variant are refused, naming both.
    """
    return load_model_and_record(path, device=device, expected=expected)[0]


def load_model_and_record(
    path: str | Path, *, device: str | torch.device = "cpu", expected: ModelSpec | None = None
) -> tuple[CloudRemovalNetwork, dict[str, str]]:
    """:func:`load_model`, and the file's training record (metadata for :func:`save_weights`; empty for a Keras
    file or weights without one)."""
    path = check_weights_file(path, "weights")
    kind = sniff(path)  # by content: a name can be wrong (a safetensors file named .ckpt, a .pth checkpoint)
    record: dict[str, str] = {}
    if kind == "hdf5":
        from dsen2cr.keras import load_keras_weights  # (lazy: h5py only for Keras files)

        config, state = load_keras_weights(path)
    elif kind == "pytorch":
        config, state, record = _load_lightning_checkpoint(path)
    elif kind == "safetensors":
        config, state, record = _load_safetensors(path)
    elif path.suffix.lower() in NAMED_KINDS:
        raise DSen2CRError(f"{path}: {NAMED_KINDS[path.suffix.lower()]} (it holds {describe(kind)})")
    else:
        raise DSen2CRError(
            f"{path}: holds {describe(kind)}, not weights dsen2cr reads (safetensors from dsen2cr export, a "
            "checkpoint of dsen2cr train, a Keras HDF5 file; ONNX files run with --weights of remove-clouds and "
            "evaluate)"
        )
    if expected is not None and config != expected:
        raise DSen2CRError(f"{path}: holds a {config.describe()} model, but {expected.describe()} was asked for")
    check_state(config, state, path)
    model = config.build()
    model.load_state_dict(state, strict=True)
    if SIGMA_SCALE_KEY in record:
        model.set_sigma_scale(recorded_sigma_scale(record, path, model.config.uncertainty)["scale"])
    return model.to(device).eval(), record


def recorded_sigma_scale(record: dict[str, str], path: Path | str, uncertainty: str = "diag") -> dict[str, Any]:
    """The sigma calibration a weights file's metadata holds (:data:`SIGMA_SCALE_KEY`: ``scale``, one factor per
    S2 band, and what it was fitted by and on), checked: a one-line error naming ``path`` otherwise."""
    try:
        value = json.loads(record[SIGMA_SCALE_KEY])
    except (json.JSONDecodeError, RecursionError, TypeError):
        raise DSen2CRError(f"{path}: stored sigma scale ({SIGMA_SCALE_KEY}) is not valid JSON") from None
    checked = checked_sigma_scale(value, path)
    if uncertainty != "diag":
        raise DSen2CRError(f"{path}: holds a sigma scale, but its model predicts no sigma (model.uncertainty: none)")
    return checked


def recorded_sigma_calibration(record: dict[str, str], path: Path | str) -> tuple[str | None, Intervals]:
    """A weights file's sigma calibration as outputs name it (``DSEN2CR_SIGMA_CALIBRATION``: the factors' range and
    what they were fitted on; None when it has none, sigma as trained) and the intervals it measured where it was
    fitted (share of the values, each band's multiple of sigma; none without, or written before they were), from
    one reading of the record."""
    if SIGMA_SCALE_KEY not in record:
        return None, ()
    stored = recorded_sigma_scale(record, path)
    return calibration_text(stored), recorded_intervals(stored)
