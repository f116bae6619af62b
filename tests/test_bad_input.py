"""Bad input across the commands, table-driven: each case exits non-zero with one line on stderr that names
the file (or argument) and the problem, no traceback, and nothing left at the output path."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from rasterio.transform import from_origin

from conftest import UTM32N, write_release_triplet
from dsen2cr import create_model
from dsen2cr.cli import main
from dsen2cr.outputs.geotiff import write_geotiff
from dsen2cr.weights import save_weights

FIXTURES = Path(__file__).parent / "fixtures" / "keras"


@dataclass
class Case:
    """One bad-input case: ``setup(tmp)`` returns the argv; ``message`` must appear in the one stderr line;
    ``output`` (relative to tmp) must not exist afterwards (or keep its content, when it existed)."""

    name: str
    setup: Callable[[Path], list[str]]
    message: str
    output: str | None = None


def _tree(tmp: Path) -> Path:
    """A small release tree with one triplet per split."""
    root = tmp / "data"
    lines = []
    for roi, split in ((1, 1), (2, 2), (3, 3)):
        t = write_release_triplet(root, "ROIs1158_spring", roi, 0, size=48)
        lines.append(
            f"{split}\tROIs1158_spring_s1/s1_{roi}\tROIs1158_spring_s2/s2_{roi}\t"
            f"ROIs1158_spring_s2_cloudy/s2_cloudy_{roi}\t{t.s1.name}"
        )
    (root / "files.csv").write_text("\n".join(lines) + "\n")
    return root


def _config(tmp: Path, **sections: dict) -> Path:
    root = _tree(tmp)
    settings = {
        "model": {"variant": "dsen2cr-small"},
        "optim": {"epochs": 1, "batch_size": 2},
        "data": {"root": str(root), "file_list": str(root / "files.csv"), "crop_size": 32, "num_workers": 0},
        "trainer": {"out_dir": str(tmp / "run"), "accelerator": "cpu", "devices": 1},
    }
    for section, values in sections.items():
        settings.setdefault(section, {}).update(values)
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(settings))
    return path


def _weights(tmp: Path, variant: str = "dsen2cr-small") -> Path:
    return save_weights(create_model(variant), tmp / f"{variant}.safetensors")


def _scene(tmp: Path, *, s2: np.ndarray | None = None, s1: np.ndarray | None = None) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    s2 = rng.integers(1, 8000, size=(13, 40, 50)).astype(np.uint16) if s2 is None else s2
    s1 = rng.uniform(-25, -5, size=(2, 40, 50)).astype(np.float32) if s1 is None else s1
    origin = from_origin(500000, 5000000, 10, 10)
    return (
        write_geotiff(tmp / "s2.tif", s2, crs=UTM32N, transform=origin),
        write_geotiff(tmp / "s1.tif", s1, crs=UTM32N, transform=origin),
    )


def _remove(tmp: Path, s2: Path, s1: Path | None, *extra: str, weights: Path | None = None) -> list[str]:
    args = [
        "remove-clouds",
        "--weights",
        str(weights or _weights(tmp)),
        "--s2",
        str(s2),
        "--out",
        str(tmp / "out.tif"),
        "--no-progress",
        *extra,
    ]
    return args + (["--s1", str(s1)] if s1 is not None else [])


def _evaluate(tmp: Path, weights: Path, *, file_list: Path | None = None, extra: tuple[str, ...] = ()) -> list[str]:
    """``evaluate`` argv over the small tree, reporting into tmp/eval."""
    root = _tree(tmp)
    return [
        "evaluate",
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
    return _write(tmp / "one.csv", (_tree(tmp) / "files.csv").read_text().splitlines()[0])


def _truncate(path: Path, keep: float = 0.4) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


class Payload:
    """Pickles to a call that would create a marker file when unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _pickle_checkpoint(tmp: Path) -> list[str]:
    path = tmp / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": Payload(tmp / "pwned")}, path)
    return ["export", str(path), str(tmp / "out.safetensors")]


def _s1_setup(tmp: Path, **kw: np.ndarray) -> tuple[Path, Path]:
    return _scene(tmp, **kw)


