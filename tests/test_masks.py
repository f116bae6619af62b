"""The cloud/shadow detector: each rule hit on purpose, and the whole map against a per-pixel transcription."""

from __future__ import annotations

import numpy as np
import pytest

from dsen2cr.cloud_detection import cloud_score, cloud_shadow_mask, shadow_mask

B = {
    name: i for i, name in enumerate(["B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B10", "B11", "B12"])
}


def _surface(reflectance: dict[str, float], default: float) -> np.ndarray:
    """A 13-band spectrum in DN with the given band reflectances."""
    spectrum = np.full(13, default * 10000.0)
    for band, value in reflectance.items():
        spectrum[B[band]] = value * 10000.0
    return spectrum


CLOUD = _surface({"B10": 0.05, "B11": 0.55}, default=0.6)
SNOW = _surface({"B1": 0.6, "B2": 0.7, "B3": 0.7, "B4": 0.7, "B8": 0.5, "B10": 0.01, "B11": 0.05}, 0.4)
SHADOW = _surface({}, default=0.01)
LAND = _surface({"B1": 0.08, "B2": 0.05, "B3": 0.07, "B4": 0.06, "B8": 0.3, "B11": 0.2}, 0.15)


def _quadrant_scene() -> np.ndarray:
    """A 64x64 scene: cloud top-left, snow top-right, shadow bottom-left, clear land bottom-right."""
    scene = np.empty((13, 64, 64))
    scene[:, :32, :32] = CLOUD[:, None, None]
    scene[:, :32, 32:] = SNOW[:, None, None]
    scene[:, 32:, :32] = SHADOW[:, None, None]
    scene[:, 32:, 32:] = LAND[:, None, None]
    return scene.astype(np.uint16)


def test_each_rule_on_its_surface() -> None:
    result = cloud_shadow_mask(_quadrant_scene())
    assert result.dtype == np.int8 and result.shape == (64, 64)
    centre = slice(8, 24)
    assert (result[centre, centre] == 1).all(), "bright, flat cloud"
    assert (result[centre, 40:56] == 0).all(), "snow (high NDSI) must not be cloud"
    assert (result[40:56, centre] == -1).all(), "dark pixels in NIR, SWIR and blue are shadow"
    assert (result[40:56, 40:56] == 0).all(), "clear land"


def test_cloud_score_values_by_hand() -> None:
    scene = _quadrant_scene()
    score = cloud_score(scene)
    assert score.dtype == np.float32
    # Deep inside the cloud every rule saturates at 1: B2 0.6 -> 1.25, B1 0.6 -> 2.5, B1+B10 0.65 -> 10,
    # visible sum 1.8 -> 2.67, NDSI (0.6-0.55)/1.15 = 0.043 -> 3.78; the score stays 1.
    assert score[16, 16] == pytest.approx(1.0)
    # Clear land: B2 0.05 -> (0.05 - 0.1) / 0.4 < 0, so the floor of 1e-5 after filtering.
    assert score[48, 48] == pytest.approx(1e-5)
    # Threshold on the score alone.
    assert (cloud_shadow_mask(scene, threshold=1.01) != 1).all()


# ---- a literal, per-pixel transcription of the rules (design.md §4), in float64 -------------------------


def _literal_mask(s2_dn: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    r = s2_dn.astype(np.float64) / 10000.0
    _, h, w = r.shape

    def rescale(x: float, lo: float, hi: float) -> float:
        return (x - lo) / (hi - lo)

    raw = np.empty((h, w))
    for i in range(h):
        for j in range(w):
            px = r[:, i, j]
            s = 1.0
            s = min(s, rescale(px[B["B2"]], 0.1, 0.5))
            s = min(s, rescale(px[B["B1"]], 0.1, 0.3))
            s = min(s, rescale(px[B["B1"]] + px[B["B10"]], 0.15, 0.2))
            s = min(s, rescale(px[B["B4"]] + px[B["B3"]] + px[B["B2"]], 0.2, 0.8))
            den = px[B["B3"]] + px[B["B11"]]
            ndsi = (px[B["B3"]] - px[B["B11"]]) / (den if den != 0 else 0.001)
            raw[i, j] = min(s, rescale(ndsi, 0.8, 0.6))

    def reflect(k: int, n: int) -> int:  # scipy.ndimage 'reflect': d c b a | a b c d | d c b a
        if k < 0:
            return -k - 1
        if k >= n:
            return 2 * n - k - 1
        return k

    def window_reduce(img: np.ndarray, half: int, fn) -> np.ndarray:
        out = np.empty_like(img)
        for i in range(h):
            for j in range(w):
                out[i, j] = fn(
                    img[reflect(i + di, h), reflect(j + dj, w)]
                    for di in range(-half, half + 1)
                    for dj in range(-half, half + 1)
                )
        return out

    closed = window_reduce(window_reduce(raw, 2, max), 2, min)  # dilation then erosion
    score = np.empty((h, w))
    for i in range(h):
        for j in range(w):
            total = 0.0
            for di in range(-3, 4):
                for dj in range(-3, 4):
                    if 0 <= i + di < h and 0 <= j + dj < w:  # zero padding outside
                        total += closed[i + di, j + dj]
            score[i, j] = min(max(total / 49.0, 1e-5), 1.0)

    csi = (r[B["B8"]] + r[B["B11"]]) / 2
    blue = r[B["B2"]]
    t3 = csi.min() + 0.75 * (csi.mean() - csi.min())
    t4 = blue.min() + 5 / 6 * (blue.mean() - blue.min())
    dark = np.where((csi < t3) & (blue < t4), -1.0, 0.0)
    shadow = np.zeros((h, w))
    for i in range(h):
        for j in range(w):
            window = [
                dark[i + di, j + dj] if (0 <= i + di < h and 0 <= j + dj < w) else 0.0
                for di in range(-2, 3)
                for dj in range(-2, 3)
            ]
            shadow[i, j] = sorted(window)[12]  # median of 25
    combined = np.zeros((h, w), dtype=np.int8)
    combined[shadow < 0] = -1
    combined[score >= threshold] = 1
    return score, combined


def _random_scene(seed: int, h: int = 30, w: int = 26) -> np.ndarray:
    """Random reflectances with a bright blob and a dark blob, so all three classes occur."""
    rng = np.random.default_rng(seed)
    scene = rng.uniform(0.0, 0.35, size=(13, h, w))
    scene[:, 3:14, 4:15] += rng.uniform(0.2, 0.6, size=(13, 11, 11))
    scene[:, 17:28, 12:24] *= 0.1
    scene[B["B10"]] *= 0.2
    scene[:, 0, 0] = 0.0  # a zero NDSI denominator
    return np.round(scene * 10000).astype(np.uint16)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_literal_transcription(seed: int) -> None:
    scene = _random_scene(seed)
    expected_score, expected_map = _literal_mask(scene, threshold=0.2)
    np.testing.assert_allclose(cloud_score(scene), expected_score, atol=2e-6)
    got = cloud_shadow_mask(scene, threshold=0.2)
    np.testing.assert_array_equal(got, expected_map)
    assert set(np.unique(got)) == {-1, 0, 1}
    np.testing.assert_array_equal(shadow_mask(scene), _literal_mask(scene, threshold=2.0)[1] == -1)


@pytest.mark.parametrize("shape", [(12, 8, 8), (8, 8), (1, 13, 8, 8)])
def test_bad_shape_is_refused(shape: tuple) -> None:
    with pytest.raises(ValueError, match=r"s2_dn: expected shape \(13, H, W\)"):
        cloud_shadow_mask(np.zeros(shape, dtype=np.uint16))
