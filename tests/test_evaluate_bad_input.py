"""Bad input to evaluate, table-driven through the console entry point (the ``check_case`` fixture):
each row is an unusual but plausible input; the command exits with the expected status and one line on
stderr naming the file or option and the problem, no traceback, inputs unchanged, nothing left behind."""

from __future__ import annotations

import shutil
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from rasterio.crs import CRS
from rasterio.transform import from_origin

from dsen2cr import create_model
from dsen2cr.cli import main
from dsen2cr.weights import save_weights

UTM32N = CRS.from_epsg(32632)


def _evaluate(tmp: Path, weights: Path, *, file_list: Path | None = None, extra: tuple[str, ...] = ()) -> list[str]:
    """``evaluate`` argv over the small tree, reporting into tmp/eval."""
    root = tmp.tree()
    return [
        "evaluate",
        "--no-progress",
        "--weights",
        str(weights),
        "--data-root",
        str(root),
        "--file-list",
        str(file_list or root / "files.csv"),
        *extra,
        "--out",
        str(tmp / "eval"),
    ]


def _first_line_only(tmp: Path) -> Path:
    """A file list holding only the small tree's first (training) line."""
    return _write(tmp / "one.csv", (tmp.tree() / "files.csv").read_text().splitlines()[0])


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


ORIGIN = from_origin(500000, 5000000, 10, 10)


def _nan_weights(tmp: Path, variant: str = "dsen2cr-small-nosar") -> Path:
    model = create_model(variant)
    with torch.no_grad():
        model.blocks[0].conv1.weight[0, 0, 0, 0] = float("nan")
    return save_weights(model, tmp / "nan.safetensors")


def _evaluate_args(tmp: Path, root: Path, file_list: Path, weights: Path | None = None, *extra: str) -> list[str]:
    weights = weights or tmp.weights()
    return [
        "evaluate",
        "--no-progress",
        "--weights",
        str(weights),
        "--data-root",
        str(root),
        "--file-list",
        str(file_list),
        "--split",
        "test",
        "--out",
        str(tmp / "eval"),
        *extra,
    ]


def _with(tmp: Path, mutate: Callable[[Path], None]) -> tuple[Path, Path]:
    """The tree with two test patches, changed by ``mutate(root)``."""
    root, file_list = tmp.tree_with_two_test_patches()
    mutate(root)
    return root, file_list


def _missing_second_patch(root: Path) -> None:
    (root / "ROIs1158_spring_s1" / "s1_4" / "ROIs1158_spring_s1_4_p0.tif").unlink()


def _evaluate_into_root(tmp: Path) -> list[str]:
    args = _evaluate_args(tmp, tmp.tree(), tmp.tree() / "files.csv")
    return [*args[: args.index("--out")], "--out", str(tmp / "data"), "--overwrite"]


def _run_folder(tmp: Path) -> Path:
    """A training run's folder (``dsen2cr train --out run``): checkpoints/, logs/, config.yaml."""
    (tmp / "run" / "checkpoints").mkdir(parents=True)
    (tmp / "run" / "checkpoints" / "last.ckpt").write_bytes(b"a checkpoint")
    (tmp / "run" / "config.yaml").write_text("model: {}\n")
    return tmp / "run"


def _stopped(tmp: Path, *, delete: str | None = None, garbage: bool = False) -> list[str]:
    """An evaluation of two test patches stopped by the second (NaN): the first scored and kept for --resume
    (``delete``: then a file of its report removed; ``garbage``: its progress overwritten). Returns its argv,
    the second patch mended."""
    root, file_list = tmp.tree_with_two_test_patches(nan_cloudy=True)
    argv = _evaluate_args(tmp, root, file_list, None, "--batch-size", "1")
    assert main(argv) == 2 and (tmp / "eval" / "progress").is_dir()
    cloudy = root / "ROIs1158_spring_s2_cloudy" / "s2_cloudy_4" / "ROIs1158_spring_s2_cloudy_4_p0.tif"
    shutil.copyfile(root / "ROIs1158_spring_s2" / "s2_4" / "ROIs1158_spring_s2_4_p0.tif", cloudy)
    if delete is not None:
        (tmp / "eval" / delete).unlink()
    if garbage:
        (tmp / "eval" / "progress" / "batches.jsonl").write_text("not json\n")
    return argv


def _complete(tmp: Path) -> list[str]:
    """A complete evaluation's argv (its report in tmp/eval)."""
    argv = _evaluate_args(tmp, tmp.tree(), tmp.tree() / "files.csv")
    assert main(argv) == 0
    return argv


