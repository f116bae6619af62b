"""Loading and saving trained weights without unpickling arbitrary objects.

Accepted files: the project's safetensors weights (the model configuration rides in the metadata), Lightning
checkpoints of ``dsen2cr train`` (read with ``torch.load(weights_only=True)``), and (see ``dsen2cr.keras``)
the published Keras HDF5 files.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pickle
from pathlib import Path
from typing import Any

import torch

from dsen2cr.errors import DSen2CRError
from dsen2cr.files import atomic_path, check_input_file
from dsen2cr.model import DSen2CR, ModelConfig
from dsen2cr.preprocessing import NUM_S1_BANDS, NUM_S2_BANDS

CONFIG_KEY = "dsen2cr_model_config"
FORMAT_KEY = "format"
FORMAT_VALUE = "dsen2cr-weights-v1"


def save_weights(model: DSen2CR, path: str | Path, *, provenance: dict[str, str] | None = None) -> Path:
    """Write a model's weights and configuration to a safetensors file, atomically (``provenance``: more
    metadata, e.g. where the weights came from)."""
    from safetensors.torch import save_file

    state = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    metadata = {**(provenance or {}), FORMAT_KEY: FORMAT_VALUE, CONFIG_KEY: json.dumps(model.config.to_dict())}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=metadata)
    return Path(path)


#: The largest networks a weights file or a config may describe: 16x the paper's depth, 16x its width. Checked
#: before anything is built, so a file declaring a million blocks is refused instead of allocated.
MAX_BLOCKS = 256
MAX_FEATURES = 4096


def validate_model_config(raw: Any, where: str) -> ModelConfig:
    """A ``ModelConfig`` from stored values, each of the exact type and within bounds (``where`` names the file
    or config key in the messages): integers for the sizes (not ``"4"`` or ``32.0``), a boolean for SAR, a
    finite number for the residual scaling."""
    if not isinstance(raw, dict):
        raise DSen2CRError(f"{where}: no dsen2cr model configuration in this file")
    fields = {f.name: f for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise DSen2CRError(f"{where}: stored model configuration has unknown key {unknown[0]!r}")
    values = {name: raw.get(name, field.default) for name, field in fields.items()}
    for name in ("num_blocks", "num_features"):
        if not isinstance(values[name], int) or isinstance(values[name], bool):
            raise DSen2CRError(f"{where}: model configuration {name} must be an integer, got {values[name]!r}")
    if not 0 <= values["num_blocks"] <= MAX_BLOCKS:
        raise DSen2CRError(f"{where}: num_blocks must be in [0, {MAX_BLOCKS}], got {values['num_blocks']}")
    if not 1 <= values["num_features"] <= MAX_FEATURES:
        raise DSen2CRError(f"{where}: num_features must be in [1, {MAX_FEATURES}], got {values['num_features']}")
    if not isinstance(values["include_sar"], bool):
        raise DSen2CRError(
            f"{where}: model configuration include_sar must be true or false, got {values['include_sar']!r}"
        )
    scale = values["res_scale"]
    if isinstance(scale, bool) or not isinstance(scale, int | float) or not math.isfinite(scale):
        raise DSen2CRError(f"{where}: model configuration res_scale must be a finite number, got {scale!r}")
    return ModelConfig(values["num_blocks"], values["num_features"], values["include_sar"], float(scale))


def config_from_metadata(raw: Any, path: Path | str) -> ModelConfig:
    """Validate a stored model configuration (JSON text or a dict)."""
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except (json.JSONDecodeError, RecursionError):
            raise DSen2CRError(f"{path}: stored model configuration is not valid JSON") from None
    return validate_model_config(raw, str(path))


def check_state(config: ModelConfig, state: dict[str, Any], path: Path) -> None:
    """Refuse, before the network is built, a state dict that does not hold exactly the tensors of ``config``
    (names and shapes), or holds a non-finite value (naming the tensor)."""
    expected = expected_shapes(config)
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        detail = f"missing {missing[0]}" if missing else f"unexpected {extra[0]}"
        raise DSen2CRError(
            f"{path}: weights do not fit the stored configuration ({_describe(config)}): {detail} "
            f"({len(state)} tensors, expected {len(expected)})"
        )
    for name, shape in expected.items():
        tensor = state[name]
        if not isinstance(tensor, torch.Tensor) or tuple(tensor.shape) != shape:
            got = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
            raise DSen2CRError(f"{path}: tensor {name} has shape {got}, expected {shape} for {_describe(config)}")
        if not tensor.is_floating_point():
            raise DSen2CRError(f"{path}: tensor {name} is {tensor.dtype}, expected floating point")
        if not bool(torch.isfinite(tensor).all()):
            raise DSen2CRError(f"{path}: tensor {name} holds NaN or infinite values; refusing these weights")


def expected_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """The state-dict names and shapes of a network of ``config`` (computed, nothing built)."""
    inputs = NUM_S2_BANDS + (NUM_S1_BANDS if config.include_sar else 0)
    f = config.num_features
    shapes: dict[str, tuple[int, ...]] = {"head.weight": (f, inputs, 3, 3), "head.bias": (f,)}
    for block in range(config.num_blocks):
        for conv in ("conv1", "conv2"):
            shapes[f"blocks.{block}.{conv}.weight"] = (f, f, 3, 3)
            shapes[f"blocks.{block}.{conv}.bias"] = (f,)
    shapes.update({"tail.weight": (NUM_S2_BANDS, f, 3, 3), "tail.bias": (NUM_S2_BANDS,)})
    return shapes


def _load_safetensors(path: Path) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """Read config and state dict from a safetensors weights file."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as file:
            metadata = file.metadata() or {}
            state = {key: file.get_tensor(key) for key in file.keys()}  # noqa: SIM118 (safe_open has no iter)
    except (SafetensorError, OSError, ValueError) as error:
        raise DSen2CRError(f"{path}: not a readable safetensors file ({' '.join(str(error).split())})") from None
    return config_from_metadata(metadata.get(CONFIG_KEY), path), state


