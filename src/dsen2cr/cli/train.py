"""``dsen2cr train``: train or resume a run from a YAML config and ``section.key=value`` overrides."""

from __future__ import annotations

import argparse

from dsen2cr.cli.options import (
    SubParsers,
    add_command,
    add_no_progress,
    add_overwrite,
    quiet_lightning,
    require_extra,
)
from dsen2cr.errors import DSen2CRError, RunWideError
from dsen2cr.launch import is_launched_worker

#: Shortcut options and the ``trainer`` keys they set.
TRAINER_SHORTCUTS = ("out_dir", "devices", "num_nodes", "strategy", "accelerator")


def register(subparsers: SubParsers) -> None:
    """Add ``train``."""
    parser = add_command(
        subparsers,
        "train",
        help="train (or resume) a DSen2-CR model with PyTorch Lightning",
        description="Train with the settings of a YAML config (a file, or a bundled one by name: paper, "
        "paper-fast, paper-uncertainty, small-cpu), "
        "overridden by section.key=value arguments. Checkpoints every epoch in OUT_DIR/checkpoints, logs "
        "(CSV, TensorBoard) in OUT_DIR/logs, the resolved config in OUT_DIR/config.yaml.",
    )
    parser.add_argument(
        "--config",
        help="YAML config file, or a bundled one: paper, paper-fast, paper-uncertainty, small-cpu (default: the "
        "paper's settings)",
    )
    parser.add_argument("overrides", nargs="*", metavar="SECTION.KEY=VALUE", help="config overrides")
    parser.add_argument(
        "--resume",
        metavar="CKPT",
        help="continue the run of this checkpoint exactly; auto: of the run folder's newest checkpoint if it holds "
        "one (else start the run; a run that has trained every epoch exits 0): one command line for a cluster "
        "job's first start and its requeues (under SLURM with #SBATCH --signal=SIGUSR1@90 a job saves mid-epoch "
        "and requeues itself before its time limit)",
    )
    add_overwrite(parser, "replace the run already in the output folder (its checkpoints, logs and config only)")
    parser.add_argument("--out-dir", "--out", dest="out_dir", help="the run folder: shortcut for trainer.out_dir=...")
    parser.add_argument("--devices", help="shortcut for trainer.devices=... (e.g. 4, or auto)")
    parser.add_argument("--num-nodes", type=int, help="shortcut for trainer.num_nodes=...")
    parser.add_argument("--strategy", help="shortcut for trainer.strategy=... (e.g. ddp)")
    parser.add_argument("--accelerator", help="shortcut for trainer.accelerator=... (cpu, gpu, auto)")
    add_no_progress(parser, "no progress bars (one line per epoch)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Run ``train``."""
    require_extra("train", "dsen2cr train")
    from dsen2cr.config import load_config

    overrides = list(args.overrides)
    overrides += [f"trainer.{key}={getattr(args, key)}" for key in TRAINER_SHORTCUTS if getattr(args, key) is not None]
    try:
        config = load_config(args.config, overrides)
    except DSen2CRError as error:  # every task of an srun step reads the same config: rank 0 says what is wrong
        raise RunWideError(str(error)) from error
    quiet_lightning()
    from dsen2cr.training.train import run_training

    last = run_training(config, resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress)
    if not is_launched_worker():  # rank 0 tells the run's result (the workers' output goes to the same log)
        print(f"last checkpoint: {last}")
    return 0
