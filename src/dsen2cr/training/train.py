"""``dsen2cr train``: a Lightning run with checkpoints every epoch, exact resume, CSV and TensorBoard logs."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import lightning as L
import torch
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO

from dsen2cr.config import RunConfig, TrainerSection, save_config
from dsen2cr.errors import DSen2CRError, RunWideError
from dsen2cr.launch import is_launched_worker, on_rank_zeros_machine, this_launch
from dsen2cr.models import family_of
from dsen2cr.onednn import refuse_lowered_cpu_float32
from dsen2cr.outputs.files import atomic_path, path_identity, prepare_output_folder, write_failure
from dsen2cr.outputs.locks import output_locks, remove_leftovers_in
from dsen2cr.outputs.room import check_run_room
from dsen2cr.precision import training_arithmetic
from dsen2cr.said_warnings import warnings_said
from dsen2cr.training.datamodule import SEN12MSCRDataModule
from dsen2cr.training.initial_weights import read_initial_weights, start_from
from dsen2cr.training.logs import HistoryCSVLogger, warnings_kept
from dsen2cr.training.module import DSen2CRTask, NonFiniteLossError
from dsen2cr.training.requeue import SlurmRequeue, slurm_job
from dsen2cr.training.resume import (
    check_resume_checkpoint,
    check_resume_settings,
    newest_or_none,
    refuse_other_processes,
)
from dsen2cr.weights import (
    CHECKPOINT_DIR,
    last_checkpoint,
    newest_checkpoint,
    progress_phrase,
)

log = logging.getLogger(__name__)

#: ``--resume auto``: the run folder's newest checkpoint if it holds one, else a new run (a requeued job's line).
RESUME_AUTO = "auto"

RESOLVED_CONFIG = "config.yaml"
#: What a run writes into its folder (``--overwrite`` replaces these, and refuses a folder with anything else).
RUN_ENTRIES = (CHECKPOINT_DIR, "logs", RESOLVED_CONFIG, "weights_digest.json")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoint writer that saves under a temporary name in the same folder, then renames.

    A run killed while saving leaves the previous checkpoint intact, never a truncated one.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        """Save ``checkpoint`` to ``path`` atomically."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:  # a failed write (a full disk) is one line: run_training adds what stays
            super().save_checkpoint(checkpoint, tmp, storage_options)


class _EpochLine(Callback):
    """Log one line per epoch (useful in logs where progress bars are off): its training loss and the metrics of
    its validation; with a variance tail, the share of validation values within ±1σ of the target (0.683 when σ
    is calibrated). Written when the epoch ends: validation ends before Lightning reduces the epoch's training
    loss, so a line written then gave the previous epoch's."""

    #: The metrics of the line, those the run logs.
    KEYS = ("train_loss_epoch", "val_loss", "val_mae", "val_psnr", "val_coverage_1sigma")

    def __init__(self) -> None:
        self.validated_epoch: int | None = None

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.validated_epoch = trainer.current_epoch

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        m = trainer.callback_metrics  # the epoch's reduced training loss, read after the epoch's end
        validated = self.validated_epoch == trainer.current_epoch  # else the val_ values are an earlier epoch's
        keys = [k for k in self.KEYS if k in m and (validated or not k.startswith("val_"))]
        log.info("epoch %d: %s", trainer.current_epoch, ", ".join(f"{k} {m[k].item():.4f}" for k in keys))


def prepare_run_dir(config: RunConfig, *, resume: str | None, overwrite: bool) -> Path:
    """Create the run folder (rank 0; a launched worker takes it as rank 0 makes it); refuse one that already holds
    a run unless resuming or ``overwrite``, and one that holds anything a run does not write
    (``dsen2cr.outputs.files.prepare_output_folder``)."""
    out = Path(config.trainer.out_dir)
    if config.data.root is not None:  # the dataset is read, never written (as a product folder in remove-clouds)
        root = path_identity(Path(config.data.root))
        if path_identity(out) == root or path_identity(out).startswith(root + os.sep):
            raise DSen2CRError(
                f"trainer.out_dir: {out} is inside the data root {config.data.root}; the dataset is read, never "
                "written: choose a run folder outside it"
            )
    if is_launched_worker():  # rank 0 prepares the folder (a worker writes nothing in it): a worker of an srun step
        return out  # that made it at its start had rank 0 take it for the user's, and keep it after a refusal
    if resume is not None:
        out.mkdir(parents=True, exist_ok=True)
        remove_leftovers_in(out)  # what a killed process of the run left goes
        remove_leftovers_in(out / CHECKPOINT_DIR)
        return out
    # A folder without a checkpoint is not a run: what a failed start left (config.yaml, logs) is replaced.
    has_checkpoint = (out / CHECKPOINT_DIR).is_dir() and any((out / CHECKPOINT_DIR).glob("*.ckpt"))
    hint = "resume it with --resume, or pass --overwrite"
    return prepare_output_folder(
        out, owned=RUN_ENTRIES, overwrite=overwrite or not has_checkpoint, what="a run", hint=hint
    )


