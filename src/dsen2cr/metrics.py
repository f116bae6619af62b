"""Image-quality metrics in the convention of docs/design.md §3.6.

S2 values are compared as reflectance (DN / 10000, clipped to [0, 1]). Per image: MAE, RMSE,
PSNR = 20 log10(1 / RMSE), SSIM over the 13 bands (11x11 Gaussian window, sigma 1.5, data range 1) and SAM
(mean spectral angle, degrees). Region-wise variants: MAE and SAM of the prediction against the target over
cloud/shadow pixels (``*_cloudy``) and against the cloudy input over clear pixels (``*_clear``); a region with
no pixels gives NaN. PSNR and the spectral angle come from torchmetrics, SSIM from ``_ssim_valid_region``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, Concatenate, ParamSpec

import numpy as np
import torch
import torch.nn.functional as F
from torchmetrics.functional.image import peak_signal_noise_ratio, spectral_angle_mapper

from dsen2cr.preprocessing import (
    NUM_S2_BANDS,
    S2_MODEL_SCALE,
    reflectance_percentile,
    s2_dn_to_reflectance,
    s2_model_to_reflectance,
)

METRIC_NAMES: tuple[str, ...] = ("mae", "rmse", "psnr", "ssim", "sam")
REGION_METRIC_NAMES: tuple[str, ...] = ("mae_cloudy", "sam_cloudy", "mae_clear", "sam_clear")
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5


_P = ParamSpec("_P")
_Metrics = dict[str, torch.Tensor]


def _widened(value: Any) -> Any:
    """A 16-bit float tensor as float32; anything else as it is."""
    half = isinstance(value, torch.Tensor) and value.dtype in (torch.float16, torch.bfloat16)
    return value.float() if half else value


def _exact(
    metrics: Callable[Concatenate[torch.Tensor, _P], _Metrics],
) -> Callable[Concatenate[torch.Tensor, _P], _Metrics]:
    """Run ``metrics`` (whose first argument is a tensor on the device of the others) in float32 or more whatever
    the caller's autocast: Lightning's ``bf16-mixed`` validation runs under one, which ran SSIM's Gaussian windows
    in bf16 (0.880 for scikit-image's 0.994 on a smooth image); 16-bit tensors are taken as float32."""

    @functools.wraps(metrics)
    def wrapper(pred: torch.Tensor, /, *args: _P.args, **kwargs: _P.kwargs) -> _Metrics:
        with torch.autocast(pred.device.type, enabled=False):
            widened = {name: _widened(value) for name, value in kwargs.items()}
            return metrics(_widened(pred), *(_widened(a) for a in args), **widened)

    return wrapper


def _spectral_angles_deg(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-pixel spectral angle in degrees of two (N, C, H, W) tensors; NaN where a spectrum is all zero."""
    return torch.rad2deg(spectral_angle_mapper(a, b, reduction="none"))


def _region_means(values: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """Per-image mean of ``values`` (N, H, W) over the pixels of ``region`` that are not NaN; NaN if none."""
    valid = region & ~torch.isnan(values)
    total = torch.where(valid, values, torch.zeros_like(values)).sum(dim=(1, 2))
    count = valid.sum(dim=(1, 2))
    return torch.where(count > 0, total / count.clamp(min=1), torch.full_like(total, math.nan))


@_exact
def reflectance_metrics(
    pred: torch.Tensor,
    target: torch.Tensor,
    cloudy: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Per-image metrics of (N, 13, H, W) reflectance tensors; each value is a tensor of shape (N,).

    ``mask`` is the (N, H, W) cloud/shadow map (non-zero = cloud or shadow). The region metrics are included
    when both ``cloudy`` and ``mask`` are given.
    """
    _check_batch(pred=pred, target=target, cloudy=cloudy)
    error = pred - target
    dims = (1, 2, 3)
    out: dict[str, torch.Tensor] = {
        "mae": error.abs().mean(dim=dims),
        "rmse": error.square().mean(dim=dims).sqrt(),
        "psnr": peak_signal_noise_ratio(pred, target, data_range=1.0, reduction="none", dim=dims),
    }
    out["ssim"] = _ssim_valid_region(pred, target)
    all_pixels = torch.ones_like(pred[:, 0], dtype=torch.bool)
    angles_to_target = _spectral_angles_deg(pred, target)
    out["sam"] = _region_means(angles_to_target, all_pixels)
    if cloudy is not None and mask is not None:
        if tuple(mask.shape) != (pred.shape[0], *pred.shape[2:]):
            raise ValueError(
                f"mask: expected shape {(pred.shape[0], *pred.shape[2:])} to match pred, got {tuple(mask.shape)}"
            )
        cloud = mask != 0
        clear = ~cloud
        out["mae_cloudy"] = _region_means(error.abs().mean(dim=1), cloud)
        out["sam_cloudy"] = _region_means(angles_to_target, cloud)
        out["mae_clear"] = _region_means((pred - cloudy).abs().mean(dim=1), clear)
        out["sam_clear"] = _region_means(_spectral_angles_deg(pred, cloudy), clear)
    return out


def _ssim_valid_region(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Per-image SSIM averaged over the pixels whose 11x11 window lies inside the image.

    This is the convention of ``tf.image.ssim`` (the paper code) and scikit-image: a Gaussian window (sigma 1.5,
    11 taps), K1 0.01, K2 0.03, population (co)variances; an image smaller than the window has no valid pixel:
    NaN. Not torchmetrics' function: it pads the border (whose map this would crop again) and filters with a
    full 11 x 11 kernel, which PyTorch runs 25-30x slower in float64 on a CPU (1.7 s a 256 px, 13-band patch,
    ``python -m benchmarks.metrics``) than the window's two 1-D passes here, equal to 1e-15.
    """
    if min(pred.shape[-2:]) < SSIM_WINDOW:
        return torch.full(pred.shape[:1], math.nan, dtype=pred.dtype, device=pred.device)
    taps = torch.arange(SSIM_WINDOW, dtype=pred.dtype, device=pred.device) - SSIM_WINDOW // 2
    gauss = torch.exp(-(taps**2) / (2 * SSIM_SIGMA**2))
    gauss = gauss / gauss.sum()
    channels = 5 * pred.shape[1]  # means, second moments and the cross moment of every band: one grouped pass
    moments = torch.cat([pred, target, pred * pred, target * target, pred * target], dim=1)
    moments = F.conv2d(moments, gauss.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)
    moments = F.conv2d(moments, gauss.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    mean_p, mean_t, pp, tt, pt = moments.chunk(5, dim=1)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    var_p, var_t, cov = pp - mean_p * mean_p, tt - mean_t * mean_t, pt - mean_p * mean_t
    ssim_map = ((2 * mean_p * mean_t + c1) * (2 * cov + c2)) / ((mean_p**2 + mean_t**2 + c1) * (var_p + var_t + c2))
    return ssim_map.mean(dim=(1, 2, 3))


#: The per-image metrics of the original code's ``eval.csv`` (``tools/image_metrics.py``), in its order.
ORIGINAL_METRIC_NAMES: tuple[str, ...] = (
    "cloud_mean_absolute_error",
    "cloud_mean_squared_error",
    "cloud_root_mean_squared_error",
    "cloud_bandwise_root_mean_squared_error",
    "cloud_psnr",
    "cloud_ssim",
    "cloud_mean_sam",
    "cloud_mean_sam_covered",
    "cloud_mean_sam_clear",
    "cloud_mean_absolute_error_covered",
    "cloud_mean_absolute_error_clear",
    "carl_error",
)


@_exact
def original_metrics(
    pred: torch.Tensor, target: torch.Tensor, cloudy: torch.Tensor, mask: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Per-image metrics as the original code computes them (docs/design.md §3.6): (N, 13, H, W) tensors in
    model units (DN / 2000), the prediction unclipped; ``mask`` (N, H, W) non-zero = cloud or shadow.

    MAE, MSE, RMSE and the band-wise RMSE in model units; PSNR = 20 log10(10000 / RMSE in DN); SSIM on DN with
    a maximum of 10000 (``tf.image.ssim``); SAM in radians; the covered/clear variants are 0 for an empty
    region, as in the original; ``carl_error`` with lambda 1.
    """
    _check_batch(pred=pred, target=target, cloudy=cloudy)
    error = pred - target
    dims = (1, 2, 3)
    cover = (mask != 0).to(pred.dtype)[:, None]
    clear = 1 - cover
    mse = error.square().mean(dim=dims)
    angles_target = _angles_rad(target, pred)
    angles_cloudy = _angles_rad(cloudy, pred)
    bands = pred.shape[1]

    def region_mean(values: torch.Tensor, region: torch.Tensor, per_pixel: int) -> torch.Tensor:
        """sum(region x values) / (sum(region) x per_pixel) per image; 0 for an empty region (the original's)."""
        total = region.sum(dim=dims)
        mean = (region * values).sum(dim=dims) / (total.clamp(min=1) * per_pixel)
        return torch.where(total > 0, mean, torch.zeros_like(mean))

    return {
        "cloud_mean_absolute_error": error.abs().mean(dim=dims),
        "cloud_mean_squared_error": mse,
        "cloud_root_mean_squared_error": mse.sqrt(),
        "cloud_bandwise_root_mean_squared_error": error.square().mean(dim=(2, 3)).sqrt().mean(dim=1),
        "cloud_psnr": 20 * torch.log10(10000.0 / (mse.sqrt() * S2_MODEL_SCALE)),
        "cloud_ssim": _ssim_valid_region(pred, target, data_range=10000.0 / S2_MODEL_SCALE),
        "cloud_mean_sam": angles_target.mean(dim=(1, 2)),
        "cloud_mean_sam_covered": region_mean(angles_target[:, None], cover, 1),
        "cloud_mean_sam_clear": region_mean(angles_cloudy[:, None], clear, 1),
        "cloud_mean_absolute_error_covered": region_mean(error.abs(), cover, bands),
        "cloud_mean_absolute_error_clear": region_mean((pred - cloudy).abs(), clear, bands),
        "carl_error": (clear * (pred - cloudy).abs() + cover * error.abs()).mean(dim=dims) + error.abs().mean(dim=dims),
    }


def _angles_rad(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-pixel spectral angle (radians) of (N, C, H, W) tensors, as the original's ``get_sam``: the cosine
    clipped to [-1, 1]; NaN where a spectrum is all zero."""
    cosine = (a * b).sum(dim=1) / a.square().sum(dim=1).sqrt() / b.square().sum(dim=1).sqrt()
    return torch.acos(cosine.clamp(-1, 1))


def _check_batch(**tensors: torch.Tensor | None) -> None:
    """Raise ``ValueError`` unless the given tensors are (N, 13, H, W) and of one shape."""
    reference: tuple[str, tuple[int, ...]] | None = None
    for name, tensor in tensors.items():
        if tensor is None:
            continue
        shape = tuple(tensor.shape)
        if len(shape) != 4 or shape[1] != NUM_S2_BANDS:
            raise ValueError(f"{name}: expected shape (N, {NUM_S2_BANDS}, H, W), got {shape}")
        if reference is None:
            reference = (name, shape)
        elif shape != reference[1]:
            raise ValueError(f"{name}: expected shape {reference[1]} to match {reference[0]}, got {shape}")


def image_metrics(
    pred: np.ndarray | torch.Tensor,
    target: np.ndarray | torch.Tensor,
    *,
    cloudy: np.ndarray | torch.Tensor | None = None,
    mask: np.ndarray | torch.Tensor | None = None,
) -> dict[str, float]:
    """Metrics of one predicted image against its target, both S2 DN arrays of shape (13, H, W).

    Returns ``mae``, ``rmse``, ``psnr``, ``ssim`` and ``sam`` (degrees); with ``cloudy`` (the cloudy input,
    DN) and ``mask`` (the (H, W) cloud/shadow map, non-zero = cloud or shadow) also ``mae_cloudy``,
    ``sam_cloudy``, ``mae_clear`` and ``sam_clear``. Computed in float64. ``ValueError`` for NaN, or for
    reflectance (0-1) in place of DN.
    """
    arrays = {"pred": pred, "target": target, "cloudy": cloudy}
    batch: dict[str, torch.Tensor | None] = {}
    for name, value in arrays.items():
        if value is None:
            batch[name] = None
            continue
        if value.ndim != 3:
            raise ValueError(f"{name}: expected shape ({NUM_S2_BANDS}, H, W), got {tuple(value.shape)}")
        _check_dn(name, value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value))
        batch[name] = s2_dn_to_reflectance(value).unsqueeze(0)
    mask_batch = None if mask is None else torch.as_tensor(np.asarray(mask)).unsqueeze(0)
    if (cloudy is None) != (mask is None):
        raise ValueError("cloudy and mask: give both for the region metrics, or neither")
    values = reflectance_metrics(batch["pred"], batch["target"], batch["cloudy"], mask_batch)  # type: ignore[arg-type]
    return {name: float(value[0]) for name, value in values.items()}


def _check_dn(name: str, values: np.ndarray) -> None:
    """Raise ``ValueError`` for S2 that is not DN: NaN (no data as rioxarray's ``mask_and_scale`` reads it), or
    reflectance (0-1) in a float array. Metrics of either are numbers, and wrong ones."""
    if values.dtype.kind != "f":
        return
    missing = int(np.isnan(values).sum())
    if missing:
        raise ValueError(
            f"{name}: {missing} values are NaN; metrics need DN everywhere (no data as NaN: crop it away, or read "
            "the file without mask_and_scale)"
        )
    percentile = reflectance_percentile(values)
    if percentile is not None:
        raise ValueError(
            f"{name}: values look like reflectance (99th percentile {percentile:.3g}); expected DN (reflectance x "
            "10000): multiply by 10000"
        )


def batch_image_metrics(
    pred: torch.Tensor,
    target: torch.Tensor,
    cloudy: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Training-time metrics of (N, 13, H, W) tensors in model units, one value per image (shape (N,)): those of
    :func:`reflectance_metrics` on their reflectance, NaN for an image whose region is empty."""
    to_reflectance = s2_model_to_reflectance
    return reflectance_metrics(
        to_reflectance(pred.detach()),
        to_reflectance(target),
        None if cloudy is None else to_reflectance(cloudy),
        mask,
    )


def batch_metrics(
    pred: torch.Tensor,
    target: torch.Tensor,
    cloudy: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Training-time metrics of (N, 13, H, W) tensors in model units: the mean over images of each metric.

    Images whose region is empty are left out of that region's mean (NaN when no image has the region).
    """
    return {name: value.nanmean() for name, value in batch_image_metrics(pred, target, cloudy, mask).items()}