CASES = [
    # train
    Case(
        "train: unknown key",
        lambda t: ["train", "--config", str(_config(t, optim={"lrr": 1.0}))],
        "optim: unknown key 'lrr'; did you mean 'lr'?",
        "run",
    ),
    Case(
        "train: wrong type",
        lambda t: ["train", "--config", str(_config(t, optim={"epochs": "many"}))],
        "optim.epochs: expected int, got 'many'",
        "run",
    ),
    Case(
        "train: missing config",
        lambda t: ["train", "--config", str(t / "nope.yaml")],
        "nope.yaml: config file not found",
    ),
    Case(
        "train: invalid YAML",
        lambda t: ["train", "--config", str(_write(t / "bad.yaml", "optim: [1, 2"))],
        "bad.yaml: not valid YAML",
    ),
    Case(
        "train: data root without the listed files",
        lambda t: ["train", "--config", str(_config(t)), f"data.root={t / 'elsewhere'}"],
        "file of patch ROIs1158_spring_1_p0 not found",
        "run/checkpoints",
    ),
    Case(
        "train: malformed file list line",
        lambda t: ["train", "--config", str(_config(t)), f"data.file_list={_write(t / 'l.csv', '1,a,b,c')}"],
        "l.csv:1: expected 5 fields",
        "run/checkpoints",
    ),
    Case(
        "train: folder holds a run",
        lambda t: ["train", "--config", str(_config(t)), f"trainer.out_dir={_mkrun(t)}"],
        "already holds a run; resume it with --resume, or pass --overwrite",
    ),
    Case(
        "train: resume weights of another variant",
        lambda t: ["train", "--config", str(_config(t)), "--resume", str(_ckpt_like(t))],
        "holds a B=16, F=256 without SAR model, but B=4, F=32 with SAR was asked for",
        "run/checkpoints",
    ),
    # evaluate
    Case(
        "evaluate: missing weights",
        lambda t: _evaluate(t, t / "w.safetensors"),
        "w.safetensors: weights file not found",
        "eval",
    ),
    Case("evaluate: weights is a folder", lambda t: _evaluate(t, t), "is a directory, expected a weights file", "eval"),
    Case(
        "evaluate: garbage weights",
        lambda t: _evaluate(t, _write(t / "w.safetensors", "garbage")),
        "w.safetensors: not a readable safetensors file",
        "eval",
    ),
    Case(
        "evaluate: empty split",
        lambda t: _evaluate(t, _weights(t), file_list=_first_line_only(t), extra=("--split", "test")),
        "one.csv: split test has no patches",
        "eval/summary.md",
    ),
    # remove-clouds
    Case(
        "remove-clouds: S2 with 11 bands",  # 12 bands are Level-2A, accepted since the products issue
        lambda t: _remove(t, _scene(t, s2=np.ones((11, 40, 50), np.uint16))[0], t / "s1.tif"),
        "s2.tif: S2 has 11 bands, expected 13 (L1C",
        "out.tif",
    ),
    Case(
        "remove-clouds: S1 with 3 bands",
        lambda t: _remove(t, *_scene(t, s1=np.full((3, 40, 50), -10, np.float32))),
        "s1.tif: S1 (VV, VH) has 3 bands, expected 2",
        "out.tif",
    ),
    Case(
        "remove-clouds: zero-byte S2",
        lambda t: _remove(t, _write(t / "empty.tif", ""), _scene(t)[1]),
        "empty.tif: cannot read S2",
        "out.tif",
    ),
    Case(
        "remove-clouds: truncated S2",
        lambda t: _remove(t, _truncate(_scene(t)[0]), t / "s1.tif"),
        "s2.tif: cannot read",
        "out.tif",
    ),
    Case(
        "remove-clouds: S2 in reflectance, not DN",
        lambda t: _remove(t, _scene(t, s2=np.full((13, 40, 50), 0.2, np.float32))[0], t / "s1.tif"),
        "s2.tif: S2 values look like reflectance",
        "out.tif",
    ),
    Case(
        "remove-clouds: all-NaN S2",
        lambda t: _remove(t, _scene(t, s2=np.full((13, 40, 50), np.nan, np.float32))[0], t / "s1.tif"),
        "s2.tif: S2 has no valid pixels",
        "out.tif",
    ),
    Case(
        "remove-clouds: all-nodata S1",
        lambda t: _remove(t, *_scene(t, s1=np.full((2, 40, 50), np.nan, np.float32))),
        "s1.tif: S1 holds no valid values",
        "out.tif",
    ),
    Case(
        "remove-clouds: S1 in linear power",
        lambda t: _remove(t, *_scene(t, s1=np.full((2, 40, 50), 0.05, np.float32))),
        "pass --s1-linear",
        "out.tif",
    ),
    Case(
        "remove-clouds: SAR weights without --s1",
        lambda t: _remove(t, _scene(t)[0], None),
        "these weights need SAR input; pass --s1",
        "out.tif",
    ),
    Case(
        "remove-clouds: output exists",
        lambda t: _remove(t, *_scene(t)) if _write(t / "out.tif", "keep") else [],
        "out.tif: exists; pass --overwrite",
        "out.tif",
    ),
    Case(
        "remove-clouds: output folder is missing",
        lambda t: [*_remove(t, *_scene(t))[:-2], "--out", str(t / "no" / "out.tif"), "--s1", str(t / "s1.tif")],
        "output folder",
        "no/out.tif",
    ),
    Case(
        "remove-clouds: zero batch size",
        lambda t: _remove(t, *_scene(t), "--batch-size", "0"),
        "--batch-size: must be at least 1",
        "out.tif",
    ),
    Case(
        "remove-clouds: tile too small",
        lambda t: _remove(t, *_scene(t), "--tile", "8"),
        "tile: must be at least 16 pixels",
        "out.tif",
    ),
    Case(
        "remove-clouds: a directory as S1",
        lambda t: _remove(t, _scene(t)[0], t),
        "is a directory, expected a S1",
        "out.tif",
    ),
    # convert-keras
    Case(
        "convert-keras: not HDF5",
        lambda t: ["convert-keras", str(_write(t / "m.h5", "text")), str(t / "o.safetensors")],
        "m.h5: not an HDF5 file",
        "o.safetensors",
    ),
    Case(
        "convert-keras: HDF5 but not a model",
        lambda t: ["convert-keras", str(_plain_h5(t)), str(t / "o.safetensors")],
        "plain.h5: HDF5 file is not a Keras model",
        "o.safetensors",
    ),
    Case(
        "convert-keras: truncated",
        lambda t: [
            "convert-keras",
            str(_truncate(_copy(FIXTURES / "keras224_full_sar.h5", t))),
            str(t / "o.safetensors"),
        ],
        "keras224_full_sar.h5:",
        "o.safetensors",
    ),
    # data index
    Case(
        "data index: root is a file",
        lambda t: ["data", "index", str(_write(t / "f.txt", "x")), "--out", str(t / "i.csv")],
        "f.txt: dataset root is not a folder",
        "i.csv",
    ),
    Case(
        "data index: no data",
        lambda t: ["data", "index", str(_mkdir(t / "empty")), "--out", str(t / "i.csv")],
        "no SEN12MS-CR data found",
        "i.csv",
    ),
    Case(
        "data index: bad ROI list",
        lambda t: [
            "data",
            "index",
            str(_tree(t)),
            "--out",
            str(t / "i.csv"),
            "--test-rois",
            str(_write(t / "r.txt", "spring-1")),
        ],
        "r.txt:1: 'spring-1' is not a ROI id",
        "i.csv",
    ),
    # export
    Case("export: pickle payload", _pickle_checkpoint, "evil.ckpt: refused to load", "out.safetensors"),
    Case(
        "export: missing checkpoint",
        lambda t: ["export", str(t / "none.ckpt"), str(t / "o.safetensors")],
        "none.ckpt: weights file not found",
        "o.safetensors",
    ),
    # export-onnx --int8
    Case(
        "export-onnx: no calibration patches",
        lambda t: [
            "export-onnx",
            "--weights",
            str(_weights(t)),
            "--int8",
            "--calibration-patches",
            "0",
            str(t / "q.onnx"),
        ],
        "--calibration-patches: must be in [1, 4096], got 0",
        "q.onnx",
    ),
    Case(
        "export-onnx: calibration list without root",
        lambda t: [
            "export-onnx",
            "--weights",
            str(_weights(t)),
            "--int8",
            "--calibration-list",
            "f.csv",
            str(t / "q.onnx"),
        ],
        "--calibration-root: needed with --calibration-list",
        "q.onnx",
    ),
]


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _mkdir(path: Path) -> Path:
    path.mkdir()
    return path


