"""Property-based tests (hypothesis): preprocessing, the mask and the metrics on arbitrary valid arrays
never crash, give numbers where they are defined, and NaN only where they are not (empty regions)."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from dsen2cr.cloud_detection import cloud_score, cloud_shadow_mask
from dsen2cr.metrics import image_metrics
from dsen2cr.preprocessing import s1_db_to_model, s2_dn_to_model, s2_model_to_dn

SIZES = st.tuples(st.integers(1, 24), st.integers(1, 24))
DN = st.integers(0, 65535)


@st.composite
def s2_images(draw: st.DrawFn, min_size: int = 1) -> np.ndarray:
    h, w = draw(st.tuples(st.integers(min_size, 24), st.integers(min_size, 24)))
    kind = draw(st.sampled_from(["random", "constant", "extreme"]))
    if kind == "constant":
        return np.full((13, h, w), draw(DN), dtype=np.uint16)
    elements = st.sampled_from([0, 1, 9999, 10000, 65535]) if kind == "extreme" else DN
    return draw(arrays(np.uint16, (13, h, w), elements=elements))


@settings(max_examples=60, deadline=None)
@given(s2_images())
def test_preprocessing_round_trip_and_range(s2: np.ndarray) -> None:
    model = s2_dn_to_model(s2)
    assert np.isfinite(model).all() and model.min() >= 0 and model.max() <= 5
    np.testing.assert_array_equal(s2_model_to_dn(model), np.minimum(s2, 10000))


@settings(max_examples=60, deadline=None)
@given(
    arrays(
        np.float32,
        st.tuples(st.just(2), st.integers(1, 16), st.integers(1, 16)),
        elements=st.floats(-200, 200, width=32) | st.just(np.nan),
    )
)
def test_s1_preprocessing_is_finite_and_bounded(s1: np.ndarray) -> None:
    if np.isnan(s1).all():
        return  # refused with a ValueError, tested elsewhere
    model = s1_db_to_model(s1)
    assert np.isfinite(model).all() and model.min() >= 0 and model.max() <= 2


@settings(max_examples=60, deadline=None)
@given(s2_images())
def test_mask_is_defined_for_any_image(s2: np.ndarray) -> None:
    score = cloud_score(s2)
    assert np.isfinite(score).all() and score.min() >= 1e-5 - 1e-9 and score.max() <= 1 + 1e-6
    mask = cloud_shadow_mask(s2)
    assert mask.dtype == np.int8 and mask.shape == s2.shape[1:]
    assert set(np.unique(mask)) <= {-1, 0, 1}


@settings(max_examples=40, deadline=None)
@given(s2_images(min_size=11), st.data())
def test_metrics_are_numbers_where_defined(target: np.ndarray, data: st.DataObject) -> None:
    pred = data.draw(arrays(np.uint16, target.shape, elements=DN))
    mask = data.draw(arrays(np.int8, target.shape[1:], elements=st.sampled_from([-1, 0, 1])))
    m = image_metrics(pred, target, cloudy=pred, mask=mask)
    for name in ("mae", "rmse", "ssim"):
        assert math.isfinite(m[name]), name
    assert m["psnr"] > 0 or m["rmse"] > 0  # +inf only for identical images
    p = np.clip(pred / 10000, 0, 1)
    t = np.clip(target / 10000, 0, 1)
    defined = (np.linalg.norm(p, axis=0) > 0) & (np.linalg.norm(t, axis=0) > 0)
    assert math.isnan(m["sam"]) == (not defined.any())
    assert math.isnan(m["mae_cloudy"]) == (not (mask != 0).any())
    assert math.isnan(m["mae_clear"]) == (not (mask == 0).any())
    if not math.isnan(m["sam"]):
        assert 0 <= m["sam"] <= 90 + 1e-6
