"""The prepared GPU run (``scripts/gpu_benchmark.sh``, #27): a device is lent to few sessions, for 15 minutes, with
no time for a second try, so every command the script runs must at least parse here, on the CPU, against the
benchmark modules and the CLI as they are now (a renamed or dropped option would cost the whole lease)."""

from __future__ import annotations

import argparse
import ast
import importlib
import re
import shlex
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_benchmark.sh"
#: ``python3 -m MODULE ARGS``, up to a redirection or a pipe.
_COMMAND = re.compile(r"python3 -m (benchmarks(?:\.\w+)?|dsen2cr\.cli) (.*?)\s*(?:2>&1|\||$)")


def _commands() -> list[tuple[str, list[str]]]:
    """The script's Python commands: (module, arguments), its continued lines joined."""
    text = SCRIPT.read_text().replace("\\\n", " ")
    return [(match[1], shlex.split(match[2])) for match in _COMMAND.finditer(text)]


class _ParsedError(Exception):
    """Raised once the arguments parsed: the measurement itself is not run."""


def test_the_script_is_valid_bash_and_runs_the_modules_it_names() -> None:
    """bash -n accepts it, it runs the CLI and the benchmarks of #27's items, and its inline Python compiles
    and imports what it uses."""
    assert subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True).returncode == 0
    modules = {module for module, _ in _commands()}
    assert "dsen2cr.cli" in modules and {"benchmarks", "benchmarks.training_rate", "benchmarks.keep_clear"} <= modules
    assert len(_commands()) >= 14, _commands()
    for source in re.findall(r"<<'EOF'[^\n]*\n(.*?)\nEOF\n", SCRIPT.read_text(), flags=re.S):  # inline Python
        tree = compile(source, "gpu_benchmark.sh", "exec", flags=ast.PyCF_ONLY_AST)
        imports = [node for node in tree.body if isinstance(node, ast.Import | ast.ImportFrom)]
        exec(compile(ast.Module(imports, type_ignores=[]), "gpu_benchmark.sh", "exec"), {})  # its names exist


@pytest.mark.parametrize(("module", "args"), _commands(), ids=lambda value: str(value)[:60])
def test_every_command_of_the_gpu_script_parses(module: str, args: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The arguments of each command are accepted by the parser of the module it runs (stopped right after
    parsing: nothing is measured)."""
    real = argparse.ArgumentParser.parse_args

    def parse_then_stop(self: argparse.ArgumentParser, *given: object, **options: object) -> object:
        real(self, *given, **options)  # type: ignore[arg-type]  # exits 2 on an unknown or invalid argument
        raise _ParsedError

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    if module == "dsen2cr.cli":
        from dsen2cr.cli import build_parser

        with pytest.raises(_ParsedError):
            build_parser().parse_args(args)
        return
    main = importlib.import_module(f"{module}.__main__" if module == "benchmarks" else module).main
    monkeypatch.setattr("sys.argv", [module, *args])
    with pytest.raises(_ParsedError):
        main()


def test_what_the_keep_clear_benchmark_times_is_where_it_times_it() -> None:
    """``benchmarks.keep_clear`` times the mask's parts by replacing module attributes: each must exist where it
    is replaced (a function moved to another module broke the step with an AttributeError, caught only by running
    it: the keep-clear weights and blend went to ``scene.tile_writer``)."""
    from benchmarks.keep_clear import PARTS

    for owner, attribute, _ in PARTS:
        assert callable(getattr(owner, attribute, None)), f"{owner.__name__}.{attribute}"
