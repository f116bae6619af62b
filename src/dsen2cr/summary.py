"""An evaluation's summary: per method and metric the mean and median over the images, and the mean's confidence
interval with the patches of one ROI taken as a cluster (they show one place on one date, so their errors are
not independent: an interval that took every patch as an independent draw would be too narrow); and the strict
JSON the reports are written in."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats

#: The rows an evaluation scores: the model, and the identity baseline (the cloudy input as the prediction).
METHODS = ("model", "identity")
#: The confidence level of the summary's intervals.
CONFIDENCE = 0.95
UNITS = {
    "default": "reflectance clipped to [0, 1], SAM in degrees",
    "original": "the original code's units: model units (DN / 2000) unclipped, PSNR and SSIM on DN, SAM in radians",
}

Summary = dict[str, dict[str, dict[str, float]]]


def clustered_interval(values: np.ndarray, clusters: Sequence[str], level: float = CONFIDENCE) -> tuple[float, float]:
    """The ``level`` confidence interval of the mean of ``values`` where values of one cluster may be correlated:
    mean ± t(level, G − 1) · SE, with the cluster-robust standard error SE² = G / (G − 1) · Σ_g (Σ_{i∈g} (x_i −
    mean))² / n² over the G clusters of the n values (with one value per cluster, the usual s / √n; with equal
    clusters, the t-interval of the clusters' means). NaN bounds with fewer than two clusters."""
    mean, error, count = _clustered_error(values, clusters)
    if count < 2:
        return math.nan, math.nan
    half = float(stats.t.ppf(0.5 + level / 2, count - 1)) * error
    return mean - half, mean + half


def metric_range(name: str) -> tuple[float, float]:
    """The values metric ``name`` can take: a coverage lies in [0, 1], an SSIM in [-1, 1], a PSNR or an NLL
    anywhere; every other metric of an evaluation (errors, SAM, UCE, RMS sigma) is at least 0."""
    if "coverage" in name:
        return 0.0, 1.0
    if "ssim" in name:
        return -1.0, 1.0
    if "psnr" in name or name == "nll":
        return -math.inf, math.inf
    return 0.0, math.inf


def clustered_p_value(values: np.ndarray, clusters: Sequence[str]) -> float:
    """The two-sided p-value of the mean of ``values`` being 0, by the test :func:`clustered_interval` inverts
    (t = mean / SE on G − 1 degrees of freedom: the interval leaves out 0 at level 1 − α exactly where p < α). NaN
    with fewer than two clusters; 1 where every value is 0, 0 where they all lie on one side of 0 alike."""
    mean, error, count = _clustered_error(values, clusters)
    if count < 2:
        return math.nan
    if error == 0:
        return 1.0 if mean == 0 else 0.0
    return float(2 * stats.t.sf(abs(mean) / error, count - 1))


def holm_adjusted(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment of ``p_values`` (NaN ones left out of the family and kept NaN): the k-th
    smallest of the m becomes max over j ≤ k of min(1, (m − j + 1) · p_(j)). Rejecting where the adjusted value
    is below α keeps the chance of any false rejection among the m at most α, whatever their dependence."""
    order = sorted((p, index) for index, p in enumerate(p_values) if not math.isnan(p))
    adjusted = [math.nan] * len(p_values)
    running = 0.0
    for rank, (p, index) in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * p))
        adjusted[index] = running
    return adjusted


def _clustered_error(values: np.ndarray, clusters: Sequence[str]) -> tuple[float, float, int]:
    """The mean of ``values``, its cluster-robust standard error (:func:`clustered_interval`) and the number of
    clusters G (NaN mean and error where G < 2)."""
    values = np.asarray(values, dtype=np.float64)
    names, index = np.unique(np.asarray(clusters), return_inverse=True)
    count = len(names)
    if count < 2 or values.size == 0:
        return math.nan, math.nan, count
    if not np.isfinite(values).all():  # a perfect image's PSNR: the mean is infinite, its spread undefined
        with np.errstate(invalid="ignore"):
            return float(values.mean()), math.nan, count
    mean = values.mean()
    sums = np.bincount(index, weights=values - mean, minlength=count)
    error = math.sqrt(count / (count - 1) * float((sums**2).sum())) / values.size
    return float(mean), error, count


def summarise(rows: Sequence[dict[str, Any]], names: Sequence[str]) -> Summary:
    """Mean and median of every metric per method (NaN entries, i.e. empty regions, left out), and the mean's
    :data:`CONFIDENCE` interval (``ci_low``, ``ci_high``) with each ROI a cluster (a row's ``roi``; a row without
    one, its image its own), a bound past the metric's range (:func:`metric_range`) set at its edge, and ``rois``,
    the ROIs that hold the metric."""
    summary: Summary = {}
    for method in METHODS:
        chosen = [r for r in rows if r["method"] == method]
        summary[method] = {}
        for name in names:
            pairs = _scored(chosen, name)
            values = np.array([value for value, _ in pairs], dtype=np.float64)
            clusters = [roi for _, roi in pairs]
            low, high = clustered_interval(values, clusters)
            floor, ceiling = metric_range(name)  # the mean lies within: a bound past it says nothing more
            low, high = (
                (low if math.isnan(low) else max(low, floor)),
                (high if math.isnan(high) else min(high, ceiling)),
            )
            summary[method][name] = {
                "mean": float(values.mean()) if values.size else math.nan,
                "median": float(np.median(values)) if values.size else math.nan,
                "ci_low": low,
                "ci_high": high,
                "rois": len(set(clusters)),
            }
    return summary


def _roi(row: dict[str, Any]) -> str:
    """A row's ROI (a row without one: its image, a cluster of its own)."""
    return str(row.get("roi", row["patch_id"]))


def _scored(rows: Sequence[dict[str, Any]], name: str) -> list[tuple[float, str]]:
    """The values of metric ``name`` in ``rows`` with their ROIs, NaN entries (empty regions) left out."""
    pairs = [(float(row[name]), _roi(row)) for row in rows if name in row]
    return [(value, roi) for value, roi in pairs if not math.isnan(value)]


def per_roi_csv(rows: Sequence[dict[str, Any]], names: Sequence[str]) -> str:
    """``metrics_per_roi.csv``: per ROI (in the order the rows first name them) and method, its patches and the
    mean of every metric over those that hold it (empty where none does)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((_roi(row), row["method"]), []).append(row)
    lines = [",".join(["roi", "method", "patches", *names])]
    for (roi, method), chosen in groups.items():
        means = []
        for name in names:
            values = [value for value, _ in _scored(chosen, name)]
            means.append(f"{np.mean(values):.6g}" if values else "")
        lines.append(",".join([roi, method, str(len(chosen)), *means]))
    return "\n".join(lines) + "\n"


def summary_markdown(summary: Summary, images: int, protocol: str = "default") -> str:
    """The summary as Markdown: a table of means (medians in brackets), with every metric it holds, then one of
    the means' confidence intervals where it has them."""
    names = list(summary["model"])
    lines = [
        f"Evaluation on {images} image{'' if images == 1 else 's'}; {UNITS[protocol]}; mean (median).",
        "",
        "| method | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for method, metrics in summary.items():
        cells = [
            "–" if math.isnan(m["mean"]) else f"{m['mean']:.4f} ({m['median']:.4f})"  # the identity has no sigma
            for m in (metrics[name] for name in names)
        ]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    infinite = [f"{n} of {method}" for method, metrics in summary.items() for n in names if _infinite(metrics[n])]
    if infinite:  # after a blank line: a line right under a table is one of its rows
        lines += [
            "",
            *(f"{what}: infinite mean, an image equal to its target (RMSE 0); read the median" for what in infinite),
        ]
    model = summary["model"]
    if any("ci_low" in model[name] and not math.isnan(model[name]["ci_low"]) for name in names):
        rois = int(max(model[name].get("rois", 0) for name in names))
        lines += [
            "",
            f"{CONFIDENCE:.0%} confidence interval of each mean, the patches of one ROI taken as one cluster "
            f"({rois} ROI{'' if rois == 1 else 's'}; fewer than two: none; a bound past the range a metric can take "
            "(below 0 for an error, above 1 for a coverage) is set at its edge):",
            "",
            "| method | " + " | ".join(names) + " |",
            "|---|" + "---|" * len(names),
        ]
        for method, metrics in summary.items():
            cells = [_interval_cell(metrics[name]) for name in names]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _infinite(metric: Mapping[str, float]) -> bool:
    """Whether a metric's mean is infinite (a PSNR over images of which one equals its target)."""
    return math.isinf(metric["mean"])


def _interval_cell(metric: Mapping[str, float]) -> str:
    """``[low, high]``, or ``–`` where there is none."""
    low, high = metric.get("ci_low", math.nan), metric.get("ci_high", math.nan)
    return "–" if math.isnan(low) else f"[{low:.4f}, {high:.4f}]"


def finite_or_null(value: Any) -> Any:
    """``value`` with every NaN or infinite float in it (in dicts, lists, tuples) made None: JSON has no NaN, and
    strict readers (jq, JavaScript, most languages' parsers) refuse Python's ``NaN`` token."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite_or_null(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [finite_or_null(item) for item in value]
    return value


def json_text(value: Any) -> str:
    """``value`` as strict JSON (:func:`finite_or_null`), indented, with a final newline."""
    return json.dumps(finite_or_null(value), indent=2, allow_nan=False) + "\n"
