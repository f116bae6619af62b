"""Per-pixel uncertainty (#28, docs/design.md §6): the variance head, the likelihood losses against other
libraries' formulas, configs, weights files and training with them."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from dsen2cr.config import load_config
from dsen2cr.errors import DSen2CRError
from dsen2cr.losses import likelihood_loss, negative_log_likelihood
from dsen2cr.models.dsen2cr import DSen2CR, ModelConfig
from dsen2cr.preprocessing import VARIANCE_FLOOR
from dsen2cr.weights import load_model, save_weights


def test_gaussian_nll_matches_torch_and_laplace_matches_scipy() -> None:
    """Per value, in float64: the Gaussian against torch's GaussianNLLLoss (full, no reduction), the Laplace
    against scipy.stats.laplace with scale sqrt(var / 2) (the head gives a variance whichever loss trains it)."""
    from scipy.stats import laplace

    rng = np.random.default_rng(0)
    pred, target = (torch.from_numpy(rng.normal(1, 0.5, (2, 13, 4, 5))) for _ in range(2))
    variance = torch.from_numpy(rng.uniform(1e-4, 2.0, (2, 13, 4, 5)))
    gaussian = torch.nn.GaussianNLLLoss(full=True, reduction="none", eps=0.0)(pred, target, variance)
    torch.testing.assert_close(negative_log_likelihood(pred, variance, target, "gnll"), gaussian)
    scale = np.sqrt(variance.numpy() / 2)
    expected = -laplace.logpdf(target.numpy(), loc=pred.numpy(), scale=scale)
    np.testing.assert_allclose(negative_log_likelihood(pred, variance, target, "lnll").numpy(), expected, rtol=1e-12)


def test_cloud_aware_likelihood_weights_like_carl() -> None:
    """mean((1 - M) nll(I) + M nll(T)) + lam mean(nll(T)), computed by hand per value."""
    pred, cloudy, target = torch.tensor([[1.0, 2.0]]), torch.tensor([[1.5, 0.0]]), torch.tensor([[0.0, 2.5]])
    variance = torch.tensor([[0.5, 2.0]])
    shape = (1, 1, 1, 2)
    mask = torch.tensor([[[0.0, 1.0]]])  # (N, H, W): the second pixel is cloudy

    def nll(p: float, t: float, v: float) -> float:
        return 0.5 * (math.log(2 * math.pi * v) + (p - t) ** 2 / v)

    clear = nll(1.0, 1.5, 0.5)  # the clear pixel against the cloudy input
    cloudy_pixel = nll(2.0, 2.5, 2.0)  # the cloudy pixel against the target
    whole = (nll(1.0, 0.0, 0.5) + nll(2.0, 2.5, 2.0)) / 2
    expected = (clear + cloudy_pixel) / 2 + 0.5 * whole
    got = likelihood_loss(
        pred.reshape(shape),
        variance.reshape(shape),
        target.reshape(shape),
        cloudy=cloudy.reshape(shape),
        mask=mask,
        lam=0.5,
    )
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_exact_predictions_and_huge_errors_stay_finite() -> None:
    """Saturated pixels predicted exactly at the variance floor, and errors of 1e4 model units: finite loss
    and gradients for both likelihoods; a variance below the floor (or 0) is taken as the floor."""
    pred = torch.tensor([5.0, 0.0, 1e4], requires_grad=True)
    raw_variance = torch.tensor([VARIANCE_FLOOR, 0.0, VARIANCE_FLOOR], requires_grad=True)
    target = torch.tensor([5.0, 0.0, 0.0])
    for kind in ("gnll", "lnll"):
        loss = negative_log_likelihood(pred, raw_variance, target, kind).sum()
        (grad_pred, grad_var) = torch.autograd.grad(loss, (pred, raw_variance))
        assert torch.isfinite(loss) and torch.isfinite(grad_pred).all() and torch.isfinite(grad_var).all()


def test_variance_head_adds_a_tail_and_keeps_the_prediction() -> None:
    """diag: one more Conv 3x3 F -> 13 (parameters counted by hand); forward() is the same prediction as
    forward_with_variance()'s; variances >= the floor; a model without uncertainty refuses to give one."""
    torch.manual_seed(0)
    model = DSen2CR(num_blocks=2, num_features=8, include_sar=False, uncertainty="diag").eval()
    plain = (13 * 8 * 9 + 8) + 2 * 2 * (8 * 8 * 9 + 8) + (8 * 13 * 9 + 13)
    assert (
        sum(p.numel() for p in model.parameters()) == plain + (8 * 13 * 9 + 13) == model.config.build_parameter_count()
    )
    s2 = torch.rand(2, 13, 12, 12)
    with torch.no_grad():
        mean, variance = model.forward_with_variance(s2)
        assert torch.equal(mean, model(s2))
    assert variance.shape == mean.shape and variance.dtype == torch.float32 and variance.min() >= VARIANCE_FLOOR
    # the variance is softplus of the second tail's output, plus the floor
    with torch.no_grad():
        features = model.blocks(torch.relu(model.head(s2)))
        expected = torch.nn.functional.softplus(model.variance_tail(features)) + VARIANCE_FLOOR
    torch.testing.assert_close(variance, expected)
    with pytest.raises(DSen2CRError, match="predicts no uncertainty"):
        DSen2CR(num_blocks=1, num_features=4).forward_with_variance(s2, torch.rand(2, 2, 12, 12))