def _with_weights(argv: list[str], weights: Path, *extra: str) -> list[str]:
    """``argv`` with other weights."""
    at = argv.index("--weights") + 1
    return [*argv[:at], str(weights), *argv[at + 1 :], *extra]


#: The table: each row is run by ``test_bad_input`` through the ``check_case`` fixture.
def _evaluate_ensemble(tmp: Path, *weights: Path) -> list[str]:
    """``evaluate`` argv of an ensemble over the small tree."""
    argv = _evaluate(tmp, weights[0])
    at = argv.index("--weights") + 2
    return [*argv[:at], *(str(path) for path in weights[1:]), *argv[at:]]


CASES = [
    dict(
        name="evaluate: --num-workers -1",
        setup=lambda t: _evaluate(t, t.weights(), extra=("--num-workers=-1",)),
        message="--num-workers: must be 0 or more, got -1",
        absent=("eval",),
    ),
    dict(
        name="evaluate: --score-threads 0",
        setup=lambda t: _evaluate(t, t.weights(), extra=("--score-threads", "0")),
        message="--score-threads: must be at least 1, got 0",
        absent=("eval",),
    ),
    dict(
        name="evaluate: --cloud-threshold -1 (every pixel cloud)",
        setup=lambda t: _evaluate(t, t.weights(), extra=("--cloud-threshold=-1",)),
        message="--cloud-threshold: expected a cloud score in [0, 1] (the paper's 0.2), got '-1'",
        absent=("eval",),
    ),
    dict(
        name="evaluate: one weights file twice in an ensemble (its sigma would be 0)",
        setup=lambda t: _evaluate_ensemble(t, t.weights(), t.weights()),
        message="dsen2cr-small.safetensors: the same network as ",
        absent=("eval",),
    ),
    dict(
        name="evaluate: a data root that does not exist",
        setup=lambda t: [*_evaluate(t, t.weights())[:5], str(t / "elsewhere"), *_evaluate(t, t.weights())[6:]],
        message="elsewhere is not a folder (the dataset root the file list and ROI lists refer to)",
        absent=("eval",),
    ),
    dict(
        name="evaluate: missing weights",
        setup=lambda t: _evaluate(t, t / "w.safetensors"),
        message="w.safetensors: weights file not found",
        absent=("eval",),
    ),
    dict(
        name="evaluate: weights is a folder",
        setup=lambda t: _evaluate(t, t),
        message="is a directory, expected a weights file",
        absent=("eval",),
    ),
    dict(
        name="evaluate: weights is a training run's folder",
        setup=lambda t: _evaluate(t, _run_folder(t)),
        message="run: is a training run's folder, not a weights file; give one of its checkpoints, e.g. ",
        absent=("eval",),
    ),
    dict(
        name="evaluate: garbage weights",
        setup=lambda t: _evaluate(t, _write(t / "w.safetensors", "garbage")),
        message="w.safetensors: not a readable safetensors file",
        absent=("eval",),
    ),
    dict(
        name="evaluate: empty split",
        setup=lambda t: _evaluate(t, t.weights(), file_list=_first_line_only(t), extra=("--split", "test")),
        message="one.csv: split test has no patches",
        absent=("eval/summary.md",),
    ),
    dict(
        name="evaluate: --out is the data root",
        setup=lambda t: _evaluate_into_root(t),
        message="which is not part of an evaluation report",
        keep=("data/files.csv",),
    ),
    dict(
        name="evaluate: second patch missing",
        setup=lambda t: _evaluate_args(t, *_with(t, _missing_second_patch)),
        message="not found",
        absent=("eval",),
    ),
    dict(
        name="evaluate: a NaN patch mid-run (the patch before it kept for --resume)",
        setup=lambda t: _evaluate_args(t, *t.tree_with_two_test_patches(nan_cloudy=True), None, "--batch-size", "1"),
        message="every value is NaN",
        absent=("eval/summary.md", "eval/metrics_per_image.csv"),
    ),
    dict(
        name="evaluate: --resume with --overwrite",
        setup=lambda t: [*_stopped(t), "--resume", "--overwrite"],
        message="--resume and --overwrite: one goes on from a stopped evaluation, the other starts again",
        keep=("eval/progress/batches.jsonl",),
    ),
    dict(
        name="evaluate: a stopped evaluation's folder without --resume",
        setup=lambda t: _stopped(t),
        message="eval: already holds a stopped evaluation (1 of 2 patches scored); pass --resume to go on from it",
        keep=("eval/progress/batches.jsonl",),
    ),
    dict(
        name="evaluate: --resume with other weights",
        setup=lambda t: _with_weights(_stopped(t), t.weights("dsen2cr-small-nosar"), "--resume"),
        message="the stopped evaluation there scored DSEN2CR_WEIGHTS_SHA256 ",
        keep=("eval/progress/batches.jsonl",),
    ),
    dict(
        name="evaluate: --resume of another split",
        setup=lambda t: [*_stopped(t), "--resume", "--split", "val"],
        message="scored a list of 2 patches, this run's is another of 1",
        keep=("eval/progress/batches.jsonl",),
    ),
    dict(
        name="evaluate: --resume without the prediction of a patch it scored",
        setup=lambda t: [*_stopped(t, delete="predictions/ROIs1158_spring_3_p0.tif"), "--resume"],
        message="ROIs1158_spring_3_p0.tif: missing, though the stopped evaluation scored ROIs1158_spring_3_p0",
        keep=("eval/progress/batches.jsonl",),
    ),
    dict(
        name="evaluate: --resume of a progress file that is no evaluation's",
        setup=lambda t: [*_stopped(t, garbage=True), "--resume"],
        message="batches.jsonl: not the progress of an evaluation",
        keep=("eval/progress/batches.jsonl",),
    ),
    dict(
        name="evaluate: --resume of a complete report",
        setup=lambda t: [*_complete(t), "--resume"],
        message="eval: holds a complete evaluation report, nothing to resume; --overwrite replaces it",
        keep=("eval/summary.md",),
    ),
    dict(
        name="evaluate: weights with a NaN",
        setup=lambda t: _evaluate_args(t, t.tree(), t.tree() / "files.csv", _nan_weights(t, "dsen2cr-small")),
        message="holds NaN or infinite values",
        absent=("eval",),
    ),
    dict(
        name="evaluate: --cloud-threshold nan",
        setup=lambda t: _evaluate_args(t, t.tree(), t.tree() / "files.csv", None, "--cloud-threshold", "nan"),
        message="expected a cloud score in [0, 1] (the paper's 0.2), got 'nan'",
        absent=("eval",),
    ),
    dict(
        name="evaluate: a file-list folder outside the root",
        setup=lambda t: _evaluate_args(
            t, t.tree(), _write(t / "out.csv", "3\t../elsewhere/s1\ts2\ts2_cloudy\tROIs1158_spring_s1_3_p0.tif\n")
        ),
        message="is outside the data root",
        absent=("eval",),
    ),
    dict(
        name="evaluate: an absolute file-list folder",
        setup=lambda t: _evaluate_args(
            t, t.tree(), _write(t / "abs.csv", "3\t/etc\ts2\ts2_cloudy\tROIs1158_spring_s1_3_p0.tif\n")
        ),
        message="is outside the data root",
        absent=("eval",),
    ),
]


