"""Outputs: atomic writes that never replace a file the command did not expect (two runs, one output)."""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator
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


def test_an_output_that_is_a_symbolic_link_is_an_existing_output(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    """An output name that is a symbolic link exists, whether its target does or not: without --overwrite it is
    refused at the start; with it, the link itself is replaced by the output and its target never written. A
    dangling link was taken for an absent output: the scene ran, and then its result was refused as "appeared
    while this run was writing it (another run …)"."""
    from dsen2cr.cli import main

    s2, _ = workdir.scene()
    argv = ["remove-clouds", "--weights", str(workdir.weights("dsen2cr-small-nosar")), "--s2", str(s2)]
    kept = workdir / "kept.tif"
    kept.write_bytes(s2.read_bytes())  # someone else's GeoTIFF
    for target in (workdir / "nowhere.tif", kept):
        link = workdir / "o.tif"
        link.symlink_to(target)
        assert main([*argv, "--out", str(link), "--no-progress"]) == 2
        assert f"{link}: exists; pass --overwrite to replace it" in capsys.readouterr().err
        assert main([*argv, "--out", str(link), "--no-progress", "--overwrite"]) == 0
        assert not link.is_symlink() and link.is_file() and not (workdir / "nowhere.tif").exists()
        assert kept.read_bytes() == s2.read_bytes()
        link.unlink()


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


def _locked_command(tmp: Path, command: str) -> tuple[list[str], Path]:
    """The arguments of ``command`` writing one output, and that output."""
    out = {"train": tmp / "run", "export": tmp / "o.safetensors", "export-onnx": tmp / "o.onnx"}.get(command)
    csv_out = ("data index", "pair", "data triplets")
    out = out or tmp / ("o.csv" if command in csv_out else "o.safetensors" if command == "weights" else "out")
    out = tmp / "o.json" if command == "stac-collection" else out
    root = tmp.tree() if command in ("evaluate", "data index", "train") else None
    argv = {
        "evaluate": ["evaluate", "--weights", str(tmp.weights()), "--data-root", str(root), "--rois", "x"],
        "export": ["export", str(tmp.weights())],
        "export-onnx": ["export-onnx", "--weights", str(tmp.weights())],
        "weights": ["weights", "download", "carl-sar", "--url", "http://127.0.0.1:9/w.h5"],
        "data index": ["data", "index", str(root)],
        "data synth": ["data", "synth", "--count", "1"],
        "data splits": ["data", "splits"],
        "data sample": ["data", "sample"],
        "data download": ["data", "download", "--base-url", "http://127.0.0.1:9/"],
        "demo": ["demo"],
        "train": ["train", "--config", str(tmp.config()), "--out-dir", str(out), "--no-progress"],
        "pair": ["pair", "--s2", str(tmp / "s2.tif"), "--s1", str(tmp / "s1.tif")],
        "data triplets": ["data", "triplets", "--s2", str(tmp / "s2.tif"), "--s1", str(tmp / "s1.tif")],
        "stac-collection": ["stac-collection", str(tmp / "item.json")],
    }[command]
    if command in ("export", "export-onnx"):
        return [*argv, str(out)], out
    return (argv if command == "train" else [*argv, "--out", str(out)]), out


@pytest.mark.parametrize(
    "command",
    [
        "evaluate",
        "export",
        "export-onnx",
        "weights",
        "data index",
        "data synth",
        "data splits",
        "data sample",
        "data download",
        "demo",
        "train",
        "pair",
        "data triplets",
        "stac-collection",
    ],
)
def test_every_command_refuses_an_output_another_run_is_writing(
    workdir: Path, capsys: pytest.CaptureFixture, command: str
) -> None:
    """One rule for every command that writes (#26): a lock ``.NAME.lock`` of a running process beside the
    output (file or folder) refuses the run at its start, naming that process; nothing is written, the lock
    is left to its owner."""
    from dsen2cr.cli import main

    argv, out = _locked_command(workdir, command)
    lock = out.with_name(f".{out.name}.lock")
    owner = os.getppid()  # a process that runs for the whole test
    lock.write_text(f"{owner}\n")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"{out}: another dsen2cr run (process {owner}) is writing it" in err, err
    assert not out.exists() and lock.read_text() == f"{owner}\n"


def test_a_command_takes_over_a_stale_lock_and_removes_its_own(workdir: Path) -> None:
    """The lock of a process that has ended (a killed export) does not block the next run, and the run
    removes its own lock when it ends."""
    import subprocess
    import sys

    from dsen2cr.cli import main

    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock = workdir / ".o.safetensors.lock"
    lock.write_text(ended.stdout)
    assert main(["export", str(workdir.weights()), str(workdir / "o.safetensors")]) == 0
    assert (workdir / "o.safetensors").is_file() and not lock.exists()


def test_a_lock_from_another_host_is_never_taken_for_stale(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    """On a file system that several machines share (a cluster's), a lock's process id means nothing on
    another host: a lock written on another host is taken for a live run (refused, naming the process, the
    host and how to clear a killed run's lock), and neither it nor that run's temporaries are touched. The
    lock was taken over as stale (its pid runs nowhere here), and the run's clean-up then removed the other
    host's live temporaries. A lock of an ended process on this host is taken over, as before."""
    import socket
    import subprocess
    import sys

    from dsen2cr.cli import main

    ended = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True).stdout)
    out = workdir / "o.safetensors"
    lock, theirs = workdir / ".o.safetensors.lock", workdir / f".o.{ended}.abcdefgh.tmp.safetensors"
    lock.write_text(f"{ended} node-17.cluster.example\n")
    theirs.write_bytes(b"being written on node 17")
    argv = ["export", str(workdir.weights()), str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"{out}: another dsen2cr run (process {ended} on node-17.cluster.example) is writing it" in err, err
    assert f"if that run was killed, delete {lock}" in err, err
    assert lock.read_text() == f"{ended} node-17.cluster.example\n" and theirs.exists() and not out.exists()
    lock.write_text(f"{ended} {socket.gethostname()}\n")  # this host's, ended: stale
    assert main(argv) == 0
    assert out.is_file() and not lock.exists() and not theirs.exists()


def test_an_output_name_too_long_for_its_temporaries_is_refused_before_any_work(
    workdir: Path, capsys: pytest.CaptureFixture
) -> None:
    """Files named after an output (the lock, the temporary, a scene's staging and overview files) are longer
    than it: a name that fits the file system but leaves them no room is refused at the start, naming it and
    the longest name that works; that longest name works for a whole scene run (every file beside it fits). A
    226-byte name failed after the model had loaded, with the system's error naming a staging file."""
    import os

    from dsen2cr.cli import main

    wide = np.random.default_rng(0).integers(300, 3000, (13, 40, 600)).astype(np.uint16)  # 600 px: overviews
    s2, _ = workdir.scene(s2=wide)
    weights = str(workdir.weights("dsen2cr-small-nosar"))
    room = os.pathconf(workdir, "PC_NAME_MAX") - 45
    too_long = workdir / ("c" * (room - 3) + "x.tif")  # room + 2 bytes
    assert main(["remove-clouds", "--weights", weights, "--s2", str(s2), "--out", str(too_long)]) == 2
    captured = capsys.readouterr()
    err = captured.err
    assert f"{too_long}: a name of {room + 2} bytes leaves no room for the files named after it" in err, err
    assert f"at most {room} bytes here" in err and "backend:" not in captured.out  # before any work
    for name in ("e" * (room + 1) + ".safetensors", "f" * 240 + ".safetensors"):  # the second: no room for the lock
        assert main(["export", weights, str(workdir / name)]) == 2
        assert f"{name}: a name of {len(name)} bytes leaves no room" in capsys.readouterr().err
    assert list(workdir.glob(".[cef]*")) == []
    longest = workdir / ("d" * (room - 4) + ".tif")
    assert (
        main(
            [
                "remove-clouds",
                "--weights",
                weights,
                "--s2",
                str(s2),
                "--out",
                str(longest),
                "--mask-out",
                str(workdir / ("m" * (room - 4) + ".tif")),
                "--no-progress",
            ]
        )
        == 0
    )
    assert longest.is_file() and not list(workdir.glob(".d*"))


@contextlib.contextmanager
def _small_disk(folder: Path, kilobytes: int) -> Iterator[Path]:
    """``folder`` as a tmpfs of ``kilobytes`` kB for the block (needs root and mount; the test is skipped
    otherwise)."""
    import subprocess

    folder.mkdir()
    size = f"size={kilobytes}k"
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", size, "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({mounted.stderr.decode().strip()})")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A 16 kB tmpfs: too small for any output but a tiny mask (needs root and mount; skipped otherwise)."""
    with _small_disk(tmp_path / "full", 16) as folder:
        yield folder


@pytest.mark.parametrize("command", ["export", "evaluate"])  # remove-clouds and train: their room tests below
def test_a_full_disk_is_one_line_naming_the_output(
    workdir: Path, full_disk: Path, capsys: pytest.CaptureFixture, command: str
) -> None:
    """A real full disk (ENOSPC from the kernel, through safetensors, GDAL and the CSV/JSON writers; a scene's
    COG and Lightning's checkpoints in the room tests below, since a scene or a run too large for its disk is
    now refused at its start): exit 2, one line naming the output and 'No space left on device', nothing left
    on the full disk, inputs unchanged."""
    from dsen2cr.cli import main

    weights = workdir.weights("dsen2cr-small")
    out = full_disk / {"export": "o.safetensors"}.get(command, "out")
    argv = {
        "export": ["export", str(weights)],
        "evaluate": ["evaluate", "--weights", str(weights), "--data-root", str(workdir.tree()), "--out"],
    }[command]
    extra = {"evaluate": ["--file-list", str(workdir.tree() / "files.csv"), "--no-progress"]}.get(command, [])
    before = weights.read_bytes()
    assert main([*argv, str(out), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "No space left on device" in err[-1] and str(full_disk) in err[-1], err
    assert list(full_disk.iterdir()) == [] and weights.read_bytes() == before


def test_the_readme_xarray_recipe_selects_bands_by_name(workdir: Path) -> None:
    """#29: rioxarray reads an output as reflectance (scale applied, nodata NaN) and, with the README's one line,
    selects bands by name."""
    rioxarray = pytest.importorskip("rioxarray")
    import rasterio

    from dsen2cr.cli import main

    s2 = np.random.default_rng(0).integers(300, 3000, (13, 40, 50)).astype(np.uint16)
    s2[:, :5] = 0  # no data
    scene, _ = workdir.scene(s2=s2)
    weights = workdir.weights("dsen2cr-small-nosar")
    assert main(["remove-clouds", "--weights", str(weights), "--s2", str(scene), "--out", str(workdir / "o.tif")]) == 0
    # the README's recipe
    da = rioxarray.open_rasterio(workdir / "o.tif", mask_and_scale=True)
    da = da.assign_coords(band=list(da.attrs["long_name"]))
    red = da.sel(band="B4").values
    with rasterio.open(workdir / "o.tif") as out:
        dn = out.read(out.descriptions.index("B4") + 1).astype(np.float64)
    np.testing.assert_allclose(red[5:], dn[5:] * 1e-4, rtol=1e-6)
    assert np.isnan(red[:5]).all()


def test_sigma_reads_in_the_units_of_the_image(workdir: Path) -> None:
    """The sigma COG declares the image's scale (DN x 0.0001 = reflectance): a reader that applies scales
    (rioxarray with mask_and_scale, QGIS) gets the image and its sigma both in reflectance, so image +- sigma
    means something. sigma declared no scale and read as DN beside an image read as reflectance: 10000 times
    too wide."""
    rioxarray = pytest.importorskip("rioxarray")
    import rasterio

    from dsen2cr.cli import main
    from dsen2cr.models.dsen2cr import ModelConfig
    from dsen2cr.weights import save_weights

    s2 = np.random.default_rng(0).integers(300, 3000, (13, 40, 50)).astype(np.uint16)
    s2[:, :5] = 0  # no data
    scene, _ = workdir.scene(s2=s2)
    weights = save_weights(ModelConfig(1, 4, False, 0.1, "diag").build(), workdir / "d.safetensors")
    argv = ["remove-clouds", "--weights", str(weights), "--s2", str(scene), "--out", str(workdir / "o.tif")]
    assert main([*argv, "--uncertainty-out", str(workdir / "s.tif")]) == 0
    image = rioxarray.open_rasterio(workdir / "o.tif", mask_and_scale=True).values
    sigma = rioxarray.open_rasterio(workdir / "s.tif", mask_and_scale=True).values
    with rasterio.open(workdir / "s.tif") as raw:
        sigma_dn = raw.read().astype(np.float64)
        assert raw.scales == (1e-4,) * 13 and raw.offsets == (0.0,) * 13
    np.testing.assert_allclose(sigma[:, 5:], sigma_dn[:, 5:] * 1e-4, rtol=1e-6)
    assert np.isnan(sigma[:, :5]).all() and np.isnan(image[:, :5]).all()
    assert 0 < np.nanmax(sigma) < 1 and np.nanmax(image) <= 1  # both reflectances (sigma in DN: hundreds)


def _ended_pid() -> int:
    """The id of a process that has ended (a run killed with SIGKILL leaves such ids in its temporaries)."""
    import subprocess
    import sys

    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True).stdout)


def test_a_folder_output_is_replaced_despite_a_killed_runs_temporary(
    workdir: Path, capsys: pytest.CaptureFixture
) -> None:
    """A report, demo, run or sample folder whose earlier run was killed while it wrote one of its files holds
    that write's hidden temporary (``.NAME.PID.RANDOM.tmpSUFFIX``). It was taken for a file the command did not
    write, so the folder was refused even with ``--overwrite`` ("holds '.NOTICE.…tmp', which is not part of the
    bundled sample"), and only deleting it by hand helped. The temporary of a name the command writes, of a
    process that has ended, is now removed with the earlier run's entries (a folder that holds nothing else
    needs no ``--overwrite``: no run completed a file there), saying so; a live process's temporary, and a
    temporary of a name the command does not write, still make the folder foreign."""
    from dsen2cr.cli import main

    out = workdir / "sample"
    argv = ["data", "sample", "--out", str(out)]
    assert main(argv) == 0
    killed = out / f".NOTICE.{_ended_pid()}.abcd1234.tmp"
    killed.write_text("half a notice")
    assert main([*argv, "--overwrite"]) == 0
    assert not killed.exists() and (out / "NOTICE").is_file()
    assert f"{out}: removed 1 file that a killed run left in it" in capsys.readouterr().out

    only = workdir / "only"
    only.mkdir()
    (only / f".NOTICE.{_ended_pid()}.abcd1234.tmp").write_text("killed at the first file")
    assert main(["data", "sample", "--out", str(only)]) == 0
    assert sorted(p.name for p in only.iterdir()) == ["NOTICE", "scene", "sen12mscr"]

    live = out / f".NOTICE.{os.getppid()}.abcd1234.tmp"  # a process that runs for the whole test
    foreign = out / f".notes.{_ended_pid()}.abcd1234.tmp.txt"  # a name data sample does not write
    for entry in (live, foreign):
        entry.write_text("not ours")
        assert main([*argv, "--overwrite"]) == 2
        assert f"holds {entry.name!r}, which is not part of the bundled sample" in capsys.readouterr().err
        assert entry.read_text() == "not ours"
        entry.unlink()


#: What a 50 x 40 px scene's outputs stage uncompressed (whole 256 px blocks, no overview level at this size):
#: the image's 13 uint16 bands and the cloud/shadow map's one uint8 band. By hand, not by the code's formula.
STAGED_IMAGE, STAGED_MASK = 256 * 256 * 13 * 2, 256 * 256 * 1


def test_a_scene_whose_staged_outputs_do_not_fit_is_refused_before_any_work(
    workdir: Path, capsys: pytest.CaptureFixture
) -> None:
    """A scene's outputs are staged uncompressed beside them (the image and its overview levels, in whole
    blocks) and then compressed into the COG beside that: a full tile's 3.1 GB image stages 4.2 GB on a CPU. A
    folder without that room failed with "No space left on device" once the network had run (hours on a CPU):
    it is now refused before any window, one line with the room it has and the room the staging takes; a folder
    that holds the staging but may not hold the COG too (when the data do not compress) is warned of, and one
    that holds both is not."""
    from dsen2cr.cli import main

    s2, _ = workdir.scene()
    argv = ["remove-clouds", "--weights", str(workdir.weights("dsen2cr-small-nosar")), "--s2", str(s2)]
    staged = STAGED_IMAGE + STAGED_MASK  # 1.77 MB; as much again at most for the COGs, incompressible
    with _small_disk(workdir / "small", 1024) as small:
        out = small / "o.tif"
        assert main([*argv, "--out", str(out), "--mask-out", str(small / "m.tif"), "--no-progress"]) == 2
        line = capsys.readouterr().err.strip().splitlines()[-1]  # after the B10 warning of the random scene
        assert line.startswith(f"dsen2cr remove-clouds: error: {out}: {small} has "), line
        assert f"this scene's outputs stage {staged / 1e6:.2f} MB there uncompressed" in line, line
        assert list(small.iterdir()) == []
    with _small_disk(workdir / "tight", 2 * staged // 1024 - 64) as tight:
        assert main([*argv, "--out", str(tight / "o.tif"), "--mask-out", str(tight / "m.tif"), "--no-progress"]) == 0
        err = capsys.readouterr().err
        assert f"{tight} has" in err and f"may need up to {2 * staged / 1e6:.2f} MB there" in err, err
        assert sorted(p.name for p in tight.iterdir()) == ["m.tif", "o.tif"]
    with _small_disk(workdir / "roomy", 2 * staged // 1024 + 64) as roomy:
        assert main([*argv, "--out", str(roomy / "o.tif"), "--mask-out", str(roomy / "m.tif"), "--no-progress"]) == 0
        assert "may need" not in capsys.readouterr().err


def test_a_scene_whose_cog_does_not_fit_beside_its_staging_is_one_line(
    workdir: Path, capsys: pytest.CaptureFixture
) -> None:
    """A disk that holds a scene's staged image but fills while its overviews' VRT and COG are written beside it
    (a real ENOSPC) ends in one line naming the output, nothing left. GDAL's "Failed to write whole XML document"
    (the VRT) was not taken for a failed write: "internal error (CPLE_FileIOError …); this is a bug", exit 1."""
    from dsen2cr.cli import main

    s2, _ = workdir.scene()
    argv = ["remove-clouds", "--weights", str(workdir.weights("dsen2cr-small-nosar")), "--s2", str(s2)]
    with _small_disk(workdir / "tight", STAGED_IMAGE // 1024 + 16) as tight:
        assert main([*argv, "--out", str(tight / "o.tif"), "--no-progress"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert "No space left on device" in err[-1] and str(tight / "o.tif") in err[-1], err
        assert list(tight.iterdir()) == []


def test_a_disk_that_fills_anywhere_in_a_scenes_write_is_one_line(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    """Disks that hold a scene's staging and fill at some later point of its write (the overview levels, the
    VRT, GDAL's copy into the COG, its directories): every run ends complete (exit 0) or in the one line naming
    the output and 'No space left on device', nothing left. A disk filled at the COG's directories was
    "internal error (CPLE_AppDefinedError: TIFFRewriteDirectory:Error fetching directory count)", exit 1: GDAL
    says where it failed, not why, and removes its unfinished copy (megabytes) before it reports the failure, and
    the staging was removed before the error was looked at, so the disk no longer looked full."""
    from dsen2cr.cli import main

    s2, _ = workdir.scene(s2=np.random.default_rng(1).integers(1, 10000, (13, 600, 560)).astype(np.uint16))
    argv = ["remove-clouds", "--weights", str(workdir.weights("dsen2cr-small-nosar")), "--s2", str(s2)]
    staged = (3 * 3 + 2 * 2 + 1) * 256 * 256 * 13 * 2  # the image in 3 x 3 blocks, its overviews in 2 x 2 and 1
    outcomes = set()
    for extra in range(64, 13000, 2048):  # kB beyond the staging (23.9 MB): a few tiles of the COG to all of it
        with _small_disk(workdir / f"disk{extra}", staged // 1024 + extra) as disk:
            code = main([*argv, "--out", str(disk / "o.tif"), "--no-progress"])
            last = capsys.readouterr().err.strip().splitlines()[-1]
            assert code in (0, 2), last
            if code == 2:
                assert "No space left on device" in last and str(disk / "o.tif") in last, last
            assert sorted(p.name for p in disk.iterdir()) == (["o.tif"] if code == 0 else [])
            outcomes.add(code)
    assert outcomes == {0, 2}


def test_a_run_folder_without_room_for_its_checkpoints_is_refused_or_warned_of(
    workdir: Path, capsys: pytest.CaptureFixture
) -> None:
    """A training run keeps a checkpoint after every epoch and last.ckpt beside them (weights and NAdam's two
    moments, float32: 12 bytes a parameter, 227 MB for the paper's model); a run folder without room for the
    first epoch's two failed only once that epoch had trained (hours on SEN12MS-CR). It is now refused before
    the first batch, with the room there is and the room needed; one that holds the first epoch's but not every
    epoch's is warned of (here it then stops at a later epoch: one line naming the checkpoint and the newest
    complete one to resume from; the line said only "nothing was written there")."""
    from dsen2cr.cli import main

    checkpoint = 82_093 * 12  # dsen2cr-small's parameters, by the registry's table; the file adds some kB
    config = workdir.config(optim={"epochs": 3, "batch_size": 2})
    with _small_disk(workdir / "small", 1536) as small:
        out = small / "run"
        assert main(["train", "--config", str(config), "--out-dir", str(out), "--no-progress"]) == 2
        line = capsys.readouterr().err.strip().splitlines()[-1]
        assert line.startswith(f"dsen2cr train: error: {out}: {small} has "), line
        assert f"its first epoch needs {2 * checkpoint / 1e6:.2f} MB there" in line, line
        assert list(small.iterdir()) == []
    with _small_disk(workdir / "tight", 3584) as tight:
        out = tight / "run"
        assert main(["train", "--config", str(config), "--out-dir", str(out), "--no-progress"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert any(f"every epoch's: up to {5 * checkpoint / 1e6:.2f} MB there" in line for line in err), err
        assert "No space left on device" in err[-1] and str(out / "checkpoints") in err[-1], err
        newest = max((out / "checkpoints").glob("*.ckpt"), key=lambda path: path.stat().st_mtime_ns)
        assert err[-1].endswith(
            f"the run's complete checkpoints stay: once that is fixed, resume from the newest, --resume {newest}"
        )
    with _small_disk(workdir / "roomy", 8192) as roomy:
        assert main(["train", "--config", str(config), "--out-dir", str(roomy / "run"), "--no-progress"]) == 0
        assert "up to" not in capsys.readouterr().err


def _test_split(workdir: Path, patches: int) -> tuple[Path, Path]:
    """A release tree whose test split holds ``patches`` 48 px patches, and its file list."""
    root, lines = workdir / "many", []
    for roi in range(1, patches + 1):
        t = workdir.triplet(root, "ROIs1158_spring", roi, 0, size=48, seed=roi)
        lines.append(
            f"3\tROIs1158_spring_s1/s1_{roi}\tROIs1158_spring_s2/s2_{roi}\tROIs1158_spring_s2_cloudy/s2_cloudy_{roi}"
            f"\t{t.s1.name}"
        )
    (root / "files.csv").write_text("\n".join(lines) + "\n")
    return root, root / "files.csv"


def test_an_evaluation_whose_images_will_not_fit_stops_after_its_first_batch(
    workdir: Path, capsys: pytest.CaptureFixture
) -> None:
    """evaluate writes a GeoTIFF and previews for every patch (2.2 MB a 256 px patch: 2.2 GB a thousand) and
    removes the report when it fails: a disk that filled at patch 5000 lost hours of work.
    After the first batch, what it wrote is projected onto the split: a report that will not fit stops there,
    one line with what the first patches wrote, the rest's need, the room, and --no-images; one that fits runs
    on."""
    from dsen2cr.cli import main

    root, files = _test_split(workdir, 16)
    argv = ["evaluate", "--weights", str(workdir.weights()), "--data-root", str(root), "--file-list", str(files)]
    argv += ["--batch-size", "2", "--no-progress"]
    assert main([*argv, "--out", str(workdir / "measure")]) == 0
    total = sum(f.stat().st_size for f in (workdir / "measure").rglob("*") if f.is_file())
    with _small_disk(workdir / "small", total // 2 // 1024) as small:
        out = small / "report"
        assert main([*argv, "--out", str(out)]) == 2
        line = capsys.readouterr().err.strip().splitlines()[-1]
        assert line.startswith(f"dsen2cr evaluate: error: {out}: the first 2 patches wrote "), line
        assert "the other 14 need about" in line and "--no-images" in line, line
        assert list(small.iterdir()) == []
    with _small_disk(workdir / "roomy", 2 * total // 1024) as roomy:
        assert main([*argv, "--out", str(roomy / "report")]) == 0


def _png_text(path: Path) -> dict[str, str]:
    """A PNG's text chunks (tEXt, zTXt, iTXt), as Pillow reads them."""
    from PIL import Image

    with Image.open(path) as image:
        image.load()
        return {key: str(value) for key, value in image.text.items()}  # type: ignore[attr-defined]


def test_every_png_records_what_made_it(workdir: Path) -> None:
    """Every output records what made it: the quicklook of --preview, an evaluation's figures and panels and
    its reliability diagram carry the provenance of the rasters beside them (model, weights and their SHA-256,
    precision, backend, version, ...) as PNG text, as the COG's tags do. They recorded nothing."""
    import hashlib

    import rasterio

    from dsen2cr.cli import main
    from dsen2cr.models.dsen2cr import ModelConfig
    from dsen2cr.weights import save_weights

    weights = save_weights(ModelConfig(1, 4, True, 0.1, "diag").build(), workdir / "d.safetensors")
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    s2, s1 = workdir.scene()
    argv = ["remove-clouds", "--weights", str(weights), "--s2", str(s2), "--s1", str(s1), "--no-progress"]
    assert main([*argv, "--out", str(workdir / "o.tif"), "--preview", str(workdir / "p.png")]) == 0
    with rasterio.open(workdir / "o.tif") as cog:
        expected = {key: value for key, value in cog.tags().items() if key.startswith("DSEN2CR_")}
    assert expected["DSEN2CR_WEIGHTS_SHA256"] == digest and len(expected) > 15
    text = _png_text(workdir / "p.png")
    assert {key: value for key, value in text.items() if key.startswith("DSEN2CR_")} == expected

    root, file_list = workdir.tree_with_two_test_patches()  # type: ignore[attr-defined]
    report = workdir / "eval"
    argv = ["evaluate", "--no-progress", "--weights", str(weights), "--data-root", str(root)]
    assert main([*argv, "--file-list", str(file_list), "--split", "test", "--out", str(report)]) == 0
    patch = sorted((report / "predictions").glob("*.tif"))[0]
    with rasterio.open(patch) as prediction:
        expected = {key: value for key, value in prediction.tags().items() if key.startswith("DSEN2CR_")}
    assert expected.pop("DSEN2CR_RADIOMETRY") and expected["DSEN2CR_WEIGHTS_SHA256"] == digest
    expected["DSEN2CR_MASK"] = "paper"  # the pictures show the cloud/shadow map
    figures = [report / "previews" / f"{patch.stem}.png", report / "previews" / patch.stem / "prediction.png"]
    for figure in [*figures, report / "calibration.png"]:
        text = _png_text(figure)
        assert {key: text.get(key) for key in expected} == expected, figure
    assert _png_text(figures[0])["DSEN2CR_PATCH"] == patch.stem
