"""Bad input to data index, data synth and data patches, table-driven through the console entry point (the
``check_case`` fixture): each row is an unusual but plausible input; the command exits with the expected status
and one line on stderr naming the file or option and the problem, no traceback, inputs unchanged, nothing left
behind."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.crs import CRS
from rasterio.transform import Affine

from conftest import default_sigint
from dsen2cr.outputs.geotiff import write_geotiff

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
    dict(
        name="data patches: a manifest that gives one ROI to two rows",
        setup=lambda t: _patch_manifest(t, "s2.tif,clear.tif,s1.tif,1", "s2.tif,clear.tif,s1.tif,1"),
        message="m.csv:3: ROI 1 is also ",
        absent=("own",),
    ),
    dict(
        name="data patches: a manifest's ROI that is no number",
        setup=lambda t: _patch_manifest(t, "s2.tif,clear.tif,s1.tif,first"),
        message="m.csv:2: roi must be a whole number, got 'first'",
        absent=("own",),
    ),
    dict(
        name="data patches: a manifest with a misspelt column",
        setup=lambda t: _patch_manifest(t, "s2.tif,clear.tif,s1.tif,1", header="s2_cloudly,s2,s1,roi"),
        message="m.csv: manifest column 's2_cloudly' is not one of s2_cloudy, s2, s1, roi, s2_cloudy_offset, "
        "s2_offset, bounds, bounds_crs; did you mean 's2_cloudy'?",
        absent=("own",),
    ),
    dict(
        name="data patches: a manifest row without its S1",
        setup=lambda t: _patch_manifest(t, "s2.tif,clear.tif,,1"),
        message="m.csv:2: s1 must not be empty",
        absent=("own",),
    ),
    dict(
        name="data patches: a manifest whose second row is on another grid (refused before the first is cut)",
        setup=lambda t: _patch_manifest(t, "s2.tif,clear.tif,s1.tif,1", f"s2.tif,{_shifted_copy(t).name},s1.tif,2"),
        message="m.csv:3: ",
        absent=("own",),
    ),
    dict(
        name="data patches: --manifest and --roi",
        setup=lambda t: [*_patch_manifest(t, "s2.tif,clear.tif,s1.tif,1"), "--roi", "4"],
        message="--manifest: its rows name the scenes, ROIs and offsets",
        absent=("own",),
    ),
    dict(
        name="data patches: no --roi",
        setup=lambda t: [arg for arg in _patches(t) if arg not in ("--roi", "1")],
        message="data patches: needs --roi (or --manifest",
        absent=("own",),
    ),
    dict(
        name="data patches: the two S2 scenes on different grids",
        setup=lambda t: _patches(t, clear=_shifted_copy(t)),
        message="shifted.tif: its grid (50x40 px, EPSG:32632, origin 500030.0, 5000000.0) is not --s2-cloudy's "
        "(50x40 px, EPSG:32632, origin 500000.0, 5000000.0)",
        absent=("own",),
    ),
    dict(
        name="data patches: a Level-2A target for a Level-1C input",
        setup=lambda t: _patches(t, clear=_l2a_copy(t)),
        message="l2a.tif: Level-2A, but --s2-cloudy is Level-1C",
        absent=("own",),
    ),
    dict(
        name="data patches: one file as input and target",
        setup=lambda t: _patches(t, clear=t.scene()[0]),
        message="s2.tif: is --s2-cloudy too; the target is another, cloud-free acquisition",
        absent=("own",),
    ),
    dict(
        name="data patches: a copy of the input as the target (another file, the same pixels)",
        setup=lambda t: _patches(t),
        message="s2.tif: no 16 px patch to keep: --s2 the same pixels as --s2-cloudy (6)",
        absent=("own",),
    ),
    dict(
        name="data patches: a scene smaller than a patch",
        setup=lambda t: _patches(t, "--size", "64"),
        message="s2.tif: the scene is 50x40 px, smaller than one 64 px patch",
        absent=("own",),
    ),
    dict(
        name="data patches: --bounds that hold no whole patch",
        setup=lambda t: _patches(t, "--bounds", "500000", "4999850", "500150", "5000000"),
        message="s2.tif: --bounds 500000 4999850 500150 5000000 hold no whole 16 px patch (columns 0-14, rows 0-14 "
        "of the scene's 50 x 40 px; patches lie every 16 px from the scene's top-left corner, as without bounds)",
        absent=("own",),
    ),
    dict(
        name="data patches: --bounds of another place",
        setup=lambda t: _patches(t, "--bounds", "600000", "4999850", "600150", "5000000"),
        message="s2.tif: --bounds 600000 4999850 600150 5000000 lie outside the scene, which covers 500000 4999600 "
        "500500 5000000 in EPSG:32632",
        absent=("own",),
    ),
    dict(
        name="data patches: --bounds-crs without --bounds",
        setup=lambda t: _patches(t, "--bounds-crs", "EPSG:4326"),
        message="--bounds-crs: says what --bounds are in; give --bounds LEFT BOTTOM RIGHT TOP",
        absent=("own",),
    ),
    dict(
        name="data patches: a manifest row's bounds of three numbers",
        setup=lambda t: _patch_manifest(
            t, "s2.tif,clear.tif,s1.tif,1,500000 4999850 500150", header="s2_cloudy,s2,s1,roi,bounds"
        ),
        message="m.csv:2: bounds: expected four finite numbers LEFT BOTTOM RIGHT TOP, got",
        absent=("own",),
    ),
    dict(
        name="data patches: a manifest row's part that holds no whole patch (refused before any row is cut)",
        setup=lambda t: _patch_manifest(
            t,
            "s2.tif,clear.tif,s1.tif,1,,",
            "s2.tif,clear.tif,s1.tif,2,500000 4999850 500150 5000000,EPSG:32632",
            header="s2_cloudy,s2,s1,roi,bounds,bounds_crs",
        ),
        message="s2.tif: bounds 500000 4999850 500150 5000000 (EPSG:32632) hold no whole 16 px patch",
        absent=("own",),
    ),
    dict(
        name="data patches: no patch with data in all three images",
        setup=lambda t: _patches(t, s1=_s1_with_gaps()),
        message="s2.tif: no 16 px patch to keep: no data in --s1 (6)",
        absent=("own",),
    ),
    dict(
        name="data patches: a collection name that is no file-name token",
        setup=lambda t: _patches(t, "--collection", "my_data"),
        message="--collection: letters and digits only",
        absent=("own",),
    ),
    dict(
        name="data patches: --max-target-cloud 1.5",
        setup=lambda t: _patches(t, "--max-target-cloud", "1.5"),
        message="--max-target-cloud: a share in [0, 1], got 1.5",
        absent=("own",),
    ),
    dict(
        name="data patches: --size 8",
        setup=lambda t: _patches(t, "--size", "8"),
        message="--size: must be at least 16 px, got 8",
        absent=("own",),
    ),
]


def _patches(tmp: Path, *extra: str, clear: Path | None = None, s1: np.ndarray | None = None) -> list[str]:
    """``data patches`` of the workdir's scene (its copy as the cloud-free one, unless ``clear``) in 16 px."""
    s2, s1_path = tmp.scene(s1=s1)  # type: ignore[attr-defined]
    if clear is None:
        clear = tmp / "clear.tif"
        clear.write_bytes(s2.read_bytes())
    args = ["--s2-cloudy", str(s2), "--s2", str(clear), "--s1", str(s1_path), "--out", str(tmp / "own")]
    return ["data", "patches", *args, "--roi", "1", "--size", "16", "--no-progress", *extra]


