"""The cloud and cloud-shadow detector of the paper code (docs/design.md §3.3), vectorised with scipy.ndimage.

All functions take S2 L1C digital numbers of shape (13, H, W) in the paper's band order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from dsen2cr.choices import DEFAULT_CLOUD_THRESHOLD
from dsen2cr.preprocessing import NUM_S2_BANDS, S2_BANDS, S2_REFLECTANCE_SCALE, fill_nan

CLOUD = 1
SHADOW = -1
CLEAR = 0

_B = {name: index for index, name in enumerate(S2_BANDS)}
_CLOSING_SIZE = 5
_MEAN_FILTER_SIZE = 7
_SHADOW_MEDIAN_SIZE = 5
_SCORE_FLOOR = 1e-5


def _reflectance(s2_dn: np.ndarray) -> np.ndarray:
    """Validate a (13, H, W) DN array and return it as float32 reflectance (DN / 10000), NaNs filled."""
    s2 = np.asarray(s2_dn)
    if s2.ndim != 3 or s2.shape[0] != NUM_S2_BANDS:
        raise ValueError(f"s2_dn: expected shape ({NUM_S2_BANDS}, H, W), got {s2.shape}")
    return fill_nan(s2.astype(np.float32), "s2_dn") / np.float32(S2_REFLECTANCE_SCALE)


def _rescale(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Map ``lo`` to 0 and ``hi`` to 1 linearly (no clipping; ``hi < lo`` inverts)."""
    return (x - np.float32(lo)) / np.float32(hi - lo)


def cloud_score(s2_dn: np.ndarray) -> np.ndarray:
    """Return the continuous cloud score in [1e-5, 1], float32 (H, W), of a (13, H, W) DN array."""
    return _cloud_score(_reflectance(s2_dn))


def _cloud_score(r: np.ndarray) -> np.ndarray:
    """Cloud score of a (13, H, W) float32 reflectance array."""
    b1, b2, b3, b4 = r[_B["B1"]], r[_B["B2"]], r[_B["B3"]], r[_B["B4"]]
    b10, b11 = r[_B["B10"]], r[_B["B11"]]
    score = np.ones(r.shape[1:], dtype=np.float32)
    np.minimum(score, _rescale(b2, 0.1, 0.5), out=score)
    np.minimum(score, _rescale(b1, 0.1, 0.3), out=score)
    np.minimum(score, _rescale(b1 + b10, 0.15, 0.2), out=score)
    np.minimum(score, _rescale(b4 + b3 + b2, 0.2, 0.8), out=score)
    denominator = b3 + b11
    denominator[denominator == 0] = 0.001
    np.minimum(score, _rescale((b3 - b11) / denominator, 0.8, 0.6), out=score)
    score = ndimage.grey_closing(score, size=(_CLOSING_SIZE, _CLOSING_SIZE), mode="reflect")
    score = ndimage.uniform_filter(score, size=_MEAN_FILTER_SIZE, mode="constant", cval=0.0)
    return np.clip(score, _SCORE_FLOOR, 1.0, out=score)


@dataclass(frozen=True)
class ShadowStats:
    """The image statistics the shadow rule thresholds: minimum and mean of CSI = (B8 + B11) / 2 and of B2
    (reflectance). The paper code takes them from the image at hand; a whole scene takes them once, over its
    valid pixels (:class:`ShadowStatsAccumulator`), so that its mask does not depend on the tiling."""

    csi_min: float
    csi_mean: float
    blue_min: float
    blue_mean: float

    @property
    def thresholds(self) -> tuple[float, float]:
        """(T3, T4): CSI and blue below both is dark."""
        t3 = self.csi_min + 0.75 * (self.csi_mean - self.csi_min)
        t4 = self.blue_min + 5.0 / 6.0 * (self.blue_mean - self.blue_min)
        return t3, t4


#: The bands the shadow statistics are made of: blue, and the CSI's B8 and B11.
SHADOW_STATS_BANDS = ("B2", "B8", "B11")


class ShadowStatsAccumulator:
    """:class:`ShadowStats` of a scene, accumulated block by block over the valid pixels (float64 sums)."""

    def __init__(self) -> None:
        self.count = 0
        self.sums = np.zeros(2)
        self.mins = np.full(2, np.inf)

    def add(self, s2_dn: np.ndarray, valid: np.ndarray) -> None:
        """Add the valid pixels of a (13, h, w) DN block."""
        if valid.any():
            r = _reflectance(s2_dn)
            self._add(_csi(r), r[_B["B2"]], valid)

    def add_bands(self, dn: np.ndarray, valid: np.ndarray) -> None:
        """Add the valid pixels of a (3, h, w) DN block of :data:`SHADOW_STATS_BANDS` alone (without NaN), the
        same values :meth:`add` takes from the 13 bands."""
        if valid.any():
            r = dn.astype(np.float32) / np.float32(S2_REFLECTANCE_SCALE)
            blue, nir, swir = r
            self._add((nir + swir) / 2, blue, valid)

    def _add(self, csi: np.ndarray, blue: np.ndarray, valid: np.ndarray) -> None:
        """Add the CSI and blue reflectance of the valid pixels."""
        for index, values in enumerate((csi[valid], blue[valid])):
            self.sums[index] += values.sum(dtype=np.float64)
            self.mins[index] = min(self.mins[index], float(values.min()))
        self.count += int(valid.sum())

    def merge(self, other: ShadowStatsAccumulator) -> None:
        """Add what ``other`` accumulated (a block's sums added to these, as if its pixels were added here)."""
        self.sums += other.sums
        self.mins = np.minimum(self.mins, other.mins)
        self.count += other.count

    def stats(self) -> ShadowStats | None:
        """The statistics, or None when no valid pixel was seen."""
        if self.count == 0:
            return None
        means = self.sums / self.count
        return ShadowStats(float(self.mins[0]), float(means[0]), float(self.mins[1]), float(means[1]))


