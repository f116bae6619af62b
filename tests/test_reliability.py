"""The second reliability round, table-driven through the console entry point: each case is an unusual but
plausible input, by principle (README "What it checks"): no output destroys an input or another output;
everything is checked before the first output; non-finite numbers never pass; inputs are what they claim;
sizes are bounded before memory is reserved; one line for the user; say what was not checked.

A case passes when the command exits with the expected status, prints one line on stderr (warnings aside)
that contains the expected text and no traceback, leaves the files in ``keep`` byte for byte as they were,
and leaves nothing at the paths in ``absent``. SIGTERM cases run real processes (bottom of the file)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml
from rasterio.crs import CRS
from rasterio.transform import from_origin

from conftest import UTM32N, write_release_triplet
from dsen2cr import create_model
from dsen2cr.cli import main
from dsen2cr.errors import DSen2CRError
from dsen2cr.outputs.geotiff import write_geotiff
from dsen2cr.weights import CONFIG_KEY, save_weights
from test_bad_input import _config, _scene, _tree, _weights, _write

ORIGIN = from_origin(500000, 5000000, 10, 10)


@dataclass
class Case:
    """``setup(tmp)`` returns the argv; ``message`` must be in the one stderr line; ``keep`` (relative to tmp)
    must be unchanged; ``absent`` must not exist afterwards."""

    name: str
    setup: Callable[[Path], list[str]]
    message: str
    keep: tuple[str, ...] = ()
    absent: tuple[str, ...] = ()
    status: int = 2


# ---------------------------------------------------------------------------------------------- builders


def _remove_args(tmp: Path, *extra: str, s1: bool = False, weights: Path | None = None) -> list[str]:
    """remove-clouds over the small test scene (without SAR unless ``s1``)."""
    s2, s1_path = _scene(tmp)
    variant = "dsen2cr-small" if s1 else "dsen2cr-small-nosar"
    args = ["remove-clouds", "--weights", str(weights or _weights(tmp, variant)), "--s2", str(s2), "--no-progress"]
    return args + (["--s1", str(s1_path)] if s1 else []) + list(extra)


def _two_scenes_one_name(tmp: Path) -> list[str]:
    s2, _ = _scene(tmp)
    for folder in ("A", "B"):
        (tmp / folder).mkdir()
        (tmp / folder / "scene.tif").write_bytes(s2.read_bytes())
    (tmp / "outdir").mkdir()
    weights = _weights(tmp, "dsen2cr-small-nosar")
    return [
        "remove-clouds",
        "--weights",
        str(weights),
        "--s2",
        str(tmp / "A/scene.tif"),
        str(tmp / "B/scene.tif"),
        "--out",
        str(tmp / "outdir"),
        "--no-progress",
    ]


def _manifest(tmp: Path, rows: list[tuple[str, str, str]], name: str = "m.csv", bom: bool = False) -> Path:
    text = "s2,s1,out\n" + "".join(f"{a},{b},{c}\n" for a, b, c in rows)
    path = tmp / name
    path.write_text(("\ufeff" if bom else "") + text, encoding="utf-8")
    return path


def _manifest_args(tmp: Path, rows: list[tuple[str, str, str]], *extra: str) -> list[str]:
    _scene(tmp)
    weights = _weights(tmp, "dsen2cr-small-nosar")
    manifest = _manifest(tmp, rows)
    return ["remove-clouds", "--weights", str(weights), "--manifest", str(manifest), "--no-progress", *extra]


def _existing(tmp: Path, name: str, content: bytes = b"keep me") -> Path:
    (tmp / name).write_bytes(content)
    return tmp / name


def _nan_weights(tmp: Path, variant: str = "dsen2cr-small-nosar") -> Path:
    model = create_model(variant)
    with torch.no_grad():
        model.blocks[0].conv1.weight[0, 0, 0, 0] = float("nan")
    return save_weights(model, tmp / "nan.safetensors")


def _huge_weights(tmp: Path) -> Path:
    """Finite weights whose output overflows float32."""
    model = create_model("dsen2cr-small-nosar")
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Conv2d):
                module.weight.fill_(1e12)
    return save_weights(model, tmp / "huge.safetensors")


def _weights_with_metadata(tmp: Path, **config: object) -> Path:
    """Small weights whose stored configuration is replaced by ``config`` (tensors unchanged)."""
    from safetensors.torch import save_file

    model = create_model("dsen2cr-small-nosar")
    stored = {**model.config.to_dict(), **config}
    path = tmp / "meta.safetensors"
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()},
        str(path),
        metadata={"format": "dsen2cr-weights-v1", CONFIG_KEY: json.dumps(stored)},
    )
    return path


def _nan_keras(tmp: Path) -> Path:
    path = tmp / "nan.h5"
    with h5py.File(path, "w") as f:
        names = [b"conv2d_1", b"conv2d_2"]
        f.attrs["layer_names"] = names
        for index, (cin, cout) in enumerate([(13, 8), (8, 13)], start=1):
            group = f.create_group(f"conv2d_{index}")
            group.attrs["weight_names"] = [f"conv2d_{index}/kernel:0".encode(), f"conv2d_{index}/bias:0".encode()]
            kernel = np.zeros((3, 3, cin, cout), np.float32)
            kernel[0, 0, 0, 0] = np.nan
            group.create_dataset(f"conv2d_{index}/kernel:0", data=kernel)
            group.create_dataset(f"conv2d_{index}/bias:0", data=np.zeros(cout, np.float32))
    return path


def _huge_keras(tmp: Path) -> Path:
    """A tiny file declaring a (3, 3, 13, 1e8) kernel (nothing stored: HDF5 fill value)."""
    path = tmp / "huge.h5"
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [b"conv2d_1"]
        group = f.create_group("conv2d_1")
        group.attrs["weight_names"] = [b"conv2d_1/kernel:0", b"conv2d_1/bias:0"]
        group.create_dataset("conv2d_1/kernel:0", shape=(3, 3, 13, 10**8), dtype="f4", chunks=(3, 3, 13, 1000))
        group.create_dataset("conv2d_1/bias:0", data=np.zeros(8, np.float32))
    return path


def _inflating_checkpoint(tmp: Path) -> Path:
    path = tmp / "bomb.ckpt"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("archive/data.pkl", b"\0" * (200 * 2**20))
    return path


def _ckpt(tmp: Path, state_dict: object) -> Path:
    path = tmp / "odd.ckpt"
    torch.save({"state_dict": state_dict, CONFIG_KEY: create_model("dsen2cr-small").config.to_dict()}, path)
    return path


def _foreign_onnx(tmp: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "other",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8])],
    )
    path = tmp / "other.onnx"
    onnx.save(helper.make_model(graph), str(path))
    return path


def _s2_file(
    tmp: Path,
    array: np.ndarray | None = None,
    transform: object = ORIGIN,
    names: list[str] | None = None,
    crs: object = UTM32N,
) -> Path:
    array = np.random.default_rng(0).integers(1, 8000, (13, 40, 50)).astype(np.uint16) if array is None else array
    return write_geotiff(tmp / "s2x.tif", array, crs=crs, transform=transform, band_names=names)


def _s1_file(tmp: Path, array: np.ndarray, crs: object = UTM32N) -> Path:
    return write_geotiff(tmp / "s1x.tif", array, crs=crs, transform=ORIGIN)


def _remove_with(tmp: Path, s2: Path, s1: Path | None = None) -> list[str]:
    variant = "dsen2cr-small" if s1 is not None else "dsen2cr-small-nosar"
    args = ["remove-clouds", "--weights", str(_weights(tmp, variant)), "--s2", str(s2), "--out", str(tmp / "o.tif")]
    return args + ["--no-progress"] + (["--s1", str(s1)] if s1 is not None else [])


def _fifo(tmp: Path) -> Path:
    os.mkfifo(tmp / "pipe.tif")
    return tmp / "pipe.tif"


def _evaluate_args(tmp: Path, root: Path, file_list: Path, weights: Path | None = None, *extra: str) -> list[str]:
    weights = weights or _weights(tmp)
    return [
        "evaluate",
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


def _tree_with(tmp: Path, mutate: Callable[[Path], None]) -> tuple[Path, Path]:
    """The small tree with its test split made of two patches, changed by ``mutate(root)``."""
    root = _tree(tmp)
    t = write_release_triplet(root, "ROIs1158_spring", 4, 0, size=48, seed=4)
    with (root / "files.csv").open("a") as f:
        f.write(
            f"3\tROIs1158_spring_s1/s1_4\tROIs1158_spring_s2/s2_4\tROIs1158_spring_s2_cloudy/s2_cloudy_4\t{t.s1.name}\n"
        )
    mutate(root)
    return root, root / "files.csv"


def _mixed_sizes(root: Path) -> None:
    t = write_release_triplet(root, "ROIs1158_spring", 4, 0, size=64, seed=5)  # replaces the 48 px patch
    assert t.s1.exists()


def _nan_patch(root: Path) -> None:
    path = root / "ROIs1158_spring_s2_cloudy" / "s2_cloudy_4" / "ROIs1158_spring_s2_cloudy_4_p0.tif"
    write_geotiff(path, np.full((13, 48, 48), np.nan, np.float32), crs=UTM32N, transform=ORIGIN)


def _missing_second_patch(root: Path) -> None:
    (root / "ROIs1158_spring_s1" / "s1_4" / "ROIs1158_spring_s1_4_p0.tif").unlink()


def _train(tmp: Path, *overrides: str, **sections: dict) -> list[str]:
    return ["train", "--config", str(_config(tmp, **sections)), "--no-progress", *overrides]


def _deep_yaml(tmp: Path) -> Path:
    return _write(tmp / "deep.yaml", "[" * 20000 + "]" * 20000)


def _second_exists(tmp: Path) -> list[str]:
    _existing(tmp, "o2.tif")
    return _manifest_args(tmp, [("s2.tif", "", "o1.tif"), ("s2.tif", "", "o2.tif")])


def _index_existing(tmp: Path) -> list[str]:
    _existing(tmp, "n.txt.skipped.tsv")
    return _index_args(tmp, _existing(tmp, "n.txt"))


def _evaluate_into_root(tmp: Path) -> list[str]:
    args = _evaluate_args(tmp, _tree(tmp), _tree(tmp) / "files.csv")
    return [*args[: args.index("--out")], "--out", str(tmp / "data"), "--overwrite"]


def _index_args(tmp: Path, out: Path, *extra: str) -> list[str]:
    root = _tree(tmp)
    return ["data", "index", str(root), "--out", str(out), *extra]


# ------------------------------------------------------------------------------------------------- cases

CASES = [
    # 1. No output destroys an input or another output (refused even with --overwrite).
    Case(
        "remove-clouds: --preview is --out",
        lambda t: _remove_args(t, "--out", str(t / "o.tif"), "--preview", str(t / "o.tif")),
        "would replace output out",
        absent=("o.tif",),
    ),
    Case(
        "remove-clouds: --mask-out is --out",
        lambda t: _remove_args(t, "--out", str(t / "o.tif"), "--mask-out", str(t / "o.tif")),
        "would replace output out",
        absent=("o.tif",),
    ),
    Case(
        "remove-clouds: --out is the S2 input",
        lambda t: _remove_args(t, "--out", str(t / "s2.tif"), "--overwrite"),
        "would replace input s2",
        keep=("s2.tif",),
    ),
    Case(
        "remove-clouds: --out is the weights",
        lambda t: _remove_args(t, "--out", str(_weights(t, "dsen2cr-small-nosar")), "--overwrite"),
        "would replace input weights",
        keep=("dsen2cr-small-nosar.safetensors",),
    ),
    Case(
        "remove-clouds: two scenes of one name",
        _two_scenes_one_name,
        "would replace output out",
        absent=("outdir/scene_cloudfree.tif",),
    ),
    Case(
        "remove-clouds: two manifest rows, one out",
        lambda t: _manifest_args(t, [("s2.tif", "", "o.tif"), ("s2.tif", "", "o.tif")]),
        "would replace output out",
        absent=("o.tif",),
    ),
    Case(
        "remove-clouds: manifest row 2 exists, row 1 not written",
        lambda t: _second_exists(t),
        "o2.tif: exists; pass --overwrite",
        keep=("o2.tif",),
        absent=("o1.tif",),
    ),
    Case(
        "remove-clouds: manifest writes over itself",
        lambda t: _manifest_args(t, [("s2.tif", "", "m.csv")], "--overwrite"),
        "would replace input file",
        keep=("m.csv",),
    ),
    Case(
        "data index: existing file list",
        lambda t: _index_existing(t),
        "n.txt: exists; pass --overwrite",
        keep=("n.txt", "n.txt.skipped.tsv"),
    ),
    Case(
        "data index: --out is a dataset file",
        lambda t: _index_args(
            t, _tree(t) / "ROIs1158_spring_s1" / "s1_1" / "ROIs1158_spring_s1_1_p0.tif", "--overwrite"
        ),
        "named like a SEN12MS-CR patch file",
        keep=("data/ROIs1158_spring_s1/s1_1/ROIs1158_spring_s1_1_p0.tif",),
    ),
    Case(
        "data synth: into an existing tree",
        lambda t: ["data", "synth", "--out", str(_tree(t)), "--count", "2"],
        "not part of a synthetic dataset",
        keep=("data/files.csv", "data/ROIs1158_spring_s2/s2_1/ROIs1158_spring_s2_1_p0.tif"),
    ),
    Case(
        "export: output is the checkpoint",
        lambda t: ["export", str(_existing(t, "w.ckpt")), str(t / "w.ckpt"), "--overwrite"],
        "would replace input source",
        keep=("w.ckpt",),
    ),
    Case(
        "convert-keras: output is the input",
        lambda t: ["convert-keras", str(_existing(t, "k.h5")), str(t / "k.h5"), "--overwrite"],
        "would replace input source",
        keep=("k.h5",),
    ),
    Case(
        "export-onnx: output is the weights",
        lambda t: ["export-onnx", "--weights", str(_weights(t)), str(t / "dsen2cr-small.safetensors"), "--overwrite"],
        "would replace input weights",
        keep=("dsen2cr-small.safetensors",),
    ),
    Case(
        "evaluate: --out is the data root",
        lambda t: _evaluate_into_root(t),
        "which is not part of an evaluation report",
        keep=("data/files.csv",),
    ),
    Case(
        "train: out_dir is the data root",
        lambda t: _train(t, f"trainer.out_dir={_tree(t)}", "--overwrite"),
        "which is not part of a run",
        keep=("data/files.csv",),
    ),
    # 2. Everything is checked before the first output; a failed command leaves nothing behind.
    Case(
        "remove-clouds: manifest row 2 missing",
        lambda t: _manifest_args(t, [("s2.tif", "", "o1.tif"), ("nope.tif", "", "o2.tif")]),
        "nope.tif: S2 scene not found",
        absent=("o1.tif",),
    ),
    Case(
        "evaluate: second patch missing",
        lambda t: _evaluate_args(t, *_tree_with(t, _missing_second_patch)),
        "not found",
        absent=("eval",),
    ),
    Case(
        "evaluate: patches of two sizes in a batch",
        lambda t: _evaluate_args(t, *_tree_with(t, _mixed_sizes), None, "--batch-size", "2"),
        "differ in size",
        absent=("eval",),
    ),
    Case(
        "evaluate: a NaN patch mid-run",
        lambda t: _evaluate_args(t, *_tree_with(t, _nan_patch), None, "--batch-size", "1"),
        "every value is NaN",
        absent=("eval",),
    ),
    # 3. Non-finite numbers never pass.
    Case(
        "remove-clouds: weights with a NaN",
        lambda t: _remove_args(t, "--out", str(t / "o.tif"), weights=_nan_weights(t)),
        "holds NaN or infinite values",
        absent=("o.tif",),
    ),
    Case(
        "evaluate: weights with a NaN",
        lambda t: _evaluate_args(t, _tree(t), _tree(t) / "files.csv", _nan_weights(t, "dsen2cr-small")),
        "holds NaN or infinite values",
        absent=("eval",),
    ),
    Case(
        "convert-keras: a NaN kernel",
        lambda t: ["convert-keras", str(_nan_keras(t)), str(t / "k.safetensors")],
        "holds NaN or infinite values",
        absent=("k.safetensors",),
    ),
    Case(
        "remove-clouds: predictions overflow",
        lambda t: _remove_args(t, "--out", str(t / "o.tif"), weights=_huge_weights(t)),
        "predicted NaN, infinite or absurdly large values",
        absent=("o.tif",),
    ),
    Case(
        "train: optim.lr=1e400",
        lambda t: _train(t, "optim.lr=1e400"),
        "optim.lr: expected a finite number",
        absent=("run",),
    ),
    Case(
        "train: loss.lam=.nan",
        lambda t: _train(t, "loss.lam=.nan"),
        "loss.lam: expected a finite number",
        absent=("run",),
    ),
    Case(
        "remove-clouds: --memory inf",
        lambda t: _remove_args(t, "--out", str(t / "o.tif"), "--memory", "inf"),
        "expected a finite number",
        absent=("o.tif",),
    ),
    Case(
        "evaluate: --cloud-threshold nan",
        lambda t: _evaluate_args(t, _tree(t), _tree(t) / "files.csv", None, "--cloud-threshold", "nan"),
        "expected a finite number",
        absent=("eval",),
    ),
    Case(
        "weights: res_scale NaN in metadata",
        lambda t: _remove_args(t, "--out", str(t / "o.tif"), weights=_weights_with_metadata(t, res_scale=float("nan"))),
        "res_scale must be a finite number",
    ),
    # 4. Inputs are what they claim.
    Case(
        "remove-clouds: S1 as uint16 amplitude",
        lambda t: _remove_with(t, _s2_file(t), _s1_file(t, np.full((2, 40, 50), 200, np.uint16))),
        "S1 is uint16; expected float dB",
        absent=("o.tif",),
    ),
    Case(
        "remove-clouds: complex S1",
        lambda t: _remove_with(t, _s2_file(t), _s1_file(t, np.ones((2, 40, 50), np.complex64))),
        "S1 is complex64",
        absent=("o.tif",),
    ),
    Case(
        "remove-clouds: S2 with an identity transform",
        lambda t: _remove_with(t, _s2_file(t, transform=__import__("rasterio").Affine.identity())),
        "no georeferencing",
        absent=("o.tif",),
    ),
    Case(
        "remove-clouds: S2 bands named in another order",
        lambda t: _remove_with(
            t,
            _s2_file(
                t, names=["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B09", "B8A", "B10", "B11", "B12"]
            ),
        ),
        "band descriptions say",
        absent=("o.tif",),
    ),
    Case(
        "remove-clouds: complex S2",
        lambda t: _remove_with(t, _s2_file(t, np.ones((13, 40, 50), np.complex64))),
        "S2 is complex64",
        absent=("o.tif",),
    ),
    Case(
        "remove-clouds: S1 in a local engineering CRS",
        lambda t: _remove_with(
            t,
            _s2_file(t),
            _s1_file(t, np.full((2, 40, 50), -12, np.float32), crs=CRS.from_wkt('LOCAL_CS["local",UNIT["metre",1]]')),
        ),
        "cannot be related to the S2 scene",
        absent=("o.tif",),
    ),
    # 5. Bounded before allocated; inputs that are not regular files are refused before they are opened.
    Case(
        "weights declaring a million blocks",
        lambda t: _remove_args(t, "--out", str(t / "o.tif"), weights=_weights_with_metadata(t, num_blocks=1_000_000)),
        "num_blocks must be in [0, 256]",
    ),
    Case(
        "convert-keras: a (3, 3, 13, 1e8) kernel",
        lambda t: ["convert-keras", str(_huge_keras(t)), str(t / "k.safetensors")],
        "shape (3, 3, 13, 100000000)",
        absent=("k.safetensors",),
    ),
    Case(
        "train: data.repeats=100000000000",
        lambda t: _train(t, "data.repeats=100000000000"),
        "data.repeats: must be in [1, 10000]",
        absent=("run",),
    ),
    Case(
        "export: a checkpoint that inflates 200x",
        lambda t: ["export", str(_inflating_checkpoint(t)), str(t / "w.safetensors")],
        "would inflate",
        absent=("w.safetensors",),
    ),
    Case(
        "export-onnx: --calibration-patches 1e9",
        lambda t: [
            "export-onnx",
            "--weights",
            str(_weights(t)),
            "--int8",
            "--calibration-patches",
            "1000000000",
            str(t / "q.onnx"),
        ],
        "must be in [1, 4096]",
        absent=("q.onnx",),
    ),
    Case("remove-clouds: S2 is a FIFO", lambda t: _remove_with(t, _fifo(t)), "not a regular file", absent=("o.tif",)),
    Case(
        "remove-clouds: weights are /dev/zero",
        lambda t: _remove_args(t, "--out", str(t / "o.tif"), weights=Path("/dev/zero")),
        "not a regular file",
        absent=("o.tif",),
    ),
    Case(
        "data index: --threads 0",
        lambda t: _index_args(t, t / "n.csv", "--threads", "0"),
        "threads: must be in [1, 256]",
        absent=("n.csv",),
    ),
    Case(
        "data synth: --size 100000",
        lambda t: ["data", "synth", "--out", str(t / "s"), "--count", "1", "--size", "100000"],
        "size: must be in [16, 4096]",
        absent=("s",),
    ),
    Case(
        "train: trainer.devices=0",
        lambda t: _train(t, "trainer.devices=0"),
        "trainer.devices: must be in [1,",
        absent=("run",),
    ),
    # 7. One line for the user (naming the file, option or key), a traceback only for bugs.
    Case(
        "remove-clouds: --device foo",
        lambda t: _remove_args(t, "--out", str(t / "o.tif"), "--device", "foo"),
        "'foo' is not a torch device",
        absent=("o.tif",),
    ),
    Case(
        "train: config whose top level is a list",
        lambda t: ["train", "--config", str(_write(t / "l.yaml", "- 1\n- 2\n"))],
        "expected a mapping of sections",
    ),
    Case("train: a 20,000-level YAML", lambda t: ["train", "--config", str(_deep_yaml(t))], "nested too deeply"),
    Case(
        'weights: num_blocks "4" in metadata',
        lambda t: _remove_args(t, "--out", str(t / "o.tif"), weights=_weights_with_metadata(t, num_blocks="4")),
        "num_blocks must be an integer, got '4'",
    ),
    Case(
        "weights: num_features 32.0 in metadata",
        lambda t: _remove_args(t, "--out", str(t / "o.tif"), weights=_weights_with_metadata(t, num_features=32.0)),
        "num_features must be an integer, got 32.0",
    ),
    Case(
        "export: a .ckpt whose state_dict is a list",
        lambda t: ["export", str(_ckpt(t, [1, 2])), str(t / "w.safetensors")],
        "state_dict is a list",
        absent=("w.safetensors",),
    ),
    Case(
        "remove-clouds: an ONNX file from elsewhere",
        lambda t: _remove_args(t, "--out", str(t / "o.tif"), weights=_foreign_onnx(t)),
        "ONNX inputs ['x']",
        absent=("o.tif",),
    ),
    # 8. Say what was not checked.
    Case(
        "evaluate: a file-list folder outside the root",
        lambda t: _evaluate_args(
            t, _tree(t), _write(t / "out.csv", "3\t../elsewhere/s1\ts2\ts2_cloudy\tROIs1158_spring_s1_3_p0.tif\n")
        ),
        "is outside the data root",
        absent=("eval",),
    ),
    Case(
        "evaluate: an absolute file-list folder",
        lambda t: _evaluate_args(
            t, _tree(t), _write(t / "abs.csv", "3\t/etc\ts2\ts2_cloudy\tROIs1158_spring_s1_3_p0.tif\n")
        ),
        "is outside the data root",
        absent=("eval",),
    ),
]


def test_the_table_has_at_least_forty_cases() -> None:
    assert len(CASES) >= 40


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_reliability(case: Case, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    argv = case.setup(tmp_path)
    kept = {name: (tmp_path / name).read_bytes() for name in case.keep}
    capsys.readouterr()
    try:
        status = main(argv)
    except SystemExit as exit_info:  # argparse's own errors (type checks of options)
        status = exit_info.code
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if not line.startswith(("warning:", "usage:", " "))]
    assert status == case.status, err
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert case.message in lines[0], lines[0]
    for name, content in kept.items():
        assert (tmp_path / name).read_bytes() == content, f"{name} was changed"
    for name in case.absent:
        assert not (tmp_path / name).exists(), f"{name} was left behind"


# --------------------------------------------------------------------------- what is accepted, and warned


def test_a_failed_start_is_not_a_run(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """config.yaml and logs without a checkpoint (a run that failed to start) do not block the rerun."""
    run = tmp_path / "run"
    (run / "logs").mkdir(parents=True)
    (run / "config.yaml").write_text("model: {}\n")
    assert main(_train(tmp_path, "optim.epochs=1")) == 0, capsys.readouterr().err
    assert (run / "checkpoints" / "last.ckpt").is_file()


def test_minus_infinity_in_s1_is_no_data(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    s1 = np.random.default_rng(1).uniform(-25, -5, (2, 40, 50)).astype(np.float32)
    s1[:, :, :25] = -np.inf
    args = _remove_with(tmp_path, _s2_file(tmp_path), _s1_file(tmp_path, s1))
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "S1 has no data under 50.0% of the valid S2 pixels" in err


def test_a_band_file_in_another_crs_is_refused(tmp_path: Path) -> None:
    """A product folder whose B06 declares another CRS with the same transform numbers is refused (it was read
    as if it were on the B02 grid)."""
    from dsen2cr.inputs.readers import S2Source
    from dsen2cr.preprocessing import S2_BANDS

    folder = tmp_path / "IMG_DATA"
    folder.mkdir()
    for band in S2_BANDS:
        code = band[0] + band[1:].zfill(2)
        crs = CRS.from_epsg(32633) if code == "B06" else UTM32N
        data = np.full((1, 40, 50), 100, np.uint16)
        write_geotiff(folder / f"T32TXX_20200101T000000_{code}.tif", data, crs=crs, transform=ORIGIN)
    with pytest.raises(DSen2CRError, match=r"B06\.tif: S2 band is on EPSG:32633, but B02 of"):
        S2Source(folder)


def test_boms_and_relative_manifest_paths(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A UTF-8 BOM in a manifest, file list or ROI list is read; manifest paths are relative to its folder."""
    from dsen2cr.data.layout import read_file_list, read_roi_list

    scenes = tmp_path / "scenes"
    scenes.mkdir()
    _scene(scenes)
    manifest = _manifest(scenes, [("s2.tif", "", "clear.tif")], bom=True)
    weights = _weights(tmp_path, "dsen2cr-small-nosar")
    assert main(["remove-clouds", "--weights", str(weights), "--manifest", str(manifest), "--no-progress"]) == 0
    assert (scenes / "clear.tif").is_file()
    root = _tree(tmp_path)
    bom_list = _write(tmp_path / "bom.csv", "\ufeff" + (root / "files.csv").read_text())
    assert len(read_file_list(bom_list, root)) == 3
    assert read_roi_list(_write(tmp_path / "rois.txt", "\ufeffROIs1158_spring/1\n")) == {"ROIs1158_spring/1"}


