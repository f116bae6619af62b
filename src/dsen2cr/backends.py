"""Inference backends, all in one place: each turns a model into a function from a batch in model units to
predictions (docs/design.md §4.2).

- ``eager``: plain PyTorch fp32 (the reference).
- ``compiled``: ``torch.compile`` (inductor), frozen weights, channels-last, fp32; cached on disk by inductor.
- ``fp16`` and ``bf16``: the model family's fused 16-bit form where it has one (DSen2-CR's
  :class:`~dsen2cr.models.dsen2cr.FusedHalf`: on CUDA fewer passes over the feature maps than autocast; on a CPU
  its residual stream, head and tail in fp32, bf16 convolutions by oneDNN where the CPU computes them); else
  eager with fp16 or bf16 autocast and channels-last.
- ``onnxruntime``: an exported ONNX file (fp32 or int8), :class:`dsen2cr.onnx_runtime.OnnxPredictor`.

:func:`select_backend` tries the candidates :func:`dsen2cr.auto.plan_backend` chose (``auto``: ``compiled`` on
CPU when it pays, then eager); every candidate other than IEEE fp32 eager is checked against IEEE fp32 eager
on the centre of the first batch it predicts (``TOLERANCE_DN``: at most 2 DN for compiled fp32, 100 for
TF32 and fp16, 500 for bf16) and dropped, with a logged warning, when it fails to build, to run or to agree.
Building a backend never changes the caller's model or process-wide settings: the channels-last backends work on a copy
of the model, and weight freezing is switched on only while inductor compiles.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple

import numpy as np
import torch

from dsen2cr.compile_cache import COMPILE_SAVING, build_key, record_build_seconds, use_persistent_compile_cache
from dsen2cr.errors import DSen2CRError
from dsen2cr.models import CloudRemovalNetwork, family_of
from dsen2cr.precision import FLOAT32_WORDS, HALF_DTYPES, float32_arithmetic
from dsen2cr.preprocessing import S2_MODEL_SCALE

log = logging.getLogger(__name__)

#: A backend's predict function: (S2, S1 or None) batches in model units -> predictions in model units.
PredictFn = Callable[[np.ndarray, np.ndarray | None], np.ndarray]
BACKENDS = ("auto", "eager", "compiled", "fp16", "bf16")
#: How far (largest |difference| in DN, reflectance x 10000) a backend's prediction may be from IEEE fp32 eager
#: on the first batch's centre before it is dropped as broken: compiled fp32 reorders sums (well under 1 DN);
#: bf16 on the paper-size model measured p99 51 / max 206 DN on a GPU (docs/design.md §13), fp16 p99 6.9 / max
#: 29.0 DN from float64 (python -m benchmarks.precision_accuracy --size 0): its tolerance is TF32's.
TOLERANCE_DN = {"eager": 0.0, "compiled": 2.0, "fp16": 100.0, "bf16": 500.0}
#: The same for TF32 arithmetic (measured p99 4 / max 12 DN on the paper-size model).
TF32_TOLERANCE_DN = 100.0
#: Side (pixels) of the centre of the first batch that a backend is checked on against eager fp32.
CHECK_SIZE = 32
#: The arithmetic of a float32 mode, in words (the outputs' ``DSEN2CR_ARITHMETIC``): IEEE is all of it, TF32 only
#: its convolutions and matmuls.
FLOAT32_ARITHMETIC = {"ieee": FLOAT32_WORDS["ieee"], "tf32": f"{FLOAT32_WORDS['tf32']} convolutions and matmuls"}


class ComputedBy(NamedTuple):
    """What computed predictions: the backend, the precision, the first batch's distance to IEEE fp32 ((99th
    percentile, largest) in DN; None: not checked) and the arithmetic in words (the form, who computes it)."""

    backend: str
    precision: str
    check: tuple[float, float] | None
    arithmetic: str


class _Described:
    """A predict function with the words of the arithmetic that computes it (:attr:`arithmetic`)."""

    def __init__(self, predict: PredictFn, arithmetic: str) -> None:
        self.predict, self.arithmetic = predict, arithmetic

    def __call__(self, s2: np.ndarray, s1: np.ndarray | None) -> np.ndarray:
        """Predict a batch."""
        return self.predict(s2, s1)


def distance_dn(got: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """99th percentile and largest |got - reference| in DN (model units x 2000: reflectance x 10000)."""
    difference = np.abs(np.asarray(got, np.float64) - reference) * S2_MODEL_SCALE
    return float(np.percentile(difference, 99)), float(difference.max())


def relative_error(got: np.ndarray, reference: np.ndarray) -> float:
    """max |got - reference| / max |reference|."""
    return float(np.abs(got - reference).max() / max(np.abs(reference).max(), 1e-12))


def _eager(model: CloudRemovalNetwork, device: torch.device) -> PredictFn:
    def predict(s2: np.ndarray, s1: np.ndarray | None) -> np.ndarray:
        with torch.inference_mode():
            s1_t = None if s1 is None else torch.from_numpy(s1).to(device)
            return model(torch.from_numpy(s2).to(device), s1_t).float().cpu().numpy()

    return predict


def _channels_last(
    model: CloudRemovalNetwork, device: torch.device, *, compile_model: bool, autocast: torch.dtype | None = None
) -> PredictFn:
    """Channels-last inputs and weights (on a copy of ``model``), optionally compiled (inductor, frozen weights)
    and/or under autocast to ``autocast`` (fp16 or bf16)."""
    model = copy.deepcopy(model).to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    forward: Callable = model
    if compile_model:
        import torch._inductor.config as inductor_config

        use_persistent_compile_cache()
        compiled = torch.compile(model, dynamic=False)

        def forward(s2: torch.Tensor, s1: torch.Tensor | None) -> torch.Tensor:
            """The compiled model, frozen while it compiles (and on later calls, which find it compiled)."""
            # Fold the weights into the compiled graph (inference only). Set only while this model runs, so
            # other compiled code in the process (a training run, the caller's own) is not frozen.
            with inductor_config.patch(freezing=True):
                return compiled(s2, s1)

    def predict(s2: np.ndarray, s1: np.ndarray | None) -> np.ndarray:
        cast = torch.autocast(device.type, autocast or torch.bfloat16, enabled=autocast is not None)
        with torch.inference_mode(), cast, _cudnn_autotune(device):
            return forward(*_channels_last_inputs(s2, s1, device)).float().cpu().numpy()

    return predict


def _channels_last_inputs(
    s2: np.ndarray, s1: np.ndarray | None, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A batch's S2 and S1 (or None) as channels-last tensors on ``device``."""
    to_device = lambda a: torch.from_numpy(a).to(device).contiguous(memory_format=torch.channels_last)  # noqa: E731
    return to_device(s2), None if s1 is None else to_device(s1)


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


