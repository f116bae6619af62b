"""Inference backends, all in one place: each turns a model into a function from a batch in model units to
predictions (docs/design.md §4.2).

- ``eager``: plain PyTorch fp32 (the reference).
- ``compiled``: ``torch.compile`` (inductor) with weight freezing and channels-last memory format, fp32; its
  compiled code is cached on disk by inductor, so later runs skip most of the compile time.
- ``bf16``: eager with bf16 autocast and channels-last (GPUs with tensor cores; emulated and slow on most CPUs).
- ``onnxruntime``: an exported ONNX file (fp32 or int8), :class:`OnnxPredictor`.

:func:`select_backend` with ``auto`` tries ``compiled`` on CPU and ``bf16`` on GPU; every candidate is checked
against eager fp32 on random input before use (relative error under 1e-3 for fp32 paths, 5e-2 for bf16) and
dropped, with a logged warning, when it fails to build or to agree. Building a backend never changes the
caller's model or process-wide settings: the channels-last backends work on a copy of the model, and weight
freezing is switched on only while inductor compiles.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

from dsen2cr.errors import DSen2CRError
from dsen2cr.files import check_input_file
from dsen2cr.model import DSen2CR
from dsen2cr.preprocessing import NUM_S1_BANDS, NUM_S2_BANDS
from dsen2cr.weights import CONFIG_KEY, config_from_metadata

log = logging.getLogger(__name__)

#: A backend's predict function: (S2, S1 or None) batches in model units -> predictions in model units.
PredictFn = Callable[[np.ndarray, np.ndarray | None], np.ndarray]
BACKENDS = ("auto", "eager", "compiled", "bf16")
TOLERANCE = {"eager": 0.0, "compiled": 1e-3, "bf16": 5e-2}


def relative_error(got: np.ndarray, reference: np.ndarray) -> float:
    """max |got - reference| / max |reference|."""
    return float(np.abs(got - reference).max() / max(np.abs(reference).max(), 1e-12))


def _eager(model: DSen2CR, device: torch.device) -> PredictFn:
    def predict(s2: np.ndarray, s1: np.ndarray | None) -> np.ndarray:
        with torch.inference_mode():
            s1_t = None if s1 is None else torch.from_numpy(s1).to(device)
            return model(torch.from_numpy(s2).to(device), s1_t).float().cpu().numpy()

    return predict


def _channels_last(model: DSen2CR, device: torch.device, *, compile_model: bool, bf16: bool) -> PredictFn:
    """Channels-last inputs and weights (on a copy of ``model``), optionally compiled (inductor, frozen weights)
    and/or bf16 autocast."""
    model = copy.deepcopy(model).to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    forward: Callable = model
    if compile_model:
        import torch._inductor.config as inductor_config

        from dsen2cr.compile_cache import use_persistent_compile_cache

        use_persistent_compile_cache()
        compiled = torch.compile(model, dynamic=False)

        def forward(s2: torch.Tensor, s1: torch.Tensor | None) -> torch.Tensor:
            """The compiled model, frozen while it compiles (and on later calls, which find it compiled)."""
            # Fold the weights into the compiled graph (inference only). Set only while this model runs, so
            # other compiled code in the process (a training run, the caller's own) is not frozen.
            with inductor_config.patch(freezing=True):
                return compiled(s2, s1)

    def predict(s2: np.ndarray, s1: np.ndarray | None) -> np.ndarray:
        with torch.inference_mode(), torch.autocast(device.type, torch.bfloat16, enabled=bf16), _cudnn_autotune(device):
            s2_t = torch.from_numpy(s2).to(device).contiguous(memory_format=torch.channels_last)
            s1_t = None if s1 is None else torch.from_numpy(s1).to(device).contiguous(memory_format=torch.channels_last)
            return forward(s2_t, s1_t).float().cpu().numpy()

    return predict


@contextlib.contextmanager
def _cudnn_autotune(device: torch.device) -> Iterator[None]:
    """On CUDA, let cuDNN time its convolution algorithms for each new shape and keep the fastest (a scene runs
    one window shape); the process-wide flag is restored afterwards."""
    if device.type != "cuda":
        yield
        return
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


def build_backend(model: DSen2CR, name: str, device: str | torch.device = "cpu") -> PredictFn:
    """The predictor of one named backend (no correctness check; see :func:`select_backend`)."""
    device = torch.device(device)
    model = model.to(device).eval()
    if name == "eager":
        return _eager(model, device)
    if name == "compiled":
        return _channels_last(model, device, compile_model=True, bf16=False)
    if name == "bf16":
        return _channels_last(model, device, compile_model=False, bf16=True)
    raise DSen2CRError(f"backend: expected one of {BACKENDS[1:]}, got {name!r}")


def _candidates(device: torch.device) -> list[str]:
    """Backends to try for ``auto``, fastest first."""
    return ["bf16", "eager"] if device.type == "cuda" else ["compiled", "eager"]


def _centre_reference(
    model: DSen2CR, eager: PredictFn, s2: np.ndarray, s1: np.ndarray | None, size: int = 64
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
) -> tuple[str, PredictFn]:
    """Build backend ``name`` (or, for ``auto``, the first candidate that works), checked against eager fp32
    on random input of ``probe_shape`` (batch, height, width; eager runs only on a crop around its centre).
    Returns the backend used and its predictor."""
    device = torch.device(device)
    model = model.to(device).eval()
    reference_predictor = _eager(model, device)
    if name == "eager":
        return "eager", reference_predictor
    start = time.perf_counter()
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
            rows, cols = centre
            error = relative_error(predictor(s2, s1)[..., rows, cols], reference)
        except Exception as exc:  # a backend that cannot build here (no compiler, unsupported op, ...)
            if name != "auto":
                raise
            log.warning("backend %s unavailable (%s: %s); trying the next", candidate, type(exc).__name__, exc)
            continue
        if error <= TOLERANCE[candidate]:
            if candidate == "compiled":  # what the next run's --backend auto can expect to pay
                from dsen2cr.compile_cache import build_key, record_build_seconds

                record_build_seconds(build_key(model.config, probe_shape, device), time.perf_counter() - start)
            return candidate, predictor
        message = f"backend {candidate} disagrees with eager fp32 (relative error {error:.2e})"
        if name != "auto":
            raise RuntimeError(message)
        log.warning("%s; trying the next", message)
    return "eager", reference_predictor


S2_INPUT, S1_INPUT, OUTPUT = "s2_cloudy", "s1", "s2_cloudfree"
#: Metadata key of the precision of exported ONNX files (the model configuration rides as in weights files).
PRECISION_KEY = "dsen2cr.precision"


class OnnxPredictor:
    """Run an exported DSen2-CR with onnxruntime; checks that the file has the expected inputs and output."""

    def __init__(self, path: str | Path, *, device: str = "cpu") -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise DSen2CRError("onnxruntime is not installed: pip install 'dsen2cr[onnx]'") from None
        path = check_input_file(path, "ONNX")
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device.startswith("cuda") else None
        try:
            self.session = ort.InferenceSession(str(path), providers=providers or ["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises its own exception types
            raise DSen2CRError(f"{path}: not a readable ONNX model ({' '.join(str(error).split())[:200]})") from None
        inputs = {i.name: i.shape for i in self.session.get_inputs()}
        outputs = self.session.get_outputs()
        expected_inputs = {S2_INPUT: NUM_S2_BANDS, S1_INPUT: NUM_S1_BANDS}
        if S2_INPUT not in inputs or set(inputs) - set(expected_inputs):
            raise DSen2CRError(f"{path}: ONNX inputs {sorted(inputs)}; expected {S2_INPUT} and optionally {S1_INPUT}")
        for name, shape in inputs.items():
            if len(shape) != 4 or shape[1] != expected_inputs[name]:
                raise DSen2CRError(
                    f"{path}: ONNX input {name} has shape {shape}, expected (N, {expected_inputs[name]}, H, W)"
                )
        if len(outputs) != 1 or len(outputs[0].shape) != 4 or outputs[0].shape[1] != NUM_S2_BANDS:
            raise DSen2CRError(f"{path}: ONNX output must be one (N, 13, H, W) tensor")
        self.include_sar = S1_INPUT in inputs
        metadata = self.session.get_modelmeta().custom_metadata_map
        if CONFIG_KEY not in metadata:
            raise DSen2CRError(f"{path}: ONNX file lacks the dsen2cr model configuration (export it with dsen2cr)")
        self.config = config_from_metadata(metadata[CONFIG_KEY], path)
        if self.config.include_sar != self.include_sar:
            raise DSen2CRError(f"{path}: ONNX inputs and the stored model configuration disagree about SAR")
        self.precision = metadata.get(PRECISION_KEY, "fp32")

    def feeds(self, s2: np.ndarray, s1: np.ndarray | None) -> dict[str, np.ndarray]:
        """The session inputs for a batch in model units."""
        feeds = {S2_INPUT: np.ascontiguousarray(s2, dtype=np.float32)}
        if self.include_sar:
            if s1 is None:
                raise DSen2CRError("this ONNX model needs the S1 input")
            feeds[S1_INPUT] = np.ascontiguousarray(s1, dtype=np.float32)
        return feeds

    def __call__(self, s2: np.ndarray, s1: np.ndarray | None) -> np.ndarray:
        """Predict a batch in model units."""
        return self.session.run(None, self.feeds(s2, s1))[0]
