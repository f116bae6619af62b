"""``dsen2cr weights info``: what a weights file holds and what made it, for every kind ``--weights`` takes,
checked against the files read here with safetensors, hashlib, torch and onnx alone."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
import torch

from dsen2cr.cli import main

FIXTURES = Path(__file__).parent / "fixtures" / "keras"


def _info(capsys: pytest.CaptureFixture, *files: Path) -> list[dict]:
    """``weights info --json`` of ``files``, parsed."""
    capsys.readouterr()
    assert main(["weights", "info", "--json", *map(str, files)]) == 0
    return json.loads(capsys.readouterr().out)


def test_weights_info_of_a_trained_run(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    """A checkpoint and its export: kind, SHA-256, parameters (counted here from the tensors), model, variant,
    and the export's record of its source, version and training with its data; the text form says the same."""
    from safetensors import safe_open

    from dsen2cr import __version__

    config = workdir.config(optim={"epochs": 2, "batch_size": 2})
    assert main(["train", "--config", str(config), "--no-progress"]) == 0
    last = workdir / "run" / "checkpoints" / "last.ckpt"
    exported = workdir / "small.safetensors"
    assert main(["export", str(last), str(exported)]) == 0
    with safe_open(exported, "pt") as weights:
        metadata = weights.metadata()
        parameters = sum(weights.get_tensor(name).numel() for name in weights.keys())  # noqa: SIM118
    ckpt, safetensors = _info(capsys, last, exported)
    assert safetensors["kind"] == "safetensors weights" and ckpt["kind"] == "Lightning checkpoint"
    assert safetensors["sha256"] == hashlib.sha256(exported.read_bytes()).hexdigest()
    assert ckpt["sha256"] == hashlib.sha256(last.read_bytes()).hexdigest()
    assert safetensors["parameters"] == ckpt["parameters"] == parameters
    assert safetensors["variant"] == "dsen2cr-small" and safetensors["model"].startswith("dsen2cr B=4, F=32 with SAR")
    made = safetensors["provenance"]
    assert made["source"] == "last.ckpt" and made["version"] == __version__
    assert made["source_sha256"] == ckpt["sha256"]
    assert made["training"] == json.loads(metadata["dsen2cr_training"]) == ckpt["provenance"]["training"]
    assert made["training"]["data"]["files"] == "files.csv"
    assert main(["weights", "info", str(exported)]) == 0
    text = capsys.readouterr().out
    assert f"small.safetensors: safetensors weights, fp32, SHA-256 {safetensors['sha256']}" in text
    assert f"({parameters:,} parameters, variant dsen2cr-small)" in text
    assert f"written by: dsen2cr {__version__} from last.ckpt (SHA-256 {ckpt['sha256']})" in text
    checkpoint = torch.load(last, map_location="cpu", weights_only=True)
    assert f"training: saved after {checkpoint['epoch'] + 1} epochs ({checkpoint['global_step']} optimiser" in text
    assert "data: files.csv; train 1 patch (their ids' SHA-256 " in text and "seed 42" in text
    assert "; loss carl (" in text


