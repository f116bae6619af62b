"""Held-out patches that are training patches, or neighbours of them (a file list split by patch, not by ROI):
found by hand-made examples, refused for training's validation (test_training_bad_input.py), warned of by
evaluate."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from dsen2cr.cli import main
from dsen2cr.data.layout import Triplet, held_out_leaks
from dsen2cr.models import create_model
from dsen2cr.weights import save_weights


def _patch(roi: int, number: int) -> Triplet:
    name = Path(f"ROIs1158_spring_s1_{roi}_p{number}.tif")
    return Triplet(f"ROIs1158_spring_{roi}_p{number}", f"ROIs1158_spring/{roi}", name, name, name)


def test_held_out_leaks_by_hand() -> None:
    """Training: ROI 1 patches 0 and 1, ROI 2 patch 0. Held out: ROI 1 patch 1 (a training patch), ROI 1 patch 5
    (its neighbour), ROI 3 patch 0 (clean), ROI 10 patch 1 (ROI 1 as a substring test would see it: clean)."""
    training = [_patch(1, 0), _patch(1, 1), _patch(2, 0)]
    same, neighbours = held_out_leaks(training, [_patch(1, 1), _patch(1, 5), _patch(3, 0), _patch(10, 1)])
    assert [t.patch_id for t in same] == ["ROIs1158_spring_1_p1"]
    assert [t.patch_id for t in neighbours] == ["ROIs1158_spring_1_p5"]


def test_evaluate_warns_of_test_patches_beside_training_ones(
    workdir: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture
) -> None:
    """The tree's training ROI 1 gets a second patch in the test split: evaluate scores it and warns that it lies
    in a ROI training patches come from; the tree's own split (one ROI each) draws no such warning."""
    root = workdir.tree()  # type: ignore[attr-defined]
    weights = save_weights(create_model("dsen2cr-small"), workdir / "w.safetensors")
    argv = ["evaluate", "--weights", str(weights), "--data-root", str(root), "--no-images", "--no-progress"]
    with caplog.at_level(logging.WARNING):
        assert main([*argv, "--file-list", str(root / "files.csv"), "--out", str(workdir / "e1")]) == 0
    assert "training patches" not in caplog.text
    t = workdir.triplet(root, "ROIs1158_spring", 1, 1, size=48)  # type: ignore[attr-defined]
    mixed = root / "mixed.csv"
    line = f"3\tROIs1158_spring_s1/s1_1\tROIs1158_spring_s2/s2_1\tROIs1158_spring_s2_cloudy/s2_cloudy_1\t{t.s1.name}"
    mixed.write_text((root / "files.csv").read_text() + line + "\n")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert main([*argv, "--file-list", str(mixed), "--out", str(workdir / "e2")]) == 0
    warning = (
        f"{mixed}: 1 of the 2 test patches lie in ROIs that training patches come from (e.g. ROIs1158_spring/1): "
        "neighbours of what a model trained on; split by ROI"
    )
    assert warning in caplog.text, caplog.text
    # the report says it too (a report is read without the console's log): each warning of the run, once
    report = json.loads((workdir / "e2" / "summary.json").read_text())
    assert [w for w in report["warnings"] if warning in w] == [f"{warning} (data index --val-rois, --test-rois)"]
    assert f"- {warning} (data index --val-rois, --test-rois)" in (workdir / "e2" / "summary.md").read_text()
    assert json.loads((workdir / "e1" / "summary.json").read_text())["warnings"] == []
    assert "Warnings" not in (workdir / "e1" / "summary.md").read_text()


def test_an_evaluations_report_lists_the_warnings_said_while_it_ran(workdir: Path) -> None:
    """The Python API's evaluate lists what it warned of while it ran (here: a window smaller than SSIM's), and
    what its caller said before (``warnings``), each once, in the order said."""
    from dsen2cr.data.layout import read_file_list
    from dsen2cr.evaluate import evaluate

    root = workdir.tree()  # type: ignore[attr-defined]
    triplets = [t for t in read_file_list(root / "files.csv", root) if t.split == 3]
    earlier = ("files.csv: said by the caller", "files.csv: said by the caller")
    evaluate(create_model("dsen2cr-small"), triplets, workdir / "e", window=5, write_images=False, warnings=earlier)
    said = json.loads((workdir / "e" / "summary.json").read_text())["warnings"]
    assert said == ["files.csv: said by the caller", "--window 5 is smaller than SSIM's 11 px window: ssim stays empty"]
    listed = "Warnings said while it ran (as the console said them):\n\n- files.csv: said by the caller\n- --window 5"
    assert listed in (workdir / "e" / "summary.md").read_text()
