"""Training losses (docs/design.md §3.5, §6): the cloud-adaptive regularised loss (CARL), plain L1, and the
negative log-likelihoods (Gaussian, Laplace) of a network that predicts its variance.

Element-wise terms are reduced by a mean over every pixel and band of the batch, as in the paper code.
"""

from __future__ import annotations

import math

import torch

from dsen2cr.preprocessing import VARIANCE_FLOOR


def _check_same_shape(**tensors: torch.Tensor) -> None:
    """Raise ``ValueError`` unless every named tensor has the shape of the first one."""
    (first_name, first), *rest = tensors.items()
    for name, tensor in rest:
        if tensor.shape != first.shape:
            raise ValueError(
                f"{name}: expected shape {tuple(first.shape)} to match {first_name}, got {tuple(tensor.shape)}"
            )


def _as_band_broadcast_mask(mask: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    """Return the cloud/shadow mask as a float (N, 1, H, W) tensor that broadcasts over bands."""
    if mask.ndim == 3:
        mask = mask.unsqueeze(1)
    expected = (pred.shape[0], 1, *pred.shape[2:])
    if tuple(mask.shape) != expected:
        raise ValueError(f"mask: expected shape (N, H, W) or {expected} to match pred, got {tuple(mask.shape)}")
    return (mask != 0).to(pred.dtype)


def l1_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Plain L1: mean |pred - target| over the whole batch."""
    _check_same_shape(pred=pred, target=target)
    return (pred - target).abs().mean()


def carl_loss(
    pred: torch.Tensor, cloudy: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, lam: float = 1.0
) -> torch.Tensor:
    """Cloud-adaptive regularised loss.

    ``mean((1 - M)|P - I| + M|P - T|) + lam * mean(|P - T|)`` with P = ``pred``, I = ``cloudy`` input,
    T = cloud-free ``target`` (all (N, 13, H, W)) and M = ``mask != 0`` ((N, H, W) or (N, 1, H, W)),
    the cloud/shadow mask broadcast over bands.
    """
    _check_same_shape(pred=pred, cloudy=cloudy, target=target)
    m = _as_band_broadcast_mask(mask, pred)
    error_to_target = (pred - target).abs()
    adaptive = (1.0 - m) * (pred - cloudy).abs() + m * error_to_target
    return adaptive.mean() + lam * error_to_target.mean()


#: The likelihoods a network with a variance output trains with (docs/design.md §6).
LIKELIHOODS = ("gnll", "lnll")


def negative_log_likelihood(
    pred: torch.Tensor, variance: torch.Tensor, target: torch.Tensor, kind: str = "gnll"
) -> torch.Tensor:
    """The per-value negative log-likelihood of ``target`` under the predicted distribution (same shape as
    ``pred``): ``gnll`` a Gaussian of mean ``pred`` and ``variance``, ``0.5 (log(2 pi var) + e^2 / var)``;
    ``lnll`` a Laplace of the same mean and variance (scale ``b = sqrt(var / 2)``), ``log(2 b) + |e| / b``.
    Both are in nats per value and take the variance, so sigma means the same whichever trained the model.
    The variance is clamped to the network's floor (no division by zero, no NaN for exact predictions)."""
    _check_same_shape(pred=pred, variance=variance, target=target)
    variance = variance.clamp_min(VARIANCE_FLOOR)
    error = pred - target
    if kind == "gnll":
        return 0.5 * (torch.log(2 * math.pi * variance) + error.square() / variance)
    if kind == "lnll":
        scale = torch.sqrt(variance / 2)
        return torch.log(2 * scale) + error.abs() / scale
    raise ValueError(f"kind: expected one of {LIKELIHOODS}, got {kind!r}")


def likelihood_loss(
    pred: torch.Tensor,
    variance: torch.Tensor,
    target: torch.Tensor,
    *,
    kind: str = "gnll",
    cloudy: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    lam: float = 1.0,
) -> torch.Tensor:
    """The mean negative log-likelihood of ``target`` (:func:`negative_log_likelihood`). With ``cloudy`` and
    ``mask`` (``loss.cloud_aware``), CARL's weighting: ``mean((1 - M) nll(I) + M nll(T)) + lam * mean(nll(T))``
    (the clear pixels judged against the cloudy input, the cloudy ones against the target, plus the whole
    image against the target), the likelihood in place of CARL's absolute error."""
    to_target = negative_log_likelihood(pred, variance, target, kind)
    if cloudy is None or mask is None:
        return to_target.mean()
    m = _as_band_broadcast_mask(mask, pred)
    to_input = negative_log_likelihood(pred, variance, cloudy, kind)
    return ((1.0 - m) * to_input + m * to_target).mean() + lam * to_target.mean()