def test_overlap_below_exact_and_unmatched_rois_are_warned(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    args = _remove_args(tmp_path, "--out", str(tmp_path / "o.tif"), "--overlap", "4", "--tile", "32")
    assert main(args) == 0
    assert "overlap 4 px is below the exact 20 px" in capsys.readouterr().err
    rois = _write(tmp_path / "val.txt", "ROIs1158_spring/77\n")
    assert main(["data", "index", str(_tree(tmp_path)), "--out", str(tmp_path / "n.csv"), "--val-rois", str(rois)]) == 0
    assert "1 ROI(s) of the validation list match no patch" in capsys.readouterr().err


def test_worker_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """An error raised in a DataLoader worker reaches the user as its own message, not a folded traceback."""
    config = _config(tmp_path)  # writes the small tree
    _, file_list = _tree_with(tmp_path, _nan_patch)  # adds a patch whose cloudy image is all NaN
    train_list = _write(tmp_path / "train.csv", file_list.read_text().replace("\n3\t", "\n1\t"))
    argv = ["train", "--config", str(config), "--no-progress", "data.num_workers=1", "optim.epochs=1"]
    status = main([*argv, f"data.file_list={train_list}", "data.crop_size=32"])
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if not line.startswith("warning:")]
    assert status == 2 and len(lines) == 1, err
    assert "every value is NaN" in lines[0] and "Original Traceback" not in lines[0] and "File " not in lines[0]