def test_bad_input(bad_input: dict, check_case: Callable[[dict], None]) -> None:
    """Each row of ``CASES`` (parametrized by the ``bad_input`` hook in conftest.py)."""
    check_case(bad_input)


@pytest.mark.slow
def test_sigterm_during_evaluate_keeps_only_what_resume_goes_on_from(
    workdir: Path, terminate_when: Callable[..., int], private_tmp_env: dict[str, str]
) -> None:
    root = workdir / "data"
    from dsen2cr.data.synth import write_synthetic_dataset

    write_synthetic_dataset(root, 40, size=128, seed=1)
    weights = workdir.weights("dsen2cr-small")
    command = [
        "evaluate",
        "--weights",
        str(weights),
        "--data-root",
        str(root),
        "--file-list",
        str(root / "files.csv"),
        "--split",
        "train",
        "--batch-size",
        "1",
        "--out",
        str(workdir / "eval"),
    ]
    lines = workdir / "eval" / "progress" / "batches.jsonl"
    recorded = lambda: lines.exists() and len(lines.read_text().splitlines()) > 1  # noqa: E731  # a batch scored
    status = terminate_when(command, recorded, private_tmp_env)
    assert status == 128 + signal.SIGTERM
    assert sorted(p.name for p in (workdir / "eval").iterdir()) == ["predictions", "previews", "progress"]
    assert not list((workdir / "tmp").iterdir())
    assert main([*command, "--resume", "--no-progress", "--no-images"]) == 2  # the images are part of what it scored
    assert main([*command, "--resume", "--no-progress"]) == 0
    assert not (workdir / "eval" / "progress").exists() and (workdir / "eval" / "summary.md").exists()