def test_weights_info_says_validation_beside_training(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    """A run whose validation split holds a patch of a ROI training patches come from (a list split by patch) warned
    of it while it trained; its weights keep it (the training record's ``val_in_training_rois``) and weights info
    says it: the checkpoint was chosen on neighbours of what it trained on. A list split by ROI records 0."""
    root = workdir.tree()
    t = workdir.triplet(root, "ROIs1158_spring", 1, 1, size=48)
    line = f"2\tROIs1158_spring_s1/s1_1\tROIs1158_spring_s2/s2_1\tROIs1158_spring_s2_cloudy/s2_cloudy_1\t{t.s1.name}"
    (root / "mixed.csv").write_text((root / "files.csv").read_text() + line + "\n")
    for name, listed in (("clean", "files.csv"), ("mixed", "mixed.csv")):
        config = workdir.config(data={"file_list": str(root / listed)}, trainer={"out_dir": str(workdir / name)})
        assert main(["train", "--config", str(config), "--no-progress"]) == 0
        exported = workdir / f"{name}.safetensors"
        assert main(["export", str(workdir / name / "checkpoints" / "last.ckpt"), str(exported)]) == 0
        (info,) = _info(capsys, exported)
        assert info["provenance"]["training"]["data"]["val_in_training_rois"] == (1 if name == "mixed" else 0)
        kept = workdir / name / "logs" / "warnings.log"  # the run's folder keeps what it warned of, with when
        warned = kept.read_text() if kept.exists() else ""
        assert ("1 of the 2 validation patches lie in ROIs that training patches come from" in warned) == (
            name == "mixed"
        ), warned
        assert name == "clean" or re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ ", warned)  # UTC
        assert main(["weights", "info", str(exported)]) == 0
        said = "val 2 patches (their ids' SHA-256 "
        text = capsys.readouterr().out
        assert ("1 of them in ROIs training patches come from" in text) == (name == "mixed"), text
        assert name == "clean" or said in text


def test_weights_info_of_a_checkpoint_saved_mid_epoch(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    """A SLURM requeue checkpoint is saved in the middle of an epoch: its record says how far the run had come
    (it said "after 2 epochs" of a run in its second, from the epoch number alone). Made here as Lightning saves
    one at a batch's end: the epoch started but not processed, the batches of it processed."""
    config = workdir.config(optim={"epochs": 2, "batch_size": 2})
    assert main(["train", "--config", str(config), "--no-progress"]) == 0
    checkpoint = torch.load(workdir / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    loops = checkpoint["loops"]["fit_loop"]
    for counts in loops["epoch_progress"].values():
        counts["processed"] = counts["completed"] = counts["started"] - 1  # epoch 2 under way
    loops["epoch_loop.batch_progress"]["current"].update(ready=3, started=3, processed=3, completed=2)  # 3rd's end
    middle = workdir / "requeue.ckpt"
    torch.save(checkpoint, middle)
    (record,) = _info(capsys, middle)
    training = record["provenance"]["training"]
    assert (training["epoch"], training["finished_epochs"], training["epoch_batches"]) == (1, 1, 3)
    assert main(["weights", "info", str(middle)]) == 0
    text = capsys.readouterr().out
    assert f"training: saved after 1 epoch and 3 batches ({checkpoint['global_step']} optimiser steps)" in text


def test_weights_info_of_keras_and_onnx_files(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The original's Keras file (no record: said so) and ONNX exports (precision, source, int8 calibration)."""
    pytest.importorskip("onnxruntime")
    keras = FIXTURES / "keras224_multigpu_sar.h5"
    (info,) = _info(capsys, keras)
    assert info["kind"] == "Keras HDF5" and info["model"] == "dsen2cr B=5, F=8 with SAR" and info["provenance"] == {}
    assert main(["weights", "info", str(keras)]) == 0
    assert "training: not recorded" in capsys.readouterr().out
    weights = tmp_path / "k.safetensors"
    assert main(["convert-keras", str(keras), str(weights)]) == 0
    assert main(["export-onnx", "--weights", str(weights), str(tmp_path / "k.onnx")]) == 0
    (onnx,) = _info(capsys, tmp_path / "k.onnx")
    assert onnx["kind"] == "ONNX model" and onnx["precision"] == "fp32" and onnx["model"] == info["model"]
    assert onnx["provenance"]["source"] == "k.safetensors"
    assert onnx["provenance"]["source_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    int8 = ["export-onnx", "--weights", str(weights), "--int8", "--calibration-patches", "2", str(tmp_path / "q.onnx")]
    assert main(int8) == 0
    (quantised,) = _info(capsys, tmp_path / "q.onnx")
    assert quantised["precision"] == "int8" and quantised["provenance"]["int8_calibration"]["method"] == "minmax"
    assert main(["weights", "info", str(tmp_path / "q.onnx")]) == 0
    assert "int8 calibration: minmax on 2 crops of 4 patches (the bundled sample, train)" in capsys.readouterr().out


def test_weights_info_refuses_what_is_not_weights(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A text file and a missing file: one line naming the file, exit 2, as --weights says it."""
    (tmp_path / "notes.safetensors").write_text("not weights\n")
    for name, words in (("notes.safetensors", "notes.safetensors: "), ("missing.ckpt", "missing.ckpt: ")):
        assert main(["weights", "info", str(tmp_path / name)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0], err


def test_the_training_line_counts_one_step_as_one() -> None:
    """A run of one optimiser step says so in the singular ('1 optimiser steps' before), as epochs and batches do."""
    from dsen2cr.weights_info import _training_line

    record = {"epoch": 0, "global_step": 1, "finished_epochs": 1, "loss": {"name": "carl"}}
    assert _training_line(record) == "training: saved after 1 epoch (1 optimiser step); loss carl"
    assert "(2 optimiser steps)" in _training_line({**record, "global_step": 2})
