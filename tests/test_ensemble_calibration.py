"""An ensemble's sigma calibrated as a whole (``dsen2cr weights calibrate-sigma --weights A B --out ens.json``,
docs/design.md §6): the factors against the statistics of the ensemble's sigma computed here in float64 from its
members, and the ensemble file run by ``--weights ens.json`` (outputs, parts, tags, evaluate, weights info)."""

from __future__ import annotations

import hashlib
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
from dsen2cr.ensemble_file import read_ensemble_file
from dsen2cr.weights import load_model


def _members(workdir: Path, likelihood: str = "gnll") -> list[Path]:
    """Two small models with sigma, trained apart (other seeds), with SAR."""
    return [diag_weights(workdir / f"m{seed}.safetensors", likelihood, seed=seed) for seed in (0, 1)]


def _ensemble_abs_z(members: list[Path], triplets: list[Triplet]) -> np.ndarray:
    """|prediction - target| / sigma of the members' ensemble per band (13, values), run here in float64: the
    mean of their means (rounded to DN), sigma^2 the mean of their variances plus the variance of their means;
    prediction and target as reflectance clipped to [0, 1]."""
    models = [load_model(member).double() for member in members]
    dataset = SEN12MSCRDataset(triplets, train=False)
    columns = []
    for sample in (dataset[i] for i in range(len(dataset))):
        with torch.no_grad():
            outputs = [
                m.forward_with_variance(sample["s2_cloudy"][None].double(), sample["s1"][None].double()) for m in models
            ]
        means = np.stack([mean[0].numpy() for mean, _ in outputs])
        variance = np.mean([v[0].numpy() for _, v in outputs], axis=0) + means.var(axis=0)
        pred = np.clip(np.rint(means.mean(axis=0) * 2000), 0, 10000) / 10000
        target = np.clip(sample["s2"].numpy().astype(np.float64) * 2000, 0, 10000) / 10000
        columns.append((np.abs(pred - target) / (np.sqrt(variance) * 2000 / 10000)).reshape(13, -1))
    return np.concatenate(columns, axis=1)


def _calibrate(workdir: Path, weights: list[Path], out: str, *extra: str) -> list[str]:
    """weights calibrate-sigma of ``weights`` on the small release tree's val split, into ``out``."""
    root = workdir.tree()
    data = ["--data-root", str(root), "--file-list", str(root / "files.csv"), "--no-progress", *extra]
    return ["weights", "calibrate-sigma", "--weights", *map(str, weights), "--out", str(workdir / out), *data]


@pytest.mark.parametrize("likelihood", ["gnll", "lnll"])
def test_calibrate_sigma_of_an_ensemble_fits_its_combined_sigma(
    workdir: Path, capsys: pytest.CaptureFixture, likelihood: str
) -> None:
    """The ensemble file's factors are the maximum-likelihood scale (by the members' likelihood) of |z| of the
    ensemble's total sigma, computed here in float64 from the members; it names the members (relative to it) with
    their SHA-256; calibrating the ensemble file again on the same patches keeps the factors (theirs multiply)."""
    members = _members(workdir, likelihood)
    assert main(_calibrate(workdir, members, "ens.json")) == 0
    printed = capsys.readouterr().out
    val = select_split(read_file_list(workdir.tree() / "files.csv", workdir.tree()), "val")
    z = _ensemble_abs_z(members, val)
    expected = np.sqrt(np.mean(z**2, axis=1)) if likelihood == "gnll" else math.sqrt(2) * np.mean(z, axis=1)
    written = json.loads((workdir / "ens.json").read_text())
    np.testing.assert_allclose(written["sigma_scale"]["scale"], expected, rtol=1e-4)
    assert written["format"] == "dsen2cr ensemble 1"
    assert written["members"] == [
        {"file": m.name, "sha256": hashlib.sha256(m.read_bytes()).hexdigest()} for m in members
    ]
    record = written["sigma_scale"]
    assert (record["likelihood"], record["data"], record["patches"], record["values"]) == (
        likelihood,
        "files.csv, split val",
        1,
        z.size,
    )
    assert f"fitted by {likelihood}" in printed and "wrote " + str(workdir / "ens.json") in printed
    (workdir / "sub").mkdir()
    assert main(_calibrate(workdir, [workdir / "ens.json"], "sub/again.json")) == 0
    again = json.loads((workdir / "sub" / "again.json").read_text())
    np.testing.assert_allclose(again["sigma_scale"]["scale"], expected, rtol=1e-4)
    assert [m["file"] for m in again["members"]] == [f"../{m.name}" for m in members]