def test_weights_files_record_the_variance_head(tmp_path: Path) -> None:
    """A weights file of a diag model loads as one (same variances); files without the key load as 'none'."""
    config = ModelConfig(2, 8, True, 0.1, "diag")
    model = config.build().eval()
    loaded = load_model(save_weights(model, tmp_path / "u.safetensors"))
    assert loaded.config == config and "variance per band" in loaded.config.describe()
    s2, s1 = torch.rand(1, 13, 8, 8), torch.rand(1, 2, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded.forward_with_variance(s2, s1), model.forward_with_variance(s2, s1))
    old = load_model(save_weights(ModelConfig(2, 8, True).build(), tmp_path / "plain.safetensors"))
    assert old.config.uncertainty == "none"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["loss.name=gnll"], "loss.name: gnll needs a model that predicts its variance: set model.uncertainty: diag"),
        (["model.uncertainty=diag"], "loss.name: carl does not train the variance of model.uncertainty diag"),
        (["model.uncertainty=full", "loss.name=gnll"], "uncertainty must be one of none, diag, got 'full'"),
        (["loss.cloud_aware=true"], "loss.cloud_aware: for gnll and lnll"),
        (["loss.name=nll"], "loss.name: expected carl, l1, gnll or lnll, got 'nll'"),
    ],
)
def test_configs_pair_the_loss_with_the_head(tmp_path: Path, overrides: list[str], message: str) -> None:
    with pytest.raises(DSen2CRError, match=message):
        load_config("small-cpu", overrides)


def test_the_bundled_uncertainty_config_is_the_papers_with_the_head() -> None:
    paper, uncertain = load_config("paper"), load_config("paper-uncertainty")
    assert uncertain.model.model_config() == ModelConfig(16, 256, True, 0.1, "diag")
    assert (uncertain.loss.name, uncertain.loss.cloud_aware, uncertain.loss.lam) == ("gnll", True, 1.0)
    assert (uncertain.optim, uncertain.data, uncertain.trainer.matmul_precision) == (
        paper.optim,
        paper.data,
        paper.trainer.matmul_precision,
    )


def _tiny_config(tmp_path: Path, root: Path, *overrides: str) -> list[str]:
    settings = {
        "model": {"variant": "dsen2cr-small", "num_blocks": 2, "num_features": 16, "uncertainty": "diag"},
        "loss": {"name": "gnll"},
        "data": {"root": str(root), "file_list": str(root / "files.csv"), "crop_size": 32, "num_workers": 0},
        "optim": {"lr": 2e-3, "batch_size": 4, "epochs": 1},
        "trainer": {"out_dir": str(tmp_path / "run"), "accelerator": "cpu", "devices": 1, "seed": 7},
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(settings))
    return [str(tmp_path / "c.yaml"), *overrides]


