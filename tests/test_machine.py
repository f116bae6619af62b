"""This process's share of the machine within a container's or a batch job's limits (cgroups v1 and v2, CPU
affinity), and that a run in a memory-limited cgroup plans for that limit, not the host's memory."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch

GIB = 2**30


def _tree(root: Path, files: dict[str, str]) -> None:
    """Write a fake cgroup mount: ``{relative path: content}``."""
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


@pytest.fixture
def cgroups(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A fake ``/sys/fs/cgroup`` and ``/proc/self/cgroup``, and a 16-core machine this process may use whole."""
    root, proc = tmp_path / "cgroup", tmp_path / "proc-self-cgroup"
    root.mkdir()
    monkeypatch.setattr("dsen2cr.machine.CGROUP_ROOT", root)
    monkeypatch.setattr("dsen2cr.machine.PROC_CGROUP", proc)
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(16)))
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    return root, proc


def test_cgroup_v2_limits_of_the_group_and_its_ancestors(cgroups, monkeypatch: pytest.MonkeyPatch) -> None:
    """v2 (a container with cgroupns, a systemd slice): the tightest limit among the group and its ancestors;
    what it leaves is the limit less the group's usage, its inactive file cache not counted."""
    from types import SimpleNamespace

    from dsen2cr import machine

    root, proc = cgroups
    proc.write_text("0::/pod/job\n")
    _tree(
        root,
        {
            "cgroup.controllers": "cpu memory",
            "pod/memory.max": str(3 * GIB),
            "pod/memory.current": str(2 * GIB),
            "pod/memory.stat": f"anon 1\ninactive_file {GIB // 2}\n",
            "pod/cpu.max": "250000 100000",
            "pod/job/memory.max": "max",
            "pod/job/cpu.max": "max 100000",
        },
    )
    monkeypatch.setattr("psutil.virtual_memory", lambda: SimpleNamespace(total=128 * GIB, available=100 * GIB))
    assert machine.memory_limit() == (3 * GIB, 3 * GIB - (2 * GIB - GIB // 2))
    assert machine.memory_bytes() == 3 * GIB
    assert machine.available_memory_bytes() == GIB + GIB // 2
    assert machine.cpu_quota() == 2.5
    assert machine.cores() == 3 and machine.limited_cores() == 3 and machine.gdal_threads() == "3"
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "3")  # torchrun's three processes share the pod
    assert (machine.cores(), machine.memory_bytes()) == (1, GIB)


def test_cgroup_v1_container_sees_its_own_group_at_the_mount(cgroups, monkeypatch: pytest.MonkeyPatch) -> None:
    """v1 without a cgroup namespace (older Docker): /proc/self/cgroup names the host's path, which does not exist
    inside; the container's own group is mounted at the controller's root. Its 1 GiB limit and 0.5-CPU quota
    count; the host's 2**63 "no limit" does not."""
    from types import SimpleNamespace

    from dsen2cr import auto, machine

    root, proc = cgroups
    proc.write_text("12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n1:name=systemd:/docker/abc\n0::/\n")
    _tree(
        root,
        {
            "memory/memory.limit_in_bytes": str(GIB),
            "memory/memory.usage_in_bytes": str(GIB // 4),
            "memory/memory.stat": "cache 5\ntotal_inactive_file 0\n",
            "cpu,cpuacct/cpu.cfs_quota_us": "50000",
            "cpu,cpuacct/cpu.cfs_period_us": "100000",
        },
    )
    monkeypatch.setattr("psutil.virtual_memory", lambda: SimpleNamespace(total=64 * GIB, available=60 * GIB))
    assert machine.memory_limit() == (GIB, GIB - GIB // 4)
    assert auto.memory_budget("cpu") == (GIB - GIB // 4) // 2  # was 8 GiB: half the host's, at most 8
    assert (machine.cpu_quota(), machine.cores()) == (0.5, 1)
    (root / "memory/memory.limit_in_bytes").write_text("9223372036854771712")  # the kernel's "no limit"
    assert machine.memory_limit() is None and machine.memory_bytes() == 64 * GIB
    assert auto.memory_budget("cpu") == auto.MAX_CPU_MEMORY


def test_no_cgroup_and_the_whole_machine(cgroups, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without cgroup files (macOS, a bare machine) and on all cores: the machine whole, PyTorch's default kept.
    A narrower affinity (taskset, a container's cpuset) is shared by torchrun's processes; an srun task that
    SLURM bound to its own CPUs (``-c 4``: ``SLURM_CPUS_PER_TASK``) keeps them, not divided again."""
    from dsen2cr import machine

    assert machine.memory_limit() is None and machine.cpu_quota() is None
    assert (machine.cores(), machine.limited_cores(), machine.gdal_threads()) == (16, None, "ALL_CPUS")
    assert machine.torch_cpu_threads() is None
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2, 3})
    assert (machine.cores(), machine.limited_cores(), machine.gdal_threads()) == (4, 4, "4")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert machine.cores() == 1
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    step = {"SLURM_STEP_NUM_TASKS": "4", "SLURM_PROCID": "1", "SLURM_STEP_TASKS_PER_NODE": "4"}
    for name, value in step.items():
        monkeypatch.setenv(name, value)
    assert machine.cores() == 1  # not bound (no -c): the four tasks share the four CPUs
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "4")
    assert machine.cores() == 4


def test_torch_threads_follow_the_quota_unless_omp_num_threads_says(cgroups, monkeypatch: pytest.MonkeyPatch) -> None:
    """PyTorch's default follows the affinity, not a quota: in a 1-CPU quota it gets 1 thread (where its default
    is more); ``OMP_NUM_THREADS`` (the user's or torchrun's) is left to PyTorch."""
    from dsen2cr import machine

    root, proc = cgroups
    proc.write_text("0::/\n")
    _tree(root, {"cgroup.controllers": "cpu", "cpu.max": "100000 100000"})
    monkeypatch.setattr(torch, "get_num_threads", lambda: 16)
    assert machine.torch_cpu_threads() == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    assert machine.torch_cpu_threads() is None


def _memory_cgroup(limit: int) -> Path | None:
    """A real cgroup v1 memory group limited to ``limit`` bytes (None where this machine does not allow one)."""
    mount = Path("/sys/fs/cgroup/memory")
    if not (mount / "memory.limit_in_bytes").is_file() or not os.access(mount, os.W_OK):
        return None
    group = mount / f"dsen2cr-test-{uuid.uuid4().hex[:8]}"
    try:
        group.mkdir()
        (group / "memory.limit_in_bytes").write_text(str(limit))
    except OSError:
        return None
    return group


def test_a_run_in_a_memory_limited_container_plans_for_its_limit(tmp_path: Path, weights_file) -> None:
    """Measured: in a 1.2 GB cgroup the paper's model on the bundled scene planned for an 8 GiB budget (1024 px
    windows, 1.8 GB resident) and was killed by the kernel (exit 137). The budget is now half what the group's
    limit leaves; the tool's own process is put in a real cgroup (root, cgroup v1, as on this project's machines;
    skipped elsewhere)."""
    from dsen2cr.data.sample import sample_scene

    group = _memory_cgroup(int(1.2 * GIB))
    if group is None:
        pytest.skip("no writable cgroup v1 memory controller here")
    try:
        weights, out = weights_file("dsen2cr-small-nosar"), tmp_path / "out.tif"
        command = [sys.executable, "-m", "dsen2cr.cli", "remove-clouds", "--weights", str(weights), "--s2",
                   str(sample_scene()), "--out", str(out), "--no-progress", "--backend", "eager"]  # fmt: skip
        result = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=300,
            preexec_fn=lambda: (group / "cgroup.procs").write_text(str(os.getpid())),
        )
    finally:
        for _ in range(50):  # the group can be removed once the kernel has moved its ended process out
            try:
                group.rmdir()
                break
            except OSError:
                time.sleep(0.1)
    assert result.returncode == 0, result.stderr
    budget = float(result.stdout.split("budget")[0].rsplit("for a ", 1)[1].split()[0])
    assert 0.2 < budget <= 0.6, result.stdout  # GiB: half of at most 1.2 GB less what the process already uses
    assert "within this container's or job's memory limit of 1.20 GiB" in result.stdout


def test_a_memory_budget_beyond_the_containers_limit_is_warned_of(
    cgroups, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """``--memory 4`` in a container whose limit leaves 0.75 GiB plans 4 GiB of windows, which the kernel kills:
    said once, with what the limit leaves; a budget within it, or none given, is not warned of."""
    import logging

    from dsen2cr import create_model
    from dsen2cr.auto import resolve_tile

    root, proc = cgroups
    proc.write_text("0::/\n")
    _tree(root, {"cgroup.controllers": "memory", "memory.max": str(GIB), "memory.current": str(GIB // 4)})
    config = create_model("dsen2cr-nosar").config
    with caplog.at_level(logging.INFO, logger="dsen2cr"):
        resolve_tile(config, "auto", device="cpu", batch_size=1, overlap=64, memory_gib=4)
        resolve_tile(config, "auto", device="cpu", batch_size=1, overlap=64, memory_gib=0.5)
        resolve_tile(config, "auto", device="cpu", batch_size=1, overlap=64)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "--memory 4.00 GiB is more than this container's or job's memory limit leaves (0.75 GiB of 1.00 GiB): the "
        "kernel may kill the run; give --memory 0.38 or less (half what it leaves, as the default plans)"
    ]
