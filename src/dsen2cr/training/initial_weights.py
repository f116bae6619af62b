"""Starting a training run from weights (``model.init_weights``): fine-tuning a published model, or an earlier
run's, on your own data. The run's optimiser, epochs and steps start afresh; only the network's tensors come
from the file, and the run's checkpoints and the weights exported from them record which file that was."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from dsen2cr.errors import DSen2CRError
from dsen2cr.models import ModelSpec
from dsen2cr.outputs.files import file_sha256
from dsen2cr.weights import expected_shapes, load_model

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InitialWeights:
    """The tensors a run starts from, the run's tensors the file does not hold (a variance head added to weights
    without one: they keep their fresh initialisation) and the record of the file (name and SHA-256)."""

    state: dict[str, torch.Tensor]
    fresh: tuple[str, ...]
    record: dict[str, str]


def read_initial_weights(path: str | Path, config: ModelSpec) -> InitialWeights:
    """The weights in ``path`` (any file ``--weights`` takes but ONNX: safetensors, a training checkpoint, a
    Keras HDF5 file) for a run of the model ``config``: of the same model, or of that model without the variance
    head that ``config`` adds (the head then starts fresh). Anything else is refused in one line."""
    where = f"model.init_weights: {path}"
    try:
        model = load_model(path)
    except DSen2CRError as error:
        raise DSen2CRError(f"model.init_weights: {error}") from None
    held = model.config
    adds_head = held.uncertainty == "none" and {**held.to_dict(), "uncertainty": config.uncertainty} == config.to_dict()
    if held != config and not adds_head:
        raise DSen2CRError(
            f"{where}: holds a {held.describe()} model, but the run trains {config.describe()}; set model.variant "
            "(or model.num_blocks, num_features, include_sar, uncertainty) to the weights' model"
        )
    state = model.state_dict()
    fresh = tuple(sorted(set(expected_shapes(config)) - set(state)))
    record = {"file": Path(path).name, "sha256": file_sha256(Path(path)) or "unknown"}
    if fresh:
        record["fresh"] = "variance head"
    return InitialWeights(state, fresh, record)


def start_from(network: nn.Module, initial: InitialWeights) -> None:
    """Copy the initial weights into the run's freshly built network (its memory format kept); say so."""
    missing, unexpected = network.load_state_dict(initial.state, strict=False)
    if unexpected or tuple(sorted(missing)) != initial.fresh:  # read_initial_weights matched the two: a bug
        raise RuntimeError(f"initial weights do not fit the network: missing {missing}, unexpected {unexpected}")
    head = ", the variance head starts fresh (the weights have none)" if initial.fresh else ""
    log.info(
        "model.init_weights: starting from %s (SHA-256 %s…)%s",
        initial.record["file"],
        initial.record["sha256"][:12],
        head,
    )