def _fused_half(fused: torch.nn.Module, device: torch.device) -> PredictFn:
    """A model family's fused 16-bit form on channels-last inputs, cuDNN autotuned; with the form's words of its
    arithmetic on ``device`` where it has them (``fused.arithmetic(device)``)."""
    fused = fused.to(device).eval()

    def predict(s2: np.ndarray, s1: np.ndarray | None) -> np.ndarray:
        with torch.inference_mode(), _cudnn_autotune(device):
            return fused(*_channels_last_inputs(s2, s1, device)).cpu().numpy()

    words = getattr(fused, "arithmetic", None)
    return predict if words is None else _Described(predict, words(device))


def build_backend(model: CloudRemovalNetwork, name: str, device: str | torch.device = "cpu") -> PredictFn:
    """The predictor of one named backend (no correctness check; see :func:`select_backend`)."""
    device = torch.device(device)
    model = model.to(device).eval()
    if name == "eager":
        return _eager(model, device)
    if name == "compiled":
        return _channels_last(model, device, compile_model=True)
    if name in HALF_DTYPES:  # the family's fused form for the device (a CPU's: fp32 residual stream); else autocast
        fuse = family_of(model.config).fused_half
        if fuse is not None:
            return _fused_half(fuse(model, name, device), device)
        return _channels_last(model, device, compile_model=False, autocast=HALF_DTYPES[name])
    raise DSen2CRError(f"backend: expected one of {BACKENDS[1:]}, got {name!r}")


def _centre_crop(model: CloudRemovalNetwork, shape: tuple[int, ...], size: int) -> list[tuple[slice, slice, slice]]:
    """Per image axis of ``shape`` (N, C, H, W): the central ``size`` pixels, the crop around them that reaches
    the receptive-field radius beyond (or the border), and where the central pixels lie in that crop."""
    radius = model.config.receptive_radius
    spans = []
    for length in shape[2:]:
        core = min(length, size)
        start = (length - core) // 2
        low, high = max(0, start - radius), min(length, start + core + radius)
        spans.append((slice(start, start + core), slice(low, high), slice(start - low, start - low + core)))
    return spans


