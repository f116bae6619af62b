"""``evaluate --resume``: an evaluation stopped on the way (an interrupt in process, SIGKILL in a process of its
own) goes on from the patches it scored and ends with the report of an uninterrupted run, byte for byte."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dsen2cr.cli import main
from dsen2cr.models.dsen2cr import DSen2CR
from dsen2cr.weights import save_weights

#: The report's files that must equal an uninterrupted run's (the σ model's calibration included).
REPORT = (
    "metrics_per_image.csv",
    "metrics_per_roi.csv",
    "summary.md",
    "summary.csv",
    "summary.json",
    "calibration.json",
)


@pytest.fixture(scope="module")
def sigma_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small model that predicts its variance: its calibration sample depends on the sampler's state; its sigma
    calibration states intervals, which each image's row counts (so a resumed report has them too)."""
    import torch

    from dsen2cr.weights import SIGMA_SCALE_KEY

    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = DSen2CR(num_blocks=2, num_features=8, include_sar=True, uncertainty="diag")
    intervals = {"0.683": [1.0] * 13, "0.9": [1.645] * 13}
    record = {SIGMA_SCALE_KEY: json.dumps({"scale": [1.0] * 13, "data": "elsewhere", "intervals": intervals})}
    return save_weights(model, tmp_path_factory.mktemp("sigma") / "sigma.safetensors", provenance=record)


def _argv(weights: Path, root: Path, out: Path, *extra: str) -> list[str]:
    """``evaluate`` of the synthetic tree's training split (6 patches), one patch a batch."""
    return [
        "evaluate", "--no-progress", "--weights", str(weights), "--data-root", str(root),
        "--file-list", str(root / "files.csv"), "--split", "train", "--batch-size", "1", "--out", str(out), *extra,
    ]  # fmt: skip


def _same_report(a: Path, b: Path) -> None:
    for name in REPORT:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    names = [sorted(p.name for p in (report / "predictions").iterdir()) for report in (a, b)]
    assert names[0] == names[1]
    assert not (b / "progress").exists()


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory, synthetic_tree: Path, sigma_weights: Path) -> Path:
    """The uninterrupted evaluation."""
    out = tmp_path_factory.mktemp("straight") / "eval"
    assert main(_argv(sigma_weights, synthetic_tree, out)) == 0
    assert list(json.loads((out / "calibration.json").read_text())["stated_intervals"]) == ["0.683", "0.9"]
    return out