def _copy(source: Path, tmp: Path) -> Path:
    return Path(shutil.copy(source, tmp / source.name))


def _plain_h5(tmp: Path) -> Path:
    import h5py

    with h5py.File(tmp / "plain.h5", "w") as f:
        f.create_dataset("x", data=np.zeros(3))
    return tmp / "plain.h5"


def _mkrun(tmp: Path) -> Path:
    run = tmp / "existing"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"a checkpoint")  # a folder without one is not a run
    (run / "config.yaml").write_text("model: {}\n")
    return run


def _ckpt_like(tmp: Path) -> Path:
    """A Lightning-style checkpoint of the paper model without SAR."""
    from dsen2cr.weights import CONFIG_KEY

    model = create_model("dsen2cr-nosar")
    path = tmp / "other.ckpt"
    torch.save(
        {"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}, CONFIG_KEY: model.config.to_dict()},
        path,
    )
    return path


def test_there_are_at_least_twenty_cases() -> None:
    assert len(CASES) >= 20


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(case: Case, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    argv = case.setup(tmp_path)
    output = tmp_path / case.output if case.output else None
    before = output.read_bytes() if output is not None and output.is_file() else None
    capsys.readouterr()
    status = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if not line.startswith("warning:")]
    assert status != 0
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert case.message in lines[0], lines[0]
    if output is not None:
        if before is not None:
            assert output.read_bytes() == before
        else:
            assert not output.exists()
    assert not (tmp_path / "pwned").exists(), "the pickle payload ran"


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="config file not found"):
        main(["--debug", "train", "--config", str(tmp_path / "nope.yaml")])
