"""Two evaluation reports of one test set compared patch by patch (``dsen2cr compare A B``): for every metric both
hold, the means and the mean of the per-patch difference B − A with its confidence interval, the ROIs as clusters
(:func:`dsen2cr.summary.clustered_interval`), its p-value, and which is better after Holm's adjustment over the
metrics. Both models saw the same patches, so their difference is known far better than either mean: this says
whether, say, a fine-tuned model beats the published one on your region."""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dsen2cr.errors import DSen2CRError
from dsen2cr.formats import shortened_sha256
from dsen2cr.summary import CONFIDENCE, clustered_interval, clustered_p_value, holm_adjusted

log = logging.getLogger(__name__)

#: Per-image columns that are no metric.
_NOT_METRICS = ("patch_id", "roi", "method", "cloud_fraction")
#: What the summaries of two comparable reports must share.
_SAME = ("protocol", "window", "units")
#: What their region metrics' cloud/shadow map is made with (warned of where it differs), for messages.
_SAME_MAP = {"DSEN2CR_MASK": "--mask", "DSEN2CR_CLOUD_THRESHOLD": "--cloud-threshold"}


@dataclass(frozen=True)
class Report:
    """An evaluation report as :func:`read_report` finds it: the model's values by patch and metric, each patch's
    ROI, and its ``summary.json`` (protocol, window, units, provenance)."""

    folder: Path
    values: dict[str, dict[str, float]]
    roi_of: dict[str, str]
    summary: dict[str, Any]

    def made_by(self) -> str:
        """The weights and their SHA-256 (each file's first 12 digits: an ensemble's members'), in words."""
        provenance = self.summary.get("provenance", {})
        digests = shortened_sha256(str(provenance.get("DSEN2CR_WEIGHTS_SHA256", "unknown")))
        return f"{provenance.get('DSEN2CR_WEIGHTS', 'unknown weights')} (SHA-256 {digests})"


@dataclass(frozen=True)
class MetricComparison:
    """One metric of two reports over the patches where both hold it: their means, the mean of B − A and its
    confidence interval, the p-value of B − A being 0 on its own (``p_value``) and Holm-adjusted over the metrics
    that have a better side (``p_holm``; NaN for the others), and which is better (``A``, ``B``, or ``""`` when
    ``p_holm`` is not below 1 − :data:`~dsen2cr.summary.CONFIDENCE` or the metric has no better side)."""

    metric: str
    patches: int
    rois: int
    mean_a: float
    mean_b: float
    difference: float
    ci_low: float
    ci_high: float
    p_value: float
    p_holm: float
    better: str


def read_report(folder: str | Path) -> Report:
    """The model rows of an evaluation report folder (``metrics_per_image.csv``, ``summary.json``); refused in one
    line naming the folder when it is none or predates the ROI column."""
    folder = Path(folder)
    table, summary_file = folder / "metrics_per_image.csv", folder / "summary.json"
    if not table.is_file() or not summary_file.is_file():
        raise DSen2CRError(f"{folder}: not an evaluation report (no metrics_per_image.csv and summary.json there)")
    try:
        summary = json.loads(summary_file.read_text(encoding="utf-8"))
        with table.open(newline="", encoding="utf-8") as file:
            rows = [row for row in csv.DictReader(file) if row.get("method") == "model"]
    except (json.JSONDecodeError, UnicodeDecodeError, csv.Error) as error:
        raise DSen2CRError(f"{folder}: an unreadable evaluation report ({error})") from None
    if rows and "roi" not in rows[0]:
        raise DSen2CRError(f"{table}: has no roi column (a report of an earlier version): evaluate again")
    values = {
        row["patch_id"]: {name: _number(text) for name, text in row.items() if name not in _NOT_METRICS} for row in rows
    }
    return Report(folder, values, {row["patch_id"]: row["roi"] for row in rows}, summary)


def _number(text: str | None) -> float:
    """A CSV field as a number (NaN for an empty one: a region the patch lacks)."""
    try:
        return float(text) if text else math.nan
    except ValueError:
        return math.nan


def higher_is_better(metric: str) -> bool | None:
    """Whether a larger value of ``metric`` is better: PSNR and SSIM (of any region or protocol) yes; calibration's
    coverages and an ensemble's sigma parts have no better side (None); every other metric, an error, no."""
    if metric.startswith(("coverage", "rms_sigma")):
        return None
    return "psnr" in metric or "ssim" in metric


