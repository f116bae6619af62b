"""``evaluate``: per-image CSV checked against an independent computation from the files, reports, outputs."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio

from conftest import run_cli
from dsen2cr import create_model
from dsen2cr.data.layout import read_file_list, select_split
from dsen2cr.weights import save_weights


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "small.safetensors"
    return save_weights(create_model("dsen2cr-small"), path)


def test_evaluate_command(tmp_path: Path, synthetic_tree: Path, weights: Path) -> None:
    out = tmp_path / "eval"
    args = [
        sys.executable,
        "-m",
        "dsen2cr.cli",
        "evaluate",
        "--weights",
        str(weights),
        "--data-root",
        str(synthetic_tree),
        "--file-list",
        str(synthetic_tree / "files.csv"),
        "--split",
        "train",
        "--out",
        str(out),
    ]
    result = subprocess.run(args, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "| identity |" in result.stdout
    triplets = select_split(read_file_list(synthetic_tree / "files.csv", synthetic_tree), "train")
    rows = list(csv.DictReader((out / "metrics_per_image.csv").open()))
    assert len(rows) == 2 * len(triplets)
    # the identity baseline's MAE and RMSE, recomputed from the files in float64
    for t in triplets:
        with rasterio.open(t.s2_cloudy) as c, rasterio.open(t.s2) as g:
            cloudy, target = c.read().astype(np.float64), g.read().astype(np.float64)
        err = np.clip(cloudy, 0, 10000) / 10000 - np.clip(target, 0, 10000) / 10000
        row = next(r for r in rows if r["patch_id"] == t.patch_id and r["method"] == "identity")
        assert float(row["mae"]) == pytest.approx(np.abs(err).mean(), abs=1e-6)
        assert float(row["rmse"]) == pytest.approx(np.sqrt((err**2).mean()), abs=1e-6)
        assert float(row["mae_clear"]) == 0.0
        # predictions keep the input's georeferencing
        with rasterio.open(out / "predictions" / f"{t.patch_id}.tif") as pred, rasterio.open(t.s2_cloudy) as src:
            assert (pred.crs, pred.transform, pred.count, pred.dtypes[0]) == (src.crs, src.transform, 13, "uint16")
        assert (out / "previews" / f"{t.patch_id}.png").is_file()
        for name in ("sar", "cloudy", "cloudy_bright", "target", "prediction", "mask"):
            assert (out / "previews" / t.patch_id / f"{name}.png").is_file()
    summary = json.loads((out / "summary.json").read_text())
    identity_mae = [float(r["mae"]) for r in rows if r["method"] == "identity"]
    assert summary["summary"]["identity"]["mae"]["mean"] == pytest.approx(np.mean(identity_mae))
    assert summary["summary"]["identity"]["mae"]["median"] == pytest.approx(np.median(identity_mae))
    assert (out / "summary.md").read_text().count("|") > 20 and (out / "summary.csv").is_file()
    again = subprocess.run(args, capture_output=True, text=True)
    assert again.returncode == 2 and "already holds an evaluation report; pass --overwrite" in again.stderr


def test_evaluate_with_roi_list(tmp_path: Path, synthetic_tree: Path, weights: Path) -> None:
    rois = tmp_path / "rois.txt"
    rois.write_text("ROIs1970_fall/3\n")
    result = run_cli(
        "evaluate",
        "--weights",
        str(weights),
        "--data-root",
        str(synthetic_tree),
        "--rois",
        str(rois),
        "--out",
        str(tmp_path / "e"),
        "--no-images",
    )
    assert result.returncode == 0, result.stderr
    assert "Evaluation on 2 images" in result.stdout and not (tmp_path / "e" / "predictions").exists()
