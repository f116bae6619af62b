"""An ensemble's sigma split into its aleatoric and epistemic parts (docs/design.md §6): the mean of the members'
predicted variances and the variance of their predictions, written beside the total by ``--uncertainty-parts``
and returned by the Python API; checked against the members run alone in float64."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from dsen2cr.errors import DSen2CRError
from dsen2cr.models.dsen2cr import ModelConfig
from dsen2cr.weights import save_weights


def _members(folder: Path, uncertainties: tuple[str, ...]) -> tuple[list[torch.nn.Module], list[str]]:
    """Small seeded models without SAR, saved as weights files."""
    models, paths = [], []
    for seed, uncertainty in enumerate(uncertainties):
        torch.manual_seed(seed)
        models.append(ModelConfig(2, 8, False, 0.1, uncertainty).build().eval())
        paths.append(str(save_weights(models[-1], folder / f"m{seed}.safetensors")))
    return models, paths


def _parts_by_hand(models: list[torch.nn.Module], s2_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Aleatoric and epistemic sigma in DN of ``models`` on the scene, in float64 (the tool's members predict in
    float32: where they nearly agree, their difference is a few float32 roundings, some 0.003 DN)."""
    import rasterio

    from dsen2cr.preprocessing import s2_dn_to_model

    with rasterio.open(s2_path) as source:
        x = torch.from_numpy(s2_dn_to_model(source.read())).double()[None]
    means, variances = [], []
    with torch.no_grad():
        for model in models:
            double = model.double()
            if model.config.uncertainty == "diag":
                mean, variance = double.forward_with_variance(x)
            else:
                mean, variance = double(x), torch.zeros_like(x)
            means.append(mean[0].numpy())
            variances.append(variance[0].numpy())
    aleatoric = np.mean(variances, axis=0)
    epistemic = np.var(means, axis=0)
    return np.sqrt(aleatoric) * 2000, np.sqrt(epistemic) * 2000