def test_training_with_gnll_logs_coverage_and_refuses_a_resume_without_the_head(
    tmp_path: Path, synthetic_tree: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """One epoch of gnll training writes a diag checkpoint whose validation logged the 1-sigma coverage, in the
    metrics file and in the epoch's line (where a user watching the run sees it); resuming it as a model without
    uncertainty is refused naming both."""
    import csv
    import logging

    from dsen2cr.training.train import run_training

    path, *_ = _tiny_config(tmp_path, synthetic_tree)
    with caplog.at_level(logging.INFO, logger="dsen2cr"):
        last = run_training(load_config(path), progress=False)
    assert load_model(last).config.uncertainty == "diag"
    rows = list(csv.DictReader((tmp_path / "run" / "logs" / "csv" / "metrics.csv").open()))
    coverage = [float(r["val_coverage_1sigma"]) for r in rows if r.get("val_coverage_1sigma")]
    assert coverage and 0.0 <= coverage[-1] <= 1.0
    epoch_line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch 0: "))
    assert f"val_coverage_1sigma {coverage[-1]:.4f}" in epoch_line, epoch_line
    plain = load_config(path, ["model.uncertainty=none", "loss.name=carl"])
    with pytest.raises(DSen2CRError, match="variance per band model, but B=2, F=16 with SAR was asked for"):
        run_training(plain, resume=last, progress=False)


def test_calibration_metrics_by_hand() -> None:
    """Four values (DN): errors 100, 200, 300, 400 DN with sigma 150, 150, 200, 500 DN, computed by hand."""
    from dsen2cr.calibration import calibration_errors, uncertainty_metrics

    target = np.full((1, 1, 4), 1000.0)
    pred = target + np.array([100.0, -200.0, 300.0, -400.0])
    sigma = np.array([150.0, 150.0, 200.0, 500.0]).reshape(1, 1, 4)
    e, s = np.array([0.01, 0.02, 0.03, 0.04]), np.array([0.015, 0.015, 0.02, 0.05])
    got = uncertainty_metrics(pred, target, sigma)
    assert got["nll"] == pytest.approx(np.mean(0.5 * (np.log(2 * np.pi * s**2) + e**2 / s**2)))
    assert (got["coverage_1sigma"], got["coverage_2sigma"]) == (0.5, 1.0)  # 0.01 <= 0.015, 0.04 <= 0.05
    # 20 bins over [0.015, 0.05], width 0.00175: 0.015 x2 in bin 0, 0.02 in bin 2, 0.05 in the last bin
    gaps = [abs(0.015 - np.sqrt((0.01**2 + 0.02**2) / 2)), abs(0.02 - 0.03), abs(0.05 - 0.04)]
    assert got["uce"] == pytest.approx(0.5 * gaps[0] + 0.25 * gaps[1] + 0.25 * gaps[2])
    assert got["auce"] == pytest.approx(np.mean(gaps))
    assert calibration_errors(e, s) == pytest.approx((got["uce"], got["auce"]))
    # the most certain 10 % and 50 %: round(0.4) -> 1 value (the first of the two 0.015), round(2) -> 2
    assert got["mae_certain10"] == pytest.approx(0.01) and got["mae_certain50"] == pytest.approx(0.015)
    assert got["mae_certain90"] == pytest.approx(np.mean([0.01, 0.02, 0.03, 0.04]))  # round(3.6) -> 4


def test_sparsification_curve_and_ause_by_hand() -> None:
    """The discard curve: the MAE of the values left once the 0, 5, ..., 95 % with the largest sigma are
    removed, beside the oracle's (the largest errors removed), and AUSE, the mean gap. sigma that ranks the
    errors exactly has AUSE 0; sigma that ranks them backwards, computed here by hand."""
    from dsen2cr.calibration import sparsification

    error = np.array([0.01, 0.02, 0.03, 0.04])
    exact = sparsification(error, np.array([0.015, 0.015, 0.02, 0.05]))
    assert exact["ause"] == pytest.approx(0.0, abs=1e-15)
    assert exact["removed"] == pytest.approx([i / 20 for i in range(20)])
    backwards = sparsification(error, np.array([0.05, 0.02, 0.015, 0.015]))  # certain first: 0.03 0.04 0.02 0.01
    kept = [4, 4, 4, 3, 3, 3, 3, 3, 2, 2, 2, 2, 2, 1, 1, 1, 1, 1, 1, 1]  # round((1 - share) x 4), at least 1
    by_sigma = {4: 0.025, 3: 0.03, 2: 0.035, 1: 0.03}
    oracle = {4: 0.025, 3: 0.02, 2: 0.015, 1: 0.01}
    assert backwards["mae_by_sigma"] == pytest.approx([by_sigma[k] for k in kept])
    assert backwards["mae_oracle"] == pytest.approx([oracle[k] for k in kept])
    assert backwards["ause"] == pytest.approx((3 * 0 + 5 * 0.01 + 5 * 0.02 + 7 * 0.02) / 20)


def test_evaluate_scores_the_uncertainty_of_a_diag_model(tmp_path: Path, synthetic_tree: Path) -> None:
    """evaluate of a diag model: the uncertainty columns for the model rows (coverage recomputed here in
    float64 from the network), calibration.json whose bins hold every sampled value, and a reliability PNG; a
    model without uncertainty gets none of them."""
    import csv
    import json

    from PIL import Image

    from dsen2cr.data.dataset import SEN12MSCRDataset
    from dsen2cr.data.layout import read_file_list, select_split
    from dsen2cr.evaluate import evaluate

    torch.manual_seed(0)
    model = DSen2CR(num_blocks=2, num_features=8, uncertainty="diag").eval()
    triplets = select_split(read_file_list(synthetic_tree / "files.csv", synthetic_tree), "train")
    summary = evaluate(model, triplets, tmp_path / "e", write_images=False)
    assert 0.0 <= summary["model"]["coverage_1sigma"]["mean"] <= 1.0
    rows = {
        r["patch_id"]: r
        for r in csv.DictReader((tmp_path / "e" / "metrics_per_image.csv").open())
        if r["method"] == "model"
    }
    sample = SEN12MSCRDataset(triplets[:1], train=False)[0]
    double = DSen2CR(num_blocks=2, num_features=8, uncertainty="diag").double().eval()
    double.load_state_dict(model.state_dict())
    with torch.no_grad():
        mean, variance = double.forward_with_variance(sample["s2_cloudy"][None].double(), sample["s1"][None].double())
    pred = np.clip(np.rint(mean[0].numpy() * 2000), 0, 10000) / 10000  # the DN the metrics see
    target = np.clip(sample["s2"].numpy().astype(np.float64) * 2000, 0, 10000) / 10000
    covered = np.abs(pred - target) <= np.sqrt(variance[0].numpy()) * 2000 / 10000
    assert float(rows[triplets[0].patch_id]["coverage_1sigma"]) == pytest.approx(covered.mean(), abs=2e-3)
    report = json.loads((tmp_path / "e" / "calibration.json").read_text())
    assert sum(report["bins"]["counts"]) == report["values"] > 0 and len(report["bins"]["counts"]) == 20
    assert -1.0 <= report["spearman_sigma_abs_error"] <= 1.0
    assert report["sparsification"]["ause"] == report["ause"] >= 0 and len(report["sparsification"]["removed"]) == 20
    assert report["sparsification"]["mae_by_sigma"][0] == pytest.approx(report["sparsification"]["mae_oracle"][0])
    assert Image.open(tmp_path / "e" / "calibration.png").size[0] >= 500
    # the pooled UCE, recomputed here from the bins in float64, is what summary.md and summary.json quote beside
    # the table's per-image means (binned on each image's own sigma range: another number)
    counts = np.array(report["bins"]["counts"], dtype=np.float64)
    filled = counts > 0
    rms_sigma, rms_error = (
        np.array(report["bins"][k], dtype=object)[filled].astype(np.float64) for k in ("rms_sigma", "rms_error")
    )
    uce = float((counts[filled] / counts.sum() * np.abs(rms_sigma - rms_error)).sum())
    assert report["uce"] == pytest.approx(uce, rel=1e-9)
    text = (tmp_path / "e" / "summary.md").read_text()
    assert f"pooled over all {len(triplets)} images ({report['values']:,} sampled values" in text
    assert f"UCE {uce:.4f}" in text and f"+-1 sigma coverage {report['coverage_1sigma']:.3f}" in text
    assert f"AUSE {report['ause']:.4f}" in text
    assert "uce and auce are per image" in text
    pooled = json.loads((tmp_path / "e" / "summary.json").read_text())["calibration"]
    assert pooled["uce"] == pytest.approx(uce, rel=1e-9) and "bins" not in pooled and "sparsification" not in pooled
    assert pooled["ause"] == report["ause"]
    plain = evaluate(DSen2CR(num_blocks=1, num_features=4).eval(), triplets, tmp_path / "p", write_images=False)
    assert "coverage_1sigma" not in plain["model"] and not (tmp_path / "p" / "calibration.json").exists()
    assert "pooled" not in (tmp_path / "p" / "summary.md").read_text()
    assert "calibration" not in json.loads((tmp_path / "p" / "summary.json").read_text())


def test_onnx_export_has_both_outputs_and_int8_keeps_sigma_close(tmp_path: Path) -> None:
    """export-onnx of a diag model: outputs s2_cloudfree and variance equal to PyTorch's; the file serves
    predict_with_variance (evaluate, --uncertainty-out); int8 (both tails kept fp32) keeps sigma within 10 %
    (measured 1.6 % at most on this model)."""
    pytest.importorskip("onnxruntime")
    from dsen2cr.cli import main
    from dsen2cr.predictor import load_predictor

    torch.manual_seed(0)
    model = ModelConfig(4, 32, True, 0.1, "diag").build().eval()
    weights = save_weights(model, tmp_path / "d.safetensors")
    for extra, name in (((), "d.onnx"), (("--int8", "--calibration-patches", "4"), "d8.onnx")):
        assert main(["export-onnx", "--weights", str(weights), *extra, str(tmp_path / name)]) == 0
    fp32, int8 = load_predictor(tmp_path / "d.onnx"), load_predictor(tmp_path / "d8.onnx")
    assert (fp32.uncertainty, int8.uncertainty, int8.precision) == ("diag", "diag", "int8")
    rng = np.random.default_rng(1)
    s2, s1 = (
        rng.uniform(0, 1.5, (2, 13, 48, 40)).astype(np.float32),
        rng.uniform(0, 1.5, (2, 2, 48, 40)).astype(np.float32),
    )
    with torch.no_grad():
        mean, variance = (t.numpy() for t in model.forward_with_variance(torch.from_numpy(s2), torch.from_numpy(s1)))
    got_mean, got_variance = fp32.predict_with_variance(s2, s1)
    np.testing.assert_allclose(got_mean, mean, atol=1e-4)
    np.testing.assert_allclose(got_variance, variance, rtol=1e-4)
    np.testing.assert_allclose(fp32(s2, s1), mean, atol=1e-4)  # the prediction alone
    _, int8_variance = int8.predict_with_variance(s2, s1)
    relative = np.abs(np.sqrt(int8_variance) - np.sqrt(variance)) / np.sqrt(variance)
    assert 0 < relative.max() < 0.10, relative.max()


def test_remove_clouds_writes_sigma_from_an_onnx_file(workdir: Path) -> None:
    """remove-clouds --uncertainty-out with the ONNX export of a diag model, as the README promises (the file
    has both outputs): the prediction and sigma of the PyTorch model, recomputed here in float64, with --backend
    auto and onnxruntime; the tags say onnxruntime computed them. It was refused ("predicts none")."""
    pytest.importorskip("onnxruntime")
    import rasterio

    from dsen2cr.cli import main
    from dsen2cr.preprocessing import s2_dn_to_model

    torch.manual_seed(0)
    model = ModelConfig(2, 8, False, 0.1, "diag").build().eval()
    weights = save_weights(model, workdir / "d.safetensors")
    assert main(["export-onnx", "--weights", str(weights), str(workdir / "d.onnx")]) == 0
    s2, _ = workdir.scene()
    for extra, name in (((), "auto"), (("--backend", "onnxruntime"), "onnxruntime")):
        argv = ["remove-clouds", "--weights", str(workdir / "d.onnx"), "--s2", str(s2), "--no-progress", *extra]
        outputs = ["--out", str(workdir / f"{name}.tif"), "--uncertainty-out", str(workdir / f"{name}-sigma.tif")]
        assert main([*argv, *outputs]) == 0
    with rasterio.open(s2) as source:
        x = torch.from_numpy(s2_dn_to_model(source.read())).double()[None]
    with torch.no_grad():
        mean, variance = model.double().forward_with_variance(x)
    for name in ("auto", "onnxruntime"):
        with rasterio.open(workdir / f"{name}.tif") as out, rasterio.open(workdir / f"{name}-sigma.tif") as sigma:
            assert np.abs(out.read().astype(float) - np.clip(np.rint(mean[0].numpy() * 2000), 1, 10000)).max() <= 1
            np.testing.assert_allclose(sigma.read(), np.sqrt(variance[0].numpy()) * 2000, rtol=1e-4)
            assert sigma.tags()["DSEN2CR_BACKEND"] == out.tags()["DSEN2CR_BACKEND"] == "onnxruntime"


class _Member:
    """A member with a constant prediction (and variance): a plain batch function a Predictor can hold."""

    def __init__(self, value: float, variance: float | None) -> None:
        self.value, self.variance = value, variance
        self.uncertainty = "none" if variance is None else "diag"

    def __call__(self, s2: np.ndarray, s1: np.ndarray | None) -> np.ndarray:
        return np.full_like(s2, self.value)

    def predict_with_variance(self, s2: np.ndarray, s1: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        return self(s2, s1), np.full_like(s2, self.variance)


def test_an_ensemble_combines_means_and_variances_by_the_law_of_total_variance() -> None:
    """Members predicting 1 (variance 0.04), 3 (no variance) and 2 (variance 0.10): mean 2; aleatoric
    (0.04 + 0 + 0.10) / 3; epistemic var(1, 3, 2) = 2/3; by hand."""
    from dsen2cr.ensemble import ensemble
    from dsen2cr.predictor import Predictor

    config = ModelConfig(1, 4, False)
    members = [
        Predictor(_Member(value, variance), config, torch.device("cpu"), weights=f"m{index}")
        for index, (value, variance) in enumerate([(1.0, 0.04), (3.0, None), (2.0, 0.10)])
    ]
    combined = ensemble(members)
    s2 = np.zeros((1, 13, 4, 4), np.float32)
    mean, variance = combined.predict_with_variance(s2, None)
    np.testing.assert_allclose(mean, 2.0)
    np.testing.assert_allclose(variance, 0.14 / 3 + 2 / 3, rtol=1e-6)
    np.testing.assert_allclose(combined(s2, None), 2.0)
    assert combined.uncertainty == "diag" and combined.weights == "m0; m1; m2"
    assert combined.provenance()["DSEN2CR_MODEL"].startswith("ensemble of 3 (B=1, F=4 without SAR)")
    sar = Predictor(_Member(1.0, None), ModelConfig(1, 4, True), torch.device("cpu"), weights="sar.safetensors")
    with pytest.raises(DSen2CRError, match=r"sar\.safetensors: takes SAR input but m0 does not"):
        ensemble([members[0], sar])


def test_an_ensembles_variance_parts_by_hand() -> None:
    """Members predicting 1 (variance 0.04), 3 (no variance) and 2 (variance 0.10): aleatoric (0.04 + 0 +
    0.10) / 3, epistemic var(1, 3, 2) = 2/3, their sum the total variance; one model has no parts."""
    from dsen2cr.ensemble import ensemble
    from dsen2cr.predictor import Predictor

    config = ModelConfig(1, 4, False)
    cpu = torch.device("cpu")
    members = [
        Predictor(_Member(value, variance), config, cpu, weights=f"m{index}")
        for index, (value, variance) in enumerate([(1.0, 0.04), (3.0, None), (2.0, 0.10)])
    ]
    combined = ensemble(members)
    s2 = np.zeros((1, 13, 4, 4), np.float32)
    mean, aleatoric, epistemic = combined.predict_variance_parts(s2, None)
    np.testing.assert_allclose(mean, 2.0)
    np.testing.assert_allclose(aleatoric, 0.14 / 3, rtol=1e-6)
    np.testing.assert_allclose(epistemic, 2 / 3, rtol=1e-6)
    np.testing.assert_allclose(combined.predict_with_variance(s2, None)[1], aleatoric + epistemic, rtol=1e-6)
    single = Predictor(_Member(1.0, 0.04), config, cpu, weights="one.safetensors")
    with pytest.raises(DSen2CRError, match=r"^one\.safetensors: one model's variance is all aleatoric"):
        single.predict_variance_parts(s2, None)


def test_an_ensemble_mixing_members_with_and_without_variance_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    """A member without a variance tail adds 0 to the ensemble's aleatoric part (the mean of the members'
    variances), which understates it: the first variance says so once, naming the member; ensembles whose
    members all predict a variance, or none does (sigma is then their disagreement alone), say nothing."""
    import logging

    from dsen2cr.ensemble import ensemble
    from dsen2cr.predictor import Predictor

    config, cpu = ModelConfig(1, 4, False), torch.device("cpu")
    s2 = np.zeros((1, 13, 4, 4), np.float32)

    def run(variances: list[float | None]) -> str:
        members = [Predictor(_Member(float(i), v), config, cpu, weights=f"m{i}") for i, v in enumerate(variances)]
        combined = ensemble(members)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="dsen2cr"):
            combined.predict_with_variance(s2, None)
            combined.predict_with_variance(s2, None)
        return caplog.text

    mixed = run([0.04, None, 0.10])
    assert mixed.count("m1: predicts no variance") == 1, mixed
    assert "aleatoric part as 0 (the mean of 3 members' variances, 2 predicted)" in mixed
    assert run([0.04, 0.10]) == run([None, None]) == ""


def test_an_ensemble_of_copies_is_refused() -> None:
    """Copies never disagree: an ensemble of them would claim sigma 0 (its members' spread) everywhere. Refused:
    one model in memory twice, two models with equal weights, two files of one SHA-256; kept: distinct weights,
    and plain functions (nothing to compare)."""
    from dsen2cr.ensemble import ensemble
    from dsen2cr.predictor import Predictor, predictor_from_model

    torch.manual_seed(0)
    first, second, twin = (ModelConfig(1, 4, False).build().eval() for _ in range(3))
    twin.load_state_dict(first.state_dict())
    for other in (first, twin):
        with pytest.raises(DSen2CRError, match="a model in memory: the same network as a model in memory"):
            ensemble([predictor_from_model(first, device="cpu"), predictor_from_model(other, device="cpu")])
    assert ensemble([predictor_from_model(first, device="cpu"), predictor_from_model(second, device="cpu")])
    config, cpu = ModelConfig(1, 4, False), torch.device("cpu")
    same_file = [Predictor(_Member(v, None), config, cpu, weights=f"m{v}", weights_sha256="ab" * 32) for v in (1, 2)]
    with pytest.raises(DSen2CRError, match="m2: the same network as m1"):
        ensemble(same_file)
    assert ensemble([Predictor(_Member(1.0, None), config, cpu, weights=f"m{v}") for v in (1, 2)])


def test_an_ensembles_provenance_with_variance_says_what_computed_each_member() -> None:
    """With its variance, an ensemble runs its members with a variance tail eagerly in IEEE fp32 (the reference
    itself, distance 0) and the others through their checked backends; its provenance must say so. It said "not
    checked" for an ensemble of eager fp32 members (the tail member's checked backend never ran), and recorded a
    tail member built for bf16 (as auto builds fp16 on a GPU) as bf16, though IEEE fp32 computed it."""
    from dsen2cr.ensemble import ensemble
    from dsen2cr.predictor import predictor_from_model

    torch.manual_seed(0)
    tail = ModelConfig(1, 4, False, 0.1, "diag").build().eval()
    plain = ModelConfig(1, 4, False).build().eval()
    s2 = np.random.default_rng(0).uniform(0.05, 0.3, (1, 13, 16, 16)).astype(np.float32)

    def members(precision: str) -> list:
        return [predictor_from_model(model, device="cpu", precision=precision) for model in (tail, plain)]

    fp32 = ensemble(members("fp32"))
    fp32.predict_with_variance(s2, None)
    tags = fp32.provenance(with_variance=True)
    assert (tags["DSEN2CR_PRECISION"], tags["DSEN2CR_CHECK_P99_DN"], tags["DSEN2CR_CHECK_MAX_DN"]) == (
        "fp32",
        "0.00",
        "0.00",
    ), tags
    half = ensemble(members("bf16"))
    half.predict_with_variance(s2, None)
    tags = half.provenance(with_variance=True)
    plain_check = half.predict.members[1].check_dn  # type: ignore[attr-defined]  # the ensemble's backend
    assert plain_check is not None, "the plain member ran its checked bf16 backend"
    assert tags["DSEN2CR_PRECISION"] == "fp32/bf16", tags  # the tail member in IEEE fp32, the other in bf16
    assert tags["DSEN2CR_CHECK_MAX_DN"] == f"{plain_check[1]:.2f}", tags
    half(s2, None)  # without the variance both members run their checked bf16 backends
    assert half.provenance()["DSEN2CR_PRECISION"] == "bf16"


def test_ensembles_from_the_command_line(workdir: Path, synthetic_tree: Path, capsys: pytest.CaptureFixture) -> None:
    """remove-clouds --weights A B --uncertainty-out: the mean prediction and sigma = sqrt(mean variance +
    variance of the means), recomputed here in float64; evaluate --weights A B scores the ensemble's sigma;
    members with and without SAR are refused before any work."""
    import rasterio

    from dsen2cr.cli import main
    from dsen2cr.preprocessing import s2_dn_to_model

    models, paths = [], []
    for seed, uncertainty in ((0, "diag"), (1, "none")):
        torch.manual_seed(seed)
        models.append(ModelConfig(2, 8, False, 0.1, uncertainty).build().eval())
        paths.append(str(save_weights(models[-1], workdir / f"m{seed}.safetensors")))
    s2, _ = workdir.scene()
    argv = ["remove-clouds", "--weights", *paths, "--s2", str(s2), "--no-progress"]
    assert main([*argv, "--out", str(workdir / "o.tif"), "--uncertainty-out", str(workdir / "s.tif")]) == 0
    with rasterio.open(s2) as source:
        x = torch.from_numpy(s2_dn_to_model(source.read())).double()[None]
    with torch.no_grad():
        doubles = [m.double() for m in models]
        first_mean, first_variance = doubles[0].forward_with_variance(x)
        second_mean = doubles[1](x)
    mean = (first_mean + second_mean) / 2
    variance = first_variance / 2 + ((first_mean - mean) ** 2 + (second_mean - mean) ** 2) / 2
    with rasterio.open(workdir / "o.tif") as out, rasterio.open(workdir / "s.tif") as sigma:
        assert np.abs(out.read().astype(float) - np.clip(np.rint(mean[0].numpy() * 2000), 1, 10000)).max() <= 1
        np.testing.assert_allclose(sigma.read(), np.sqrt(variance[0].numpy()) * 2000, rtol=1e-4)
        assert sigma.tags()["DSEN2CR_MODEL"].startswith("ensemble of 2")
        assert sigma.tags()["DSEN2CR_CHECK_MAX_DN"] != "not checked" != out.tags()["DSEN2CR_CHECK_MAX_DN"]
    root = synthetic_tree
    rois = ["--data-root", str(root), "--rois", str(_rois(workdir)), "--no-progress", "--no-images"]
    assert main(["evaluate", "--weights", *paths, *rois, "--out", str(workdir / "ens")]) == 0
    report = (workdir / "ens" / "summary.md").read_text()
    assert "coverage_1sigma" in report
    # every member's SHA-256, not the first 12 characters of the first one's
    digests = [hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12] for path in paths]
    assert f"(SHA-256 {digests[0]}…; {digests[1]}…)" in report, report
    capsys.readouterr()
    plain = [str(save_weights(ModelConfig(2, 8, True).build(), workdir / "sar.safetensors")), paths[0]]
    assert main(["evaluate", "--weights", *plain, *rois, "--out", str(workdir / "e")]) == 2
    assert "sar.safetensors: takes SAR input but " in capsys.readouterr().err and not (workdir / "e").exists()


