"""``dsen2cr compare A B``: two evaluation reports of one test set, patch by patch. End to end on two real
evaluations (the numbers checked against the reports' own per-image CSVs with scipy), and the reports it refuses
(a table run through the console entry point)."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from dsen2cr.cli import main
from dsen2cr.errors import DSen2CRError
from dsen2cr.models import create_model


def test_two_evaluations_compared_patch_by_patch(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    """Two models on two ROIs of two patches: each metric's means are the reports' own, its B − A interval is
    scipy's t-interval of the two ROI means of the per-patch differences (read from the two CSVs), and the side
    called better is the one the interval points to (a lower MAE, a higher PSNR)."""
    from dsen2cr.evaluate import evaluate

    root = workdir / "tree"
    triplets = [
        workdir.triplet(root, "ROIs1158_spring", roi, patch, size=32, seed=10 * roi + patch)  # type: ignore[attr-defined]
        for roi in (1, 2)
        for patch in (0, 1)
    ]
    for name, seed in (("a", 0), ("b", 1)):
        torch.manual_seed(seed)
        evaluate(create_model("dsen2cr-small").eval(), triplets, workdir / name, write_images=False)
    capsys.readouterr()  # (what evaluate logged)
    assert main(["compare", str(workdir / "a"), str(workdir / "b"), "--json"]) == 0
    said = json.loads(capsys.readouterr().out)
    assert said["warnings"] == {"a": [], "b": []}  # what each evaluation warned of: nothing here
    got = {row["metric"]: row for row in said["metrics"]}

    def model_rows(name: str) -> dict[str, dict[str, str]]:
        rows = csv.DictReader((workdir / name / "metrics_per_image.csv").open())
        return {row["patch_id"]: row for row in rows if row["method"] == "model"}

    a, b = model_rows("a"), model_rows("b")
    for metric in ("mae", "rmse", "psnr", "ssim", "sam"):
        patches = sorted(a)
        difference = np.array([float(b[p][metric]) - float(a[p][metric]) for p in patches])
        roi_means = [
            difference[[a[p]["roi"] == roi for p in patches]].mean() for roi in sorted({a[p]["roi"] for p in a})
        ]
        low, high = stats.t.interval(0.95, 1, loc=np.mean(roi_means), scale=stats.sem(roi_means))
        row = got[metric]
        assert (row["ci_low"], row["ci_high"]) == pytest.approx((low, high), rel=1e-5), metric
        assert row["mean_a"] == pytest.approx(np.mean([float(a[p][metric]) for p in patches]), rel=1e-6)
        assert row["difference"] == pytest.approx(difference.mean(), rel=1e-6, abs=1e-9)
        assert (row["patches"], row["rois"]) == (4, 2)
        assert row["p_value"] == pytest.approx(stats.ttest_1samp(roi_means, 0).pvalue, rel=1e-5), metric
        assert (row["p_value"] < 0.05) == (not low <= 0 <= high), metric  # the test the interval inverts
    family = {name: row["p_value"] for name, row in got.items() if not name.startswith(("coverage", "rms_sigma"))}
    for name, adjusted in _holm_by_hand(family).items():
        assert got[name]["p_holm"] == pytest.approx(adjusted, rel=1e-9), name
        lower_better = "psnr" not in name and "ssim" not in name
        expected = "" if adjusted >= 0.05 else ("B" if (got[name]["difference"] < 0) == lower_better else "A")
        assert got[name]["better"] == expected, name
    assert main(["compare", str(workdir / "a"), str(workdir / "b")]) == 0
    table = capsys.readouterr().out
    one_roi = [t for t in triplets if t.roi == "ROIs1158_spring/1"]
    for name in ("c", "d"):
        evaluate(create_model("dsen2cr-small").eval(), one_roi, workdir / name, write_images=False)
    capsys.readouterr()
    assert main(["compare", str(workdir / "c"), str(workdir / "d"), "--json"]) == 0
    strict = json.loads(capsys.readouterr().out, parse_constant=lambda name: pytest.fail(f"{name} in the JSON"))
    assert strict["metrics"][0]["ci_low"] is None  # one ROI: no interval, and strict JSON says so
    assert "| metric | A | B | B − A | interval of B − A | p (Holm) | better |" in table
    assert "on 4 patches of 2 ROIs" in table


def _holm_by_hand(p_values: dict[str, float]) -> dict[str, float]:
    """Holm's adjusted p-values, written out: the k-th smallest of m times (m − k + 1), at most 1, made monotone."""
    ranked = sorted(p_values, key=p_values.get)  # type: ignore[arg-type]
    adjusted, running = {}, 0.0
    for k, name in enumerate(ranked, start=1):
        running = max(running, min(1.0, (len(ranked) - k + 1) * p_values[name]))
        adjusted[name] = running
    return adjusted


