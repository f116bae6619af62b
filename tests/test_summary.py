"""An evaluation summary's confidence intervals, each ROI a cluster: checked against scipy's t-interval of
independent values (one patch per ROI) and of the ROIs' means (ROIs of equal size), and end to end on an
evaluation's own per-image CSV."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from dsen2cr.models import create_model
from dsen2cr.summary import clustered_interval, summary_markdown


def _t_interval(values: np.ndarray) -> tuple[float, float]:
    """scipy's 95 % t-interval of the mean of independent ``values``."""
    low, high = stats.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=stats.sem(values))
    return float(low), float(high)


def test_one_patch_per_roi_gives_the_t_interval_of_the_patches() -> None:
    values = np.random.default_rng(0).gamma(2.0, 0.02, size=9)
    got = clustered_interval(values, [f"R/{n}" for n in range(9)])
    assert got == pytest.approx(_t_interval(values), rel=1e-12)


def test_rois_of_equal_size_give_the_t_interval_of_their_means() -> None:
    """Six ROIs of four patches: the interval is that of the six ROI means (five degrees of freedom), wider than
    the 24 patches taken as independent would give."""
    rng = np.random.default_rng(1)
    roi_level = rng.normal(0.03, 0.01, size=6)
    values = np.repeat(roi_level, 4) + rng.normal(0, 0.002, size=24)
    clusters = [f"R/{n // 4}" for n in range(24)]
    got = clustered_interval(values, clusters)
    assert got == pytest.approx(_t_interval(values.reshape(6, 4).mean(axis=1)), rel=1e-12)
    naive = _t_interval(values)
    assert got[1] - got[0] > 2 * (naive[1] - naive[0])


def test_fewer_than_two_rois_give_no_interval() -> None:
    assert all(math.isnan(bound) for bound in clustered_interval(np.array([0.1, 0.2, 0.3]), ["R/1"] * 3))
    assert all(math.isnan(bound) for bound in clustered_interval(np.array([]), []))


def test_an_interval_stays_within_the_range_its_metric_can_take() -> None:
    """Two ROIs give a t-interval with one degree of freedom (t = 12.7): the demo's report said MAE in [-0.0613,
    0.1558] and a 1-sigma coverage in [-1.05, 2.52], values no image can have. A bound past its metric's range is
    set at its edge (the mean lies within it, so the interval still holds it at least as often); the other bound is
    the t-interval's, and metrics without a bound (PSNR, NLL) keep theirs."""
    from dsen2cr.summary import summarise

    values = {"mae": (0.01, 0.09), "coverage_1sigma": (0.3, 0.99), "ssim": (-0.8, 0.9), "nll": (-2.0, 3.0)}
    rows = [
        {
            "method": method,
            "patch_id": f"p{roi}",
            "roi": f"R/{roi}",
            **{name: pair[roi] for name, pair in values.items()},
        }
        for method in ("model", "identity")
        for roi in (0, 1)
    ]
    got = summarise(rows, list(values))["model"]
    for name, pair in values.items():
        low, high = _t_interval(np.array(pair))  # independently: scipy's t-interval of the two ROIs
        edges = {"mae": (0, math.inf), "coverage_1sigma": (0, 1), "ssim": (-1, 1), "nll": (-math.inf, math.inf)}[name]
        assert low < edges[0] or high > edges[1] or name == "nll"  # the raw interval leaves the range here
        expected = (max(low, edges[0]), min(high, edges[1]))
        assert (got[name]["ci_low"], got[name]["ci_high"]) == pytest.approx(expected, rel=1e-12), name
    markdown = summary_markdown(summarise(rows, list(values)), 2)
    assert "| model | [0.0000, 0.5582] | [0.0000, 1.0000] | [-1.0000, 1.0000] |" in markdown
    assert "a bound past the range a metric can take (below 0 for an error, above 1 for a coverage) is set at" in (
        markdown
    )


