"""The persistent compile cache and what --backend auto makes of it (issue #16)."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from dsen2cr.auto import COLD_BUILD_SECONDS, compile_pays_off
from dsen2cr.compile_cache import COMPILE_SAVING, build_key, cache_dir, record_build_seconds, recorded_build_seconds
from dsen2cr.data.sample import sample_scene
from dsen2cr.models import VARIANTS

PAPER = VARIANTS["dsen2cr"].config
CPU = torch.device("cpu")


def test_cache_folder_follows_the_xdg_convention(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DSEN2CR_CACHE_DIR", str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("DSEN2CR_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "dsen2cr"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "dsen2cr"


def test_auto_compiles_when_the_recorded_build_pays(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DSEN2CR_CACHE_DIR", str(tmp_path))
    shape = (1, 452, 580)
    # 512 x 384 px with the paper model: 2 FLOP x 18,947,341 weights per pixel at 1.5e11 FLOP/s = 49.7 s eager;
    # compiling saves a quarter of it, 12.4 s: less than a first build (30 s), more than a recorded one of 4 s.
    pixels = 512 * 384
    saving = COMPILE_SAVING * pixels * 2 * 18_947_341 / 1.5e11
    assert 12 < saving < COLD_BUILD_SECONDS
    assert not compile_pays_off(PAPER, CPU, pixels, shape)
    record_build_seconds(build_key(PAPER, shape, CPU), 4.0)
    assert recorded_build_seconds(build_key(PAPER, shape, CPU)) == 4.0
    assert compile_pays_off(PAPER, CPU, pixels, shape)
    assert not compile_pays_off(PAPER, CPU, pixels, (1, 64, 64))  # another shape: not recorded
    assert not compile_pays_off(PAPER, CPU, None, shape)  # unknown run length
    record_build_seconds(build_key(PAPER, shape, CPU), 20.0)  # a slow build is what the next run expects
    assert not compile_pays_off(PAPER, CPU, pixels, shape)
    (tmp_path / "builds.json").write_text("{broken")  # a damaged record is no record
    assert recorded_build_seconds(build_key(PAPER, shape, CPU)) is None


@pytest.mark.slow  # compiles the network: ~8 s
def test_compiled_run_keeps_its_code_and_build_time(
    tmp_path: Path, run_cli: Callable[..., subprocess.CompletedProcess], weights_file: Callable[[str], Path]
) -> None:
    """A compiled remove-clouds run leaves inductor's cache and its build time in $DSEN2CR_CACHE_DIR."""
    cache = tmp_path / "cache"
    env = {k: v for k, v in os.environ.items() if k != "TORCHINDUCTOR_CACHE_DIR"} | {"DSEN2CR_CACHE_DIR": str(cache)}
    weights = weights_file("dsen2cr-small-nosar")
    args = ["remove-clouds", "--weights", str(weights), "--s2", str(sample_scene()), "--backend", "compiled"]
    result = run_cli(*args, "--out", str(tmp_path / "a.tif"), "--no-progress", "--tile", "128", env=env)
    assert result.returncode == 0, result.stderr
    assert any((cache / "inductor").rglob("*.py")), "no compiled code in the persistent cache"
    builds = json.loads((cache / "builds.json").read_text())
    ((key, seconds),) = builds.items()
    assert key.startswith(f"torch {torch.__version__} cpu ") and '"num_features": 32' in key
    assert key.endswith("]") and key.split("[")[-1].startswith("1, ")  # batch 1 of the first window's shape
    assert 0 < seconds < 600


def test_a_users_inductor_folder_is_kept_and_inductors_default_replaced(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    from dsen2cr.compile_cache import use_persistent_compile_cache

    monkeypatch.setenv("DSEN2CR_CACHE_DIR", str(tmp_path / "ours"))
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "users"))
    assert use_persistent_compile_cache() == tmp_path / "users"
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "users")
    # inductor records its own default in the environment on first use: that is not a user's choice
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", os.path.abspath(default_cache_dir()))
    assert use_persistent_compile_cache() == tmp_path / "ours" / "inductor"
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "ours" / "inductor")
