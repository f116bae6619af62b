"""Options shared by the commands (weights, outputs and ``--overwrite``, device, progress) and the console setup:
one spelling, one help text and one check for each, so every command behaves the same way."""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import sys

SubParsers = argparse._SubParsersAction


class NoAbbrevParser(argparse.ArgumentParser):
    """An argument parser that refuses abbreviated long options (``--ou`` for ``--out``): a prefix of one
    option must never be taken silently for another. Its subcommand parsers are of the same class."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]


def add_command(subparsers: SubParsers, name: str, **kwargs: object) -> argparse.ArgumentParser:
    """Add a subcommand parser (abbreviations off, like its parent) that takes ``-q``/``-v`` after its name too
    (``dsen2cr remove-clouds -q …`` as ``dsen2cr -q remove-clouds …``)."""
    parser = subparsers.add_parser(name, allow_abbrev=False, **kwargs)  # type: ignore[arg-type]
    add_verbosity(parser, default=argparse.SUPPRESS)  # absent here: the top level's value stands
    return parser


def add_verbosity(parser: argparse.ArgumentParser, *, default: object = False) -> None:
    """``-v``/``--verbose`` and ``-q``/``--quiet`` (which also silences progress bars)."""
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument("-v", "--verbose", action="store_true", default=default, help="also print debug messages")
    verbosity.add_argument(
        "-q", "--quiet", action="store_true", default=default, help="print warnings, errors and results only"
    )


def add_weights(parser: argparse.ArgumentParser, *, onnx: bool = False, ensemble: bool = False) -> None:
    """``--weights``: any weights file the project reads (``onnx``: ``.onnx`` too; ``ensemble``: several)."""
    kinds = ".safetensors (dsen2cr export), .ckpt (dsen2cr train), Keras .h5"
    several = "; several files: an ensemble (mean prediction, variance = mean of the members' variances + variance "
    several += "of their predictions), or an ensemble file (NAME.json of weights calibrate-sigma: sigma calibrated)"
    parser.add_argument(
        "--weights",
        required=True,
        nargs="+" if ensemble else None,
        help=kinds + (", or .onnx (dsen2cr export-onnx, fp32 or int8)" if onnx else "") + (several if ensemble else ""),
    )


def add_output_file(parser: argparse.ArgumentParser, help_text: str) -> None:
    """The output file of the commands that write one file, as ``--out OUT`` (as every command names its
    output) or positionally (``OUT``, the earlier form), and ``--overwrite``."""
    parser.add_argument("out", nargs="?", help=help_text + " (or --out)")
    parser.add_argument("--out", dest="out_option", metavar="OUT", help=help_text)
    add_overwrite(parser, "replace an existing output file (never one of the inputs)")


def merge_spellings(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """One value for each argument that has two spellings (``OUT`` or ``--out OUT``; ``export``'s ``SOURCE`` or
    ``--weights SOURCE``): exactly one must be given."""
    for name, flag, spelled in (
        ("out", "out_option", "OUT or --out OUT"),
        ("source", "source_option", "CHECKPOINT or --weights CHECKPOINT"),
    ):
        if not hasattr(args, flag):
            continue
        given = [value for value in (getattr(args, name), getattr(args, flag)) if value is not None]
        if len(given) != 1:
            parser.error(f"{args.command}: give {spelled} {'once' if given else '(required)'}")
        setattr(args, name, given[0])


def add_scene_reading(parser: argparse.ArgumentParser) -> None:
    """How scenes are read (``remove-clouds``, ``data patches``): ``--resampling`` of a product's 20 m and 60 m
    bands, ``--s1-linear``."""
    from dsen2cr.settings import RESAMPLINGS

    parser.add_argument(
        "--resampling",
        choices=RESAMPLINGS,
        default="nearest",
        help="for 20 m and 60 m bands of product folders (default: %(default)s, as in training)",
    )
    parser.add_argument("--s1-linear", action="store_true", help="S1 is linear power: convert it to dB")


def add_overwrite(parser: argparse.ArgumentParser, help_text: str) -> None:
    """``--overwrite``: replace what an earlier run of this command wrote (see ``dsen2cr.outputs.files``)."""
    parser.add_argument("--overwrite", action="store_true", help=help_text)


def add_device(parser: argparse.ArgumentParser) -> None:
    """``--device``: ``auto`` (CUDA when PyTorch sees a GPU, else CPU), or a torch device name."""
    parser.add_argument(
        "--device", default="auto", help="auto (CUDA when available, else CPU), cpu, cuda, cuda:1 (default: auto)"
    )


def check_loader_options(args: argparse.Namespace) -> None:
    """``--batch-size`` at least 1 and ``--num-workers`` 0 or more (the commands that read patches in batches)."""
    from dsen2cr.errors import DSen2CRError

    if args.batch_size < 1:
        raise DSen2CRError(f"--batch-size: must be at least 1, got {args.batch_size}")
    if args.num_workers < 0:
        raise DSen2CRError(f"--num-workers: must be 0 or more, got {args.num_workers}")


def file_list_split(data_root: str, file_list: str, split: str) -> tuple[list, str, int]:
    """The triplets of ``split`` in ``file_list`` (warning of held-out patches on training ground), how reports
    and weights name them (``files.csv, split val``: evaluate and calibrate-sigma alike, so that evaluate knows weights
    calibrated on the patches it scores), and how many of them lie in ROIs the list's training patches come from."""
    from pathlib import Path

    from dsen2cr.data.layout import read_file_list, select_split, warn_of_leaks

    listed = read_file_list(file_list, data_root)
    triplets = select_split(listed, split, source=file_list)
    beside = 0
    if split != "train":  # the list's training patches: what a model trained on this list saw
        beside = warn_of_leaks([t for t in listed if t.split == 1], triplets, split, file_list)
    return triplets, f"{Path(file_list).name}, split {split}", beside


