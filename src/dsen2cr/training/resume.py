"""Resuming a run: which checkpoint ``--resume auto`` takes, and what a resume is refused for (a file that is no
training checkpoint of this model, changed settings, another number of processes mid-epoch)."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any, NamedTuple

import torch

from dsen2cr.config import RunConfig
from dsen2cr.errors import DSen2CRError
from dsen2cr.weights import INIT_WEIGHTS_KEY, WORLD_SIZE_KEY, checkpoint_position, last_checkpoint, newest_checkpoint

log = logging.getLogger(__name__)


#: What a resumed run may change: how long it trains, where its data lies and how it is read, where and how
#: it runs and logs. Everything else is the run's own: the optimiser's state comes from the checkpoint.
RESUME_MAY_CHANGE = frozenset(
    {"optim.epochs", "data.root", "data.file_list", "data.train_rois", "data.val_rois", "data.test_rois"}
    | {"data.num_workers", "trainer.out_dir", "trainer.accelerator", "trainer.devices", "trainer.num_nodes"}
    | {"trainer.strategy", "trainer.log_every_n_steps", "trainer.val_images"}
)


def newest_or_none(out: Path) -> Path | None:
    """``--resume auto``: the run folder's newest complete checkpoint, or None (a new run), said in the log."""
    newest = newest_checkpoint(out)
    if newest is None:
        log.info("--resume auto: no checkpoint in %s: starting the run", out)
    else:
        log.info("--resume auto: resuming from %s, the run's newest checkpoint", newest)
    return newest


def refuse_other_processes(path: Path, out: Path, finished: int, saved_by: int, world: int) -> None:
    """A checkpoint saved mid-epoch continues its epoch after the batches each process had trained: on another
    number of processes those are other samples (some would train twice, others never)."""
    last = last_checkpoint(out)
    instead = f"resume from the epoch's own checkpoint, --resume {last}" if last.is_file() else "start the run anew"
    raise DSen2CRError(
        f"{path}: saved in the middle of epoch {finished + 1} by {saved_by} processes, resumed by {world}: it "
        f"continues that epoch after the batches each process had trained, so only on as many; run on {saved_by} "
        f"(--devices x --num-nodes), or {instead}"
    )


class ResumePoint(NamedTuple):
    """Where a resumed run starts: the checkpoint's global step, the epochs it finished, the processes that saved
    it when it was saved mid-epoch (else None), and the record of the weights the run started from (its
    ``model.init_weights``; None for a run started afresh), which its next checkpoints keep."""

    step: int
    finished: int
    saved_by: int | None
    init_weights: dict[str, str] | None


def check_resume_settings(path: Path, config: RunConfig, run_config: Path) -> ResumePoint:
    """Refuse a resume that changes the run's settings (those of the run folder's ``config.yaml``, then of the
    checkpoint's own record, ``loss`` and ``optim``, then of its optimiser state; but :data:`RESUME_MAY_CHANGE`);
    return where it starts. A changed learning rate, say, would not apply
    (the optimiser's state is restored) while the run's records said it did."""
    import dataclasses

    import yaml

    checkpoint = _load_mapped(path)
    checkpoint = checkpoint if isinstance(checkpoint, dict) else {}
    stored: dict[str, Any] = {}
    if run_config.is_file():
        with contextlib.suppress(yaml.YAMLError, OSError, UnicodeDecodeError):
            stored.update(_flattened(yaml.safe_load(run_config.read_text(encoding="utf-8"))))
    hyper = checkpoint.get("hyper_parameters")
    if isinstance(hyper, dict):
        stored.update(_flattened({section: hyper.get(section) for section in ("loss", "optim")}))
    stored.update(_optimiser_settings(checkpoint))  # what the restored optimiser will use, whatever the record says
    asked = _flattened(dataclasses.asdict(config))
    for key, value in stored.items():
        if key in asked and key not in RESUME_MAY_CHANGE and asked[key] != value:
            raise DSen2CRError(
                f"{path}: resumed with {key} {asked[key]}, but the run trained with {value}; a resumed run continues "
                "with its own settings (the optimiser's state comes from the checkpoint): only optim.epochs, the "
                "data's location and workers, and where it runs may change; start a new run for other settings"
            )
    finished, batches = checkpoint_position(checkpoint)
    step = checkpoint.get("global_step", 0)
    saved_by = checkpoint.get(WORLD_SIZE_KEY) if batches else None
    started_from = hyper.get(INIT_WEIGHTS_KEY) if isinstance(hyper, dict) else None
    return ResumePoint(
        step if isinstance(step, int) else 0,
        finished,
        saved_by if isinstance(saved_by, int) else None,
        started_from if isinstance(started_from, dict) else None,
    )


def _load_mapped(path: Path) -> Any:
    """A checkpoint's contents with its tensors mapped from the file, not read (a check of its records reads a few
    kB of a paper model's 230 MB); a file of the legacy format, which cannot be mapped, read whole."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as error:
        if "zip" not in str(error):
            raise
    with path.open("rb") as file:
        return torch.load(file, map_location="cpu", weights_only=True)


def _optimiser_settings(checkpoint: dict) -> dict[str, Any]:
    """``optim.lr``, ``betas``, ``eps`` and ``momentum_decay`` of the checkpoint's optimiser state (empty when it
    holds none)."""
    states = checkpoint.get("optimizer_states")
    groups = (
        states[0].get("param_groups") if isinstance(states, list) and states and isinstance(states[0], dict) else None
    )
    if not isinstance(groups, list) or not groups or not isinstance(groups[0], dict):
        return {}
    names = ("lr", "betas", "eps", "momentum_decay")
    found = {name: groups[0][name] for name in names if name in groups[0]}
    return _flattened({"optim": {k: v.item() if isinstance(v, torch.Tensor) else v for k, v in found.items()}})


def _flattened(values: object, prefix: str = "") -> dict[str, Any]:
    """``{"optim": {"lr": 1}}`` as ``{"optim.lr": 1}`` (lists, tuples as lists, and scalars are leaves)."""
    if not isinstance(values, dict):
        leaf = list(values) if isinstance(values, tuple) else values
        return {prefix.rstrip("."): leaf} if prefix else {}
    flat: dict[str, Any] = {}
    for key, value in values.items():
        flat.update(_flattened(value, f"{prefix}{key}."))
    return flat


def check_resume_checkpoint(path: Path, config: RunConfig) -> None:
    """Refuse a resume checkpoint that is missing, no training checkpoint (weights: they hold no optimiser or
    loop state), unsafe to load, or of another model variant."""
    from dsen2cr.formats import describe, sniff
    from dsen2cr.weights import check_weights_file, load_model

    kind = sniff(check_weights_file(path, "checkpoint"))
    if kind in ("safetensors", "hdf5"):
        raise DSen2CRError(
            f"{path}: holds {describe(kind)}, not a checkpoint of dsen2cr train; --resume continues a run from "
            f"one of its checkpoints (RUN/checkpoints/last.ckpt); to start a new run from these weights, set "
            f"model.init_weights={path}"
        )
    load_model(path, expected=config.model.model_config())
