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


#: How the GPU run's commands are made small enough for this CPU (their options' values, by option), and what each
#: module needs besides to run small here: the rehearsal runs what the script runs, on tiny scenes.
_SMALL_VALUES = {
    "--device": "cpu",
    "--variant": "dsen2cr-small",
    "--scene-size": "256",
    "--size": "256",
    "--width": "512",
    "--height": "256",
    "--scenes": "2",
    "--patches": "8",
    "--num-workers": "1",
}
_SMALL_EXTRA = {
    "benchmarks": ["--quick"],
    "benchmarks.windows_half": ["--device", "cpu", "--variant", "dsen2cr-small", "--size", "256", "--batch-size", "2"],
    "benchmarks.output_check": ["--size", "128", "--batch-size", "1"],
    "benchmarks.product_read": ["--width", "512", "--tile", "256"],
    "benchmarks.cog_copy": ["--width", "512", "--height", "256"],
    "benchmarks.precision_accuracy": ["--size", "48"],
    "benchmarks.training_rate": ["--configs", "small-cpu", "--workers", "1", "--count", "8", "--steps", "1"],
}


def _small(module: str, args: list[str]) -> list[str]:
    """``args`` of the script's command of ``module`` made small: each option's value from :data:`_SMALL_VALUES`,
    then :data:`_SMALL_EXTRA`'s (an option it gives again is its); the compiled step's ``--compiled`` left out
    (inductor's build on this CPU is the slow tests' of the backends)."""
    extra = _SMALL_EXTRA.get(module, [])
    given_again = {arg for arg in extra if arg.startswith("--")}
    small: list[str] = []
    index = 0
    while index < len(args):
        option = args[index]
        has_value = index + 1 < len(args) and not args[index + 1].startswith("--")
        value = args[index + 1] if has_value else None
        index += 2 if has_value else 1
        if option == "--compiled" or option in given_again:
            continue
        small += [option] if value is None else [option, _SMALL_VALUES.get(option, value)]
    return small + extra


@pytest.mark.slow  # every benchmark the GPU run runs, on tiny scenes: about two minutes
def test_every_step_of_the_gpu_script_runs_on_the_cpu_small(tmp_path: Path) -> None:
    """A dress rehearsal of the one GPU run: each benchmark the script runs, with its options made small and the
    device the CPU, runs to its end and writes its results (elsewhere than benchmarks/results). A step that parses
    but fails at run time (a moved function it times) cost the whole lease before; this finds it here."""
    import os
    import sys

    env = {**os.environ, "DSEN2CR_BENCHMARK_RESULTS": str(tmp_path / "results")}
    failed = []
    for module, args in _commands():
        if module == "dsen2cr.cli":  # the CLI's own tests cover it
            continue
        command = [sys.executable, "-m", module, *_small(module, args)]
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300, cwd=SCRIPT.parents[1])
        if done.returncode != 0:
            failed.append(f"{' '.join(command[2:])}: {done.stderr.strip().splitlines()[-1:]}")
    assert not failed, failed
    assert len(list((tmp_path / "results").glob("*.json"))) >= 10


@pytest.mark.slow  # the paper model trained one batch twice on the CPU: about a minute
def test_the_trainflags_step_runs_on_the_cpu(tmp_path: Path) -> None:
    """The script's trainflags step (#27 item 1 read inside a run on the GPU), run as the script runs it but for
    ``--accelerator cpu``: the CLI's own tests cover its options, not this step's data against the paper config's
    batch and crops (as first committed it could not have trained: 128-px patches, two of them for a batch of 16).
    Each run's weights say their arithmetic."""
    import os
    import sys

    body = re.search(r"step_trainflags\(\) \{\n(.*?)\n\}\n", SCRIPT.read_text(), flags=re.S)
    assert body is not None and "--accelerator gpu" in body[1]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "python3"  # the script's python3: this environment's (a link would leave its venv)
    wrapper.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} "$@"\n')
    wrapper.chmod(0o755)
    script = "\n".join(
        [
            f"scratch={shlex.quote(str(tmp_path / 'scratch'))}; OUT_DIR={shlex.quote(str(tmp_path / 'out'))}",
            'mkdir -p "$scratch" "$OUT_DIR"',
            'cap() { echo "$1"; }',
            body[1].replace("--accelerator gpu", "--accelerator cpu"),
        ]
    )
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env, timeout=600)
    log = (tmp_path / "out" / "gpu.log").read_text()
    assert done.returncode == 0, log[-2000:]
    ieee = "IEEE fp32 convolutions and matmuls"
    assert f"arithmetic: {ieee} (trainer.precision 32-true) on cpu, 1 process" in log, log[-2000:]
    assert f"arithmetic: bf16-mixed (16-bit autocast; the rest {ieee}) on cpu, 1 process" in log, log[-2000:]
    assert log.count("  arithmetic: ") == 2  # weights info of each run's checkpoint
