"""Outputs: atomic writes that never replace a file the command did not expect (two runs, one output)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from dsen2cr.errors import DSen2CRError
from dsen2cr.outputs.files import atomic_path


def test_a_file_that_appears_during_the_write_is_kept(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    appeared = pytest.raises(DSen2CRError, match=r"out.txt: appeared while this run was writing it")
    with appeared, atomic_path(target) as tmp:
        tmp.write_text("mine")
        target.write_text("theirs")  # another run finished first
    assert target.read_text() == "theirs"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_a_file_that_changes_during_the_write_is_kept(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old")
    changed = pytest.raises(DSen2CRError, match=r"out.txt: changed while this run was writing it")
    with changed, atomic_path(target) as tmp:
        tmp.write_text("mine")
        target.write_text("theirs, and longer")
    assert target.read_text() == "theirs, and longer"


def test_an_unchanged_file_is_replaced_and_a_new_one_written(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    with atomic_path(target) as tmp:
        tmp.write_text("first")
    with atomic_path(target) as tmp:
        tmp.write_text("second")
    assert target.read_text() == "second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_two_scene_runs_on_one_output_never_both_succeed(tmp_path: Path, workdir: Path) -> None:
    """The first run to finish keeps its output; the other (here: its output appears while it predicts)
    refuses with one line instead of replacing it and saying 'wrote'."""
    from dsen2cr import create_model
    from dsen2cr.predictor import predictor_from_model
    from dsen2cr.scene.remove import remove_clouds
    from dsen2cr.settings import SceneJob, SceneSettings

    s2, _ = workdir.scene()
    out = workdir / "same.tif"
    predictor = predictor_from_model(create_model("dsen2cr-small-nosar"), device="cpu")

    def other_run_finishes_first(s2_batch: np.ndarray, s1_batch: np.ndarray | None) -> np.ndarray:
        if not out.exists():
            out.write_bytes(b"the other run's result")
        return predictor(s2_batch, s1_batch)

    racing = dataclasses.replace(predictor, predict=other_run_finishes_first)
    with pytest.raises(DSen2CRError, match=r"same.tif: appeared while this run was writing it"):
        remove_clouds(racing, SceneJob(str(s2), None, out), SceneSettings(progress=False))
    assert out.read_bytes() == b"the other run's result"
    assert not [p for p in workdir.iterdir() if p.name.startswith(".same")]


def test_remote_reads_are_bounded_in_time_unless_the_user_says_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    from rasterio.env import getenv

    from dsen2cr.rasters import gdal_block_cache

    with gdal_block_cache():
        options = getenv()
    assert (options["GDAL_HTTP_TIMEOUT"], options["GDAL_HTTP_CONNECTTIMEOUT"]) == ("60", "20")
    assert options["GDAL_HTTP_MAX_RETRY"] == "3"
    monkeypatch.setenv("GDAL_HTTP_TIMEOUT", "600")
    with gdal_block_cache():
        assert "GDAL_HTTP_TIMEOUT" not in getenv()  # GDAL reads the user's environment variable


def test_a_second_run_on_one_output_is_refused_at_its_start(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    """remove-clouds locks its outputs (``.NAME.lock``, the writer's pid) for the run: a run that finds the lock
    of a running process refuses at once, naming it; a lock whose process has ended (a killed run) is taken
    over; no lock is left after the run, whether it succeeded or failed."""
    import subprocess
    import sys

    from dsen2cr.cli import main

    s2, _ = workdir.scene()
    argv = ["remove-clouds", "--weights", str(workdir.weights("dsen2cr-small-nosar")), "--s2", str(s2)]
    out = workdir / "same.tif"
    lock = workdir / ".same.tif.lock"
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock.write_text(f"{other.pid}\n")
        assert main([*argv, "--out", str(out), "--no-progress"]) == 2
        assert f"another dsen2cr run (process {other.pid}) is writing it" in capsys.readouterr().err
        assert lock.read_text() == f"{other.pid}\n" and not out.exists()
    finally:
        other.kill()
        other.wait()
    assert main([*argv, "--out", str(out), "--no-progress"]) == 0  # the lock of an ended process is stale
    assert out.is_file() and not lock.exists()
    assert main([*argv, "--out", str(out), "--no-progress"]) == 2  # exists, no --overwrite: refused before locking
    empty, _ = workdir.scene(s2=np.zeros((13, 40, 50), np.uint16))  # no valid pixel: fails inside the run
    argv[-1] = str(empty)
    assert main([*argv, "--out", str(out), "--no-progress", "--overwrite"]) == 2
    assert "S2 has no valid pixels" in capsys.readouterr().err
    assert not lock.exists()