def _patch_manifest(tmp: Path, *rows: str, header: str = "s2_cloudy,s2,s1,roi") -> list[str]:
    """``data patches --manifest m.csv`` of ``rows`` (paths relative to the workdir: its scene, clear.tif a copy)."""
    _patches(tmp)
    manifest = _write(tmp / "m.csv", "\n".join([header, *rows]) + "\n")
    return ["data", "patches", "--manifest", str(manifest), "--out", str(tmp / "own"), "--size", "16", "--no-progress"]


def _s1_with_gaps() -> np.ndarray:
    """S1 of the workdir's scene with no data in every 16 px patch (a stripe of NaN every 8 columns)."""
    s1 = np.stack([np.full((40, 50), -12.0), np.full((40, 50), -19.0)]).astype(np.float32)
    s1[:, :, ::8] = np.nan
    return s1


def _shifted_copy(tmp: Path) -> Path:
    """The scene 3 pixels east."""
    s2, _ = tmp.scene()  # type: ignore[attr-defined]
    with rasterio.open(s2) as src:
        return write_geotiff(
            tmp / "shifted.tif", src.read(), crs=src.crs, transform=src.transform * Affine.translation(3, 0)
        )


def _l2a_copy(tmp: Path) -> Path:
    """The scene's 12 Level-2A bands (B10 dropped)."""
    s2, _ = tmp.scene()  # type: ignore[attr-defined]
    with rasterio.open(s2) as src:
        return write_geotiff(tmp / "l2a.tif", np.delete(src.read(), 10, axis=0), crs=src.crs, transform=src.transform)


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