def test_many_metrics_call_a_side_better_only_past_holms_threshold(tmp_path: Path) -> None:
    """Eight ROIs of three patches, the ROI means of B − A set by hand (t on 7 degrees of freedom): B's MAE and
    PSNR clearly better (kept after Holm's adjustment over the four metrics with a side); its SSIM (p ≈ 0.03) and
    RMSE (p ≈ 0.04) gains each leave 0 out of their own interval, which alone used to call B better, but not
    once adjusted (0.06): not called; a coverage has no side and stays out of the family. The p-values are
    scipy's t-test of the ROI means (equal clusters: the same test)."""
    from dsen2cr.compare import Report, compare_reports

    rng = np.random.default_rng(5)
    patches = [f"R/{roi}_p{n}" for roi in range(8) for n in range(3)]
    roi_of = {patch: patch.split("_")[0] for patch in patches}
    z = np.array([-1.5, -1.0, -0.5, 0.0, 0.25, 0.5, 1.0, 1.25])
    z = (z - z.mean()) / z.std(ddof=1)  # the ROIs' deviations: mean 0, sd 1
    t_values = {"mae": -20.0, "rmse": -2.5, "psnr": 15.0, "ssim": 2.77, "coverage_1sigma": 5.0}
    scale = {"mae": 0.004, "rmse": 0.004, "psnr": 0.5, "ssim": 0.006, "coverage_1sigma": 0.01}

    def difference(metric: str, patch: str) -> float:
        roi, number = int(roi_of[patch][2:]), int(patch[-1])
        roi_mean = (t_values[metric] / np.sqrt(8) + z[roi]) * scale[metric]
        return float(roi_mean + (number - 1) * 0.5 * scale[metric])  # the patches of a ROI about its mean

    a_values = {p: {m: float(rng.uniform(0.2, 0.4)) for m in t_values} for p in patches}
    b_values = {p: {m: a_values[p][m] + difference(m, p) for m in t_values} for p in patches}
    summary = {"protocol": "default", "window": None, "units": "u", "provenance": {}}
    a = Report(tmp_path / "a", a_values, roi_of, summary)
    b = Report(tmp_path / "b", b_values, roi_of, summary)
    got = {c.metric: c for c in compare_reports(a, b)}
    raw = {}
    for metric in t_values:
        differences = np.array([b_values[p][metric] - a_values[p][metric] for p in patches])
        roi_means = [differences[[roi_of[p] == roi for p in patches]].mean() for roi in sorted(set(roi_of.values()))]
        raw[metric] = float(stats.ttest_1samp(roi_means, 0).pvalue)
        assert got[metric].p_value == pytest.approx(raw[metric], rel=1e-6), metric
    adjusted = _holm_by_hand({m: raw[m] for m in ("mae", "rmse", "psnr", "ssim")})
    for metric in ("ssim", "rmse"):
        assert raw[metric] < 0.05 <= adjusted[metric], (metric, raw, adjusted)  # the case Holm is for
    assert {m: got[m].p_holm for m in adjusted} == pytest.approx(adjusted, rel=1e-9)
    assert {m: got[m].better for m in t_values} == {
        "mae": "B",
        "rmse": "",
        "psnr": "B",
        "ssim": "",
        "coverage_1sigma": "",
    }
    assert np.isnan(got["coverage_1sigma"].p_holm) and got["coverage_1sigma"].p_value < 0.05
    # SSIM chosen before comparing (--metric ssim): judged alone, its p is its own, and B is better; the rest are
    # shown, not judged; a coverage has no side to judge
    chosen = {c.metric: c for c in compare_reports(a, b, judged=["ssim"])}
    assert chosen["ssim"].p_holm == pytest.approx(raw["ssim"], rel=1e-6) and chosen["ssim"].better == "B"
    assert all(np.isnan(chosen[m].p_holm) and chosen[m].better == "" for m in ("mae", "rmse", "psnr"))
    with pytest.raises(DSen2CRError, match="--metric: coverage_1sigma has no better side"):
        compare_reports(a, b, judged=["coverage_1sigma"])


