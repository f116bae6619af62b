"""The types of the model registry (docs/design.md §3.9): what a model family provides and what a variant is.

A family is one network design (DSen2-CR today) in its own module under :mod:`dsen2cr.models`; it lists its
variants (named configurations) and, for each, the published weights where they exist. Everything outside the
family's module reaches a network through these types only, so no other module assumes a family's layer names.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from dsen2cr.errors import DSen2CRError
from dsen2cr.preprocessing import NUM_S2_BANDS, VARIANCE_FLOOR


class ModelSpec(Protocol):
    """What every family's configuration provides (a frozen dataclass, hashable, stored in weights files)."""

    @property
    def include_sar(self) -> bool:
        """Whether the network takes the two S1 bands next to the 13 S2 bands."""
        ...

    @property
    def receptive_radius(self) -> int:
        """Pixels on each side of an output pixel that influence it (tiling is exact with twice this overlap)."""
        ...

    @property
    def hidden_channels(self) -> int:
        """Channels of the widest feature map (for memory estimates)."""
        ...

    @property
    def uncertainty(self) -> str:
        """``none``, or ``diag``: the network also predicts a variance per band and pixel."""
        ...

    def build_parameter_count(self) -> int:
        """Number of parameters, without building the network."""
        ...

    def build(self) -> CloudRemovalNetwork:
        """A freshly initialised network: ``forward(s2, s1)`` in model units."""
        ...

    def to_dict(self) -> dict[str, Any]:
        """The configuration as plain JSON values (what weights files store)."""
        ...

    def describe(self) -> str:
        """A short human description (``B=16, F=256 with SAR``)."""
        ...


class CloudRemovalNetwork(nn.Module):
    """The base of every family's network: ``forward(s2_cloudy, s1)`` maps model units (N, 13, H, W) and
    (N, 2, H, W) or None to the cloud-free prediction (N, 13, H, W); ``config`` rebuilds it."""

    config: ModelSpec

    def forward(self, s2_cloudy: torch.Tensor, s1: torch.Tensor | None = None) -> torch.Tensor:
        """Predict the cloud-free S2 image."""
        raise NotImplementedError

    def forward_with_variance(
        self, s2_cloudy: torch.Tensor, s1: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The prediction and its variance per band and pixel (model units squared, each >= VARIANCE_FLOOR), for
        a network whose configuration has ``uncertainty`` ``diag``."""
        raise DSen2CRError(f"this model ({self.config.describe()}) predicts no uncertainty (model.uncertainty: none)")

    def set_sigma_scale(self, scale: Sequence[float] | None) -> None:
        """Multiply the sigma this network predicts for each band by ``scale`` (one positive factor per S2 band;
        None: sigma as trained): a calibration fitted after training (:mod:`dsen2cr.sigma_calibration`). The
        factors are no weights: the state dict leaves them out, a weights file keeps them in its metadata."""
        if scale is not None:
            values = torch.as_tensor(scale, dtype=torch.float64)
            if values.shape != (NUM_S2_BANDS,) or not bool(torch.isfinite(values).all() and (values > 0).all()):
                raise ValueError(f"sigma scale: expected {NUM_S2_BANDS} finite positive factors, got {scale!r}")
            device = next(self.parameters()).device
            self.register_buffer("sigma_scale", values.to(torch.float32).to(device), persistent=False)
        elif "sigma_scale" in self._buffers:
            del self._buffers["sigma_scale"]

    @property
    def sigma_scale_factors(self) -> tuple[float, ...] | None:
        """The factors :meth:`set_sigma_scale` set (None: sigma as trained)."""
        scale = self._buffers.get("sigma_scale")
        return None if scale is None else tuple(float(v) for v in scale.tolist())

    def scaled_variance(self, variance: torch.Tensor) -> torch.Tensor:
        """``variance`` (N, 13, H, W) times the square of each band's sigma scale (:meth:`set_sigma_scale`)."""
        scale = self._buffers.get("sigma_scale")
        return variance if scale is None else variance * scale.view(1, -1, 1, 1).square()


#: What a network may predict besides the image: nothing, or a variance per band and pixel (docs/design.md §6).
UNCERTAINTY_KINDS = ("none", "diag")


def variance_from_raw(raw: torch.Tensor) -> torch.Tensor:
    """The variance from a network's unconstrained output: softplus, plus :data:`VARIANCE_FLOOR`.

    Softplus rather than exp (a log-variance head): it grows linearly for large inputs, so an outlier batch
    cannot overflow the variance (or, in bf16, reach infinity) and the gradient of the likelihood stays bounded;
    it is smooth and positive like exp, and close to exp for small variances."""
    return torch.nn.functional.softplus(raw.float()) + VARIANCE_FLOOR


#: A Keras layer as the HDF5 reader finds it: (layer name, kernel, bias), in the file's order.
KerasLayer = tuple[str, np.ndarray, np.ndarray]


@dataclass(frozen=True)
class PublishedWeights:
    """Weights published by a family's authors: the name ``dsen2cr weights download`` takes, and where from."""

    name: str
    url: str
    loss: str
    source: str


@dataclass(frozen=True)
class ModelVariant:
    """A named configuration of a family (``dsen2cr``, ``dsen2cr-small-nosar``) and its published weights."""

    name: str
    family: str
    config: ModelSpec
    description: str
    published: tuple[PublishedWeights, ...] = ()


@dataclass(frozen=True)
class ModelFamily:
    """One network design: how to validate its stored configuration, its variants, and the optional parts that
    depend on its layers (a fused fp16/bf16 inference form for CUDA, an importer of its authors' Keras files)."""

    name: str
    description: str
    reference: str
    config_type: type
    #: Validate a stored configuration (a dict from a weights file or a config) and build the config object;
    #: the ``str`` names the file or key in its one-line errors.
    config_from_dict: Callable[[Any, str], ModelSpec]
    variants: tuple[ModelVariant, ...]
    #: The 16-bit inference form, given the precision (``fp16`` or ``bf16``) and the device (None: CUDA's form);
    #: None: the generic autocast backend.
    fused_half: Callable[..., nn.Module] | None = None
    #: The configuration and state dict from the convolution layers of a Keras file (None: no Keras import).
    keras_state: Callable[[list[KerasLayer], Path], tuple[ModelSpec, dict[str, torch.Tensor]]] | None = None
