"""Where a predictor is built: the one way from weights (or a model in memory) to something that runs batches
(docs/design.md §4.2). ``evaluate``, ``remove-clouds``, ``demo`` and the Python API all go through here."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dsen2cr.auto import resolve_device, torch_backend_candidates
from dsen2cr.backends import CheckedBackend, OnnxPredictor, select_backend
from dsen2cr.errors import DSen2CRError
from dsen2cr.model import DSen2CR, ModelConfig

log = logging.getLogger(__name__)

#: Backend names a user may ask for (``auto`` picks one; see :func:`load_predictor`).
BACKEND_CHOICES = ("auto", "eager", "compiled", "onnxruntime")
PRECISIONS = ("fp32", "bf16")
#: (batch, height, width) of the windows a predictor will run, or a function of the model configuration that
#: gives it (the tile depends on the model): ``--backend auto`` looks up what compiling that shape cost before.
WindowShape = tuple[int, int, int] | Callable[[ModelConfig], tuple[int, int, int]]


@dataclass(frozen=True)
class Predictor:
    """A model ready to run: ``predictor(s2, s1)`` maps a batch in model units ((N, 13, H, W) and (N, 2, H, W)
    or None) to predictions in model units, with what callers need to know about the model."""

    predict: CheckedBackend | OnnxPredictor
    config: ModelConfig
    device: torch.device

    @property
    def backend(self) -> str:
        """The backend in use: eager, compiled, bf16 or onnxruntime (a PyTorch backend is settled, and may fall
        back to eager, on the first batch: :class:`~dsen2cr.backends.CheckedBackend`)."""
        return self.predict.backend

    @property
    def precision(self) -> str:
        """fp32, bf16 or int8."""
        return self.predict.precision

    def __call__(self, s2: np.ndarray, s1: np.ndarray | None) -> np.ndarray:
        """Predict one batch (model units); a prediction with NaN, infinite or absurdly large values stops the
        run (it would otherwise be written as nodata, clipped, or scored as a number)."""
        prediction = self.predict(s2, s1)
        if not _sums_to_a_finite_number(prediction):
            raise DSen2CRError(
                f"the model ({self.backend}, {self.precision}) predicted NaN, infinite or absurdly large values for "
                "finite inputs; its weights are broken or overflow at this precision: nothing was written"
            )
        return prediction

    @property
    def include_sar(self) -> bool:
        """Whether the model takes S1."""
        return self.config.include_sar

    @property
    def receptive_radius(self) -> int:
        """Pixels beyond which an input no longer affects an output pixel."""
        return self.config.receptive_radius


def _sums_to_a_finite_number(prediction: np.ndarray) -> bool:
    """Whether the float32 sum of ``prediction`` is finite: false for any NaN or infinity (they propagate) and
    for finite values whose sum passes float32's 3.4e38 (absurd for reflectances, whose sums stay below 1e12).
    PyTorch's sum runs on all cores over the array in place (channels-last included): 8.4 ms for a batch of
    four 978 px windows on 2 cores, where numpy's float64 sum took 35 ms (``python -m benchmarks.output_check``);
    no boolean copy is made."""
    return bool(torch.isfinite(torch.from_numpy(np.asarray(prediction, dtype=np.float32)).sum()))


def predictor_from_model(
    model: DSen2CR,
    *,
    backend: str = "eager",
    device: str | torch.device = "auto",
    precision: str = "fp32",
    window_shape: WindowShape | None = None,
    pixels: float | None = None,
) -> Predictor:
    """A predictor for a model in memory. ``backend`` ``auto``: the fastest backend that agrees with eager fp32
    on the first batch, when the run (``pixels`` in windows of ``window_shape``) is long enough to pay for
    building it."""
    if precision not in PRECISIONS:
        raise DSen2CRError(f"precision: expected one of {PRECISIONS}, got {precision!r}")
    if backend not in BACKEND_CHOICES or backend == "onnxruntime":
        raise DSen2CRError(f"backend: expected one of auto, eager, compiled for a PyTorch model, got {backend!r}")
    device = resolve_device(device)
    name = "bf16" if precision == "bf16" else backend
    if name == "auto":
        shape = window_shape(model.config) if callable(window_shape) else window_shape
        name = torch_backend_candidates(model.config, device, pixels, shape)
    checked = select_backend(model, name, device)
    if checked.candidates == ["eager"]:
        log.info("backend: eager")
    else:
        log.info("backend: trying %s, checked on the first batch", checked.backend)
    return Predictor(checked, model.config, device)


def is_onnx(weights: str | Path) -> bool:
    """Whether a weights file is an exported ONNX model (by its suffix)."""
    return Path(weights).suffix.lower() == ".onnx"


def load_predictor(
    weights: str | Path,
    *,
    backend: str = "auto",
    device: str | torch.device = "auto",
    precision: str = "fp32",
    window_shape: WindowShape | None = None,
    pixels: float | None = None,
) -> Predictor:
    """The predictor for a weights file: onnxruntime for ``.onnx`` files (fp32 or int8); for PyTorch weights
    (safetensors, Lightning checkpoint, Keras HDF5) the named backend, or for ``auto`` see
    :func:`predictor_from_model`."""
    from dsen2cr.weights import load_model

    onnx_file = is_onnx(weights)
    if backend not in BACKEND_CHOICES:
        raise DSen2CRError(f"backend: expected one of {BACKEND_CHOICES}, got {backend!r}")
    if backend == "onnxruntime" or (backend == "auto" and onnx_file):
        if not onnx_file:
            raise DSen2CRError(f"{weights}: the onnxruntime backend needs an .onnx file (dsen2cr export-onnx)")
        if precision != "fp32":
            raise DSen2CRError("precision: the onnxruntime backend runs the exported model's own precision only")
        device = resolve_device(device)
        onnx = OnnxPredictor(weights, device=str(device))
        log.info("backend: onnxruntime (%s)", onnx.precision)
        return Predictor(onnx, onnx.config, device)
    if onnx_file:
        raise DSen2CRError(f"{weights}: an ONNX file runs with the onnxruntime backend (or auto)")
    device = resolve_device(device)
    model = load_model(weights, device=device)
    return predictor_from_model(
        model, backend=backend, device=device, precision=precision, window_shape=window_shape, pixels=pixels
    )