def _centre_reference(
    model: CloudRemovalNetwork, eager: PredictFn, s2: np.ndarray, s1: np.ndarray | None, size: int = CHECK_SIZE
) -> tuple[np.ndarray, tuple[slice, slice]]:
    """Eager fp32 output of the batch's central ``size`` x ``size`` pixels and where they lie in the batch.

    Computed on a crop that extends the receptive-field radius beyond them (or reaches the batch's border,
    where the zero padding is the same), so it equals the centre of the whole batch's output while costing a
    fraction of it.
    """
    (rows, crop_rows, in_rows), (cols, crop_cols, in_cols) = _centre_crop(model, s2.shape, size)
    crop = eager(s2[:, :, crop_rows, crop_cols], None if s1 is None else s1[:, :, crop_rows, crop_cols])
    return crop[:, :, in_rows, in_cols], (rows, cols)


class CheckedBackend:
    """A predict function that settles its backend on the first batch it runs.

    The first candidate is built and run on that batch (in the float32 mode of the run: ``ieee`` or ``tf32``,
    set by the caller, :class:`dsen2cr.predictor.Predictor`); IEEE fp32 eager runs only on a crop around the
    batch's centre (:func:`_centre_reference`), and the candidate is kept when its centre is within
    ``TOLERANCE_DN`` of it (the largest |difference| in DN, reflectance x 10000). A candidate that fails to
    build, to run or to agree is dropped with a logged warning, and the next one runs the same batch; eager
    in IEEE fp32, the reference itself, needs no check. With ``strict`` (a backend or precision the user
    named) the failure is raised instead. Checking on real data costs no extra forward pass: a compiled
    backend is built for the shape it will run, and the batch's prediction is the one used. ``backend`` names
    the backend in use (the first candidate until the first batch has run); ``check_dn`` the measured 99th
    percentile and largest |difference| to IEEE fp32 in DN (0, 0 for the reference itself); ``arithmetic`` what
    computes, in words.
    """

    def __init__(
        self,
        model: CloudRemovalNetwork,
        device: torch.device,
        candidates: list[str],
        *,
        strict: bool,
        float32: str = "ieee",
    ) -> None:
        self.model = model
        self.device = device
        self.candidates = list(candidates)
        self.strict = strict
        self.float32 = float32
        self.reference = _eager(model, device)
        self.settled: PredictFn | None = None
        self.check_dn: tuple[float, float] | None = None
        self._arithmetic: str | None = None

    @property
    def backend(self) -> str:
        """The backend in use (the one being tried before the first batch)."""
        return self.candidates[0]

    @property
    def precision(self) -> str:
        """What computes: ``fp16``/``bf16`` for those backends, else ``tf32`` or IEEE ``fp32`` (the float32 mode)."""
        return self.backend if self.backend in HALF_DTYPES else "tf32" if self.float32 == "tf32" else "fp32"

    def __call__(self, s2: np.ndarray, s1: np.ndarray | None) -> np.ndarray:
        """Predict one batch (model units), settling the backend on the first."""
        if self.settled is not None:
            return self.settled(s2, s1)
        tried = False
        while not (self.candidates[0] == "eager" and self.float32 == "ieee"):
            tried = True
            prediction = self._try(self.candidates[0], s2, s1)
            if prediction is not None:
                return prediction
            self.candidates.pop(0)
            if not self.candidates:
                self.candidates = ["eager"]
                self.float32 = "ieee"  # what remains is the reference itself
        if tried:  # (the predictor said so already when eager in IEEE fp32 was all it was asked for)
            log.info("backend: eager, IEEE fp32 (the candidates above were dropped)")
        self.settled, self.check_dn, self._arithmetic = self._ieee_reference, (0.0, 0.0), FLOAT32_ARITHMETIC["ieee"]
        return self._ieee_reference(s2, s1)

    @property
    def arithmetic(self) -> str:
        """What computes, in words: the settled backend's arithmetic (IEEE fp32 for the reference itself, known
        before the first batch); ``settled on the first batch`` until then."""
        if self._arithmetic is not None:
            return self._arithmetic
        reference = self.candidates == ["eager"] and self.float32 == "ieee"
        return FLOAT32_ARITHMETIC["ieee"] if reference else "settled on the first batch"

    def drop_settled(self) -> None:
        """Drop the settled backend (a 16-bit one that overflowed on a later batch): the next batch settles the
        next candidate, checked against IEEE fp32 as the first batch was."""
        self.candidates.pop(0)
        if not self.candidates:
            self.candidates, self.float32 = ["eager"], "ieee"
        self.settled, self.check_dn, self._arithmetic = None, None, None

    def _ieee_reference(self, s2: np.ndarray, s1: np.ndarray | None) -> np.ndarray:
        """The reference, eager in IEEE fp32 whatever float32 mode the caller set (after a TF32 candidate was
        dropped, the predictor's calls still set TF32: the fall back must not compute in it)."""
        with float32_arithmetic("ieee"):
            return self.reference(s2, s1)

    def _try(self, candidate: str, s2: np.ndarray, s1: np.ndarray | None) -> np.ndarray | None:
        """Build and run ``candidate`` on the batch and check it against IEEE fp32: its prediction, or None
        when it failed (warned; raised when ``strict``)."""
        try:
            start = time.perf_counter()
            predictor = self.reference if candidate == "eager" else build_backend(self.model, candidate, self.device)
            prediction = predictor(s2, s1)
            first_call = time.perf_counter() - start
            start = time.perf_counter()
            with float32_arithmetic("ieee"):
                reference, (rows, cols) = _centre_reference(self.model, self.reference, s2, s1)
            reference_seconds = time.perf_counter() - start
        except Exception as exc:  # a backend that cannot build or run here (no compiler, unsupported op, ...)
            if self.strict:  # the user named it: the environment cannot run it (not a bug of ours)
                reason = " ".join(str(exc).split())[:200]
                raise DSen2CRError(
                    f"backend {candidate}: cannot be built or run here ({type(exc).__name__}: {reason}); "
                    "use --backend eager or auto"
                ) from exc
            log.warning("backend %s unavailable (%s: %s); trying the next", candidate, type(exc).__name__, exc)
            return None
        p99, worst = distance_dn(prediction[..., rows, cols], reference)
        tolerance = max(TOLERANCE_DN[candidate], TF32_TOLERANCE_DN if self.float32 == "tf32" else 0.0)
        what = f"backend {candidate} ({self.precision})"
        if worst <= tolerance:
            log.info(
                "%s: within %.0f DN of IEEE fp32 on the first batch's centre (p99 %.1f DN, max %.1f DN)",
                what,
                tolerance,
                p99,
                worst,
            )
            if candidate == "compiled":
                self._record_build(s2.shape, first_call, reference_seconds)
            self.settled, self.check_dn = predictor, (p99, worst)
            self._arithmetic = self._arithmetic_of(candidate, predictor)
            return prediction
        message = (
            f"{what} disagrees with IEEE fp32 eager on the first batch: p99 {p99:.1f} DN, max {worst:.1f} DN, "
            f"tolerance {tolerance:.0f} DN"
        )
        if self.strict:
            raise DSen2CRError(f"{message}; use --backend eager or auto")
        log.warning("%s; trying the next", message)
        return None

    def _arithmetic_of(self, candidate: str, predictor: PredictFn) -> str:
        """The words of ``candidate``'s arithmetic: its own (a family's fused form), else by its name."""
        float32 = FLOAT32_ARITHMETIC[self.float32]
        named = {"eager": float32, "compiled": f"{float32}, compiled by inductor"}
        return str(getattr(predictor, "arithmetic", None) or named.get(candidate, f"{candidate} autocast"))

    def _record_build(self, shape: tuple[int, ...], first_call: float, reference_seconds: float) -> None:
        """Record what building the compiled backend cost, for the next run's ``--backend auto``: the first
        call's time less what a compiled forward of the batch costs, estimated from the eager check's rate
        on its crop (:data:`dsen2cr.compile_cache.COMPILE_SAVING` faster)."""
        (_, crop_rows, _), (_, crop_cols, _) = _centre_crop(self.model, shape, CHECK_SIZE)
        crop_pixels = (crop_rows.stop - crop_rows.start) * (crop_cols.stop - crop_cols.start)
        forward = (1 - COMPILE_SAVING) * reference_seconds * shape[2] * shape[3] / crop_pixels
        batch, _, height, width = shape
        build = max(0.0, first_call - forward)
        record_build_seconds(build_key(self.model.config, (batch, height, width), self.device), build)


def select_backend(
    model: CloudRemovalNetwork,
    candidates: Sequence[str],
    device: str | torch.device = "cpu",
    *,
    strict: bool = False,
    float32: str = "ieee",
) -> CheckedBackend:
    """The first of ``candidates`` that builds, runs and agrees with eager fp32 on the first batch it predicts,
    then the next, ..., then eager (:class:`CheckedBackend`); with ``strict`` (a backend the user named) its
    failure is a one-line error instead. Which candidates to try is decided in :func:`dsen2cr.auto.plan_backend`."""
    device = torch.device(device)
    model = model.to(device).eval()
    unknown = [name for name in candidates if name not in BACKENDS[1:]]
    if unknown or not candidates:
        raise DSen2CRError(f"backend: expected some of {BACKENDS[1:]}, got {list(candidates)!r}")
    tried = list(candidates)
    if tried[-1] != "eager":
        tried.append("eager")  # the reference, never reached by a named backend (strict: its failure raises)
    return CheckedBackend(model, device, tried, strict=strict, float32=float32)