def build_trainer(config: RunConfig, out: Path, *, progress: bool = True, resumed_step: int | None = None) -> L.Trainer:
    """A Lightning Trainer with the run's checkpointing, logging and distribution settings (``resumed_step``:
    the global step of the checkpoint a resumed run starts from; its CSV log keeps the rows before it)."""
    t = config.trainer
    checkpoint = ModelCheckpoint(
        dirpath=out / CHECKPOINT_DIR,
        filename="epoch{epoch:03d}-val_loss{val_loss:.5f}",
        auto_insert_metric_name=False,
        save_top_k=-1,
        every_n_epochs=1,
        save_last=True,
        enable_version_counter=False,
    )
    callbacks: list[Callback] = [checkpoint, _EpochLine()]
    plugins: list[Any] = [AtomicCheckpointIO()]
    if (job := slurm_job()) is not None:  # SLURM's time-limit warning taken at a batch's end, not Lightning's way
        callbacks.append(SlurmRequeue(job))
        plugins.append(SLURMEnvironment(auto_requeue=False))
    if progress:
        callbacks.append(TQDMProgressBar(refresh_rate=10))
    loggers = [
        HistoryCSVLogger(out, name="logs", version="csv", keep_until_step=resumed_step),
        TensorBoardLogger(out, name="logs", version="tensorboard", default_hp_metric=False),
    ]
    return L.Trainer(
        default_root_dir=out,
        max_epochs=config.optim.epochs,
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=t.strategy,
        precision=t.precision,  # type: ignore[arg-type]  # checked by the config
        gradient_clip_val=t.gradient_clip_val,
        deterministic=t.deterministic,
        log_every_n_steps=t.log_every_n_steps,
        limit_train_batches=None if t.limit_train_batches == 1.0 else t.limit_train_batches,
        limit_val_batches=None if t.limit_val_batches == 1.0 else t.limit_val_batches,
        callbacks=callbacks,
        logger=loggers,
        plugins=plugins,
        enable_progress_bar=progress,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )


def build_task(
    config: RunConfig, data: dict[str, Any] | None = None, started_from: dict[str, str] | None = None
) -> DSen2CRTask:
    """The LightningModule for a run configuration; ``data``: what it trains on, and ``started_from``: the record
    of the weights it started from (``model.init_weights``), for its checkpoints' record
    (:meth:`~dsen2cr.training.datamodule.SEN12MSCRDataModule.record`,
    :attr:`~dsen2cr.training.initial_weights.InitialWeights.record`)."""
    model = config.model.model_config()
    return DSen2CRTask(
        model=model.to_dict(),
        model_family=family_of(model).name,
        loss=config.loss.__dict__.copy(),
        optim=config.optim.__dict__.copy(),
        val_images=config.trainer.val_images,
        channels_last=config.trainer.channels_last,
        data=data,
        init_weights=started_from,
    )


def check_launch(trainer: TrainerSection) -> None:
    """Refuse, before anything is written, processes that Lightning would not join as they were started: in a
    SLURM job of several tasks a process that ``srun`` did not start, asking for several devices (Lightning takes
    the job's tasks for the run's processes and waits for the others forever, deaf to SIGTERM); in an ``srun``
    step, ``trainer.devices`` other than its tasks on this node (task 1 would train a run of its own into task 0's
    folder) or ``trainer.num_nodes`` other than its nodes."""
    env, launch = os.environ, this_launch()
    if launch.launcher == "torchrun" or not SLURMEnvironment.detect():  # Lightning's own rule for a SLURM run
        return
    if launch.launcher == "none":
        several_gpus = trainer.accelerator != "cpu" and torch.cuda.device_count() > 1
        several = (trainer.devices == "auto" and several_gpus) or trainer.devices not in ("auto", 1)
        distributed = several or trainer.num_nodes > 1 or trainer.strategy not in ("auto", "single_device")
        tasks = env["SLURM_NTASKS"]
        if distributed and tasks not in ("", "1"):
            raise DSen2CRError(
                f"SLURM_NTASKS={tasks}: this process runs in a SLURM job of {tasks} tasks but was not started by srun, "
                "and Lightning would wait for the others forever; start it as `srun dsen2cr train …` (one task per "
                "device), or ask the job for one task"
            )
        return
    nodes = env.get("SLURM_STEP_NUM_NODES") or env.get("SLURM_NNODES") or "1"
    if trainer.devices != launch.local_world or str(trainer.num_nodes) != nodes:
        raise DSen2CRError(
            f"trainer.devices {trainer.devices}, trainer.num_nodes {trainer.num_nodes}: srun started {launch.world} "
            f"tasks, {launch.local_world} on this node, on {nodes} node(s); set --devices {launch.local_world} "
            f"--num-nodes {nodes} (one task per device), or start fewer tasks"
        )


