"""Inference backends: the default path picks the fastest correct one for the device and falls back cleanly.

- ``eager``: plain PyTorch fp32 (the reference).
- ``compiled``: ``torch.compile`` (inductor) with weight freezing and channels-last memory format, fp32; its
  compiled code is cached on disk by inductor, so later runs skip most of the compile time.
- ``bf16``: eager with bf16 autocast and channels-last (GPUs with tensor cores; emulated and slow on most CPUs).
- ``onnxruntime``: see ``dsen2cr.onnx_export``.

``auto`` (the default) is ``compiled`` on CPU and on GPU ``bf16`` plus compile; every candidate is checked
against eager fp32 on random input before use (relative error under 1e-3 for fp32 paths, 5e-2 for bf16) and
dropped, with a warning, when it fails to build or to agree.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
import torch

from dsen2cr.model import DSen2CR

Predictor = Callable[[np.ndarray, np.ndarray | None], np.ndarray]
BACKENDS = ("auto", "eager", "compiled", "bf16")
TOLERANCE = {"eager": 0.0, "compiled": 1e-3, "bf16": 5e-2}


def relative_error(got: np.ndarray, reference: np.ndarray) -> float:
    """max |got - reference| / max |reference|."""
    return float(np.abs(got - reference).max() / max(np.abs(reference).max(), 1e-12))


def _eager(model: DSen2CR, device: torch.device) -> Predictor:
    def predict(s2: np.ndarray, s1: np.ndarray | None) -> np.ndarray:
        with torch.inference_mode():
            s1_t = None if s1 is None else torch.from_numpy(s1).to(device)
            return model(torch.from_numpy(s2).to(device), s1_t).float().cpu().numpy()

    return predict


def _channels_last(model: DSen2CR, device: torch.device, *, compile_model: bool, bf16: bool) -> Predictor:
    """Channels-last inputs and weights, optionally compiled (inductor, frozen weights) and/or bf16 autocast."""
    model = model.to(memory_format=torch.channels_last)
    forward: Callable = model
    if compile_model:
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True  # fold weights into the compiled graph (inference only)
        forward = torch.compile(model, dynamic=False)

    def predict(s2: np.ndarray, s1: np.ndarray | None) -> np.ndarray:
        with torch.inference_mode(), torch.autocast(device.type, torch.bfloat16, enabled=bf16):
            s2_t = torch.from_numpy(s2).to(device).contiguous(memory_format=torch.channels_last)
            s1_t = None if s1 is None else torch.from_numpy(s1).to(device).contiguous(memory_format=torch.channels_last)
            return forward(s2_t, s1_t).float().cpu().numpy()

    return predict


def build_backend(model: DSen2CR, name: str, device: str | torch.device = "cpu") -> Predictor:
    """The predictor of one named backend (no correctness check; see :func:`select_backend`)."""
    device = torch.device(device)
    model = model.to(device).eval()
    if name == "eager":
        return _eager(model, device)
    if name == "compiled":
        return _channels_last(model, device, compile_model=True, bf16=False)
    if name == "bf16":
        return _channels_last(model, device, compile_model=False, bf16=True)
    raise ValueError(f"backend: expected one of {BACKENDS}, got {name!r}")


def _candidates(device: torch.device) -> list[str]:
    """Backends to try for ``auto``, fastest first."""
    return ["bf16", "eager"] if device.type == "cuda" else ["compiled", "eager"]


def _centre_reference(
    model: DSen2CR, eager: Predictor, s2: np.ndarray, s1: np.ndarray | None, size: int = 64
) -> tuple[np.ndarray, tuple[slice, slice]]:
    """Eager fp32 output of the probe's central ``size`` x ``size`` pixels and where they lie in the probe.

    Computed on a crop that extends the receptive-field radius beyond them (or reaches the probe's border,
    where the zero padding is the same), so it equals the centre of the whole probe's output while costing a
    fraction of it: the candidate runs on the full probe shape (compiling for it), eager only on the crop.
    """
    radius = model.config.receptive_radius
    spans = []
    for length in s2.shape[2:]:
        core = min(length, size)
        start = (length - core) // 2
        low, high = max(0, start - radius), min(length, start + core + radius)
        spans.append((slice(start, start + core), slice(low, high), slice(start - low, start - low + core)))
    (rows, crop_rows, in_rows), (cols, crop_cols, in_cols) = spans
    crop = eager(s2[:, :, crop_rows, crop_cols], None if s1 is None else s1[:, :, crop_rows, crop_cols])
    return crop[:, :, in_rows, in_cols], (rows, cols)


def select_backend(
    model: DSen2CR,
    name: str = "auto",
    device: str | torch.device = "cpu",
    *,
    probe_shape: tuple[int, int, int] = (1, 64, 64),
) -> tuple[str, Predictor]:
    """Build backend ``name`` (or, for ``auto``, the first candidate that works), checked against eager fp32
    on random input of ``probe_shape`` (batch, height, width; eager runs only on a crop around its centre).
    Returns the backend used and its predictor."""
    device = torch.device(device)
    model = model.to(device).eval()
    reference_predictor = _eager(model, device)
    if name == "eager":
        return "eager", reference_predictor
    generator = np.random.default_rng(0)
    batch, height, width = probe_shape
    s2 = generator.uniform(0, 2, size=(batch, 13, height, width)).astype(np.float32)
    s1 = generator.uniform(0, 2, size=(batch, 2, height, width)).astype(np.float32) if model.include_sar else None
    reference, centre = _centre_reference(model, reference_predictor, s2, s1)
    for candidate in _candidates(device) if name == "auto" else [name]:
        if candidate == "eager":
            return "eager", reference_predictor
        try:
            predictor = build_backend(model, candidate, device)
            error = relative_error(predictor(s2, s1)[(..., *centre)], reference)
        except Exception as exc:  # a backend that cannot build here (no compiler, unsupported op, ...)
            if name != "auto":
                raise
            warnings.warn(
                f"backend {candidate} unavailable ({type(exc).__name__}: {exc}); trying the next", stacklevel=2
            )
            continue
        if error <= TOLERANCE[candidate]:
            return candidate, predictor
        message = f"backend {candidate} disagrees with eager fp32 (relative error {error:.2e})"
        if name != "auto":
            raise RuntimeError(message)
        warnings.warn(message + "; trying the next", stacklevel=2)
    return "eager", reference_predictor
