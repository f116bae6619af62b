"""``evaluate``: per-image CSV checked against an independent computation from the files, reports, outputs."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import rasterio

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
            # what a scene output says of itself (#29): reflectance scale, colour hints, what computed it
            assert pred.scales == (1e-4,) * 13 and [c.name for c in pred.colorinterp[1:4]] == ["blue", "green", "red"]
            tags = pred.tags()
            assert tags["DSEN2CR_PRECISION"] == "fp32" and tags["DSEN2CR_BACKEND"] == "eager", tags
            assert tags["DSEN2CR_ARITHMETIC"] == "IEEE fp32"
            assert tags["DSEN2CR_WEIGHTS"] == weights.name and len(tags["DSEN2CR_WEIGHTS_SHA256"]) == 64
        assert (out / "previews" / f"{t.patch_id}.png").is_file()
        for name in ("sar", "cloudy", "cloudy_bright", "target", "prediction", "mask"):
            assert (out / "previews" / t.patch_id / f"{name}.png").is_file()
    summary = json.loads((out / "summary.json").read_text())
    identity_mae = [float(r["mae"]) for r in rows if r["method"] == "identity"]
    assert summary["summary"]["identity"]["mae"]["mean"] == pytest.approx(np.mean(identity_mae))
    assert summary["summary"]["identity"]["mae"]["median"] == pytest.approx(np.median(identity_mae))
    assert (out / "summary.md").read_text().count("|") > 20 and (out / "summary.csv").is_file()
    # the reports say what made them, as every output does: the weights and their SHA-256, precision, mask
    import hashlib

    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    made = summary["provenance"]
    assert (made["DSEN2CR_WEIGHTS"], made["DSEN2CR_WEIGHTS_SHA256"]) == (weights.name, digest)
    assert (made["DSEN2CR_PRECISION"], made["DSEN2CR_MASK"], made["DSEN2CR_CLOUD_THRESHOLD"]) == (
        "fp32",
        "paper",
        "0.2",
    )
    assert made["DSEN2CR_DATA"] == "files.csv, split train"  # which patches: the list's name, never its folder
    markdown = (out / "summary.md").read_text()
    assert f"weights {weights.name} (SHA-256 {digest[:12]}" in markdown and "precision fp32 (IEEE fp32)" in markdown
    assert "on files.csv, split train" in markdown
    again = subprocess.run(args, capture_output=True, text=True)
    assert again.returncode == 2 and "already holds an evaluation report; pass --overwrite" in again.stderr


def test_evaluate_with_roi_list(
    tmp_path: Path,
    synthetic_tree: Path,
    weights: Path,
    run_cli: Callable[..., subprocess.CompletedProcess],
    capsys: pytest.CaptureFixture,
) -> None:
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
    assert "evaluate:" not in result.stderr  # stderr is a pipe here: no bar
    from dsen2cr.cli import main

    with pytest.MonkeyPatch.context() as terminal:  # on a terminal: a bar counting patches, unless --no-progress
        terminal.setattr(sys.stderr, "isatty", lambda: True)
        assert main([*result.args[3:-2], str(tmp_path / "t"), "--no-images"]) == 0
        assert "evaluate: 100%" in (bar := capsys.readouterr().err) and "2/2" in bar, bar
        assert main([*result.args[3:-2], str(tmp_path / "q"), "--no-images", "--no-progress"]) == 0
        assert "evaluate:" not in capsys.readouterr().err


def test_the_evaluation_figure_names_the_patch_and_shows_only_the_models_inputs(
    tmp_path: Path, synthetic_tree: Path
) -> None:
    """#29: the figure of a model without SAR has no SAR panel (nor sar.png); its panels are at least 240 px
    wide; its first line names the patch and the model's metrics from the CSV."""
    from PIL import Image

    from dsen2cr.evaluate import evaluate

    triplets = select_split(read_file_list(synthetic_tree / "files.csv", synthetic_tree), "train")[:1]
    evaluate(create_model("dsen2cr-small-nosar").eval(), triplets, tmp_path / "e")
    patch = triplets[0].patch_id
    assert not (tmp_path / "e" / "previews" / patch / "sar.png").exists()
    assert (tmp_path / "e" / "previews" / patch / "prediction.png").is_file()
    size = Image.open(tmp_path / "e" / "previews" / f"{patch}.png").size
    side = Image.open(tmp_path / "e" / "previews" / patch / "prediction.png").size[0]  # the patch, unscaled
    scale = -(-240 // side)  # drawn at least 240 px wide
    assert side < 240 and size == (5 * side * scale + 4 * 4, 18 + 16 + side * scale + 18)


def _original_columns(pred: np.ndarray, target: np.ndarray, cloudy: np.ndarray, cover: np.ndarray) -> dict:
    """The original code's image_metrics.py, transcribed in float64 numpy (model units, (13, H, W))."""
    from skimage.metrics import structural_similarity

    def sam(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        cosine = (a * b).sum(0) / np.sqrt((a * a).sum(0)) / np.sqrt((b * b).sum(0))
        return np.arccos(np.clip(cosine, -1, 1))

    clear = 1.0 - cover
    error = pred - target
    rmse_dn = np.sqrt(np.mean((pred * 2000 - target * 2000) ** 2))
    ssim = structural_similarity(
        target * 2000,
        pred * 2000,
        data_range=10000.0,
        channel_axis=0,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
    )
    return {
        "cloud_mean_absolute_error": np.mean(np.abs(error)),
        "cloud_mean_squared_error": np.mean(error**2),
        "cloud_root_mean_squared_error": np.sqrt(np.mean(error**2)),
        "cloud_bandwise_root_mean_squared_error": np.mean(np.sqrt(np.mean(error**2, axis=(1, 2)))),
        "cloud_psnr": 20 * np.log10(10000.0 / rmse_dn),
        "cloud_ssim": ssim,
        "cloud_mean_sam": np.mean(sam(target, pred)),
        "cloud_mean_sam_covered": (cover * sam(target, pred)).sum() / cover.sum() if cover.sum() else 0.0,
        "cloud_mean_sam_clear": (clear * sam(cloudy, pred)).sum() / clear.sum() if clear.sum() else 0.0,
        "cloud_mean_absolute_error_covered": (cover * np.abs(error)).sum() / (cover.sum() * 13) if cover.sum() else 0.0,
        "cloud_mean_absolute_error_clear": (clear * np.abs(pred - cloudy)).sum() / (clear.sum() * 13)
        if clear.sum()
        else 0.0,
        "carl_error": np.mean(clear * np.abs(pred - cloudy) + cover * np.abs(error)) + np.mean(np.abs(error)),
    }


def test_original_protocol_matches_the_original_formulas(
    tmp_path: Path, run_cli: Callable[..., subprocess.CompletedProcess]
) -> None:
    """``--protocol original`` on real sample patches: every column of every row equals the original's formulas
    computed here in float64 from the files (top-left window, NaN fill and mask on it, prediction unclipped)."""
    import torch

    from dsen2cr.cloud_detection import cloud_shadow_mask
    from dsen2cr.data.sample import sample_dataset_root, sample_file_list
    from dsen2cr.metrics import ORIGINAL_METRIC_NAMES

    torch.manual_seed(3)
    model = create_model("dsen2cr-small").eval()
    weights = save_weights(model, tmp_path / "w.safetensors")
    root, window = sample_dataset_root(), 96
    result = run_cli(
        "evaluate",
        "--weights",
        str(weights),
        "--data-root",
        str(root),
        "--file-list",
        str(sample_file_list()),
        "--split",
        "val",
        "--protocol",
        "original",
        "--window",
        str(window),
        "--out",
        str(tmp_path / "e"),
        "--no-images",
    )
    assert result.returncode == 0, result.stderr
    assert "SAM in radians" in result.stdout
    rows = list(csv.DictReader((tmp_path / "e" / "metrics_per_image.csv").open()))
    triplets = {t.patch_id: t for t in select_split(read_file_list(sample_file_list(), root), "val")}
    assert rows and {r["patch_id"] for r in rows} == set(triplets)
    for row in rows:
        t = triplets[row["patch_id"]]
        read = [
            rasterio.open(p).read(window=((0, window), (0, window))).astype(np.float64)
            for p in (t.s2_cloudy, t.s2, t.s1)
        ]
        cloudy_dn, target_dn, s1_db = read
        cloudy, target = (np.clip(a, 0, 10000) / 2000 for a in (cloudy_dn, target_dn))
        vv = (np.clip(s1_db[0], -25, 0) + 25) / 25 * 2
        vh = (np.clip(s1_db[1], -32.5, 0) + 32.5) / 32.5 * 2
        with torch.no_grad():
            double = model.double()
            pred = double(torch.from_numpy(cloudy)[None], torch.from_numpy(np.stack([vv, vh]))[None])[0].numpy()
            model.float()
        cover = (cloud_shadow_mask(cloudy_dn.astype(np.uint16)) != 0).astype(np.float64)
        expected = _original_columns(pred if row["method"] == "model" else cloudy, target, cloudy, cover)
        for name in ORIGINAL_METRIC_NAMES:
            assert float(row[name]) == pytest.approx(expected[name], rel=1e-5, abs=1e-9), (row["method"], name)
    summary = json.loads((tmp_path / "e" / "summary.json").read_text())
    assert summary["protocol"] == "original" and summary["window"] == window


def test_the_summary_counts_one_image_in_the_singular() -> None:
    """The summary says "Evaluation on 1 image", not "1 images" (a split of one patch, as the demo's has)."""
    from dsen2cr.summary import summary_markdown

    one = {"model": {"mae": {"mean": 0.1, "median": 0.1}}}
    assert summary_markdown(one, 1).startswith("Evaluation on 1 image; ")
    assert summary_markdown(one, 2).startswith("Evaluation on 2 images; ")


def test_evaluate_batches_patches_of_mixed_sizes(workdir: Path) -> None:
    """A batch of patches of different sizes (a user's own dataset) was refused ('differ in size; evaluate them
    with --batch-size 1'); now each batch runs as one stack per size, and the report lists the patches in the
    order given: the same rows, to float precision, as one patch at a time."""
    from dsen2cr.evaluate import evaluate

    root = workdir / "mixed"
    triplets = [
        workdir.triplet(root, "ROIs1158_spring", roi, 0, size=size, seed=roi)  # type: ignore[attr-defined]
        for roi, size in ((1, 64), (2, 48), (3, 64), (4, 32))
    ]
    model = create_model("dsen2cr-small").eval()

    def rows(batch_size: int) -> list[dict[str, str]]:
        out = workdir / f"eval{batch_size}"
        evaluate(model, triplets, out, batch_size=batch_size, write_images=False)
        return list(csv.DictReader((out / "metrics_per_image.csv").open()))

    one_by_one, mixed = rows(1), rows(4)
    expected_order = [(t.patch_id, method) for t in triplets for method in ("model", "identity")]
    assert [(r["patch_id"], r["method"]) for r in mixed] == expected_order
    assert [(r["patch_id"], r["method"]) for r in one_by_one] == expected_order
    for got, want in zip(mixed, one_by_one, strict=True):
        for key, value in want.items():
            if key not in ("patch_id", "roi", "method") and value not in ("", "nan"):
                assert float(got[key]) == pytest.approx(float(value), rel=1e-5, abs=1e-7), (got["patch_id"], key)


def test_a_window_smaller_than_ssims_is_warned_of(workdir: Path, caplog: pytest.LogCaptureFixture) -> None:
    """``--window 5`` scores 5 px windows: SSIM's 11 px Gaussian window does not fit, so its column stayed
    empty ('–') without a word; now a warning says why (the other metrics are scored); summary.json holds null
    for it, never NaN."""
    import logging

    from dsen2cr.evaluate import evaluate

    triplets = [workdir.triplet(workdir / "w", "ROIs1158_spring", 1, 0, size=32)]  # type: ignore[attr-defined]
    model = create_model("dsen2cr-small").eval()
    with caplog.at_level(logging.WARNING, logger="dsen2cr"):
        summary = evaluate(model, triplets, workdir / "e", window=5, write_images=False)
    assert "--window 5 is smaller than SSIM's 11 px window: ssim stays empty" in caplog.text, caplog.text
    assert np.isnan(summary["model"]["ssim"]["mean"]) and np.isfinite(summary["model"]["mae"]["mean"])
    # summary.json is strict JSON (jq and JavaScript refuse Python's NaN token): the empty mean is null there
    written = json.loads((workdir / "e" / "summary.json").read_text(), parse_constant=pytest.fail)
    assert written["summary"]["model"]["ssim"]["mean"] is None
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="dsen2cr"):
        evaluate(model, triplets, workdir / "e11", window=11, write_images=False)
    assert "SSIM" not in caplog.text
