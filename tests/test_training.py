"""Training: configs, overfitting a few samples, exact resume, NaN stop, two-process DDP, export."""

from __future__ import annotations

import csv
import json
import math
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from dsen2cr.config import load_config
from dsen2cr.data.layout import Triplet
from dsen2cr.errors import DSen2CRError
from dsen2cr.losses import carl_loss
from dsen2cr.weights import load_model, save_weights


def _config(tmp_path: Path, root: Path, **extra: str) -> Path:
    """A tiny CPU config over a synthetic tree."""
    settings = {
        "model": {"variant": "dsen2cr-small", "num_blocks": 2, "num_features": 16},
        "data": {"root": str(root), "file_list": str(root / "files.csv"), "crop_size": 32, "num_workers": 0},
        "optim": {"lr": 2e-3, "batch_size": 4, "epochs": 2},
        "trainer": {
            "out_dir": str(tmp_path / "run"),
            "accelerator": "cpu",
            "devices": 1,
            "deterministic": True,
            "log_every_n_steps": 1,
            "seed": 7,
        },
    }
    for key, value in extra.items():
        section, name = key.split("__")
        settings[section][name] = yaml.safe_load(value)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(settings))
    return path


def _train(config_path: Path, *overrides: str, resume: Path | None = None) -> Path:
    from dsen2cr.training.train import run_training

    return run_training(
        load_config(config_path, list(overrides)), resume=resume, overwrite=resume is None, progress=False
    )


