"""CARL and L1 against a hand-worked example."""

from __future__ import annotations

import pytest
import torch

from dsen2cr.losses import carl_loss, l1_loss

# One image, two bands, one row of two pixels.
PRED = torch.tensor([[[[1.0, 2.0]], [[3.0, 4.0]]]])
CLOUDY = torch.zeros(1, 2, 1, 2)
TARGET = torch.ones(1, 2, 1, 2)
MASK = torch.tensor([[[1, 0]]])  # pixel 0 cloudy, pixel 1 clear


def test_carl_hand_worked() -> None:
    # cloudy pixel 0 against the target: |1-1| = 0, |3-1| = 2; clear pixel 1 against the input: 2, 4.
    # adaptive term: mean(0, 2, 2, 4) = 2; regulariser: mean |P - T| = mean(0, 1, 2, 3) = 1.5.
    assert carl_loss(PRED, CLOUDY, TARGET, MASK).item() == pytest.approx(3.5)
    assert carl_loss(PRED, CLOUDY, TARGET, MASK, lam=0.5).item() == pytest.approx(2.75)
    assert carl_loss(PRED, CLOUDY, TARGET, MASK.unsqueeze(1), lam=0.0).item() == pytest.approx(2.0)


def test_carl_treats_shadow_as_masked() -> None:
    shadow = torch.tensor([[[-1, 0]]])
    assert carl_loss(PRED, CLOUDY, TARGET, shadow).item() == pytest.approx(3.5)


def test_l1_hand_worked() -> None:
    assert l1_loss(PRED, TARGET).item() == pytest.approx(1.5)


def test_carl_gradient_flows() -> None:
    pred = PRED.clone().requires_grad_(True)
    carl_loss(pred, CLOUDY, TARGET, MASK).backward()
    assert pred.grad is not None and torch.isfinite(pred.grad).all()


def test_shape_mismatches_are_named() -> None:
    with pytest.raises(ValueError, match=r"target: expected shape \(1, 2, 1, 2\) to match pred"):
        carl_loss(PRED, CLOUDY, torch.ones(1, 2, 2, 2), MASK)
    with pytest.raises(ValueError, match="mask: expected shape"):
        carl_loss(PRED, CLOUDY, TARGET, torch.zeros(1, 2, 2))
    with pytest.raises(ValueError, match="target: expected shape"):
        l1_loss(PRED, torch.ones(2, 2))
