"""SLURM's warning before a job's time limit (``#SBATCH --signal=SIGUSR1@90``), taken at the end of a batch.

Lightning's own handler saves a checkpoint from inside the signal handler, at whatever line the signal finds (after
the optimiser's step but before the count of finished batches, say), as ``hpc_ckpt_N.ckpt`` in the run folder,
where the next ``dsen2cr train`` took it for a file that is no part of a run. Here the signal only sets a flag. At
the end of the batch under way (the same batch on every rank: the ranks agree under DDP) the run saves
``checkpoints/requeue.ckpt``, a consistent mid-epoch checkpoint like Lightning's step-interval ones, and rank 0
asks ``scontrol requeue`` for the job, whose ``train --resume auto`` then continues from that batch (the training
loader starts after the batches it holds: :class:`dsen2cr.training.datamodule.TrainingLoader`). A warning during an
epoch's last batch or its validation waits for the epoch's own checkpoint, then requeues. The requeue checkpoint
goes once the next epoch starts (its epoch has a checkpoint of its own by then).
"""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from types import FrameType
from typing import Any

import lightning as L
from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment

from dsen2cr.launch import scontrol_requeue, slurm_job_id
from dsen2cr.weights import CHECKPOINT_DIR, progress_phrase

log = logging.getLogger(__name__)

#: The mid-epoch checkpoint a SLURM warning leaves in the run's checkpoint folder.
REQUEUE_CHECKPOINT = "requeue.ckpt"
#: The signal to ask SLURM for (``#SBATCH --signal=SIGUSR1@90``): Lightning's, so its documented line works.
REQUEUE_SIGNAL = signal.SIGUSR1
_NOT_TAKEN = object()


def slurm_job() -> str | None:
    """The SLURM job this run is a step of, as ``scontrol requeue`` takes it (``ARRAYJOB_TASK`` for an array
    task), when Lightning runs it as a SLURM run (not under torchrun, which it prefers; not in an interactive
    allocation); else None."""
    if TorchElasticEnvironment.detect() or not SLURMEnvironment.detect():
        return None
    return slurm_job_id()


class SlurmRequeue(L.Callback):
    """On :data:`REQUEUE_SIGNAL`, save the run where it stands at the end of the batch under way and requeue the
    job ``job`` (module docstring). Use with ``SLURMEnvironment(auto_requeue=False)``: Lightning's own handler
    would save from inside the signal handler."""

    def __init__(self, job: str) -> None:
        self.job = job
        self.warned = False  # set by the signal; read at a batch's end
        self.pending = False  # the warning came during an epoch's last batch: requeue after its checkpoint
        self._previous: Any = _NOT_TAKEN

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Take the signal (only a flag: nothing is saved inside a signal handler)."""
        self._previous = signal.signal(REQUEUE_SIGNAL, self._on_signal)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Give the signal back to its earlier handler."""
        self.give_back_signal()

    def give_back_signal(self) -> None:
        """Give the signal back to the handler it had before :meth:`setup` (once). A run that fails calls it after
        ``fit``: Lightning then calls no teardown hook, and its own signal handling puts back the handlers it found
        at the start, this callback's among them."""
        if self._previous is not _NOT_TAKEN:
            signal.signal(REQUEUE_SIGNAL, self._previous if self._previous is not None else signal.SIG_DFL)
            self._previous = _NOT_TAKEN

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.warned = True

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        """If any rank was warned: the last batch of an epoch waits for the epoch's checkpoint; another saves
        ``checkpoints/requeue.ckpt`` (every rank takes part) and requeues."""
        if self.pending or not trainer.strategy.reduce_boolean_decision(self.warned, all=False):
            return  # the reduction runs on every rank at every batch: the ranks decide together
        self.warned = False
        index = trainer.fit_loop.epoch_loop.batch_progress.current.state_dict()["processed"]  # batches done
        if index >= trainer.num_training_batches:
            self.pending = True
            return
        path = Path(trainer.default_root_dir) / CHECKPOINT_DIR / REQUEUE_CHECKPOINT
        trainer.save_checkpoint(path)
        if trainer.is_global_zero:
            done = progress_phrase(trainer.current_epoch, index)
            log.info("SLURM's time-limit warning: saved the run after %s in %s", done, path)
            self._requeue(path)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Requeue a warning that waited for the last epoch's checkpoint; remove the requeue checkpoint, which
        that checkpoint follows."""
        if self.pending:
            self.pending = False
            if trainer.is_global_zero:
                self._requeue(Path(trainer.default_root_dir) / CHECKPOINT_DIR / "last.ckpt")
        self._remove_requeue_checkpoint(trainer)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """The run has trained every epoch: its requeue checkpoint is no longer needed (nor a requeue)."""
        self._remove_requeue_checkpoint(trainer)

    @staticmethod
    def _remove_requeue_checkpoint(trainer: L.Trainer) -> None:
        if trainer.is_global_zero:
            (Path(trainer.default_root_dir) / CHECKPOINT_DIR / REQUEUE_CHECKPOINT).unlink(missing_ok=True)

    def _requeue(self, checkpoint: Path) -> None:
        """``scontrol requeue JOB``; a failure is a warning (the job then ends at its time limit)."""
        failure = scontrol_requeue(self.job)
        if failure is None:
            log.info("requeued SLURM job %s: its `train --resume auto` continues from %s", self.job, checkpoint)
            return
        log.warning(
            "scontrol requeue %s failed (%s): the job ends at its time limit; to continue, run it again with "
            "--resume auto (from %s)",
            self.job,
            failure,
            checkpoint,
        )
