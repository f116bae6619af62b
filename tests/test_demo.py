"""The demo end to end with a one-epoch config (the full demo runs in `make demo`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import rasterio

from dsen2cr.demo import DEMO_SYNTHETIC, run_demo


def test_demo_writes_its_report(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The report, the training tree, weights that record what made them (the demo's weights said nothing of
    their training), the scene's outputs and pictures with their provenance, the sigma model's calibration."""
    with caplog.at_level("INFO", logger="dsen2cr.demo"):
        report = run_demo(tmp_path / "out", overrides=["optim.epochs=1", "data.repeats=1", "data.num_workers=0"])
    # each training's line names the model once ("B=4, F=32 with SAR with SAR" said it twice)
    trainings = [r.getMessage() for r in caplog.records if "[demo] training" in r.getMessage()]
    assert (
        trainings[0]
        == f"[demo] training the model with SAR (B=4, F=32 with SAR, 1 epoch) -> {tmp_path / 'out' / 'train-sar'}"
    )
    assert trainings[2].startswith("[demo] training the model without SAR, with sigma (B=4, F=32 without SAR, variance")
    text = report.read_text()
    assert "| DSen2-CR small, with SAR |" in text and "| identity (cloudy input) |" in text
    assert "STAC item, to add it to a catalogue: `scene/T33UUU_20170216_cloudfree.json`" in text
    out = tmp_path / "out"
    # the training tree: the bundled sample with its splits plus synthetic patches, all of those train
    rows = [line.split("\t") for line in (out / "data" / "files.csv").read_text().splitlines()]
    sample = [r for r in rows if "bigearthnet" in r[4]]
    assert sorted(r[0] for r in sample) == ["1", "1", "1", "1", "2", "3"]
    assert {r[0] for r in rows if r not in sample} == {"1"} and len(rows) == 6 + DEMO_SYNTHETIC["count"]
    assert "2 held-out images" in text or "(2 images" in text
    from safetensors import safe_open

    for name in ("dsen2cr-demo-sar.safetensors", "dsen2cr-demo-nosar.safetensors"):
        with safe_open(out / "weights" / name, "pt") as weights:  # what made them, as `export` records it
            metadata = weights.metadata()
        training = json.loads(metadata["dsen2cr_training"])
        assert metadata["dsen2cr_source"] == "last.ckpt" and training["epoch"] == 0
        assert training["data"]["train_patches"] == sum(row[0] == "1" for row in rows)
    with rasterio.open(out / "scene" / "T33UUU_20170216_cloudfree.tif") as scene:
        assert scene.count == 13 and scene.crs.to_epsg() == 32633 and scene.shape == (768, 640)
    assert (out / "scene" / "T33UUU_20170216_before_after.png").is_file()
    item = json.loads((out / "scene" / "T33UUU_20170216_cloudfree.json").read_text())  # its STAC item
    assert item["properties"]["datetime"] == "2017-02-16T10:21:01Z"
    assert {key: asset["href"] for key, asset in item["assets"].items()} == {
        "image": "T33UUU_20170216_cloudfree.tif",
        "cloud_mask": "T33UUU_20170216_cloud_shadow_mask.tif",
        "preview": "T33UUU_20170216_before_after.png",
    }
    from PIL import Image

    with Image.open(out / "scene" / "T33UUU_20170216_comparison.png") as comparison:  # records what made it
        made_by = dict(comparison.text)
    assert made_by["DSEN2CR_WEIGHTS"] == "dsen2cr-demo-nosar.safetensors" and "DSEN2CR_WEIGHTS_SHA256" in made_by
    assert made_by["DSEN2CR_KEEP_CLEAR"] == "middle panel: no (every pixel); right panel: yes, feather 5 px"
    assert (out / "evaluation-sar" / "summary.md").is_file()
    # the third model predicts sigma: evaluated on it, and its sigma map of the real scene is 0 where kept
    assert "| DSen2-CR small, without SAR, with sigma |" in text and "+-1 sigma coverage" in text
    assert (out / "evaluation-uncertainty" / "calibration.png").is_file()
    # the report's calibration is the diagram's (pooled over both images), the per-image mean named as such
    pooled = json.loads((out / "evaluation-uncertainty" / "calibration.json").read_text())
    assert f"UCE {pooled['uce']:.4f} (" in text and f"coverage {pooled['coverage_1sigma']:.3f} (" in text
    assert f"AUSE {pooled['ause']:.4f} (pooled" in text
    assert "averaged per image" in text
    with rasterio.open(out / "scene" / "T33UUU_20170216_sigma.tif") as sigma:
        values = sigma.read()
        assert sigma.count == 13 and values.min() == 0 and values.max() > 0
    assert (out / "scene" / "T33UUU_20170216_sigma.png").is_file()


@pytest.mark.slow
def test_full_demo_beats_the_identity_baseline(tmp_path: Path) -> None:
    """The real demo (about 5 minutes): the three models remove clouds better than leaving them (under the clouds
    and in RMSE by a fifth at least; in MAE over the whole image, where the identity is exact on clear pixels, below
    it: the sigma model's was 0.73 to 0.82 of it on the CPUs it ran on), and the model with sigma is calibrated
    within 0.683 +- 0.1 on the held-out images."""
    import json

    run_demo(tmp_path / "out")
    for model in ("sar", "nosar", "uncertainty"):
        summary = json.loads((tmp_path / "out" / f"evaluation-{model}" / "summary.json").read_text())["summary"]
        for metric, ratio in (("mae", 1.0), ("rmse", 0.8), ("mae_cloudy", 0.8)):
            assert summary["model"][metric]["mean"] < ratio * summary["identity"][metric]["mean"], (model, metric)
        assert summary["model"]["psnr"]["mean"] > summary["identity"]["psnr"]["mean"] + 3
    summary = json.loads((tmp_path / "out" / "evaluation-uncertainty" / "summary.json").read_text())["summary"]
    assert abs(summary["model"]["coverage_1sigma"]["mean"] - 0.683) < 0.1
