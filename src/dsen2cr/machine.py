"""This process's share of the machine: the cores and memory it may use, within what a container, a batch job
or a launcher gives it. A container's or job's limits are the cgroup's (``docker run --memory 4g --cpus 2``, a
Kubernetes pod, SLURM's task/cgroup plugin), which ``os.cpu_count`` and ``psutil`` do not see: a process that
sized its work by the host's memory was killed by the kernel at the container's limit. A ``torchrun`` starts
one process per GPU on a machine; each sizes its threads and memory to its share (``LOCAL_WORLD_SIZE``), so
that together they take the machine once."""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from dsen2cr.launch import this_launch

#: Where the kernel's control groups are mounted (v2: one hierarchy; v1: one folder per controller).
CGROUP_ROOT = Path("/sys/fs/cgroup")
#: This process's control groups, one line each: ``ID:CONTROLLERS:PATH`` (v2: ``0::PATH``).
PROC_CGROUP = Path("/proc/self/cgroup")
#: A cgroup v1 memory limit at or above this is "no limit" (the kernel writes 2**63 rounded down to a page).
NO_LIMIT = 2**62
#: Where loader workers hand batches to the training process (PyTorch's shared memory; 64 MB in a Docker
#: container unless run with ``--shm-size`` or ``--ipc=host``).
SHARED_MEMORY = Path("/dev/shm")


def shared_memory_free() -> int | None:
    """Free bytes of :data:`SHARED_MEMORY` (None where the system has no such folder: macOS, Windows)."""
    try:
        return shutil.disk_usage(SHARED_MEMORY).free
    except OSError:
        return None


def local_processes() -> int:
    """The run's processes on this machine: torchrun's ``LOCAL_WORLD_SIZE`` (one per GPU), an ``srun`` step's
    tasks on this node (:func:`dsen2cr.launch.this_launch`), else 1."""
    return this_launch().local_world


