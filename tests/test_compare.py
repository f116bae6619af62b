"""``dsen2cr compare A B``: two evaluation reports of one test set, patch by patch. End to end on two real
evaluations (the numbers checked against the reports' own per-image CSVs with scipy), and the reports it refuses
(a table run through the console entry point)."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from dsen2cr.cli import main
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
    got = {row["metric"]: row for row in json.loads(capsys.readouterr().out)["metrics"]}

    def model_rows(name: str) -> dict[str, dict[str, str]]:
        rows = csv.DictReader((workdir / name / "metrics_per_image.csv").open())
        return {row["patch_id"]: row for row in rows if row["method"] == "model"}

    a, b = model_rows("a"), model_rows("b")
    for metric, lower_better in (("mae", True), ("rmse", True), ("psnr", False), ("ssim", False), ("sam", True)):
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
        expected = "" if low <= 0 <= high else ("B" if (high < 0) == lower_better else "A")
        assert row["better"] == expected, metric
    assert main(["compare", str(workdir / "a"), str(workdir / "b")]) == 0
    table = capsys.readouterr().out
    one_roi = [t for t in triplets if t.roi == "ROIs1158_spring/1"]
    for name in ("c", "d"):
        evaluate(create_model("dsen2cr-small").eval(), one_roi, workdir / name, write_images=False)
    capsys.readouterr()
    assert main(["compare", str(workdir / "c"), str(workdir / "d"), "--json"]) == 0
    strict = json.loads(capsys.readouterr().out, parse_constant=lambda name: pytest.fail(f"{name} in the JSON"))
    assert strict["metrics"][0]["ci_low"] is None  # one ROI: no interval, and strict JSON says so
    assert "| metric | A | B | B − A | interval of B − A | better |" in table and "on 4 patches of 2 ROIs" in table


def _report(folder: Path, patches: dict[str, str], *, protocol: str = "default", roi: bool = True) -> Path:
    """A report folder as evaluate writes one (its CSV's model rows, its summary.json) for ``patches``
    (patch -> ROI)."""
    folder.mkdir(parents=True, exist_ok=True)
    columns = ["patch_id", *(["roi"] if roi else []), "method", "cloud_fraction", "mae"]
    lines = [",".join(columns)]
    for number, (patch, roi_id) in enumerate(patches.items()):
        lines.append(",".join([patch, *([roi_id] if roi else []), "model", "0.5", f"{0.01 * (number + 1)}"]))
    (folder / "metrics_per_image.csv").write_text("\n".join(lines) + "\n")
    summary = {"images": len(patches), "protocol": protocol, "window": None, "units": "u", "provenance": {}}
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
]


def test_bad_input(bad_input: dict, check_case: Callable[[dict], None]) -> None:
    """Each row of ``CASES``."""
    check_case(bad_input)
