"""``remove-clouds --resume``: a scene stopped on the way goes on from the windows it predicted (its journal, kept
beside the output) and ends with the pixels of an uninterrupted run; the journal is checked to be of the same scene,
inputs, weights and settings; a line cut short by a kill is dropped; without ``--resume`` a journal is refused,
``--overwrite`` starts again."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

from dsen2cr.auto import JOURNAL_AFTER_SECONDS, resolve_journal
from dsen2cr.cli import main
from dsen2cr.errors import DSen2CRError
from dsen2cr.models import create_model, get_variant
from dsen2cr.outputs import room
from dsen2cr.outputs.geotiff import write_geotiff
from dsen2cr.outputs.room import staged_bytes
from dsen2cr.predictor import Predictor, predictor_from_model
from dsen2cr.scene.remove import remove_clouds
from dsen2cr.settings import SceneJob, SceneSettings
from dsen2cr.weights import save_weights

#: 50 x 40 px in windows of 16 px overlapping by 4: 4 x 3 windows, one batch each on a CPU.
WINDOWS = ["--tile", "16", "--overlap", "4"]
JOURNAL = ".b.tif.journal"


def _scene(workdir: Path) -> tuple[Path, Path]:
    """The workdir's scene, written once (writing it again would change its files' modification times)."""
    s2, s1 = workdir / "s2.tif", workdir / "s1.tif"
    return (s2, s1) if s2.exists() else workdir.scene()  # type: ignore[attr-defined]


def _run(workdir: Path, out: str, *extra: str, weights: Path | None = None, s2: Path | None = None) -> int:
    scene, s1 = _scene(workdir)
    s2 = s2 or scene
    weights = weights or workdir.weights()  # type: ignore[attr-defined]
    argv = ["remove-clouds", "--weights", str(weights), "--s2", str(s2), "--s1", str(s1), "--out", str(workdir / out)]
    return main([*argv, "--mask-out", str(workdir / f"{out[0]}_mask.tif"), "--no-progress", *WINDOWS, *extra])


def _same_pixels(whole: Path, resumed: Path) -> tuple[dict[str, str], dict[str, str]]:
    """Check that ``resumed`` holds the pixels of ``whole``; both files' tags."""
    with rasterio.open(whole) as first, rasterio.open(resumed) as second:
        np.testing.assert_array_equal(first.read(), second.read())
        return first.tags(), second.tags()


def _count_batches(monkeypatch: pytest.MonkeyPatch, *, stop_at: int | None = None) -> list[int]:
    """Count the batches the network predicts; with ``stop_at``, Ctrl-C as that batch starts (1-based)."""
    calls: list[int] = []
    predict = Predictor.__call__

    def counted(self: Predictor, s2: np.ndarray, s1: np.ndarray | None) -> np.ndarray:
        calls.append(len(calls) + 1)
        if stop_at is not None and len(calls) == stop_at:
            raise KeyboardInterrupt
        return predict(self, s2, s1)

    monkeypatch.setattr(Predictor, "__call__", counted)
    return calls


def _stopped_after(workdir: Path, monkeypatch: pytest.MonkeyPatch, batches: int, *extra: str) -> None:
    """A run of b.tif with a journal, stopped by Ctrl-C after ``batches`` batches."""
    with monkeypatch.context() as patch:
        _count_batches(patch, stop_at=batches + 1)
        assert _run(workdir, "b.tif", "--journal", "on", *extra) == 130
    assert not (workdir / "b.tif").exists() and not (workdir / "b_mask.tif").exists()
    assert (workdir / JOURNAL).is_dir()