def _stopped_after_two_patches(monkeypatch: pytest.MonkeyPatch, weights: Path, root: Path, out: Path) -> None:
    """An evaluation stopped by Ctrl-C as its third patch is handed to the scorer, the second still being scored."""
    from dsen2cr.evaluation_scoring import Scorer

    submit, calls = Scorer.submit, []

    def interrupted(self: Scorer, *args: object, **kwargs: object) -> None:
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        submit(self, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(Scorer, "submit", interrupted)
        assert main(_argv(weights, root, out)) == 130


def test_an_interrupted_evaluation_resumes_to_the_uninterrupted_report(
    tmp_path: Path,
    synthetic_tree: Path,
    sigma_weights: Path,
    straight: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    from dsen2cr.evaluation_scoring import Scorer

    out = tmp_path / "eval"
    _stopped_after_two_patches(monkeypatch, sigma_weights, synthetic_tree, out)
    err = capsys.readouterr().err
    assert "the 2 of 6 patches scored are kept: run the command again with --resume" in err, err
    assert sorted(p.name for p in out.iterdir()) == ["predictions", "previews", "progress"]
    assert len((out / "progress" / "batches.jsonl").read_text().splitlines()) == 3  # its header and two batches

    assert main(_argv(sigma_weights, synthetic_tree, out)) == 2  # without --resume: refused, nothing lost
    assert "holds a stopped evaluation (2 of 6 patches scored); pass --resume" in capsys.readouterr().err
    submit, calls = Scorer.submit, []
    monkeypatch.setattr(Scorer, "submit", lambda *a, **k: (calls.append(1), submit(*a, **k)))
    assert main(_argv(sigma_weights, synthetic_tree, out, "--resume")) == 0
    assert len(calls) == 4  # only the patches not scored before
    _same_report(straight, out)


def test_an_evaluation_goes_on_only_in_the_arithmetic_its_patches_were_computed_in(
    tmp_path: Path,
    synthetic_tree: Path,
    sigma_weights: Path,
    straight: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    """The progress records what computed each batch (DSEN2CR_ARITHMETIC); a resumed run that computes otherwise (a
    requeued job's node whose CPU computes bf16 otherwise, another version's form) is refused at its first batch,
    naming both, and the progress stays; one of a version that recorded none goes on."""
    out = tmp_path / "eval"
    _stopped_after_two_patches(monkeypatch, sigma_weights, synthetic_tree, out)
    lines_path = out / "progress" / "batches.jsonl"
    header, *lines = [json.loads(line) for line in lines_path.read_text().splitlines()]
    assert [line["arithmetic"] for line in lines] == ["IEEE fp32"] * 2
    other = "bf16 convolutions emulated in fp32, IEEE fp32 residual stream, head and tail"
    lines_path.write_text(
        "".join(json.dumps(line) + "\n" for line in [header, *[{**x, "arithmetic": other} for x in lines]])
    )
    capsys.readouterr()
    assert main(_argv(sigma_weights, synthetic_tree, out, "--resume")) == 2
    err = capsys.readouterr().err
    assert f"the stopped evaluation's patches were computed in {other}, this run's in IEEE fp32" in err, err
    assert "--overwrite to start again" in err and len(lines_path.read_text().splitlines()) == 3
    older = [{key: value for key, value in line.items() if key != "arithmetic"} for line in lines]
    lines_path.write_text("".join(json.dumps(line) + "\n" for line in [header, *older]))
    assert "arithmetic" not in lines_path.read_text()
    assert main(_argv(sigma_weights, synthetic_tree, out, "--resume")) == 0
    _same_report(straight, out)


@pytest.mark.parametrize("threads", [1, 3])
def test_a_patch_whose_scoring_fails_keeps_the_batches_before_it(
    tmp_path: Path,
    synthetic_tree: Path,
    sigma_weights: Path,
    straight: Path,
    monkeypatch: pytest.MonkeyPatch,
    threads: int,
) -> None:
    """The third patch's scoring fails on a scorer thread (the fourth may be scored beside it): the first two are
    kept, nothing after the failed one (a run that goes on from them draws the calibration's sample as one that
    never stopped did), and the resumed report is the uninterrupted one."""
    from dsen2cr.errors import DSen2CRError
    from dsen2cr.evaluation_scoring import Scorer

    with open(straight / "metrics_per_image.csv") as report:
        third = [line.split(",")[0] for line in report.read().splitlines()[1:]][::2][2]  # the model's rows
    score_patch = Scorer._score_patch

    def failing(self: Scorer, batch: dict, i: int, *args: object) -> object:
        if batch["patch_id"][i] == third:
            raise DSen2CRError(f"{third}: cannot be scored")
        return score_patch(self, batch, i, *args)

    out = tmp_path / "eval"
    monkeypatch.setattr(Scorer, "_score_patch", failing)
    assert main([*_argv(sigma_weights, synthetic_tree, out), "--score-threads", str(threads)]) == 2
    assert len((out / "progress" / "batches.jsonl").read_text().splitlines()) == 3  # its header and two batches
    monkeypatch.setattr(Scorer, "_score_patch", score_patch)
    assert main([*_argv(sigma_weights, synthetic_tree, out, "--resume"), "--score-threads", str(threads)]) == 0
    _same_report(straight, out)


def test_a_sigkilled_evaluation_resumes_to_the_uninterrupted_report(
    tmp_path: Path, synthetic_tree: Path, sigma_weights: Path, straight: Path
) -> None:
    """Killed once two batches are recorded; a line cut short and samples written for it (as a kill in the
    middle of a batch's record leaves them) are dropped."""
    out = tmp_path / "eval"
    command = [sys.executable, "-m", "dsen2cr.cli", *_argv(sigma_weights, synthetic_tree, out)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lines = out / "progress" / "batches.jsonl"
    deadline = time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline:
        if lines.exists() and len(lines.read_text().splitlines()) >= 3:
            break
        time.sleep(0.01)
    assert process.poll() is None, "the evaluation ended before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    recorded = lines.read_text()
    with lines.open("a") as file:
        file.write(recorded.splitlines()[-1][:40])  # a line cut short
    with (out / "progress" / "samples.f64").open("ab") as file:
        file.write(b"\0" * 1000)

    assert main(_argv(sigma_weights, synthetic_tree, out, "--resume")) == 0
    _same_report(straight, out)
    left = [p for p in (out / "predictions").iterdir() if p.name.startswith(".")]  # the kill's temporaries
    assert not left + [p for p in (out / "previews").rglob(".*") if p.is_file()]


def test_resume_in_an_empty_folder_starts_the_evaluation(
    tmp_path: Path, synthetic_tree: Path, sigma_weights: Path, straight: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """One command line for a job that may be stopped and run again: the first run starts."""
    out = tmp_path / "eval"
    assert main(_argv(sigma_weights, synthetic_tree, out, "--resume")) == 0
    _same_report(straight, out)
    assert "going on from" not in caplog.text


def test_the_progress_records_what_it_evaluates(tmp_path: Path, synthetic_tree: Path, sigma_weights: Path) -> None:
    """Its first line: the patches, the settings and what computes the predictions (the weights' SHA-256)."""
    from dsen2cr.evaluation_progress import EvaluationProgress, evaluation_identity
    from dsen2cr.outputs.files import file_sha256

    tags = {"DSEN2CR_WEIGHTS_SHA256": file_sha256(sigma_weights) or "", "DSEN2CR_PRECISION": "fp32", "OTHER": "x"}
    identity = evaluation_identity(["a", "b"], {"protocol": "default"}, tags)
    progress = EvaluationProgress.start(tmp_path, identity)
    progress.add([{"patch_id": "a", "mae": float("nan")}], [], {"state": 1}, "IEEE fp32")
    header = json.loads((tmp_path / "progress" / "batches.jsonl").read_text().splitlines()[0])
    assert header["identity"]["patches"] == 2 and header["identity"]["protocol"] == "default"
    assert header["identity"]["tags"] == {k: tags[k] for k in ("DSEN2CR_WEIGHTS_SHA256", "DSEN2CR_PRECISION")}
    _, scored = EvaluationProgress.resume(tmp_path, identity)
    assert scored.patch_ids == {"a"} and scored.sampler == {"state": 1}
    assert str(scored.rows[0]["mae"]) == "nan"


def test_the_pooled_calibration_sample_is_bounded(
    tmp_path: Path, synthetic_tree: Path, sigma_weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """20,000 values a patch, and 2 million in all: fewer a patch where there are many (the test split's thousands
    of patches kept 160 M values, whose calibration took some 20 GB at the end of an evaluation of hours).
    Here the bound is lowered to 1000 values for the 6 patches: 166 each."""
    import json

    from dsen2cr import evaluate

    monkeypatch.setattr(evaluate, "POOLED_CALIBRATION_VALUES", 1000)
    out = tmp_path / "eval"
    assert main(_argv(sigma_weights, synthetic_tree, out, "--no-images")) == 0
    assert json.loads((out / "calibration.json").read_text())["values"] == 6 * 166


def test_a_batch_that_cannot_be_recorded_is_one_line_naming_the_progress(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A disk that fills while a batch is recorded: the error names the progress file and the OS's reason (a bare
    "[Errno 28] No space left on device" named nothing); what was recorded before stays."""
    import builtins
    import errno

    from dsen2cr.errors import DSen2CRError
    from dsen2cr.evaluation_progress import EvaluationProgress, evaluation_identity

    progress = EvaluationProgress.start(tmp_path, evaluation_identity(["a"], {}, {}))
    real_open = builtins.open

    def full(path: object, mode: str = "r", *args: object, **kwargs: object) -> object:
        if "a" in mode:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", full)
    with pytest.raises(DSen2CRError, match=r"samples.f64: cannot record a scored batch \(No space left on device\)"):
        progress.add([{"patch_id": "a"}], [], {}, "IEEE fp32")


def test_patches_scored_on_threads_give_one_threads_report(
    tmp_path: Path, synthetic_tree: Path, sigma_weights: Path
) -> None:
    """Scored on 4 threads (two batches at once) with the patches read by worker processes, or all on the main
    thread: the same report byte for byte (the calibration's sample drawn in the patches' order), the same
    predictions and previews."""
    reports = []
    for threads, workers in ((1, 0), (4, 2)):  # and the patches read by 2 worker processes (--num-workers)
        out = tmp_path / f"threads{threads}"
        argv = [*_argv(sigma_weights, synthetic_tree, out), "--score-threads", str(threads)]
        assert main([*argv, "--num-workers", str(workers)]) == 0
        reports.append(out)
    _same_report(*reports)
    for folder in ("predictions", "previews"):
        files = [sorted(p for p in (report / folder).rglob("*") if p.is_file()) for report in reports]
        assert [p.relative_to(reports[0]) for p in files[0]] == [p.relative_to(reports[1]) for p in files[1]]
        assert files[0]
        for a, b in zip(*files, strict=True):
            assert a.read_bytes() == b.read_bytes(), a.name


@pytest.mark.parametrize("threads", [1, 3])
def test_a_batch_whose_record_fails_keeps_the_batches_before_it(
    tmp_path: Path,
    synthetic_tree: Path,
    sigma_weights: Path,
    straight: Path,
    monkeypatch: pytest.MonkeyPatch,
    threads: int,
) -> None:
    """Recording the third batch fails (its progress line cannot be written: a full disk) while the fourth is
    already scored beside it: the first two stay recorded and nothing after the failed one (it is not recorded
    after the fact, out of order), and the resumed report is the uninterrupted one."""
    from dsen2cr.evaluation_progress import EvaluationProgress as Progress

    add, calls = Progress.add, []

    def failing(self: Progress, *args: object) -> None:
        calls.append(1)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        add(self, *args)

    out = tmp_path / "eval"
    monkeypatch.setattr(Progress, "add", failing)
    assert main([*_argv(sigma_weights, synthetic_tree, out), "--score-threads", str(threads)]) != 0
    assert len(calls) == 3  # no batch recorded after the one that failed
    assert len((out / "progress" / "batches.jsonl").read_text().splitlines()) == 3  # its header and two batches
    monkeypatch.setattr(Progress, "add", add)
    assert main([*_argv(sigma_weights, synthetic_tree, out, "--resume"), "--score-threads", str(threads)]) == 0
    _same_report(straight, out)


def test_large_patches_are_scored_within_half_the_memory_left(
    tmp_path: Path, synthetic_tree: Path, sigma_weights: Path, straight: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Scoring a patch holds some 2.5 KB a pixel (2.6 GB for a 1024 px patch): threads score at once only what
    half the memory left at the start holds. With room for one of the tree's 96 px patches and a half, 4 threads
    score one patch at a time; the report is the same."""
    import threading

    from dsen2cr import evaluation_scoring
    from dsen2cr.evaluation_scoring import SCORING_BYTES_PER_PIXEL, MemoryBudget, Scorer

    one_patch = SCORING_BYTES_PER_PIXEL * 96 * 96
    monkeypatch.setattr(evaluation_scoring, "available_memory_bytes", lambda: 3 * one_patch)
    score, lock, running, most = Scorer._score, threading.Lock(), [0], [0]

    def counted(self: Scorer, *args: object) -> object:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        try:
            return score(self, *args)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(Scorer, "_score", counted)
    out = tmp_path / "eval"
    assert main([*_argv(sigma_weights, synthetic_tree, out), "--score-threads", "4"]) == 0
    assert most == [1]
    _same_report(straight, out)
    # the budget itself: two holders that do not fit together wait for each other; one alone runs however large
    budget, order = MemoryBudget(100), []

    def hold(name: str, amount: int, seconds: float) -> None:
        with budget.hold(amount):
            order.append(f"{name} in")
            time.sleep(seconds)
            order.append(f"{name} out")

    first = threading.Thread(target=hold, args=("a", 60, 0.2))
    first.start()
    time.sleep(0.05)
    hold("b", 60, 0)  # waits for a
    first.join()
    hold("c", 500, 0)  # beyond the budget, alone
    assert order == ["a in", "a out", "b in", "b out", "c in", "c out"]
