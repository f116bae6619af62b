"""Preprocessing constants and conversions, checked against values worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dsen2cr.preprocessing import (
    fill_nan,
    s1_db_to_model,
    s2_dn_to_model,
    s2_dn_to_reflectance,
    s2_model_to_dn,
    s2_model_to_reflectance,
)


def test_s1_db_to_model_by_hand() -> None:
    vv = np.array([[-30.0, -25.0, -12.5, 0.0, 3.0]])
    vh = np.array([[-40.0, -32.5, -16.25, 0.0, 3.0]])
    got = s1_db_to_model(np.stack([vv, vh]))
    np.testing.assert_allclose(got[0], [[0.0, 0.0, 1.0, 2.0, 2.0]], atol=1e-6)
    np.testing.assert_allclose(got[1], [[0.0, 0.0, 1.0, 2.0, 2.0]], atol=1e-6)
    assert got.dtype == np.float32


def test_s1_needs_two_bands() -> None:
    with pytest.raises(ValueError, match=r"s1_db: expected 2 bands"):
        s1_db_to_model(np.zeros((3, 4, 4)))


def test_s2_dn_to_model_and_back() -> None:
    dn = np.array([[[0, 1000, 2000, 10000, 15000]]], dtype=np.uint16)
    model = s2_dn_to_model(dn)
    np.testing.assert_allclose(model, [[[0.0, 0.5, 1.0, 5.0, 5.0]]])
    np.testing.assert_array_equal(s2_model_to_dn(model), [[[0, 1000, 2000, 10000, 10000]]])
    assert s2_model_to_dn(torch.tensor([-0.1, 1.23456])).tolist() == [0, 2469]


def test_reflectance_conventions() -> None:
    assert s2_dn_to_reflectance(np.array([0, 5000, 12000])).tolist() == [0.0, 0.5, 1.0]
    got = s2_model_to_reflectance(torch.tensor([0.0, 2.5, 6.0]))
    torch.testing.assert_close(got, torch.tensor([0.0, 0.5, 1.0]))


def test_nan_filled_with_raster_mean() -> None:
    raster = np.array([[1.0, np.nan], [3.0, 8.0]], dtype=np.float32)
    np.testing.assert_allclose(fill_nan(raster), [[1.0, 4.0], [3.0, 8.0]])
    assert np.isnan(raster[0, 1])  # the input is left alone
    s1 = np.full((2, 2, 2), -12.5, dtype=np.float32)
    s1[0, 0, 0] = np.nan
    assert np.isfinite(s1_db_to_model(s1)).all()


def test_all_nan_raster_is_refused() -> None:
    with pytest.raises(ValueError, match="S2: every value is NaN"):
        s2_dn_to_model(np.full((13, 2, 2), np.nan))
