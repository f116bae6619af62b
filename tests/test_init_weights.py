"""Fine-tuning: ``model.init_weights`` starts a new run from weights (a published Keras file, exported weights,
a checkpoint), checked against the files read here with h5py, safetensors and hashlib; the runs use a
learning rate of 1e-30, so that their weights after an epoch are still the ones they started from."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import h5py
import pytest
import torch
from safetensors.torch import load_file

from dsen2cr.cli import main
from dsen2cr.weights import TRAINING_KEY, load_model, load_model_and_record

KERAS_FILE = Path(__file__).parent / "fixtures" / "keras" / "keras224_full_sar.h5"  # B=5, F=8 with SAR


def _train(workdir: Path, *overrides: str, **model: object) -> int:
    """One epoch of the ``workdir`` config at a learning rate too small to move any weight."""
    config = workdir.config(model={"variant": "dsen2cr-small", **model}, optim={"lr": 1e-30})  # type: ignore[attr-defined]
    return main(["train", "--config", str(config), "--no-progress", *overrides])


def _record(checkpoint: Path) -> dict:
    """The training record of a checkpoint."""
    return json.loads(load_model_and_record(checkpoint)[1][TRAINING_KEY])


def _started_from(checkpoint: Path) -> dict:
    """The training record's ``init_weights`` of a checkpoint."""
    return _record(checkpoint)["init_weights"]


def test_a_run_starts_from_a_published_keras_file(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    """Weights in the published Keras layout: the run's network starts from them (the head's kernel as h5py reads
    it, transposed to PyTorch's layout; every tensor as the Keras import gives it), and its checkpoints and
    ``weights info`` name the file and its SHA-256."""
    status = _train(workdir, f"model.init_weights={KERAS_FILE}", num_blocks=5, num_features=8)
    out = capsys.readouterr()
    assert status == 0, out.err
    assert f"model.init_weights: starting from {KERAS_FILE.name} (SHA-256 " in out.out
    last = workdir / "run" / "checkpoints" / "last.ckpt"
    trained = load_model(last).state_dict()
    with h5py.File(KERAS_FILE) as file:  # the first convolution (the head): Keras (kh, kw, in, out)
        kernel = torch.from_numpy(file["model_weights/conv2d_1/conv2d_1/kernel:0"][()]).permute(3, 2, 0, 1)
    torch.testing.assert_close(trained["head.weight"], kernel, rtol=0, atol=1e-20)
    for name, tensor in load_model(KERAS_FILE).state_dict().items():
        torch.testing.assert_close(trained[name], tensor, rtol=0, atol=1e-20)
    fresh = _train(workdir, "--overwrite", num_blocks=5, num_features=8)  # the same run without init_weights
    assert fresh == 0 and not torch.allclose(load_model(last).state_dict()["head.weight"], kernel, atol=1e-3)
    assert TRAINING_KEY in load_model_and_record(last)[1] and "init_weights" not in _record(last)
    status = _train(workdir, "--overwrite", f"model.init_weights={KERAS_FILE}", num_blocks=5, num_features=8)
    assert status == 0
    sha = hashlib.sha256(KERAS_FILE.read_bytes()).hexdigest()
    assert _started_from(last) == {"file": KERAS_FILE.name, "sha256": sha}
    capsys.readouterr()
    assert main(["weights", "info", str(last)]) == 0
    assert f"  started from: {KERAS_FILE.name} (SHA-256 {sha})\n" in capsys.readouterr().out


def test_a_variance_head_starts_fresh_on_weights_without_one(workdir: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Weights without a variance head fine-tuned as a model with one: every tensor they hold is copied (as
    safetensors reads it), the head keeps its fresh initialisation, and the log and the record say so."""
    source = workdir.weights("dsen2cr-small")  # type: ignore[attr-defined]
    with caplog.at_level(logging.INFO, logger="dsen2cr"):
        status = _train(workdir, f"model.init_weights={source}", "loss.name=gnll", uncertainty="diag")
    assert status == 0
    assert "the variance head starts fresh (the weights have none)" in caplog.text
    last = workdir / "run" / "checkpoints" / "last.ckpt"
    trained = load_model(last).state_dict()
    held = load_file(source)
    assert set(held) < set(trained)
    for name, tensor in held.items():
        torch.testing.assert_close(trained[name], tensor, rtol=0, atol=1e-20)
    head = set(trained) - set(held)
    assert head and all(trained[name].abs().sum() > 0 for name in head if name.endswith("weight"))
    assert _started_from(last)["fresh"] == "variance head"


def test_a_fine_tuned_run_resumes_without_its_initial_weights(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    """A resume continues from the checkpoint (the initial weights' file is not read again: it may be gone) and its
    checkpoints keep the record of the weights the run started from."""
    source = workdir / "initial.safetensors"
    source.write_bytes(workdir.weights("dsen2cr-small").read_bytes())  # type: ignore[attr-defined]
    sha = hashlib.sha256(source.read_bytes()).hexdigest()
    assert _train(workdir, f"model.init_weights={source}") == 0, capsys.readouterr().err
    source.unlink()
    last = workdir / "run" / "checkpoints" / "last.ckpt"
    status = _train(workdir, f"model.init_weights={source}", "optim.epochs=2", "--resume", str(last))
    assert status == 0, capsys.readouterr().err
    assert _record(last)["finished_epochs"] == 2
    assert _started_from(last) == {"file": "initial.safetensors", "sha256": sha}
