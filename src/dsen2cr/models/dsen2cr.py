"""The DSen2-CR family (Meraner et al. 2020, docs/design.md §3.1): the network as a plain ``torch.nn.Module``,
its configuration and variants with the published weights, and the parts that know its layers: the fused bf16
form for CUDA and the mapping of the authors' Keras layers. Registered in :mod:`dsen2cr.models`."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dsen2cr.errors import DSen2CRError
from dsen2cr.models.registry import (
    UNCERTAINTY_KINDS,
    CloudRemovalNetwork,
    KerasLayer,
    ModelFamily,
    ModelVariant,
    PublishedWeights,
    variance_from_raw,
)
from dsen2cr.precision import HALF_DTYPES, cpu_computes_bf16, float32_arithmetic
from dsen2cr.preprocessing import NUM_S1_BANDS, NUM_S2_BANDS

#: The largest networks a weights file or a config may describe: 16x the paper's depth, 16x its width. Checked
#: before anything is built, so a file declaring a million blocks is refused instead of allocated.
MAX_BLOCKS = 256
MAX_FEATURES = 4096
#: The residual scaling of the paper and of its Keras files.
PAPER_RES_SCALE = 0.1


def _conv3x3(in_channels: int, out_channels: int) -> nn.Conv2d:
    """A 3x3, stride-1, 'same'-padded convolution with bias, He-uniform kernel and zero bias."""
    conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1, bias=True)
    # Keras he_uniform: U(-sqrt(6 / fan_in), +sqrt(6 / fan_in)), fan_in = in_channels * 3 * 3.
    nn.init.kaiming_uniform_(conv.weight, a=0.0, mode="fan_in", nonlinearity="relu")
    if conv.bias is not None:  # always (bias=True); narrows the type
        nn.init.zeros_(conv.bias)
    return conv


class ResidualBlock(nn.Module):
    """Conv -> ReLU -> Conv, scaled by ``res_scale`` and added to the block input."""

    def __init__(self, num_features: int, res_scale: float) -> None:
        super().__init__()
        self.conv1 = _conv3x3(num_features, num_features)
        self.conv2 = _conv3x3(num_features, num_features)
        self.res_scale = res_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block."""
        return x + self.conv2(torch.relu(self.conv1(x))) * self.res_scale


