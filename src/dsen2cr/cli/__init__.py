"""The ``dsen2cr`` command line: one module per command (``dsen2cr.cli.<command>``), shared options in
:mod:`dsen2cr.cli.options` (docs/design.md §2).

Each command module has ``register(subparsers)`` (its parser) and a ``run(args)`` handler that turns options
into a call of the library, and prints the result. Heavy imports (Lightning, rasterio, torch) happen inside the
handlers, so ``dsen2cr --help`` stays fast.

Errors: a ``DSen2CRError`` (bad input, raised where user input is checked) or an ``OSError`` (a file the system
refused) prints one line on stderr and exits 2; anything else is a bug and prints a short "internal error"
line with a hint to rerun with ``--debug``, exit 1. ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import select
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from dsen2cr.cli import (
    compare,
    config,
    data,
    demo,
    doctor,
    evaluate,
    export,
    models,
    pair,
    remove_clouds,
    stac_collection,
    train,
    weights,
)
from dsen2cr.cli.options import NoAbbrevParser, add_verbosity, merge_spellings, setup_logging
from dsen2cr.errors import DSen2CRError, RunWideError, one_line
from dsen2cr.gdal_messages import capture_thread_messages
from dsen2cr.launch import is_launched_worker, this_launch
from dsen2cr.onednn import leave_out_lowering
from dsen2cr.outputs.locks import output_locks
from dsen2cr.version import __version__

Handler = Callable[[argparse.Namespace], int | None]

#: The commands in the order ``dsen2cr --help`` lists them.
COMMAND_MODULES = (
    data,
    config,
    models,
    train,
    evaluate,
    compare,
    export,
    weights,
    pair,
    remove_clouds,
    stac_collection,
    demo,
    doctor,
)


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser with every subcommand (abbreviated options are refused everywhere)."""
    parser = NoAbbrevParser(
        prog="dsen2cr",
        description="Cloud removal for Sentinel-2 with Sentinel-1 SAR fusion (DSen2-CR).",
    )
    parser.add_argument("--version", action="version", version=f"dsen2cr {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors (and debug messages)")
    add_verbosity(parser)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(subparsers)
    return parser


#: A config override (``section.key=value``): accepted anywhere on the line of a command that takes them.
_OVERRIDE = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)+=")


