"""A sigma calibration's stored record (``dsen2cr weights calibrate-sigma``; a weights file's
``dsen2cr_sigma_scale``, an ensemble file's ``sigma_scale``): checked as read from JSON, and in words as outputs
name it (``DSEN2CR_SIGMA_CALIBRATION``)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from dsen2cr.calibration import Intervals, intervals_text
from dsen2cr.choices import DEFAULT_CLOUD_THRESHOLD
from dsen2cr.errors import DSen2CRError
from dsen2cr.preprocessing import NUM_S2_BANDS
from dsen2cr.sigma_statistics import REGIONS


def checked_sigma_scale(value: object, path: Path | str) -> dict[str, Any]:
    """A stored sigma calibration (a weights file's, an ensemble file's) as read from JSON, checked: a mapping
    whose ``scale`` holds one finite positive factor per S2 band, whose ``region``, where it has one, is ``all``
    or ``cloudy`` (its ``cloud_threshold`` in (0, 1]), whose ``patches_on_training_ground`` is a count, and whose
    ``intervals``, where it has them, map shares of values (between 0 and 1, as text) to one finite positive
    multiple of sigma per S2 band; a one-line error naming ``path`` otherwise."""
    scale = value.get("scale") if isinstance(value, dict) else None
    if not isinstance(value, dict) or not _band_factors(scale):
        raise DSen2CRError(
            f"{path}: stored sigma scale must hold {NUM_S2_BANDS} finite positive factors (one per S2 band), got "
            f"{str(scale)[:80]}"
        )
    if value.get("region", "all") not in REGIONS:
        raise DSen2CRError(
            f"{path}: stored sigma region must be all or cloudy (the values fitted on), got {str(value['region'])[:40]}"
        )
    threshold = value.get("cloud_threshold", DEFAULT_CLOUD_THRESHOLD)
    if not _positive_number(threshold) or threshold > 1:
        raise DSen2CRError(
            f"{path}: stored sigma cloud threshold must be a number in (0, 1] (the paper mask's), got "
            f"{str(threshold)[:40]}"
        )
    beside = value.get("patches_on_training_ground", 0)
    if not isinstance(beside, int) or isinstance(beside, bool) or beside < 0:
        raise DSen2CRError(
            f"{path}: stored sigma patches on training ground must be a count (0 or more), got {str(beside)[:40]}"
        )
    if "intervals" in value and not _intervals(value["intervals"]):
        raise DSen2CRError(
            f"{path}: stored sigma intervals must map shares of values between 0 and 1 to {NUM_S2_BANDS} finite "
            f"positive multiples of sigma (one per S2 band), got {str(value['intervals'])[:80]}"
        )
    return value


def recorded_intervals(value: dict[str, Any]) -> Intervals:
    """A checked stored calibration's intervals (:func:`checked_sigma_scale`) as (share of the values, each band's
    multiple of sigma) by share; none for a calibration that measured none (written before they were)."""
    intervals = value.get("intervals", {})
    return tuple(sorted((float(level), tuple(float(m) for m in multiples)) for level, multiples in intervals.items()))


def _intervals(intervals: object) -> bool:
    """Whether a JSON value maps shares of values (text of a number between 0 and 1) to multiples per band."""
    if not isinstance(intervals, dict):
        return False
    try:
        levels = [float(level) for level in intervals]
    except ValueError:
        return False
    return all(0 < level < 1 for level in levels) and all(_band_factors(v) for v in intervals.values())


def _band_factors(scale: object) -> bool:
    """Whether a JSON value is a list of one finite positive number per S2 band."""
    return isinstance(scale, list) and len(scale) == NUM_S2_BANDS and all(_positive_number(v) for v in scale)


def _positive_number(value: object) -> bool:
    """Whether a JSON value is a finite positive number (not a bool, not a string)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def calibration_text(value: dict[str, Any], subject: str = "sigma") -> str:
    """``sigma x 0.2 to 0.862 per band, fitted on files.csv, split val (187200 values, gnll); there 68.3 % of values
    within +-1.08 sigma, ...``: a checked stored calibration (:func:`checked_sigma_scale`) in words, of
    ``subject``'s sigma (the intervals where it measured them)."""
    scale = value["scale"]
    data, values, likelihood = (value.get(key, "unknown") for key in ("data", "values", "likelihood"))
    factors = f"{subject} x {min(scale):.3g} to {max(scale):.3g} per band"
    intervals = recorded_intervals(value)
    held = f"; there {intervals_text(intervals)}" if intervals else ""
    fitted = f"{values} values{recorded_region_words(value)}, {likelihood}{training_ground_words(value)}"
    return f"{factors}, {_fitted_on(data)}{fitted}){held}"


def training_ground_words(value: dict[str, Any]) -> str:
    """``; 3 of its 12 patches lie in ROIs training patches come from (…)`` where a checked stored calibration was
    fitted on patches beside training ones (its factors too small elsewhere), else nothing."""
    beside = value.get("patches_on_training_ground", 0)
    if not beside:
        return ""
    return (
        f"; {beside} of its {value.get('patches', 'unknown')} patches lie in ROIs training patches come from (sigma "
        "fitted there may be too small elsewhere)"
    )


def recorded_region_words(value: dict[str, Any]) -> str:
    """:func:`region_words` of a checked stored calibration (a cloudy record without a threshold is 0.2's)."""
    return region_words(value.get("region", "all"), value.get("cloud_threshold", DEFAULT_CLOUD_THRESHOLD))


def region_words(region: str, cloud_threshold: float) -> str:
    """`` under cloud and shadow`` (`` at cloud threshold 0.8`` where not the default): the values fitted on."""
    if region != "cloudy":
        return ""
    other = f" at cloud threshold {cloud_threshold:g}" if cloud_threshold != DEFAULT_CLOUD_THRESHOLD else ""
    return f" under cloud and shadow{other}"


def _fitted_on(data: str) -> str:
    """Where :func:`calibration_text` says the factors were fitted (:func:`calibrated_on` looks for it)."""
    return f"fitted on {data} ("


def calibrated_on(calibration: str | None, data: str) -> bool:
    """Whether a :func:`calibration_text` says its factors were fitted on ``data`` (``files.csv, split val``)."""
    return calibration is not None and _fitted_on(data) in calibration