def test_an_evaluation_reports_each_means_interval(workdir: Path) -> None:
    """Two ROIs of two patches each: summary.json's interval of every metric is scipy's t-interval of the two ROI
    means of the per-image CSV's values (one degree of freedom); summary.csv and summary.md give it too; the
    per-ROI CSV holds each ROI's means of the per-image values."""
    from dsen2cr.evaluate import evaluate

    root = workdir / "tree"
    triplets = [
        workdir.triplet(root, "ROIs1158_spring", roi, patch, size=32, seed=10 * roi + patch)  # type: ignore[attr-defined]
        for roi in (1, 2)
        for patch in (0, 1)
    ]
    out = workdir / "e"
    evaluate(create_model("dsen2cr-small").eval(), triplets, out, write_images=False)
    rows = [r for r in csv.DictReader((out / "metrics_per_image.csv").open()) if r["method"] == "model"]
    summary = json.loads((out / "summary.json").read_text())["summary"]["model"]
    for name in ("mae", "rmse", "psnr", "ssim", "sam"):
        values = np.array([float(r[name]) for r in rows])
        want = _t_interval(values.reshape(2, 2).mean(axis=1))
        assert (summary[name]["ci_low"], summary[name]["ci_high"]) == pytest.approx(want, rel=1e-5), name
        assert summary[name]["rois"] == 2
    table = (out / "summary.csv").read_text().splitlines()
    assert [line.split(",")[:2] for line in table[-2:]] == [["identity", "ci_low"], ["identity", "ci_high"]]
    text = (out / "summary.md").read_text()
    assert "95% confidence interval of each mean, the patches of one ROI taken as one cluster (2 ROIs" in text
    assert f"[{summary['mae']['ci_low']:.4f}, {summary['mae']['ci_high']:.4f}]" in text
    assert summary_markdown({"model": {"mae": {"mean": 0.1, "median": 0.1}}}, 1).count("|---|") == 1
    per_roi = list(csv.DictReader((out / "metrics_per_roi.csv").open()))
    assert [(r["roi"], r["method"], r["patches"]) for r in per_roi] == [
        ("ROIs1158_spring/1", "model", "2"), ("ROIs1158_spring/1", "identity", "2"),
        ("ROIs1158_spring/2", "model", "2"), ("ROIs1158_spring/2", "identity", "2"),
    ]  # fmt: skip
    for row in per_roi[::2]:
        values = [float(r["psnr"]) for r in rows if r["roi"] == row["roi"]]
        assert float(row["psnr"]) == pytest.approx(np.mean(values), rel=1e-5)


def test_holm_adjustment_and_p_values_at_their_edges() -> None:
    """Holm's adjustment worked by hand (0.01 × 3, 0.03 × 2, then no lower than that), NaN left out of the family;
    a difference that is the same everywhere has p 0 (or 1 when it is 0); one ROI gives no p-value."""
    from dsen2cr.summary import clustered_p_value, holm_adjusted

    got = holm_adjusted([0.01, math.nan, 0.04, 0.03])
    assert got[0] == pytest.approx(0.03) and math.isnan(got[1]) and got[2:] == pytest.approx([0.06, 0.06])
    assert holm_adjusted([0.5, 0.9]) == [1.0, 1.0]
    assert clustered_p_value(np.full(6, 0.002), ["a", "a", "b", "b", "c", "c"]) == 0.0
    assert clustered_p_value(np.zeros(4), ["a", "a", "b", "b"]) == 1.0
    assert math.isnan(clustered_p_value(np.array([0.1, 0.2]), ["a", "a"]))


def test_an_image_identical_to_its_target_makes_an_infinite_mean_said_so() -> None:
    """A prediction (or the cloudy input) equal to its target has RMSE 0 and an infinite PSNR: the mean over the
    images is infinite and its interval undefined. numpy's warning leaked to stderr ("invalid value encountered
    in subtract"); now no warning, an empty interval and a line under the table that says why."""
    import warnings

    from dsen2cr.summary import summarise

    rows = [
        {"patch_id": f"p{i}", "roi": f"r{i % 3}", "method": method, "psnr": psnr}
        for i, psnr in enumerate([20.0, 22.0, math.inf, 25.0, 21.0, 23.0])
        for method in ("model", "identity")
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        summary = summarise(rows, ["psnr"])
    psnr = summary["model"]["psnr"]
    assert psnr["mean"] == math.inf and psnr["median"] == 22.5
    assert math.isnan(psnr["ci_low"]) and math.isnan(psnr["ci_high"])
    text = summary_markdown(summary, 6)
    assert "| model | inf (22.5000) |" in text
    assert "psnr of model: infinite mean, an image equal to its target (RMSE 0); read the median" in text