def compare_reports(a: Report, b: Report, judged: Sequence[str] | None = None) -> list[MetricComparison]:
    """Every metric both reports hold, compared over their common patches (which must be all of each's); which
    model is better is decided at a family-wise level of 1 − :data:`~dsen2cr.summary.CONFIDENCE` over the metrics
    judged (Holm): the ``judged`` ones (``--metric``, chosen before comparing), else every one with a better side,
    so that of many metrics none is called better by chance alone."""
    _check_comparable(a, b)
    patches = sorted(a.values)
    metrics = [name for name in a.values[patches[0]] if name in b.values[patches[0]]]
    for name in judged or ():
        if name not in metrics:
            raise DSen2CRError(f"--metric: {name!r} is not a metric both reports hold ({', '.join(metrics)})")
        if higher_is_better(name) is None:
            raise DSen2CRError(f"--metric: {name} has no better side (a coverage of sigma): it cannot be judged")
    unadjusted = []
    for metric in metrics:
        pairs = [(a.values[p][metric], b.values[p][metric], a.roi_of[p]) for p in patches]
        pairs = [(x, y, roi) for x, y, roi in pairs if math.isfinite(x) and math.isfinite(y)]
        if not pairs:
            continue
        first = np.array([x for x, _, _ in pairs])
        second = np.array([y for _, y, _ in pairs])
        rois = [roi for _, _, roi in pairs]
        low, high = clustered_interval(second - first, rois)
        p_value = clustered_p_value(second - first, rois)
        means = float(first.mean()), float(second.mean()), float((second - first).mean())
        unadjusted.append(
            MetricComparison(metric, len(pairs), len(set(rois)), *means, low, high, p_value, math.nan, "")
        )
    chosen = set(judged) if judged else {c.metric for c in unadjusted if higher_is_better(c.metric) is not None}
    family = [c.p_value if c.metric in chosen else math.nan for c in unadjusted]
    comparisons = []
    for comparison, p_holm in zip(unadjusted, holm_adjusted(family), strict=True):
        better = ""
        if p_holm < 1 - CONFIDENCE:
            better = "B" if (comparison.difference > 0) == higher_is_better(comparison.metric) else "A"
        comparisons.append(dataclasses.replace(comparison, p_holm=p_holm, better=better))
    return comparisons


def _check_comparable(a: Report, b: Report) -> None:
    """The two reports score one set of patches in one protocol, window and units; a different cloud/shadow map
    (the region metrics') is warned of."""
    if a.folder.resolve() == b.folder.resolve():
        raise DSen2CRError(f"{b.folder}: the same report as {a.folder}; compare two evaluations")
    for key in _SAME:
        if a.summary.get(key) != b.summary.get(key):
            raise DSen2CRError(
                f"{b.folder}: scored with {key} {b.summary.get(key)!r}, {a.folder} with {a.summary.get(key)!r}: "
                "evaluate both alike"
            )
    only_a, only_b = sorted(set(a.values) - set(b.values)), sorted(set(b.values) - set(a.values))
    if only_a or only_b or not a.values:
        example = (only_a or only_b or ["none"])[0]
        raise DSen2CRError(
            f"{b.folder}: holds {len(b.values)} patches, {a.folder} {len(a.values)}; {len(only_a)} only in the "
            f"first and {len(only_b)} only in the second (e.g. {example}): compare evaluations of one test set"
        )
    if moved := [patch for patch in a.values if a.roi_of[patch] != b.roi_of[patch]]:
        raise DSen2CRError(f"{b.folder}: patch {moved[0]} lies in ROI {b.roi_of[moved[0]]}, in {a.folder} in another")
    if differ := arithmetic_difference(a, b):
        log.warning("%s", differ)
    provenance_a, provenance_b = a.summary.get("provenance", {}), b.summary.get("provenance", {})
    for key, what in _SAME_MAP.items():
        if provenance_a.get(key) != provenance_b.get(key):
            log.warning(
                "%s: its region metrics (*_cloudy, *_clear) use %s %s, %s's %s: they score other pixels",
                b.folder,
                what,
                provenance_b.get(key),
                a.folder,
                provenance_a.get(key),
            )


def computed_in(report: Report) -> str:
    """What computed a report's predictions: its precision and, in brackets, its arithmetic (``bf16 (bf16
    convolutions by oneDNN, …)``); the precision alone in a report of a version that recorded no arithmetic."""
    provenance = report.summary.get("provenance", {})
    arithmetic = provenance.get("DSEN2CR_ARITHMETIC")
    precision = provenance.get("DSEN2CR_PRECISION", "unknown")
    return precision if arithmetic is None else f"{precision} ({arithmetic})"