def _load_lightning_checkpoint(path: Path) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """Read config and model state dict from a Lightning checkpoint, refusing pickled objects and archives that
    would inflate far beyond their size on disk."""
    _check_inflation(path)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else "unsafe content"
        raise DSen2CRError(
            f"{path}: refused to load, the checkpoint holds objects other than tensors and plain data ({first_line})"
        ) from None
    except (RuntimeError, EOFError, OSError) as error:
        raise DSen2CRError(f"{path}: not a readable checkpoint ({' '.join(str(error).split())[:200]})") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise DSen2CRError(f"{path}: not a dsen2cr training checkpoint (no state_dict)")
    config = config_from_metadata(checkpoint.get(CONFIG_KEY), path)
    if not isinstance(checkpoint["state_dict"], dict):
        raise DSen2CRError(f"{path}: state_dict is a {type(checkpoint['state_dict']).__name__}, expected a mapping")
    state = {k[len("model.") :]: v for k, v in checkpoint["state_dict"].items() if str(k).startswith("model.")}
    return config, state


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


def load_model(path: str | Path, *, device: str | torch.device = "cpu", expected: ModelConfig | None = None) -> DSen2CR:
    """Build the model stored in ``path`` (safetensors weights, Lightning checkpoint or Keras HDF5), in eval mode.

    With ``expected``, weights of another variant are refused, naming both.
    """
    path = check_input_file(path, "weights")
    suffix = path.suffix.lower()
    if suffix in (".h5", ".hdf5"):
        from dsen2cr.keras import load_keras_weights

        config, state = load_keras_weights(path)
    elif suffix == ".ckpt":
        config, state = _load_lightning_checkpoint(path)
    else:
        config, state = _load_safetensors(path)
    if expected is not None and config != expected:
        raise DSen2CRError(f"{path}: holds a {_describe(config)} model, but {_describe(expected)} was asked for")
    check_state(config, state, path)
    model = config.build()
    model.load_state_dict(state, strict=True)
    return model.to(device).eval()


def _describe(config: ModelConfig) -> str:
    """Short description of a model configuration."""
    sar = "with SAR" if config.include_sar else "without SAR"
    return f"B={config.num_blocks}, F={config.num_features} {sar}"
