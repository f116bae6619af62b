"""Who writes an output (docs/design.md §3.4): a lock beside each output for the run, so that a second run on it
is refused at its start, and the removal of what killed runs left beside their outputs (the temporaries of
:func:`~dsen2cr.outputs.files.atomic_path` carry their process's id)."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Iterable, Iterator
from pathlib import Path

from dsen2cr.errors import DSen2CRError
from dsen2cr.launch import is_launched_worker
from dsen2cr.outputs.files import (
    check_name_length,
    describe_bytes,
    process_has_ended,
    process_is_running,
    temporary_writer,
)

log = logging.getLogger(__name__)

#: The suffix of a lock file beside an output (``.NAME.lock``): the process writing it, by pid and host.
LOCK_SUFFIX = ".lock"


@contextlib.contextmanager
def output_locks(paths: Iterable[Path], *, each_process: bool = False) -> Iterator[None]:
    """Hold a lock beside each output for the block, so that a second run on one output is refused at its
    start, naming the process that writes it (the final no-replace move of ``atomic_path`` stays the
    guarantee). A lock whose process has ended (a killed run on this host) is stale and taken over, and what
    that run left beside the output removed (:func:`remove_leftovers`); every lock taken is removed on the way
    out, also on an error or a signal. An output whose folder does not exist yet is not locked (the command
    creates the folder; the lock would have to create it first); processes a launcher started for a run that
    rank 0 holds (:func:`~dsen2cr.launch.is_launched_worker`) take no lock, unless ``each_process`` says that
    each process of the run writes outputs of its own (remove-clouds' ranks, each its share of the scenes)."""
    locked: list[Path] = []
    try:
        for path in map(Path, paths):
            if path.parent.is_dir() and (each_process or not is_launched_worker()):
                check_name_length(path)  # the lock is named after it: said of the output, not the lock
                _take_lock(path)
                locked.append(path)
        remove_leftovers(locked)  # the outputs are this run's now: what a killed run of them left goes
        yield
    finally:
        for path in locked:
            _lock_path(path).unlink(missing_ok=True)


def remove_leftovers(paths: Iterable[Path]) -> None:
    """Remove what killed runs writing ``paths`` left beside them: their temporaries of ``atomic_path``
    (``.STEM.PID.RANDOM.tmpSUFFIX``, PID a process that no longer runs) and the files named after them (a scene's
    staging and overview files, gigabytes for a full tile), saying so in a line per output and killed process.
    Temporaries of live processes, of other outputs and without a process id (written before it was in the
    name) stay. Each folder is listed once, however many outputs it holds."""
    by_folder: dict[Path, dict[str, Path]] = {}
    for path in paths:
        by_folder.setdefault(path.parent, {})[path.name] = path
    for folder, outputs in by_folder.items():
        _remove_killed_temporaries(folder, outputs)


def remove_leftovers_in(folder: Path) -> None:
    """:func:`remove_leftovers` for every output of a folder that one run owns (a training run's folder and its
    checkpoints): the temporaries of any name there whose process no longer runs."""
    if folder.is_dir():
        _remove_killed_temporaries(folder, None)


def _remove_killed_temporaries(folder: Path, outputs: dict[str, Path] | None) -> None:
    """Remove the temporaries in ``folder`` whose process no longer runs and that belong to one of ``outputs``
    (by name; None: to any output, the folder being one run's), with a line per output and process."""
    killed: dict[tuple[Path, int], list[Path]] = {}
    for entry in folder.iterdir():
        writer = temporary_writer(entry.name)
        if writer is None:
            continue
        name, pid = writer
        output = folder if outputs is None else outputs.get(name)
        if output is not None and process_has_ended(pid):
            killed.setdefault((output, pid), []).append(entry)
    for (output, pid), entries in sorted(killed.items()):
        removed, size = 0, 0
        for entry in entries:
            with contextlib.suppress(OSError):  # another user's file in a shared folder stays, uncounted
                entry_size = entry.lstat().st_size
                entry.unlink()
                removed, size = removed + 1, size + entry_size
        if not removed:
            continue
        files = "1 file" if removed == 1 else f"{removed} files"
        where = "in it" if output == folder else "beside it"
        log.info(
            "%s: removed %s that a killed run (process %d) left %s (%s)",
            output,
            files,
            pid,
            where,
            describe_bytes(size),
        )


def _lock_path(path: Path) -> Path:
    """The lock beside an output: ``.NAME.lock``."""
    return path.with_name(f".{path.name}{LOCK_SUFFIX}")


def _take_lock(path: Path) -> None:
    """Create ``.NAME.lock`` beside ``path`` holding this process's pid and host (atomically: O_EXCL). A lock of
    an ended process of this host is stale and taken over; one written on another host (a shared file system)
    is taken for a live run, since its pid cannot be checked here."""
    lock = _lock_path(path)
    for _ in range(2):
        try:
            handle = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner, host = _lock_owner(lock)
            if owner is not None and host not in (None, socket.gethostname()):
                raise DSen2CRError(
                    f"{path}: another dsen2cr run (process {owner} on {host}) is writing it; wait for it to end or "
                    f"choose another output (if that run was killed, delete {lock})"
                ) from None
            if owner is not None and owner != os.getpid() and process_is_running(owner):
                raise DSen2CRError(
                    f"{path}: another dsen2cr run (process {owner}) is writing it; wait for it to end or choose "
                    f"another output (a lock {lock.name} left by a process that no longer runs is ignored)"
                ) from None
            lock.unlink(missing_ok=True)  # stale: its process has ended
            continue
        with os.fdopen(handle, "w") as file:
            file.write(f"{os.getpid()} {socket.gethostname()}\n")
        return
    raise DSen2CRError(f"{path}: cannot take the lock {lock}")


def _lock_owner(lock: Path) -> tuple[int | None, str | None]:
    """The pid and host written in a lock file (None for what is unreadable or absent: locks written before the
    host was recorded hold the pid alone)."""
    try:
        fields = lock.read_text().split()
        return int(fields[0]), fields[1] if len(fields) > 1 else None
    except (OSError, ValueError, IndexError):
        return None, None
