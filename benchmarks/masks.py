"""Cloud/shadow mask throughput (masks per second) on one core, for 128x128 and 256x256 inputs.

Run: ``python -m benchmarks.masks`` (writes benchmarks/results/masks.json and .md).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from benchmarks.common import median_seconds, report
from dsen2cr.cloud_detection import cloud_shadow_mask


def _scene(size: int, seed: int = 0) -> np.ndarray:
    """A smooth random 13-band DN scene with bright and dark structures."""
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.normal(size=(13, size, size)), sigma=(0, 6, 6))
    return np.clip(3000 + 40000 * field, 0, 12000).astype(np.uint16)


def main() -> None:
    """Measure and report."""
    rows = []
    for size in (128, 256):
        scene = _scene(size)
        batch = 50 if size == 128 else 20
        seconds = median_seconds(lambda s=scene, n=batch: [cloud_shadow_mask(s) for _ in range(n)], repeats=5)
        rows.append({"size": f"{size}x{size}", "masks_per_s": batch / seconds, "ms_per_mask": 1000 * seconds / batch})
    report("masks", rows)


if __name__ == "__main__":
    main()