def test_an_ensemble_files_sigma_is_its_members_times_its_factors_and_says_so(
    workdir: Path, capsys: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture
) -> None:
    """remove-clouds --weights ens.json (load_ensemble in Python; load_predictor refuses it): the image is the
    members' ensemble's, pixel for pixel; its total sigma and both parts (--uncertainty-parts) are the uncalibrated
    ensemble's times each band's factor; the tags name the calibration and record the ensemble file's SHA-256 after
    the members'; weights info lists the members and the factors; evaluate warns when it scores the split the
    ensemble was calibrated on, and says that the file's intervals held their shares there (within sampling)."""
    import rasterio

    from dsen2cr import load_ensemble, load_predictor
    from dsen2cr.errors import DSen2CRError

    members = _members(workdir)
    assert main(_calibrate(workdir, members, "ens.json")) == 0
    stored = json.loads((workdir / "ens.json").read_text())["sigma_scale"]
    scale = np.array(stored["scale"])
    s2, s1 = workdir.scene()
    read = {}
    for name, weights in (("plain", [str(m) for m in members]), ("calibrated", [str(workdir / "ens.json")])):
        outputs = ["--out", str(workdir / f"{name}.tif"), "--uncertainty-out", str(workdir / f"{name}-s.tif")]
        argv = ["remove-clouds", "--weights", *weights, "--s2", str(s2), "--s1", str(s1), "--no-progress"]
        assert main([*argv, *outputs, "--uncertainty-parts"]) == 0
        with rasterio.open(workdir / f"{name}-s.tif") as sigma, rasterio.open(workdir / f"{name}.tif") as image:
            read[name] = image.read(), sigma.read().astype(np.float64), sigma.tags()
    (plain, plain_sigma, plain_tags), (image, sigma, tags) = read["plain"], read["calibrated"]
    assert np.array_equal(image, plain)
    factors = np.tile(scale, 3)[:, None, None]  # total, aleatoric, epistemic sigma: each band times its factor
    np.testing.assert_allclose(sigma, plain_sigma * factors, rtol=1e-3, atol=1)
    assert tags["DSEN2CR_SIGMA_CALIBRATION"] == (
        f"ensemble sigma (ens.json) x {scale.min():.3g} to {scale.max():.3g} per band, fitted on files.csv, split val "
        f"(29952 values, gnll); there {intervals_said(stored['intervals'])}"
    )
    assert plain_tags["DSEN2CR_SIGMA_CALIBRATION"] == "none (sigma as trained)"
    digests = [hashlib.sha256(path.read_bytes()).hexdigest() for path in [*members, workdir / "ens.json"]]
    assert tags["DSEN2CR_WEIGHTS_SHA256"] == ";".join(digests)
    assert plain_tags["DSEN2CR_WEIGHTS_SHA256"] == ";".join(digests[:2])
    x = np.random.default_rng(0).uniform(0, 1.5, (1, 13, 24, 20)).astype(np.float32)
    sar = np.random.default_rng(1).uniform(-1, 0, (1, 2, 24, 20)).astype(np.float32)
    python_plain = load_ensemble(members).predict_with_variance(x, sar)[1]
    python_calibrated = load_ensemble(workdir / "ens.json").predict_with_variance(x, sar)[1]
    np.testing.assert_allclose(python_calibrated, python_plain * (scale**2)[None, :, None, None], rtol=1e-5)
    with pytest.raises(DSen2CRError, match=r"ens\.json: an ensemble file names several networks; load it with"):
        load_predictor(workdir / "ens.json")
    capsys.readouterr()
    assert main(["weights", "info", str(workdir / "ens.json")]) == 0
    described = capsys.readouterr().out
    assert f"  member: {members[0]} (SHA-256 {digests[0]})" in described
    assert "sigma calibrated: x " in described and "fitted by gnll on files.csv, split val (29952 values)" in described
    root = workdir.tree()
    evaluate = ["evaluate", "--weights", str(workdir / "ens.json"), "--data-root", str(root), "--no-progress"]
    assert (
        main([*evaluate, "--file-list", str(root / "files.csv"), "--split", "val", "--out", str(workdir / "ev")]) == 0
    )
    assert "ens.json: its sigma was calibrated on files.csv, split val, the patches evaluated here" in caplog.text
    summary = json.loads((workdir / "ev" / "summary.json").read_text())
    assert summary["provenance"]["DSEN2CR_SIGMA_CALIBRATION"] == tags["DSEN2CR_SIGMA_CALIBRATION"]
    stated = summary["calibration"]["stated_intervals"]  # the ensemble file's, on the patches it was fitted on
    for level, held in stated.items():
        assert [band["sigma_multiple"] for band in held["per_band"].values()] == stored["intervals"][level]
        assert min(band["held"] for band in held["per_band"].values()) >= float(level) - 1e-3, (level, held)