@pytest.mark.parametrize(("command", "extra"), [("train", "train"), ("export-onnx", "onnx")])
def test_missing_extras_are_named(
    command: str, extra: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """In an inference-only install, the commands that need an extra say which one (the real venv check is
    tests/test_reliability.py::test_inference_only_install, marked slow)."""
    import importlib.util

    missing = {"yaml", "lightning", "onnxscript"}
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in missing else real(name, *a))
    argv = ["train"] if command == "train" else ["export-onnx", "--weights", str(_weights(tmp_path)), "x.onnx"]
    assert main(argv) == 2
    assert f"pip install 'dsen2cr[{extra}]'" in capsys.readouterr().err


@pytest.mark.slow
def test_inference_only_install(tmp_path: Path) -> None:
    """``pip install dsen2cr`` (no extras) in a fresh venv: train and export-onnx name their extra."""
    repo = Path(__file__).resolve().parents[1]
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, "torch==2.13.0"], check=True)
    subprocess.run([*pip, str(repo)], check=True)
    for argv, extra in ((["train"], "train"), (["export-onnx", "--weights", "w", "x.onnx"], "onnx")):
        result = subprocess.run([str(venv / "bin" / "dsen2cr"), *argv], capture_output=True, text=True)
        assert result.returncode == 2 and f"pip install 'dsen2cr[{extra}]'" in result.stderr, result.stderr