def test_unknown_key_and_wrong_type(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  learning_rate: 0.1\n")
    with pytest.raises(DSen2CRError, match=r"c.yaml: optim: unknown key 'learning_rate'; did you mean 'lr'\?"):
        load_config(path)
    path.write_text("optim:\n  batch_size: sixteen\n")
    with pytest.raises(DSen2CRError, match=r"c.yaml: optim.batch_size: expected int, got 'sixteen'"):
        load_config(path)
    with pytest.raises(DSen2CRError, match=r"unknown key 'modle'; did you mean 'model'"):
        load_config(None, ["modle.variant=dsen2cr"])
    with pytest.raises(DSen2CRError, match=r"model\.variant: unknown variant 'huge'"):
        load_config(None, ["model.variant=huge"])
    config = load_config(None, ["optim.lr=1e-4", "trainer.devices=2", "model.include_sar=false"])
    assert config.optim.lr == 1e-4 and config.trainer.devices == 2
    assert config.model.model_config().include_sar is False
    # paper defaults
    default = load_config(None)
    assert (default.optim.lr, default.optim.betas, default.optim.eps, default.optim.momentum_decay) == (
        7e-5,
        [0.9, 0.999],
        1e-8,
        0.004,
    )
    assert (default.optim.batch_size, default.optim.epochs, default.data.crop_size) == (16, 8, 128)
    assert (default.loss.lam, default.loss.cloud_threshold) == (1.0, 0.2)


def test_shipped_configs_load() -> None:
    from dsen2cr.choices import bundled_config_names

    assert bundled_config_names() == ["paper", "paper-fast", "paper-uncertainty", "small-cpu"]
    for name in bundled_config_names():
        load_config(name)


def test_small_model_overfits_a_few_samples(tmp_path: Path, synthetic_tree: Path) -> None:
    from dsen2cr.data.dataset import SEN12MSCRDataset
    from dsen2cr.data.layout import read_file_list

    config = _config(tmp_path, synthetic_tree)
    last = _train(
        config, "optim.epochs=40", "data.repeats=1", "data.augment=false", "data.crop_size=96", "optim.lr=3e-3"
    )
    model = load_model(last)
    triplets = [t for t in read_file_list(synthetic_tree / "files.csv", synthetic_tree) if t.split == 1][:4]
    batch = torch.utils.data.default_collate([SEN12MSCRDataset(triplets, train=False)[i] for i in range(4)])
    with torch.no_grad():
        pred = model(batch["s2_cloudy"], batch["s1"])
    args = (batch["s2_cloudy"], batch["s2"], batch["cloud_mask"])
    model_loss = carl_loss(pred, *args).item()
    identity_loss = carl_loss(batch["s2_cloudy"], *args).item()
    assert model_loss < 0.5 * identity_loss, (model_loss, identity_loss)


@pytest.mark.parametrize("workers", ["0", "2"])
def test_resume_gives_the_weights_of_an_uninterrupted_run(tmp_path: Path, synthetic_tree: Path, workers: str) -> None:
    """With loader workers too (the paper config has 8): their iterator is made, and its first batches fetched,
    before Lightning sets the restored epoch on the sampler, so a resumed run trained its first epoch in epoch 0's
    order and ended with other weights than an uninterrupted run's."""
    straight_dir, split_dir = tmp_path / "straight", tmp_path / "split"
    straight_dir.mkdir(), split_dir.mkdir()
    straight = load_model(_train(_config(straight_dir, synthetic_tree, data__num_workers=workers), "optim.epochs=3"))
    config = _config(split_dir, synthetic_tree, data__num_workers=workers)
    _train(config, "optim.epochs=1")
    checkpoints = sorted((split_dir / "run" / "checkpoints").glob("epoch000-*.ckpt"))
    assert len(checkpoints) == 1
    resumed = load_model(_train(config, "optim.epochs=3", resume=checkpoints[0]))
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    run = split_dir / "run"
    assert sorted(p.name for p in (run / "checkpoints").iterdir())[-1] == "last.ckpt"
    assert len(list((run / "checkpoints").glob("epoch*.ckpt"))) == 3
    assert (run / "config.yaml").is_file() and (run / "logs" / "csv" / "metrics.csv").is_file()
    assert list((run / "logs" / "tensorboard").glob("events.out.tfevents.*"))


def test_refuses_a_folder_that_holds_a_run(tmp_path: Path, synthetic_tree: Path) -> None:
    from dsen2cr.training.train import run_training

    config = load_config(_config(tmp_path, synthetic_tree), ["optim.epochs=1", "trainer.limit_train_batches=1"])
    run_training(config, progress=False)
    with pytest.raises(DSen2CRError, match="already holds a run; resume it with --resume, or pass --overwrite"):
        run_training(config, progress=False)


def test_resume_with_weights_of_another_variant_is_refused(tmp_path: Path, synthetic_tree: Path) -> None:
    from dsen2cr.training.train import run_training

    config = load_config(_config(tmp_path, synthetic_tree), ["optim.epochs=1", "trainer.limit_train_batches=1"])
    last = run_training(config, progress=False)
    other = load_config(_config(tmp_path, synthetic_tree), ["model.num_features=8"])
    with pytest.raises(DSen2CRError, match=r"holds a B=2, F=16 with SAR model, but B=2, F=8 with SAR was asked for"):
        run_training(other, resume=last, progress=False)


def test_nan_loss_stops_with_a_clear_message(tmp_path: Path, synthetic_tree: Path) -> None:
    from dsen2cr.training.module import NonFiniteLossError
    from dsen2cr.training.train import build_task

    task = build_task(load_config(_config(tmp_path, synthetic_tree)))
    batch = {
        "s2_cloudy": torch.zeros(1, 13, 8, 8),
        "s1": torch.zeros(1, 2, 8, 8),
        "s2": torch.full((1, 13, 8, 8), float("nan")),
        "cloud_mask": torch.zeros(1, 8, 8),
    }
    with pytest.raises(NonFiniteLossError, match="training loss became nan at epoch 0, step 0"):
        task.training_step(batch, 0)


def test_two_process_ddp_on_cpu_keeps_ranks_equal_and_validates_each_patch_once(
    tmp_path: Path, synthetic_tree: Path, run_cli: Callable[..., subprocess.CompletedProcess]
) -> None:
    """Two DDP processes train as one run (equal weights at the end) and validate every validation patch once:
    with 3 patches on 2 ranks Lightning's distributed sampler gave rank 1 patch 0 again, so val_loss was the mean
    of 4 values (here 1.4007 against the 3 patches' 1.3936), and a run's val_loss changed with its process count.
    A global batch (optim.global_batch) of 2 gives each rank 1."""
    rows = (synthetic_tree / "files.csv").read_text().splitlines()
    rows = [("2" if i < 3 else "1") + row[1:] for i, row in enumerate(rows)]  # 3 validation patches, 7 training
    (tmp_path / "files.csv").write_text("\n".join(rows) + "\n")
    config = _config(tmp_path, synthetic_tree, data__file_list=str(tmp_path / "files.csv"))
    result = run_cli(
        "train",
        "--config",
        str(config),
        "optim.epochs=1",
        "optim.batch_size=2",  # the global batch: 1 per rank
        "optim.global_batch=true",  # rank 0 validates 2 batches, rank 1 one: uneven, which must not stall
        "trainer.limit_train_batches=3",
        "trainer.deterministic=false",
        "--accelerator",
        "cpu",
        "--devices",
        "2",
        "--strategy",
        "ddp",
        "--no-progress",
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # the epoch's train_loss was rank 0's batches' mean alone (not reduced over the ranks: Lightning's warning
    # says so), and the end's check of equal weights gathered them through a function torch 2.13 deprecates (a
    # warning on each rank that no user could act on)
    assert "sync_dist=True" not in result.stderr and "deprecated" not in result.stderr, result.stderr[-3000:]
    digests = json.loads((tmp_path / "run" / "weights_digest.json").read_text())["ranks"]
    assert len(digests) == 2 and digests[0] == digests[1]
    logged = _logged_validation(tmp_path / "run")
    rows = list(csv.DictReader((tmp_path / "run" / "logs" / "csv" / "metrics.csv").open()))
    assert {float(r["batch_per_device"]) for r in rows if r.get("batch_per_device")} == {1.0}
    # val_loss and val_mae: the means over the 3 patches, each once, computed here in float64 with the weights the
    # validation ran with (the epoch's checkpoint is saved after it)
    losses, maes, sizes = _validation_by_hand(config, tmp_path / "run")
    assert sizes == [96, 96, 96]
    assert len(logged) == 1
    assert float(logged[0]["val_loss"]) == pytest.approx(np.mean(losses), rel=1e-5), losses
    assert float(logged[0]["val_mae"]) == pytest.approx(np.mean(maes), rel=1e-5), maes


#: Loaded at start-up by every process of a run (PYTHONPATH): the training loss of the process whose rank
#: NAN_RANK names becomes NaN from its second step on.
NAN_ON_ONE_RANK = """
import os
from dsen2cr.training import module

loss_of = module.DSen2CRTask._loss

def nan_on_one_rank(self, batch, pred, variance):
    value = loss_of(self, batch, pred, variance)
    diverged = self.training and self.global_rank == int(os.environ["NAN_RANK"]) and self.global_step >= 1
    return value * float("nan") if diverged else value

module.DSen2CRTask._loss = nan_on_one_rank
"""


def test_a_nan_training_loss_on_one_ddp_process_stops_every_process_alike(
    tmp_path: Path, synthetic_tree: Path, run_cli: Callable[..., subprocess.CompletedProcess]
) -> None:
    """Under DDP, a training loss that becomes NaN on one process stops them all at that step with its message,
    exit 2: it stopped that process alone, and the others then failed on the closed connection, an internal error
    (exit 1, "this is a bug")."""
    import os

    (tmp_path / "inject").mkdir()
    (tmp_path / "inject" / "sitecustomize.py").write_text(NAN_ON_ONE_RANK)
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "inject"), "NAN_RANK": "1"}
    config = _config(tmp_path, synthetic_tree)
    args = ("--accelerator", "cpu", "--devices", "2", "--strategy", "ddp", "--no-progress")
    result = run_cli("train", "--config", str(config), "optim.batch_size=1", *args, env=env, timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "internal error" not in result.stderr, result.stderr[-3000:]
    assert "training loss became nan at epoch 0, step 1; the run stopped" in result.stderr, result.stderr[-3000:]


#: Loaded at start-up by every process of a run (PYTHONPATH): each appends its process id to STARTED_LOG.
COUNT_STARTS = """
import os

with open(os.environ["STARTED_LOG"], "a") as log:
    log.write(f"{os.getpid()}\\n")
"""


def test_a_refusal_known_before_the_launch_starts_no_other_process(
    workdir: Path, run_cli: Callable[..., subprocess.CompletedProcess]
) -> None:
    """A check of the settings, the file lists and the process count that the launching process can make stops
    the run there, before Lightning starts the run's other processes (it started them all, each importing torch
    and Lightning and joining the process group, only for each to refuse the same settings: on eight GPUs seven
    processes and their CUDA start-up for a one-line refusal). One line, exit 2. The bundled sample's validation
    split has one patch, fewer than two processes."""
    import os

    (workdir / "inject").mkdir()
    (workdir / "inject" / "sitecustomize.py").write_text(COUNT_STARTS)
    started = workdir / "started.log"
    env = {**os.environ, "PYTHONPATH": str(workdir / "inject"), "STARTED_LOG": str(started)}
    args = ("--accelerator", "cpu", "--devices", "2", "--strategy", "ddp", "--no-progress")
    result = run_cli("train", "--config", "small-cpu", *args, "--out", str(workdir / "run"), env=env, timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(lines) == 1, result.stderr[-3000:]
    assert "the validation split has 1 patch, fewer than the run's 2 processes" in lines[0]
    assert len(started.read_text().split()) == 1, "the run's other process was started"
    assert not (workdir / "run").exists()


def _as_srun_task(monkeypatch: pytest.MonkeyPatch, task: int, *, node: int = 0) -> None:
    """This process as task ``task`` of a two-task srun step: both on one machine (``node`` 0), or one on each
    (``node`` 1: task 1's); Lightning's rank, which a run sets for the process, is kept for the tests after it."""
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    monkeypatch.setattr(rank_zero_only, "rank", rank_zero_only.rank)
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "NODE_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK"):
        monkeypatch.delenv(name, raising=False)
    nodes, per_node = (1, "2") if node == 0 else (2, "1(x2)")
    step = {"SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "dsen2cr-train", "SLURM_NODELIST": "127.0.0.1"}
    step |= {"SLURM_NNODES": str(nodes), "SLURM_NODEID": str(node), "SLURM_NTASKS": "2", "MASTER_PORT": "29555"}
    step |= {"SLURM_NTASKS_PER_NODE": per_node[0], "SLURM_STEP_NUM_TASKS": "2", "SLURM_STEP_TASKS_PER_NODE": per_node}
    for name, value in {**step, "SLURM_PROCID": str(task), "SLURM_LOCALID": str(task if nodes == 1 else 0)}.items():
        monkeypatch.setenv(name, value)


@pytest.mark.parametrize("task", [0, 1])
def test_a_refusal_every_srun_task_reaches_is_said_once(
    tmp_path: Path,
    synthetic_tree: Path,
    task: int,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    """Under srun every task of the step is a process of its own that checks the settings (here a global batch of
    3 over the step's 2 tasks): task 0 says it, task 1 stops without repeating it (every one of them printed it:
    eight lines in the job's log on eight GPUs); each exits 2 and leaves no run folder. Task 1 made the folder at
    its start (rank 0 prepares it), and when it did so before task 0 looked, task 0 took it for the user's and
    left it with its config.yaml: two refused srun steps of three on this machine left one."""
    from dsen2cr.cli import main

    _as_srun_task(monkeypatch, task)
    config = _config(tmp_path, synthetic_tree, optim__batch_size="3", optim__global_batch="true")
    argv = ["train", "--config", str(config), "--accelerator", "cpu", "--devices", "2", "--strategy", "ddp"]
    assert main([*argv, "--no-progress"]) == 2
    said = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    if task == 0:
        assert len(said) == 1 and "the global batch 3 does not split over 2 processes" in said[0], said
    else:
        assert said == []
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("task", "node", "said"),
    [(0, 0, True), (1, 0, False), (1, 1, True)],
    ids=["task 0", "task 1 on task 0's machine", "task 1 on another machine"],
)
@pytest.mark.parametrize("refusal", ["data root", "tasks and devices"])
def test_a_refusal_of_the_files_every_srun_task_reads_is_said_once_per_machine(
    tmp_path: Path,
    synthetic_tree: Path,
    refusal: str,
    task: int,
    node: int,
    said: bool,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    """A refusal of the files or the step that every task reaches alike before the run's processes join (a data
    root that does not exist, --devices other than the step's tasks on the machine) is said by task 0; a task on
    task 0's machine reads the same files and stops without repeating it (each task printed it: eight lines in the
    job's log on eight GPUs), while a task on another machine, whose files may differ, says its own. Each exits 2."""
    from dsen2cr.cli import main

    nodes, per_node = (1, "2") if node == 0 else (2, "1(x2)")  # both tasks on one machine, or one on each
    _as_srun_task(monkeypatch, task, node=node)
    devices = ["--devices", per_node[0], "--num-nodes", str(nodes)]
    if refusal == "data root":
        config, message = _config(tmp_path, tmp_path / "no-data"), "no-data is not a folder"
    else:
        config, message = _config(tmp_path, synthetic_tree), f"set --devices {per_node[0]} --num-nodes {nodes}"
        devices[1] = "3"
    argv = ["train", "--config", str(config), "--accelerator", "cpu", *devices, "--strategy", "ddp"]
    assert main([*argv, "--no-progress"]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(lines) == (1 if said else 0), lines
    assert not said or message in lines[0], lines
    assert not (tmp_path / "run").exists()


def test_a_ddp_process_whose_peer_stopped_says_so_not_internal_error(
    tmp_path: Path, synthetic_tree: Path, run_cli: Callable[..., subprocess.CompletedProcess]
) -> None:
    """Under DDP, a patch that one process cannot read stops that process with its one line; the other, whose
    next collective finds the connection closed, says that another process of the run stopped (exit 2), not
    "internal error … this is a bug" (exit 1) with gloo's message."""
    import shutil

    root = tmp_path / "data"
    shutil.copytree(synthetic_tree, root)
    first_training_row = next(r for r in (root / "files.csv").read_text().splitlines() if r.startswith("1"))
    _, _, s2_folder, _, name = first_training_row.split("\t")
    s2_file = root / s2_folder / name.replace("_s1_", "_s2_")
    s2_file.write_bytes(b"not a GeoTIFF")
    config = _config(tmp_path, root)
    args = ("--accelerator", "cpu", "--devices", "2", "--strategy", "ddp", "--no-progress")
    result = run_cli("train", "--config", str(config), "optim.batch_size=1", *args, timeout=300)
    assert "internal error" not in result.stderr, result.stderr[-3000:]
    assert f"{s2_file.name}: cannot read S2 cloud-free" in result.stderr, result.stderr[-3000:]
    assert "another process of this run stopped" in result.stderr, result.stderr[-3000:]
    assert result.returncode == 2, result.stderr[-3000:]


def _validation_by_hand(config: Path, run: Path) -> tuple[list[float], list[float], list[int]]:
    """Each validation patch's CARL loss and MAE (reflectance), computed once in float64 with the weights the run's
    last validation ran with (its last checkpoint is saved after it), and the patches' widths."""
    from dsen2cr.data.dataset import SEN12MSCRDataset
    from dsen2cr.data.layout import resolve_split

    patches = SEN12MSCRDataset(resolve_split(load_config(config).data, "val"), train=False)
    model = load_model(run / "checkpoints" / "last.ckpt").double().eval()
    losses, maes, sizes = [], [], []
    with torch.no_grad():
        for sample in (patches[i] for i in range(len(patches))):
            cloudy, s1, target = (sample[k][None].double() for k in ("s2_cloudy", "s1", "s2"))
            pred = model(cloudy, s1)
            losses.append(carl_loss(pred, cloudy, target, sample["cloud_mask"][None], lam=1.0).item())
            maes.append(((pred / 5).clamp(0, 1) - (target / 5).clamp(0, 1)).abs().mean().item())
            sizes.append(int(target.shape[-1]))
    return losses, maes, sizes


def _logged_validation(run: Path) -> list[dict[str, str]]:
    """The rows of the run's metrics.csv that hold a validation."""
    with (run / "logs" / "csv" / "metrics.csv").open() as log:
        return [row for row in csv.DictReader(log) if row.get("val_loss")]


def _srun_two_tasks(tmp_path: Path, command: list[str], name: str) -> list[Path]:
    """Run ``command`` as the two tasks of an ``srun`` step on this machine (the variables srun sets; gloo on CPU);
    return the tasks' logs. A task that fails leaves the other waiting at the rendezvous: both stop then."""
    import contextlib
    import os
    import signal
    import socket
    import sys
    import time

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    step = {
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NAME": "dsen2cr-train",
        "SLURM_NODELIST": "127.0.0.1",
        "SLURM_NNODES": "1",
        "SLURM_NODEID": "0",
        "SLURM_NTASKS": "2",
        "SLURM_NTASKS_PER_NODE": "2",
        "SLURM_STEP_ID": "0",
        "SLURM_STEP_NUM_TASKS": "2",
        "SLURM_STEP_TASKS_PER_NODE": "2",
        "MASTER_PORT": str(port),
    }
    names = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "NODE_RANK", "LOCAL_WORLD_SIZE")
    base = {name: value for name, value in os.environ.items() if name not in names}
    logs = [tmp_path / f"{name}.task{task}.log" for task in range(2)]
    tasks = [
        subprocess.Popen(
            [sys.executable, "-m", "dsen2cr.cli", *command],
            env={**base, **step, "SLURM_PROCID": str(task), "SLURM_LOCALID": str(task)},
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,  # with its loader workers: killed together below
        )
        for task, log in enumerate(logs)
    ]
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and not all(t.poll() == 0 for t in tasks):
            if any(t.poll() not in (None, 0) for t in tasks):
                break
            time.sleep(0.5)
    finally:
        for task in tasks:  # the task's process group: a loader worker outlived its killed task (and held a core)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(task.pid, signal.SIGKILL)
            task.wait()
    assert [task.returncode for task in tasks] == [0, 0], [log.read_text()[-2000:] for log in logs]
    return logs


def test_an_srun_steps_two_tasks_train_as_one_ddp_run(tmp_path: Path, synthetic_tree: Path) -> None:
    """Lightning's documented way on a cluster: ``srun --ntasks-per-node 2 dsen2cr train … --devices 2`` starts
    both processes, Lightning's SLURM environment joins them (gloo on CPU here, with the variables srun sets).
    Task 1 is a worker of task 0's run: it does not lock the run folder (it was refused, "locked by process …",
    and task 0 waited for it at the rendezvous), nor repeat task 0's lines in the job's log, and the two ranks
    end with the same weights."""
    config = _config(tmp_path, synthetic_tree)
    command = ["train", "--config", str(config), "optim.epochs=1"]
    command += ["trainer.limit_train_batches=3", "trainer.limit_val_batches=1", "trainer.deterministic=false"]
    command += ["--accelerator", "cpu", "--devices", "2", "--strategy", "ddp", "--no-progress"]
    logs = _srun_two_tasks(tmp_path, command, "train")
    # one run, told once: the tasks' output goes to one job log, so a worker prints warnings and errors only
    assert "last checkpoint: " in logs[0].read_text() and "epoch 0: " in logs[0].read_text()
    assert "last checkpoint: " not in logs[1].read_text(), logs[1].read_text()[-2000:]
    digests = json.loads((tmp_path / "run" / "weights_digest.json").read_text())["ranks"]
    assert len(digests) == 2 and digests[0] == digests[1]
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()
    assert not list((tmp_path / "run").parent.glob(".run*.lock"))  # task 0's lock went with it


def test_a_ddp_run_resumed_with_loader_workers_ends_with_the_uninterrupted_weights(
    tmp_path: Path, synthetic_tree: Path
) -> None:
    """Under DDP Lightning's distributed sampler shuffles the epoch's order again by its own epoch number, which
    it sets after loader workers have made their iterator: a resumed run's first epoch went in epoch 0's order."""
    straight_dir, split_dir = tmp_path / "straight", tmp_path / "split"
    straight_dir.mkdir(), split_dir.mkdir()
    ddp = ["--accelerator", "cpu", "--devices", "2", "--strategy", "ddp", "--no-progress", "data.num_workers=1"]
    config = _config(straight_dir, synthetic_tree, optim__batch_size="2")
    _srun_two_tasks(tmp_path, ["train", "--config", str(config), "optim.epochs=2", *ddp], "straight")
    config = _config(split_dir, synthetic_tree, optim__batch_size="2")
    _srun_two_tasks(tmp_path, ["train", "--config", str(config), "optim.epochs=1", *ddp], "first")
    resume = ["--resume", "auto", "optim.epochs=2"]
    _srun_two_tasks(tmp_path, ["train", "--config", str(config), *resume, *ddp], "resumed")
    straight = load_model(straight_dir / "run" / "checkpoints" / "last.ckpt")
    resumed = load_model(split_dir / "run" / "checkpoints" / "last.ckpt")
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


SLURM_STEP = {"SLURM_STEP_NUM_TASKS": "2", "SLURM_STEP_TASKS_PER_NODE": "2", "SLURM_PROCID": "1", "SLURM_LOCALID": "1"}


@pytest.mark.parametrize(
    ("variables", "settings", "refusal"),
    [
        ({}, {"devices": 2, "strategy": "ddp"}, "was not started by srun"),  # the batch script's own process
        ({}, {"devices": 1, "num_nodes": 2}, "was not started by srun"),
        ({}, {"devices": 1, "strategy": "ddp"}, "was not started by srun"),  # DDP takes SLURM_NTASKS for its world
        ({}, {"devices": 1}, None),  # one device: Lightning does not wait for the job's other tasks
        ({"SLURM_JOB_NAME": "interactive"}, {"devices": 2, "strategy": "ddp"}, None),  # Lightning ignores SLURM
        ({"SLURM_NTASKS": "1"}, {"devices": 2, "strategy": "ddp"}, None),  # a job of one task: Lightning's launcher
        (SLURM_STEP, {"devices": 1}, "set --devices 2 --num-nodes 1"),  # task 1 would train a run of its own
        (SLURM_STEP, {"devices": "auto"}, "set --devices 2 --num-nodes 1"),
        ({**SLURM_STEP, "SLURM_NNODES": "1"}, {"devices": 2, "num_nodes": 2}, "set --devices 2 --num-nodes 1"),
        (SLURM_STEP, {"devices": 2, "strategy": "ddp"}, None),
        ({**SLURM_STEP, "RANK": "1", "WORLD_SIZE": "2"}, {"devices": 1}, None),  # torchrun in the step: its own rules
    ],
)
def test_processes_that_lightning_would_not_join_are_refused(
    monkeypatch: pytest.MonkeyPatch, variables: dict, settings: dict, refusal: str | None
) -> None:
    """In a SLURM job of two tasks (``sbatch --ntasks-per-node 2``): the batch script's own process asking for
    several devices hung forever (Lightning took the job's two tasks for the run's processes and waited for the
    second; SIGTERM did not stop it), and an srun step whose tasks do not match --devices/--num-nodes trained
    runs of their own into one folder or failed as an internal error. Refused before anything is written."""
    from dsen2cr.config import TrainerSection
    from dsen2cr.training.train import check_launch

    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "SLURM_STEP_NUM_TASKS", "SLURM_NNODES"):
        monkeypatch.delenv(name, raising=False)
    job = {"SLURM_JOB_ID": "7", "SLURM_JOB_NAME": "train", "SLURM_NTASKS": "2", "SLURM_PROCID": "0"}
    for name, value in {**job, **variables}.items():
        monkeypatch.setenv(name, value)
    trainer = TrainerSection(accelerator="cpu", **settings)
    if refusal is None:
        check_launch(trainer)
    else:
        with pytest.raises(DSen2CRError, match=refusal):
            check_launch(trainer)


def test_a_batch_scripts_own_process_is_refused_on_the_command_line(
    workdir, run_cli: Callable[..., subprocess.CompletedProcess]
) -> None:
    """The refusal is one line, exit 2, and the run folder is never created (a process of its own, killed after
    two minutes: the hang it prevents is deaf to SIGTERM)."""
    import os

    names = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_STEP_NUM_TASKS")
    env = {name: value for name, value in os.environ.items() if name not in names}
    env.update(SLURM_JOB_ID="7", SLURM_JOB_NAME="train", SLURM_NTASKS="4", SLURM_NTASKS_PER_NODE="4")
    env.update(SLURM_NODELIST="127.0.0.1", SLURM_NNODES="1", SLURM_PROCID="0", SLURM_LOCALID="0", SLURM_NODEID="0")
    run = workdir / "run"
    argv = ["train", "--config", str(workdir.config()), "--out-dir", str(run), "--devices", "4", "--strategy", "ddp"]
    result = run_cli(*argv, "--accelerator", "cpu", "--no-progress", env=env, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.startswith("dsen2cr train: error: SLURM_NTASKS=4: ") and "srun dsen2cr train" in result.stderr
    assert result.stderr.count("\n") == 1 and not run.exists()


def test_export_round_trip_and_variant_check(
    tmp_path: Path, synthetic_tree: Path, run_cli: Callable[..., subprocess.CompletedProcess]
) -> None:
    from dsen2cr.training.train import run_training

    config = load_config(_config(tmp_path, synthetic_tree), ["optim.epochs=1", "trainer.limit_train_batches=1"])
    last = run_training(config, progress=False)
    out = tmp_path / "w.safetensors"
    result = run_cli("export", str(last), str(out))
    assert result.returncode == 0, result.stderr
    a, b = load_model(last), load_model(out)
    x, s1 = torch.rand(1, 13, 20, 20), torch.rand(1, 2, 20, 20)
    torch.testing.assert_close(a(x, s1), b(x, s1), rtol=0, atol=0)
    again = run_cli("export", str(last), str(out))
    assert again.returncode == 2 and "exists; pass --overwrite" in again.stderr
    save_weights(b, tmp_path / "copy.safetensors")
    assert load_model(tmp_path / "copy.safetensors").config == a.config


def test_exported_weights_record_what_made_them(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    """An exported weights file recorded only the network's shape: not the checkpoint it came from, its epoch,
    the loss it was trained with, the data, nor the version that wrote it; every later output names the weights
    file and its SHA-256, so the chain broke there. It now records them (read back here with safetensors alone), and a
    weights file exported again keeps its training record and names its own source."""
    import hashlib

    from safetensors import safe_open

    from dsen2cr import __version__
    from dsen2cr.cli import main

    config = workdir.config(optim={"epochs": 2, "batch_size": 2}, loss={"name": "carl", "lam": 0.5})
    assert main(["train", "--config", str(config), "--no-progress"]) == 0
    last = workdir / "run" / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, map_location="cpu", weights_only=True)
    first, second = workdir / "a.safetensors", workdir / "b.safetensors"
    assert main(["export", str(last), str(first)]) == 0
    with safe_open(first, "pt") as weights:
        metadata = weights.metadata()
    assert metadata["dsen2cr_source"] == "last.ckpt"
    assert metadata["dsen2cr_source_sha256"] == hashlib.sha256(last.read_bytes()).hexdigest()
    assert metadata["dsen2cr_version"] == __version__
    training = json.loads(metadata["dsen2cr_training"])
    assert training == {
        "epoch": checkpoint["epoch"],
        "finished_epochs": 2,  # saved at the end of its second epoch
        "global_step": checkpoint["global_step"],
        "loss": checkpoint["hyper_parameters"]["loss"],
        "data": checkpoint["hyper_parameters"]["data"],
        "arithmetic": checkpoint["dsen2cr_arithmetic"],  # what it computed in (test_trained_arithmetic)
    }
    assert [start["from_epoch"] for start in training["arithmetic"]] == [0]
    # the data it trained on, by the file list's name (never a machine's folders), the patches of each split
    # (counted here from the list's rows; their ids, season_roi_pN, hashed sorted one per line) and the crops
    rows = [line.split("\t") for line in (workdir.tree() / "files.csv").read_text().splitlines() if line.strip()]
    for split, number in (("train", "1"), ("val", "2")):
        ids = sorted(row[-1].strip().removesuffix(".tif").replace("_s1_", "_") for row in rows if row[0] == number)
        assert training["data"][f"{split}_patches"] == len(ids) > 0
        digest = hashlib.sha256("".join(f"{patch}\n" for patch in ids).encode()).hexdigest()
        assert training["data"][f"{split}_patches_sha256"] == digest
    assert training["data"]["files"] == "files.csv" and str(workdir) not in metadata["dsen2cr_training"]
    assert training["data"]["seed"] == 42 and training["data"]["crop_size"] == 32  # trainer.seed, data.crop_size
    assert training["loss"]["name"] == "carl" and training["loss"]["lam"] == 0.5
    assert training["epoch"] == 1 and any((workdir / "run" / "checkpoints").glob("epoch001-*.ckpt"))  # as named
    assert main(["export", str(first), str(second)]) == 0
    with safe_open(second, "pt") as weights:
        again = weights.metadata()
    assert again["dsen2cr_source"] == "a.safetensors"
    assert again["dsen2cr_source_sha256"] == hashlib.sha256(first.read_bytes()).hexdigest()
    assert again["dsen2cr_training"] == metadata["dsen2cr_training"]


def test_weights_files_of_one_model_are_byte_identical(tmp_path: Path) -> None:
    """Saving one model twice gives one file, byte for byte (so one SHA-256 in every output's provenance):
    safetensors writes its metadata in a random order (upstream issue #584), so 10 saves in one process gave up
    to 10 files; the header is written with sorted keys and still read by safetensors, metadata and tensors."""
    import hashlib

    from safetensors import safe_open

    from dsen2cr import create_model

    model = create_model("dsen2cr-small")
    paths = [
        save_weights(model, tmp_path / f"{i}.safetensors", provenance={"source": "a", "b": "c"}) for i in range(10)
    ]
    assert len({hashlib.sha256(path.read_bytes()).hexdigest() for path in paths}) == 1
    header = paths[0].read_bytes()[8 : 8 + int.from_bytes(paths[0].read_bytes()[:8], "little")]
    assert list(json.loads(header)["__metadata__"]) == sorted(json.loads(header)["__metadata__"])
    with safe_open(str(paths[0]), "pt") as stored:
        assert stored.metadata()["source"] == "a" and json.loads(stored.metadata()["dsen2cr_model_config"])
        for name, tensor in model.state_dict().items():
            assert torch.equal(stored.get_tensor(name), tensor)
    assert load_model(paths[0]).config == model.config


def test_paper_config_is_the_original_run() -> None:
    """`config paper` trains as the original did: fp32 without TF32, a global batch of 16, the original's crop
    offsets and last-batch rule; `paper-fast` states its deviations."""
    paper, fast = load_config("paper"), load_config("paper-fast")
    assert (paper.trainer.precision, paper.trainer.matmul_precision) == ("32-true", "highest")
    assert paper.optim.global_batch and paper.optim.batch_size == 16
    assert paper.data.original_crop_offsets and paper.data.drop_last
    assert (fast.trainer.precision, fast.trainer.matmul_precision) == ("bf16-mixed", "high")


def test_original_crop_offsets_never_reach_the_last_row_and_column(synthetic_tree: Path) -> None:
    """A 95 px crop of a 96 px patch starts at row/column 0 or 1 by default, always at 0 as the original draws
    offsets (0 .. size - crop - 1)."""
    import rasterio

    from dsen2cr.data.dataset import SEN12MSCRDataset
    from dsen2cr.data.layout import read_file_list

    triplets = read_file_list(synthetic_tree / "files.csv", synthetic_tree)[:1]  # 96x96 patches
    with rasterio.open(triplets[0].s2_cloudy) as src:
        patch = src.read()
    offsets = ((0, 0), (0, 1), (1, 0), (1, 1))
    for original in (False, True):
        dataset = SEN12MSCRDataset(triplets, train=True, crop_size=95, augment=False, original_crop_offsets=original)
        corners = set()
        for index in range(40):
            crop = dataset._read(triplets[0], np.random.default_rng([0, 0, index]))[2]
            corners.add(next(o for o in offsets if np.array_equal(crop, patch[:, o[0] : o[0] + 95, o[1] : o[1] + 95])))
        assert corners == ({(0, 0)} if original else set(offsets))


def test_a_global_batch_that_does_not_split_over_the_ranks_is_refused() -> None:
    """With optim.global_batch each rank takes its share of the batch (a 2-process DDP run with a global batch of 2
    trains 1 per rank: the two-process test above); a world size that does not divide the batch is refused."""
    from types import SimpleNamespace

    from dsen2cr.config import DataSection, LossSection
    from dsen2cr.errors import DSen2CRError
    from dsen2cr.training.datamodule import SEN12MSCRDataModule

    module = SEN12MSCRDataModule(DataSection(), LossSection(), 3, 0, global_batch=True)
    module.trainer = SimpleNamespace(world_size=2)  # type: ignore[assignment]
    with pytest.raises(DSen2CRError, match="global batch 3 does not split over 2 processes"):
        module.batch_per_device()
    module = SEN12MSCRDataModule(DataSection(), LossSection(), 4, 0, global_batch=True)
    module.trainer = SimpleNamespace(world_size=2)  # type: ignore[assignment]
    assert module.batch_per_device() == 2


def test_overrides_may_follow_the_options(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    """``train --config X a.b=1 --out-dir D data.crop_size=32``: overrides on both sides of an option are all
    overrides (argparse alone rejected the second group as unrecognized); anything else is still refused."""
    from dsen2cr.cli import main

    config = workdir.config(data={"crop_size": 16})
    run = workdir / "elsewhere"
    argv = ["train", "--config", str(config), "optim.epochs=1", "--no-progress", "--out-dir", str(run)]
    assert main([*argv, "data.crop_size=32"]) == 0, capsys.readouterr().err
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert "crop_size: 32" in (run / "config.yaml").read_text()
    with pytest.raises(SystemExit):
        main([*argv, "--no-such-option"])


def test_each_epochs_line_gives_that_epochs_training_loss(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    """The line printed per epoch (``epoch N: train_loss_epoch …, val_loss …``) was written when validation
    ended, before Lightning reduces the epoch's training loss: it gave the previous epoch's training loss under
    this epoch's number (and none for the first). Each line must give the numbers metrics.csv records for
    its epoch."""
    from dsen2cr.cli import main

    run = workdir / "run"
    assert main(["train", "--config", str(workdir.config()), "optim.epochs=3", "--no-progress"]) == 0
    printed = {}
    for line in capsys.readouterr().out.splitlines():
        if line.startswith("epoch "):
            epoch, _, values = line.partition(": ")
            printed[int(epoch.split()[1])] = dict(part.split(" ") for part in values.split(", "))
    recorded: dict[int, dict[str, str]] = {}
    for row in csv.DictReader((run / "logs" / "csv" / "metrics.csv").open()):
        recorded.setdefault(int(row["epoch"]), {}).update({k: v for k, v in row.items() if v and k != "step"})
    assert sorted(printed) == [0, 1, 2], printed
    for epoch, values in printed.items():
        assert set(values) == {"train_loss_epoch", "val_loss", "val_mae", "val_psnr"}, values
        for key, value in values.items():
            assert float(value) == pytest.approx(float(recorded[epoch][key]), abs=5e-5), (epoch, key)


def test_loader_workers_beyond_the_shared_memory_are_refused(
    workdir, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """Loader workers hand batches over in shared memory (/dev/shm: 64 MB in a Docker container by default): two
    workers, each with two batches in flight, of 2 training samples of 32x32 px (28 float32 bands and an int8
    mask: 113 bytes a pixel) need 2 x 2 x 2 x 113 x 32 x 32 = 925,696 bytes; the validation loader's full 48 px
    patches 2,082,816. With less free, one line names the need, the space and the fixes, exit 2, no run folder
    (it was an "internal error ... this is a bug" from PyTorch, mid-epoch)."""
    from dsen2cr.cli import main

    train, validation = 2 * 2 * 2 * 113 * 32 * 32, 2 * 2 * 2 * 113 * 48 * 48
    config = workdir.config(data={"num_workers": 2, "crop_size": 32}, optim={"batch_size": 2})
    argv = ["train", "--config", str(config), "--no-progress"]
    for free, needed in ((train - 1, "0.93"), (validation - 1, "2.08")):
        monkeypatch.setattr("dsen2cr.training.datamodule.shared_memory_free", lambda free=free: free)
        assert main(argv) == 2
        error = capsys.readouterr().err
        assert f"data.num_workers: 2 loader workers hold up to {needed} MB of batches in shared memory" in error
        assert f"/dev/shm has {free / 1e6:.2f} MB free" in error and "--shm-size 1g" in error, error
        assert "data.num_workers=0" in error and error.count("\n") == 1 and not (workdir / "run").exists()
    monkeypatch.setattr("dsen2cr.training.datamodule.shared_memory_free", lambda: validation)
    assert main(argv) == 0, capsys.readouterr().err


def test_the_validation_loaders_need_is_its_largest_patchs(
    tmp_path: Path, write_release_triplet: Callable[..., Triplet]
) -> None:
    """Validation batches are whole patches, of the size each ROI was cut at (the release's 256 px, or data
    patches' --size): the shared-memory check takes the largest ROI's patch, not the first patch (32 px here,
    where ROI 2's are 64 px: a need four times too small, and a crash mid-validation in a container)."""
    from dsen2cr.data.dataset import SEN12MSCRDataset
    from dsen2cr.training.datamodule import largest_patch

    triplets = [write_release_triplet(tmp_path, "ROIs0_own", 1, n, size=32) for n in range(3)]
    triplets += [write_release_triplet(tmp_path, "ROIs0_own", 2, n, size=64) for n in range(2)]
    dataset = SEN12MSCRDataset(triplets, train=False)
    assert largest_patch(dataset) == 3
    assert dataset[largest_patch(dataset)]["s2"].shape[-2:] == (64, 64)


def _train_in_shared_memory(tmp_path: Path, size: str, *overrides: str, timeout: float) -> subprocess.CompletedProcess:
    """``dsen2cr train --config small-cpu`` for one epoch with ``overrides``, in a private ``/dev/shm`` of
    ``size`` (a tmpfs in a mount namespace of its own, as a Docker container has; skipped where this machine
    does not allow one: ``unshare -m`` as root)."""
    import shlex
    import shutil
    import sys

    probe = ["unshare", "-m", "sh", "-c", f"mount -t tmpfs -o size={size} tmpfs /dev/shm"]
    if shutil.which("unshare") is None or subprocess.run(probe, capture_output=True).returncode != 0:
        pytest.skip("no private mount namespace here (unshare -m as root)")
    train = [sys.executable, "-m", "dsen2cr.cli", "train", "--config", "small-cpu", "optim.epochs=1", *overrides]
    train += ["--out", str(tmp_path / "run"), "--no-progress"]
    script = f"mount -t tmpfs -o size={size} tmpfs /dev/shm && exec {shlex.join(train)}"
    return subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=timeout)


def test_training_in_a_containers_64_mb_shared_memory(tmp_path: Path) -> None:
    """Measured: ``dsen2cr train --config small-cpu data.crop_size=120 optim.batch_size=32 data.num_workers=2`` in
    a 64 MB /dev/shm (a private mount, as Docker's default) failed as an "internal error (RuntimeError: unable to
    allocate shared memory ...); this is a bug", exit 1. Now refused with the fixes, exit 2."""
    overrides = ("data.crop_size=120", "optim.batch_size=32", "data.num_workers=2")
    result = _train_in_shared_memory(tmp_path, "64m", *overrides, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    # 2 workers x 2 batches x 32 samples x 113 bytes x 120 x 120 px
    assert "loader workers hold up to 208.28 MB of batches in shared memory" in result.stderr, result.stderr
    assert not (tmp_path / "run").exists()


def test_a_run_that_fails_while_its_loader_workers_live_exits(tmp_path: Path) -> None:
    """Training's loader workers ignore SIGTERM (the process group's, from ``timeout`` or a scheduler), and
    multiprocessing ends them at exit with SIGTERM, then waits for them: a run that failed while they lived (here
    the validation loader's full 120 px patches do not fit in a 32 MB /dev/shm, after the training loader's 64 px
    crops did and its workers ran) printed its error and then never exited (killed after 120 s). Now exit 2."""
    overrides = ("data.crop_size=64", "optim.batch_size=8", "data.num_workers=2")
    result = _train_in_shared_memory(tmp_path, "32m", *overrides, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "hold up to 52.07 MB of batches in shared memory, but /dev/shm has" in result.stderr, result.stderr


def test_resume_auto_starts_continues_and_finishes_like_a_requeued_job(
    workdir: Path, capsys: pytest.CaptureFixture
) -> None:
    """``train --resume auto``, one command line for a cluster job's first start and its requeues: a new run
    where the folder holds no checkpoint, the newest checkpoint's run otherwise (its weights those of an
    uninterrupted run), and once every epoch is trained, nothing to do (exit 0, no checkpoint written). A
    changed setting is refused as with a named checkpoint."""
    from dsen2cr.cli import main

    deterministic = {"deterministic": True, "seed": 3}
    straight_dir = workdir / "straight"
    straight_dir.mkdir()
    (straight_dir / "c.yaml").write_text(
        workdir.config(optim={"epochs": 2, "batch_size": 2}, trainer=deterministic)
        .read_text()
        .replace(str(workdir / "run"), str(straight_dir / "run"))
    )
    assert main(["train", "--config", str(straight_dir / "c.yaml"), "--no-progress"]) == 0
    straight = load_model(straight_dir / "run" / "checkpoints" / "last.ckpt")
    config = workdir.config(optim={"epochs": 2, "batch_size": 2}, trainer=deterministic)
    argv = ["train", "--config", str(config), "--no-progress", "--resume", "auto"]
    assert main([*argv, "optim.epochs=1"]) == 0  # a first start: no run folder yet
    checkpoints = workdir / "run" / "checkpoints"
    assert "no checkpoint in " in capsys.readouterr().out
    assert main(argv) == 0  # the requeue: the newest checkpoint's run, to epoch 2
    assert f"resuming from {checkpoints}" in capsys.readouterr().out
    for (name, a), b in zip(
        straight.state_dict().items(), load_model(checkpoints / "last.ckpt").state_dict().values(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    written = {path: path.stat().st_mtime_ns for path in checkpoints.iterdir()}
    assert main(argv) == 0  # requeued once more after the end
    out = capsys.readouterr().out
    assert "has trained its 2 epochs" in out and f"last checkpoint: {checkpoints / 'last.ckpt'}" in out
    assert {path: path.stat().st_mtime_ns for path in checkpoints.iterdir()} == written
    assert main([*argv, "optim.epochs=3", "optim.lr=0.1"]) == 2
    assert "resumed with optim.lr 0.1, but the run trained with" in capsys.readouterr().err
    # --overwrite would replace the run that --resume continues: the two are refused together, nothing touched
    for resume in ("auto", str(checkpoints / "last.ckpt")):
        assert main([*argv[:-1], resume, "optim.epochs=3", "--overwrite"]) == 2
        assert "--resume and --overwrite: choose one" in capsys.readouterr().err
        assert {path: path.stat().st_mtime_ns for path in checkpoints.iterdir()} == written


def test_validation_region_metrics_are_means_over_the_images_that_have_the_region(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """val_mae_cloudy and val_sam_cloudy are means over the validation images with a cloud/shadow pixel of each
    one's value there, as evaluate's are: a batch's mean over its cloudy images was weighted by all its images, so
    a batch whose one image of four had clouds counted that image four times. Checked in float64 by hand."""
    from dsen2cr.training.module import DSen2CRTask

    task = DSen2CRTask(
        model={"num_blocks": 1, "num_features": 8, "include_sar": True},
        loss={"name": "l1"},
        optim={},
    )
    generator = torch.Generator().manual_seed(5)
    batches, expected_mae, expected_sam = [], [], []
    for cloudy_images in ([True, False, False, False], [True]):  # 4 images, the first cloudy; then 1 cloudy
        n = len(cloudy_images)
        target = torch.rand(n, 13, 16, 16, generator=generator, dtype=torch.float64) * 4 + 0.1
        pred = target + torch.randn(n, 13, 16, 16, generator=generator, dtype=torch.float64) * 0.2
        mask = torch.zeros(n, 16, 16, dtype=torch.int8)
        for i, cloudy in enumerate(cloudy_images):
            if cloudy:
                mask[i, 2 : 6 + 4 * i, 3:11] = 1
        p, t = ((x / 5).clamp(0, 1).numpy() for x in (pred, target))  # reflectance
        for i in np.flatnonzero(cloudy_images):
            region = mask[i].numpy() != 0
            expected_mae.append(np.abs(p[i] - t[i]).mean(axis=0)[region].mean())
            cosine = (p[i] * t[i]).sum(0) / np.linalg.norm(p[i], axis=0) / np.linalg.norm(t[i], axis=0)
            expected_sam.append(np.degrees(np.arccos(np.clip(cosine, -1, 1)))[region].mean())
        batch = {"s2_cloudy": target.float(), "s1": torch.zeros(n, 2, 16, 16), "s2": target.float(), "cloud_mask": mask}
        batches.append((batch, pred.float()))
    for index, (batch, pred) in enumerate(batches):
        monkeypatch.setattr(task, "_predict", lambda s2, s1, pred=pred: (pred, None))
        task.validation_step(batch, index + 1)  # no image grid
    means = task.validation.compute_and_reset()
    assert means["mae_cloudy"] == pytest.approx(np.mean(expected_mae), rel=1e-5)
    assert means["sam_cloudy"] == pytest.approx(np.mean(expected_sam), rel=1e-4)


def test_validation_takes_patches_of_different_sizes(workdir: Path) -> None:
    """Your own data may hold patches of several sizes: training crops them to one size, but validation runs whole
    patches, and a batch of a 48 px and a 64 px patch failed once the first epoch had trained (an internal error:
    "stack expects each tensor to be equal size"). They run in one stack per size, as in evaluate; val_loss and
    val_mae are the means over the patches, computed here in float64 with the run's weights."""
    from dsen2cr.cli import main

    root = workdir.tree()
    other = workdir.triplet(root, "ROIs1158_spring", 2, 1, size=64, seed=5)
    with (root / "files.csv").open("a") as rows:
        rows.write(
            f"2\tROIs1158_spring_s1/s1_2\tROIs1158_spring_s2/s2_2\tROIs1158_spring_s2_cloudy/s2_cloudy_2\t{other.s1.name}\n"
        )
    config = workdir.config()  # a batch of 2: the two validation patches together
    assert main(["train", "--config", str(config), "--no-progress"]) == 0
    losses, maes, sizes = _validation_by_hand(config, workdir / "run")
    assert sorted(sizes) == [48, 64]
    logged = _logged_validation(workdir / "run")
    assert float(logged[-1]["val_loss"]) == pytest.approx(np.mean(losses), rel=1e-5), losses
    assert float(logged[-1]["val_mae"]) == pytest.approx(np.mean(maes), rel=1e-5), maes


def test_a_validation_loss_that_is_nan_stays_nan(monkeypatch: pytest.MonkeyPatch) -> None:
    """A validation batch whose prediction is NaN makes val_loss NaN (the checkpoint's name says ``val_lossnan``):
    left out of the mean, it would pass for the other batches' loss. Regions that a patch lacks are still left
    out of their metric's mean (not NaN)."""
    from dsen2cr.training.module import DSen2CRTask

    task = DSen2CRTask(model={"num_blocks": 1, "num_features": 8, "include_sar": True}, loss={"name": "l1"}, optim={})
    target = torch.full((2, 13, 16, 16), 1.5)
    batch = {"s2_cloudy": target, "s1": torch.zeros(2, 2, 16, 16), "s2": target, "cloud_mask": torch.zeros(2, 16, 16)}
    for pred in (target + 0.1, torch.full_like(target, float("nan"))):
        monkeypatch.setattr(task, "_predict", lambda s2, s1, pred=pred: (pred, None))
        task.validation_step(batch, 1)
    means = task.validation.compute_and_reset()
    assert math.isnan(means["loss"]) and math.isnan(means["mae"])
    assert math.isnan(means["mae_cloudy"])  # no patch has a cloud: no value, not logged


def test_a_validation_loss_that_becomes_nan_stops_the_run_at_that_epoch(
    tmp_path: Path, synthetic_tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A model whose validation prediction turns NaN (diverged) stops the run at that epoch's validation, as a NaN
    training loss does: it trained on to its last epoch (and exited 0 when that epoch's validation was finite).
    The checkpoints of earlier epochs stay; none is written for the NaN epoch."""
    from dsen2cr.training.module import DSen2CRTask, NonFiniteLossError

    predict = DSen2CRTask._predict

    def nan_in_epoch_1(self: DSen2CRTask, s2: torch.Tensor, s1: torch.Tensor | None) -> tuple:
        pred, variance = predict(self, s2, s1)
        diverged = not self.training and self.current_epoch == 1
        return (torch.full_like(pred, float("nan")) if diverged else pred), variance

    monkeypatch.setattr(DSen2CRTask, "_predict", nan_in_epoch_1)
    config = _config(tmp_path, synthetic_tree, optim__epochs="3")
    with pytest.raises(NonFiniteLossError, match="validation loss became nan at epoch 1; the run stopped"):
        _train(config)
    checkpoints = sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("*.ckpt"))
    assert len(checkpoints) == 2 and checkpoints[0].startswith("epoch000-") and "last.ckpt" in checkpoints
    rows = list(csv.DictReader((tmp_path / "run" / "logs" / "csv" / "metrics.csv").open()))
    assert {row["epoch"] for row in rows} == {"0", "1"}  # epoch 2 never trained


def test_a_training_run_gives_a_python_caller_its_determinism_back(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``trainer.deterministic: true`` (the small-cpu config) makes Lightning switch deterministic algorithms on
    and set CUBLAS_WORKSPACE_CONFIG for the rest of the process: a notebook, or ``dsen2cr demo``, went on to remove
    clouds under them. The run sets them for itself; the caller's come back."""
    import os

    from dsen2cr.training.train import run_training

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", False)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(False)  # the caller's
    try:
        run_training(load_config(workdir.config(), ["trainer.deterministic=true"]), progress=False)
        assert not torch.are_deterministic_algorithms_enabled()
        assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ
        assert torch.backends.cudnn.deterministic is False and torch.backends.cudnn.benchmark is False
    finally:
        torch.use_deterministic_algorithms(previous)


def test_a_checkpoint_is_checked_mapped_and_a_legacy_one_read(tmp_path: Path) -> None:
    """check_resume_settings maps a checkpoint's tensors (not read: its records are a few kB); a file of torch's
    legacy format, which cannot be mapped, is read whole, the same contents."""
    from dsen2cr.training.resume import _load_mapped

    contents = {"state_dict": {"w": torch.arange(6.0).reshape(2, 3)}, "global_step": 7}
    for legacy in (False, True):
        path = tmp_path / f"legacy{legacy}.ckpt"
        torch.save(contents, path, _use_new_zipfile_serialization=not legacy)
        loaded = _load_mapped(path)
        assert loaded["global_step"] == 7
        assert torch.equal(loaded["state_dict"]["w"], contents["state_dict"]["w"])


def test_a_finished_runs_process_group_is_destroyed(tmp_path: Path) -> None:
    """The process group of a multi-process run is destroyed once its fit has ended (left to the interpreter's exit,
    a finished gloo rank aborted once in a while: "terminate called without an active exception"); without one,
    nothing happens."""
    import torch.distributed as dist

    from dsen2cr.training.train import release_process_group

    release_process_group()  # none: nothing to do
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    assert dist.is_initialized()
    release_process_group()
    assert not dist.is_initialized()
