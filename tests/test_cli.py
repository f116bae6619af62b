"""The command line as a whole: missing extras named, --debug tracebacks, an inference-only install."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from rasterio.crs import CRS

from dsen2cr.cli import main

UTM32N = CRS.from_epsg(32632)


def test_debug_shows_the_traceback(workdir: Path) -> None:
    with pytest.raises(Exception, match="config file not found"):
        main(["--debug", "train", "--config", str(workdir / "nope.yaml")])


@pytest.mark.parametrize(("command", "extra"), [("train", "train"), ("export-onnx", "onnx")])
def test_missing_extras_are_named(
    command: str, extra: str, monkeypatch: pytest.MonkeyPatch, workdir: Path, capsys: pytest.CaptureFixture
) -> None:
    """In an inference-only install, the commands that need an extra say which one (the real venv check is
    test_inference_only_install below, marked slow)."""
    import importlib.util

    missing = {"yaml", "lightning", "onnxscript"}
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in missing else real(name, *a))
    argv = ["train"] if command == "train" else ["export-onnx", "--weights", str(workdir.weights()), "x.onnx"]
    assert main(argv) == 2
    assert f"pip install 'dsen2cr[{extra}]'" in capsys.readouterr().err


@pytest.mark.slow
def test_inference_only_install(workdir: Path) -> None:
    """``pip install dsen2cr`` (no extras) in a fresh venv: train and export-onnx name their extra."""
    repo = Path(__file__).resolve().parents[1]
    venv = workdir / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, "torch==2.13.0"], check=True)
    subprocess.run([*pip, str(repo)], check=True)
    for argv, extra in ((["train"], "train"), (["export-onnx", "--weights", "w", "x.onnx"], "onnx")):
        result = subprocess.run([str(venv / "bin" / "dsen2cr"), *argv], capture_output=True, text=True)
        assert result.returncode == 2 and f"pip install 'dsen2cr[{extra}]'" in result.stderr, result.stderr


def test_one_grammar_for_every_command(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    """-q/-v after the subcommand too, -q silences progress bars, a misspelt option gets a suggestion, a
    manifest needs no s1 column for a model without SAR, and `data sample` reruns with --overwrite."""
    from dsen2cr.cli import main

    s2, _ = workdir.scene()
    weights = workdir.weights("dsen2cr-small-nosar")
    argv = ["remove-clouds", "--weights", str(weights), "--s2", str(s2), "--out", str(workdir / "a.tif")]
    with pytest.MonkeyPatch.context() as terminal:  # bars are drawn on a terminal only: pretend stderr is one
        terminal.setattr(sys.stderr, "isatty", lambda: True)
        assert main([*argv, "-q"]) == 0
        captured = capsys.readouterr()
        assert "backend:" not in captured.out and "remove-clouds:" not in captured.err  # no info lines, no bar
        assert captured.out.startswith("wrote ")
        assert main([*argv, "--overwrite"]) == 0
        assert "remove-clouds: 100%" in capsys.readouterr().err  # the bar, on a terminal
    assert main([*argv, "--overwrite"]) == 0  # stderr a file or a pipe (a log): no bar, the result lines only
    captured = capsys.readouterr()
    assert "remove-clouds:" not in captured.err and "wrote " in captured.out, captured
    with pytest.raises(SystemExit):
        main([*argv, "--overwrite", "--mask-ot", "m.tif"])
    assert "unrecognized arguments: --mask-ot m.tif; did you mean --mask-out?" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["-q", *argv, "-v"])
    (workdir / "m.csv").write_text("s2,out\ns2.tif,b.tif\n")
    assert main(["remove-clouds", "--weights", str(weights), "--manifest", str(workdir / "m.csv"), "-q"]) == 0
    assert (workdir / "b.tif").is_file()
    assert main(["data", "sample", "--out", str(workdir / "sample")]) == 0
    assert main(["data", "sample", "--out", str(workdir / "sample")]) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    assert main(["data", "sample", "--out", str(workdir / "sample"), "--overwrite"]) == 0


def test_validation_errors_come_before_any_decision_is_printed(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    """SAR weights without --s1: the one error line, and no 'tiles:' / 'backend:' / 'precision:' lines first."""
    from dsen2cr.cli import main

    s2, _ = workdir.scene()
    argv = ["remove-clouds", "--weights", str(workdir.weights("dsen2cr-small")), "--s2", str(s2)]
    assert main([*argv, "--out", str(workdir / "o.tif"), "--no-progress"]) == 2
    captured = capsys.readouterr()
    assert "these weights need SAR input" in captured.err
    assert not any(word in captured.out for word in ("tiles:", "backend:", "precision:")), captured.out


def test_output_and_weights_are_named_alike_in_every_command(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    """#29: export takes --weights/--out like the other commands (its positional form still works), export-onnx
    --out, train --out for its run folder; giving one twice, or not at all, is one line."""
    from dsen2cr.cli import build_parser, main, parse_arguments

    weights = str(workdir.weights())
    assert main(["export", "--weights", weights, "--out", str(workdir / "a.safetensors")]) == 0
    assert main(["export", weights, str(workdir / "b.safetensors")]) == 0
    from dsen2cr.weights import load_model

    a, b = (load_model(workdir / name).state_dict() for name in ("a.safetensors", "b.safetensors"))
    assert all(torch.equal(a[key], b[key]) for key in a)
    parser = build_parser()
    assert parse_arguments(parser, ["export-onnx", "--weights", weights, "--out", "m.onnx"]).out == "m.onnx"
    assert parse_arguments(parser, ["train", "--out", "runs/x"]).out_dir == "runs/x"
    for argv, message in (
        (["export", weights, "c.safetensors", "--out", "d.safetensors"], "give OUT or --out OUT once"),
        (["export", "--out", "e.safetensors"], "give CHECKPOINT or --weights CHECKPOINT (required)"),
    ):
        with pytest.raises(SystemExit):
            parse_arguments(build_parser(), argv)
        assert message in capsys.readouterr().err


def test_an_error_names_the_whole_command(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    """An error of a command of a group names the command as typed, as argparse's own errors do ('dsen2cr data
    synth: error: …'); it said 'dsen2cr data: error: …'."""
    from dsen2cr.cli import main

    assert main(["data", "synth", "--out", str(workdir / "s"), "--count", "0"]) == 2
    assert capsys.readouterr().err.startswith("dsen2cr data synth: error: count: must be in [1, 100000], got 0")
    assert main(["weights", "download", "no-such-weights", "--out", str(workdir / "w.safetensors")]) == 2
    assert capsys.readouterr().err.startswith("dsen2cr weights download: error: ")


