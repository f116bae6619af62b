"""How far to trust the predicted uncertainty (docs/design.md §6): per-image calibration metrics of a model that
predicts a standard deviation per band and pixel, and the binned statistics of a reliability diagram.

Errors and sigma are compared as reflectance (DN / 10000; the prediction and the target clipped to [0, 1] as
for the image metrics), per pixel value (band and pixel), in float64:

- ``nll``: the mean Gaussian negative log-likelihood of the target, 0.5 (log 2 pi sigma^2 + e^2 / sigma^2), in
  nats per value in reflectance units (lower is better; comparable between models, not to other units);
- ``coverage_1sigma``, ``coverage_2sigma``: the share of values with |e| <= sigma (2 sigma); 0.683 and 0.954
  for calibrated sigma of Gaussian errors, 0.757 and 0.941 of Laplace errors (``lnll``'s assumption: more of
  the mass near the mean);
- ``uce``, ``auce``: the values are put into 20 equal-width bins of sigma (from the image's smallest to its
  largest); in each bin the RMS error is compared with the RMS sigma (absolute per-value errors, not signed
  means that cancel); UCE weights the bins' gaps by their share of values, AUCE is their plain mean over the
  bins that hold values (Ebel et al. 2023);
- ``mae_certain10/50/90``: the MAE of the 10 / 50 / 90 % of values with the smallest sigma (a sparsification
  curve: for sigma that ranks errors, it grows with the share).
- pooled over every image, the sparsification curve and its AUSE (:func:`sparsification`);
- pooled over every image, the intervals: the multiple of sigma within which 68.3, 90, 95 and 99 % of the values
  lay (split conformal: the ceil(p (n + 1))-th smallest |e| / sigma of n values), and the share that the
  intervals a calibration stated held (:func:`interval_report`);
- ``rms_sigma_aleatoric``, ``rms_sigma_epistemic`` (an ensemble of which a member predicts a variance): the RMS
  over the values of the two parts of sigma, the noise the members expect and their disagreement.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

UNCERTAINTY_METRIC_NAMES: tuple[str, ...] = (
    "nll",
    "coverage_1sigma",
    "coverage_2sigma",
    "uce",
    "auce",
    "mae_certain10",
    "mae_certain50",
    "mae_certain90",
    "coverage_1sigma_cloudy",
    "coverage_1sigma_clear",
)
#: An ensemble's two parts of sigma, per image (:func:`sigma_part_metrics`).
SIGMA_PART_NAMES: tuple[str, ...] = ("rms_sigma_aleatoric", "rms_sigma_epistemic")
#: The shares of values removed, most uncertain first, along the sparsification (discard) curve.
DISCARD_SHARES: tuple[float, ...] = tuple(i / 20 for i in range(20))
#: Bins of sigma for UCE, AUCE and the reliability diagram.
CALIBRATION_BINS = 20
#: The shares of the most certain values whose MAE is reported.
CERTAIN_SHARES = (10, 50, 90)
#: The shares of values whose intervals (multiples of sigma that hold them) a calibration measures and records,
#: and an evaluation measures again.
INTERVAL_LEVELS = (0.683, 0.9, 0.95, 0.99)
#: Intervals as a calibration states them: (share of the values, each band's multiple of its sigma), by share.
Intervals = tuple[tuple[float, tuple[float, ...]], ...]


def reflectance_errors(
    pred_dn: np.ndarray, target_dn: np.ndarray, sigma_dn: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """|prediction - target| and sigma as reflectance, flat float64 (prediction and target clipped to [0, 1])."""
    if not pred_dn.shape == target_dn.shape == sigma_dn.shape:
        raise ValueError(f"shapes differ: prediction {pred_dn.shape}, target {target_dn.shape}, sigma {sigma_dn.shape}")
    pred, target = (np.clip(np.asarray(a, np.float64) / 10000.0, 0.0, 1.0).ravel() for a in (pred_dn, target_dn))
    return np.abs(pred - target), np.asarray(sigma_dn, np.float64).ravel() / 10000.0


def uncertainty_metrics(
    pred_dn: np.ndarray, target_dn: np.ndarray, sigma_dn: np.ndarray, mask: np.ndarray | None = None
) -> dict[str, float]:
    """The calibration metrics of one image (module docstring): prediction, target and sigma in DN, same shape
    (bands first); with the image's cloud/shadow ``mask`` (H, W; non-zero = cloud or shadow) also the +-1 sigma
    coverage of the values under cloud and shadow and of those of clear pixels (NaN for an empty region), the
    regions of ``mae_cloudy`` and ``mae_clear``."""
    return uncertainty_metrics_of(*reflectance_errors(pred_dn, target_dn, sigma_dn), mask)


def uncertainty_metrics_of(error: np.ndarray, sigma: np.ndarray, mask: np.ndarray | None = None) -> dict[str, float]:
    """:func:`uncertainty_metrics` of an image's flat |error| and sigma as :func:`reflectance_errors` gives them
    (band after band; ``mask`` (H, W) of one band's pixels)."""
    within = error <= sigma
    nll = 0.5 * (np.log(2 * math.pi * sigma**2) + (error / sigma) ** 2)
    values = {
        "nll": float(nll.mean()),
        "coverage_1sigma": float(within.mean()),
        "coverage_2sigma": float((error <= 2 * sigma).mean()),
    }
    values["uce"], values["auce"] = calibration_errors(error, sigma)
    order = np.argsort(sigma, kind="stable")
    for share in CERTAIN_SHARES:
        count = max(1, round(share / 100 * error.size))
        values[f"mae_certain{share}"] = float(error[order[:count]].mean())
    if mask is not None:
        cloud = np.asarray(mask).ravel() != 0
        by_pixel = within.reshape(-1, cloud.size)  # bands x pixels
        for name, region in (("coverage_1sigma_cloudy", cloud), ("coverage_1sigma_clear", ~cloud)):
            values[name] = float(by_pixel[:, region].mean()) if region.any() else math.nan
    return values


def sigma_part_metrics(aleatoric_dn: np.ndarray, epistemic_dn: np.ndarray) -> dict[str, float]:
    """An ensemble's aleatoric and epistemic sigma (DN) over one image: the RMS of each over the values, as
    reflectance (float64); their squares sum to the mean of the total variance."""
    parts = (aleatoric_dn, epistemic_dn)
    return {
        name: math.sqrt(float(np.mean(np.square(np.asarray(sigma, np.float64))))) / 10000.0
        for name, sigma in zip(SIGMA_PART_NAMES, parts, strict=True)
    }


def sparsification(error: np.ndarray, sigma: np.ndarray) -> dict[str, Any]:
    """The sparsification (discard) curve of pooled values: at each share of :data:`DISCARD_SHARES`, the MAE of
    the values left once that share with the largest sigma is removed (``mae_by_sigma``), and the oracle's, which
    removes the largest errors (``mae_oracle``, the best any sigma could do); ``ause``, the mean gap between the
    two (0: sigma ranks the errors exactly; Ilg et al. 2018). At least one value is always kept."""
    by_sigma = np.cumsum(error[np.argsort(sigma, kind="stable")], dtype=np.float64)  # most certain first
    by_error = np.cumsum(np.sort(error), dtype=np.float64)
    kept = [max(1, round((1 - share) * error.size)) for share in DISCARD_SHARES]
    curve = [float(by_sigma[k - 1] / k) for k in kept]
    oracle = [float(by_error[k - 1] / k) for k in kept]
    ause = float(np.mean(np.subtract(curve, oracle)))
    return {"removed": list(DISCARD_SHARES), "mae_by_sigma": curve, "mae_oracle": oracle, "ause": ause}


def reliability_bins(
    error: np.ndarray, sigma: np.ndarray, edges: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(RMS sigma, RMS error, count) of each of :data:`CALIBRATION_BINS` equal-width bins of sigma (``edges``:
    their bounds, by default from the smallest to the largest sigma); NaN for an empty bin."""
    if edges is None:
        edges = np.linspace(sigma.min(), sigma.max(), CALIBRATION_BINS + 1)
    index = np.clip(np.searchsorted(edges, sigma, side="right") - 1, 0, len(edges) - 2)
    counts = np.bincount(index, minlength=len(edges) - 1).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        rms_sigma = np.sqrt(np.bincount(index, sigma**2, minlength=len(edges) - 1) / counts)
        rms_error = np.sqrt(np.bincount(index, error**2, minlength=len(edges) - 1) / counts)
    return rms_sigma, rms_error, counts


def calibration_errors(error: np.ndarray, sigma: np.ndarray) -> tuple[float, float]:
    """(UCE, AUCE) of absolute errors and sigma (flat arrays, one value each)."""
    return errors_of_bins(*reliability_bins(error, sigma))


def errors_of_bins(rms_sigma: np.ndarray, rms_error: np.ndarray, counts: np.ndarray) -> tuple[float, float]:
    """(UCE, AUCE) of :func:`reliability_bins`' statistics."""
    filled = counts > 0
    gaps = np.abs(rms_sigma[filled] - rms_error[filled])
    return float((counts[filled] / counts.sum() * gaps).sum()), float(gaps.mean())


def spearman(error: np.ndarray, sigma: np.ndarray) -> float:
    """Spearman's rank correlation of |error| and sigma (does sigma rank the errors?)."""
    from scipy.stats import spearmanr

    return float(spearmanr(error, sigma).statistic)


#: The key of a model's per-image row that holds its values' coverage per band (:func:`band_coverage_counts`):
#: recorded with the rows (so a resumed evaluation has them), left out of the CSVs.
BAND_COVERAGE_KEY = "band_coverage_counts"


def band_coverage_counts(error: np.ndarray, sigma: np.ndarray, bands: int) -> list[list[int]]:
    """Per band, [values, values with |error| <= sigma, with |error| <= 2 sigma], of one image's flat |error| and
    sigma (:func:`reflectance_errors`: band after band)."""
    error, sigma = error.reshape(bands, -1), sigma.reshape(bands, -1)
    within = [(error <= k * sigma).sum(axis=1) for k in (1, 2)]
    return [[int(error.shape[1]), int(one), int(two)] for one, two in zip(*within, strict=True)]


def per_band_coverage(rows: list[dict[str, Any]], band_names: Sequence[str]) -> dict[str, dict[str, float]] | None:
    """The +-1 and +-2 sigma coverage of every value of each band over the model rows that hold
    :data:`BAND_COVERAGE_KEY` (exact counts, not the pooled sample); None where a row lacks them (a stopped
    evaluation of an earlier version, resumed)."""
    counts = [row.get(BAND_COVERAGE_KEY) for row in rows if row["method"] == "model"]
    if not counts or any(c is None or len(c) != len(band_names) for c in counts):
        return None
    total = np.sum(np.array(counts, dtype=np.int64), axis=0)
    return {
        band: {"values": int(n), "coverage_1sigma": float(one / n), "coverage_2sigma": float(two / n)}
        for band, (n, one, two) in zip(band_names, total.tolist(), strict=True)
    }


def pooled_sentence(report: dict[str, Any], images: int) -> str:
    """A Markdown sentence of the calibration pooled over every image (``calibration.json``'s numbers, which
    the reliability diagram shows), told apart from a summary table's per-image ``uce`` and ``auce``."""
    where = "the image" if images == 1 else f"all {images} images"
    pooled = (
        f"Calibration pooled over {where} ({report['values']:,} sampled values; `calibration.json`, "
        f"`calibration.png`): +-1 sigma coverage {report['coverage_1sigma']:.3f}, +-2 sigma "
        f"{report['coverage_2sigma']:.3f}, UCE {report['uce']:.4f}, AUCE {report['auce']:.4f}, Spearman(sigma, "
        f"|error|) {report['spearman_sigma_abs_error']:.2f}, AUSE {report['ause']:.4f} (the MAE left as the most "
        "uncertain values are removed, against removing the largest errors: 0 when sigma ranks them exactly). The "
        "table's uce and auce are per image (all its values, binned on its own sigma range), then averaged; pooled, "
        "a sample of the values shares one set of bins, so the two differ.\n"
    )
    return pooled + _per_band_sentence(report) + _interval_sentence(report) + _flattered_sentence(report)


def _interval_sentence(report: dict[str, Any]) -> str:
    """The intervals of the sampled values, and the share the weights' stated intervals held, where the report
    has them (:func:`interval_report`, :func:`stated_intervals_held`)."""
    here = [(float(level), [multiple]) for level, multiple in report.get("intervals", {}).items()]
    if not here:
        return ""
    stated = report.get("stated_intervals") or {}
    held = ", ".join(f"{100 * float(level):g} % held {_held_text(values)}" for level, values in stated.items())
    said = f" The intervals its sigma's calibration stated, over every value here: {held}." if held else ""
    if stated and (warning := stated_interval_warning(stated)):  # as evaluate warns: the report is read without it
        said += f" {warning[0].upper()}{warning[1:]}."
    pooled = intervals_text(here, by_band=False)
    return f"\nIntervals of the sampled values, one multiple for all bands: {pooled}.{said}\n"


def _flattered_sentence(report: dict[str, Any]) -> str:
    """Where the weights' sigma was calibrated on the patches evaluated: the numbers above flatter it."""
    data = report.get("calibrated_on_these_patches")
    if not data:
        return ""
    return (
        f"\nIts sigma was calibrated on these patches ({data}): the coverage, UCE and intervals above flatter it; "
        "evaluate it on patches it was not calibrated on.\n"
    )


def _held_text(values: dict[str, Any]) -> str:
    """``0.713 (bands 0.631 to 0.748; under cloud and shadow 0.745, clear 0.661)``: what a stated interval held."""
    bands = [band["held"] for band in values["per_band"].values()]
    regions = [
        f"{name} {values[key]:.3f}"
        for name, key in (("under cloud and shadow", "held_cloudy"), ("clear", "held_clear"))
        if values.get(key) is not None
    ]
    return f"{values['held']:.3f} (bands {min(bands):.3f} to {max(bands):.3f}; {', '.join(regions)})"


def _per_band_sentence(report: dict[str, Any]) -> str:
    """The +-1 sigma coverage of each band over every value (``per_band``), where the report has it."""
    bands = report.get("per_band")
    if not bands:
        return ""
    each = ", ".join(f"{band} {values['coverage_1sigma']:.3f}" for band, values in bands.items())
    return f"\n+-1 sigma coverage per band, over every value: {each}.\n"


def interval_report(error: np.ndarray, sigma: np.ndarray) -> dict[str, dict[str, float]]:
    """The intervals of pooled |error| and sigma (``intervals``): for each share p of :data:`INTERVAL_LEVELS`, the
    multiple of sigma within which that share of the values lay (the ceil(p (n + 1))-th smallest |error| / sigma
    of the n values; a share that needs more values than there are, or an infinite multiple, is left out)."""
    with np.errstate(divide="ignore", invalid="ignore"):  # sigma 0 (members that agree exactly): exact or beyond
        scores = np.sort(np.where(error > 0, error / sigma, 0.0))
    here = {}
    for level in INTERVAL_LEVELS:
        rank = math.ceil(level * (scores.size + 1))
        if rank <= scores.size and math.isfinite(scores[rank - 1]):
            here[f"{level:g}"] = float(scores[rank - 1])
    return {"intervals": here}


#: The key of a model's per-image row that holds, for each interval its weights' calibration stated, each band's
#: values within it (:func:`stated_interval_counts`): recorded with the row, left out of the CSVs.
STATED_INTERVAL_KEY = "stated_interval_counts"


def stated_interval_counts(
    error: np.ndarray, sigma: np.ndarray, stated: Intervals, bands: int, mask: np.ndarray
) -> dict[str, Any]:
    """For each stated interval (share, each band's multiple of sigma), each band's values of one image within it
    (``within``), and of those under cloud and shadow (``cloudy_within``; ``mask`` (H, W), non-zero), with the
    image's pixels there (``cloudy_pixels``): flat |error| and sigma band after band, as
    :func:`reflectance_errors` gives them."""
    error, sigma = error.reshape(bands, -1), sigma.reshape(bands, -1)
    cloud = np.asarray(mask).ravel() != 0
    inside = [error <= np.asarray(multiples, np.float64)[:, None] * sigma for _, multiples in stated]
    return {
        "within": [held.sum(axis=1).tolist() for held in inside],
        "cloudy_within": [held[:, cloud].sum(axis=1).tolist() for held in inside],
        "cloudy_pixels": int(cloud.sum()),
    }


def stated_intervals_held(
    rows: list[dict[str, Any]], stated: Intervals, band_names: Sequence[str]
) -> dict[str, dict[str, Any]] | None:
    """The share of every value that each stated interval held over the model rows (``held``; each band's multiple
    and share, ``per_band``; the share under cloud and shadow and over clear pixels, ``held_cloudy`` and
    ``held_clear``, None for a region with no pixel): exact counts, :data:`STATED_INTERVAL_KEY` against the rows'
    values per band (:data:`BAND_COVERAGE_KEY`). None without stated intervals, or where a row lacks the counts."""
    models = [row for row in rows if row["method"] == "model"]
    counts: list[dict[str, Any]] = [row.get(STATED_INTERVAL_KEY) or {} for row in models]
    if not stated or not models or any(len(c.get("within", ())) != len(stated) for c in counts):
        return None
    held = np.array([c["within"] for c in counts], np.int64).sum(axis=0)  # (intervals, bands)
    cloudy_held = np.array([c["cloudy_within"] for c in counts], np.int64).sum(axis=(0, 2))  # (intervals,)
    values = np.sum(np.array([[n for n, *_ in row[BAND_COVERAGE_KEY]] for row in models], np.int64), axis=0)
    cloudy_values = sum(c["cloudy_pixels"] for c in counts) * len(band_names)
    clear_values = int(values.sum()) - cloudy_values
    report = {}
    for (level, multiples), within, cloudy in zip(stated, held, cloudy_held, strict=True):
        per_band = {
            band: {"sigma_multiple": float(m), "held": float(h / n)}
            for band, m, h, n in zip(band_names, multiples, within, values, strict=True)
        }
        report[f"{level:g}"] = {
            "held": float(within.sum() / values.sum()),
            "held_cloudy": float(cloudy / cloudy_values) if cloudy_values else None,
            "held_clear": float((within.sum() - cloudy) / clear_values) if clear_values else None,
            "per_band": per_band,
        }
    return report


#: How far a stated interval's share of the values evaluated may stray from its own before evaluate warns.
STATED_INTERVAL_TOLERANCE = 0.05


def stated_interval_warning(held: dict[str, dict[str, Any]]) -> str | None:
    """What to tell a user whose stated intervals (:func:`stated_intervals_held`) held more than
    :data:`STATED_INTERVAL_TOLERANCE` less or more than their share of the values evaluated, or of those under
    cloud and shadow, where --keep-clear uses sigma; None when they held their shares."""
    said, gaps = [], []
    for level, values in held.items():
        shares = [values["held"], values.get("held_cloudy")]
        strays = [share - float(level) for share in shares if share is not None]
        if all(abs(gap) <= STATED_INTERVAL_TOLERANCE for gap in strays):
            continue
        gaps += strays
        cloudy = f" (under cloud and shadow {shares[1]:.3f})" if shares[1] is not None else ""
        said.append(f"{100 * float(level):g} % held {shares[0]:.3f}{cloudy}")
    if not said:
        return None
    what = "too small" if max(gaps) < 0 else "too large" if min(gaps) > 0 else "not shaped like its errors"
    return (
        f"the intervals its sigma's calibration stated do not hold their shares here ({', '.join(said)}): its sigma "
        f"is {what} on these patches; calibrate it on patches like them (weights calibrate-sigma; --region cloudy "
        "for --keep-clear)"
    )


def intervals_text(intervals: Sequence[tuple[float, Sequence[float]]], *, by_band: bool = True) -> str:
    """``68.3 % of values within +-0.62 to 1.30 sigma, 90 % within +-1.40 to 1.80 sigma, ... (each band its
    multiple)``: intervals as (share, each band's multiple of sigma), the multiples' range, each rounded up to two
    decimals (so the interval said holds at least its share); ``by_band`` False: one multiple for all bands."""
    said = []
    for level, multiples in intervals:
        low, high = _rounded_up(min(multiples)), _rounded_up(max(multiples))
        said.append(f"{100 * level:g} % within +-{low if low == high else f'{low} to {high}'} sigma")
    return ", ".join(said).replace(" % within", " % of values within", 1) + " (each band its multiple)" * (
        by_band and bool(said)
    )


def _rounded_up(multiple: float) -> str:
    """A multiple of sigma as an interval says it: rounded up to two decimals (``1.0734`` -> ``1.08``)."""
    return f"{math.ceil(multiple * 100 - 1e-9) / 100:.2f}"
