"""Training losses (docs/design.md §3.5): the cloud-adaptive regularised loss (CARL) and plain L1.

Element-wise terms are reduced by a mean over every pixel and band of the batch, as in the paper code.
"""

from __future__ import annotations

import torch


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
