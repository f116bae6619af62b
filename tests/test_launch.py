"""How a process was started for a run of several (torchrun, a SLURM job step), read in one place
(``dsen2cr.launch``): ranks, local ranks, processes per machine, and which process holds the run's outputs."""

from __future__ import annotations

import pytest

LAUNCH_VARIABLES = (
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "NODE_RANK",
    "GROUP_RANK",
    "SLURM_PROCID",
    "SLURM_LOCALID",
    "SLURM_NODEID",
    "SLURM_NTASKS",
    "SLURM_NTASKS_PER_NODE",
    "SLURM_STEP_NUM_TASKS",
    "SLURM_STEP_TASKS_PER_NODE",
)


@pytest.fixture
def environment(monkeypatch: pytest.MonkeyPatch):
    """Set exactly the given launch variables (the others removed)."""

    def set_only(**values: str) -> None:
        for name in LAUNCH_VARIABLES:
            monkeypatch.delenv(name, raising=False)
        for name, value in values.items():
            monkeypatch.setenv(name, value)

    return set_only


def test_an_srun_steps_tasks(environment) -> None:
    """``srun --nodes 4 --ntasks 7`` puts 2 tasks on each of the first three nodes and 1 on the fourth
    (``SLURM_STEP_TASKS_PER_NODE=2(x3),1``): task 6 is rank 6 of 7, alone on node 3; task 3 is the second of two
    on node 1, and a worker of the run."""
    from dsen2cr.launch import Launch, is_launched_worker, this_launch
    from dsen2cr.machine import local_processes

    step = {"SLURM_STEP_NUM_TASKS": "7", "SLURM_NTASKS": "7", "SLURM_STEP_TASKS_PER_NODE": "2(x3),1"}
    environment(**step, SLURM_PROCID="6", SLURM_LOCALID="0", SLURM_NODEID="3")
    assert this_launch() == Launch(rank=6, world=7, local_rank=0, local_world=1, launcher="srun")
    environment(**step, SLURM_PROCID="3", SLURM_LOCALID="1", SLURM_NODEID="1")
    assert this_launch() == Launch(rank=3, world=7, local_rank=1, local_world=2, launcher="srun")
    assert is_launched_worker() and local_processes() == 2
    environment(**step, SLURM_PROCID="0", SLURM_LOCALID="0", SLURM_NODEID="0")
    assert not is_launched_worker()


def test_a_batch_script_is_one_process(environment) -> None:
    """The batch script's own environment (``sbatch --ntasks 4``, no ``srun``) counts the job's tasks in
    ``SLURM_NTASKS`` but started one process: it is not a run of four (it would take a quarter of the scenes)."""
    from dsen2cr.launch import Launch, is_launched_worker, this_launch

    environment(SLURM_NTASKS="4", SLURM_NTASKS_PER_NODE="4", SLURM_PROCID="0", SLURM_LOCALID="0", SLURM_NODEID="0")
    assert this_launch() == Launch() and not is_launched_worker()


def test_torchrun_comes_first_and_lightnings_launcher_makes_workers(environment) -> None:
    """A torchrun per node started by ``srun`` (one task per node): torchrun's ranks are the run's. Lightning's
    own launcher sets ``LOCAL_RANK`` and ``NODE_RANK`` (no ``RANK``): its children are workers."""
    from dsen2cr.launch import Launch, is_launched_worker, this_launch

    environment(
        SLURM_STEP_NUM_TASKS="2",
        SLURM_PROCID="1",
        SLURM_LOCALID="0",
        RANK="5",
        WORLD_SIZE="8",
        LOCAL_RANK="1",
        LOCAL_WORLD_SIZE="4",
    )
    assert this_launch() == Launch(rank=5, world=8, local_rank=1, local_world=4, launcher="torchrun")
    environment(LOCAL_RANK="1", NODE_RANK="0", WORLD_SIZE="2")
    assert this_launch().rank == 0 and is_launched_worker()
    environment(LOCAL_RANK="0", NODE_RANK="1", WORLD_SIZE="4")
    assert is_launched_worker()
    environment(RANK="", WORLD_SIZE="x")  # unreadable values: one process, not a crash
    assert this_launch() == Launch(launcher="torchrun") and not is_launched_worker()


