"""Sigma calibrated after training (``dsen2cr weights calibrate-sigma``, docs/design.md §6): one factor per band
fitted on held-out patches by the likelihood that trained the model, checked against the statistics computed
here in float64 from the network; the factors' effect on the variance, on outputs, on ONNX and on their tags."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import diag_weights, intervals_said
from dsen2cr.cli import main
from dsen2cr.data.dataset import SEN12MSCRDataset
from dsen2cr.data.layout import Triplet, read_file_list, select_split
from dsen2cr.models.dsen2cr import ModelConfig
from dsen2cr.predictor import load_predictor
from dsen2cr.preprocessing import S2_BANDS
from dsen2cr.weights import SIGMA_SCALE_KEY, TRAINING_KEY, load_model, save_weights

SCALE = [0.5 + 0.1 * band for band in range(13)]


def _abs_z(
    weights: Path, triplets: list[Triplet], *, cloudy_only: bool = False, cloud_threshold: float = 0.2
) -> np.ndarray:
    """|prediction - target| / sigma per band (13, values), the network run here in float64; the prediction
    rounded to DN, prediction and target clipped to [0, 1] reflectance (the metrics' convention); ``cloudy_only``:
    the values of pixels under cloud and shadow alone (the dataset's paper mask at ``cloud_threshold``)."""
    model = load_model(weights).double()
    columns = []
    dataset = SEN12MSCRDataset(triplets, train=False, cloud_threshold=cloud_threshold)
    for sample in (dataset[i] for i in range(len(dataset))):
        cloud = sample["cloud_mask"].numpy().ravel() != 0 if cloudy_only else slice(None)
        with torch.no_grad():
            mean, variance = model.forward_with_variance(
                sample["s2_cloudy"][None].double(), sample["s1"][None].double()
            )
        pred = np.clip(np.rint(mean[0].numpy() * 2000), 0, 10000) / 10000
        target = np.clip(sample["s2"].numpy().astype(np.float64) * 2000, 0, 10000) / 10000
        sigma = np.sqrt(variance[0].numpy()) * 2000 / 10000
        columns.append((np.abs(pred - target) / sigma).reshape(13, -1)[:, cloud])
    return np.concatenate(columns, axis=1)


def test_a_sigma_scale_multiplies_each_bands_variance_and_leaves_the_prediction() -> None:
    """set_sigma_scale: band c's variance times scale[c]^2, the prediction unchanged; the factors are no
    weights (not in the state dict); None gives sigma as trained; bad factors are refused."""
    torch.manual_seed(0)
    model = ModelConfig(1, 4, False, 0.1, "diag").build().eval()
    x = torch.rand(2, 13, 12, 10)
    with torch.no_grad():
        mean, variance = model.forward_with_variance(x)
        model.set_sigma_scale(SCALE)
        scaled_mean, scaled_variance = model.forward_with_variance(x)
    assert torch.equal(mean, scaled_mean) and "sigma_scale" not in model.state_dict()
    expected = variance.double() * torch.tensor(SCALE, dtype=torch.float64).view(1, -1, 1, 1) ** 2
    torch.testing.assert_close(scaled_variance.double(), expected, rtol=1e-6, atol=0)
    assert model.sigma_scale_factors == pytest.approx(SCALE)
    model.set_sigma_scale(None)
    with torch.no_grad():
        assert torch.equal(model.forward_with_variance(x)[1], variance) and model.sigma_scale_factors is None
    for bad in ([1.0] * 12, [0.0] * 13, [math.nan] * 13, [-1.0] * 13):
        with pytest.raises(ValueError, match="13 finite positive factors"):
            model.set_sigma_scale(bad)


@pytest.mark.parametrize("likelihood", ["gnll", "lnll"])
def test_calibrate_sigma_fits_each_bands_factor_by_the_models_likelihood(
    workdir: Path, capsys: pytest.CaptureFixture, likelihood: str
) -> None:
    """The factors are the maximum-likelihood scale of the val patches' |z| computed here in float64
    (Gaussian: sqrt(mean z^2); Laplace, b = sigma / sqrt 2: sqrt 2 mean |z|); after them the statistic is 1 on
    those patches; the weights are unchanged; the printed coverage is the share of |z| within each factor; a
    second calibration on the same patches finds factors of 1, so its file holds the first one's."""
    root = workdir.tree()
    weights = diag_weights(workdir / "w.safetensors", likelihood)
    args = ["weights", "calibrate-sigma", "--data-root", str(root), "--file-list", str(root / "files.csv")]
    assert main([*args, "--weights", str(weights), "--out", str(workdir / "c.safetensors"), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    val = select_split(read_file_list(root / "files.csv", root), "val")
    z = _abs_z(weights, val)
    expected = np.sqrt(np.mean(z**2, axis=1)) if likelihood == "gnll" else math.sqrt(2) * np.mean(z, axis=1)
    calibrated = load_model(workdir / "c.safetensors")
    assert calibrated.sigma_scale_factors == pytest.approx(expected.tolist(), rel=1e-4)
    torch.testing.assert_close(calibrated.state_dict(), load_model(weights).state_dict(), rtol=0, atol=0)
    z_after = _abs_z(workdir / "c.safetensors", val)
    statistic = np.mean(z_after**2, axis=1) if likelihood == "gnll" else math.sqrt(2) * np.mean(z_after, axis=1)
    np.testing.assert_allclose(statistic, 1.0, rtol=1e-4)
    coverage_after = float(np.mean(z <= expected[:, None]))
    before, after = (float(v) for v in printed.split("+-1 sigma coverage ")[1].split()[0:3:2])
    assert (before, after) == pytest.approx((np.mean(z <= 1), coverage_after), abs=2e-3), printed
    per_band = np.mean(z <= expected[:, None], axis=1)
    row = next(line for line in printed.splitlines() if line.startswith("| +-1 sigma after |"))
    printed_band = [float(cell) for cell in row.strip("|").split("|")[1:]]
    np.testing.assert_allclose(printed_band, per_band, atol=3e-3)  # read from a histogram of ln|z| (0.005 bins)
    assert f"fitted by {likelihood}" in printed and f"on 1 patch ({z.size:,} values)" in printed
    again = ["--weights", str(workdir / "c.safetensors"), "--out", str(workdir / "c2.safetensors"), "--no-progress"]
    assert main([*args, *again]) == 0
    assert load_model(workdir / "c2.safetensors").sigma_scale_factors == pytest.approx(expected.tolist(), rel=1e-4)
    record = json.loads(json.loads(_metadata(workdir / "c2.safetensors"))[SIGMA_SCALE_KEY])
    assert record["data"] == "files.csv, split val" and record["likelihood"] == likelihood
    assert record["patches"] == 1 and record["values"] == z.size


def test_calibrate_sigma_states_the_intervals_that_held_each_share(
    workdir: Path, capsys: pytest.CaptureFixture
) -> None:
    """The intervals a fit records are split conformal ones, per band: for each share p, the ceil(p (n + 1))-th
    smallest of the band's n values' |error| / calibrated sigma, computed here in float64 from the network (the
    fit's is rounded up to its histogram's bin, 0.5 %, and never below); each holds at least its share of the
    band's values. calibrate-sigma prints them, weights info lists them, and every output's calibration text ends
    with their range."""
    from dsen2cr.calibration import INTERVAL_LEVELS

    root = workdir.tree()
    weights = diag_weights(workdir / "w.safetensors", "gnll")
    args = ["weights", "calibrate-sigma", "--data-root", str(root), "--file-list", str(root / "files.csv")]
    assert main([*args, "--weights", str(weights), "--out", str(workdir / "c.safetensors"), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    factors = np.array(load_model(workdir / "c.safetensors").sigma_scale_factors)
    val = select_split(read_file_list(root / "files.csv", root), "val")
    scores = np.sort(_abs_z(weights, val) / factors[:, None], axis=1)  # each band's, calibrated
    record = json.loads(json.loads(_metadata(workdir / "c.safetensors"))[SIGMA_SCALE_KEY])
    assert list(record["intervals"]) == ["0.683", "0.9", "0.95", "0.99"] == [f"{p:g}" for p in INTERVAL_LEVELS]
    for level, multiples in record["intervals"].items():
        exact = scores[:, math.ceil(float(level) * (scores.shape[1] + 1)) - 1]
        assert np.all(exact * (1 - 1e-4) <= multiples), (level, multiples, exact)
        assert np.all(multiples <= exact * math.exp(0.005) * (1 + 1e-4)), (level, multiples, exact)
        held = np.mean(scores <= np.array(multiples)[:, None] * (1 + 1e-4), axis=1)
        assert np.all(held >= float(level)), (level, held)
        row = next(line for line in printed.splitlines() if line.startswith(f"| {100 * float(level):g} % within"))
        np.testing.assert_allclose([float(c) for c in row.strip("|").split("|")[1:]], multiples, atol=5e-4)
    said = intervals_said(record["intervals"])
    assert f"intervals of the calibrated sigma on these patches: {said}" in printed
    assert load_predictor(workdir / "c.safetensors").sigma_calibration.endswith(f"gnll); there {said}")
    assert main(["weights", "info", str(workdir / "c.safetensors")]) == 0
    listed = capsys.readouterr().out.splitlines()
    for level, multiples in record["intervals"].items():
        each = ", ".join(f"{m:.3g}" for m in multiples)
        said_each = f"{100 * float(level):g} % of values within +- {each} sigma (per band)"
        assert f"  sigma interval, where fitted: {said_each}" in listed


def test_calibrate_sigma_on_the_cloudy_region_fits_the_values_under_cloud_and_shadow(
    workdir: Path, synthetic_tree: Path, capsys: pytest.CaptureFixture
) -> None:
    """--region cloudy: the factors are the maximum-likelihood scale of the val patches' values under cloud and
    shadow alone (the dataset's paper mask), computed here in float64, not of all of them; the record, the
    printed table, weights info and the calibration text say which values."""
    weights = diag_weights(workdir / "w.safetensors", "gnll")
    data = ["--data-root", str(synthetic_tree), "--file-list", str(synthetic_tree / "files.csv"), "--no-progress"]
    argv = ["weights", "calibrate-sigma", "--weights", str(weights), *data, "--out", str(workdir / "c.safetensors")]
    assert main([*argv, "--region", "cloudy"]) == 0
    printed = capsys.readouterr().out
    val = select_split(read_file_list(synthetic_tree / "files.csv", synthetic_tree), "val")
    cloudy, every = _abs_z(weights, val, cloudy_only=True), _abs_z(weights, val)
    assert 0 < cloudy.shape[1] < every.shape[1]  # some pixels clear, some not
    expected = np.sqrt(np.mean(cloudy**2, axis=1))
    assert not np.allclose(expected, np.sqrt(np.mean(every**2, axis=1)), rtol=1e-2)  # the region matters here
    assert load_model(workdir / "c.safetensors").sigma_scale_factors == pytest.approx(expected.tolist(), rel=1e-4)
    record = json.loads(json.loads(_metadata(workdir / "c.safetensors"))[SIGMA_SCALE_KEY])
    assert record["region"] == "cloudy" and record["values"] == cloudy.size
    assert f"({cloudy.size:,} values under cloud and shadow)" in printed
    said = f"fitted on files.csv, split val ({cloudy.size} values under cloud and shadow, gnll); there "
    assert said in load_predictor(workdir / "c.safetensors").sigma_calibration
    assert main(["weights", "info", str(workdir / "c.safetensors")]) == 0
    assert f"split val ({cloudy.size} values under cloud and shadow)" in capsys.readouterr().out


def test_calibrate_sigma_on_the_cloudy_region_at_another_cloud_threshold(
    workdir: Path, synthetic_tree: Path, capsys: pytest.CaptureFixture
) -> None:
    """--region cloudy --cloud-threshold 0.8 (the one a user's remove-clouds --keep-clear runs take): the values
    under the paper mask at 0.8, fewer than at 0.2, computed here in float64; the record and every text say it."""
    weights = diag_weights(workdir / "w.safetensors", "gnll")
    data = ["--data-root", str(synthetic_tree), "--file-list", str(synthetic_tree / "files.csv"), "--no-progress"]
    argv = ["weights", "calibrate-sigma", "--weights", str(weights), *data, "--out", str(workdir / "c.safetensors")]
    assert main([*argv, "--region", "cloudy", "--cloud-threshold", "0.8"]) == 0
    printed = capsys.readouterr().out
    val = select_split(read_file_list(synthetic_tree / "files.csv", synthetic_tree), "val")
    cloudy = _abs_z(weights, val, cloudy_only=True, cloud_threshold=0.8)
    assert 0 < cloudy.shape[1] < _abs_z(weights, val, cloudy_only=True).shape[1]  # the threshold matters here
    expected = np.sqrt(np.mean(cloudy**2, axis=1))
    assert load_model(workdir / "c.safetensors").sigma_scale_factors == pytest.approx(expected.tolist(), rel=1e-4)
    record = json.loads(json.loads(_metadata(workdir / "c.safetensors"))[SIGMA_SCALE_KEY])
    assert (record["region"], record["cloud_threshold"], record["values"]) == ("cloudy", 0.8, cloudy.size)
    assert f"({cloudy.size:,} values under cloud and shadow at cloud threshold 0.8)" in printed
    said = f"split val ({cloudy.size} values under cloud and shadow at cloud threshold 0.8, gnll); there "
    assert said in load_predictor(workdir / "c.safetensors").sigma_calibration
    assert main(["weights", "info", str(workdir / "c.safetensors")]) == 0
    assert f"split val ({cloudy.size} values under cloud and shadow at cloud threshold 0.8)" in capsys.readouterr().out


def _metadata(path: Path) -> str:
    """A safetensors file's metadata as JSON text."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as file:
        return json.dumps(file.metadata())


def test_calibrated_weights_scale_sigma_in_outputs_and_onnx_and_say_so(
    workdir: Path, capsys: pytest.CaptureFixture
) -> None:
    """remove-clouds --uncertainty-out with calibrated weights: sigma of band c is the uncalibrated run's times
    its factor (the prediction the same), and the sigma map's DSEN2CR_SIGMA_CALIBRATION says what fitted it
    ('none (sigma as trained)' without); the ONNX export of the calibrated weights computes the scaled variance
    and its outputs say so too; weights info names the calibration."""
    pytest.importorskip("onnxruntime")
    import rasterio

    weights = diag_weights(workdir / "w.safetensors", include_sar=False)
    model = load_model(weights)
    model.set_sigma_scale(SCALE)
    intervals = {"0.683": [0.9021] * 12 + [1.2], "0.9": [1.7] * 13}
    record = {"scale": SCALE, "likelihood": "gnll", "data": "files.csv, split val", "patches": 3, "values": 999}
    record["intervals"] = intervals
    provenance = {TRAINING_KEY: json.dumps({"loss": {"name": "gnll"}}), SIGMA_SCALE_KEY: json.dumps(record)}
    calibrated = save_weights(model, workdir / "c.safetensors", provenance=provenance)
    assert main(["export-onnx", "--weights", str(calibrated), str(workdir / "c.onnx")]) == 0
    s2, _ = workdir.scene()
    with rasterio.open(s2, "r+") as scene:  # a STAC item says when
        scene.update_tags(PRODUCT_START_TIME="2017-02-16T10:21:01Z")
    for name in ("w.safetensors", "c.safetensors", "c.onnx"):
        argv = ["remove-clouds", "--weights", str(workdir / name), "--s2", str(s2), "--no-progress"]
        outputs = ["--out", str(workdir / f"{name}.tif"), "--uncertainty-out", str(workdir / f"{name}-s.tif")]
        assert main([*argv, *outputs, "--stac-item", str(workdir / f"{name}.json")]) == 0
    read = {}
    for name in ("w.safetensors", "c.safetensors", "c.onnx"):
        with rasterio.open(workdir / f"{name}-s.tif") as sigma, rasterio.open(workdir / f"{name}.tif") as image:
            read[name] = sigma.read().astype(np.float64), image.read(), sigma.tags()["DSEN2CR_SIGMA_CALIBRATION"]
            read[name] += (sigma.tags()["DSEN2CR_SIGMA_INTERVALS"],)
    plain, scaled, onnx = read["w.safetensors"], read["c.safetensors"], read["c.onnx"]
    assert plain[2] == "none (sigma as trained)" and plain[3] == "none"
    assert (
        scaled[2]
        == onnx[2]
        == (
            "sigma x 0.5 to 1.7 per band, fitted on files.csv, split val (999 values, gnll); there 68.3 % of values "
            "within +-0.91 to 1.20 sigma, 90 % within +-1.70 sigma (each band its multiple)"
        )
    )
    assert json.loads(scaled[3]) == json.loads(onnx[3]) == intervals  # for programs: full precision
    assert np.array_equal(plain[1], scaled[1])
    np.testing.assert_allclose(scaled[0], plain[0] * np.array(SCALE)[:, None, None], rtol=1e-3, atol=1)
    np.testing.assert_allclose(onnx[0], scaled[0], rtol=1e-3, atol=1)
    assert load_predictor(workdir / "c.onnx").sigma_calibration == scaled[2]
    for name in ("w", "c"):  # int8 keeps the factors fp32: sigma of the two int8 files apart by the factors alone
        int8 = ["--int8", "--calibration-patches", "2", str(workdir / f"{name}8.onnx")]
        assert main(["export-onnx", "--weights", str(workdir / f"{name}.safetensors"), *int8]) == 0
    x = np.random.default_rng(0).uniform(0, 1.5, (1, 13, 24, 20)).astype(np.float32)
    plain8, scaled8 = (load_predictor(workdir / f"{name}8.onnx").predict_with_variance(x, None)[1] for name in "wc")
    np.testing.assert_allclose(np.sqrt(scaled8), np.sqrt(plain8) * np.array(SCALE)[None, :, None, None], rtol=1e-5)
    lineages = {
        name: json.loads((workdir / f"{name}.json").read_text())["properties"]["processing:lineage"]
        for name in ("w.safetensors", "c.safetensors")
    }
    # what made sigma, then (before the warnings the run said: its random DN look offset) nothing else
    sigma_said = lineages["w.safetensors"].split("; warned while it ran: ")[0]
    assert sigma_said.endswith("; sigma trained by gnll (Gaussian), calibrated: none (sigma as trained)")
    sigma_said = lineages["c.safetensors"].split("; warned while it ran: ")[0]
    assert sigma_said.endswith(f"; sigma trained by gnll (Gaussian), calibrated: {scaled[2]}")
    capsys.readouterr()
    assert main(["weights", "info", str(calibrated)]) == 0
    described = (
        "sigma calibrated: x 0.5, 0.6, 0.7, 0.8, 0.9, 1, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.7 (per band), fitted by"
    )
    assert described + " gnll on files.csv, split val (999 values)" in capsys.readouterr().out


def test_evaluate_warns_of_weights_calibrated_on_the_patches_it_scores(
    workdir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """evaluate of weights whose sigma was fitted on the split it scores warns (their coverage flatters them), and
    its report says so (calibration.json, summary.md); on another split it does not. The report gives each band's
    coverage over every value (calibration.json's per_band, summary.md) and each image's coverage under cloud and
    shadow and over clear pixels (coverage_1sigma_cloudy, _clear), recomputed here in float64; the per-image CSV
    leaves the counts out."""
    root = workdir.tree()
    data = ["--data-root", str(root), "--file-list", str(root / "files.csv"), "--no-progress"]
    weights = diag_weights(workdir / "w.safetensors")
    out = workdir / "c.safetensors"
    assert main(["weights", "calibrate-sigma", "--weights", str(weights), "--out", str(out), *data]) == 0
    for split in ("val", "test"):
        caplog.clear()
        argv = ["evaluate", "--weights", str(out), *data, "--split", split, "--out", str(workdir / split)]
        assert main([*argv, "--no-images"]) == 0
        if split == "test":  # each band's coverage over every value, recomputed here in float64
            z = _abs_z(out, select_split(read_file_list(root / "files.csv", root), "test"))
            per_band = json.loads((workdir / split / "calibration.json").read_text())["per_band"]
            assert list(per_band) == list(S2_BANDS) and {v["values"] for v in per_band.values()} == {z.shape[1]}
            for k, name in ((1, "coverage_1sigma"), (2, "coverage_2sigma")):
                expected = np.mean(z <= k, axis=1)
                np.testing.assert_allclose([v[name] for v in per_band.values()], expected, atol=2e-3)
            said = f"B1 {per_band['B1']['coverage_1sigma']:.3f}, B2 {per_band['B2']['coverage_1sigma']:.3f}"
            assert (
                f"+-1 sigma coverage per band, over every value: {said}" in (workdir / split / "summary.md").read_text()
            )
            assert "band_coverage_counts" not in (workdir / split / "metrics_per_image.csv").read_text()
            sample = SEN12MSCRDataset(select_split(read_file_list(root / "files.csv", root), "test"), train=False)[0]
            cloud = sample["cloud_mask"].numpy().ravel() != 0
            rows = list(csv.DictReader((workdir / split / "metrics_per_image.csv").open()))
            model_row = next(r for r in rows if r["method"] == "model")
            for name, region in (("coverage_1sigma_cloudy", cloud), ("coverage_1sigma_clear", ~cloud)):
                expected_region = np.mean(z[:, region] <= 1) if region.any() else math.nan
                assert float(model_row[name] or "nan") == pytest.approx(expected_region, abs=2e-3, nan_ok=True)
            assert cloud.all() and model_row["coverage_1sigma_clear"] == "nan"  # no clear pixel: no value
        made_by = "; sigma x " in (workdir / split / "summary.md").read_text().split("Made on")[1]
        assert made_by and "fitted on files.csv, split val" in (workdir / split / "summary.md").read_text()
        # the report says it too (a report is read without the console's log)
        report = json.loads((workdir / split / "calibration.json").read_text())
        assert report["calibrated_on_these_patches"] == ("files.csv, split val" if split == "val" else None)
        flattered = (
            "Its sigma was calibrated on these patches (files.csv, split val): the coverage, UCE and intervals above "
            "flatter it; evaluate it on patches it was not calibrated on."
        )
        assert (flattered in (workdir / split / "summary.md").read_text()) == (split == "val")
        assert "its coverage and UCE flatter it" not in (workdir / split / "summary.md").read_text()  # said once
        warned = [r.message for r in caplog.records if "its sigma was calibrated on" in r.message]
        assert warned == (
            [
                "c.safetensors: its sigma was calibrated on files.csv, split val, the patches evaluated "
                "here: its coverage and UCE flatter it; evaluate on a split it was not calibrated on"
            ]
            if split == "val"
            else []
        ), warned


def test_evaluate_says_what_the_stated_intervals_held_on_the_patches_it_scores(workdir: Path) -> None:
    """Weights calibrated on the val split, evaluated on the test split: calibration.json gives the share of the
    test values (each band's and all) that each interval the calibration stated held, exact counts against
    |error| / sigma of every test value computed here in float64, also under cloud and shadow and over clear
    pixels, and the multiple of sigma (one for all bands)
    that held each share of its sample of each patch's values (within sampling error); summary.md says both.
    Uncalibrated weights state none."""
    root = workdir.tree()
    data = ["--data-root", str(root), "--file-list", str(root / "files.csv"), "--no-progress", "--no-images"]
    weights = diag_weights(workdir / "w.safetensors")
    out = workdir / "c.safetensors"
    assert main(["weights", "calibrate-sigma", "--weights", str(weights), "--out", str(out), *data[:-1]]) == 0
    stated = json.loads(json.loads(_metadata(out))[SIGMA_SCALE_KEY])["intervals"]
    for name in ("w.safetensors", "c.safetensors"):
        argv = [
            "evaluate",
            "--weights",
            str(workdir / name),
            *data,
            "--split",
            "test",
            "--out",
            str(workdir / f"ev-{name}"),
            "--cloud-threshold",
            "0.8",  # a test patch with cloudy and clear pixels
        ]
        assert main(argv) == 0
    assert "stated_intervals" not in json.loads((workdir / "ev-w.safetensors" / "calibration.json").read_text())
    report = json.loads((workdir / "ev-c.safetensors" / "calibration.json").read_text())
    assert list(report["stated_intervals"]) == list(stated)
    test = select_split(read_file_list(root / "files.csv", root), "test")
    z = _abs_z(out, test)
    cloud = SEN12MSCRDataset(test, train=False, cloud_threshold=0.8)[0]["cloud_mask"].numpy().ravel() != 0
    assert 0 < cloud.mean() < 1
    scores = np.sort(z.ravel())
    for level, multiples in stated.items():  # exact counts over every value: each band's, all, and each region's
        held = report["stated_intervals"][level]
        within = z <= np.array(multiples)[:, None]
        assert [b["sigma_multiple"] for b in held["per_band"].values()] == multiples
        np.testing.assert_allclose([b["held"] for b in held["per_band"].values()], within.mean(axis=1), atol=2e-3)
        assert held["held"] == pytest.approx(within.mean(), abs=2e-3), level
        regions = (held["held_cloudy"], held["held_clear"])
        assert regions == pytest.approx((within[:, cloud].mean(), within[:, ~cloud].mean()), abs=2e-3), level
    for level in ("0.683", "0.9", "0.95"):
        exact = np.quantile(scores, float(level))
        assert report["intervals"][level] == pytest.approx(exact, rel=0.05), level
    summary = (workdir / "ev-c.safetensors" / "summary.md").read_text()
    first = report["stated_intervals"]["0.683"]
    bands = [b["held"] for b in first["per_band"].values()]
    said = (
        f"68.3 % held {first['held']:.3f} (bands {min(bands):.3f} to {max(bands):.3f}; under cloud and shadow "
        f"{first['held_cloudy']:.3f}, clear {first['held_clear']:.3f}), 90 % held"
    )
    assert f"The intervals its sigma's calibration stated, over every value here: {said}" in summary
    here = f"+-{math.ceil(report['intervals']['0.683'] * 100 - 1e-9) / 100:.2f} sigma"
    assert f"one multiple for all bands: 68.3 % of values within {here}, 90 % within" in summary
    assert "calibration stated" not in (workdir / "ev-w.safetensors" / "summary.md").read_text()


def test_evaluate_warns_of_stated_intervals_that_do_not_hold_their_share(
    workdir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Weights whose stated 90 % interval is +-0.001 sigma (none of the test values within it) or +-1000 sigma (all
    of them): evaluate warns, naming the share held overall and under cloud and shadow, and which way sigma is
    wrong, and summary.md says it too; by hand, a share within 0.05 of its own says nothing."""
    from dsen2cr.calibration import stated_interval_warning

    root = workdir.tree()
    data = ["--data-root", str(root), "--file-list", str(root / "files.csv"), "--no-progress", "--no-images"]
    model = load_model(diag_weights(workdir / "w.safetensors"))
    for multiple, what in ((0.001, "too small"), (1000.0, "too large")):
        record = {"scale": [1.0] * 13, "data": "elsewhere", "intervals": {"0.9": [multiple] * 13}}
        weights = save_weights(model, workdir / f"{what}.safetensors", provenance={SIGMA_SCALE_KEY: json.dumps(record)})
        caplog.clear()
        argv = ["evaluate", "--weights", str(weights), *data, "--split", "test", "--out", str(workdir / what)]
        assert main(argv) == 0
        held = "0.000" if what == "too small" else "1.000"
        said = f"(90 % held {held} (under cloud and shadow {held})): its sigma is {what} on these patches"
        assert f"{weights.name}: the intervals its sigma's calibration stated do not hold" in caplog.text
        assert said in caplog.text, caplog.text
        summary = (workdir / what / "summary.md").read_text()  # read without the console's log
        assert f"The intervals its sigma's calibration stated do not hold their shares here {said}" in summary
        assert summary.count(said) == 1  # said in the report's own words, not listed again among its warnings
    near = {"0.9": {"held": 0.86, "held_cloudy": 0.94, "held_clear": 0.5, "per_band": {}}}
    assert stated_interval_warning(near) is None  # within 0.05 (the clear pixels' share is not judged)
    mixed = {"0.683": {"held": 0.6}, "0.9": {"held": 0.99, "held_cloudy": None}}
    assert "68.3 % held 0.600, 90 % held 0.990): its sigma is not shaped like its errors" in str(
        stated_interval_warning(mixed)
    )


def test_interval_report_by_hand() -> None:
    """|error| 0.1, 0.2, ..., 1.0 against sigma 1 (ten values): 68.3 % needs the ceil(0.683 * 11) = 8th smallest,
    0.8; 90 % the 10th, 1.0; 95 % and 99 % an 11th, so they are left out. A value with sigma 0 and an error needs
    an infinite multiple: its share is left out too."""
    from dsen2cr.calibration import interval_report

    error = np.arange(1, 11) / 10
    assert interval_report(error, np.ones(10)) == {"intervals": {"0.683": 0.8, "0.9": 1.0}}
    # sigma 0 (an ensemble's members agreeing exactly): exact where the error is 0, beyond any multiple elsewhere
    exact_but_one = interval_report(np.array([0.0] * 9 + [0.5]), np.array([1.0] * 9 + [0.0]))
    assert exact_but_one["intervals"] == {"0.683": 0.0}


def test_scale_statistics_by_hand() -> None:
    """Two values per band with |error| 50 and 300 DN and sigma 100 DN (z = 0.5 and 3): Gaussian factor
    sqrt(4.625), Laplace sqrt 2 * 1.75; the mean Gaussian NLL before and after from the formula; the coverage within
    +-1 sigma is 1/2 before and after the Gaussian factor (0.5 < 1 < 2.15 < 3). A band predicted exactly has no
    scale to fit."""
    from dsen2cr.errors import DSen2CRError
    from dsen2cr.sigma_statistics import ScaleStatistics

    statistics = ScaleStatistics()
    target = np.full((13, 1, 2), 1000, np.uint16)
    pred = target + np.array([50, 300], np.uint16)[None, None, :]
    statistics.add(pred, target, np.full((13, 1, 2), 100.0))
    gaussian, laplace = statistics.fit("gnll"), statistics.fit("lnll")
    assert gaussian.scale == pytest.approx([math.sqrt(4.625)] * 13, rel=1e-12)
    assert laplace.scale == pytest.approx([math.sqrt(2) * 1.75] * 13, rel=1e-12)
    sigma = 0.01  # reflectance
    before = np.mean([0.5 * math.log(2 * math.pi * sigma**2) + 0.5 * z**2 for z in (0.5, 3)])
    after = np.mean([0.5 * math.log(2 * math.pi * 4.625 * sigma**2) + 0.5 * z**2 / 4.625 for z in (0.5, 3)])
    assert (gaussian.nll_before, gaussian.nll_after) == pytest.approx((before, after), rel=1e-12)
    assert (gaussian.coverage_before, gaussian.coverage_after) == pytest.approx((0.5, 0.5), abs=1e-9)
    assert gaussian.band_coverage_before == gaussian.band_coverage_after == pytest.approx([0.5] * 13, abs=1e-9)
    assert (gaussian.patches, gaussian.values) == (1, 26)
    assert gaussian.intervals == ()  # two values a band: even 68.3 % needs the ceil(0.683 * 3) = 3rd of them
    exact = ScaleStatistics()
    pred = pred.copy()
    pred[10] = target[10]
    exact.add(pred, target, np.full((13, 1, 2), 100.0))
    with pytest.raises(DSen2CRError, match="every value of band B10 is predicted exactly on the 1 patch given"):
        exact.fit("gnll")


def test_interval_statistics_by_hand() -> None:
    """Ten values per band, |error| 10, 20, ..., 100 DN against sigma 100 DN (z = 0.1 ... 1.0): the Gaussian factor
    is k = sqrt(0.385); 68.3 % of a band needs its ceil(0.683 * 11) = 8th smallest calibrated score, 0.8 / k, and 90 %
    its 10th, 1.0 / k (each at most a bin, 0.5 %, above); 95 % and 99 % an 11th, so they are left out. held() of
    those multiples on the uncalibrated sigma reads the shares back."""
    from dsen2cr.sigma_statistics import ScaleStatistics

    statistics = ScaleStatistics()
    target = np.full((13, 1, 10), 1000, np.uint16)
    statistics.add(target + np.arange(10, 101, 10, dtype=np.uint16)[None, None], target, np.full((13, 1, 10), 100.0))
    fit = statistics.fit("gnll")
    k = math.sqrt(0.385)
    assert fit.scale == pytest.approx([k] * 13, rel=1e-12)
    assert [level for level, _ in fit.intervals] == [0.683, 0.9]
    for (_, multiples), score in zip(fit.intervals, (0.8 / k, 1.0 / k), strict=True):
        assert all(score <= m <= score * math.exp(0.005) for m in multiples), (multiples, score)
    held = [statistics.held(np.array(multiples) * k) for _, multiples in fit.intervals]
    np.testing.assert_allclose(held, [[0.8] * 13, [1.0] * 13], atol=1e-9)


def test_the_cloudy_region_takes_the_pixels_under_cloud_and_shadow_by_hand() -> None:
    """Two pixels, |error| 50 and 300 DN against sigma 100; the second under cloud (mask 1) or shadow (-1): the
    cloudy region's Gaussian factor is 3 (its one z), all values' sqrt(4.625). A patch without cloud adds nothing,
    and with only such patches there is nothing to fit."""
    from dsen2cr.errors import DSen2CRError
    from dsen2cr.sigma_statistics import ScaleStatistics

    target = np.full((13, 1, 2), 1000, np.uint16)
    pred = target + np.array([50, 300], np.uint16)[None, None, :]
    sigma = np.full((13, 1, 2), 100.0)
    for flag in (1, -1):
        cloudy = ScaleStatistics("cloudy")
        cloudy.add(pred, target, sigma, np.array([[0, flag]]))
        cloudy.add(pred, target, sigma, np.zeros((1, 2)))  # a clear patch
        fit = cloudy.fit("gnll")
        assert fit.scale == pytest.approx([3.0] * 13, rel=1e-12) and (fit.patches, fit.values) == (1, 13)
        assert fit.region == "cloudy" and fit.record("d")["region"] == "cloudy"
    every = ScaleStatistics()
    every.add(pred, target, sigma, np.array([[0, 1]]))
    assert every.fit("gnll").scale == pytest.approx([math.sqrt(4.625)] * 13) and "region" not in every.fit(
        "gnll"
    ).record("d")
    clear = ScaleStatistics("cloudy")
    clear.add(pred, target, sigma, np.zeros((1, 2)))
    with pytest.raises(DSen2CRError, match=r"no values to fit the sigma scale on \(no pixel of the patches lies under"):
        clear.fit("gnll")


def test_coverage_under_clouds_and_over_clear_pixels_by_hand() -> None:
    """A 2 x 2 image of 13 bands, its left column cloud: |error| 50 DN there against sigma 100 (all within), 200 on
    the right against 100 (none within): coverage_1sigma_cloudy 1, _clear 0, and 0.5 over all; no cloud: NaN."""
    from dsen2cr.calibration import uncertainty_metrics

    target = np.full((13, 2, 2), 1000, np.uint16)
    pred = target + np.array([[50, 200], [50, 200]], np.uint16)[None]
    mask = np.array([[1, 0], [-1, 0]], np.int8)  # cloud and shadow both count as cloudy
    values = uncertainty_metrics(pred, target, np.full((13, 2, 2), 100.0), mask)
    assert (values["coverage_1sigma_cloudy"], values["coverage_1sigma_clear"], values["coverage_1sigma"]) == (1, 0, 0.5)
    clear = uncertainty_metrics(pred, target, np.full((13, 2, 2), 100.0), np.zeros((2, 2), np.int8))
    assert math.isnan(clear["coverage_1sigma_cloudy"]) and clear["coverage_1sigma_clear"] == 0.5
    assert "coverage_1sigma_cloudy" not in uncertainty_metrics(pred, target, np.full((13, 2, 2), 100.0))


def test_sigma_calibrated_beside_training_patches_says_so_wherever_it_goes(
    workdir: Path, capsys: pytest.CaptureFixture
) -> None:
    """Validation patches in ROIs training patches come from (a list split by patch) are neighbours of what the
    model trained on: it errs less there, so factors fitted on them are too small elsewhere. calibrate-sigma warned
    of it, and the weights it wrote kept nothing of it: now their record counts them (``patches_on_training_ground``,
    of its ``patches``), weights info says it, and so does every sigma output's calibration text. A list split by
    ROI records nothing."""
    from dsen2cr.sigma_record import calibration_text, checked_sigma_scale

    root = workdir.tree()
    t = workdir.triplet(root, "ROIs1158_spring", 1, 1, size=48)
    line = f"2\tROIs1158_spring_s1/s1_1\tROIs1158_spring_s2/s2_1\tROIs1158_spring_s2_cloudy/s2_cloudy_1\t{t.s1.name}"
    (root / "mixed.csv").write_text((root / "files.csv").read_text() + line + "\n")
    weights = diag_weights(workdir / "w.safetensors", "gnll")
    said = "1 of its 2 patches lie in ROIs training patches come from (sigma fitted there may be too small elsewhere)"
    for listed in ("files.csv", "mixed.csv"):
        out = workdir / f"{listed}.safetensors"
        args = ["weights", "calibrate-sigma", "--data-root", str(root), "--file-list", str(root / listed)]
        assert main([*args, "--weights", str(weights), "--out", str(out), "--no-progress"]) == 0
        record = json.loads(json.loads(_metadata(out))[SIGMA_SCALE_KEY])
        mixed = listed == "mixed.csv"
        assert record.get("patches_on_training_ground") == (1 if mixed else None)
        assert record["patches"] == (2 if mixed else 1)
        capsys.readouterr()
        assert main(["weights", "info", str(out)]) == 0
        info = capsys.readouterr().out
        assert (said in info) == mixed, info
        text = calibration_text(checked_sigma_scale(record, out))
        assert (f"gnll; {said})" in text) == mixed, text
        assert text.startswith("sigma x ") and f"fitted on {listed}, split val (" in text
