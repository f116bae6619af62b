"""The DSen2-CR network (Meraner et al. 2020, docs/design.md §3.1) as a plain ``torch.nn.Module``."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from dsen2cr.preprocessing import NUM_S1_BANDS, NUM_S2_BANDS


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


class DSen2CR(nn.Module):
    """DSen2-CR: a deep residual network that predicts a correction to the cloudy S2 image.

    Args:
        num_blocks: number of residual blocks (paper: B = 16).
        num_features: width of every hidden convolution (paper: F = 256).
        include_sar: whether the network takes the two S1 bands next to the 13 S2 bands.
        res_scale: scaling of each residual branch (paper: 0.1).

    Inputs and outputs are in model units (``dsen2cr.preprocessing``); any height and width work.
    """

    def __init__(
        self, num_blocks: int = 16, num_features: int = 256, include_sar: bool = True, res_scale: float = 0.1
    ) -> None:
        super().__init__()
        if num_blocks < 0 or num_features < 1:
            raise ValueError(f"num_blocks must be >= 0 and num_features >= 1, got {num_blocks}, {num_features}")
        self.config = ModelConfig(num_blocks, num_features, include_sar, res_scale)
        in_channels = NUM_S2_BANDS + (NUM_S1_BANDS if include_sar else 0)
        self.head = _conv3x3(in_channels, num_features)
        self.blocks = nn.Sequential(*(ResidualBlock(num_features, res_scale) for _ in range(num_blocks)))
        self.tail = _conv3x3(num_features, NUM_S2_BANDS)

    @property
    def include_sar(self) -> bool:
        """Whether the model expects an S1 input."""
        return self.config.include_sar

    def forward(self, s2_cloudy: torch.Tensor, s1: torch.Tensor | None = None) -> torch.Tensor:
        """Predict the cloud-free S2 image (N, 13, H, W) from the cloudy S2 (N, 13, H, W) and S1 (N, 2, H, W)."""
        x = self._check_inputs(s2_cloudy, s1)
        features = torch.relu(self.head(x))
        return self.tail(self.blocks(features)) + s2_cloudy

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

    def to_dict(self) -> dict[str, int | float | bool]:
        """Return the configuration as a plain dict."""
        return asdict(self)

    def build_parameter_count(self) -> int:
        """Number of parameters of a network with this configuration (without building it)."""
        inputs = NUM_S2_BANDS + (NUM_S1_BANDS if self.include_sar else 0)
        f = self.num_features
        return (inputs * 9 + 1) * f + self.num_blocks * 2 * (f * 9 + 1) * f + (f * 9 + 1) * NUM_S2_BANDS

    @property
    def receptive_radius(self) -> int:
        """Pixels on each side that influence one output pixel: one per 3x3 convolution (2 per block + 2)."""
        return 2 * self.num_blocks + 2

    def build(self) -> DSen2CR:
        """Build a freshly initialised network with this configuration."""
        return DSen2CR(
            num_blocks=self.num_blocks,
            num_features=self.num_features,
            include_sar=self.include_sar,
            res_scale=self.res_scale,
        )


#: Named variants for :func:`create_model`.
MODEL_VARIANTS: dict[str, ModelConfig] = {
    # The paper's model (B = 16, F = 256) with S1 input: 18,947,341 parameters.
    "dsen2cr": ModelConfig(16, 256, True),
    # The paper's model without SAR: 18,942,733 parameters.
    "dsen2cr-nosar": ModelConfig(16, 256, False),
    # A small variant (B = 4, F = 32) for CPU experiments and tests: 82,093 parameters.
    "dsen2cr-small": ModelConfig(4, 32, True),
    "dsen2cr-small-nosar": ModelConfig(4, 32, False),
}


def create_model(name: str = "dsen2cr") -> DSen2CR:
    """Build a freshly initialised model by variant name (see ``MODEL_VARIANTS``)."""
    try:
        config = MODEL_VARIANTS[name]
    except KeyError:
        raise ValueError(f"unknown model variant {name!r}; choose one of {sorted(MODEL_VARIANTS)}") from None
    return config.build()