def add_no_progress(parser: argparse.ArgumentParser, what: str = "no progress bar") -> None:
    """``--no-progress``."""
    parser.add_argument("--no-progress", action="store_true", help=what)


def auto_or_int(value: str) -> str | int:
    """Argument type: ``auto`` or an integer (its range is checked where it is used)."""
    if value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected auto or an integer, got {value!r}") from None


def cloud_score(value: str) -> float:
    """Argument type: a threshold on the paper detector's cloud score, a number in [0, 1] (a percentage such as
    20 would find no cloud at all)."""
    number = float("nan")
    with contextlib.suppress(ValueError):
        number = float(value)
    if not 0.0 <= number <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a cloud score in [0, 1] (the paper's 0.2), got {value!r}")
    return number


def add_bounds(parser: argparse.ArgumentParser, what: str) -> None:
    """``--bounds LEFT BOTTOM RIGHT TOP`` (``what`` a run does with the part they give) and ``--bounds-crs``
    (``remove-clouds``, ``data patches``)."""
    parser.add_argument(
        "--bounds",
        nargs=4,
        type=finite_float,
        metavar=("LEFT", "BOTTOM", "RIGHT", "TOP"),
        help=f"only this part of each scene (as gdalwarp's -te): {what} (default: the whole scene)",
    )
    parser.add_argument(
        "--bounds-crs",
        help="the CRS of --bounds, e.g. EPSG:4326 for longitude/latitude (default: each scene's own CRS)",
    )


def finite_float(value: str) -> float:
    """Argument type: a finite number (``nan`` and ``inf`` are refused)."""
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {value!r}") from None
    if not math.isfinite(number):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {value!r}")
    return number


class _ConsoleHandler(logging.Handler):
    """Messages at INFO and below to standard output as they are; warnings and errors to standard error,
    prefixed ``warning:``/``error:``. The streams are looked up when a message is written (tests swap them)."""

    def emit(self, record: logging.LogRecord) -> None:
        """Print one record to the stream its level goes to."""
        try:
            message = self.format(record)
            if record.levelno >= logging.WARNING:
                print(f"{record.levelname.lower()}: {message}", file=sys.stderr, flush=True)
            else:
                print(message, file=sys.stdout, flush=True)
        except Exception:
            self.handleError(record)


def setup_logging(level: int) -> None:
    """Send the library's log messages (logger ``dsen2cr``) to the console at ``level`` (``-v``/``-q``)."""
    logger = logging.getLogger("dsen2cr")
    for handler in [h for h in logger.handlers if isinstance(h, _ConsoleHandler)]:
        logger.removeHandler(handler)
    logger.addHandler(_ConsoleHandler())
    logger.setLevel(level)


def quiet_lightning() -> None:
    """Keep Lightning's informational banners and tips off the console (``train`` and ``demo``)."""
    import warnings

    import lightning  # noqa: F401  (configures its loggers on import; set their levels after that)

    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    logging.getLogger("lightning.fabric").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\).*")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")
    # a resume's checkpoint folder holds the run's checkpoints; a fresh run's is refused before if it holds one
    warnings.filterwarnings("ignore", message=".*Checkpoint directory .* exists and is not empty.*")
    # Lightning's all_gather (the end's check of equal weights on every rank) calls a function torch 2.13 deprecates
    warnings.filterwarnings("ignore", message=".*torch.distributed.nn.functional.all_gather is deprecated.*")


#: The optional extras and the modules each provides (``pip install 'dsen2cr[EXTRA]'``).
EXTRAS = {"train": ("lightning", "yaml", "tensorboard"), "onnx": ("onnx", "onnxscript", "onnxruntime")}


def require_extra(extra: str, command: str) -> None:
    """Refuse, in one line, to run ``command`` when a module of the optional ``extra`` is not installed."""
    import importlib.util

    from dsen2cr.errors import DSen2CRError

    missing = [name for name in EXTRAS[extra] if importlib.util.find_spec(name) is None]
    if missing:
        raise DSen2CRError(
            f"{command} needs the optional '{extra}' dependencies ({', '.join(missing)} missing): "
            f"pip install 'dsen2cr[{extra}]'"
        )
