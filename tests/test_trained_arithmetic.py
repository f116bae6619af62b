"""Weights say the arithmetic they were trained in (issue #27's "a name is a promise": the paper config promises
IEEE fp32, and weights are what ``train`` writes): read inside the run, on its device, from the flags PyTorch
computes by (not from the config's names), each start of a run that computed otherwise recorded from the epoch it
started at; ``weights info`` says it of the checkpoint and of its export, and the run's log at its start."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
import torch

import dsen2cr.training.module as module
import dsen2cr.training.train as train
from dsen2cr.cli import main
from dsen2cr.config import load_config
from dsen2cr.precision import float32_arithmetic

TORCH = torch.__version__


def _entry(start: int, precision: str, mode: str) -> dict:
    """A record's entry: a start of the run on this CPU, one process."""
    return {
        "from_epoch": start,
        "from_batch": 0,
        "precision": precision,
        "convolutions": mode,
        "matmuls": mode,
        "device": "cpu",
        "processes": 1,
        "torch": TORCH,
    }


def _arithmetic(capsys: pytest.CaptureFixture, path: Path) -> tuple[list[dict] | None, list[str]]:
    """The weights' recorded arithmetic (``weights info --json``) and the text form's ``arithmetic:`` lines."""
    capsys.readouterr()
    assert main(["weights", "info", "--json", str(path)]) == 0
    (info,) = json.loads(capsys.readouterr().out)
    assert main(["weights", "info", str(path)]) == 0
    text = capsys.readouterr().out.splitlines()
    return info["provenance"]["training"].get("arithmetic"), [s.strip() for s in text if "arithmetic:" in s]


def test_the_paper_configs_weights_say_ieee_fp32(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    config = workdir.config(trainer={"out_dir": str(workdir / "run"), "matmul_precision": "highest"})
    assert main(["train", "--config", str(config), "--no-progress"]) == 0
    words = f"IEEE fp32 convolutions and matmuls (trainer.precision 32-true) on cpu, 1 process, torch {TORCH}"
    assert f"arithmetic: {words}" in capsys.readouterr().out
    last, exported = workdir / "run" / "checkpoints" / "last.ckpt", workdir / "paper.safetensors"
    assert main(["export", str(last), str(exported)]) == 0
    for path in (last, exported):
        assert _arithmetic(capsys, path) == ([_entry(0, "32-true", "ieee")], [f"arithmetic: {words}"])


@pytest.mark.parametrize(
    ("matmul_precision", "precision", "set_by_the_run", "recorded", "words"),
    [
        ("highest", "32-true", True, "ieee", "IEEE fp32 convolutions and matmuls (trainer.precision 32-true)"),
        ("high", "32-true", True, "tf32", "TF32 convolutions and matmuls (trainer.precision 32-true)"),
        # the run's own setting skipped: the caller's TF32 flags are what computed, whatever the config says
        ("highest", "32-true", False, "tf32", "TF32 convolutions and matmuls (trainer.precision 32-true)"),
        (
            "highest",
            "bf16-mixed",
            True,
            "ieee",
            "bf16-mixed (16-bit autocast; the rest IEEE fp32 convolutions and matmuls)",
        ),
    ],
)
def test_the_record_is_what_the_flags_were_inside_the_run(
    workdir: Path,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    matmul_precision: str,
    precision: str,
    set_by_the_run: bool,
    recorded: str,
    words: str,
) -> None:
    """On a device that computes TF32 (stood in: this CPU said to), the record reads the flags inside the run."""
    monkeypatch.setattr(module, "has_tf32", lambda device: True)
    if not set_by_the_run:
        monkeypatch.setattr(train, "training_arithmetic", lambda matmul_precision: contextlib.nullcontext())
    overrides = [f"trainer.matmul_precision={matmul_precision}", f"trainer.precision={precision}"]
    with float32_arithmetic("tf32"):  # the caller's
        train.run_training(load_config(workdir.config(), overrides), progress=False)
    record, lines = _arithmetic(capsys, workdir / "run" / "checkpoints" / "last.ckpt")
    assert record == [_entry(0, precision, recorded)]
    assert lines == [f"arithmetic: {words} on cpu, 1 process, torch {TORCH}"]


def test_a_resume_that_computes_otherwise_is_recorded_from_its_epoch(
    workdir: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run started where TF32 computes (stood in) and resumed where it does not (a CPU; the device may change at
    a resume) keeps both, each from the epoch it trained first; a resume that computes alike adds nothing."""
    config = str(workdir.config(trainer={"out_dir": str(workdir / "run"), "matmul_precision": "high"}))
    last = workdir / "run" / "checkpoints" / "last.ckpt"
    monkeypatch.setattr(module, "has_tf32", lambda device: True)
    assert main(["train", "--config", config, "--no-progress"]) == 0
    monkeypatch.setattr(module, "has_tf32", lambda device: False)
    for epochs in (2, 3):
        assert (
            main(["train", "--config", config, "--resume", str(last), f"optim.epochs={epochs}", "--no-progress"]) == 0
        )
    record, lines = _arithmetic(capsys, last)
    assert record == [_entry(0, "32-true", "tf32"), _entry(1, "32-true", "ieee")]
    rest = f"(trainer.precision 32-true) on cpu, 1 process, torch {TORCH}"
    assert lines == [
        f"arithmetic: from epoch 1: TF32 convolutions and matmuls {rest}; "
        f"from epoch 2: IEEE fp32 convolutions and matmuls {rest}"
    ]
