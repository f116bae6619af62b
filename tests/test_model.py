"""The network: parameter counts, initialisation, a float64 golden re-computation, shapes and bad input."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dsen2cr import VARIANTS, DSen2CR, create_model


@pytest.mark.parametrize(("name", "expected"), [("dsen2cr", 18_947_341), ("dsen2cr-nosar", 18_942_733)])
def test_paper_parameter_counts(name: str, expected: int) -> None:
    model = create_model(name)
    assert sum(p.numel() for p in model.parameters()) == expected


def test_parameter_count_formula_for_any_size() -> None:
    # Independent count: head (in*F*9 + F), 2 convs per block (F*F*9 + F), tail (F*13*9 + 13).
    blocks, width = 3, 7
    model = DSen2CR(num_blocks=blocks, num_features=width, include_sar=True)
    by_hand = (15 * width * 9 + width) + blocks * 2 * (width * width * 9 + width) + (width * 13 * 9 + 13)
    assert sum(p.numel() for p in model.parameters()) == by_hand


def test_he_uniform_kernels_and_zero_biases() -> None:
    torch.manual_seed(0)
    model = DSen2CR(num_blocks=2, num_features=64)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 2 + 2 * 2
    for conv in convs:
        fan_in = conv.in_channels * 9
        limit = math.sqrt(6.0 / fan_in)
        weight = conv.weight.detach()
        assert weight.abs().max() <= limit
        # a uniform distribution on [-limit, limit] has standard deviation limit / sqrt(3)
        assert weight.std().item() == pytest.approx(limit / math.sqrt(3), rel=0.05)
        assert torch.count_nonzero(conv.bias) == 0


def _reference_forward(model: DSen2CR, s2: torch.Tensor, s1: torch.Tensor | None) -> torch.Tensor:
    """Plain float64 re-computation of DSen2-CR with F.conv2d, written from the paper's description."""

    def conv(x: torch.Tensor, layer: torch.nn.Conv2d) -> torch.Tensor:
        return F.conv2d(x, layer.weight.double(), layer.bias.double(), stride=1, padding=1)

    x = s2 if s1 is None else torch.cat([s2, s1], dim=1)
    h = torch.clamp(conv(x, model.head), min=0)
    for block in model.blocks:
        h = h + 0.1 * conv(torch.clamp(conv(h, block.conv1), min=0), block.conv2)
    return conv(h, model.tail) + s2


@pytest.mark.parametrize("include_sar", [True, False])
def test_forward_matches_float64_recomputation(include_sar: bool) -> None:
    torch.manual_seed(1)
    model = DSen2CR(num_blocks=3, num_features=16, include_sar=include_sar)
    with torch.no_grad():  # non-zero biases so that the test sees them
        for conv in (m for m in model.modules() if isinstance(m, torch.nn.Conv2d)):
            conv.bias.uniform_(-0.1, 0.1)
    s2 = torch.rand(2, 13, 19, 23, dtype=torch.float64) * 5
    s1 = torch.rand(2, 2, 19, 23, dtype=torch.float64) * 2 if include_sar else None
    expected = _reference_forward(model, s2, s1)
    got = model(s2.float(), None if s1 is None else s1.float())
    assert got.shape == (2, 13, 19, 23)
    torch.testing.assert_close(got.double(), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_every_variant_forward_backward_on_odd_size(name: str) -> None:
    torch.manual_seed(2)
    model = create_model(name)
    s2 = torch.rand(1, 13, 37, 29) * 5
    s1 = torch.rand(1, 2, 37, 29) * 2 if model.include_sar else None
    out = model(s2, s1)
    assert out.shape == s2.shape
    out.abs().mean().backward()
    assert torch.isfinite(out).all()
    for param in model.parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all()


def test_unknown_variant_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown model variant 'resnet'"):
        create_model("resnet")


@pytest.mark.parametrize(
    ("s2_shape", "s1_shape", "message"),
    [
        ((1, 12, 8, 8), (1, 2, 8, 8), r"s2_cloudy: expected shape \(N, 13, H, W\), got \(1, 12, 8, 8\)"),
        ((13, 8, 8), (1, 2, 8, 8), r"s2_cloudy: expected shape \(N, 13, H, W\), got \(13, 8, 8\)"),
        (
            (1, 13, 8, 8),
            (1, 3, 8, 8),
            r"s1: expected shape \(1, 2, 8, 8\) to match s2_cloudy, got \(1, 3, 8, 8\)",
        ),
        (
            (1, 13, 8, 8),
            (1, 2, 8, 9),
            r"s1: expected shape \(1, 2, 8, 8\) to match s2_cloudy, got \(1, 2, 8, 9\)",
        ),
        ((1, 13, 8, 8), None, "s1: this model needs the S1 input"),
    ],
)
def test_bad_input_shapes(s2_shape: tuple, s1_shape: tuple | None, message: str) -> None:
    model = create_model("dsen2cr-small")
    s1 = None if s1_shape is None else torch.zeros(s1_shape)
    with pytest.raises(ValueError, match=message):
        model(torch.zeros(s2_shape), s1)


def test_model_without_sar_refuses_s1() -> None:
    model = create_model("dsen2cr-small-nosar")
    with pytest.raises(ValueError, match="s1: this model was built without SAR"):
        model(torch.zeros(1, 13, 8, 8), torch.zeros(1, 2, 8, 8))