def cores() -> int:
    """This process's cores (at least 1): those it may run on (its CPU affinity: ``taskset``, ``docker
    --cpuset-cpus``, a batch job's), at most its cgroup's CPU quota (``docker --cpus``) rounded up, divided among
    the run's processes on the machine, unless SLURM bound this task to its own (an ``srun`` task whose affinity
    is no larger than ``SLURM_CPUS_PER_TASK``: dividing again would leave it a fraction)."""
    machine = os.cpu_count() or 1
    allowed = _affinity() or machine
    quota = cpu_quota()
    usable = allowed if quota is None else min(allowed, math.ceil(quota))
    per_task = os.environ.get("SLURM_CPUS_PER_TASK", "")
    bound = this_launch().launcher == "srun" and per_task.isdigit() and allowed <= int(per_task)
    return max(1, usable if bound else usable // local_processes())


def memory_bytes() -> int:
    """This process's share of the memory: the machine's total, at most its cgroup's limit (a container's or a
    batch job's), divided among the run's processes on the machine."""
    import psutil

    total = psutil.virtual_memory().total
    limit = memory_limit()
    return (total if limit is None else min(total, limit[0])) // local_processes()


def available_memory_bytes() -> int:
    """Memory this process may still fill: the machine's available memory, at most what its cgroup's limit leaves
    (the limit less the group's usage, reclaimable file cache not counted)."""
    import psutil

    available = psutil.virtual_memory().available
    limit = memory_limit()
    return available if limit is None else min(available, limit[1])


def gdal_threads() -> str:
    """GDAL's ``NUM_THREADS``: ``ALL_CPUS`` for a process alone on a machine it may use whole, else its share of
    the cores."""
    return "ALL_CPUS" if limited_cores() is None else str(cores())


def limited_cores() -> int | None:
    """:func:`cores` where it is fewer than the machine's (a container's quota, an affinity, torchrun's processes
    sharing the machine); None where this process may use the machine whole."""
    share = cores()
    return share if share < (os.cpu_count() or 1) else None


def torch_cpu_threads() -> int | None:
    """Threads for PyTorch's CPU kernels where its default would oversubscribe this process's share: PyTorch
    follows the CPU affinity but not a cgroup's quota nor torchrun's processes sharing the machine (2 threads in
    a 1-CPU quota ran the paper's network 1.1-1.3x slower than 1 here). None where ``OMP_NUM_THREADS`` is set
    (the user's, or torchrun's) or the default is no larger than the share."""
    import torch

    share = limited_cores()
    if os.environ.get("OMP_NUM_THREADS") or share is None:
        return None
    return share if share < torch.get_num_threads() else None


def fit_torch_threads() -> int | None:
    """Set PyTorch's CPU threads to :func:`torch_cpu_threads` where it says so; return the number set (None:
    PyTorch's default kept)."""
    import torch

    threads = torch_cpu_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    return threads


def memory_limit() -> tuple[int, int] | None:
    """The tightest memory limit of this process's cgroup and its ancestors, as (limit, what it leaves: the
    limit less the group's usage, its inactive file cache not counted); None without one."""
    tightest: tuple[int, int] | None = None
    for folder in _cgroup_folders("memory"):
        v2 = (folder / "memory.max").is_file()
        limit = _read_int(folder / ("memory.max" if v2 else "memory.limit_in_bytes"))
        if limit is None or limit >= NO_LIMIT:
            continue
        usage = _read_int(folder / ("memory.current" if v2 else "memory.usage_in_bytes")) or 0
        stat = _read_stat(folder / "memory.stat")
        cache = stat.get("inactive_file", 0) if v2 else stat.get("total_inactive_file", stat.get("inactive_file", 0))
        left = max(0, limit - max(0, usage - cache))
        if tightest is None or left < tightest[1]:
            tightest = (limit, left)
    return tightest


def cpu_quota() -> float | None:
    """The tightest CPU quota of this process's cgroup and its ancestors, in CPUs (``docker --cpus 2.5``: 2.5);
    None without one."""
    quotas = []
    for folder in _cgroup_folders("cpu"):
        if (folder / "cpu.max").is_file():
            quota, _, period = (_read_text(folder / "cpu.max") or "max").partition(" ")
        else:
            quota = _read_text(folder / "cpu.cfs_quota_us") or "max"
            period = _read_text(folder / "cpu.cfs_period_us") or ""
        try:
            if quota not in ("max", "-1") and float(period) > 0:
                quotas.append(float(quota) / float(period))
        except ValueError:
            continue
    return min(quotas) if quotas else None


def _cgroup_folders(controller: str) -> Iterator[Path]:
    """The folders of this process's cgroup for ``controller`` and of its ancestors that exist, the mount's root
    last (inside a container the mount's root is the container's own group)."""
    try:
        lines = PROC_CGROUP.read_text().splitlines()
    except OSError:
        return
    seen: set[Path] = set()
    for line in lines:
        _, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if controllers == "":  # v2's unified hierarchy (or v1's and v2's side by side: the one with the files)
            mount: Path | None = CGROUP_ROOT
        elif controller in controllers.split(","):
            mount = next((CGROUP_ROOT / n for n in (controllers, controller) if (CGROUP_ROOT / n).is_dir()), None)
        else:
            mount = None
        if mount is None:
            continue
        relative = Path(path.strip().lstrip("/"))
        for folder in [mount / relative, *[mount / parent for parent in relative.parents]]:
            if folder.is_dir() and folder not in seen:
                seen.add(folder)
                yield folder


def _affinity() -> int | None:
    """How many CPUs this process may run on (None where the system does not say)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None


#: The CPU's description, its flags included (Linux).
CPU_INFO = Path("/proc/cpuinfo")
#: The x86 CPU flags of 16-bit arithmetic units (what ``--precision bf16`` and ``fp16`` may run on).
HALF_UNIT_FLAGS = ("amx_bf16", "amx_fp16", "avx512_bf16", "avx512_fp16")


def cpu_half_units() -> tuple[str, ...]:
    """The 16-bit arithmetic units this CPU's flags name (:data:`HALF_UNIT_FLAGS`; none where they cannot be
    read)."""
    text = _read_text(CPU_INFO)
    words = set(text.split()) if text else set()
    return tuple(flag for flag in HALF_UNIT_FLAGS if flag in words)


def _read_text(path: Path) -> str | None:
    """A control file's stripped text, None when it cannot be read."""
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _read_int(path: Path) -> int | None:
    """A control file's integer (``max`` and unreadable files: None)."""
    text = _read_text(path)
    try:
        return None if text is None or text == "max" else int(text)
    except ValueError:
        return None


def _read_stat(path: Path) -> dict[str, int]:
    """``memory.stat``'s ``name value`` lines."""
    stat: dict[str, int] = {}
    for line in (_read_text(path) or "").splitlines():
        name, _, value = line.partition(" ")
        if value.strip().isdigit():
            stat[name] = int(value)
    return stat