def test_config_help_lists_every_bundled_config(capsys: pytest.CaptureFixture) -> None:
    """``dsen2cr --help`` and ``dsen2cr config --help`` name the bundled configs as the package ships them (the
    list was written into the help by hand: a config added later would be missing there)."""
    from dsen2cr.choices import bundled_config_names
    from dsen2cr.cli import main

    names = bundled_config_names()
    assert len(names) >= 4
    with pytest.raises(SystemExit):
        main(["config", "--help"])
    text = " ".join(capsys.readouterr().out.split()).replace("- ", "-")  # argparse wraps at hyphens
    assert f"one of: {', '.join(names)}" in text, text


def test_output_piped_into_a_reader_that_stops_early_is_no_error() -> None:
    """``dsen2cr models | head -1``: the reader closes the pipe; the command stops quietly, as command-line tools
    killed by SIGPIPE do (exit 141), instead of 'error: [Errno 32] Broken pipe' (exit 2) and Python's
    'Exception ignored … BrokenPipeError' at exit. Here the pipe is closed before the command writes."""
    process = subprocess.Popen(
        [sys.executable, "-m", "dsen2cr.cli", "models"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()  # before the command has imported its modules, let alone printed
    err = process.stderr.read().decode()
    assert process.wait(timeout=120) == 141, err
    assert err == ""
