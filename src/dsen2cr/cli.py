"""The ``dsen2cr`` command line.

Each subcommand lives next to the code it drives and registers itself here; heavy imports (Lightning,
rasterio) happen inside the command, so ``dsen2cr --help`` stays fast. User errors (``DSen2CRError``,
``ValueError``, ``OSError``) print one line on stderr and exit 2; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from dsen2cr import __version__
from dsen2cr.errors import DSen2CRError

Handler = Callable[[argparse.Namespace], int | None]


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="dsen2cr",
        description="Cloud removal for Sentinel-2 with Sentinel-1 SAR fusion (DSen2-CR).",
    )
    parser.add_argument("--version", action="version", version=f"dsen2cr {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for register in _command_registrars():
        register(subparsers)
    return parser


def _command_registrars() -> list[Callable[[argparse._SubParsersAction], None]]:
    """Return the functions that add each subcommand to the parser."""
    from dsen2cr import commands

    return commands.REGISTRARS


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 0
    try:
        return int(handler(args) or 0)
    except KeyboardInterrupt:
        print("dsen2cr: interrupted", file=sys.stderr)
        return 130
    except (DSen2CRError, ValueError, OSError) as error:
        if args.debug:
            raise
        message = " ".join(str(error).split()) or type(error).__name__
        print(f"dsen2cr {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
