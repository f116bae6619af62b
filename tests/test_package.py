"""Packaging: the light import path and the console command."""

from __future__ import annotations

import subprocess
import sys

import dsen2cr


def test_core_modules_do_not_import_lightning() -> None:
    code = (
        "import sys, dsen2cr, dsen2cr.models.dsen2cr, dsen2cr.cloud_detection, dsen2cr.losses, dsen2cr.metrics, "
        "dsen2cr.preprocessing\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in {'lightning', 'pytorch_lightning'})\n"
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_console_command_version_and_help() -> None:
    version = subprocess.run(
        [sys.executable, "-m", "dsen2cr.cli", "--version"], check=True, capture_output=True, text=True
    )
    assert version.stdout.strip() == f"dsen2cr {dsen2cr.__version__}"
    help_text = subprocess.run(
        [sys.executable, "-m", "dsen2cr.cli", "--help"], check=True, capture_output=True, text=True
    ).stdout
    assert "usage: dsen2cr" in help_text and "demo" in help_text


def test_every_public_name_resolves() -> None:
    """Every name of ``dsen2cr.__all__`` is importable from the package (the lazy ones too: ``dsen2cr.SceneJob``
    pointed at a module that no longer exists)."""
    import dsen2cr

    for name in dsen2cr.__all__:
        assert getattr(dsen2cr, name) is not None, name


def test_help_and_version_import_no_heavy_library() -> None:
    """``dsen2cr --help``, ``--version`` and every command's ``--help`` build their parsers without importing
    torch, rasterio, scipy or Lightning (the CLI's docstring promises it: they took 2.2 s, torch's import)."""
    code = (
        "import argparse, contextlib, io, sys\n"
        "from dsen2cr.cli import build_parser, main\n"
        "def commands(parser, prefix):\n"
        "    for action in parser._actions:\n"
        "        if isinstance(action, argparse._SubParsersAction):\n"
        "            for name, sub in action.choices.items():\n"
        "                yield [*prefix, name]\n"
        "                yield from commands(sub, [*prefix, name])\n"
        "lines = [['--help'], ['--version'], *([*c, '--help'] for c in commands(build_parser(), []))]\n"
        "assert len(lines) > 12, lines\n"
        "for argv in lines:\n"
        "    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "        main(argv)\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'rasterio', 'scipy', 'lightning'})\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