# --------------------------------------------------------------------- 6. SIGTERM cleans up like Ctrl-C


def _terminate_when(command: list[str], ready: Callable[[], bool], env: dict[str, str], timeout: float = 120) -> int:
    """Start ``dsen2cr COMMAND``, send SIGTERM once ``ready()``, return the exit status."""
    process = subprocess.Popen(
        [sys.executable, "-m", "dsen2cr.cli", *command], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + timeout
    while not ready() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert process.poll() is None, "the command ended before it could be terminated"
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert b"Traceback" not in err, err.decode()
    return process.returncode


def _private_tmp(tmp_path: Path) -> dict[str, str]:
    private = tmp_path / "tmp"
    private.mkdir()
    return {**os.environ, "TMPDIR": str(private)}


def test_sigterm_during_remove_clouds_leaves_nothing(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    s2 = write_geotiff(
        tmp_path / "s2.tif", rng.integers(1, 8000, (13, 1024, 1024)).astype(np.uint16), crs=UTM32N, transform=ORIGIN
    )
    weights = _weights(tmp_path, "dsen2cr-small-nosar")
    out = tmp_path / "out"
    out.mkdir()
    command = [
        "remove-clouds",
        "--weights",
        str(weights),
        "--s2",
        str(s2),
        "--out",
        str(out / "clear.tif"),
        "--no-progress",
        "--tile",
        "128",
    ]
    status = _terminate_when(command, lambda: any(out.glob(".clear.*staging*")), _private_tmp(tmp_path))
    assert status == 128 + signal.SIGTERM
    assert list(out.iterdir()) == []


def test_sigterm_during_int8_export_leaves_nothing(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    env = _private_tmp(tmp_path)
    weights = _weights(tmp_path, "dsen2cr-small")
    command = [
        "export-onnx",
        "--weights",
        str(weights),
        "--int8",
        "--calibration-patches",
        "4000",
        str(tmp_path / "q.onnx"),
    ]
    private = Path(env["TMPDIR"])
    status = _terminate_when(command, lambda: any(private.glob("dsen2cr-int8-*")), env)
    assert status == 128 + signal.SIGTERM
    assert not list(private.glob("dsen2cr-*")) and not (tmp_path / "q.onnx").exists()  # (other libraries' caches stay)
    assert not list(tmp_path.glob(".q.*"))


def test_sigterm_during_evaluate_leaves_nothing(tmp_path: Path) -> None:
    root = tmp_path / "data"
    from dsen2cr.data.synth import write_synthetic_dataset

    write_synthetic_dataset(root, 40, size=128, seed=1)
    weights = _weights(tmp_path, "dsen2cr-small")
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
        str(tmp_path / "eval"),
    ]
    status = _terminate_when(command, lambda: any((tmp_path / "eval").glob("previews/*.png")), _private_tmp(tmp_path))
    assert status == 128 + signal.SIGTERM
    assert not (tmp_path / "eval").exists()


def test_sigterm_during_training_keeps_complete_checkpoints(tmp_path: Path) -> None:
    config = yaml.safe_load(_config(tmp_path, optim={"epochs": 50}, data={"repeats": 8}).read_text())
    path = _write(tmp_path / "long.yaml", yaml.safe_dump(config))
    checkpoints = tmp_path / "run" / "checkpoints"
    command = ["train", "--config", str(path), "--no-progress"]
    status = _terminate_when(command, lambda: (checkpoints / "last.ckpt").is_file(), _private_tmp(tmp_path))
    assert status != 0
    from dsen2cr.weights import load_model

    load_model(checkpoints / "last.ckpt")  # complete and loadable
    assert not list(checkpoints.glob(".*tmp*"))
