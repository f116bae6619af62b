"""Bad input to data index and data synth, table-driven through the console entry point (the ``check_case`` fixture):
each row is an unusual but plausible input; the command exits with the expected status and one line on
stderr naming the file or option and the problem, no traceback, inputs unchanged, nothing left behind."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from rasterio.crs import CRS

from conftest import default_sigint

UTM32N = CRS.from_epsg(32632)


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _mkdir(path: Path) -> Path:
    path.mkdir()
    return path


def _existing(tmp: Path, name: str, content: bytes = b"keep me") -> Path:
    (tmp / name).write_bytes(content)
    return tmp / name


def _index_existing(tmp: Path) -> list[str]:
    _existing(tmp, "n.txt.skipped.tsv")
    return _index_args(tmp, _existing(tmp, "n.txt"))


def _index_args(tmp: Path, out: Path, *extra: str) -> list[str]:
    root = tmp.tree()
    return ["data", "index", str(root), "--out", str(out), *extra]


def _without_s1(tmp: Path) -> list[str]:
    """A tree whose S1 folders are missing (only the S2 archives downloaded)."""
    import shutil

    root = tmp.tree()
    shutil.rmtree(root / "ROIs1158_spring_s1")
    return ["data", "index", str(root), "--out", str(tmp / "i.csv")]


#: The table: each row is run by ``test_bad_input`` through the ``check_case`` fixture.
CASES = [
    dict(
        name="data index: root is a file",
        setup=lambda t: ["data", "index", str(_write(t / "f.txt", "x")), "--out", str(t / "i.csv")],
        message="f.txt: dataset root is not a folder",
        absent=("i.csv",),
    ),
    dict(
        name="data index: no data",
        setup=lambda t: ["data", "index", str(_mkdir(t / "empty")), "--out", str(t / "i.csv")],
        message="no SEN12MS-CR data found",
        absent=("i.csv",),
    ),
    dict(
        name="data index: no S1 at all",
        setup=lambda t: _without_s1(t),
        message="no complete patch: all 3 lack a partner file (e.g. ",
        absent=("i.csv", "i.csv.skipped.tsv"),
    ),
    dict(
        name="data index: bad ROI list",
        setup=lambda t: [
            "data",
            "index",
            str(t.tree()),
            "--out",
            str(t / "i.csv"),
            "--test-rois",
            str(_write(t / "r.txt", "spring-1")),
        ],
        message="r.txt:1: 'spring-1' is not a ROI id",
        absent=("i.csv",),
    ),
    dict(
        name="data index: existing file list",
        setup=lambda t: _index_existing(t),
        message="n.txt: exists; pass --overwrite",
        keep=("n.txt", "n.txt.skipped.tsv"),
    ),
    dict(
        name="data index: --out is a dataset file",
        setup=lambda t: _index_args(
            t, t.tree() / "ROIs1158_spring_s1" / "s1_1" / "ROIs1158_spring_s1_1_p0.tif", "--overwrite"
        ),
        message="named like a SEN12MS-CR patch file",
        keep=("data/ROIs1158_spring_s1/s1_1/ROIs1158_spring_s1_1_p0.tif",),
    ),
    dict(
        name="data synth: into an existing tree",
        setup=lambda t: ["data", "synth", "--out", str(t.tree()), "--count", "2"],
        message="already holds a SEN12MS-CR tree; choose a new or empty folder",
        keep=("data/files.csv", "data/ROIs1158_spring_s2/s2_1/ROIs1158_spring_s2_1_p0.tif"),
    ),
    dict(
        name="data index: --threads 0",
        setup=lambda t: _index_args(t, t / "n.csv", "--threads", "0"),
        message="threads: must be in [1, 256]",
        absent=("n.csv",),
    ),
    dict(
        name="data synth: --seed -5",  # an internal error (numpy's 'expected non-negative integer')
        setup=lambda t: ["data", "synth", "--out", str(t / "s"), "--count", "1", "--seed", "-5"],
        message="seed: must be in [0, 4294967295], got -5",
        absent=("s",),
    ),
    dict(
        name="data synth: --size 100000",
        setup=lambda t: ["data", "synth", "--out", str(t / "s"), "--count", "1", "--size", "100000"],
        message="size: must be in [16, 4096]",
        absent=("s",),
    ),
]


def test_bad_input(bad_input: dict, check_case: Callable[[dict], None]) -> None:
    """Each row of ``CASES`` (parametrized by the ``bad_input`` hook in conftest.py)."""
    check_case(bad_input)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
@pytest.mark.parametrize("command", ["data synth", "demo"])
def test_a_signal_mid_run_leaves_nothing_and_a_rerun_works(
    workdir: Path, private_tmp_env: dict[str, str], command: str, signum: int
) -> None:
    """SIGTERM (143) or Ctrl-C (130) while data synth writes patches, or while the demo trains: the folder the
    command created is gone, nothing is left in TMPDIR, and the same command then runs (#26: a terminated
    data synth used to leave a partial tree that its rerun refused)."""
    out = workdir / "out"
    argv = {"data synth": ["data", "synth", "--out", str(out), "--count", "400"], "demo": ["demo", "--out", str(out)]}
    ready = {
        "data synth": lambda: len(list(out.glob("*/*/*.tif"))) > 6,
        "demo": lambda: any(out.glob("train-sar/checkpoints/*.ckpt")),
    }[command]
    process = subprocess.Popen(
        [sys.executable, "-m", "dsen2cr.cli", *argv[command]],
        env=private_tmp_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        preexec_fn=default_sigint,
    )
    deadline = time.monotonic() + 300
    while not ready() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert process.poll() is None, "the command ended before the signal"
    process.send_signal(signum)
    _, err = process.communicate(timeout=120)
    assert process.returncode == (143 if signum == signal.SIGTERM else 130), err.decode()
    # PyTorch's own inductor cache folder (torchinductor_USER, made when Lightning loads) is not a file of ours
    left = [p.name for p in (workdir / "tmp").iterdir() if not p.name.startswith("torchinductor_")]
    assert b"Traceback" not in err and not out.exists() and not left, left
    rerun = {"data synth": ["data", "synth", "--out", str(out), "--count", "2", "--size", "32"]}
    if command in rerun:
        assert (
            subprocess.run([sys.executable, "-m", "dsen2cr.cli", *rerun[command]], env=private_tmp_env).returncode == 0
        )
