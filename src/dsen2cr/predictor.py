"""Where a predictor is built: the one way from weights (or a model in memory) to something that runs batches
(docs/design.md §4.2). ``evaluate``, ``remove-clouds``, ``demo`` and the Python API all go through here; which
backends to try is decided in :mod:`dsen2cr.auto`."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dsen2cr.auto import device_name, float32_mode_of, plan_backend, resolve_device, resolve_precision
from dsen2cr.backends import FLOAT32_ARITHMETIC, CheckedBackend, ComputedBy, select_backend
from dsen2cr.calibration import Intervals
from dsen2cr.ensemble_file import is_ensemble_file
from dsen2cr.errors import DSen2CRError, HalfPrecisionOverflowError
from dsen2cr.models import CloudRemovalNetwork, ModelSpec
from dsen2cr.onednn import refuse_lowered_cpu_float32
from dsen2cr.onnx_runtime import OnnxPredictor
from dsen2cr.outputs.files import file_sha256
from dsen2cr.precision import HALF_DTYPES, float32_arithmetic
from dsen2cr.settings import ScenePlan

log = logging.getLogger(__name__)

#: (batch, height, width) of the windows a predictor will run, or a function of the model configuration that
#: gives it (the tile depends on the model): ``--backend auto`` looks up what compiling that shape cost before.
WindowShape = tuple[int, int, int] | Callable[[ModelSpec], tuple[int, int, int]]
#: Why one model's variance is not split (the refusals of :meth:`Predictor.predict_variance_parts` and of
#: ``--uncertainty-parts``).
ONE_MODEL_HAS_NO_PARTS = (
    "one model's variance is all aleatoric (the noise it predicts); the epistemic part is the disagreement of "
    "an ensemble's members: give several weights files (--weights A B C, load_ensemble)"
)


@dataclass(frozen=True)
class Predictor:
    """A model ready to run: ``predictor(s2, s1)`` maps a batch in model units ((N, 13, H, W) and (N, 2, H, W)
    or None) to predictions in model units, with what callers need to know about the model."""

    #: What runs the batches: a checked PyTorch backend, an ONNX session, or another function of a batch (an
    #: ensemble's members, a custom function) that may carry ``backend``, ``precision``, ``check_dn``,
    #: ``uncertainty`` and ``predict_with_variance`` like them.
    predict: CheckedBackend | OnnxPredictor | Callable[[np.ndarray, np.ndarray | None], np.ndarray]
    config: ModelSpec
    device: torch.device
    #: The float32 arithmetic of every call (``ieee`` or ``tf32``), set for the call and restored after it.
    float32: str = "ieee"
    #: The weights file's name and SHA-256 (None for a model in memory).
    weights: str | None = None
    weights_sha256: str | None = None
    #: The likelihood that trained its variance, as its training record names it (``lnll (Laplace)``; None:
    #: unknown): what sigma's intervals mean.
    likelihood: str | None = None
    #: The calibration of its sigma fitted after training (``dsen2cr weights calibrate-sigma``), as outputs name
    #: it; None: sigma as trained.
    sigma_calibration: str | None = None
    #: The intervals that calibration measured where it was fitted: (share of the values, each band's multiple of
    #: its sigma).
    sigma_intervals: Intervals = ()

    @property
    def backend(self) -> str:
        """The backend in use: eager, compiled, bf16 or onnxruntime (a PyTorch backend is settled, and may fall
        back to eager, on the first batch: :class:`~dsen2cr.backends.CheckedBackend`); ``custom`` for a plain
        function put in its place."""
        return str(getattr(self.predict, "backend", "custom"))

    @property
    def precision(self) -> str:
        """What computes: fp32 (IEEE), tf32, fp16, bf16 or int8 (``unknown`` for a plain function)."""
        return str(getattr(self.predict, "precision", "unknown"))

    @property
    def check_dn(self) -> tuple[float, float] | None:
        """The first batch's check against IEEE fp32: (99th percentile, largest) |difference| in DN; (0, 0)
        for IEEE fp32 eager (the reference itself); None before the first batch, or for ONNX files."""
        return getattr(self.predict, "check_dn", None)

    def computed_by(self, *, with_variance: bool = False) -> ComputedBy:
        """The backend, precision, first-batch check (:attr:`check_dn`) and arithmetic in words of what computed
        the predictions. ``with_variance``: they came from :meth:`predict_with_variance`, which runs a PyTorch
        model eagerly in the predictor's float32 arithmetic (IEEE fp32, the reference itself, or TF32), not its
        checked backend; an ensemble answers for its members as it ran them."""
        if with_variance and isinstance(self.predict, CheckedBackend):
            exact = self.float32 == "ieee"
            check = (0.0, 0.0) if exact else None
            return ComputedBy("eager", "fp32" if exact else "tf32", check, FLOAT32_ARITHMETIC[self.float32])
        members = getattr(self.predict, "computed_by", None)  # an ensemble's backend
        if members is not None:
            return members(with_variance=with_variance)
        arithmetic = str(getattr(self.predict, "arithmetic", "unknown"))
        return ComputedBy(self.backend, self.precision, self.check_dn, arithmetic)

    def provenance(self, *, with_variance: bool = False) -> dict[str, str]:
        """What computed the predictions, for an output's metadata (tags ``DSEN2CR_*``). ``with_variance``: the
        predictions came from :meth:`predict_with_variance`, which runs a PyTorch model eagerly in the
        predictor's float32 arithmetic (IEEE fp32, the reference itself, or TF32), not its checked backend."""
        from dsen2cr.models import family_of
        from dsen2cr.version import __version__

        backend, precision, check, arithmetic = self.computed_by(with_variance=with_variance)
        try:
            family = f"{family_of(self.config).name} "
        except DSen2CRError:  # an ensemble: its description names its members
            family = ""
        return {
            "DSEN2CR_VERSION": __version__,
            "DSEN2CR_MODEL": f"{family}{self.config.describe()}",
            "DSEN2CR_WEIGHTS": self.weights or "a model in memory",
            "DSEN2CR_WEIGHTS_SHA256": self.weights_sha256 or "unknown",
            "DSEN2CR_PRECISION": precision,
            "DSEN2CR_BACKEND": backend,
            "DSEN2CR_ARITHMETIC": arithmetic,  # the form (bf16 by oneDNN or emulated, its residual stream's type)
            "DSEN2CR_DEVICE": device_name(self.device),  # one precision's name computes otherwise on a GPU and a CPU
            "DSEN2CR_CHECK_P99_DN": "not checked" if check is None else f"{check[0]:.2f}",
            "DSEN2CR_CHECK_MAX_DN": "not checked" if check is None else f"{check[1]:.2f}",
        } | (self._sigma_provenance() if with_variance else {})

    def _sigma_provenance(self) -> dict[str, str]:
        """What trained the sigma of the outputs, how it was calibrated after training, and the intervals that
        calibration measured (JSON: share of the values -> each band's multiple of sigma, for programs to read)."""
        intervals = {f"{level:g}": list(multiples) for level, multiples in self.sigma_intervals}
        return {
            "DSEN2CR_LIKELIHOOD": self.likelihood or "unknown (no training record)",
            "DSEN2CR_SIGMA_CALIBRATION": self.sigma_calibration or "none (sigma as trained)",
            "DSEN2CR_SIGMA_INTERVALS": json.dumps(intervals) if intervals else "none",
        }

    def __call__(self, s2: np.ndarray, s1: np.ndarray | None) -> np.ndarray:
        """Predict one batch (model units) in the predictor's float32 arithmetic; a prediction with NaN,
        infinite or absurdly large values stops the run (it would otherwise be written as nodata, clipped, or
        scored as a number): :class:`~dsen2cr.errors.HalfPrecisionOverflowError` when ``auto`` chose the 16-bit
        precision that overflowed (a scene run then falls back), else :class:`DSen2CRError`."""
        with float32_arithmetic(self.float32):
            prediction = self.predict(s2, s1)
        if not _sums_to_a_finite_number(prediction):
            hint = " (fp16 holds values up to 65504: use --precision tf32 or fp32)" if self.precision == "fp16" else ""
            message = (
                f"the model ({self.backend}, {self.precision}) predicted NaN, infinite or absurdly large values for "
                f"finite inputs; its weights are broken or overflow at this precision{hint}"
            )
            checked = self.predict
            if isinstance(checked, CheckedBackend) and not checked.strict and checked.precision in HALF_DTYPES:
                raise HalfPrecisionOverflowError(message, checked.drop_settled)  # auto chose it: fall back
            raise DSen2CRError(f"{message}: nothing was written")
        return prediction

    @property
    def uncertainty(self) -> str:
        """``diag`` when :meth:`predict_with_variance` gives a variance per band and pixel, else ``none``."""
        if isinstance(self.predict, CheckedBackend):
            return self.config.uncertainty
        return str(getattr(self.predict, "uncertainty", "none"))  # an ONNX file's outputs, an ensemble: always

    def predict_with_variance(self, s2: np.ndarray, s1: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """The prediction and its variance (model units, model units squared) of one batch, from one eager pass
        in the predictor's float32 arithmetic on its device; non-finite values stop the run as in
        :meth:`__call__`. For a PyTorch model with ``uncertainty: diag`` (not an ONNX file)."""
        model = getattr(self.predict, "model", None)
        if self.uncertainty != "diag":
            raise DSen2CRError(
                f"{self.weights or 'this model'}: predicts no uncertainty (model.uncertainty: "
                f"{self.config.uncertainty}); train one with model.uncertainty=diag"
            )
        if not isinstance(self.predict, CheckedBackend):  # an ONNX file, an ensemble
            arrays = self.predict.predict_with_variance(s2, s1)  # type: ignore[attr-defined]  # ONNX, ensemble
        else:
            assert isinstance(model, CloudRemovalNetwork)  # a checked backend holds the eager model
            with float32_arithmetic(self.float32), torch.inference_mode():
                s1_tensor = None if s1 is None else torch.as_tensor(s1).to(self.device, torch.float32)
                s2_tensor = torch.as_tensor(s2).to(self.device, torch.float32)
                mean, variance = model.forward_with_variance(s2_tensor, s1_tensor)
            arrays = mean.cpu().numpy(), variance.cpu().numpy()
        if not all(_sums_to_a_finite_number(array) for array in arrays):
            raise DSen2CRError(
                "the model predicted NaN, infinite or absurdly large values or variances for finite inputs; its "
                "weights are broken: nothing was written"
            )
        return arrays

    @property
    def member_uncertainties(self) -> list[str] | None:
        """An ensemble's members' :attr:`uncertainty` (None for one model)."""
        members = getattr(self.predict, "members", None)  # an ensemble's backend
        return None if members is None else [member.uncertainty for member in members]

    @property
    def has_variance_parts(self) -> bool:
        """Whether :meth:`predict_variance_parts` gives both parts: an ensemble of which a member predicts a
        variance (without one, its aleatoric part is unknown)."""
        return "diag" in (self.member_uncertainties or [])

    def predict_variance_parts(self, s2: np.ndarray, s1: np.ndarray | None) -> tuple[np.ndarray, ...]:
        """An ensemble's prediction and the two parts of its variance, aleatoric (the mean of the members'
        predicted variances) and epistemic (the variance of their predictions), of one batch (model units,
        float32); non-finite values stop the run as in :meth:`__call__`. One model has no parts: its variance
        (:meth:`predict_with_variance`) is all aleatoric."""
        parts = getattr(self.predict, "predict_variance_parts", None)  # an ensemble's backend
        if parts is None:
            raise DSen2CRError(f"{self.weights or 'this model'}: {ONE_MODEL_HAS_NO_PARTS}")
        arrays = parts(s2, s1)
        if not all(_sums_to_a_finite_number(array) for array in arrays):
            raise DSen2CRError(
                "the ensemble predicted NaN, infinite or absurdly large values or variances for finite inputs; a "
                "member's weights are broken: nothing was written"
            )
        return arrays

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


@dataclass(frozen=True)
class Network:
    """A loaded network before a backend is chosen: a PyTorch model, or an ONNX file's onnxruntime session."""

    model: CloudRemovalNetwork | OnnxPredictor
    config: ModelSpec
    #: The weights file's name and SHA-256 (None for a model in memory): what every output records.
    weights: str | None = None
    weights_sha256: str | None = None
    likelihood: str | None = None  # what trained its variance (:attr:`Predictor.likelihood`)
    sigma_calibration: str | None = None  # :attr:`Predictor.sigma_calibration`
    sigma_intervals: Intervals = ()  # :attr:`Predictor.sigma_intervals`

    @property
    def described(self) -> tuple[str | None, str | None, str | None, str | None, Intervals]:
        """What a predictor of it says of it: the file's name and SHA-256, what trained its sigma, the calibration
        of its sigma and that calibration's intervals (:class:`Predictor`'s fields)."""
        return self.weights, self.weights_sha256, self.likelihood, self.sigma_calibration, self.sigma_intervals

    @property
    def onnx(self) -> bool:
        """Whether it is an exported ONNX file (it runs with onnxruntime only)."""
        return isinstance(self.model, OnnxPredictor)


def recorded_sha256(digests: Iterable[str | None]) -> str:
    """What an output's ``DSEN2CR_WEIGHTS_SHA256`` records for weights of these SHA-256 digests: one file's, or an
    ensemble's members' in order, joined by ``;`` (``unknown`` for a model in memory)."""
    return ";".join(digest or "unknown" for digest in digests)


def is_onnx(weights: str | Path) -> bool:
    """Whether a weights file is an exported ONNX model (by its suffix)."""
    return Path(weights).suffix.lower() == ".onnx"


def load_network(weights: str | Path, *, device: torch.device) -> Network:
    """The network in a weights file: ONNX files (fp32 or int8) as onnxruntime sessions, safetensors, Lightning
    checkpoints and Keras HDF5 as PyTorch models on ``device``."""
    from dsen2cr.weights import (  # (lazy: h5py)
        check_weights_file,
        load_model_and_record,
        recorded_likelihood,
        recorded_sigma_calibration,
    )

    # a regular file first: hashing a FIFO or a device would wait forever
    digest = file_sha256(check_weights_file(weights, "ONNX" if is_onnx(weights) else "weights"))
    network: CloudRemovalNetwork | OnnxPredictor
    if is_onnx(weights):
        network = OnnxPredictor(weights, device=str(device))
        record = dict(network.session.get_modelmeta().custom_metadata_map)  # the scale is in its graph already
    else:
        network, record = load_model_and_record(weights, device=device)
    calibration = recorded_sigma_calibration(record, weights)
    return Network(network, network.config, Path(weights).name, digest, recorded_likelihood(record), *calibration)


def predictor_for_plan(network: Network | CloudRemovalNetwork, plan: ScenePlan) -> Predictor:
    """The predictor of a run's plan: its backends tried in order on the first batch (strict: a named one), in
    the plan's precision."""
    if not isinstance(network, Network):
        network = Network(network, network.config)
    return _predictor(network, plan.backends, plan.device, strict=plan.strict_backend, precision=plan.precision)


def _predictor(
    network: Network, backends: tuple[str, ...], device: torch.device, *, strict: bool, precision: str
) -> Predictor:
    """A predictor over ``backends`` (``("onnxruntime",)`` for an ONNX file) in ``precision`` (resolved)."""
    if isinstance(network.model, OnnxPredictor):
        if backends != ("onnxruntime",):
            raise DSen2CRError(f"backend {backends[0]}: an ONNX file runs with the onnxruntime backend (or auto)")
        log.info("backend: onnxruntime (%s)", network.model.precision)
        return Predictor(network.model, network.config, device, "ieee", *network.described)
    if device.type == "cpu":
        refuse_lowered_cpu_float32(f"a {precision} run on the CPU (IEEE fp32, or checked against it)")
    float32 = float32_mode_of(precision, device)
    checked = select_backend(network.model, backends, device, strict=strict, float32=float32)
    if checked.candidates == ["eager"] and float32 == "ieee":
        log.info("backend: eager, IEEE fp32")
    else:
        log.info("backend: trying %s (%s), checked against IEEE fp32 on the first batch", *backends[:1], precision)
    return Predictor(checked, network.config, device, float32, *network.described)


def predictor_from_model(
    model: CloudRemovalNetwork,
    *,
    backend: str = "eager",
    device: str | torch.device = "auto",
    precision: str = "auto",
    window_shape: WindowShape | None = None,
    pixels: float | None = None,
) -> Predictor:
    """A predictor for a model in memory (``backend`` as :func:`dsen2cr.auto.plan_backend` and ``precision``
    as :func:`dsen2cr.auto.resolve_precision` take them; ``auto`` considers a run over ``pixels`` in windows of
    ``window_shape``)."""
    resolved = resolve_device(device)  # --backend onnxruntime for a model in memory: refused by plan_backend
    return _predictor_with(Network(model, model.config), backend, resolved, precision, window_shape, pixels)


def load_predictor(
    weights: str | Path,
    *,
    backend: str = "auto",
    device: str | torch.device = "auto",
    precision: str = "auto",
    window_shape: WindowShape | None = None,
    pixels: float | None = None,
    exact: bool = False,
) -> Predictor:
    """The predictor for a weights file (see :func:`load_network`; ``backend`` and ``precision`` as
    :func:`predictor_from_model` takes them; ``exact``: ``auto`` is IEEE fp32 on every device). Several files
    make an ensemble: :func:`dsen2cr.ensemble.load_ensemble`."""
    if not isinstance(weights, str | os.PathLike):
        raise DSen2CRError(
            "weights: load_predictor takes one file; for an ensemble of several, dsen2cr.load_ensemble(files)"
        )
    if is_ensemble_file(weights):
        raise DSen2CRError(f"{weights}: an ensemble file names several networks; load it with dsen2cr.load_ensemble")
    plan_backend(backend, "fp32", None, torch.device("cpu"), onnx=is_onnx(weights))  # refused before loading
    resolved = resolve_device(device)
    network = load_network(weights, device=resolved)
    return _predictor_with(network, backend, resolved, precision, window_shape, pixels, exact=exact)


def load_exact_predictor(
    weights: str | Path, *, device: str | torch.device = "auto", precision: str = "auto"
) -> Predictor:
    """The predictor whose numbers are judged or fitted on (``evaluate``, ``weights calibrate-sigma``): eager, in IEEE
    fp32 on every device unless ``precision`` says otherwise; an ONNX file (fp32 or int8) runs as exported."""
    # a 16-bit precision runs its own backend (auto then is it): no float32 backend named beside it
    backend = "onnxruntime" if is_onnx(weights) else "auto" if precision in HALF_DTYPES else "eager"
    return load_predictor(weights, backend=backend, device=device, precision=precision, exact=True)


def _predictor_with(
    network: Network,
    backend: str,
    device: torch.device,
    precision: str,
    window_shape: WindowShape | None,
    pixels: float | None,
    *,
    exact: bool = False,
) -> Predictor:
    """:func:`dsen2cr.auto.resolve_precision` and :func:`dsen2cr.auto.plan_backend` for ``network``, then its
    predictor."""
    shape = window_shape(network.config) if callable(window_shape) else window_shape
    resolved = resolve_precision(precision, device, onnx=network.onnx, exact=exact, backend=backend)
    backends, strict = plan_backend(
        backend,
        resolved,
        network.config,
        device,
        onnx=network.onnx,
        named_precision=precision != "auto",
        pixels=pixels,
        window_shape=shape,
    )
    return _predictor(network, backends, device, strict=strict, precision=resolved)