@pytest.mark.parametrize(
    ("variables", "expected"),
    [
        ({"SLURM_STEP_NUM_TASKS": "8", "SLURM_PROCID": "3", "SLURM_NODEID": "0"}, True),  # srun: the node's id
        ({"SLURM_STEP_NUM_TASKS": "8", "SLURM_PROCID": "5", "SLURM_NODEID": "1"}, False),
        ({"SLURM_STEP_NUM_TASKS": "8", "SLURM_PROCID": "5"}, False),  # nothing says: another machine, maybe
        ({"RANK": "3", "WORLD_SIZE": "8", "GROUP_RANK": "0", "SLURM_NODEID": "1"}, True),  # torchrun's own, first
        ({"RANK": "5", "WORLD_SIZE": "8", "GROUP_RANK": "1", "NODE_RANK": "0"}, False),
        ({"RANK": "5", "WORLD_SIZE": "8", "NODE_RANK": "1"}, False),
        ({"LOCAL_RANK": "1", "NODE_RANK": "0", "WORLD_SIZE": "2"}, True),  # Lightning's launcher
        ({"LOCAL_RANK": "1", "NODE_RANK": "x", "WORLD_SIZE": "2"}, False),
        ({}, False),
    ],
)
def test_a_process_on_rank_0s_machine(environment, variables: dict[str, str], expected: bool) -> None:
    """Which machine a process runs on, by what its launcher says: a worker there reads rank 0's files."""
    from dsen2cr.launch import on_rank_zeros_machine

    environment(**variables)
    assert on_rank_zeros_machine() is expected


@pytest.mark.parametrize(("visible", "expected"), [(4, "cuda:2"), (1, "cuda:0")])
def test_each_process_takes_its_gpu(environment, monkeypatch: pytest.MonkeyPatch, visible: int, expected: str) -> None:
    """Task 2 of an srun step takes ``cuda:2`` where it sees the node's four GPUs, and the one it sees where
    ``srun --gpus-per-task 1`` gave each task its own (``cuda:2`` did not exist there); one process alone keeps
    ``cuda``; an index given is kept."""
    import torch

    from dsen2cr.auto import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: visible)
    environment(SLURM_STEP_NUM_TASKS="4", SLURM_PROCID="2", SLURM_LOCALID="2", SLURM_STEP_TASKS_PER_NODE="4")
    assert str(resolve_device("cuda")) == expected == str(resolve_device("auto"))
    assert str(resolve_device("cuda:0")) == "cuda:0"
    environment()
    assert str(resolve_device("cuda")) == "cuda"


@pytest.mark.parametrize("rank", ["0", "1"])
def test_a_refusal_of_the_whole_run_is_said_by_rank_0_alone(
    environment, rank: str, tmp_path, capsys: pytest.CaptureFixture
) -> None:
    """Every task of an srun step reads the same config: a key it misspells stops them all, and rank 0 alone says
    so (the launched tasks stop with exit 2 and no line); one process's own refusal is said by that process."""
    from dsen2cr.cli import main

    environment(SLURM_PROCID=rank, SLURM_STEP_NUM_TASKS="2")
    config = tmp_path / "run.yaml"
    config.write_text("optim:\n  epoch: 3\n")
    assert main(["train", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert ("unknown key" in err) == (rank == "0"), err
    assert main(["remove-clouds", "--weights", str(tmp_path / "none.safetensors"), "--s2", str(config),
                 str(tmp_path / "b.tif"), "--out", str(tmp_path)]) == 2  # fmt: skip
    assert "b.tif: S2 scene not found" in capsys.readouterr().err  # each process checks the scenes it is given


@pytest.mark.parametrize(
    ("variables", "launcher"),
    [
        ({"SLURM_STEP_NUM_TASKS": "2", "SLURM_STEP_TASKS_PER_NODE": "2", "SLURM_NODEID": "0"}, "srun"),
        ({"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "GROUP_RANK": "0"}, "torchrun"),
    ],
)
@pytest.mark.parametrize("rank", [0, 1])
def test_a_command_of_one_process_started_as_several_is_refused(
    environment,
    workdir,
    weights_file,
    variables: dict[str, str],
    launcher: str,
    rank: int,
    capsys: pytest.CaptureFixture,
) -> None:
    """``srun dsen2cr evaluate …`` in a job of two tasks per node (a batch script's ``#SBATCH --ntasks-per-node``
    for its training) started two evaluations of one report at once: both failed, each with another error
    (``output folder rep/progress does not exist``, ``[Errno 2] No such file …``), or could write it twice. A
    command that writes and runs as one process is refused before any work in every process that a launcher
    started several of (rank 0 says it, with how to start it once; the others stop with 2 and no line); a
    command that only reads and prints (weights info, doctor) runs in each."""
    from dsen2cr.cli import main

    ranks = {"SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank)} if launcher == "srun" else {}
    ranks |= {"RANK": str(rank), "LOCAL_RANK": str(rank)} if launcher == "torchrun" else {}
    environment(**variables, **ranks)
    weights, data = weights_file("dsen2cr-small-nosar"), workdir.tree()
    argv = ["evaluate", "--weights", str(weights), "--data-root", str(data), "--file-list", str(data / "files.csv")]
    assert main([*argv, "--out", str(workdir / "report"), "--no-progress"]) == 2
    said = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    if rank == 0:
        assert len(said) == 1, said
        assert f"evaluate runs as one process, but {launcher} started 2 (this is rank 0)" in said[0]
        assert ("srun --ntasks 1 dsen2cr evaluate" if launcher == "srun" else "without torchrun") in said[0]
    else:
        assert said == []
    assert not (workdir / "report").exists()
    assert main(["weights", "info", str(weights)]) == 0
    assert "dsen2cr-small" in capsys.readouterr().out