def _csi(r: np.ndarray) -> np.ndarray:
    """The cloud-shadow index (B8 + B11) / 2 of a reflectance array."""
    return (r[_B["B8"]] + r[_B["B11"]]) / 2


def shadow_mask(s2_dn: np.ndarray, stats: ShadowStats | None = None) -> np.ndarray:
    """Return a bool (H, W) map of cloud shadow from a (13, H, W) DN array (``stats``: a scene's, else the
    array's own)."""
    return _shadow(_reflectance(s2_dn), stats)


def _shadow(r: np.ndarray, stats: ShadowStats | None = None) -> np.ndarray:
    """Shadow map of a (13, H, W) float32 reflectance array."""
    blue = r[_B["B2"]]
    csi = _csi(r)
    if stats is None:  # the paper code's rule: the statistics of this array
        means = csi.mean(dtype=np.float64), blue.mean(dtype=np.float64)
        stats = ShadowStats(float(csi.min()), float(means[0]), float(blue.min()), float(means[1]))
    t3, t4 = stats.thresholds
    dark = ((csi < t3) & (blue < t4)).astype(np.int32)
    # A 5x5 median of the 0/-1 map with zero padding is -1 where at least 13 of the 25 cells are dark.
    size = _SHADOW_MEDIAN_SIZE
    dark_count = ndimage.convolve(dark, np.ones((size, size), np.int32), mode="constant", cval=0)
    return dark_count > (size * size) // 2


#: Pixels beyond which a pixel's value no longer affects the mask (grey closing 5x5: a dilation and an erosion
#: of radius 2 each, then the 7x7 mean: 3): a window read with this margin gives the whole image's map inside.
MASK_RADIUS = 2 * (_CLOSING_SIZE // 2) + _MEAN_FILTER_SIZE // 2


def cloud_shadow_mask(
    s2_dn: np.ndarray, threshold: float = DEFAULT_CLOUD_THRESHOLD, stats: ShadowStats | None = None
) -> np.ndarray:
    """Return the int8 (H, W) map of a (13, H, W) DN array: 1 cloud, -1 shadow, 0 clear.

    Cloud is where the cloud score is at least ``threshold``; cloud overrides shadow. ``stats``: the shadow
    thresholds' image statistics of a whole scene (default: of this array, as the paper code).
    """
    r = _reflectance(s2_dn)
    result = np.where(_shadow(r, stats), np.int8(SHADOW), np.int8(CLEAR))
    result[_cloud_score(r) >= threshold] = CLOUD
    return result


#: ``s2cloudless`` (Sentinel Hub's pixel classifier) on 10 m data: its default probability threshold, 0.4; the
#: probability averaged over a disk of radius 4 px (40 m) so that single bright pixels (roofs, glint) do not
#: make clouds, and the mask dilated by 2 px (20 m) to cover the thin, darker rims of clouds the classifier
#: misses. Both are in pixels: the package's default of 1 px each suits its 160 m training resolution.
S2CLOUDLESS_THRESHOLD = 0.4
S2CLOUDLESS_AVERAGE_OVER = 4
S2CLOUDLESS_DILATION = 2
#: Pixels beyond which a pixel no longer affects the s2cloudless mask (the averaging disk, then the dilation).
S2CLOUDLESS_RADIUS = S2CLOUDLESS_AVERAGE_OVER + S2CLOUDLESS_DILATION
#: Masks that can be computed from the pixels of an image (``product`` masks come with Sentinel products).
COMPUTED_MASKS = ("paper", "s2cloudless")


def s2cloudless_mask(s2_dn: np.ndarray) -> np.ndarray:
    """The int8 (H, W) cloud map of a (13, H, W) L1C DN array by s2cloudless (1 cloud, 0 clear): it is fed
    the ten bands it was trained on as top-of-atmosphere reflectance. It detects clouds only: the map has no
    shadow class. Needs the optional ``masks`` extra."""
    reflectance = _reflectance(s2_dn)
    detector = _s2cloudless_detector()
    clouds = detector.get_cloud_masks(np.moveaxis(reflectance, 0, -1)[None])[0]
    return np.where(clouds > 0, np.int8(CLOUD), np.int8(CLEAR))


def _s2cloudless_detector():
    """The s2cloudless detector with the settings above, built once per process."""
    global _DETECTOR
    if _DETECTOR is None:
        try:
            from s2cloudless import S2PixelCloudDetector
        except ImportError:
            from dsen2cr.errors import DSen2CRError

            raise DSen2CRError(
                "mask s2cloudless needs the optional 'masks' dependencies: pip install 'dsen2cr[masks]'"
            ) from None
        _DETECTOR = S2PixelCloudDetector(
            threshold=S2CLOUDLESS_THRESHOLD,
            average_over=S2CLOUDLESS_AVERAGE_OVER,
            dilation_size=S2CLOUDLESS_DILATION,
            all_bands=True,
        )
    return _DETECTOR


_DETECTOR: Any = None


def computed_mask(
    kind: str, s2_dn: np.ndarray, threshold: float = DEFAULT_CLOUD_THRESHOLD, stats: ShadowStats | None = None
) -> np.ndarray:
    """The cloud/shadow map of ``kind`` (``paper`` with ``threshold`` and ``stats``, or ``s2cloudless``)."""
    if kind == "s2cloudless":
        return s2cloudless_mask(s2_dn)
    if kind != "paper":
        raise ValueError(f"mask: expected one of {COMPUTED_MASKS}, got {kind!r}")
    return cloud_shadow_mask(s2_dn, threshold, stats)