def test_members_calibrated_one_by_one_are_told_to_calibrate_the_ensemble(
    workdir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An ensemble of members whose sigma was calibrated alone warns that its sigma is wider than calibrated and
    says how to calibrate it as a whole (remove-clouds, evaluate); the ensemble file of those members, or members as
    trained, do not."""
    root = workdir.tree()
    calibrated = []
    for member in _members(workdir):
        out = workdir / f"cal-{member.name}"
        assert main(_calibrate(workdir, [member], out.name)) == 0
        calibrated.append(out)
    assert main(_calibrate(workdir, calibrated, "ens.json")) == 0
    s2, s1 = workdir.scene()
    scene = ["--s2", str(s2), "--s1", str(s1), "--out", str(workdir / "o.tif"), "--dry-run", "--no-progress"]
    evaluate = ["--data-root", str(root), "--file-list", str(root / "files.csv"), "--split", "test", "--no-progress"]
    told = "sigma calibrated one by one; the ensemble adds the members' disagreement to it"
    how = "(dsen2cr weights calibrate-sigma --weights cal-m0.safetensors cal-m1.safetensors --out ensemble.json, then"
    for case, (weights, warned) in enumerate(
        ((calibrated, True), ([workdir / "ens.json"], False), (_members(workdir), False))
    ):
        caplog.clear()
        assert main(["remove-clouds", "--weights", *map(str, weights), *scene]) == 0
        assert (told in caplog.text, how in caplog.text) == (warned, warned), caplog.text
        caplog.clear()
        assert main(["evaluate", "--weights", *map(str, weights), *evaluate, "--out", str(workdir / f"ev{case}")]) == 0
        assert (told in caplog.text) == warned, caplog.text


def test_an_ensemble_file_names_its_members_as_given(workdir: Path) -> None:
    """A member given through a link (``latest.safetensors``) is named by the link, relative to the ensemble file,
    not by what it points to (".." folded away)."""
    members = _members(workdir)
    (workdir / "runs").mkdir()
    latest = workdir / "runs" / "latest.safetensors"
    latest.symlink_to(members[1])
    assert main(_calibrate(workdir, [members[0], workdir / "runs" / ".." / "runs" / latest.name], "ens.json")) == 0
    written = json.loads((workdir / "ens.json").read_text())
    assert [m["file"] for m in written["members"]] == ["m0.safetensors", "runs/latest.safetensors"]
    assert read_ensemble_file(workdir / "ens.json").members == (workdir / "m0.safetensors", latest)
