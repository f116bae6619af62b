"""How this process was started for a run of several processes: by ``torchrun`` (or Lightning's own launcher),
or as a task of a SLURM job step (``srun``), Lightning's documented way to train on a cluster. One place reads the
launchers' variables: the ranks that split ``remove-clouds``' scenes, the GPU a process takes, its share of the
machine, and which process holds a run's outputs."""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass


@dataclass(frozen=True)
class Launch:
    """This process's place in its run: ``rank`` of ``world`` processes, ``local_rank`` of ``local_world`` on this
    machine (``local_rank`` None where no launcher says), started by ``launcher`` (``torchrun``, ``srun`` or
    ``none``)."""

    rank: int = 0
    world: int = 1
    local_rank: int | None = None
    local_world: int = 1
    launcher: str = "none"


def this_launch() -> Launch:
    """This process's :class:`Launch`. torchrun's variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
    ``LOCAL_WORLD_SIZE``) come first, also under ``srun`` (a torchrun per node); else a SLURM job step's
    (``SLURM_PROCID`` of ``SLURM_STEP_NUM_TASKS``, ``SLURM_LOCALID``, the step's tasks on this node). A batch
    script's own environment is no step (``SLURM_NTASKS`` there counts the job's tasks, not processes started):
    one process."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return Launch(
            rank=_int(env["RANK"]),
            world=max(1, _int(env["WORLD_SIZE"], 1)),
            local_rank=_int(env["LOCAL_RANK"]) if "LOCAL_RANK" in env else None,
            local_world=max(1, _int(env.get("LOCAL_WORLD_SIZE", "1"), 1)),
            launcher="torchrun",
        )
    if "SLURM_STEP_NUM_TASKS" in env and "SLURM_PROCID" in env:
        return Launch(
            rank=_int(env["SLURM_PROCID"]),
            world=max(1, _int(env["SLURM_STEP_NUM_TASKS"], 1)),
            local_rank=_int(env["SLURM_LOCALID"]) if "SLURM_LOCALID" in env else None,
            local_world=_tasks_on_this_node(env),
            launcher="srun",
        )
    return Launch(local_world=max(1, _int(env.get("LOCAL_WORLD_SIZE", "1"), 1)))


def slurm_job_id() -> str | None:
    """The SLURM job this process runs in, as ``scontrol requeue`` takes it (``ARRAYJOB_TASK`` for an array task),
    or None outside SLURM."""
    array = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array is not None:
        return f"{array}_{os.environ.get('SLURM_ARRAY_TASK_ID', '')}"
    return os.environ.get("SLURM_JOB_ID")


def slurm_batch_job() -> str | None:
    """:func:`slurm_job_id` where this process runs as SLURM's (a batch job or its ``srun`` step: not in an
    interactive allocation, whose job name is ``bash`` or ``interactive``, nor under torchrun), else None: the
    rule by which Lightning takes a run for a SLURM run."""
    env = os.environ
    if ("RANK" in env and "WORLD_SIZE" in env) or "SLURM_NTASKS" not in env:
        return None
    if env.get("SLURM_JOB_NAME") in ("bash", "interactive"):
        return None
    return slurm_job_id()


def scontrol_requeue(job: str) -> str | None:
    """Ask SLURM to requeue ``job`` (``scontrol requeue JOB``): None when it did, else why not, for a warning."""
    try:
        result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as error:
        return str(error)
    if result.returncode == 0:
        return None
    return (result.stderr or result.stdout).strip() or f"exit status {result.returncode}"


def is_launched_worker() -> bool:
    """Whether this process is a rank > 0 started by Lightning's launcher, torchrun or ``srun`` for a run that
    rank 0 has already prepared (and whose outputs rank 0 owns)."""
    if this_launch().rank > 0:
        return True
    return any(_int(os.environ.get(name, "0")) > 0 for name in ("LOCAL_RANK", "NODE_RANK"))


def on_rank_zeros_machine() -> bool:
    """Whether this process runs on the machine of its run's rank 0, and so reads the same files: the machine's
    rank that torchrun (``GROUP_RANK``), ``srun`` (``SLURM_NODEID``) or Lightning's launcher (``NODE_RANK``)
    gives is 0. False where none says."""
    names = {"torchrun": ("GROUP_RANK", "NODE_RANK"), "srun": ("SLURM_NODEID",)}.get(this_launch().launcher)
    name = next((n for n in names or ("NODE_RANK",) if n in os.environ), None)
    return name is not None and _int(os.environ[name], -1) == 0


def _tasks_on_this_node(env: os._Environ[str] | dict[str, str]) -> int:
    """The step's tasks on this node: ``SLURM_STEP_TASKS_PER_NODE`` (``2(x3),1``: 2 on each of the first three
    nodes, 1 on the fourth) at ``SLURM_NODEID``, else ``SLURM_NTASKS_PER_NODE``, else 1."""
    counts: list[int] = []
    for part in env.get("SLURM_STEP_TASKS_PER_NODE", "").split(","):
        match = re.fullmatch(r"\s*(\d+)(?:\(x(\d+)\))?\s*", part)
        if match:
            counts += [int(match[1])] * int(match[2] or 1)
    node = _int(env.get("SLURM_NODEID", "0"))
    if 0 <= node < len(counts):
        return max(1, counts[node])
    return max(1, _int(env.get("SLURM_NTASKS_PER_NODE", "1"), 1))


def _int(text: str, default: int = 0) -> int:
    """An integer variable's value (``default`` where it is empty or not a number)."""
    try:
        return int(text)
    except ValueError:
        return default
