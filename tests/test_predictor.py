"""The predictor's refusal of non-finite predictions (dsen2cr.predictor.Predictor)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from dsen2cr import create_model
from dsen2cr.errors import DSen2CRError
from dsen2cr.predictor import predictor_from_model


class FixedOutput:
    """A backend that returns a fixed batch whatever it is given."""

    backend, precision = "eager", "fp32"

    def __init__(self, output: np.ndarray) -> None:
        self.output = output

    def __call__(self, s2: np.ndarray, s1: np.ndarray | None) -> np.ndarray:
        return self.output


def _channels_last_batch() -> np.ndarray:
    """A batch laid out as the channels-last backends return it (strided, not C-contiguous)."""
    batch = torch.rand(2, 13, 40, 30, generator=torch.Generator().manual_seed(0)) * 3
    return batch.contiguous(memory_format=torch.channels_last).numpy()


@pytest.mark.parametrize(
    "values",
    [[float("nan")], [float("inf")], [float("-inf")], [3e38, 3e38]],
    ids=["nan", "inf", "-inf", "finite values summing beyond float32"],
)
def test_a_prediction_with_bad_values_is_refused(values: list[float]) -> None:
    batch = _channels_last_batch()
    assert not batch.flags.c_contiguous
    for column, value in enumerate(values):
        batch[1, 7, 33, column] = value
    predictor = predictor_from_model(create_model("dsen2cr-small"), device="cpu")
    fixed = dataclasses.replace(predictor, predict=FixedOutput(batch))  # type: ignore[arg-type]
    with pytest.raises(DSen2CRError, match="predicted NaN, infinite or absurdly large values"):
        fixed(np.zeros((2, 13, 40, 30), np.float32), np.zeros((2, 2, 40, 30), np.float32))


def test_an_fp16_overflow_says_which_precision_has_the_range() -> None:
    """fp16 holds values up to 65504: a batch past it (after a first batch that passed its check) stops the run
    with the precision to choose instead."""
    batch = _channels_last_batch()
    batch[0, 0, 0, 0] = float("inf")
    fixed_fp16 = FixedOutput(batch)
    fixed_fp16.backend = fixed_fp16.precision = "fp16"
    predictor = predictor_from_model(create_model("dsen2cr-small"), device="cpu")
    fixed = dataclasses.replace(predictor, predict=fixed_fp16)  # type: ignore[arg-type]
    with pytest.raises(DSen2CRError, match=r"\(fp16, fp16\) .*\(fp16 holds values up to 65504: use --precision tf32"):
        fixed(np.zeros((2, 13, 40, 30), np.float32), np.zeros((2, 2, 40, 30), np.float32))


def test_a_finite_prediction_is_returned_untouched() -> None:
    batch = _channels_last_batch()
    batch[0, 0, 0, 0] = 1e6  # large, but a sum of such values stays far inside float32
    predictor = predictor_from_model(create_model("dsen2cr-small"), device="cpu")
    fixed = dataclasses.replace(predictor, predict=FixedOutput(batch))  # type: ignore[arg-type]
    out = fixed(np.zeros((2, 13, 40, 30), np.float32), np.zeros((2, 2, 40, 30), np.float32))
    assert out is batch
