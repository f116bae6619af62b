"""Per-image metrics (``evaluate``'s scoring of one patch, float64 on the CPU): SSIM as ``dsen2cr.metrics`` computes
it (the Gaussian window's two 1-D passes) against torchmetrics' SSIM (a full 11 x 11 kernel, its map cropped to
the same valid region), and all of ``image_metrics`` with the region metrics, on 13-band patches of 128 and 256 px.

Run: ``python -m benchmarks.metrics`` (writes benchmarks/results/metrics.json and .md).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage
from torchmetrics.functional.image import structural_similarity_index_measure

from benchmarks.common import median_seconds, report
from dsen2cr.metrics import SSIM_SIGMA, SSIM_WINDOW, _ssim_valid_region, image_metrics


def _patch(size: int, seed: int) -> np.ndarray:
    """A smooth random 13-band DN patch."""
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.normal(size=(13, size, size)), sigma=(0, 4, 4))
    return np.clip(3000 + 30000 * field, 0, 12000).astype(np.uint16)


def _torchmetrics_ssim(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """torchmetrics' SSIM map cropped to the pixels whose window fits, averaged per image."""
    _, ssim_map = structural_similarity_index_measure(
        pred,
        target,
        gaussian_kernel=True,
        sigma=SSIM_SIGMA,
        kernel_size=SSIM_WINDOW,
        data_range=1.0,
        reduction="none",
        return_full_image=True,
    )
    margin = SSIM_WINDOW // 2
    return ssim_map[..., margin:-margin, margin:-margin].mean(dim=(1, 2, 3))


def _measure(size: int) -> dict[str, object]:
    """One patch size's row."""
    target = _patch(size, 0)
    noise = np.random.default_rng(1).integers(-400, 400, target.shape)
    pred = np.clip(target.astype(np.int32) + noise, 0, 12000).astype(np.uint16)
    mask = (ndimage.gaussian_filter(target[1].astype(float), 3) > np.median(target[1])).astype(np.int8)
    p, t = (torch.from_numpy(x.astype(np.float64) / 10000).clamp(0, 1)[None] for x in (pred, target))
    ours = median_seconds(lambda: _ssim_valid_region(p, t), repeats=5)
    theirs = median_seconds(lambda: _torchmetrics_ssim(p, t), repeats=3)
    difference = abs(float(_ssim_valid_region(p, t)[0]) - float(_torchmetrics_ssim(p, t)[0]))
    whole = median_seconds(lambda: image_metrics(pred, target, cloudy=target, mask=mask), repeats=5)
    return {
        "patch": f"13 x {size} x {size}",
        "ssim_ms": 1000 * ours,
        "torchmetrics_ssim_ms": 1000 * theirs,
        "speed_up": theirs / ours,
        "abs_difference": difference,
        "image_metrics_ms": 1000 * whole,
    }


def main() -> None:
    """Measure and report."""
    report("metrics", [_measure(size) for size in (128, 256)])


if __name__ == "__main__":
    main()
