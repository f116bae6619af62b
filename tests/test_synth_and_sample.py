"""Synthetic data and the bundled real sample: real GeoTIFFs, plausible clouds, working file lists."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio

from dsen2cr.cloud_detection import cloud_shadow_mask
from dsen2cr.data.layout import read_file_list, select_split
from dsen2cr.data.sample import copy_sample, sample_dataset_root, sample_file_list, sample_scene
from dsen2cr.data.synth import add_synthetic_clouds, synthetic_clear_scene
from dsen2cr.errors import DSen2CRError


def test_synthetic_tree_is_real_georeferenced_geotiff(synthetic_tree: Path) -> None:
    triplets = read_file_list(synthetic_tree / "files.csv", synthetic_tree)
    assert len(triplets) == 10
    assert {t.split for t in triplets} == {1, 2, 3}
    t = triplets[0]
    for path, count, dtype in ((t.s1, 2, "float32"), (t.s2, 13, "uint16"), (t.s2_cloudy, 13, "uint16")):
        with rasterio.open(path) as src:
            assert (src.count, src.dtypes[0], src.shape) == (count, dtype, (96, 96))
            assert src.crs.is_projected and 32601 <= src.crs.to_epsg() <= 32660  # UTM north
            assert (src.transform.a, src.transform.e) == (10.0, -10.0)
            assert src.profile["compress"] == "deflate" and src.block_shapes[0] == (96, 96)


def test_synthetic_clouds_are_plausible() -> None:
    rng = np.random.default_rng(0)
    clear, s1 = synthetic_clear_scene((128, 128), rng)
    cloudy, opacity = add_synthetic_clouds(clear, rng)
    assert -35 < s1.mean() < 0
    thick, free = opacity > 0.9, opacity == 0
    assert thick.sum() > 100 and free.sum() > 100
    visible = slice(1, 4)  # B2-B4
    assert cloudy[visible][:, thick].mean() > 4000 > clear[visible][:, thick].mean()
    # flat in the visible: B2, B3, B4 of a thick cloud within 5 % of each other
    means = cloudy[visible][:, thick].mean(axis=1)
    assert means.max() / means.min() < 1.05
    thin = (opacity > 0.2) & (opacity < 0.8)
    assert cloudy[10][thin].mean() > clear[10][thin].mean() + 50  # cirrus band B10 sees thin cloud
    # shadows darken some cloud-free ground
    assert (cloudy[7][free] < 0.8 * clear[7][free]).sum() > 50
    # and the detector finds the thick cloud
    assert (cloud_shadow_mask(cloudy)[thick] == 1).mean() > 0.9


def test_bundled_sample_triplets() -> None:
    triplets = read_file_list(sample_file_list(), sample_dataset_root())
    assert len(triplets) == 6
    assert [len(select_split(triplets, s)) for s in ("train", "val", "test")] == [4, 1, 1]
    for t in triplets:
        with rasterio.open(t.s2) as s2, rasterio.open(t.s1) as s1:
            assert s2.count == 13 and s1.count == 2 and s2.shape == s1.shape == (120, 120)
            assert s2.crs == s1.crs and s2.transform == s1.transform
            assert s2.descriptions[10] == "B10" and (s2.read(11) == 15).all()  # the documented B10 fill


def test_bundled_scene() -> None:
    with rasterio.open(sample_scene()) as src:
        assert (src.count, src.shape, src.crs.to_epsg(), src.transform.a) == (13, (768, 640), 32633, 10.0)
        scene = src.read()
    cloud = cloud_shadow_mask(scene) == 1
    assert 0.02 < cloud.mean() < 0.5  # partly cloudy


def test_copy_sample(tmp_path: Path) -> None:
    out = copy_sample(tmp_path / "sample")
    assert (out / "NOTICE").is_file() and (out / "sen12mscr" / "files.csv").is_file()
    assert len(read_file_list(out / "sen12mscr" / "files.csv", out / "sen12mscr")) == 6
    with pytest.raises(DSen2CRError, match="already holds the bundled sample; pass --overwrite to replace it"):
        copy_sample(out)
    (out / "NOTICE").write_text("changed")
    assert copy_sample(out, overwrite=True) == out  # an earlier copy is replaced whole
    assert (out / "NOTICE").read_text() != "changed"
    (out / "mine.txt").write_text("not the sample's")
    with pytest.raises(DSen2CRError, match=r"mine\.txt"):
        copy_sample(out, overwrite=True)  # a folder holding anything else is never emptied


def test_data_cli_synth_and_index(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from dsen2cr.cli import main

    assert main(["data", "synth", "--out", str(tmp_path / "tree"), "--count", "4", "--size", "32"]) == 0
    (tmp_path / "test.txt").write_text("ROIs1868_summer/2\n")
    index = ["data", "index", str(tmp_path / "tree"), "--out", str(tmp_path / "idx.csv")]
    assert main([*index, "--test-rois", str(tmp_path / "test.txt")]) == 0
    assert "indexed 4 triplets (train 2, val 0, test 2)" in capsys.readouterr().out
    assert main(["data", "index", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x.csv")]) == 2
    result = capsys.readouterr()
    assert result.err.strip().endswith("nowhere: dataset root is not a folder")
    assert "Traceback" not in result.err and not (tmp_path / "x.csv").exists()
