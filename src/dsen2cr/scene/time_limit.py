"""SLURM's warning before a job's time limit (``#SBATCH --signal=SIGUSR1@90``) in ``remove-clouds``, as ``train``
takes it (:mod:`dsen2cr.training.requeue`): the signal only sets a flag, and at the end of the batch under way the
scene stops (:class:`TimeLimitWarning`: its journal kept, its outputs unwritten) so that the command can ask
``scontrol requeue`` for the job, whose ``remove-clouds … --resume`` then goes on from the windows predicted.
Without ``--resume`` in the command nothing would go on from them: the warning is said and the run goes on until
the limit. Outside SLURM (or in an interactive allocation) the signal keeps its default."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator
from types import FrameType

from dsen2cr.launch import scontrol_requeue, slurm_batch_job, this_launch

log = logging.getLogger(__name__)

#: The signal to ask SLURM for (``#SBATCH --signal=SIGUSR1@90``), as for ``train``.
REQUEUE_SIGNAL = signal.SIGUSR1


class TimeLimitWarning(KeyboardInterrupt):  # a stop, as Ctrl-C is, not an error
    """SLURM warned of the job's time limit, and the scene stopped at the end of the batch under way."""


class _Watch:
    """What the signal handler sets, and whether a warning stops the scene."""

    warned = False
    stops = False
    said = False


@contextlib.contextmanager
def time_limit_warning(*, stops: bool) -> Iterator[str | None]:
    """Take :data:`REQUEUE_SIGNAL` for the block where this process runs as a SLURM job's (yields the job, as
    ``scontrol requeue`` takes it, or None: the signal untouched); with ``stops``, a warning stops the scene at its
    batch's end (:func:`stop_if_warned`), else it is said once and the run goes on."""
    job = slurm_batch_job()
    if job is None or threading.current_thread() is not threading.main_thread():
        yield None
        return

    def on_signal(signum: int, frame: FrameType | None) -> None:
        _Watch.warned = True  # nothing else inside a signal handler

    _Watch.warned, _Watch.stops, _Watch.said = False, stops, False
    previous = signal.signal(REQUEUE_SIGNAL, on_signal)
    try:
        yield job
    finally:
        signal.signal(REQUEUE_SIGNAL, previous if previous is not None else signal.SIG_DFL)
        _Watch.warned = False


def stop_if_warned() -> None:
    """At the end of a batch: stop the scene (:class:`TimeLimitWarning`) once SLURM warned of the time limit, where
    the run stops for it; else say the warning once."""
    if not _Watch.warned:
        return
    if _Watch.stops:
        _Watch.warned = False
        raise TimeLimitWarning
    if not _Watch.said:
        _Watch.said = True
        log.warning(
            "SLURM warned of the job's time limit; without --resume nothing would go on from this scene's windows, "
            "so the run goes on until the limit (with --resume it stops here and the job is requeued)"
        )


def requeue_after_warning(job: str | None) -> int:
    """Once the warning stopped a scene (:class:`TimeLimitWarning`): ask SLURM to requeue ``job`` (the requeued
    command's ``--resume`` goes on from the scene's journal), saying how it went; the exit status of a process
    stopped by the signal."""
    failure = scontrol_requeue(job) if job is not None else "not a SLURM job"
    if failure is None:
        log.warning("SLURM's time-limit warning: the scene stopped; requeued job %s, whose --resume goes on", job)
    else:
        others = " (each task of the step asks: another may have asked first)" if this_launch().world > 1 else ""
        log.warning(
            "SLURM's time-limit warning: the scene stopped, but scontrol requeue %s failed (%s)%s; run the command "
            "again (--resume goes on from the scene's journal)",
            job,
            failure,
            others,
        )
    return 128 + REQUEUE_SIGNAL
