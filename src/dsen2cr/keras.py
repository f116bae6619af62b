"""Import of published Keras checkpoints (HDF5, Keras 2.2.4, docs/design.md §3.8). Read, never executed.

The convolutions are taken in the file's layer order (the ``layer_names`` attribute, then each layer's
``weight_names``; never sorted by name), from a full-model file (``model_weights/``), a weights-only file
(root), or a model nested as one layer (as ``multi_gpu_model`` saved it). Which network they make up is the
model family's business (:attr:`dsen2cr.models.ModelFamily.keras_state`; DSen2-CR's reads the variant from
the layers' shapes); Keras files do not name a family, so they are read as the default one's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from dsen2cr.errors import DSen2CRError
from dsen2cr.models import DEFAULT_FAMILY, ModelSpec, get_family
from dsen2cr.models.registry import KerasLayer

#: The widest convolution a Keras file may declare (channels): 16x the paper's width, as for weights files.
MAX_CHANNELS = 4096


def _text(value: object) -> str:
    """An HDF5 attribute string as str."""
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _conv_layers(path: Path) -> list[KerasLayer]:
    """(name, kernel, bias) of every convolution, in the file's layer and weight order."""
    import h5py

    try:
        file = h5py.File(path, "r")
    except OSError as error:
        reason = " ".join(str(error).split())
        kind = "truncated or damaged HDF5 file" if "truncated" in reason.lower() else "not an HDF5 file"
        raise DSen2CRError(f"{path}: {kind} ({reason})") from None
    with file:
        root = file.get("model_weights", file)
        if "layer_names" not in root.attrs:
            raise DSen2CRError(f"{path}: HDF5 file is not a Keras model or weights file (no layer_names attribute)")
        convs: list[KerasLayer] = []
        try:
            for layer_name in map(_text, root.attrs["layer_names"]):
                group = root[layer_name]
                weight_names = [_text(w) for w in group.attrs.get("weight_names", [])]
                pending: dict[str, Any] = {}
                for weight_name in weight_names:
                    owner, _, variable = weight_name.rpartition("/")
                    array = _read_bounded(group[weight_name], f"{path}: layer {layer_name}: weight {weight_name!r}")
                    if variable.startswith("kernel"):
                        pending = {"owner": owner, "kernel": array}
                    elif variable.startswith("bias") and pending.get("owner") == owner:
                        convs.append((owner.rpartition("/")[2] or layer_name, pending["kernel"], array))
                        pending = {}
                    else:
                        raise DSen2CRError(
                            f"{path}: layer {layer_name}: unexpected weight {weight_name!r} "
                            "(DSen2-CR has only convolution kernels and biases)"
                        )
        except (KeyError, OSError) as error:
            raise DSen2CRError(f"{path}: damaged Keras file ({' '.join(str(error).split())})") from None
    if not convs:
        raise DSen2CRError(f"{path}: Keras file holds no convolution weights")
    return convs


def _read_bounded(dataset: Any, where: str) -> np.ndarray:
    """Read a kernel (3, 3, in, out) or bias (out,) after checking its declared shape: no dimension beyond the
    largest network the project builds, so a file cannot make it reserve gigabytes before it is refused."""
    import h5py

    if not isinstance(dataset, h5py.Dataset):
        raise DSen2CRError(f"{where}: is not an array")
    shape = tuple(dataset.shape)
    kernel_like = len(shape) == 4 and shape[:2] == (3, 3)
    if not (kernel_like or len(shape) == 1) or any(size > MAX_CHANNELS for size in shape):
        raise DSen2CRError(
            f"{where}: shape {shape}; expected 3x3 kernels and biases of at most {MAX_CHANNELS} channels"
        )
    return np.asarray(dataset)


def load_keras_weights(path: str | Path) -> tuple[ModelSpec, dict[str, torch.Tensor]]:
    """Read a Keras HDF5 file of the default family (DSen2-CR); return its configuration and a PyTorch state
    dict."""
    path = Path(path)
    family = get_family(DEFAULT_FAMILY)
    if family.keras_state is None:
        raise DSen2CRError(f"{path}: the {family.name} model family has no Keras importer")
    return family.keras_state(_conv_layers(path), path)