def test_a_stopped_scene_goes_on_from_the_windows_it_predicted(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """Stopped after 5 of its 12 windows: a warning says they are kept; --resume predicts the other 7 only and
    writes the image and map of an uninterrupted run, pixel for pixel, with the tags of what computed them and how
    many windows the stopped run predicted; the journal is then gone."""
    assert _run(workdir, "a.tif") == 0
    assert "keeping each predicted window" not in capsys.readouterr().out  # auto: a scene of seconds keeps none
    _stopped_after(workdir, monkeypatch, 5)
    printed, err = capsys.readouterr()
    assert f"b.tif: keeping each predicted window in {JOURNAL} (up to 104 kB, removed once" in printed
    assert f"the 5 of 12 windows predicted are kept in {workdir / JOURNAL}: run the command again with --resume" in err
    calls = _count_batches(monkeypatch)
    assert _run(workdir, "b.tif", "--resume") == 0
    assert len(calls) == 7
    assert "5 predicted by a stopped run)" in capsys.readouterr().out
    _same_pixels(workdir / "a_mask.tif", workdir / "b_mask.tif")
    tags, resumed_tags = _same_pixels(workdir / "a.tif", workdir / "b.tif")
    assert resumed_tags.pop("DSEN2CR_RESUMED_WINDOWS") == "5 of 12"
    assert resumed_tags == tags
    assert not (workdir / JOURNAL).exists()


def test_a_resumed_scene_records_the_check_of_its_first_predicted_batch(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The scene's first window holds no valid pixel (not run, as outside a swath), and bf16 is checked against IEEE
    fp32 on the first batch the network runs: the stopped run's journal records that check, not what the
    predictor said before it ran, and the resumed outputs carry it, as an uninterrupted run's do."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(1, 8000, size=(13, 40, 50)).astype(np.uint16)
    pixels[:, :16, :16] = 0  # the first window's core: no data
    workdir.scene(s2=pixels)  # type: ignore[attr-defined]
    assert _run(workdir, "a.tif", "--precision", "bf16") == 0
    _stopped_after(workdir, monkeypatch, 2, "--precision", "bf16")
    assert _run(workdir, "b.tif", "--precision", "bf16", "--resume") == 0
    tags, resumed_tags = _same_pixels(workdir / "a.tif", workdir / "b.tif")
    assert tags["DSEN2CR_CHECK_P99_DN"] != "not checked"
    assert resumed_tags.pop("DSEN2CR_RESUMED_WINDOWS") == "3 of 12"
    assert resumed_tags == tags


def test_a_stopped_run_that_was_replacing_an_output_goes_on_with_resume_and_overwrite(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """b.tif exists (an earlier run's), and a run replacing it (--overwrite) stopped after 4 windows: --resume alone
    is refused (the output exists), --overwrite alone would start again; both go on from the journal and replace
    b.tif with the pixels of an uninterrupted run."""
    assert _run(workdir, "a.tif") == 0
    assert _run(workdir, "b.tif", "--tile", "24") == 0  # the earlier output, made otherwise
    with monkeypatch.context() as patch:
        _count_batches(patch, stop_at=5)
        assert _run(workdir, "b.tif", "--journal", "on", "--overwrite") == 130
    assert (workdir / "b.tif").is_file() and (workdir / JOURNAL).is_dir()
    capsys.readouterr()
    assert _run(workdir, "b.tif", "--resume") == 2
    assert "b.tif: exists; pass --overwrite to replace it" in capsys.readouterr().err
    calls = _count_batches(monkeypatch)
    assert _run(workdir, "b.tif", "--resume", "--overwrite") == 0
    assert len(calls) == 8 and not (workdir / JOURNAL).exists()
    assert _same_pixels(workdir / "a.tif", workdir / "b.tif")[1]["DSEN2CR_RESUMED_WINDOWS"] == "4 of 12"


def test_a_journal_is_refused_without_resume_and_overwrite_starts_again(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """Without --resume the stopped run's journal is refused in one line naming what it holds (nothing written);
    --overwrite predicts every window again and removes it; --resume with none there starts."""
    _stopped_after(workdir, monkeypatch, 3)
    capsys.readouterr()
    assert _run(workdir, "b.tif") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"dsen2cr remove-clouds: error: {workdir / 'b.tif'}: a stopped run of this scene predicted 3 of its 12 "
        f"windows (kept in {JOURNAL}): --resume goes on from them, --overwrite starts the scene again"
    ]
    assert not (workdir / "b.tif").exists()
    calls = _count_batches(monkeypatch)
    assert _run(workdir, "b.tif", "--overwrite") == 0
    assert len(calls) == 12 and not (workdir / JOURNAL).exists()
    calls.clear()
    assert _run(workdir, "c.tif", "--resume", "--journal", "on") == 0
    assert len(calls) == 12 and not (workdir / ".c.tif.journal").exists()


def test_a_running_scenes_journal_is_not_taken_for_a_stopped_ones(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """While another run writes the scene (its lock held by a live process), its journal is that run's: a second
    run, with --resume or without, is refused by the lock, naming the process, and the journal is left alone."""
    _stopped_after(workdir, monkeypatch, 2)
    listing = sorted(entry.name for entry in (workdir / JOURNAL).iterdir())
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (workdir / ".b.tif.lock").write_text(f"{other.pid}\n")
        for extra in ([], ["--resume"]):
            capsys.readouterr()
            assert _run(workdir, "b.tif", *extra) == 2
            err = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("warning:")]
            assert len(err) == 1 and f"another dsen2cr run (process {other.pid}) is writing it" in err[0], err
    finally:
        other.kill()
        other.wait()
    assert sorted(entry.name for entry in (workdir / JOURNAL).iterdir()) == listing


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (["--tile", "24"], "predicted with tile 16, this run's is 24"),
        (["--s2-offset", "-1000"], "predicted with s2_offset None, this run's is -1000"),
        (["--weights"], "predicted with weights_sha256 "),
        (["touch"], "s2.tif changed (size or modification time) since the stopped run predicted windows from it"),
        (["another s2"], "predicted with s2 "),
    ],
)
def test_resume_refuses_a_journal_of_another_run(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, change: list[str], message: str
) -> None:
    """A journal predicted with another tile, offset, weights, or of an input changed since, is refused before
    any window is predicted, naming what differs; the journal stays."""
    _stopped_after(workdir, monkeypatch, 2)
    extra = change
    weights = None
    if change == ["--weights"]:
        torch.manual_seed(5)
        weights, extra = save_weights(create_model("dsen2cr-small"), workdir / "other.safetensors"), []
    elif change == ["another s2"]:
        other = workdir / "other.tif"
        shutil.copy2(_scene(workdir)[0], other)
        extra = []
    elif change == ["touch"]:
        s2, _ = _scene(workdir)
        os.utime(s2, ns=(os.stat(s2).st_atime_ns, os.stat(s2).st_mtime_ns + 10**9))
        extra = []
    capsys.readouterr()
    calls = _count_batches(monkeypatch)
    # the last "--tile" given wins with argparse: the change follows WINDOWS
    s2 = workdir / "other.tif" if change == ["another s2"] else None
    assert _run(workdir, "b.tif", "--resume", *extra, weights=weights, s2=s2) == 2
    err = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("warning:")]
    assert len(err) == 1 and message in err[0] and "--overwrite" in err[0], err
    assert calls == [] and (workdir / JOURNAL).is_dir() and not (workdir / "b.tif").exists()