def _rois(tmp: Path) -> Path:
    (tmp / "rois.txt").write_text("ROIs1970_fall/3\n")
    return tmp / "rois.txt"


def test_a_non_finite_variance_is_refused_like_a_nan_prediction() -> None:
    """A variance tail that gives infinity (broken weights in memory) stops the run instead of writing it."""
    from dsen2cr.predictor import predictor_from_model

    model = ModelConfig(1, 4, False, 0.1, "diag").build().eval()
    with torch.no_grad():
        model.variance_tail.bias.fill_(float("inf"))
    predictor = predictor_from_model(model, device=torch.device("cpu"))
    with pytest.raises(DSen2CRError, match="predicted NaN, infinite or absurdly large values or variances"):
        predictor.predict_with_variance(np.ones((1, 13, 8, 8), np.float32), None)


def test_load_ensemble_loads_weights_files_as_one_predictor(tmp_path: Path) -> None:
    """``dsen2cr.load_ensemble(files)``: the Python form of ``--weights A B C`` (the command line had it; Python
    had to assemble members by hand, and ``load_predictor([a, b])`` was a TypeError): the mean of the members'
    predictions and the variance of their spread, computed here in float64; ``load_predictor`` given several
    files says where they go."""
    import dsen2cr

    files = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        files.append(
            save_weights(DSen2CR(num_blocks=1, num_features=4, include_sar=False), tmp_path / f"m{seed}.safetensors")
        )
    s2 = np.random.default_rng(0).uniform(0, 2, (1, 13, 24, 24)).astype(np.float32)
    singles = [dsen2cr.load_predictor(f, device="cpu", backend="eager")(s2, None).astype(np.float64) for f in files]
    combined = dsen2cr.load_ensemble(files, device="cpu", backend="eager")
    mean, variance = combined.predict_with_variance(s2, None)
    np.testing.assert_allclose(mean, (singles[0] + singles[1]) / 2, atol=1e-6)
    np.testing.assert_allclose(variance, ((singles[0] - singles[1]) / 2) ** 2, atol=1e-9, rtol=1e-4)
    assert combined.provenance()["DSEN2CR_MODEL"].startswith("ensemble of 2")
    with pytest.raises(DSen2CRError, match=r"^weights: load_predictor takes one file; for an ensemble"):
        dsen2cr.load_predictor(files, device="cpu")  # type: ignore[arg-type]


