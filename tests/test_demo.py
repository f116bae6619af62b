"""The demo end to end with a one-epoch config (the full demo runs in `make demo`)."""

from __future__ import annotations

from pathlib import Path

import rasterio
import yaml

from dsen2cr.config import bundled_config_path
from dsen2cr.demo import DEMO_CONFIG, run_demo


def test_demo_writes_its_report(tmp_path: Path) -> None:
    settings = yaml.safe_load(bundled_config_path(DEMO_CONFIG).read_text())
    settings["optim"]["epochs"] = 1
    settings["data"].update(repeats=1, num_workers=0)
    config = tmp_path / "demo.yaml"
    config.write_text(yaml.safe_dump(settings))
    report = run_demo(tmp_path / "out", config_path=str(config))
    text = report.read_text()
    assert "| DSen2-CR small, with SAR |" in text and "| identity (cloudy input) |" in text
    out = tmp_path / "out"
    for name in ("dsen2cr-demo-sar.safetensors", "dsen2cr-demo-nosar.safetensors"):
        assert (out / "weights" / name).is_file()
    with rasterio.open(out / "scene" / "T33UUU_20170216_cloudfree.tif") as scene:
        assert scene.count == 13 and scene.crs.to_epsg() == 32633 and scene.shape == (768, 640)
    assert (out / "scene" / "T33UUU_20170216_before_after.png").is_file()
    assert (out / "evaluation-sar" / "summary.md").is_file()