class DSen2CR(CloudRemovalNetwork):
    """DSen2-CR: a deep residual network that predicts a correction to the cloudy S2 image.

    Args:
        num_blocks: number of residual blocks (paper: B = 16).
        num_features: width of every hidden convolution (paper: F = 256).
        include_sar: whether the network takes the two S1 bands next to the 13 S2 bands.
        res_scale: scaling of each residual branch (paper: 0.1).
        uncertainty: ``none`` (the paper), or ``diag``: a second tail (Conv 3x3, F -> 13) on the same features
            predicts a variance per band and pixel (:func:`~dsen2cr.models.registry.variance_from_raw`).

    Inputs and outputs are in model units (``dsen2cr.preprocessing``); any height and width work.
    """

    def __init__(
        self,
        num_blocks: int = 16,
        num_features: int = 256,
        include_sar: bool = True,
        res_scale: float = 0.1,
        uncertainty: str = "none",
    ) -> None:
        super().__init__()
        if num_blocks < 0 or num_features < 1:
            raise ValueError(f"num_blocks must be >= 0 and num_features >= 1, got {num_blocks}, {num_features}")
        if uncertainty not in UNCERTAINTY_KINDS:
            raise ValueError(f"uncertainty must be one of {UNCERTAINTY_KINDS}, got {uncertainty!r}")
        self.config = ModelConfig(num_blocks, num_features, include_sar, res_scale, uncertainty)
        in_channels = NUM_S2_BANDS + (NUM_S1_BANDS if include_sar else 0)
        self.head = _conv3x3(in_channels, num_features)
        self.blocks = nn.Sequential(*(ResidualBlock(num_features, res_scale) for _ in range(num_blocks)))
        self.tail = _conv3x3(num_features, NUM_S2_BANDS)
        if uncertainty == "diag":
            self.variance_tail = _conv3x3(num_features, NUM_S2_BANDS)

    @property
    def include_sar(self) -> bool:
        """Whether the model expects an S1 input."""
        return self.config.include_sar

    def forward(self, s2_cloudy: torch.Tensor, s1: torch.Tensor | None = None) -> torch.Tensor:
        """Predict the cloud-free S2 image (N, 13, H, W) from the cloudy S2 (N, 13, H, W) and S1 (N, 2, H, W)."""
        x = self._check_inputs(s2_cloudy, s1)
        features = torch.relu(self.head(x))
        return self.tail(self.blocks(features)) + s2_cloudy

    def forward_with_variance(
        self, s2_cloudy: torch.Tensor, s1: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The prediction and its variance per band and pixel (model units squared, times the square of a
        calibration's sigma scale where one is set), from one pass."""
        if self.config.uncertainty != "diag":
            return super().forward_with_variance(s2_cloudy, s1)
        features = self.blocks(torch.relu(self.head(self._check_inputs(s2_cloudy, s1))))
        variance = self.scaled_variance(variance_from_raw(self.variance_tail(features)))
        return self.tail(features) + s2_cloudy, variance

    def _check_inputs(self, s2_cloudy: torch.Tensor, s1: torch.Tensor | None) -> torch.Tensor:
        """Validate shapes and return the network input (S2, or S2 and S1 concatenated)."""
        if s2_cloudy.ndim != 4 or s2_cloudy.shape[1] != NUM_S2_BANDS:
            raise ValueError(f"s2_cloudy: expected shape (N, {NUM_S2_BANDS}, H, W), got {tuple(s2_cloudy.shape)}")
        if not self.include_sar:
            if s1 is not None:
                raise ValueError("s1: this model was built without SAR (include_sar=False); pass s1=None")
            return s2_cloudy
        if s1 is None:
            raise ValueError("s1: this model needs the S1 input (include_sar=True), got None")
        expected = (s2_cloudy.shape[0], NUM_S1_BANDS, *s2_cloudy.shape[2:])
        if tuple(s1.shape) != expected:
            raise ValueError(f"s1: expected shape {expected} to match s2_cloudy, got {tuple(s1.shape)}")
        return torch.cat((s2_cloudy, s1), dim=1)


@dataclass(frozen=True)
class ModelConfig:
    """The hyperparameters that define a DSen2-CR network (enough to rebuild it from a weights file)."""

    num_blocks: int = 16
    num_features: int = 256
    include_sar: bool = True
    res_scale: float = 0.1
    uncertainty: str = "none"

    def to_dict(self) -> dict[str, int | float | bool]:
        """Return the configuration as a plain dict."""
        return asdict(self)

    def build_parameter_count(self) -> int:
        """Number of parameters of a network with this configuration (without building it)."""
        inputs = NUM_S2_BANDS + (NUM_S1_BANDS if self.include_sar else 0)
        f = self.num_features
        tails = 2 if self.uncertainty == "diag" else 1
        return (inputs * 9 + 1) * f + self.num_blocks * 2 * (f * 9 + 1) * f + tails * (f * 9 + 1) * NUM_S2_BANDS

    @property
    def receptive_radius(self) -> int:
        """Pixels on each side that influence one output pixel: one per 3x3 convolution (2 per block + 2)."""
        return 2 * self.num_blocks + 2

    @property
    def hidden_channels(self) -> int:
        """Channels of the widest feature map: F."""
        return self.num_features

    def describe(self) -> str:
        """``B=16, F=256 with SAR``."""
        sigma = ", variance per band" if self.uncertainty == "diag" else ""
        return f"B={self.num_blocks}, F={self.num_features} {'with' if self.include_sar else 'without'} SAR{sigma}"

    def build(self) -> DSen2CR:
        """Build a freshly initialised network with this configuration."""
        return DSen2CR(
            num_blocks=self.num_blocks,
            num_features=self.num_features,
            include_sar=self.include_sar,
            res_scale=self.res_scale,
            uncertainty=self.uncertainty,
        )


def config_from_dict(raw: Any, where: str) -> ModelConfig:
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
    if values["uncertainty"] not in UNCERTAINTY_KINDS:
        raise DSen2CRError(
            f"{where}: model configuration uncertainty must be one of {', '.join(UNCERTAINTY_KINDS)}, "
            f"got {values['uncertainty']!r}"
        )
    return ModelConfig(
        values["num_blocks"], values["num_features"], values["include_sar"], float(scale), values["uncertainty"]
    )


class FusedHalf(torch.nn.Module):
    """The network in 16-bit floats (fp16 or bf16) for inference on CUDA, with fewer passes over the feature
    maps than autocast.

    Weights are stored in ``dtype`` and channels-last; the head and each block's first convolution run with
    their bias and ReLU in one cuDNN kernel (``torch.cudnn_convolution_relu``); the residual scale is folded
    into each block's second convolution; the block's output is added in place into the residual stream. The
    network input is cast once, and the long skip (``+ s2``) is added in fp32, as under autocast. cuDNN
    multiplies 16-bit values exactly and sums in fp32 for both types; they differ in rounding: fp16 keeps 11
    significant bits, bf16 8 (with fp32's range). Elsewhere than CUDA each convolution computes the same values
    in fp32 arithmetic (:meth:`_conv`; for tests and accuracy measurements).
    """

    def __init__(
        self, model: DSen2CR, *, dtype: torch.dtype = torch.float16, fp32_paths: bool = False, native_cpu: bool = False
    ) -> None:
        super().__init__()
        if dtype not in HALF_DTYPES.values():
            raise ValueError(f"FusedHalf: dtype must be torch.float16 or torch.bfloat16, got {dtype}")
        self.check_inputs = model._check_inputs
        self.dtype = dtype
        # fp32_paths (issue #27 item 3): the residual stream (the head's output and each block's sum) stays fp32
        # and each block's convolutions read a 16-bit copy of it, as the int8 export keeps its sums fp32; the
        # head (which reads the input) and the tail (whose output is the correction itself) run in IEEE fp32,
        # 2 of the 2B + 2 convolutions. On the whole bundled scene, paper-size model, against float64, p99 / max
        # in DN (python -m benchmarks.precision_accuracy --size 0): bf16 53.5 / 221.3, bf16 with fp32 paths
        # 14.0 / 45.1, fp16 6.9 / 29.0, fp16 with fp32 paths 1.8 / 7.4.
        self.fp32_paths = fp32_paths
        # native_cpu: off CUDA each 16-bit convolution computed by oneDNN in the 16-bit type (bf16 on a CPU that
        # computes it: the same exact products and fp32 sums in another order, several times fp32's speed on AMX)
        # in place of :meth:`_conv`'s emulation at fp32's speed
        self.native_cpu = native_cpu

        def weights(
            conv: torch.nn.Conv2d, scale: float = 1.0, to: torch.dtype = dtype
        ) -> tuple[torch.nn.Parameter, torch.nn.Parameter]:
            weight = (conv.weight.detach() * scale).to(to).contiguous(memory_format=torch.channels_last)
            assert conv.bias is not None  # every convolution of the network has a bias
            bias = (conv.bias.detach() * scale).to(to)
            return torch.nn.Parameter(weight, requires_grad=False), torch.nn.Parameter(bias, requires_grad=False)

        ends = torch.float32 if fp32_paths else dtype
        self.head = torch.nn.ParameterList(weights(model.head, to=ends))
        blocks: list[ResidualBlock] = list(model.blocks)  # type: ignore[arg-type]  # a Sequential of them
        # per block: first convolution's weight and bias, then the second's (residual scale folded in)
        self.blocks = torch.nn.ParameterList(
            [p for block in blocks for p in (*weights(block.conv1), *weights(block.conv2, block.res_scale))]
        )
        self.tail = torch.nn.ParameterList(weights(model.tail, to=ends))

    def arithmetic(self, device: torch.device) -> str:
        """What computes on ``device``, in words (the outputs' ``DSEN2CR_ARITHMETIC``)."""
        name = next(key for key, dtype in HALF_DTYPES.items() if dtype == self.dtype)
        by = "by cuDNN" if device.type == "cuda" else "by oneDNN" if self.native_cpu else "emulated in fp32"
        stream = "IEEE fp32 residual stream, head and tail" if self.fp32_paths else f"{name} residual stream"
        return f"{name} convolutions {by}, {stream}"

    def _conv_relu(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """ReLU(conv3x3(x) + bias), one cuDNN kernel on CUDA."""
        if x.is_cuda:
            return torch.cudnn_convolution_relu(x, weight, bias, (1, 1), (1, 1), (1, 1), 1)
        return torch.relu(self._convolve(x, weight, bias))

    def _convolve(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """conv3x3(x) + bias in the inputs' dtype: natively where ``native_cpu``, else as :meth:`_conv`."""
        if self.native_cpu:
            return torch.nn.functional.conv2d(x, weight, bias, padding=1)
        return self._conv(x, weight, bias)

    @staticmethod
    def _conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """conv3x3(x) + bias in the inputs' dtype. Off CUDA computed as the tensor cores do, fast on any CPU:
        the 16-bit values multiplied in fp32 (exactly: their products have at most 22 significant bits) and
        summed in fp32, the result rounded to the 16-bit type."""
        if x.is_cuda or x.dtype == torch.float32:
            return torch.nn.functional.conv2d(x, weight, bias, padding=1)
        return torch.nn.functional.conv2d(x.float(), weight.float(), bias.float(), padding=1).to(x.dtype)

    def forward(self, s2_cloudy: torch.Tensor, s1: torch.Tensor | None = None) -> torch.Tensor:
        """The prediction (fp32) of the network computed in ``dtype`` (with ``fp32_paths``: its residual
        stream, head and tail in IEEE fp32)."""
        x = self.check_inputs(s2_cloudy, s1)
        with float32_arithmetic("ieee"):  # the fp32 parts are IEEE fp32 whatever the caller set
            features = self._conv_relu(x.to(self.head[0].dtype), *self.head)
            params = list(self.blocks)
            for first in range(0, len(params), 4):
                conv1_weight, conv1_bias, conv2_weight, conv2_bias = params[first : first + 4]
                inner = self._conv_relu(features.to(self.dtype), conv1_weight, conv1_bias)
                # added in place, in the stream's dtype (16-bit, or fp32 with fp32_paths)
                features.add_(self._convolve(inner, conv2_weight, conv2_bias))
            out = self._convolve(features.to(self.tail[0].dtype), self.tail[0], self.tail[1])
        return out.float() + s2_cloudy


def _fused_half(model: CloudRemovalNetwork, precision: str, device: torch.device | None = None) -> nn.Module:
    """:class:`FusedHalf` of a DSen2-CR network in ``precision`` (fp16 or bf16) for ``device`` (None: CUDA). On CUDA
    its fused kernels, the residual stream 16-bit (issue #27 item 3 waits for the GPU's timing of the fp32 one). On
    a CPU the residual stream, head and tail in fp32, as autocast kept none of them (paper-size model, bundled
    scene, p99 / max DN from float64: bf16 14.0 / 45.1 against 53.5 / 221.3, fp16 1.8 / 7.4 against 6.9 / 29.0;
    benchmarks.precision_accuracy), its bf16 convolutions by oneDNN where the CPU computes bf16 (fp16's emulated:
    oneDNN's fp16 was slower than fp32 on an AVX512-FP16 CPU)."""
    assert isinstance(model, DSen2CR)  # the registry hands a family's hook only its own networks
    dtype = HALF_DTYPES[precision]
    if device is None or device.type == "cuda":
        return FusedHalf(model, dtype=dtype)
    return FusedHalf(model, dtype=dtype, fp32_paths=True, native_cpu=precision == "bf16" and cpu_computes_bf16())


def state_from_keras(convs: list[KerasLayer], path: Path) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """The configuration and state dict of the network in a published Keras file, from its convolutions in the
    file's layer order: head, two per block, tail (docs/design.md §3.8). SAR is read from the head's input
    channels, B from the number of convolutions, F from their shapes; Keras kernels (kh, kw, in, out) become
    PyTorch weights (out, in, kh, kw), not flipped (both are cross-correlations)."""
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
        expected = (3, 3, in_channels if target == "head" else features, out_channels)
        if kernel.shape != expected or bias.shape != (out_channels,):
            raise DSen2CRError(
                f"{path}: layer {name} ({target}): kernel {kernel.shape} and bias {bias.shape}, expected {expected} "
                f"and ({out_channels},) for a DSen2-CR with {num_blocks} blocks of {features} features"
            )
        state[f"{target}.weight"] = torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))).float()
        state[f"{target}.bias"] = torch.from_numpy(np.ascontiguousarray(bias)).float()
    return config, state


_ORIGINAL = "Meraner et al. 2020, the original README (Google Drive, Keras HDF5)"
_DRIVE = "https://drive.google.com/file/d/{}/view?usp=sharing"

#: The family's variants; the paper-size ones with the four published models.
VARIANTS = (
    ModelVariant(
        "dsen2cr",
        "dsen2cr",
        ModelConfig(16, 256, True),
        "the paper's model (B=16, F=256) with S1 input",
        (
            PublishedWeights("carl-sar", _DRIVE.format("1L3YUVOnlg67H5VwlgYO9uC9iuNlq7VMg"), "CARL", _ORIGINAL),
            PublishedWeights("l1-sar", _DRIVE.format("1zv4_91Yr2IYyYDoqhZw8KpnfvfLhkuBB"), "L1", _ORIGINAL),
        ),
    ),
    ModelVariant(
        "dsen2cr-nosar",
        "dsen2cr",
        ModelConfig(16, 256, False),
        "the paper's model without SAR",
        (
            PublishedWeights("carl-nosar", _DRIVE.format("1VHZa5-lX68mA2FbHeCiQsUq13oECw9DA"), "CARL", _ORIGINAL),
            PublishedWeights("l1-nosar", _DRIVE.format("11Th6UwKMXla7LGxsFJXwj-Jx9bSKlWUH"), "L1", _ORIGINAL),
        ),
    ),
    ModelVariant("dsen2cr-small", "dsen2cr", ModelConfig(4, 32, True), "B=4, F=32 for CPU experiments and tests"),
    ModelVariant("dsen2cr-small-nosar", "dsen2cr", ModelConfig(4, 32, False), "the small model without SAR"),
)

FAMILY = ModelFamily(
    name="dsen2cr",
    description="deep residual CNN fusing S2 and S1 (a correction added to the cloudy input)",
    reference="Meraner, Ebel, Zhu & Schmitt, ISPRS J. 166:333-346, 2020",
    config_type=ModelConfig,
    config_from_dict=config_from_dict,
    variants=VARIANTS,
    fused_half=_fused_half,
    keras_state=state_from_keras,
)