def test_a_metric_compared_over_fewer_patches_says_how_many(tmp_path: Path) -> None:
    """A patch where either report has no finite value (an empty region's NaN, a perfect image's infinite PSNR) is
    left out of that metric's comparison; the Markdown said nothing of it. Four patches of four ROIs: mae_cloudy
    empty on one, psnr infinite for B on another."""
    from dsen2cr.compare import Report, compare_reports, comparison_markdown

    patches = [f"R/{n}_p0" for n in range(4)]
    roi_of = {patch: patch.split("_")[0] for patch in patches}
    a_values = {p: {"mae": 0.02 + 0.001 * n, "mae_cloudy": 0.03, "psnr": 30.0} for n, p in enumerate(patches)}
    b_values = {p: {"mae": 0.01 + 0.002 * n, "mae_cloudy": 0.02, "psnr": 31.0} for n, p in enumerate(patches)}
    a_values[patches[0]]["mae_cloudy"] = b_values[patches[0]]["mae_cloudy"] = math.nan
    b_values[patches[1]]["psnr"] = math.inf
    summary = {"protocol": "default", "window": None, "units": "u", "provenance": {}}
    a = Report(tmp_path / "a", a_values, roi_of, summary)
    b = Report(tmp_path / "b", b_values, roi_of, summary)
    text = comparison_markdown(a, b, compare_reports(a, b))
    assert "Patch by patch on 4 patches of 4 ROIs" in text
    notes = [line for line in text.splitlines() if "of the 4 patches" in line]
    assert notes == [
        "mae_cloudy: 3 of the 4 patches, psnr: 3 of the 4 patches (the others have no finite value in one report or "
        "both: an empty region, a perfect image's PSNR)."
    ]


def test_reports_of_ensembles_sharing_a_member_say_each_members_digest(tmp_path: Path) -> None:
    """The first line names each report's weights with every member's SHA-256 shortened (an ensemble's, and an
    ensemble file's after them): two ensembles that share their first member showed that member's digest alone,
    the same for both."""
    from dsen2cr.compare import Report

    first, second, third = ("1" * 64, "2" * 64, "3" * 64)
    made = {"a": f"{first};{second}", "b": f"{first};{third}"}
    lines = {}
    for name, digests in made.items():
        provenance = {"DSEN2CR_WEIGHTS": f"m0.safetensors; m{name}.safetensors", "DSEN2CR_WEIGHTS_SHA256": digests}
        summary = {"protocol": "default", "window": None, "units": "u", "provenance": provenance}
        lines[name] = Report(tmp_path / name, {}, {}, summary).made_by()
    assert lines["a"] == f"m0.safetensors; ma.safetensors (SHA-256 {first[:12]}…; {second[:12]}…)"
    assert lines["b"] == f"m0.safetensors; mb.safetensors (SHA-256 {first[:12]}…; {third[:12]}…)"


def test_the_warnings_of_either_evaluation_are_said_with_the_comparison(tmp_path: Path) -> None:
    """A report's warnings (summary.json's ``warnings``: held-out patches on training ground, say) bear on what its
    numbers mean: the comparison says how many each evaluation warned of and the first, in the Markdown and the
    JSON's ``warnings``; reports without any (or of versions before the list) say nothing."""
    from dsen2cr.compare import Report, comparison_markdown, report_warnings

    leak = "files.csv: 1 of the 2 test patches lie in ROIs that training patches come from (e.g. S/1): neighbours"
    summary = {"protocol": "default", "window": None, "units": "u", "provenance": {}}
    a = Report(tmp_path / "a", {}, {}, summary | {"warnings": [leak, "another"]})
    b = Report(tmp_path / "b", {}, {}, summary)
    text = comparison_markdown(a, b, [])
    assert f"A's evaluation warned of 2 things (its summary.md lists them), first: {leak}" in text
    assert "B's evaluation warned" not in text
    assert report_warnings(a, b) == {"a": [leak, "another"], "b": []}
    plain = comparison_markdown(b, b, [])
    assert "warned" not in plain