def arithmetic_difference(a: Report, b: Report) -> str | None:
    """The sentence saying that A's and B's models were computed in other arithmetic (by their arithmetic where
    both reports record it, else by their precision), part of B − A; None where alike or unknown."""
    provenance_a, provenance_b = a.summary.get("provenance", {}), b.summary.get("provenance", {})
    both = "DSEN2CR_ARITHMETIC" in provenance_a and "DSEN2CR_ARITHMETIC" in provenance_b
    key = "DSEN2CR_ARITHMETIC" if both else "DSEN2CR_PRECISION"
    if key not in provenance_a or key not in provenance_b or provenance_a[key] == provenance_b[key]:
        return None
    return (
        f"{b.folder}: its model was computed in {computed_in(b)}, {a.folder}'s in {computed_in(a)}: part of B − A "
        "is the arithmetic's, not the models' (evaluate both in one precision, IEEE fp32 by default)"
    )


def report_warnings(a: Report, b: Report) -> dict[str, list[str]]:
    """What each evaluation warned of while it ran (its ``summary.json``'s ``warnings``; none in a report of a
    version before the list), as ``{"a": [...], "b": [...]}``."""
    return {name: list(report.summary.get("warnings") or []) for name, report in (("a", a), ("b", b))}


def _warnings_lines(a: Report, b: Report) -> list[str]:
    """A line for each report whose evaluation warned: how many and the first."""
    lines = []
    for name, said in report_warnings(a, b).items():
        if said:
            things = "thing" if len(said) == 1 else "things"
            lines.append(
                f"{name.upper()}'s evaluation warned of {len(said)} {things} (its summary.md lists them), first: "
                f"{said[0]}"
            )
    return ["", *lines] if lines else []


def comparison_markdown(a: Report, b: Report, comparisons: list[MetricComparison]) -> str:
    """The comparison as Markdown: what A and B are, then a row per metric, and the metrics compared over fewer
    patches than all (a patch without a finite value in either report is left out of that metric's)."""
    patches = len(a.values)
    rois = len({a.roi_of[patch] for patch in a.values})
    family = sum(not math.isnan(c.p_holm) for c in comparisons)
    lines = [
        f"A: {a.folder} ({a.made_by()}); B: {b.folder} ({b.made_by()}).",
        f"Patch by patch on {patches} patches of {rois} ROI{'' if rois == 1 else 's'}; {a.summary.get('units')}; "
        f"{CONFIDENCE:.0%} confidence interval of the mean difference, the patches of one ROI one cluster.",
        *_warnings_lines(a, b),
        *(["", differ] if (differ := arithmetic_difference(a, b)) else []),
        "",
        (
            f"p: of B − A = 0, on its own (Holm-adjusted over the {family} metrics judged); better: where "
            f"the adjusted p is below {1 - CONFIDENCE:.2g} (the chance that any metric is called better where the "
            f"models are alike is at most {1 - CONFIDENCE:.0%})."
            if family
            else "No interval, p-value or better side: they need two ROIs or more (the ROIs are the independent draws)."
        ),
        "",
        "| metric | A | B | B − A | interval of B − A | p (Holm) | better |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in comparisons:
        interval = "–" if math.isnan(c.ci_low) else f"[{c.ci_low:+.4f}, {c.ci_high:+.4f}]"
        p_values = (
            "–"
            if math.isnan(c.p_value)
            else f"{c.p_value:.3g}" + ("" if math.isnan(c.p_holm) else f" ({c.p_holm:.3g})")
        )
        better = c.better or ("–" if math.isnan(c.p_holm) else "not shown")
        means = f"{c.mean_a:.4f} | {c.mean_b:.4f} | {c.difference:+.4f}"
        lines.append(f"| {c.metric} | {means} | {interval} | {p_values} | {better} |")
    fewer = [f"{c.metric}: {c.patches} of the {patches} patches" for c in comparisons if c.patches < patches]
    if fewer:  # after a blank line: a line right under a table is one of its rows
        reason = "the others have no finite value in one report or both: an empty region, a perfect image's PSNR"
        lines += ["", f"{', '.join(fewer)} ({reason})."]
    return "\n".join(lines) + "\n"
