"""The conventions every command shares (docs/design.md §2-§3), each a trap a newcomer hit before: --overwrite
replaces only what the command wrote, no abbreviated options, bugs are not reported as bad input, split names,
ROI-list configs, device auto, and backends that leave the caller's model and process alone."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from rasterio.crs import CRS

from dsen2cr import create_model
from dsen2cr.cli import main
from dsen2cr.data.layout import Triplet
from dsen2cr.errors import DSen2CRError

UTM32N = CRS.from_epsg(32632)


def test_demo_overwrite_refuses_a_folder_holding_other_files(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "thesis.tex").write_text("years of work")
    (home / "report.md").write_text("an earlier demo report")
    status = main(["demo", "--out", str(home), "--overwrite"])
    err = capsys.readouterr().err
    assert status == 2
    assert "thesis.tex" in err and "not part of a demo" in err
    assert (home / "thesis.tex").read_text() == "years of work"
    assert (home / "report.md").read_text() == "an earlier demo report"


def test_overwrite_replaces_only_the_commands_own_entries(tmp_path: Path) -> None:
    from dsen2cr.outputs.files import prepare_output_folder

    out = tmp_path / "eval"
    (out / "predictions").mkdir(parents=True)
    (out / "predictions" / "p.tif").write_bytes(b"old")
    (out / "summary.md").write_text("old")
    owned = ("summary.md", "predictions", "previews")
    with pytest.raises(DSen2CRError, match="already holds an evaluation; pass --overwrite"):
        prepare_output_folder(out, owned=owned, overwrite=False, what="an evaluation")
    prepare_output_folder(out, owned=owned, overwrite=True, what="an evaluation")
    assert out.is_dir() and list(out.iterdir()) == []
    (out / "notes.txt").write_text("mine")
    with pytest.raises(DSen2CRError, match=r"notes\.txt"):
        prepare_output_folder(out, owned=owned, overwrite=True, what="an evaluation")
    assert (out / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize(
    "argv",
    [
        ["remove-clouds", "--weights", "w.safetensors", "--s2", "s2.tif", "--out", "o.tif", "--mask-o", "m.tif"],
        ["remove-clouds", "--weights", "w.safetensors", "--s2", "s2.tif", "--ou", "o.tif"],
        ["evaluate", "--weight", "w.safetensors", "--data-root", ".", "--rois", "r.txt", "--out", "e"],
        ["data", "index", ".", "--ou", "files.csv"],
    ],
    ids=["--mask-o for --mask-out", "--ou for --out", "--weight for --weights", "data index --ou"],
)
def test_abbreviated_options_are_refused(argv: list[str], capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    # the abbreviation is not taken for the option: it is refused, or the option it abbreviates is missing
    assert "unrecognized arguments" in err or "the following arguments are required" in err


def test_a_bug_is_an_internal_error_not_bad_input(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import dsen2cr.cli.config as config_command

    def buggy(args: object) -> int:
        raise ValueError("invalid literal for int() with base 10: 'x'")

    monkeypatch.setattr(config_command, "run", buggy)
    assert main(["config", "paper"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "internal error (ValueError: invalid literal" in err and "--debug" in err
    with pytest.raises(ValueError, match="invalid literal"):
        main(["--debug", "config", "paper"])


def test_calibration_split_names(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    from dsen2cr.config import DataSection
    from dsen2cr.data.layout import resolve_split, select_split, split_number

    assert split_number("validation") == split_number("val") == 2
    assert resolve_split(DataSection(), "validation") == resolve_split(DataSection(), "val")
    with pytest.raises(DSen2CRError, match="'holdout' is not a split"):
        select_split(resolve_split(DataSection(), "val"), "holdout")
    with pytest.raises(SystemExit):
        main(["export-onnx", "--weights", "w.safetensors", "--int8", "--calibration-split", "validation", "o.onnx"])
    err = capsys.readouterr().err
    assert "invalid choice: 'validation'" in err and "invalid literal" not in err


def test_roi_list_config_reads_test_rois(tmp_path: Path, write_release_triplet: Callable[..., Triplet]) -> None:
    from dsen2cr.config import load_config
    from dsen2cr.data.layout import resolve_split

    root = tmp_path / "data"
    for roi in (1, 2, 3):
        write_release_triplet(root, "ROIs1158_spring", roi, 0)
    for split, roi in (("train", 1), ("val", 2), ("test", 3)):
        (tmp_path / f"{split}.txt").write_text(f"ROIs1158_spring/{roi}\n")
    overrides = [f"data.root={root}"] + [f"data.{s}_rois={tmp_path / s}.txt" for s in ("train", "val", "test")]
    config = load_config("small-cpu", overrides)
    assert [t.roi for t in resolve_split(config.data, "test")] == ["ROIs1158_spring/3"]
    config = load_config("small-cpu", overrides[:-1])
    with pytest.raises(DSen2CRError, match=r"data\.test_rois with a release root"):
        resolve_split(config.data, "test")


def test_device_defaults_to_auto() -> None:
    from dsen2cr.auto import resolve_device
    from dsen2cr.cli import build_parser

    parser = build_parser()
    for argv in (
        ["evaluate", "--weights", "w", "--data-root", ".", "--rois", "r", "--out", "e"],
        ["remove-clouds", "--weights", "w", "--s2", "a.tif", "--out", "o.tif"],
        ["demo"],
    ):
        assert parser.parse_args(argv).device == "auto"
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    with pytest.raises(DSen2CRError, match="'foo' is not a torch device"):
        resolve_device("foo")
    if not torch.cuda.is_available():
        with pytest.raises(DSen2CRError, match="sees no CUDA GPU"):
            resolve_device("cuda")


@pytest.mark.slow  # compiles the network: ~12 s
def test_building_a_backend_leaves_the_model_and_the_process_alone() -> None:
    import torch._inductor.config as inductor_config

    from dsen2cr.backends import build_backend

    torch.manual_seed(0)
    model = create_model("dsen2cr-small").eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    predict = build_backend(model, "compiled")
    rng = np.random.default_rng(0)
    predict(rng.uniform(0, 1, (1, 13, 32, 32)).astype(np.float32), rng.uniform(0, 1, (1, 2, 32, 32)).astype(np.float32))
    assert inductor_config.freezing is False
    for name, value in model.state_dict().items():
        assert value.is_contiguous(), name  # not converted to channels-last in place
        torch.testing.assert_close(value, before[name], rtol=0, atol=0)


def test_python_api_uses_the_automatic_settings(tmp_path: Path) -> None:
    from rasterio.transform import from_origin

    from dsen2cr.auto import resolve_tile
    from dsen2cr.outputs.geotiff import write_geotiff
    from dsen2cr.predictor import predictor_from_model
    from dsen2cr.scene.remove import remove_clouds
    from dsen2cr.scene.tiles import default_overlap, plan_tiles
    from dsen2cr.settings import SceneJob, SceneSettings

    s2 = np.random.default_rng(0).integers(1, 8000, (13, 300, 700)).astype(np.uint16)
    write_geotiff(tmp_path / "s2.tif", s2, crs=UTM32N, transform=from_origin(500000, 5000000, 10, 10))
    predictor = predictor_from_model(create_model("dsen2cr-small-nosar"), device="cpu")
    assert dataclasses.asdict(predictor.config) == dataclasses.asdict(create_model("dsen2cr-small-nosar").config)
    report = remove_clouds(
        predictor, SceneJob(str(tmp_path / "s2.tif"), None, tmp_path / "out.tif"), SceneSettings(progress=False)
    )
    tile = resolve_tile(predictor.config, "auto", device="cpu", batch_size=1, overlap=default_overlap(predictor.config))
    assert tile == 320
    assert report.tiles == len(plan_tiles(300, 700, tile, default_overlap(predictor.config)))