def test_reports_computed_in_other_arithmetic_say_so(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A model evaluated in bf16 against one in IEEE fp32: part of B − A is the arithmetic's (tens of DN at the paper
    model's size), not the models'. The comparison goes on and a warning says both, by the reports' arithmetic, or
    their precision where a report of an earlier version recorded none; alike, nothing is said."""
    bf16 = "bf16 convolutions by oneDNN, IEEE fp32 residual stream, head and tail"
    a = _report(tmp_path / "a", _PATCHES, provenance={"DSEN2CR_PRECISION": "fp32", "DSEN2CR_ARITHMETIC": "IEEE fp32"})
    b = _report(tmp_path / "b", _PATCHES, provenance={"DSEN2CR_PRECISION": "bf16", "DSEN2CR_ARITHMETIC": bf16})
    assert main(["compare", str(a), str(b)]) == 0
    printed, err = capsys.readouterr()
    said = f"{b}: its model was computed in bf16 ({bf16}), {a}'s in fp32 (IEEE fp32): part of B − A is the arithmetic's"
    assert said in err and said in printed  # on the console, and in the comparison's header
    assert main(["compare", str(a), str(b), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["computed_in"] == {"a": "fp32 (IEEE fp32)", "b": f"bf16 ({bf16})"}
    older = _report(tmp_path / "c", _PATCHES, provenance={"DSEN2CR_PRECISION": "tf32"})
    assert main(["compare", str(a), str(older)]) == 0
    assert (
        f"{older}: its model was computed in tf32, {a}'s in fp32 (IEEE fp32): part of B − A" in capsys.readouterr().err
    )
    assert (
        main(["compare", str(a), str(_report(tmp_path / "d", _PATCHES, provenance={"DSEN2CR_PRECISION": "fp32"}))]) == 0
    )
    assert "computed in" not in capsys.readouterr().err


def _report(
    folder: Path,
    patches: dict[str, str],
    *,
    protocol: str = "default",
    roi: bool = True,
    provenance: dict[str, str] | None = None,
) -> Path:
    """A report folder as evaluate writes one (its CSV's model rows, its summary.json with ``provenance``) for
    ``patches`` (patch -> ROI)."""
    folder.mkdir(parents=True, exist_ok=True)
    columns = ["patch_id", *(["roi"] if roi else []), "method", "cloud_fraction", "mae"]
    lines = [",".join(columns)]
    for number, (patch, roi_id) in enumerate(patches.items()):
        lines.append(",".join([patch, *([roi_id] if roi else []), "model", "0.5", f"{0.01 * (number + 1)}"]))
    (folder / "metrics_per_image.csv").write_text("\n".join(lines) + "\n")
    summary = {"images": len(patches), "protocol": protocol, "window": None, "units": "u"}
    summary["provenance"] = provenance or {}
    (folder / "summary.json").write_text(json.dumps(summary))
    return folder


_PATCHES = {"S_1_p0": "S/1", "S_1_p1": "S/1", "S_2_p0": "S/2"}

CASES = [
    dict(
        name="compare: a folder that is no report",
        setup=lambda t: ["compare", str(_report(t / "a", _PATCHES)), str(t)],
        message="not an evaluation report (no metrics_per_image.csv and summary.json there)",
    ),
    dict(
        name="compare: one report twice",
        setup=lambda t: ["compare", str(_report(t / "a", _PATCHES)), str(t / "a")],
        message="a: the same report as ",
    ),
    dict(
        name="compare: reports of other patches",
        setup=lambda t: [
            "compare",
            str(_report(t / "a", _PATCHES)),
            str(_report(t / "b", {"S_1_p0": "S/1", "S_3_p0": "S/3"})),
        ],
        message="b: holds 2 patches, ",
    ),
    dict(
        name="compare: reports of two protocols",
        setup=lambda t: [
            "compare",
            str(_report(t / "a", _PATCHES)),
            str(_report(t / "b", _PATCHES, protocol="original")),
        ],
        message="b: scored with protocol 'original', ",
    ),
    dict(
        name="compare: a report without the roi column",
        setup=lambda t: ["compare", str(_report(t / "a", _PATCHES)), str(_report(t / "b", _PATCHES, roi=False))],
        message="metrics_per_image.csv: has no roi column (a report of an earlier version): evaluate again",
    ),
    dict(
        name="compare: --metric that neither report holds",
        setup=lambda t: [
            "compare",
            str(_report(t / "a", _PATCHES)),
            str(_report(t / "b", _PATCHES)),
            "--metric",
            "maee",
        ],
        message="--metric: 'maee' is not a metric both reports hold (mae)",
    ),
]


def test_bad_input(bad_input: dict, check_case: Callable[[dict], None]) -> None:
    """Each row of ``CASES``."""
    check_case(bad_input)
