"""This process's share of the machine. A ``torchrun`` starts one process per GPU on a machine; each sizes its
threads and memory to its share (``LOCAL_WORLD_SIZE``), so that together they take the machine once."""

from __future__ import annotations

import os


def local_processes() -> int:
    """The run's processes on this machine: torchrun's ``LOCAL_WORLD_SIZE`` (one per GPU), else 1."""
    try:
        return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        return 1


def cores() -> int:
    """This process's cores: the machine's, divided among the run's processes on it (at least 1)."""
    return max(1, (os.cpu_count() or 1) // local_processes())


def memory_bytes() -> int:
    """This process's share of the machine's memory (its total, divided among the run's processes on it)."""
    import psutil

    return psutil.virtual_memory().total // local_processes()


def gdal_threads() -> str:
    """GDAL's ``NUM_THREADS``: ``ALL_CPUS`` for a process alone on the machine, else its share of the cores."""
    return "ALL_CPUS" if local_processes() == 1 else str(cores())