def parse_arguments(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse the command line; ``section.key=value`` overrides of ``train`` and ``demo`` may come after their
    options too (argparse alone takes positionals only before the first option that follows them)."""
    args, extra = parser.parse_known_args(argv)
    if extra and hasattr(args, "overrides") and all(_OVERRIDE.match(item) for item in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}{_suggestion(parser, args, extra)}")
    merge_spellings(target_parser(parser, args), args)
    if args.verbose and args.quiet:
        parser.error("argument -q/--quiet: not allowed with argument -v/--verbose")
    if hasattr(args, "no_progress") and (args.quiet or not _on_terminal(sys.stderr)):
        args.no_progress = True  # -q (results and warnings only), or stderr is a file or a pipe: no bars in logs
    return args


def _on_terminal(stream: object) -> bool:
    """Whether ``stream`` is a terminal (where a progress bar redraws itself; in a file it piles up)."""
    try:
        return bool(stream.isatty())  # type: ignore[attr-defined]
    except (AttributeError, ValueError):  # no stream, or a closed one
        return False


def target_parser(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The parser of the command in ``args`` (the main parser when there is none)."""
    command = getattr(args, "command", None)
    subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return subparsers[0].choices.get(command, parser) if subparsers and command else parser


def _suggestion(parser: argparse.ArgumentParser, args: argparse.Namespace, extra: list[str]) -> str:
    """``; did you mean --out?`` for a misspelt long option of the command (as config keys get)."""
    import difflib

    target = target_parser(parser, args)
    options = [o for o in target._option_string_actions if o.startswith("--")]
    for item in extra:
        if item.startswith("--"):
            close = difflib.get_close_matches(item.split("=")[0], options, n=1, cutoff=0.6)
            if close:
                return f"; did you mean {close[0]}?"
    return ""


class Terminated(KeyboardInterrupt):
    """SIGTERM (sent by ``timeout``, schedulers and container runtimes), raised like Ctrl-C so that every
    ``finally`` and context manager on the way out removes its temporary files."""


#: Set when SIGTERM arrived: a library that catches the interrupt and raises its own (Lightning turns it into
#: SystemExit, then KeyboardInterrupt here) is still reported as terminated (143), not interrupted.
_SIGNALLED: set[int] = set()


def _raise_terminated(signum: int, frame: object) -> None:
    """SIGTERM handler."""
    _SIGNALLED.add(signal.SIGTERM)
    raise Terminated


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    left_out = leave_out_lowering()  # before PyTorch loads: oneDNN reads it then
    parser = build_parser()
    args = parse_arguments(parser, argv)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 0
    level = logging.DEBUG if args.verbose or args.debug else logging.WARNING if args.quiet else logging.INFO
    if args.command == "train" and is_launched_worker():  # one run: rank 0 tells it (the tasks share a job log)
        level = max(level, logging.WARNING)
    setup_logging(level)
    if left_out:
        logging.getLogger(__name__).warning(
            "%s left out: under it oneDNN computes this CPU's float32 convolutions in lower precision while the "
            "outputs would say fp32; --precision (train: trainer.precision) chooses the arithmetic",
            left_out,
        )
    if level > logging.DEBUG:  # -v and --debug show GDAL's own threads' messages as GDAL prints them
        capture_thread_messages()
    _SIGNALLED.clear()
    previous = _install_sigterm()
    try:
        _check_one_process(args)
        if args.command in COMPUTING_COMMANDS:
            _fit_torch_threads()
        with output_locks(_outputs_to_lock(args)):
            return int(handler(args) or 0)
    except KeyboardInterrupt as interrupt:
        if isinstance(interrupt, Terminated) or signal.SIGTERM in _SIGNALLED:
            print("dsen2cr: terminated (SIGTERM); temporary files removed", file=sys.stderr)
            return 128 + signal.SIGTERM
        print("dsen2cr: interrupted", file=sys.stderr)
        return 130
    except (DSen2CRError, OSError) as error:
        if isinstance(error, BrokenPipeError) and _stdout_reader_gone():  # `dsen2cr … | head`: its reader has read
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's flush at exit goes nowhere
            return 128 + signal.SIGPIPE  # as a command-line tool that SIGPIPE stopped
        if args.debug:
            raise
        if isinstance(error, RunWideError) and is_launched_worker():  # rank 0 says it, once for the run
            return 2
        print(f"dsen2cr {_command_line_name(args)}: error: {one_line(error)}", file=sys.stderr)
        return 2
    except Exception as error:
        if args.debug:
            raise
        message = one_line(error)[:300]
        if _peer_stopped(error):  # not a bug here: the process that stopped first has said why
            print(
                f"dsen2cr {_command_line_name(args)}: error: another process of this run stopped (its message says "
                f"why), so this one stopped too ({type(error).__name__}: {message[:120]})",
                file=sys.stderr,
            )
            return 2
        print(
            f"dsen2cr {_command_line_name(args)}: internal error ({type(error).__name__}: {message}); this is a bug: "
            "rerun with --debug for the traceback and report it",
            file=sys.stderr,
        )
        return 1
    finally:
        if previous is not _NOT_INSTALLED:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


#: What a process of a distributed run meets when another process of it has stopped: gloo's and NCCL's words.
_PEER_GONE = re.compile(r"closed by peer|reset by peer|remote process exited|communicator was aborted", re.IGNORECASE)


def _peer_stopped(error: BaseException) -> bool:
    """Whether ``error`` is a collective's failure because another process of the run stopped (torch.distributed's
    errors, or gloo's and NCCL's messages of a closed connection)."""
    distributed = sys.modules.get("torch.distributed")
    peer_error = getattr(distributed, "DistError", None)
    return (isinstance(peer_error, type) and isinstance(error, peer_error)) or bool(_PEER_GONE.search(str(error)))


def _stdout_reader_gone() -> bool:
    """Whether standard output is a pipe whose reader has closed it (``| head`` after its lines): the pipe's write
    end then reports an error to poll."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLERR)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (OSError, ValueError, AttributeError):  # no file descriptor (a test's captured stdout), no poll
        return False


def _command_line_name(args: argparse.Namespace) -> str:
    """The command as typed: ``remove-clouds``, or a group's ``data synth``, ``weights download``."""
    return " ".join(filter(None, [args.command, getattr(args, f"{args.command}_command", None)]))


#: Commands that run as several processes: train (one run over them) and remove-clouds (they split the scenes).
SEVERAL_PROCESS_COMMANDS = frozenset({"train", "remove-clouds"})
#: Commands that only read and print: they run in every process a launcher started (doctor checks each machine).
READING_COMMANDS = frozenset({"doctor", "models", "config", "compare", "weights info"})


def _check_one_process(args: argparse.Namespace) -> None:
    """Refuse a command that writes and runs as one process where srun or torchrun started several of it: each
    would write the same outputs at once (two evaluations of one report both failed, each with another error).
    Every process refuses alike; rank 0 says it."""
    name = _command_line_name(args)
    launch = this_launch()
    if launch.world == 1 or args.command in SEVERAL_PROCESS_COMMANDS or name in READING_COMMANDS:
        return
    once = f"srun --ntasks 1 dsen2cr {name} …, or outside srun" if launch.launcher == "srun" else "without torchrun"
    raise RunWideError(
        f"{name} runs as one process, but {launch.launcher} started {launch.world} (this is rank {launch.rank}): "
        f"each would write the same outputs at once; start it once ({once})"
    )


_NOT_INSTALLED = object()
#: Commands that run the network: PyTorch's CPU threads are fitted to this process's share of the CPUs.
COMPUTING_COMMANDS = frozenset({"train", "evaluate", "remove-clouds", "demo", "export-onnx"})


def _fit_torch_threads() -> None:
    """Give PyTorch this process's share of the CPUs where its default would take more (a container's CPU
    quota, torchrun's processes sharing the machine: :func:`dsen2cr.machine.torch_cpu_threads`), and say so."""
    from dsen2cr.machine import cpu_quota, fit_torch_threads, local_processes

    threads = fit_torch_threads()
    if threads is not None:
        quota = cpu_quota()
        why = f"a CPU quota of {quota:g}" if quota is not None else f"{local_processes()} processes on the machine"
        logging.getLogger(__name__).info("cpu: PyTorch on %d thread%s (%s)", threads, "s" * (threads > 1), why)


def _outputs_to_lock(args: argparse.Namespace) -> list[Path]:
    """The output (file or folder) of a command that writes one, as ``--out`` or ``OUT`` names it: locked for
    the run, so that a second run on it is refused at its start (docs/design.md §3.4). Commands whose outputs
    are known only later lock them themselves (remove-clouds: its manifest's rows; train: the config's run
    folder)."""
    out = getattr(args, "out", None)
    if not isinstance(out, str) or getattr(args, "locks_own_outputs", False):
        return []
    return [Path(out)]


def _install_sigterm() -> Any:
    """Make SIGTERM clean up like Ctrl-C (main thread only); return the handler it replaces."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return _NOT_INSTALLED
    return signal.signal(signal.SIGTERM, _raise_terminated)