def test_remove_clouds_writes_the_parts_after_the_total(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    """--uncertainty-parts: the sigma COG holds the total sigma (bands 1-13, as without it), then the aleatoric
    and the epistemic sigma (14-26, 27-39), named so, each as the members run alone give it in float64."""
    import rasterio

    from dsen2cr.cli import main

    models, paths = _members(workdir, ("diag", "none", "diag"))
    s2, _ = workdir.scene()
    argv = ["remove-clouds", "--weights", *paths, "--s2", str(s2), "--no-progress", "--out", str(workdir / "o.tif")]
    assert main([*argv, "--uncertainty-out", str(workdir / "s.tif"), "--uncertainty-parts"]) == 0
    assert f"; also {workdir / 's.tif'} (sigma)\n" in capsys.readouterr().out  # the result line names it
    aleatoric, epistemic = _parts_by_hand(models, s2)
    with rasterio.open(workdir / "s.tif") as sigma:
        assert sigma.count == 39
        values = sigma.read().astype(np.float64)
        np.testing.assert_allclose(values[13:26], aleatoric, rtol=1e-4, atol=0.01)
        np.testing.assert_allclose(values[26:], epistemic, rtol=1e-4, atol=0.01)
        np.testing.assert_allclose(values[:13], np.hypot(aleatoric, epistemic), rtol=1e-4, atol=0.01)
        assert sigma.descriptions[0] == "sigma B1" and sigma.descriptions[13] == "aleatoric sigma B1"
        assert sigma.descriptions[38] == "epistemic sigma B12"
        assert sigma.scales == (1e-4,) * 39
        assert "aleatoric" in sigma.tags()["DSEN2CR_UNCERTAINTY"]
    # without the option the file holds the total alone, as before (summed from float64 parts: one float32 ulp)
    assert main([*argv[:-1], str(workdir / "o2.tif"), "--uncertainty-out", str(workdir / "total.tif")]) == 0
    with rasterio.open(workdir / "total.tif") as total, rasterio.open(workdir / "s.tif") as parted:
        assert total.count == 13
        np.testing.assert_allclose(total.read(), parted.read(list(range(1, 14))), rtol=3e-7)


def test_uncertainty_parts_messages(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    """The refusals' words (one line each on stderr)."""
    from dsen2cr.cli import main

    s2, _ = workdir.scene()
    for uncertainties, with_sigma, message in [
        (("diag",), True, "m0.safetensors: one model's variance is all aleatoric"),
        (("none", "none"), True, "no member of the ensemble predicts its variance"),
        (("diag", "none"), False, "--uncertainty-parts: needs --uncertainty-out"),
    ]:
        folder = workdir / f"{'_'.join(uncertainties)}-{with_sigma}"
        folder.mkdir()
        _, paths = _members(folder, uncertainties)
        argv = ["remove-clouds", "--weights", *paths, "--s2", str(s2), "--out", str(folder / "o.tif")]
        argv += ["--uncertainty-out", str(folder / "s.tif")] if with_sigma else []
        assert main([*argv, "--uncertainty-parts", "--no-progress"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
        assert not list(folder.glob("*.tif")), list(folder.glob("*.tif"))


def test_keep_clear_scales_every_part_alike(workdir: Path) -> None:
    """Under --keep-clear sigma is 0 where the input is kept and scaled by the blend weight at the edge: the
    parts alike, so the total stays sqrt(aleatoric^2 + epistemic^2) in every pixel."""
    import rasterio

    from dsen2cr.cli import main
    from dsen2cr.data.synth import add_synthetic_clouds, synthetic_clear_scene

    _, paths = _members(workdir, ("diag", "diag"))
    rng = np.random.default_rng(5)
    clear, _ = synthetic_clear_scene((60, 80), rng)
    s2, _ = workdir.scene(s2=add_synthetic_clouds(clear, rng)[0])
    argv = ["remove-clouds", "--weights", *paths, "--s2", str(s2), "--no-progress", "--out", str(workdir / "o.tif")]
    argv += ["--uncertainty-out", str(workdir / "s.tif"), "--uncertainty-parts", "--keep-clear"]
    assert main(argv) == 0
    with rasterio.open(workdir / "s.tif") as sigma:
        values = sigma.read().astype(np.float64)
    valid = values[0] >= 0
    total, aleatoric, epistemic = values[:13], values[13:26], values[26:]
    np.testing.assert_allclose(total[:, valid], np.hypot(aleatoric, epistemic)[:, valid], rtol=1e-5, atol=1e-3)
    kept = (total[:, valid] == 0).all(axis=0)
    assert kept.any() and not kept.all()
    assert (aleatoric[:, valid][:, kept] == 0).all() and (epistemic[:, valid][:, kept] == 0).all()


def test_the_array_api_returns_the_parts(workdir: Path) -> None:
    """remove_clouds_array with settings uncertainty_parts: sigma (the total), sigma_aleatoric and
    sigma_epistemic, as the members run alone give them; asked for without uncertainty=True, refused."""
    import rasterio

    import dsen2cr
    from dsen2cr.settings import SceneSettings

    models, paths = _members(workdir, ("diag", "diag"))
    s2, _ = workdir.scene()
    with rasterio.open(s2) as source:
        s2_dn = source.read()
    predictor = dsen2cr.load_ensemble(paths, device="cpu")
    settings = SceneSettings(uncertainty_parts=True)
    result = dsen2cr.remove_clouds_array(predictor, s2_dn, settings=settings, uncertainty=True)
    aleatoric, epistemic = _parts_by_hand(models, s2)
    assert result.sigma is not None and result.sigma_aleatoric is not None and result.sigma_epistemic is not None
    np.testing.assert_allclose(result.sigma_aleatoric, aleatoric, rtol=1e-4, atol=0.01)
    np.testing.assert_allclose(result.sigma_epistemic, epistemic, rtol=1e-4, atol=0.01)
    np.testing.assert_allclose(result.sigma, np.hypot(aleatoric, epistemic), rtol=1e-4, atol=0.01)
    plain = dsen2cr.remove_clouds_array(predictor, s2_dn, uncertainty=True)
    assert plain.sigma_aleatoric is None and plain.sigma_epistemic is None
    with pytest.raises(DSen2CRError, match=r"^uncertainty_parts: needs uncertainty=True"):
        dsen2cr.remove_clouds_array(predictor, s2_dn, settings=settings)


def test_evaluate_reports_an_ensembles_parts(tmp_path: Path, synthetic_tree: Path) -> None:
    """evaluate of an ensemble with a variance head: per image the RMS of the aleatoric and of the epistemic
    sigma (reflectance), recomputed here in float64 from the members; their squares sum to the total's mean
    variance. One model has no such columns."""
    import csv

    import dsen2cr
    from dsen2cr.data.dataset import SEN12MSCRDataset
    from dsen2cr.data.layout import read_file_list, select_split
    from dsen2cr.evaluate import evaluate

    models, paths = _members(tmp_path, ("diag", "none"))
    triplets = select_split(read_file_list(synthetic_tree / "files.csv", synthetic_tree), "train")[:2]
    predictor = dsen2cr.load_ensemble(paths, device="cpu")
    summary = evaluate(predictor, triplets, tmp_path / "e", write_images=False, progress=False)
    assert "rms_sigma_aleatoric" in summary["model"] and "rms_sigma_epistemic" in summary["model"]
    rows = [r for r in csv.DictReader((tmp_path / "e" / "metrics_per_image.csv").open()) if r["method"] == "model"]
    for triplet, row in zip(triplets, rows, strict=True):
        sample = SEN12MSCRDataset([triplet], train=False)[0]
        x = sample["s2_cloudy"][None].double()
        with torch.no_grad():
            first_mean, first_variance = models[0].double().forward_with_variance(x)
            second_mean = models[1].double()(x)
        aleatoric = first_variance.numpy() / 2
        epistemic = ((first_mean - second_mean).numpy() / 2) ** 2
        for name, variance in (("rms_sigma_aleatoric", aleatoric), ("rms_sigma_epistemic", epistemic)):
            expected = math.sqrt(variance.mean()) * 2000 / 10000  # model units to reflectance
            assert float(row[name]) == pytest.approx(expected, rel=1e-4), name
    one = dsen2cr.load_predictor(paths[0], device="cpu")
    single = evaluate(one, triplets, tmp_path / "s", write_images=False, progress=False)
    assert "coverage_1sigma" in single["model"] and "rms_sigma_aleatoric" not in single["model"]