def run_training(
    config: RunConfig, *, resume: str | Path | None = None, overwrite: bool = False, progress: bool = True
) -> Path:
    """Train (or resume from the checkpoint ``resume``; :data:`RESUME_AUTO`: the run folder's newest, if any; a
    run that has trained every epoch then returns it untouched) a run; return the path of the last checkpoint.
    The run folder is locked for the run
    (a second run on it is refused at its start, naming this process). A failed write (a full disk) is one
    line naming the run folder; a run that fails before its first checkpoint removes the folder it created."""
    if resume is not None and overwrite:
        raise DSen2CRError(
            "--resume and --overwrite: choose one (--resume continues the run in the folder, --overwrite replaces it)"
        )
    with _said_by_rank_zero():
        check_launch(config.trainer)
        if config.trainer.accelerator == "cpu" or (
            config.trainer.accelerator == "auto" and not torch.cuda.is_available()
        ):
            refuse_lowered_cpu_float32("training on the CPU (IEEE fp32)")
    out = Path(config.trainer.out_dir)
    created = not out.exists() and not is_launched_worker()
    with output_locks([out]), _callers_determinism(), training_arithmetic(config.trainer.matmul_precision):
        try:
            return _train(config, resume=resume, overwrite=overwrite, progress=progress)
        except BaseException as error:
            if created and not any((out / CHECKPOINT_DIR).glob("*.ckpt")):
                shutil.rmtree(out, ignore_errors=True)  # a failed start: nothing to resume from
            reason = write_failure(error, out.parent) if isinstance(error, Exception) else None
            if reason is None:
                raise
            raise DSen2CRError(f"{out}: cannot write the run ({reason}); its complete checkpoints stay") from error


@contextlib.contextmanager
def _said_by_rank_zero() -> Iterator[None]:
    """The checks every process of a run makes alike, on the same settings and files, before the processes join: a
    worker on rank 0's machine stops without repeating rank 0's refusal (each of eight srun tasks printed it); one
    on another machine, whose files may differ, says its own."""
    try:
        yield
    except DSen2CRError as error:
        if isinstance(error, RunWideError) or not (is_launched_worker() and on_rank_zeros_machine()):
            raise
        raise RunWideError(str(error)) from error


