"""Metrics against independent float64 implementations (numpy, scikit-image)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from dsen2cr.metrics import batch_metrics, image_metrics


def _pair(seed: int, h: int = 40, w: int = 33) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    target = rng.integers(0, 9000, size=(13, h, w)).astype(np.uint16)
    pred = np.clip(target.astype(np.int32) + rng.integers(-800, 800, size=target.shape), 0, 12000)
    cloudy = np.clip(target.astype(np.int32) + rng.integers(0, 4000, size=target.shape), 0, 10000)
    mask = np.zeros((h, w), dtype=np.int8)
    mask[5:20, 3:18] = 1
    mask[25:30, 20:30] = -1
    return pred.astype(np.uint16), target, cloudy.astype(np.uint16), mask


def _angles_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        cos = (a * b).sum(0) / (np.linalg.norm(a, axis=0) * np.linalg.norm(b, axis=0))
    return np.degrees(np.arccos(np.clip(cos, -1, 1)))


def _reference(pred, target, cloudy, mask) -> dict[str, float]:
    p, t, c = (np.clip(x.astype(np.float64) / 10000, 0, 1) for x in (pred, target, cloudy))
    rmse = math.sqrt(((p - t) ** 2).mean())
    region = mask != 0
    return {
        "mae": np.abs(p - t).mean(),
        "rmse": rmse,
        "psnr": 20 * math.log10(1 / rmse),
        "ssim": structural_similarity(
            t,
            p,
            data_range=1.0,
            channel_axis=0,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
        ),
        "sam": _angles_deg(p, t).mean(),
        "mae_cloudy": np.abs(p - t)[:, region].mean(),
        "sam_cloudy": _angles_deg(p, t)[region].mean(),
        "mae_clear": np.abs(p - c)[:, ~region].mean(),
        "sam_clear": _angles_deg(p, c)[~region].mean(),
    }


@pytest.mark.parametrize("seed", [0, 1])
def test_image_metrics_match_independent_float64(seed: int) -> None:
    pred, target, cloudy, mask = _pair(seed)
    got = image_metrics(pred, target, cloudy=cloudy, mask=mask)
    expected = _reference(pred, target, cloudy, mask)
    assert set(got) == set(expected)
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, abs=1e-4, rel=1e-6), name
    assert got["ssim"] == pytest.approx(expected["ssim"], abs=1e-12)  # the same sums in float64: equal to rounding


def test_identical_images() -> None:
    _, target, _, _ = _pair(3)
    got = image_metrics(target, target)
    assert got["mae"] == 0 and got["rmse"] == 0 and got["psnr"] == math.inf
    assert got["ssim"] == pytest.approx(1.0) and got["sam"] == pytest.approx(0.0, abs=1e-4)
    assert "mae_cloudy" not in got


def test_empty_region_gives_nan_not_zero() -> None:
    pred, target, cloudy, _ = _pair(4)
    clear_everywhere = np.zeros(target.shape[1:], dtype=np.int8)
    got = image_metrics(pred, target, cloudy=cloudy, mask=clear_everywhere)
    assert math.isnan(got["mae_cloudy"]) and math.isnan(got["sam_cloudy"])
    assert math.isfinite(got["mae_clear"]) and math.isfinite(got["sam_clear"])
    got = image_metrics(pred, target, cloudy=cloudy, mask=np.ones_like(clear_everywhere))
    assert math.isnan(got["mae_clear"]) and math.isnan(got["sam_clear"])


def test_sam_ignores_zero_spectra() -> None:
    pred, target, _, _ = _pair(5)
    pred[:, 0, 0] = 0  # the angle of an all-zero spectrum is undefined
    expected = np.delete(_angles_deg(pred.astype(np.float64), target.astype(np.float64)).ravel(), 0).mean()
    assert image_metrics(pred, target)["sam"] == pytest.approx(expected, abs=1e-6)


def test_ssim_is_nan_when_the_window_does_not_fit() -> None:
    pred, target, _, _ = _pair(9, h=10, w=30)
    got = image_metrics(pred, target)
    assert math.isnan(got["ssim"]) and math.isfinite(got["mae"])


@pytest.mark.parametrize("name", ["pred", "target", "cloudy"])
def test_image_metrics_refuse_reflectance(name: str) -> None:
    """Reflectance (0-1, as rioxarray's ``mask_and_scale=True`` reads an output COG) in place of DN: the metrics
    compared 0.05 with 500 and returned a PSNR of 12 dB, without a word; now refused, naming the array."""
    pred, target, cloudy, mask = _pair(10)
    arrays = {"pred": pred, "target": target, "cloudy": cloudy}
    arrays[name] = arrays[name].astype(np.float32) / 10000
    with pytest.raises(ValueError, match=rf"^{name}: values look like reflectance \(99th percentile [\d.]+\); "):
        image_metrics(arrays["pred"], arrays["target"], cloudy=arrays["cloudy"], mask=mask)


def test_image_metrics_refuse_nan() -> None:
    """No data as NaN (``mask_and_scale=True``) made every metric NaN; refused, with the count."""
    pred, target, _, _ = _pair(11)
    target = target.astype(np.float64)
    target[:, :2, :3] = np.nan
    with pytest.raises(ValueError, match=r"^target: 78 values are NaN"):
        image_metrics(pred, target)


def test_image_metrics_take_float_dn() -> None:
    """DN in a float array (a float GeoTIFF, or a prediction before rounding) is DN: the same metrics."""
    pred, target, cloudy, mask = _pair(12)
    expected = _reference(pred, target, cloudy, mask)
    got = image_metrics(pred.astype(np.float32), target.astype(np.float64), cloudy=cloudy, mask=mask)
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=1e-4, rel=1e-6), key


def test_batch_metrics_are_means_over_images() -> None:
    pairs = [_pair(seed, 24, 24) for seed in (6, 7)]
    to_model = lambda a: torch.from_numpy(a.astype(np.float32) / 2000)  # noqa: E731
    pred = torch.stack([to_model(p[0]) for p in pairs])
    target = torch.stack([to_model(p[1]) for p in pairs])
    cloudy = torch.stack([to_model(p[2]) for p in pairs])
    mask = torch.stack([torch.from_numpy(p[3][:24, :24]) for p in pairs])
    got = batch_metrics(pred, target, cloudy, mask)
    references = [_reference(p[0], p[1], p[2], p[3][:24, :24]) for p in pairs]
    for name in ("mae", "rmse", "psnr", "ssim", "sam", "mae_cloudy", "sam_clear"):
        expected = np.mean([r[name] for r in references])
        assert got[name].item() == pytest.approx(expected, abs=1e-3, rel=1e-4), name


def test_bad_shapes_are_named() -> None:
    pred, target, cloudy, mask = _pair(8)
    with pytest.raises(ValueError, match=r"target: expected shape \(1, 13, 40, 33\) to match pred"):
        image_metrics(pred, target[:, :-1])
    with pytest.raises(ValueError, match=r"pred: expected shape \(N, 13, H, W\)"):
        image_metrics(pred[:12], target[:12])
    with pytest.raises(ValueError, match=r"pred: expected shape \(13, H, W\)"):
        image_metrics(pred[0], target[0])
    with pytest.raises(ValueError, match="mask: expected shape"):
        image_metrics(pred, target, cloudy=cloudy, mask=mask[:-1])
    with pytest.raises(ValueError, match="give both"):
        image_metrics(pred, target, cloudy=cloudy)


def test_metrics_are_exact_under_mixed_precision() -> None:
    """Training with ``trainer.precision: bf16-mixed`` (the paper-fast config) runs validation under autocast, which
    ran SSIM's Gaussian windows in bf16: on a smooth image (reflectance 0.3, local variation 0.005) SSIM was
    0.880 where scikit-image gives 0.994. The metrics are computed in float32 whatever the caller's autocast."""
    rng = np.random.default_rng(4)
    target = np.clip(3000 + rng.normal(0, 50, size=(13, 40, 40)), 0, 10000).astype(np.uint16)
    pred = np.clip(target + rng.normal(0, 25, size=target.shape), 0, 10000).astype(np.uint16)
    cloudy = np.clip(target.astype(np.int32) + 2000, 0, 10000).astype(np.uint16)
    mask = np.zeros((40, 40), dtype=np.int8)
    mask[5:20, 5:25] = 1
    expected = _reference(pred, target, cloudy, mask)
    to_model = lambda a: torch.from_numpy(a.astype(np.float32) / 2000)[None]  # noqa: E731
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = batch_metrics(to_model(pred), to_model(target), to_model(cloudy), torch.from_numpy(mask)[None])
    for name in ("mae", "psnr", "ssim", "sam", "mae_cloudy", "sam_clear"):
        assert got[name].item() == pytest.approx(expected[name], abs=1e-4, rel=1e-4), name
