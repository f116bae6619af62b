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

from dsen2cr.errors import DSen2CRError
from dsen2cr.files import atomic_path
from dsen2cr.model import DSen2CR, ModelConfig

CONFIG_KEY = "dsen2cr_model_config"
FORMAT_KEY = "format"
FORMAT_VALUE = "dsen2cr-weights-v1"


def save_weights(model: DSen2CR, path: str | Path) -> Path:
    """Write a model's weights and configuration to a safetensors file, atomically."""
    from safetensors.torch import save_file

    state = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    metadata = {FORMAT_KEY: FORMAT_VALUE, CONFIG_KEY: json.dumps(model.config.to_dict())}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=metadata)
    return Path(path)


def _config_from(raw: Any, path: Path) -> ModelConfig:
    """Validate a stored model configuration."""
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError:
            raise DSen2CRError(f"{path}: stored model configuration is not valid JSON") from None
    if not isinstance(raw, dict):
        raise DSen2CRError(f"{path}: no dsen2cr model configuration in this file")
    try:
        return ModelConfig(**raw)
    except TypeError as error:
        raise DSen2CRError(f"{path}: stored model configuration is invalid ({error})") from None


def _load_safetensors(path: Path) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """Read config and state dict from a safetensors weights file."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as file:
            metadata = file.metadata() or {}
            state = {key: file.get_tensor(key) for key in file.keys()}  # noqa: SIM118 (safe_open has no iter)
    except (SafetensorError, OSError, ValueError) as error:
        raise DSen2CRError(f"{path}: not a readable safetensors file ({' '.join(str(error).split())})") from None
    return _config_from(metadata.get(CONFIG_KEY), path), state


def _load_lightning_checkpoint(path: Path) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """Read config and model state dict from a Lightning checkpoint, refusing pickled objects."""
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
    config = _config_from(checkpoint.get(CONFIG_KEY), path)
    state = {k[len("model.") :]: v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")}
    return config, state


def load_model(path: str | Path, *, device: str | torch.device = "cpu", expected: ModelConfig | None = None) -> DSen2CR:
    """Build the model stored in ``path`` (safetensors weights, Lightning checkpoint or Keras HDF5), in eval mode.

    With ``expected``, weights of another variant are refused, naming both.
    """
    path = Path(path)
    if path.is_dir():
        raise DSen2CRError(f"{path}: is a directory, expected a weights file")
    if not path.is_file():
        raise DSen2CRError(f"{path}: weights file not found")
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
    model = config.build()
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        detail = " ".join(str(error).split())[:300]
        raise DSen2CRError(f"{path}: weights do not fit the stored configuration ({detail})") from None
    return model.to(device).eval()


def _describe(config: ModelConfig) -> str:
    """Short description of a model configuration."""
    sar = "with SAR" if config.include_sar else "without SAR"
    return f"B={config.num_blocks}, F={config.num_features} {sar}"
