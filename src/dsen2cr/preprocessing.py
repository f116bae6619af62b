"""Conversions between file values (S2 DN, S1 dB) and model units, with every constant in one place.

Conventions of the paper code (docs/design.md §3.2):

- S1: VV clipped to [-25, 0] dB, VH to [-32.5, 0] dB, shifted by the minimum and rescaled to [0, 2].
- S2: DN (TOA reflectance x 10000) clipped to [0, 10000] and divided by 2000, giving [0, 5].
- NaNs in a raster are replaced by that raster's mean.
"""

from __future__ import annotations

import numpy as np
import torch

#: Sentinel-2 L1C band names in the order the network expects (index = channel).
S2_BANDS: tuple[str, ...] = (
    "B1",
    "B2",
    "B3",
    "B4",
    "B5",
    "B6",
    "B7",
    "B8",
    "B8A",
    "B9",
    "B10",
    "B11",
    "B12",
)
#: Sentinel-1 polarisations in file band order.
S1_BANDS: tuple[str, ...] = ("VV", "VH")
NUM_S2_BANDS = len(S2_BANDS)
NUM_S1_BANDS = len(S1_BANDS)

#: S2 DN that maps to reflectance 1.0.
S2_REFLECTANCE_SCALE = 10000.0
#: S2 DN range kept by the preprocessing.
S2_CLIP_DN = (0.0, 10000.0)
#: S2 DN per model unit.
S2_MODEL_SCALE = 2000.0
#: The smallest variance a network predicts (model units squared): sigma >= 0.001 model units, 2 DN. Keeps the
#: likelihood finite where the prediction is exact (saturated or constant pixels).
VARIANCE_FLOOR = 1e-6
#: S1 dB clip ranges, per polarisation (VV, VH).
S1_CLIP_DB = ((-25.0, 0.0), (-32.5, 0.0))
#: Upper end of the S1 range in model units.
S1_MODEL_MAX = 2.0


def fill_nan(raster: np.ndarray, name: str = "raster") -> np.ndarray:
    """Return ``raster`` with NaNs replaced by the mean of its finite values (the paper's rule).

    Returns the input itself when it has no NaN. Raises ``ValueError`` when every value is NaN.
    """
    nan = np.isnan(raster)
    if not nan.any():
        return raster
    if nan.all():
        raise ValueError(f"{name}: every value is NaN, no mean to fill with")
    filled = raster.copy()
    filled[nan] = np.nanmean(raster)
    return filled


def s2_dn_to_model(s2_dn: np.ndarray) -> np.ndarray:
    """Convert S2 DN of shape (13, H, W) (or any shape) to float32 model units in [0, 5]."""
    s2 = fill_nan(np.asarray(s2_dn, dtype=np.float32), "S2")
    return s2_dn_to_model_into(s2, np.empty_like(s2))


def s2_dn_to_model_into(s2_dn: np.ndarray, out: np.ndarray) -> np.ndarray:
    """:func:`s2_dn_to_model` of finite DN written into ``out`` (float32, same shape), the same values without
    the temporary copies (the scene path's version: integer DN are clipped before they become float)."""
    lo, hi = S2_CLIP_DN
    if s2_dn.dtype.kind in "ui":
        clipped = np.clip(s2_dn, int(lo), int(hi))
        out[...] = clipped  # exact: DN up to 10000 are float32 integers
    else:
        np.clip(s2_dn, lo, hi, out=out, dtype=np.float32)
    return np.divide(out, np.float32(S2_MODEL_SCALE), out=out)


def s2_model_to_dn(s2_model: np.ndarray | torch.Tensor) -> np.ndarray:
    """Convert S2 model units back to uint16 DN, rounded and clipped to the preprocessing range."""
    if isinstance(s2_model, torch.Tensor):
        s2_model = s2_model.detach().float().cpu().numpy()
    lo, hi = S2_CLIP_DN
    dn = np.clip(np.rint(np.asarray(s2_model, dtype=np.float32) * S2_MODEL_SCALE), lo, hi)
    return dn.astype(np.uint16)


def s2_model_to_reflectance(s2_model: torch.Tensor) -> torch.Tensor:
    """Convert S2 model units to reflectance clipped to [0, 1] (the metric convention)."""
    return (s2_model * (S2_MODEL_SCALE / S2_REFLECTANCE_SCALE)).clamp(0.0, 1.0)


def s2_dn_to_reflectance(s2_dn: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Convert S2 DN to float64 reflectance clipped to [0, 1] (the metric convention)."""
    s2 = torch.as_tensor(np.asarray(s2_dn, dtype=np.float64))
    return (s2 / S2_REFLECTANCE_SCALE).clamp(0.0, 1.0)


#: S2 whose valid values lie at or below this in their 99th percentile holds reflectance (0-1), not DN.
REFLECTANCE_LOOK_MAX = 2.0


def reflectance_percentile(s2: np.ndarray) -> float | None:
    """The 99th percentile of the finite, non-zero values of ``s2`` when it is at most
    :data:`REFLECTANCE_LOOK_MAX`: S2 that holds reflectance (0-1) where DN (reflectance x 10000) are expected.
    None for DN (or no valid value)."""
    values = np.asarray(s2, dtype=np.float64)
    valid = values[np.isfinite(values) & (values != 0)]
    if not valid.size:
        return None
    percentile = float(np.percentile(valid, 99))
    return percentile if percentile <= REFLECTANCE_LOOK_MAX else None


def s1_db_to_model(s1_db: np.ndarray) -> np.ndarray:
    """Convert S1 backscatter in dB, shape (2, H, W) with VV then VH, to float32 model units in [0, 2]."""
    s1 = fill_nan(np.asarray(s1_db, dtype=np.float32), "S1")
    if s1.ndim < 1 or s1.shape[0] != NUM_S1_BANDS:
        raise ValueError(f"s1_db: expected {NUM_S1_BANDS} bands (VV, VH) first, got shape {s1.shape}")
    out = np.empty_like(s1)
    for band, (lo, hi) in enumerate(S1_CLIP_DB):
        out[band] = (np.clip(s1[band], lo, hi) - lo) * np.float32(S1_MODEL_MAX / (hi - lo))
    return out


def s1_model_to_db(s1_model: np.ndarray) -> np.ndarray:
    """Invert :func:`s1_db_to_model` (within the clip ranges): model units (2, H, W) back to dB."""
    s1 = np.asarray(s1_model, dtype=np.float32)
    out = np.empty_like(s1)
    for band, (lo, hi) in enumerate(S1_CLIP_DB):
        out[band] = s1[band] * np.float32((hi - lo) / S1_MODEL_MAX) + np.float32(lo)
    return out
