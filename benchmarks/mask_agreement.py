"""Masks on the real data the project ships: cloud and shadow fractions of the paper mask (per image, as in
training, and with scene statistics, as remove-clouds) and of s2cloudless, their agreement on clouds (IoU),
and masks per second (one core).

Run: ``OMP_NUM_THREADS=1 python -m benchmarks.mask_agreement`` (writes benchmarks/results/mask_agreement.json
and .md; s2cloudless rows need ``pip install 'dsen2cr[masks]'``).
"""

from __future__ import annotations

import time

import numpy as np
import rasterio

from benchmarks.common import report
from dsen2cr.cloud_detection import CLOUD, SHADOW, ShadowStatsAccumulator, cloud_shadow_mask, s2cloudless_mask
from dsen2cr.data.layout import read_file_list
from dsen2cr.data.sample import sample_dataset_root, sample_file_list, sample_scene


def _images() -> list[tuple[str, np.ndarray]]:
    """The real T33UUU L1C scene and the sample's cloudy patches (L2A with synthetic clouds)."""
    with rasterio.open(sample_scene()) as src:
        images = [("T33UUU scene 768x640 (real L1C)", src.read())]
    for triplet in read_file_list(sample_file_list(), sample_dataset_root()):
        with rasterio.open(triplet.s2_cloudy) as src:
            images.append((f"sample {triplet.patch_id} (L2A, synthetic clouds)", src.read()))
    return images


def _timed(function: object, *args: object) -> tuple[np.ndarray, float]:
    """Result and seconds of one call."""
    start = time.perf_counter()
    result = function(*args)  # type: ignore[operator]
    return result, time.perf_counter() - start


def main() -> None:
    """Measure and report."""
    rows = []
    for name, dn in _images():
        valid = np.any(dn != 0, axis=0)
        accumulator = ShadowStatsAccumulator()
        accumulator.add(dn, valid)
        paper, paper_s = _timed(cloud_shadow_mask, dn)
        scene, _ = _timed(cloud_shadow_mask, dn, 0.2, accumulator.stats())
        masks = {"paper (image statistics)": paper, "paper (valid-pixel statistics)": scene}
        seconds = {"paper (image statistics)": paper_s}
        try:
            masks["s2cloudless"], seconds["s2cloudless"] = _timed(s2cloudless_mask, dn)
        except Exception as error:  # the optional extra is missing
            print(f"s2cloudless skipped: {error}")
        for kind, mask in masks.items():
            row = {
                "image": name,
                "mask": kind,
                "cloud_%": 100 * float((mask == CLOUD).mean()),
                "shadow_%": 100 * float((mask == SHADOW).mean()),
                "cloud_IoU_vs_paper": _iou(mask == CLOUD, paper == CLOUD),
                "Mpx_per_s": dn[0].size / 1e6 / seconds[kind] if kind in seconds else float("nan"),
            }
            rows.append(row)
    report("mask_agreement", rows)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two bool maps (NaN when both are empty)."""
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else float("nan")


if __name__ == "__main__":
    main()