def test_sigma_outputs_record_the_likelihood_their_model_was_trained_with(
    workdir: Path, capsys: pytest.CaptureFixture
) -> None:
    """sigma means a standard deviation under the likelihood that trained it (a Laplace model's 95 % interval is
    2.12 sigma, a Gaussian's 1.96): outputs with sigma record it (DSEN2CR_LIKELIHOOD, from the weights' training
    record; unknown without one), and the reliability figure's title gives the coverage that likelihood expects
    of calibrated sigma (both, when it is unknown)."""
    import rasterio

    from dsen2cr.cli import main
    from dsen2cr.predictor import load_predictor, predictor_from_model
    from dsen2cr.visualize import reliability_title

    config = workdir.config(model={"variant": "dsen2cr-small", "uncertainty": "diag"}, loss={"name": "lnll"})
    assert main(["train", "--config", str(config), "--no-progress"]) == 0
    weights = workdir / "lnll.safetensors"
    assert main(["export", str(workdir / "run" / "checkpoints" / "last.ckpt"), str(weights)]) == 0
    predictor = load_predictor(weights, device="cpu")
    assert predictor.provenance(with_variance=True)["DSEN2CR_LIKELIHOOD"] == "lnll (Laplace)"
    assert "DSEN2CR_LIKELIHOOD" not in predictor.provenance()  # no sigma: nothing to interpret
    s2, s1 = workdir.scene()
    argv = ["remove-clouds", "--weights", str(weights), "--s2", str(s2), "--s1", str(s1), "--no-progress"]
    assert main([*argv, "--out", str(workdir / "o.tif"), "--uncertainty-out", str(workdir / "s.tif")]) == 0
    with rasterio.open(workdir / "s.tif") as sigma:
        assert sigma.tags()["DSEN2CR_LIKELIHOOD"] == "lnll (Laplace)"
    in_memory = predictor_from_model(DSen2CR(num_blocks=1, num_features=4, uncertainty="diag").eval(), device="cpu")
    assert in_memory.provenance(with_variance=True)["DSEN2CR_LIKELIHOOD"] == "unknown (no training record)"
    report = {"coverage_1sigma": 0.7, "uce": 0.01, "spearman_sigma_abs_error": 0.5, "values": 100}
    assert "calibrated: 0.757 for Laplace errors, as lnll assumes" in reliability_title(report, "lnll (Laplace)")
    assert "calibrated: 0.683 for Gaussian errors, as gnll assumes" in reliability_title(report, "gnll (Gaussian)")
    assert "0.683 for Gaussian errors" in (both := reliability_title(report, None)) and "0.757 for Laplace" in both