def test_a_scene_goes_on_only_as_its_windows_were_computed(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """A stopped scene's windows were computed in one arithmetic; a run that would go on in another is refused at
    its first batch, naming both, and the journal stays: another precision, or another device, where one name
    computes otherwise (bf16's residual stream is 16-bit on a GPU, fp32 on a CPU; TF32 is IEEE on a CPU). The
    outputs record the device (DSEN2CR_DEVICE); a journal of a version that recorded none goes on."""
    _stopped_after(workdir, monkeypatch, 2)
    provenance = workdir / JOURNAL / "provenance.json"
    recorded = json.loads(provenance.read_text())
    assert recorded["DSEN2CR_DEVICE"] == "cpu"
    capsys.readouterr()
    assert _run(workdir, "b.tif", "--resume", "--precision", "bf16") == 2
    assert "fp32, this run's is bf16; give its settings" in capsys.readouterr().err  # the settings say it first
    provenance.write_text(json.dumps({**recorded, "DSEN2CR_DEVICE": "NVIDIA H200"}))  # as a GPU's run records it
    assert _run(workdir, "b.tif", "--resume") == 2
    said = "computed in fp32, eager, NVIDIA H200, IEEE fp32 (precision, backend, device, arithmetic), this run's in "
    assert said + "fp32, eager, cpu, IEEE fp32" in capsys.readouterr().err
    assert (workdir / JOURNAL).is_dir() and not (workdir / "b.tif").exists()
    provenance.write_text(json.dumps({k: v for k, v in recorded.items() if k != "DSEN2CR_DEVICE"}))
    assert _run(workdir, "b.tif", "--resume") == 0
    with rasterio.open(workdir / "b.tif") as dataset:
        assert dataset.tags()["DSEN2CR_DEVICE"] == "cpu"


def test_a_scene_goes_on_only_in_the_arithmetic_its_windows_were_computed_in(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """One precision, backend and device compute otherwise from one form to another (CPU bf16 under autocast, then
    the fused form with its residual stream in fp32; both said ``bf16, bf16, cpu``, and the version string does not
    change between commits): a journal whose windows another form computed is refused, naming both; one of a
    version that recorded no arithmetic goes on, its outputs saying that the stopped run's is not known."""
    _stopped_after(workdir, monkeypatch, 2, "--precision", "bf16")
    provenance = workdir / JOURNAL / "provenance.json"
    recorded = json.loads(provenance.read_text())
    assert recorded["DSEN2CR_ARITHMETIC"].endswith("IEEE fp32 residual stream, head and tail")
    provenance.write_text(json.dumps({**recorded, "DSEN2CR_ARITHMETIC": "bf16 autocast"}))  # an earlier form's
    capsys.readouterr()
    assert _run(workdir, "b.tif", "--resume", "--precision", "bf16") == 2
    err = capsys.readouterr().err
    assert "computed in bf16, bf16, cpu, bf16 autocast (precision, backend, device, arithmetic)" in err, err
    assert f"this run's in bf16, bf16, cpu, {recorded['DSEN2CR_ARITHMETIC']}" in err
    assert "this version or machine computes that precision otherwise: --overwrite to start the scene again" in err
    assert (workdir / JOURNAL).is_dir() and not (workdir / "b.tif").exists()
    provenance.write_text(json.dumps({k: v for k, v in recorded.items() if k != "DSEN2CR_ARITHMETIC"}))
    assert _run(workdir, "b.tif", "--resume", "--precision", "bf16") == 0
    with rasterio.open(workdir / "b.tif") as dataset:  # this run's windows' arithmetic, not claimed for the others
        said = f"{recorded['DSEN2CR_ARITHMETIC']} (the 2 windows of the stopped run: not recorded)"
        assert dataset.tags()["DSEN2CR_ARITHMETIC"] == said


def test_a_batch_cut_short_by_a_kill_is_predicted_again(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """A kill while a batch was recorded leaves its predictions or its line cut short: the batch is predicted
    again, and the image equals an uninterrupted run's."""
    assert _run(workdir, "a.tif") == 0
    _stopped_after(workdir, monkeypatch, 4)
    journal = workdir / JOURNAL
    lines = (journal / "windows.jsonl").read_text().splitlines()
    assert [json.loads(line)["batch"] for line in lines[1:]] == [0, 1, 2, 3]
    (journal / "windows.jsonl").write_text("\n".join(lines) + "\n" + lines[-1][:20])  # a fifth line cut short
    with open(journal / "predictions.f32", "rb+") as data:  # the fourth batch's predictions cut short
        data.truncate(data.seek(0, os.SEEK_END) - 8)
    calls = _count_batches(monkeypatch)
    assert _run(workdir, "b.tif", "--resume") == 0
    assert len(calls) == 9
    assert _same_pixels(workdir / "a.tif", workdir / "b.tif")[1]["DSEN2CR_RESUMED_WINDOWS"] == "3 of 12"


def test_a_stopped_batch_of_scenes_goes_on_with_skip_existing_and_resume(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """A manifest of two scenes stopped in the second: the first is written (its journal gone), the second's
    journal kept; --skip-existing --resume skips the first and goes on with the second, whose image equals the
    first's (one scene, one model)."""
    s2, s1 = _scene(workdir)
    manifest = workdir / "m.csv"
    manifest.write_text(f"s2,s1,out\n{s2},{s1},a.tif\n{s2},{s1},b.tif\n")
    argv = ["remove-clouds", "--weights", str(workdir.weights()), "--manifest", str(manifest), "--no-progress"]  # type: ignore[attr-defined]
    argv += [*WINDOWS, "--journal", "on"]
    with monkeypatch.context() as patch:
        _count_batches(patch, stop_at=12 + 3)
        assert main(argv) == 130
    assert (workdir / "a.tif").is_file() and not (workdir / ".a.tif.journal").exists()
    assert not (workdir / "b.tif").exists() and (workdir / JOURNAL).is_dir()
    calls = _count_batches(monkeypatch)
    capsys.readouterr()
    assert main([*argv, "--skip-existing", "--resume"]) == 0
    assert len(calls) == 10
    printed = capsys.readouterr().out
    assert "skipped" in printed and "2 predicted by a stopped run)" in printed
    _same_pixels(workdir / "a.tif", workdir / "b.tif")
    assert not (workdir / JOURNAL).exists()


def test_a_scene_killed_with_sigkill_goes_on_from_its_journal(workdir: Path, private_tmp_env: dict[str, str]) -> None:
    """SIGKILL (no handler runs) after a few of 81 windows: --resume removes what the killed process was writing,
    goes on from the journal and writes the image of an uninterrupted run; nothing else is left in the folder."""
    rng = np.random.default_rng(3)
    transform = rasterio.transform.from_origin(500000, 5000000, 10, 10)
    pixels = rng.integers(1, 8000, (13, 512, 512)).astype(np.uint16)
    s2 = write_geotiff(workdir / "big.tif", pixels, crs=rasterio.crs.CRS.from_epsg(32632), transform=transform)
    weights = workdir.weights("dsen2cr-small-nosar")  # type: ignore[attr-defined]
    out = workdir / "out"
    out.mkdir()
    command = ["remove-clouds", "--weights", str(weights), "--s2", str(s2), "--tile", "64", "--overlap", "4"]
    command += ["--journal", "on", "--no-progress"]
    assert main([*command, "--out", str(workdir / "whole.tif")]) == 0
    lines = out / ".b.tif.journal" / "windows.jsonl"
    process = subprocess.Popen(
        [sys.executable, "-m", "dsen2cr.cli", *command, "--out", str(out / "b.tif")],
        env=private_tmp_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline:
        if lines.exists() and lines.read_text().count("\n") >= 5:  # the header and four batches
            break
        time.sleep(0.01)
    assert process.poll() is None, "the run ended before it could be killed"
    process.kill()
    process.wait()
    assert main([*command, "--out", str(out / "b.tif"), "--resume"]) == 0
    done, of = _same_pixels(workdir / "whole.tif", out / "b.tif")[1]["DSEN2CR_RESUMED_WINDOWS"].split(" of ")
    assert int(done) >= 4 and of == "81"
    assert sorted(entry.name for entry in out.iterdir()) == ["b.tif"]


def test_the_room_check_counts_the_journal(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """A folder with room for the staged image and map (each level in whole blocks) but not for the journal's
    50 x 40 px x 13 bands x 4 bytes beside them: refused with --journal on, before any window; run with it off."""
    staged = staged_bytes(40, 50, 13, "uint16") + staged_bytes(40, 50, 1, "uint8")
    usage = shutil.disk_usage(workdir)
    monkeypatch.setattr(room.shutil, "disk_usage", lambda _: usage._replace(free=staged + 50 * 40 * 13 * 4 - 1))
    calls = _count_batches(monkeypatch)
    assert _run(workdir, "b.tif", "--journal", "on") == 2
    assert "free, and this scene's outputs stage" in capsys.readouterr().err
    assert calls == [] and not (workdir / JOURNAL).exists()
    assert _run(workdir, "b.tif", "--journal", "off") == 0


def _slurm_job(monkeypatch: pytest.MonkeyPatch) -> None:
    """The variables of a SLURM batch job."""
    for name, value in {"SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "tiles", "SLURM_NTASKS": "1"}.items():
        monkeypatch.setenv(name, value)


def _warned_at(monkeypatch: pytest.MonkeyPatch, batch: int) -> list[int]:
    """SLURM's time-limit warning (SIGUSR1 to this process) while the network predicts batch ``batch``."""
    calls: list[int] = []
    predict = Predictor.__call__

    def warned(self: Predictor, s2: np.ndarray, s1: np.ndarray | None) -> np.ndarray:
        calls.append(len(calls) + 1)
        if len(calls) == batch:
            os.kill(os.getpid(), signal.SIGUSR1)
        return predict(self, s2, s1)

    monkeypatch.setattr(Predictor, "__call__", warned)
    return calls


def test_slurms_time_limit_warning_stops_the_scene_and_requeues_the_job(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, stand_in_scontrol: Path
) -> None:
    """#SBATCH --signal=SIGUSR1@90 with --resume: the warning during batch 4 stops the scene once that batch is
    recorded, the job is requeued (scontrol requeue 4242), the exit status is SIGUSR1's; the requeued command goes on
    from the 4 windows to the image of an uninterrupted run. Without --resume the warning is said and the run goes
    on to the end, not requeued."""
    assert _run(workdir, "a.tif") == 0
    before = signal.getsignal(signal.SIGUSR1)
    _slurm_job(monkeypatch)
    record = stand_in_scontrol
    with monkeypatch.context() as patch:
        _warned_at(patch, 4)
        assert _run(workdir, "b.tif", "--journal", "on", "--resume") == 128 + signal.SIGUSR1
    assert record.read_text() == "requeue 4242\n"
    err = capsys.readouterr().err
    assert "the 4 of 12 windows predicted are kept" in err and "requeued job 4242, whose --resume goes on" in err
    assert not (workdir / "b.tif").exists()
    calls = _count_batches(monkeypatch)
    assert _run(workdir, "b.tif", "--journal", "on", "--resume") == 0
    assert len(calls) == 8
    _same_pixels(workdir / "a.tif", workdir / "b.tif")
    with monkeypatch.context() as patch:
        _warned_at(patch, 2)
        assert _run(workdir, "c.tif", "--journal", "on") == 0
    assert "without --resume nothing would go on from this scene's windows" in capsys.readouterr().err
    assert record.read_text() == "requeue 4242\n" and (workdir / "c.tif").is_file()
    assert signal.getsignal(signal.SIGUSR1) is before  # given back


def test_a_model_in_memory_keeps_no_journal(workdir: Path) -> None:
    """Without a weights file's SHA-256 nothing could tell a later run what predicted the windows: refused with
    journal "on" before any output is written, none kept under "off" (and auto)."""
    s2, s1 = _scene(workdir)
    predictor = predictor_from_model(create_model("dsen2cr-small"), device="cpu")
    job = SceneJob(str(s2), str(s1), workdir / "b.tif")
    with pytest.raises(DSen2CRError, match=r"b\.tif: --journal on: needs weights read from a file"):
        remove_clouds(predictor, job, SceneSettings(journal="on", progress=False))
    assert sorted(entry.name for entry in workdir.iterdir()) == ["s1.tif", "s2.tif"]
    remove_clouds(predictor, job, SceneSettings(journal="off", progress=False))
    assert sorted(entry.name for entry in workdir.iterdir()) == ["b.tif", "s1.tif", "s2.tif"]


def test_journal_auto_is_on_for_long_cpu_scenes_only() -> None:
    """auto: on a CPU where the network's estimated time passes JOURNAL_AFTER_SECONDS (a full tile with the paper's
    model: hours), never on a GPU; on and off as named."""
    paper = get_variant("dsen2cr").config
    tile = 10980.0 * 10980.0
    seconds_per_pixel = 2 * paper.build_parameter_count() / 1.5e11  # auto's rough eager CPU rate
    just_over = JOURNAL_AFTER_SECONDS / seconds_per_pixel * 1.01
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_journal("auto", paper, cpu, tile) and resolve_journal("auto", paper, cpu, just_over)
    assert not resolve_journal("auto", paper, cpu, just_over / 1.02)
    assert not resolve_journal("auto", paper, cuda, tile)
    assert resolve_journal("on", paper, cuda, 1.0) and not resolve_journal("off", paper, cpu, tile)