@contextlib.contextmanager
def _callers_determinism() -> Iterator[None]:
    """Give a Python caller back what Lightning's Trainer sets for the rest of the process (deterministic
    algorithms, cuDNN's deterministic and benchmark flags, CUBLAS_WORKSPACE_CONFIG): a notebook, or ``dsen2cr
    demo``, removed clouds under a run's ``trainer.deterministic`` after it."""
    algorithms = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    cudnn = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    workspace = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(algorithms[0], warn_only=algorithms[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = cudnn
        if workspace is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
        else:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = workspace


class _PreparedRun(NamedTuple):
    """A run ready to fit: its trainer, task and data, the checkpoint it resumes from, its folder."""

    trainer: L.Trainer
    task: DSen2CRTask
    datamodule: SEN12MSCRDataModule
    resume: Path | None
    out: Path


def _train(config: RunConfig, *, resume: str | Path | None, overwrite: bool, progress: bool) -> Path:
    """:func:`run_training` under the run folder's lock."""
    with warnings_said() as said, _said_by_rank_zero():  # refusals before the processes join
        prepared = _prepare(config, resume=resume, overwrite=overwrite, progress=progress)
    if isinstance(prepared, Path):  # a requeued job whose run has ended
        return prepared
    trainer, task, datamodule, resume, out = prepared
    try:
        with warnings_kept(out, said):  # logs/warnings.log: what preparing the run and its fit warned of
            checkpoint = None if resume is None else str(resume)
            trainer.fit(task, datamodule=datamodule, ckpt_path=checkpoint, weights_only=True)
    except DSen2CRError as error:  # a patch it cannot read, a full disk: say what stays and how to go on
        newest = newest_checkpoint(out)
        if newest is None or isinstance(error, NonFiniteLossError):  # a resume would meet the same loss again
            raise
        hint = "the run's complete checkpoints stay: once that is fixed, resume from the newest"
        raise DSen2CRError(f"{error}; {hint}, --resume {newest}") from error
    except SystemExit:
        if trainer.interrupted:  # Lightning turns Ctrl-C and SIGTERM into SystemExit(1) after its teardown
            raise KeyboardInterrupt from None  # the command line reports it as what it was (130 or 143)
        raise
    finally:  # a Python session that goes on keeps no handler of this run's, however it ended
        for callback in getattr(trainer, "callbacks", []):  # set by Lightning's connector, unknown to its types
            if isinstance(callback, SlurmRequeue):
                callback.give_back_signal()
    release_process_group()
    return last_checkpoint(out)  # (a NaN validation loss stopped the run at its epoch: DSen2CRTask)


def _prepare(config: RunConfig, *, resume: str | Path | None, overwrite: bool, progress: bool) -> _PreparedRun | Path:
    """The run's checks, folder, trainer, task and data, before its processes join (or, for a requeued job whose
    run has trained every epoch, the checkpoint to return untouched)."""
    automatic = resume == RESUME_AUTO
    if automatic:
        resume = newest_or_none(Path(config.trainer.out_dir))
    initial = None  # read before the run folder is touched (--overwrite replaces a run); a resume has its own
    if resume is None and config.model.init_weights is not None:
        initial = read_initial_weights(config.model.init_weights, config.model.model_config())
    out = prepare_run_dir(config, resume=None if resume is None else str(resume), overwrite=overwrite)
    resumed_step, finished, mid_epoch_by, started_from = None, 0, None, None if initial is None else initial.record
    if resume is not None:
        check_resume_checkpoint(Path(resume), config)
        resumed_step, finished, mid_epoch_by, started_from = check_resume_settings(
            Path(resume), config, out / RESOLVED_CONFIG
        )
        if config.optim.epochs <= finished:
            epochs = progress_phrase(finished)
            if automatic:  # a requeued job whose run has ended: nothing to do
                log.info("%s: has trained its %s (optim.epochs %d): nothing to train", out, epochs, config.optim.epochs)
                return Path(resume)
            raise DSen2CRError(
                f"{resume}: has finished {epochs}; optim.epochs {config.optim.epochs} leaves none to train: set it "
                f"above {finished}"
            )
    trainer = build_trainer(config, out, progress=progress, resumed_step=resumed_step)
    if mid_epoch_by is not None and mid_epoch_by != trainer.world_size:
        refuse_other_processes(Path(resume), out, finished, mid_epoch_by, trainer.world_size)  # type: ignore[arg-type]
    L.seed_everything(config.trainer.seed, workers=True, verbose=False)
    if not is_launched_worker():
        save_config(config, out / RESOLVED_CONFIG)
    datamodule = SEN12MSCRDataModule(
        config.data, config.loss, config.optim.batch_size, config.trainer.seed, global_batch=config.optim.global_batch
    )
    datamodule.trainer = trainer  # its checks take the run's process count: refused here, before Lightning's launcher
    datamodule.setup("fit")  # starts the run's other processes (each of them would refuse the same settings)
    task = build_task(config, datamodule.record(), started_from)
    if initial is not None:
        start_from(task.model, initial)
    if not is_launched_worker():  # rank 0 writes the checkpoints: weights and NAdam's two moments, as stored
        stored = 3 * sum(parameter.numel() * parameter.element_size() for parameter in task.parameters())
        check_run_room(out, stored, config.optim.epochs - finished)
    return _PreparedRun(trainer, task, datamodule, None if resume is None else Path(resume), out)


def release_process_group() -> None:
    """Destroy the process group a multi-process run made, once its fit has ended (PyTorch's advice for a program's
    end): left to the interpreter's exit, a rank of a finished two-task gloo run aborted once in a while ("terminate
    called without an active exception", SIGABRT: the job then failed though its run had finished)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
