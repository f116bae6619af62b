"""Import of the published DSen2-CR Keras checkpoints (HDF5, Keras 2.2.4, docs/design.md §3.8). Read, never executed.

The 2B + 2 convolutions are taken in the file's layer order (the ``layer_names`` attribute, then each
layer's ``weight_names``; never sorted by name), from a full-model file (``model_weights/``), a weights-only
file (root), or a model nested as one layer (as ``multi_gpu_model`` saved it). The variant is read from the
file: SAR from the first convolution's input channels, B from the number of convolutions, F from their
shapes. Keras kernels (kh, kw, in, out) become PyTorch weights (out, in, kh, kw); both are
cross-correlations, so nothing is flipped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from dsen2cr.errors import DSen2CRError
from dsen2cr.model import ModelConfig
from dsen2cr.preprocessing import NUM_S1_BANDS, NUM_S2_BANDS

PAPER_RES_SCALE = 0.1


def _text(value: object) -> str:
    """An HDF5 attribute string as str."""
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _conv_layers(path: Path) -> list[tuple[str, np.ndarray, np.ndarray]]:
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
        convs: list[tuple[str, np.ndarray, np.ndarray]] = []
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

    from dsen2cr.weights import MAX_FEATURES

    if not isinstance(dataset, h5py.Dataset):
        raise DSen2CRError(f"{where}: is not an array")
    shape = tuple(dataset.shape)
    kernel_like = len(shape) == 4 and shape[:2] == (3, 3)
    if not (kernel_like or len(shape) == 1) or any(size > MAX_FEATURES for size in shape):
        raise DSen2CRError(
            f"{where}: shape {shape}; DSen2-CR has 3x3 kernels and biases of at most {MAX_FEATURES} channels"
        )
    return np.asarray(dataset)


def load_keras_weights(path: str | Path) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """Read a DSen2-CR Keras HDF5 file; return the model configuration and a PyTorch state dict."""
    path = Path(path)
    convs = _conv_layers(path)
    if len(convs) < 2 or len(convs) % 2:
        raise DSen2CRError(
            f"{path}: {len(convs)} convolution layers; DSen2-CR has 2 x blocks + 2 (an even number >= 2)"
        )
    num_blocks = (len(convs) - 2) // 2
    head_name, head_kernel, _ = convs[0]
    if head_kernel.ndim != 4 or head_kernel.shape[:2] != (3, 3):
        raise DSen2CRError(f"{path}: layer {head_name}: kernel {head_kernel.shape}, expected (3, 3, in, features)")
    in_channels, features = head_kernel.shape[2], head_kernel.shape[3]
    if in_channels not in (NUM_S2_BANDS, NUM_S2_BANDS + NUM_S1_BANDS):
        raise DSen2CRError(f"{path}: layer {head_name}: {in_channels} input channels; expected 13 (S2) or 15 (S2 + S1)")
    config = ModelConfig(num_blocks, int(features), in_channels == NUM_S2_BANDS + NUM_S1_BANDS, PAPER_RES_SCALE)
    targets = ["head"] + [f"blocks.{b}.conv{i}" for b in range(num_blocks) for i in (1, 2)] + ["tail"]
    state: dict[str, torch.Tensor] = {}
    for target, (name, kernel, bias) in zip(targets, convs, strict=True):
        out_channels = NUM_S2_BANDS if target == "tail" else features
        expected_in = in_channels if target == "head" else features
        expected = (3, 3, expected_in, out_channels)
        if kernel.shape != expected or bias.shape != (out_channels,):
            raise DSen2CRError(
                f"{path}: layer {name} ({target}): kernel {kernel.shape} and bias {bias.shape}, expected {expected} "
                f"and ({out_channels},) for a DSen2-CR with {num_blocks} blocks of {features} features"
            )
        state[f"{target}.weight"] = torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))).float()
        state[f"{target}.bias"] = torch.from_numpy(np.ascontiguousarray(bias)).float()
    return config, state
