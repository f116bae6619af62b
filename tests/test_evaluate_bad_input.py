"""Bad input to evaluate, table-driven through the console entry point (the ``check_case`` fixture):
each row is an unusual but plausible input; the command exits with the expected status and one line on
stderr naming the file or option and the problem, no traceback, inputs unchanged, nothing left behind."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from rasterio.crs import CRS
from rasterio.transform import from_origin

from dsen2cr import create_model
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


#: The table: each row is run by ``test_bad_input`` through the ``check_case`` fixture.
def _evaluate_ensemble(tmp: Path, *weights: Path) -> list[str]:
    """``evaluate`` argv of an ensemble over the small tree."""
    argv = _evaluate(tmp, weights[0])
    at = argv.index("--weights") + 2
    return [*argv[:at], *(str(path) for path in weights[1:]), *argv[at:]]


CASES = [
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
        name="evaluate: a NaN patch mid-run",
        setup=lambda t: _evaluate_args(t, *t.tree_with_two_test_patches(nan_cloudy=True), None, "--batch-size", "1"),
        message="every value is NaN",
        absent=("eval",),
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
def test_sigterm_during_evaluate_leaves_nothing(
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
    status = terminate_when(command, lambda: any((workdir / "eval").glob("previews/*.png")), private_tmp_env)
    assert status == 128 + signal.SIGTERM
    assert not (workdir / "eval").exists()
